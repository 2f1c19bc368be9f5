"""Authorization of inbound requests as pure ASGI middleware: Istio ``AuthorizationPolicy`` semantics in-process.

Theory of operation: the middleware is a thin shell around a :class:`~connectivity.security.Authorizer`. For each
HTTP request or WebSocket handshake it reads what the authentication middleware in front of it verified (the
peer in ``scope["connectivity.peer"]``, the principal in ``scope["connectivity.principal"]``, the JWT's claims in
``scope["connectivity.claims"]``) together with the method and path, asks for a decision, leaves it in
``scope["connectivity.authz"]`` and either calls the app or answers ``403 Forbidden`` with an RFC 9457 problem
body. DENY policies are evaluated first, then ALLOW ones; once any ALLOW policy exists, a request that matches
none is denied.

Decisions are pure functions of what they read, so the middleware remembers the last few thousand by that input
(method, raw path, peer, the principal's id, method, scopes and groups, the JWT's issuer, anonymity): a repeated
request costs a flat tuple and a dict lookup instead of building the request's facts and running every policy.
Policies whose conditions read JWT claims (``request.auth.claims[...]``) are evaluated every time, and so are
requests carrying identities of unexpected types (subclasses included). The middleware wraps neither ``receive``
nor ``send`` and writes one scope key: an allowed request costs one extra ASGI hop.

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
from connectivity.middleware._hop import Hop
from connectivity.security.apikeys import ANONYMOUS_KEY
from connectivity.security.authz import Authorizer, Decision, Policy, RequestFacts
from connectivity.security.identity import CLAIMS_KEY, PEER_KEY, PRINCIPAL_KEY, Peer, Principal

__all__ = ["DECISION_KEY", "AuthorizationMiddleware"]

DECISION_KEY = "connectivity.authz"
"""Scope key where the middleware leaves its :class:`~connectivity.security.Decision` for the app to read."""

_log = logging.getLogger("connectivity.security")
_ERROR = Decision(False, None, "the decision failed")
_MEMO_SIZE = 4096
_AUTHORIZED = ("http", "websocket")


def _reads_claims(authorizer: Authorizer) -> bool:
    return any(
        condition.key.startswith("request.auth.claims")
        for policy in authorizer.policies
        for rule in policy.rules
        for condition in rule.conditions
    )


def _memo_key(scope: Scope) -> tuple[Any, ...] | None:
    """What a decision depends on (as :meth:`RequestFacts.from_scope` reads it), or ``None`` when unusual.

    The principal enters by the fields a decision reads (id, method, scopes, groups, and a JWT's issuer) rather
    than as an object, so that the key hashes without a Python-level ``__hash__``. Subclasses of
    :class:`Principal` or :class:`Peer` (which may compare or hash differently) and methods, paths or ids that are
    not strings are not remembered: such a request is decided afresh, exactly as without the memo.
    """
    method, path = scope.get("method"), scope.get("path")
    if method.__class__ is not str or path.__class__ is not str:
        return None
    peer, principal = scope.get(PEER_KEY), scope.get(PRINCIPAL_KEY)
    if peer is not None and peer.__class__ is not Peer:
        if isinstance(peer, Peer):
            return None
        peer = None  # not a peer: RequestFacts ignores it
    anonymous = scope.get(ANONYMOUS_KEY) is True
    if principal.__class__ is Principal:
        ident, kind, issuer = principal.id, principal.method, None
        if ident.__class__ is not str:
            return None
        if kind == "jwt":
            claims = principal.claims
            given = scope.get(CLAIMS_KEY)
            if given is not claims and isinstance(given, Mapping):  # the JWT middleware stores principal.claims
                claims = given
            issuer = claims.get("iss")
            if issuer is not None and issuer.__class__ is not str:
                return None
        return (method, path, peer, ident, kind, principal.scopes, principal.groups, issuer, anonymous)
    if isinstance(principal, Principal):
        return None
    return (method, path, peer, None, None, None, None, None, anonymous)  # no principal (or not one)


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


class AuthorizationMiddleware(Hop):
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

    __slots__ = ("_answers", "_app", "_call", "_memo", "authorizer", "expose_policy")

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

    def _decide(self, scope: Scope, key: tuple[Any, ...] | None) -> Decision:
        """The decision for a request the memo did not answer; remembered under ``key`` unless it is ``None``."""
        decision = self.authorizer.decide(RequestFacts.from_scope(scope))
        memo = self._memo
        if memo is not None and key is not None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[key] = decision
        return decision

    async def _deny(self, scope: Scope, send: Send, decision: Decision) -> None:
        _log.debug("request denied: %s (%s %s)", decision.reason, scope.get("method", "GET"), target_path(scope))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        headers, body = self._answers.get(decision.policy if self.expose_policy else None) or self._answers[None]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _AUTHORIZED:
            await self._call(scope, receive, send)
            return
        try:
            memo, key, decision = self._memo, None, None
            if memo is not None:
                key = _memo_key(scope)
                if key is not None:
                    decision = memo.get(key)
            if decision is None:
                decision = self._decide(scope, key)
        except Exception:  # a bug or a scope no server builds: deny, never a 500
            _log.warning("authorization failed: request denied", exc_info=True)
            decision = _ERROR
        scope[DECISION_KEY] = decision
        if decision.allowed:
            await self._call(scope, receive, send)
            return
        await self._deny(scope, send, decision)
