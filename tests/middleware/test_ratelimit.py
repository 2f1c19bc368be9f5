"""RateLimitMiddleware, its key functions and the FastAPI dependency.

The behaviour a client sees is tested through a real uvicorn server and real httpx clients: forwarded addresses
(a trusted proxy is a client bound to 127.0.0.2), plans, the IETF fields (parsed here with a strict parser of
their own), problem bodies, exemptions. Limiters run on a FakeClock, so remaining counts and reset times are exact.
Key functions and failure paths are also called in-process with hand-made scopes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from connectivity.admin.registry import snapshot
from connectivity.errors import ConfigError
from connectivity.middleware.ratelimit import (
    RateLimitMiddleware,
    api_key,
    client_ip,
    combine,
    header,
    jwt_subject,
    rate_limit,
    route,
    spiffe_id,
)
from connectivity.policies.ratelimit import RateLimiter
from connectivity.telemetry import events
from connectivity.testing import FakeClock

from .conftest import Served

Start = Callable[[Any], Served]
Call = Callable[..., Awaitable[list[dict[str, Any]]]]
PROXY = "127.0.0.2"  # a second loopback address: connections from it have a different peer address


# -- a strict parser for the draft's fields (independent of the implementation) --------------------------------
_PARAM = re.compile(r";([a-z*][a-z0-9_\-.*]*)=([0-9]{1,15})")


def parse_field(value: str) -> list[tuple[str, dict[str, int]]]:
    """Parse ``RateLimit`` / ``RateLimit-Policy`` per draft-ietf-httpapi-ratelimit-headers-09/10.

    The value must be an RFC 8941 List whose members are sf-strings (printable ASCII, only ``\\"`` and ``\\\\``
    escaped) with parameters whose values are non-negative sf-integers (at most 15 digits). Anything else fails.
    """
    items: list[tuple[str, dict[str, int]]] = []
    i, end = 0, len(value)
    while True:
        while i < end and value[i] in " \t":
            i += 1
        assert value[i] == '"', f"member must be an sf-string: {value[i:]!r}"
        i += 1
        name = []
        while value[i] != '"':
            if value[i] == "\\":
                i += 1
                assert value[i] in '"\\', 'only \\" and \\\\ may be escaped'
            assert " " <= value[i] <= "~", "sf-strings are printable ASCII"
            name.append(value[i])
            i += 1
        i += 1
        params: dict[str, int] = {}
        while i < end and value[i] == ";":
            match = _PARAM.match(value, i)
            assert match, f"parameter must be key=integer: {value[i:]!r}"
            assert match.group(1) not in params, "duplicate parameter"
            params[match.group(1)] = int(match.group(2))
            i = match.end()
        items.append(("".join(name), params))
        while i < end and value[i] in " \t":
            i += 1
        if i == end:
            return items
        assert value[i] == ",", f"members are separated by commas: {value[i:]!r}"
        i += 1


def test_the_test_parser_is_strict() -> None:
    assert parse_field('"burst";q=100;w=60, "daily";q=1000;w=86400') == [
        ("burst", {"q": 100, "w": 60}),
        ("daily", {"q": 1000, "w": 86400}),
    ]
    for bad in ["default;r=1", '"a";r=-1', '"a";r=1.5', '"a" "b"', '"a";R=1', '"a";r=1000000000000000']:
        with pytest.raises((AssertionError, IndexError)):
            parse_field(bad)


# -- apps -------------------------------------------------------------------------------------------------------
async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


ROUTES = [
    Route("/items/{item_id}", _ok),
    Route("/search", _ok),
    Route("/health", _ok),
    Route("/internal/stats", _ok),
]


def limiter(rate: str = "2/minute", name: str = "test-inbound") -> RateLimiter:
    return RateLimiter(rate, name=name, clock=FakeClock())


@pytest.fixture
def proxy() -> Iterator[Callable[[str], httpx.Client]]:
    """Clients connecting from 127.0.0.2, as a reverse proxy on another address would."""
    clients: list[httpx.Client] = []

    def make(base_url: str) -> httpx.Client:
        client = httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=PROXY))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- client addresses -------------------------------------------------------------------------------------------
def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(server: Start) -> None:
    policy = limiter()
    served = server(RateLimitMiddleware(Starlette(routes=ROUTES), limiter=policy, trusted_proxies=[PROXY]))
    with httpx.Client(base_url=served.url) as client:
        statuses = [
            client.get(
                "/items/1", headers={"x-forwarded-for": f"203.0.113.{n}", "forwarded": f"for=198.51.100.{n}"}
            )
            for n in range(3)
        ]
    assert [response.status_code for response in statuses] == [200, 200, 429]
    assert list(policy.keys()) == ["ip:127.0.0.1"]  # its real address, whatever it claimed


def test_a_trusted_proxys_forwarded_for_is_honoured(server: Start, proxy: Callable[[str], httpx.Client]) -> None:
    policy = limiter()
    app = RateLimitMiddleware(Starlette(routes=ROUTES), limiter=policy, trusted_proxies=[PROXY, "10.0.0.0/8"])
    served = server(app)
    via_proxy = proxy(served.url)

    def get(forwarded_for: str) -> int:
        return via_proxy.get("/items/1", headers={"x-forwarded-for": forwarded_for}).status_code

    assert [get("198.51.100.7") for _ in range(3)] == [200, 200, 429]
    assert get("198.51.100.8") == 200  # another client behind the same proxy has its own limit
    # What the client wrote itself sits left of what the proxy appended: the walk never gets there.
    assert get("6.6.6.6, 198.51.100.9") == 200
    assert get("7.7.7.7, 198.51.100.9") == 200
    assert get("8.8.8.8, 198.51.100.9") == 429
    # A chain of trusted hops (10.1.2.3 is another trusted proxy) is walked through.
    assert get("198.51.100.10, 10.1.2.3") == 200
    assert sorted(policy.keys()) == ["ip:198.51.100.10", "ip:198.51.100.7", "ip:198.51.100.8", "ip:198.51.100.9"]


def test_client_ip_walks_trusted_hops_right_to_left(http_scope: Callable[..., dict[str, Any]]) -> None:
    def scope(peer: str, *headers: tuple[str, str]) -> dict[str, Any]:
        return http_scope(client=(peer, 1234), headers=[(k.encode(), v.encode()) for k, v in headers])

    trusting = client_ip(["10.0.0.0/8", "2001:db8:ffff::/48"])
    assert trusting(scope("10.0.0.1", ("x-forwarded-for", "1.2.3.4"))) == "ip:1.2.3.4"
    assert trusting(scope("10.0.0.1", ("x-forwarded-for", "9.9.9.9, 1.2.3.4, 10.0.0.2"))) == "ip:1.2.3.4"
    assert trusting(scope("10.0.0.1", ("x-forwarded-for", "9.9.9.9"), ("x-forwarded-for", "1.2.3.4"))) == (
        "ip:1.2.3.4"  # several lines are one list, in order
    )
    assert trusting(scope("10.0.0.1", ("x-forwarded-for", "10.0.0.3, 10.0.0.2"))) == "ip:10.0.0.3"
    assert trusting(scope("10.0.0.1", ("x-forwarded-for", "1.2.3.4, garbage"))) == "ip:10.0.0.1"
    assert trusting(scope("10.0.0.1")) == "ip:10.0.0.1"
    assert trusting(scope("192.0.2.1", ("x-forwarded-for", "1.2.3.4"))) == "ip:192.0.2.1"  # untrusted peer
    assert trusting(scope("::ffff:10.0.0.1", ("x-forwarded-for", "1.2.3.4"))) == "ip:1.2.3.4"  # mapped IPv4
    # IPv6 clients are limited per /64; the proxy may be IPv6 too.
    assert (
        trusting(scope("2001:db8:ffff::1", ("x-forwarded-for", "2001:db8:1:2:aaaa::1"))) == "ip:2001:db8:1:2::/64"
    )
    assert client_ip([], ipv6_prefix=128)(scope("2001:db8::7")) == "ip:2001:db8::7"
    # RFC 7239, when that is the header the proxies write.
    forwarded = client_ip(["10.0.0.0/8"], forwarded_header="forwarded")
    value = 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711";by=10.0.0.9'
    assert forwarded(scope("10.0.0.1", ("forwarded", value))) == "ip:2001:db8:cafe::/64"
    assert forwarded(scope("10.0.0.1", ("forwarded", "for=192.0.2.43:8080"))) == "ip:192.0.2.43"
    assert forwarded(scope("10.0.0.1", ("forwarded", "for=unknown"))) == "ip:10.0.0.1"
    assert forwarded(scope("10.0.0.1", ("x-forwarded-for", "1.2.3.4"))) == "ip:10.0.0.1"  # not the header read
    assert client_ip([])(http_scope(client=None)) == "ip:unknown"


# -- consumers and plans ----------------------------------------------------------------------------------------
CONSUMERS = {"free-key-AAAA-secret": "free", "free-key-CCCC-secret": "free", "pro-key-BBBB-secret": "pro"}


def _plan(scope: dict[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return CONSUMERS.get(value.decode())
    return None


def test_consumers_get_their_own_limits_by_plan(server: Start) -> None:
    anonymous, free, pro = (
        limiter(name="test-anon"),
        limiter("2/minute", "test-free"),
        limiter("4/minute", "test-pro"),
    )
    app = RateLimitMiddleware(
        Starlette(routes=ROUTES), limiter=anonymous, key=api_key(), plans={"free": free, "pro": pro}, plan=_plan
    )
    served = server(app)
    with httpx.Client(base_url=served.url) as client:

        def statuses(api_key: str, count: int) -> list[int]:
            return [client.get("/search", headers={"x-api-key": api_key}).status_code for _ in range(count)]

        assert statuses("free-key-AAAA-secret", 3) == [200, 200, 429]
        assert statuses("pro-key-BBBB-secret", 5) == [200] * 4 + [429]
        assert statuses("free-key-CCCC-secret", 1) == [200]  # the same plan, its own quota
        policy = client.get("/search", headers={"x-api-key": "pro-key-BBBB-secret"}).headers["ratelimit-policy"]
        assert parse_field(policy) == [("4/minute", {"q": 4, "w": 60})]
        assert client.get("/search").status_code == 200  # no key: the default limiter, by address
    assert len(list(free.keys())) == 2
    assert len(list(pro.keys())) == 1
    assert list(anonymous.keys()) == ["ip:127.0.0.1"]
    # The raw API keys appear nowhere: not as limiter keys, not in the status app.
    everything = json.dumps([list(policy.keys()) for policy in (anonymous, free, pro)]) + json.dumps(snapshot())
    for raw in CONSUMERS:
        assert raw not in everything


def test_api_key_hashes_are_stable_keyed_and_never_the_secret(http_scope: Callable[..., dict[str, Any]]) -> None:
    scope = http_scope(headers=[(b"x-api-key", b"hunter2")])
    key = api_key()(scope)
    assert key.startswith("key:")
    assert "hunter2" not in key
    assert key == api_key()(scope)  # stable across calls and processes (a shared limiter needs it)
    assert key != api_key(secret="pepper")(scope)  # a secret makes hashes unguessable
    assert api_key(secret=b"x" * 100)(scope).startswith("key:")
    assert api_key("authorization")(scope) == "ip:10.0.0.1"  # no such header: the client address
    assert api_key()(http_scope(headers=[(b"x-api-key", b"  ")])) == "ip:10.0.0.1"


def test_identity_key_functions(http_scope: Callable[..., dict[str, Any]]) -> None:
    assert jwt_subject()(http_scope(state={"claims": {"sub": "user-42"}})) == "jwt.sub:user-42"
    assert jwt_subject("tenant")(http_scope(**{"connectivity.claims": {"tenant": 7}})) == "jwt.tenant:7"
    assert jwt_subject()(http_scope(state={"claims": {"sub": True}})) == "ip:10.0.0.1"
    assert jwt_subject()(http_scope()) == "ip:10.0.0.1"
    assert spiffe_id()(http_scope(**{"connectivity.peer_id": "spiffe://example.org/ns/a/sa/b"})) == (
        "spiffe:spiffe://example.org/ns/a/sa/b"
    )
    assert spiffe_id()(http_scope()) == "ip:10.0.0.1"
    assert header("X-Tenant")(http_scope(headers=[(b"x-tenant", b"acme")])) == "header.x-tenant:acme"
    assert header("x-tenant")(http_scope()) == "ip:10.0.0.1"
    both = combine(header("x-tenant"), route())
    assert both(http_scope(method="POST", path="/a", headers=[(b"x-tenant", b"acme")])) == (
        "header.x-tenant:acme|route:POST /a"
    )
    # The middleware's resolved address (through its trusted proxies) is what the fallbacks use.
    assert spiffe_id()(http_scope(**{"connectivity.client_ip": "203.0.113.5"})) == "ip:203.0.113.5"


@pytest.mark.parametrize(
    "build",
    [
        lambda: client_ip(["not-an-address"]),
        lambda: client_ip("10.0.0.0/8"),  # one string, not a collection
        lambda: client_ip([], forwarded_header="x-real-ip"),
        lambda: client_ip([], ipv6_prefix=129),
        lambda: api_key("bad header"),
        lambda: jwt_subject(""),
        combine,
        lambda: RateLimitMiddleware(_ok, limiter=object()),
        lambda: RateLimitMiddleware(_ok, limiter=limiter(), plans={"free": limiter()}),
        lambda: RateLimitMiddleware(_ok, limiter=limiter(), limits_by={"search": limiter()}),
        lambda: RateLimitMiddleware(_ok, limiter=limiter(), exempt="/health"),
        lambda: RateLimitMiddleware(_ok, limiter=limiter(), headers="yes"),
        lambda: RateLimitMiddleware(_ok, limiter=limiter(), key="ip"),
    ],
)
def test_invalid_configuration_is_rejected(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


# -- what a limited client sees ----------------------------------------------------------------------------------
def test_fields_follow_the_draft_and_the_429_is_a_problem(server: Start) -> None:
    served = server(RateLimitMiddleware(Starlette(routes=ROUTES), limiter=limiter(), headers=True))
    with httpx.Client(base_url=served.url) as client:
        first, second, refused = (client.get("/items/1") for _ in range(3))
    assert parse_field(first.headers["ratelimit-policy"]) == [("2/minute", {"q": 2, "w": 60})]
    assert parse_field(first.headers["ratelimit"]) == [("2/minute", {"r": 1, "t": 30})]
    # With quota left, t is the time until the full burst is back; with none, until the next request passes.
    assert parse_field(second.headers["ratelimit"]) == [("2/minute", {"r": 0, "t": 30})]
    assert refused.status_code == 429
    assert parse_field(refused.headers["ratelimit-policy"]) == [("2/minute", {"q": 2, "w": 60})]
    assert parse_field(refused.headers["ratelimit"]) == [("2/minute", {"r": 0, "t": 30})]
    retry_after = refused.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) == 30  # whole seconds, >= 1, never earlier than t
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["cache-control"] == "no-store"
    assert refused.json() == {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Quota Exceeded",
        "status": 429,
        "detail": "rate limit '2/minute' exceeded: retry in 30 s",
        "violated-policies": ["2/minute"],
    }


def test_by_default_allowed_responses_stay_plain_and_a_refusal_explains_itself(server: Start) -> None:
    served = server(RateLimitMiddleware(Starlette(routes=ROUTES), limiter=limiter()))
    with httpx.Client(base_url=served.url) as client:
        first, _, refused = (client.get("/items/1") for _ in range(3))
    assert "ratelimit" not in first.headers
    assert "ratelimit-policy" not in first.headers
    assert refused.status_code == 429
    assert "ratelimit" in refused.headers  # a refusal always explains itself


def test_exempt_paths_and_functions(server: Start) -> None:
    policy = limiter()
    served = server(RateLimitMiddleware(Starlette(routes=ROUTES), limiter=policy))
    custom = server(
        RateLimitMiddleware(
            Starlette(routes=ROUTES),
            limiter=limiter(),
            exempt=lambda scope: scope["path"].startswith("/internal/"),
        )
    )
    prefixes = server(RateLimitMiddleware(Starlette(routes=ROUTES), limiter=limiter(), exempt=["/internal/"]))
    with httpx.Client() as client:
        health = [client.get(f"{served.url}/health") for _ in range(5)]
        assert [response.status_code for response in health] == [200] * 5
        assert "ratelimit" not in health[0].headers
        for target in (custom, prefixes):
            assert [client.get(f"{target.url}/internal/stats").status_code for _ in range(5)] == [200] * 5
            assert [client.get(f"{target.url}/health").status_code for _ in range(3)] == [200, 200, 429]
    assert list(policy.keys()) == []


def test_per_route_limits_by_path_template_and_prefix(server: Start) -> None:
    default, search, items = limiter(name="test-default"), limiter("1/minute", "test-search"), limiter("3/minute")
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(
                RateLimitMiddleware,
                limiter=default,
                limits_by={"/search": search, "/items/{item_id}": items},
                key=combine(client_ip(), route()),
            )
        ],
    )
    served = server(app)
    with httpx.Client(base_url=served.url) as client:
        assert [client.get("/search").status_code for _ in range(2)] == [200, 429]
        assert [client.get(f"/items/{n}").status_code for n in range(4)] == [200, 200, 200, 429]
        assert client.get("/internal/stats").status_code == 200
    assert list(search.keys()) == ["ip:127.0.0.1|route:GET /search"]
    assert list(items.keys()) == ["ip:127.0.0.1|route:GET /items/{item_id}"]  # one key for every item
    assert list(default.keys()) == ["ip:127.0.0.1|route:GET /internal/stats"]


def test_a_raising_key_function_falls_back_to_the_client_address(
    server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    policy = limiter()

    def broken(scope: dict[str, Any]) -> str:
        raise KeyError("claims")

    middleware = RateLimitMiddleware(Starlette(routes=ROUTES), limiter=policy, key=broken)
    served = server(middleware)
    with caplog.at_level(logging.WARNING, logger="connectivity.ratelimit"), httpx.Client(base_url=served.url) as c:
        statuses = [c.get("/items/1").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # never a 500
    assert list(policy.keys()) == ["ip:127.0.0.1"]
    assert middleware.key_failures == 3
    assert any(
        "key function" in record.getMessage() and "KeyError" in record.getMessage() for record in caplog.records
    )


def test_fastapi_dependency_limits_one_endpoint(server: Start) -> None:
    app = FastAPI()
    per_endpoint = limiter("1/minute", "test-dependency")

    @app.get("/limited", dependencies=[Depends(rate_limit(per_endpoint, headers=True))])
    async def limited() -> dict[str, str]:
        return {"ok": "limited"}

    @app.get("/open")
    async def open_() -> dict[str, str]:
        return {"ok": "open"}

    def broken(scope: Any) -> str:
        raise RuntimeError("boom")

    @app.get("/broken-key", dependencies=[Depends(rate_limit(limiter("1/minute"), key=broken))])
    async def broken_key() -> dict[str, str]:
        return {"ok": "broken"}

    served = server(app)
    with httpx.Client(base_url=served.url) as client:
        allowed, refused = client.get("/limited"), client.get("/limited")
        assert [client.get("/open").status_code for _ in range(3)] == [200] * 3
        assert [client.get("/broken-key").status_code for _ in range(2)] == [200, 429]
    assert allowed.status_code == 200
    assert parse_field(allowed.headers["ratelimit"]) == [("1/minute", {"r": 0, "t": 60})]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert parse_field(refused.headers["ratelimit-policy"]) == [("1/minute", {"q": 1, "w": 60})]
    assert parse_field(refused.headers["ratelimit"]) == [("1/minute", {"r": 0, "t": 60})]
    assert refused.json() == {"detail": "rate limit '1/minute' exceeded: retry in 60 s"}
    assert list(per_endpoint.keys()) == ["ip:127.0.0.1"]


# -- in-process: what a real server cannot easily show ------------------------------------------------------------
def _response(messages: list[dict[str, Any]]) -> tuple[int, dict[str, str]]:
    start = messages[0]
    return start["status"], {name.decode(): value.decode() for name, value in start["headers"]}


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"ratelimit", b'"app";r=5')]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
async def test_a_remote_limiter_is_awaited(asgi_call: Call, http_scope: Callable[..., dict[str, Any]]) -> None:
    local = limiter("1/minute")

    class Remote:
        remote = True
        name = "test-remote"
        limits = local.limits

        def try_acquire(self, key: str = "", cost: float = 1.0) -> Any:
            raise AssertionError("the sync method was called from async code")

        async def atry_acquire(self, key: str = "", cost: float = 1.0) -> Any:
            return local.try_acquire(key, cost)

    middleware = RateLimitMiddleware(_app, limiter=Remote())
    statuses = [_response(await asgi_call(middleware, http_scope()))[0] for _ in range(2)]
    assert statuses == [200, 429]


@pytest.mark.anyio
async def test_a_failing_limiter_lets_requests_through(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    class Down:
        name = "test-down"

        def try_acquire(self, key: str = "", cost: float = 1.0) -> Any:
            raise ConnectionError("store unreachable")

    with caplog.at_level(logging.WARNING, logger="connectivity.ratelimit"):
        status, _ = _response(await asgi_call(RateLimitMiddleware(_app, limiter=Down()), http_scope()))
    assert status == 200
    assert "let through" in caplog.text


@pytest.mark.anyio
async def test_refusals_are_policy_events_and_decisions_are_in_the_scope(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = events.subscribe(lambda name, attributes: seen.append((name, dict(attributes))))
    try:
        middleware = RateLimitMiddleware(_app, limiter=limiter("1/minute"))
        scope = http_scope()
        status, headers = _response(await asgi_call(middleware, scope))
        assert (status, headers["ratelimit"]) == (200, '"app";r=5')  # the app's own fields win
        assert scope["connectivity.rate_limit"].remaining == 0
        assert scope["connectivity.client_ip"] == "10.0.0.1"
        status, _ = _response(await asgi_call(middleware, http_scope()))
    finally:
        unsubscribe()
    assert status == 429
    assert (events.RATE_LIMIT_REFUSED, {"connectivity.reason": "1/minute", "connectivity.delay": 60.0}) in seen


@pytest.mark.anyio
async def test_other_scope_types_pass_through(asgi_call: Call) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RateLimitMiddleware(app, limiter=limiter("1/minute"))
    for _ in range(3):
        await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"] * 3


@pytest.mark.anyio
async def test_a_raising_plan_function_uses_the_default_limiter(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    default = limiter("1/minute")

    def plan(scope: Any) -> str:
        raise ValueError("no plan")

    middleware = RateLimitMiddleware(_app, limiter=default, plans={"pro": limiter("100/minute")}, plan=plan)
    assert _response(await asgi_call(middleware, http_scope()))[0] == 200
    assert list(default.keys()) == ["ip:10.0.0.1"]


@pytest.mark.anyio
async def test_remembered_addresses_and_keys_are_the_key_functions_own(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without trusted proxies the middleware remembers each peer's address and default key (a small, bounded
    # cache): what it remembers must be exactly what resolving and client_ip() answer, however often it is emptied.
    monkeypatch.setattr("connectivity.middleware.ratelimit._MAX_CACHED_CALLERS", 2)
    shared = limiter("100/minute")
    middleware = RateLimitMiddleware(_app, limiter=shared)
    expected = {
        "10.0.0.1": "10.0.0.1",
        "::ffff:10.0.0.9": "10.0.0.9",
        "2001:db8:1:2::7": "2001:db8:1:2::7",
        "2001:db8:1:2::8": "2001:db8:1:2::8",
        "unix-peer": "unix-peer",
    }
    for _ in range(2):
        for peer, address in expected.items():
            scope = http_scope(client=(peer, 5555))
            await asgi_call(middleware, scope)
            assert scope["connectivity.client_ip"] == address
    keys = ["ip:10.0.0.1", "ip:10.0.0.9", "ip:2001:db8:1:2::/64", "ip:unix-peer"]
    assert sorted(shared.keys()) == keys

    middleware.key = header("x-tenant")  # a key function set later is used, not the remembered default keys
    await asgi_call(middleware, http_scope(headers=[(b"x-tenant", b"t1")]))
    assert sorted(shared.keys()) == sorted([*keys, "header.x-tenant:t1"])
