"""APIKeyAuthMiddleware: Kong key-auth semantics through a real uvicorn server.

What a client sees is tested with real httpx clients (and, for what httpx will not send, raw bytes on a socket):
the 401 answers and their problem bodies, the principal the app sees, credentials hidden from the app, the
anonymous consumer, and malformed input answered with a 401, never a 500. WebSocket handshakes, which the test
server cannot carry (no WebSocket library is installed), are driven in-process.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectivity.errors import ConfigError
from connectivity.middleware.api_key import DUPLICATE_KEY, INVALID_KEY, NO_KEY, APIKeyAuthMiddleware
from connectivity.security.apikeys import ANONYMOUS_KEY, Consumer, KeyRing, hash_key
from connectivity.security.identity import PRINCIPAL_KEY, Principal, principal_of

from .conftest import Served

Start = Callable[[Any], Served]
Call = Callable[..., Awaitable[list[dict[str, Any]]]]

KEY = "ck_live_Zr8Qp2mX7vK4tN9wB3yL6sD1"
OPS_KEY = "ck_live_Hk2Jd8Lq5Wn3Rt7Yv9Bx4Cm6"
WRONG = "ck_live_not_a_key_of_anyone_00"
BILLING = Consumer("billing", ["batch"], scopes=["orders:read"], keys=[KEY])
OPS = Consumer("ops-bot", ["ops"], key_hashes=[hash_key(OPS_KEY)])
GUEST = Consumer("guest", ["public"])


async def _whoami(request: Request) -> JSONResponse:
    principal = principal_of(request)
    return JSONResponse(
        {
            "principal": None
            if principal is None
            else {
                "id": principal.id,
                "method": principal.method,
                "groups": sorted(principal.groups),
                "scopes": sorted(principal.scopes),
            },
            "anonymous": request.scope.get(ANONYMOUS_KEY, False),
            "headers": [[name, value] for name, value in request.headers.items()],
            "query": request.scope["query_string"].decode("latin-1"),
            "params": sorted(request.query_params.multi_items()),
        }
    )


def echo_app() -> Starlette:
    """``/whoami`` (any method): the principal, the headers and the query the app received."""
    return Starlette(routes=[Route("/whoami", _whoami, methods=["GET", "POST", "OPTIONS"])])


def protected(app: Any = None, **options: Any) -> APIKeyAuthMiddleware:
    options.setdefault("consumers", [BILLING, OPS])
    return APIKeyAuthMiddleware(app or echo_app(), **options)


def problem(detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": detail}


def assert_refused(response: httpx.Response, detail: str, realm: str = "connectivity") -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == f'Key realm="{realm}"'
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == problem(detail)


def raw(served: Served, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes (what httpx refuses to send) and read the whole answer; the status and the body."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- the answers ------------------------------------------------------------------------------------------------
def test_a_valid_key_puts_the_consumer_in_the_scope(server: Start) -> None:
    served = server(protected())
    with httpx.Client(base_url=served.url) as client:
        billing = client.get("/whoami", headers={"apikey": KEY})
        ops = client.get("/whoami", headers={"APIKey": OPS_KEY})  # header names are case-insensitive
    assert billing.status_code == 200
    assert billing.json()["principal"] == {
        "id": "billing",
        "method": "api_key",
        "groups": ["batch"],
        "scopes": ["orders:read"],
    }
    assert billing.json()["anonymous"] is False
    assert ["apikey", KEY] in billing.json()["headers"]  # not hidden unless asked
    assert ops.json()["principal"]["id"] == "ops-bot"


def test_a_wrong_key_is_refused_with_401_and_a_problem_body(server: Start) -> None:
    served = server(protected())
    with httpx.Client(base_url=served.url) as client:
        for wrong in (WRONG, KEY[:-1], KEY.lower(), KEY + "=", "x"):
            response = client.get("/whoami", headers={"apikey": wrong})
            assert_refused(response, INVALID_KEY)
            assert wrong not in response.text
    served.wait(5)


def test_no_key_is_refused_with_kongs_message(server: Start) -> None:
    served = server(protected(realm="orders-api"))
    with httpx.Client(base_url=served.url) as client:
        assert_refused(client.get("/whoami"), NO_KEY, realm="orders-api")
        assert_refused(client.get("/whoami", headers={"apikey": ""}), NO_KEY, realm="orders-api")
        assert_refused(client.get("/whoami", params={"apikey": KEY}), NO_KEY, realm="orders-api")  # query is off


def test_a_key_given_twice_is_refused(server: Start) -> None:
    served = server(protected(key_in_query=True))
    with httpx.Client(base_url=served.url) as client:
        assert_refused(client.get("/whoami", headers=[("apikey", KEY), ("apikey", KEY)]), DUPLICATE_KEY)
        assert_refused(client.get("/whoami", headers=[("apikey", KEY), ("ApiKey", WRONG)]), DUPLICATE_KEY)
        assert_refused(client.get("/whoami?apikey=" + KEY + "&apikey=" + KEY), DUPLICATE_KEY)


def test_the_key_may_come_in_the_query_when_enabled(server: Start) -> None:
    served = server(protected(key_in_query=True, key_in_header=False))
    with httpx.Client(base_url=served.url) as client:
        plain = client.get("/whoami", params={"apikey": KEY})
        encoded = client.get("/whoami?api%6Bey=" + "".join(f"%{byte:02X}" for byte in KEY.encode()))
        header_only = client.get("/whoami", headers={"apikey": KEY})
    assert plain.json()["principal"]["id"] == "billing"
    assert encoded.json()["principal"]["id"] == "billing"  # names and values are percent-decoded
    assert_refused(header_only, NO_KEY)


def test_the_first_key_name_present_decides_header_before_query(server: Start) -> None:
    served = server(protected(key_names=("x-api-key", "apikey"), key_in_query=True))
    with httpx.Client(base_url=served.url) as client:
        header_first = client.get("/whoami", headers={"apikey": KEY}, params={"apikey": WRONG})
        name_order = client.get("/whoami", headers={"x-api-key": OPS_KEY, "apikey": WRONG})
        query_of_first_name = client.get("/whoami", headers={"apikey": WRONG}, params={"x-api-key": OPS_KEY})
    assert header_first.json()["principal"]["id"] == "billing"
    assert name_order.json()["principal"]["id"] == "ops-bot"
    assert query_of_first_name.json()["principal"]["id"] == "ops-bot"


# -- hide_credentials -------------------------------------------------------------------------------------------
def test_hide_credentials_strips_the_key_from_headers_and_query(server: Start) -> None:
    served = server(protected(key_names=("apikey", "x-api-key"), key_in_query=True, hide_credentials=True))
    query = "a=1&apikey=" + KEY + "&b=%20x+y&empty=&flag&a=2&x-api-key=" + WRONG + "&c=%E2%9C%93"
    with httpx.Client(base_url=served.url) as client:
        in_header = client.get(
            "/whoami?" + query.replace("apikey=" + KEY + "&", "").replace("&x-api-key=" + WRONG, ""),
            headers={"apikey": KEY, "x-api-key": WRONG, "x-other": "kept"},
        )
        in_query = client.get("/whoami?" + query.replace("&x-api-key=" + WRONG, ""), headers={"x-other": "kept"})
        both_names = client.get("/whoami?" + query, headers={"X-API-Key": WRONG})
    for response in (in_header, in_query, both_names):
        seen = response.json()
        assert seen["principal"]["id"] == "billing"
        assert seen["query"] == "a=1&b=%20x+y&empty=&flag&a=2&c=%E2%9C%93"  # byte for byte, order kept
        assert seen["params"] == [
            ["a", "1"],
            ["a", "2"],
            ["b", " x y"],
            ["c", "\u2713"],
            ["empty", ""],
            ["flag", ""],
        ]
        assert not any(name in ("apikey", "x-api-key") for name, _ in seen["headers"])
        assert KEY not in response.text
        assert WRONG not in response.text
    assert ["x-other", "kept"] in in_header.json()["headers"]


def test_without_a_query_key_the_query_string_is_left_alone(server: Start) -> None:
    served = server(protected(key_in_query=True, hide_credentials=True))
    with httpx.Client(base_url=served.url) as client:
        seen = client.get("/whoami?q=%2Fa%2Fb&apikeys=1", headers={"apikey": KEY}).json()
    assert seen["query"] == "q=%2Fa%2Fb&apikeys=1"


# -- no key: anonymous, optional, already authenticated ---------------------------------------------------------
def test_the_anonymous_consumer_serves_requests_without_a_key(server: Start) -> None:
    served = server(protected(anonymous=GUEST))
    with httpx.Client(base_url=served.url) as client:
        anonymous = client.get("/whoami")
        known = client.get("/whoami", headers={"apikey": KEY})
        wrong = client.get("/whoami", headers={"apikey": WRONG})
    assert anonymous.json()["principal"] == {
        "id": "guest",
        "method": "api_key",
        "groups": ["public"],
        "scopes": [],
    }
    assert anonymous.json()["anonymous"] is True
    assert known.json()["principal"]["id"] == "billing"
    assert known.json()["anonymous"] is False
    assert_refused(wrong, INVALID_KEY)  # unlike Kong: a wrong key never downgrades to anonymous


def test_an_optional_key_lets_requests_without_one_through_unauthenticated(server: Start) -> None:
    served = server(protected(required=False))
    with httpx.Client(base_url=served.url) as client:
        without = client.get("/whoami")
        wrong = client.get("/whoami", headers={"apikey": WRONG})
    assert (without.status_code, without.json()["principal"]) == (200, None)
    assert_refused(wrong, INVALID_KEY)


class Authenticated:
    """Stands in for an outer authentication middleware (a JWT one): ``x-test-user`` becomes a JWT principal."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"x-test-user":
                scope[PRINCIPAL_KEY] = Principal(value.decode(), "jwt")
        await self.app(scope, receive, send)


