"""Authorization of inbound requests as pure ASGI middleware: Istio ``AuthorizationPolicy`` semantics in-process.

Theory of operation: the middleware is a thin shell around a :class:`~connectivity.security.Authorizer`. For each
HTTP request or WebSocket handshake it reads what the authentication middleware in front of it verified (the
peer in ``scope["connectivity.peer"]``, the principal in ``scope["connectivity.principal"]``, the JWT's claims in
``scope["connectivity.claims"]``) together with the method and path, asks for a decision, leaves it in
``scope["connectivity.authz"]`` and either calls the app or answers ``403 Forbidden`` with an RFC 9457 problem
body. DENY policies are evaluated first, then ALLOW ones; once any ALLOW policy exists, a request that matches
none is denied.

Decisions are pure functions of what they read, so the middleware remembers the last few thousand by that input
(method, raw path, peer, principal, the JWT's issuer, anonymity): a repeated request costs a tuple and a dict
lookup instead of building the request's facts and running every policy. Policies whose conditions read JWT claims
(``request.auth.claims[...]``) are evaluated every time.

The body says ``access denied`` and nothing else unless ``expose_policy=True``, which adds the deciding policy's
name (never its contents). A decision that fails for an unexpected reason is a denial, logged: authorization
fails closed, and never as a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import ASGIApp, Receive, Scope, Send, require_app, target_path
from connectivity.security.apikeys import ANONYMOUS_KEY
from connectivity.security.authz import Authorizer, Decision, Policy, RequestFacts
from connectivity.security.identity import CLAIMS_KEY, PEER_KEY, PRINCIPAL_KEY, Peer, Principal

__all__ = ["DECISION_KEY", "AuthorizationMiddleware"]

DECISION_KEY = "connectivity.authz"
"""Scope key where the middleware leaves its :class:`~connectivity.security.Decision` for the app to read."""

_log = logging.getLogger("connectivity.security")
_ERROR = Decision(False, None, "the decision failed")
_MEMO_SIZE = 4096


def _reads_claims(authorizer: Authorizer) -> bool:
    return any(
        condition.key.startswith("request.auth.claims")
        for policy in authorizer.policies
        for rule in policy.rules
        for condition in rule.conditions
    )


def _memo_key(scope: Scope) -> tuple[Any, ...] | None:
    """What a decision depends on (as :meth:`RequestFacts.from_scope` reads it), or ``None`` when unusual."""
    principal = scope.get(PRINCIPAL_KEY)
    peer = scope.get(PEER_KEY)
    issuer = None
    if type(principal) is Principal:
        if principal.method == "jwt":
            claims = scope.get(CLAIMS_KEY)
            if not isinstance(claims, Mapping):
                claims = principal.claims
            issuer = claims.get("iss")
            if issuer is not None and type(issuer) is not str:
                return None
    elif principal is not None:
        principal = None
    method, path = scope.get("method"), scope.get("path")
    if type(method) is not str or type(path) is not str:
        return None
    anonymous = scope.get(ANONYMOUS_KEY) is True
    return (method, path, peer if type(peer) is Peer else None, principal, issuer, anonymous)


def _forbidden(policy: str | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "access denied",
    }
    if policy is not None:
        problem["policy"] = policy
    body = json.dumps(problem, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    return headers, body


class AuthorizationMiddleware:
    """Allow or deny inbound requests by policy: DENY first, then ALLOW, default deny once ALLOW policies exist.

    Args:
        app: The ASGI application to wrap.
        policies: :class:`~connectivity.security.Policy` objects, mappings for
            :meth:`~connectivity.security.Policy.from_dict` (an Istio manifest works), or a ready
            :class:`~connectivity.security.Authorizer`.
        expose_policy: Name the denying policy in the 403 body (``"policy"``). Off by default: the name may tell a
            caller more than it should.

    Raises:
        ConfigError: A policy is invalid (the field is named).

    Put it inside the authentication middleware (peer identity, JWT, API key), whose results it reads. HTTP
    requests and WebSocket handshakes are authorized (a refused handshake is closed with code 1008, which the
    server turns into a 403); lifespan passes through.

    .. versionadded:: 0.1
    """

    __slots__ = ("_answers", "_memo", "app", "authorizer", "expose_policy")

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: Authorizer | Iterable[Policy | Mapping[str, Any]],
        expose_policy: bool = False,
    ) -> None:
        self.app = require_app("AuthorizationMiddleware", app)
        if not isinstance(expose_policy, bool):
            raise ConfigError("AuthorizationMiddleware.expose_policy", expose_policy, "must be True or False")
        self.expose_policy = expose_policy
        self.authorizer = policies if isinstance(policies, Authorizer) else Authorizer(policies)
        names: list[str | None] = [None]
        if expose_policy:
            names += [policy.name for policy in self.authorizer.policies]
        self._answers = {name: _forbidden(name) for name in names}
        self._memo: dict[tuple[Any, ...], Decision] | None = None if _reads_claims(self.authorizer) else {}

    def __repr__(self) -> str:
        return f"AuthorizationMiddleware(policies={[p.name for p in self.authorizer.policies]!r})"

    def _decide(self, scope: Scope) -> Decision:
        memo = self._memo
        if memo is not None:
            key = _memo_key(scope)
            if key is not None:
                decision = memo.get(key)
                if decision is None:
                    decision = self.authorizer.decide(RequestFacts.from_scope(scope))
                    if len(memo) >= _MEMO_SIZE:
                        memo.clear()
                    memo[key] = decision
                return decision
        return self.authorizer.decide(RequestFacts.from_scope(scope))

    async def _deny(self, scope: Scope, send: Send, decision: Decision) -> None:
        _log.debug("request denied: %s (%s %s)", decision.reason, scope.get("method", "GET"), target_path(scope))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        headers, body = self._answers.get(decision.policy if self.expose_policy else None) or self._answers[None]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            decision = self._decide(scope)
        except Exception:  # a bug or a scope no server builds: deny, never a 500
            _log.warning("authorization failed: request denied", exc_info=True)
            decision = _ERROR
        scope[DECISION_KEY] = decision
        if not decision.allowed:
            await self._deny(scope, send, decision)
            return
        await self.app(scope, receive, send)
