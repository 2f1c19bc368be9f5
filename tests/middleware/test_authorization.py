"""AuthorizationMiddleware and the FastAPI dependencies, through a real uvicorn server.

The stack under test is the one a service runs: peer identity, then API-key authentication, then authorization,
then the app. The peer layer is a stand-in (:class:`Peers`, which believes an ``x-test-peer`` header) so that
these tests exercise authorization, not mTLS; the API-key layer is the real one. The decision table itself is
tested on the pure objects in ``tests/security/test_authz.py``; here: what a client gets (403 problem bodies, no
policy contents), what the app sees, malformed input never a 500, and the dependencies' 401/403 answers.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectivity.errors import ConfigError, InvalidSpiffeIdError
from connectivity.middleware.api_key import APIKeyAuthMiddleware
from connectivity.middleware.auth_dependencies import require_groups, require_peer, require_scopes
from connectivity.middleware.authorization import DECISION_KEY, AuthorizationMiddleware
from connectivity.security.apikeys import Consumer
from connectivity.security.authz import DENY, Authorizer, Decision, Operation, Policy, RequestFacts, Rule, Source
from connectivity.security.identity import PEER_KEY, Peer, Principal
from connectivity.security.spiffe import SpiffeId

from .conftest import Served

Start = Callable[[Any], Served]
Call = Callable[..., Awaitable[list[dict[str, Any]]]]

BILLING_KEY = "ck_live_Zr8Qp2mX7vK4tN9wB3yL6sD1"
OPS_KEY = "ck_live_Hk2Jd8Lq5Wn3Rt7Yv9Bx4Cm6"
BILLING = Consumer("billing", ["batch"], scopes=["orders:read"], keys=[BILLING_KEY])
OPS = Consumer("ops-bot", ["ops"], scopes=["orders:read", "orders:write"], keys=[OPS_KEY])
GUEST = Consumer("guest", ["public"])
PROD = "spiffe://cluster.local/ns/prod/sa/orders"
STAGING = "spiffe://cluster.local/ns/staging/sa/orders"
FOREIGN = "spiffe://partner.example/ns/prod/sa/orders"
FORBIDDEN = {"type": "about:blank", "title": "Forbidden", "status": 403, "detail": "access denied"}

POLICIES = [
    {
        "name": "admin-is-for-ops",
        "action": "DENY",
        "rules": [{"from": [{"source": {"notGroups": ["ops"]}}], "to": [{"operation": {"paths": ["/admin/*"]}}]}],
    },
    {"name": "public-reads", "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"]}}]}]},
    Policy(
        "prod-services",
        rules=[
            Rule(
                sources=[Source(principals=["cluster.local/ns/prod/sa/*"])],
                operations=[Operation(paths=["/orders/*"])],
            )
        ],
    ),
    Policy(
        "signed-in",
        rules=[Rule(sources=[Source(request_principals=["*"])], operations=[Operation(paths=["/me"])])],
    ),
    Policy("ops-everything", rules=[Rule(sources=[Source(groups=["ops"])])]),
]


class Peers:
    """Stands in for the peer-identity middleware: ``x-test-peer: <SPIFFE id>`` becomes the verified peer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"x-test-peer":
                scope[PEER_KEY] = Peer(SpiffeId.parse(value.decode()), source="xfcc")
        await self.app(scope, receive, send)


async def _echo(request: Request) -> JSONResponse:
    decision = request.scope[DECISION_KEY]
    return JSONResponse({"path": request.url.path, "policy": decision.policy, "reason": decision.reason})


def stack(policies: Any = POLICIES, **options: Any) -> Peers:
    app = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST", "DELETE"])])
    authorized = AuthorizationMiddleware(app, policies=policies, **options)
    return Peers(APIKeyAuthMiddleware(authorized, consumers=[BILLING, OPS], required=False))