def test_a_request_authenticated_by_another_credential_needs_no_key(server: Start) -> None:
    served = server(Authenticated(protected()))
    with httpx.Client(base_url=served.url) as client:
        jwt_only = client.get("/whoami", headers={"x-test-user": "alice"})
        both = client.get("/whoami", headers={"x-test-user": "alice", "apikey": KEY})
        wrong_key = client.get("/whoami", headers={"x-test-user": "alice", "apikey": WRONG})
    assert jwt_only.json()["principal"]["id"] == "alice"
    assert jwt_only.json()["principal"]["method"] == "jwt"
    assert both.json()["principal"]["id"] == "billing"  # a presented key is verified and wins
    assert_refused(wrong_key, INVALID_KEY)  # and a wrong one is never ignored


def test_preflight_requests_pass_only_when_told(server: Start) -> None:
    strict = server(protected())
    lenient = server(protected(run_on_preflight=False))
    with httpx.Client() as client:
        assert_refused(client.options(f"{strict.url}/whoami"), NO_KEY)
        passed = client.options(f"{lenient.url}/whoami")
        assert (passed.status_code, passed.json()["principal"]) == (200, None)
        assert_refused(client.get(f"{lenient.url}/whoami"), NO_KEY)


# -- malformed input: 401, never 500 ----------------------------------------------------------------------------
def test_malformed_keys_get_401_never_500(server: Start) -> None:
    served = server(protected(key_in_query=True))
    head = b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    cases = {
        "non-UTF-8 header": head + b"apikey: \xff\xfe\xc3\x28" + KEY.encode() + b"\r\n\r\n",
        "latin-1 header": head + b"apikey: caf\xe9\r\n\r\n",
        "huge header": head + b"apikey: " + b"k" * 12_000 + b"\r\n\r\n",
        "non-UTF-8 query": b"GET /whoami?apikey=%FF%FE%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "huge query": b"GET /whoami?apikey="
        + b"q" * 12_000
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "bad escapes": b"GET /whoami?apikey=%zz%&api%key=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    }
    for name, request in cases.items():
        status, body = raw(served, request)
        assert (name, status) == (name, 401), body
        assert b'"status":401' in body
    status, body = raw(served, head + b"apikey: " + KEY.encode() + b"\r\napikey: \xff\r\n\r\n")
    assert (status, b"Duplicate" in body) == (401, True)


def test_the_key_never_reaches_the_logs(server: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    served = server(protected(key_in_query=True))
    with httpx.Client(base_url=served.url) as client:
        client.get("/whoami", headers={"apikey": WRONG})
        client.get("/whoami", params={"apikey": KEY + "x"})
        client.get("/whoami", headers={"apikey": KEY})
    served.wait(3)
    refusals = [record.getMessage() for record in caplog.records if record.name == "connectivity.security"]
    assert refusals == [
        f"API key refused: {INVALID_KEY} (GET /whoami)",
        f"API key refused: {INVALID_KEY} (GET /whoami)",
    ]
    # The client's own httpx log shows the URL it sent (key included): only the server side is ours to keep clean.
    ours = [record.getMessage() for record in caplog.records if record.name.startswith("connectivity")]
    assert ours
    assert not any(WRONG in message or KEY in message for message in ours)


# -- in-process: WebSocket, lifespan, configuration --------------------------------------------------------------
async def _ws_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})


