"""AuthorizationMiddleware remembers decisions by their input; a remembered decision is always the fresh one."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from connectivity.middleware import _hop, authorization
from connectivity.middleware.authorization import DECISION_KEY, AuthorizationMiddleware
from connectivity.security import Authorizer, Peer, Principal, RequestFacts, SpiffeId
from connectivity.security.identity import CLAIMS_KEY, PEER_KEY, PRINCIPAL_KEY

POLICIES: list[dict[str, Any]] = [
    {"name": "no-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
    {
        "name": "checkout",
        "rules": [{"from": [{"source": {"principals": ["spiffe://shop.test/ns/shop/sa/checkout"]}}]}],
    },
    {
        "name": "writers",
        "rules": [
            {
                "from": [{"source": {"scopes": ["orders:write"]}}],
                "to": [{"operation": {"methods": ["POST"], "paths": ["/orders"]}}],
            }
        ],
    },
    {"name": "alice-from-idp", "rules": [{"from": [{"source": {"requestPrincipals": ["https://idp/alice"]}}]}]},
]

PEERS = [
    None,
    Peer(SpiffeId.parse("spiffe://shop.test/ns/shop/sa/checkout")),
    Peer(SpiffeId.parse("spiffe://shop.test/x")),
]
PRINCIPALS = [
    None,
    Principal("alice", "jwt", claims={"iss": "https://idp"}),
    Principal("alice", "jwt", claims={"iss": "https://elsewhere"}),
    Principal("bob", "jwt", scopes=frozenset({"orders:write"}), claims={"iss": "https://idp"}),
    Principal("bob", "api_key", groups=frozenset({"ops"})),
]
REQUESTS = [("GET", "/orders"), ("POST", "/orders"), ("GET", "/admin/users"), ("GET", "/public/../admin/x")]


def scope_of(method: str, path: str, peer: Peer | None, principal: Principal | None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path, "headers": []}
    if peer is not None:
        scope[PEER_KEY] = peer
    if principal is not None:
        scope[PRINCIPAL_KEY] = principal
        if principal.method == "jwt":
            scope[CLAIMS_KEY] = principal.claims
    return scope


async def decide(middleware: AuthorizationMiddleware, scope: dict[str, Any]) -> bool:
    sent: list[dict[str, Any]] = []
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware.app = app
    await middleware(scope, None, send)  # type: ignore[arg-type]
    assert bool(reached) == scope[DECISION_KEY].allowed
    return bool(reached)


@pytest.mark.anyio
async def test_remembered_decisions_equal_fresh_ones() -> None:
    authorizer = Authorizer(POLICIES)
    middleware = AuthorizationMiddleware(lambda *args: None, policies=authorizer)  # type: ignore[arg-type, return-value]
    cases = list(itertools.product(REQUESTS, PEERS, PRINCIPALS))
    for _ in range(2):  # the second pass is answered from memory
        for (method, path), peer, principal in cases:
            scope = scope_of(method, path, peer, principal)
            expected = authorizer.decide(RequestFacts.from_scope(scope)).allowed
            assert await decide(middleware, scope) is expected, (method, path, peer, principal)
    assert middleware._memo is not None
    assert len(middleware._memo) == len(cases)


@pytest.mark.anyio
async def test_policies_reading_claims_are_evaluated_every_time() -> None:
    policy = {
        "name": "premium",
        "rules": [{"when": [{"key": "request.auth.claims[plan]", "values": ["premium"]}]}],
    }
    middleware = AuthorizationMiddleware(lambda *args: None, policies=[policy])  # type: ignore[arg-type, return-value]
    assert middleware._memo is None
    premium = Principal("carol", "jwt", claims={"plan": "premium"})
    basic = Principal("carol", "jwt", claims={"plan": "basic"})  # equal to `premium` as a Principal
    assert premium == basic
    assert await decide(middleware, scope_of("GET", "/", None, premium)) is True
    assert await decide(middleware, scope_of("GET", "/", None, basic)) is False


@pytest.mark.anyio
async def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authorization, "_MEMO_SIZE", 8)
    middleware = AuthorizationMiddleware(lambda *args: None, policies=POLICIES)  # type: ignore[arg-type, return-value]
    for index in range(20):
        await decide(middleware, scope_of("GET", f"/orders/{index}", PEERS[1], None))
    assert middleware._memo is not None
    assert 0 < len(middleware._memo) <= 8


class _SubPrincipal(Principal):
    __slots__ = ()


class _SubPeer(Peer):
    __slots__ = ()


@pytest.mark.anyio
async def test_subclassed_identities_are_not_remembered_as_anonymous() -> None:
    """A Principal or Peer subclass is decided afresh; its decision never answers a request without one."""
    policies = [
        {"name": "signed-in", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
        {"name": "mesh", "rules": [{"from": [{"source": {"principals": ["spiffe://shop.test/*"]}}]}]},
    ]
    middleware = AuthorizationMiddleware(lambda *args: None, policies=policies)  # type: ignore[arg-type, return-value]
    principal = _SubPrincipal("alice", "jwt", claims={"iss": "https://idp"})
    peer = _SubPeer(SpiffeId.parse("spiffe://shop.test/ns/shop/sa/checkout"))
    for _ in range(2):
        assert await decide(middleware, scope_of("GET", "/orders", None, principal)) is True
        assert await decide(middleware, scope_of("GET", "/orders", peer, None)) is True
        assert await decide(middleware, scope_of("GET", "/orders", None, None)) is False
    assert middleware._memo is not None
    assert len(middleware._memo) == 1  # only the request without identities


@pytest.mark.anyio
async def test_the_issuer_comes_from_the_claims_in_the_scope() -> None:
    middleware = AuthorizationMiddleware(lambda *args: None, policies=POLICIES)  # type: ignore[arg-type, return-value]
    principal = Principal("alice", "jwt", claims={"iss": "https://elsewhere"})
    vouched = scope_of("GET", "/orders", None, principal)
    vouched[CLAIMS_KEY] = {"iss": "https://idp"}
    for _ in range(2):
        assert await decide(middleware, vouched | {}) is True
        assert await decide(middleware, scope_of("GET", "/orders", None, principal)) is False


@pytest.mark.anyio
async def test_identities_of_unexpected_types_are_ignored_as_without_memo() -> None:
    middleware = AuthorizationMiddleware(lambda *args: None, policies=POLICIES)  # type: ignore[arg-type, return-value]
    odd: dict[str, Any] = {"type": "http", "method": "GET", "path": "/orders", "headers": []}
    odd[PRINCIPAL_KEY], odd[PEER_KEY] = "alice", "spiffe://shop.test/ns/shop/sa/checkout"
    for _ in range(2):
        assert await decide(middleware, odd | {}) is False
    odd_id = scope_of("GET", "/orders", None, Principal(7, "jwt", claims={"iss": "https://idp"}))  # type: ignore[arg-type]
    assert await decide(middleware, odd_id) is False
    assert middleware._memo is not None
    assert len(middleware._memo) == 1


@pytest.mark.anyio
async def test_the_wrapped_app_can_be_replaced_and_is_called_directly() -> None:
    calls: list[str] = []

    class App:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append("instance")

    async def function_app(scope: Any, receive: Any, send: Any) -> None:
        calls.append("function")

    instance = App()
    middleware = AuthorizationMiddleware(instance, policies=[])  # type: ignore[arg-type]
    assert middleware.app is instance
    assert _hop.fast_call(instance) == instance.__call__  # the bound method: no generic instance call per hop
    assert _hop.fast_call(function_app) is function_app
    await middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, None, None)  # type: ignore[arg-type]
    middleware.app = function_app  # type: ignore[assignment]
    assert middleware.app is function_app
    await middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, None, None)  # type: ignore[arg-type]
    assert calls == ["instance", "function"]