def raw(served: Served, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- the middleware ---------------------------------------------------------------------------------------------
def test_policies_decide_what_reaches_the_app(server: Start) -> None:
    served = server(stack())
    billing, ops = {"apikey": BILLING_KEY}, {"apikey": OPS_KEY}
    with httpx.Client(base_url=served.url) as client:
        answers = {
            "public GET, anonymous": client.get("/public/page"),
            "public POST, anonymous": client.post("/public/page"),
            "me, anonymous": client.get("/me"),
            "me, api key": client.get("/me", headers=billing),
            "orders, prod peer": client.get("/orders/7", headers={"x-test-peer": PROD}),
            "orders, staging peer": client.get("/orders/7", headers={"x-test-peer": STAGING}),
            "orders, no peer": client.get("/orders/7", headers=billing),
            "admin, batch group": client.get("/admin/users", headers=billing),
            "admin, prod peer": client.get("/admin/users", headers={"x-test-peer": PROD}),
            "admin, ops group": client.delete("/admin/users", headers=ops),
        }
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "public GET, anonymous": 200,
        "public POST, anonymous": 403,
        "me, anonymous": 403,
        "me, api key": 200,
        "orders, prod peer": 200,
        "orders, staging peer": 403,
        "orders, no peer": 403,
        "admin, batch group": 403,
        "admin, prod peer": 403,
        "admin, ops group": 200,
    }
    assert answers["me, api key"].json() == {
        "path": "/me",
        "policy": "signed-in",
        "reason": "allowed by ALLOW policy 'signed-in'",
    }
    for response in answers.values():
        if response.status_code == 403:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["cache-control"] == "no-store"
            assert response.json() == FORBIDDEN  # no policy name, let alone contents