@pytest.mark.anyio
async def test_websocket_handshakes_are_authenticated(asgi_call: Call, http_scope: Callable[..., Any]) -> None:
    middleware = protected(_ws_app)
    refused = await asgi_call(middleware, http_scope(type="websocket", headers=[(b"apikey", WRONG.encode())]))
    assert refused == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    scope = http_scope(type="websocket", headers=[(b"apikey", KEY.encode())])
    accepted = await asgi_call(middleware, scope)
    assert accepted == [{"type": "websocket.accept"}]
    assert scope[PRINCIPAL_KEY].id == "billing"


@pytest.mark.anyio
async def test_lifespan_passes_straight_through(asgi_call: Call) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert await asgi_call(protected(app), scope) == []
    assert seen == [scope]


def test_reprs_show_no_key() -> None:
    middleware = protected(pepper=None, anonymous=GUEST)
    shown = repr(middleware) + repr(middleware.key_ring) + repr(BILLING) + repr(OPS)
    assert shown.count("Consumer(") == 2
    assert "keys=1" in shown
    for secret in (KEY, OPS_KEY, hash_key(KEY), hash_key(OPS_KEY)):
        assert secret not in shown
    assert repr(middleware) == (
        "APIKeyAuthMiddleware(key_names=('apikey',), consumers=2, key_in_header=True, key_in_query=False, "
        "hide_credentials=False, required=False, anonymous='guest')"
    )