def test_dot_segments_and_double_slashes_do_not_get_around_a_deny(server: Start) -> None:
    served = server(stack())
    for target in (b"/public/../admin/users", b"//admin/users", b"/admin/./users", b"/public/%2E%2E/admin/users"):
        status, body = raw(served, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (target, status) == (target, 403), body


def test_expose_policy_names_the_denying_policy_only(server: Start) -> None:
    served = server(stack(expose_policy=True))
    with httpx.Client(base_url=served.url) as client:
        denied = client.get("/admin/users")
        defaulted = client.post("/public/page")
    assert denied.json() == {**FORBIDDEN, "policy": "admin-is-for-ops"}
    assert defaulted.json() == FORBIDDEN  # no ALLOW matched: there is no policy to name


def test_no_policies_allow_everything_and_an_empty_allow_denies_everything(server: Start) -> None:
    open_ = server(stack([]))
    closed = server(stack([Policy("allow-nothing")]))
    with httpx.Client() as client:
        assert client.get(f"{open_.url}/anything").json()["reason"] == "no ALLOW policy is configured"
        assert client.get(f"{closed.url}/anything", headers={"apikey": OPS_KEY}).status_code == 403


def test_malformed_requests_get_403_or_pass_never_500(server: Start) -> None:
    served = server(stack())
    cases = {
        b"GET /admin/%FF%FE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": 403,
        b"GET /admin/x HTTP/1.1\r\nHost: x\r\napikey: \xff\xfe\r\nConnection: close\r\n\r\n": 401,
        b"GET /public/\xc3\x28 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": 400,  # h11 refuses it first
        b"GET /admin/" + b"a/" * 3000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": 403,
        b"GET /public/%00%0A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": 200,
        b"GET /me HTTP/1.1\r\nHost: x\r\nx-test-user: \xff\r\nConnection: close\r\n\r\n": 403,
    }
    for request, expected in cases.items():
        status, _ = raw(served, request)
        assert (request[:40], status) == (request[:40], expected)


def test_a_failing_decision_denies_and_is_logged(server: Start, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Authorizer):
        __slots__ = ()

        def decide(self, facts: RequestFacts) -> Decision:
            raise RuntimeError("policy bug")

    served = server(AuthorizationMiddleware(Starlette(), policies=Broken([])))
    with caplog.at_level(logging.WARNING, logger="connectivity.security"), httpx.Client() as client:
        response = client.get(served.url)
    assert (response.status_code, response.json()) == (403, FORBIDDEN)
    assert [record.getMessage() for record in caplog.records if record.name == "connectivity.security"] == [
        "authorization failed: request denied"
    ]


@pytest.mark.anyio
async def test_websocket_handshakes_are_authorized(asgi_call: Call, http_scope: Callable[..., Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})

    middleware = AuthorizationMiddleware(
        app, policies=[Policy("no-ws", DENY, [Rule(operations=[Operation(paths=["/ws"])])])]
    )
    assert await asgi_call(middleware, http_scope(type="websocket", path="/ws")) == [
        {"type": "websocket.close", "code": 1008, "reason": ""}
    ]
    assert await asgi_call(middleware, http_scope(type="websocket", path="/other")) == [
        {"type": "websocket.accept"}
    ]


@pytest.mark.anyio
async def test_lifespan_passes_straight_through(asgi_call: Call) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert await asgi_call(AuthorizationMiddleware(app, policies=[Policy("nothing")]), scope) == []
    assert seen == [scope]


def test_configuration_is_checked_eagerly() -> None:
    with pytest.raises(ConfigError) as caught:
        AuthorizationMiddleware(
            Starlette(), policies=[{"name": "p", "rules": [{"from": [{"source": {"ipBlocks": []}}]}]}]
        )
    assert caught.value.field == "Policy[p].rules[0].from[0].source.ipBlocks"
    with pytest.raises(ConfigError) as caught:
        AuthorizationMiddleware(Starlette(), policies=[], expose_policy="yes")  # type: ignore[arg-type]
    assert caught.value.field == "AuthorizationMiddleware.expose_policy"
    with pytest.raises(TypeError, match="AuthorizationMiddleware"):
        AuthorizationMiddleware(None, policies=[])  # type: ignore[arg-type]
    middleware = AuthorizationMiddleware(Starlette(), policies=POLICIES)
    assert repr(middleware) == (
        "AuthorizationMiddleware(policies=['admin-is-for-ops', 'public-reads', 'prod-services', 'signed-in', "
        "'ops-everything'])"
    )


# -- the FastAPI dependencies -------------------------------------------------------------------------------------
def fastapi_stack(anonymous: Consumer | None = None) -> Peers:
    app = FastAPI()

    @app.get("/orders")
    async def orders(principal: Annotated[Principal, Depends(require_scopes("orders:read"))]) -> dict[str, str]:
        return {"id": principal.id}

    @app.get("/orders/write", dependencies=[Depends(require_scopes("orders:read", "orders:write"))])
    async def write() -> dict[str, str]:
        return {"ok": "write"}

    @app.get("/orders/either", dependencies=[Depends(require_scopes("orders:write", "orders:admin", match="any"))])
    async def either() -> dict[str, str]:
        return {"ok": "either"}

    @app.get("/ops", dependencies=[Depends(require_groups("ops"))])
    async def ops() -> dict[str, str]:
        return {"ok": "ops"}

    @app.get("/public", dependencies=[Depends(require_groups("public", "ops", match="any"))])
    async def public() -> dict[str, str]:
        return {"ok": "public"}

    @app.get("/internal")
    async def internal(
        peer: Annotated[Peer, Depends(require_peer("spiffe://cluster.local/ns/prod/*"))],
    ) -> dict[str, str]:
        return {"peer": str(peer.spiffe_id)}

    @app.get("/mesh", dependencies=[Depends(require_peer("cluster.local"))])
    async def mesh() -> dict[str, str]:
        return {"ok": "mesh"}

    return Peers(APIKeyAuthMiddleware(app, consumers=[BILLING, OPS], required=False, anonymous=anonymous))


def test_require_scopes(server: Start) -> None:
    served = server(fastapi_stack())
    with httpx.Client(base_url=served.url) as client:
        anonymous = client.get("/orders")
        billing = client.get("/orders", headers={"apikey": BILLING_KEY})
        short = client.get("/orders/write", headers={"apikey": BILLING_KEY})
        full = client.get("/orders/write", headers={"apikey": OPS_KEY})
        either = client.get("/orders/either", headers={"apikey": OPS_KEY})
        neither = client.get("/orders/either", headers={"apikey": BILLING_KEY})
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")
    assert anonymous.json() == {"detail": "not authenticated"}
    assert (billing.status_code, billing.json()) == (
        200,
        {"id": "billing"},
    )  # the dependency returns the principal
    assert short.status_code == 403
    assert (
        short.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="orders:read orders:write"'
    )
    assert short.json() == {"detail": "insufficient scope"}
    assert (full.status_code, either.status_code) == (200, 200)
    assert (
        neither.headers["www-authenticate"]
        == 'Bearer error="insufficient_scope", scope="orders:write orders:admin"'
    )


def test_require_groups(server: Start) -> None:
    served = server(fastapi_stack(anonymous=GUEST))
    with httpx.Client(base_url=served.url) as client:
        assert client.get("/ops", headers={"apikey": OPS_KEY}).status_code == 200
        other = client.get("/ops", headers={"apikey": BILLING_KEY})
        guest = client.get("/ops")
        guest_public = client.get("/public")
    assert (other.status_code, other.json()) == (403, {"detail": "not a member of the required groups"})
    assert "www-authenticate" not in other.headers
    assert (guest.status_code, guest.headers["www-authenticate"]) == (401, "Bearer")  # signing in may help
    assert guest_public.status_code == 200  # the anonymous consumer's own groups count


def test_require_peer(server: Start) -> None:
    served = server(fastapi_stack())
    with httpx.Client(base_url=served.url) as client:
        prod = client.get("/internal", headers={"x-test-peer": PROD})
        staging = client.get("/internal", headers={"x-test-peer": STAGING})
        none = client.get("/internal", headers={"apikey": OPS_KEY})
        mesh = client.get("/mesh", headers={"x-test-peer": STAGING})
        foreign = client.get("/mesh", headers={"x-test-peer": FOREIGN})
    assert (prod.status_code, prod.json()) == (200, {"peer": PROD})
    assert (staging.status_code, staging.json()) == (403, {"detail": "peer not allowed"})
    assert (none.status_code, none.json()) == (
        403,
        {"detail": "a verified peer identity (mutual TLS) is required"},
    )
    assert (mesh.status_code, foreign.status_code) == (200, 403)


@pytest.mark.parametrize(
    ("build", "error", "field"),
    [
        (require_scopes, ConfigError, "require_scopes.scopes"),
        (lambda: require_scopes("orders read"), ConfigError, "require_scopes.scopes"),
        (lambda: require_scopes('orders"read'), ConfigError, "require_scopes.scopes"),
        (lambda: require_scopes("a", match="most"), ConfigError, "require_scopes.match"),
        (lambda: require_groups(""), ConfigError, "require_groups.groups"),
        (require_groups, ConfigError, "require_groups.groups"),
        (require_peer, ConfigError, "require_peer.peers"),
        (lambda: require_peer("spiffe://Cluster.Local/x"), InvalidSpiffeIdError, "require_peer.peers[0]"),
        (lambda: require_peer("spiffe://td/a*b"), ConfigError, "require_peer.peers[0]"),
    ],
)
def test_dependency_arguments_are_checked_when_declared(build: Any, error: type[ConfigError], field: str) -> None:
    with pytest.raises(error) as caught:
        build()
    assert caught.value.field == field


def test_the_library_does_not_import_fastapi() -> None:
    code = (
        "import sys\n"
        "import connectivity.middleware.auth_dependencies, connectivity.middleware.authorization\n"
        "import connectivity.middleware.api_key, connectivity.security.authz, connectivity.security.apikeys\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')], sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