def test_a_ready_key_ring_is_accepted() -> None:
    pepper = "a-pepper-of-sixteen+"
    ring = KeyRing([Consumer("c", key_hashes=[hash_key(KEY, pepper=pepper)])], pepper=pepper)
    assert protected(consumers=ring).key_ring is ring


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"consumers": [BILLING, BILLING]}, "KeyRing.consumers[1].id"),
        ({"consumers": KeyRing([]), "pepper": "a-pepper-of-sixteen+"}, "APIKeyAuthMiddleware.pepper"),
        ({"key_names": "apikey"}, "APIKeyAuthMiddleware.key_names"),
        ({"key_names": ()}, "APIKeyAuthMiddleware.key_names"),
        ({"key_names": ("api key",)}, "APIKeyAuthMiddleware.key_names"),
        ({"key_names": ("apikey:",)}, "APIKeyAuthMiddleware.key_names"),
        ({"key_in_header": False}, "APIKeyAuthMiddleware.key_in_header"),
        ({"key_in_query": "yes"}, "APIKeyAuthMiddleware.key_in_query"),
        ({"hide_credentials": 1}, "APIKeyAuthMiddleware.hide_credentials"),
        ({"run_on_preflight": None}, "APIKeyAuthMiddleware.run_on_preflight"),
        ({"anonymous": "guest"}, "APIKeyAuthMiddleware.anonymous"),
        ({"anonymous": Consumer("guest", keys=[WRONG])}, "APIKeyAuthMiddleware.anonymous"),
        ({"anonymous": Consumer("billing")}, "APIKeyAuthMiddleware.anonymous"),
        ({"anonymous": GUEST, "required": True}, "APIKeyAuthMiddleware.required"),
        ({"required": "no"}, "APIKeyAuthMiddleware.required"),
        ({"realm": 'a"b'}, "APIKeyAuthMiddleware.realm"),
        ({"realm": ""}, "APIKeyAuthMiddleware.realm"),
        ({"realm": "caf\u00e9"}, "APIKeyAuthMiddleware.realm"),
    ],
)
def test_bad_configuration_is_refused_eagerly(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        protected(**options)
    assert caught.value.field == field
    assert WRONG not in str(caught.value)


def test_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="APIKeyAuthMiddleware"):
        APIKeyAuthMiddleware("app", consumers=[])  # type: ignore[arg-type]
