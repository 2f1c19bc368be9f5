"""FastAPI dependencies that check what the authentication middleware verified: scopes, groups, the peer.

Each factory validates its arguments when called (at import time of the routes) and returns an async dependency
that reads the request's scope and either returns what it checked (the :class:`~connectivity.security.Principal`
or :class:`~connectivity.security.Peer`) or raises ``fastapi.HTTPException``:

* ``401`` when there is no authenticated principal (none, or the anonymous consumer lacking what is required),
  with ``WWW-Authenticate: Bearer`` (RFC 6750 section 3: no error code when no credential was sent);
* ``403`` when the principal lacks a scope, with ``WWW-Authenticate: Bearer error="insufficient_scope",
  scope="..."`` (RFC 6750 section 3.1), or a group;
* ``403`` from :func:`require_peer` when the peer is missing or not one of those expected: a TLS client
  certificate has no ``WWW-Authenticate`` challenge, which a 401 must carry (RFC 9110 section 15.5.2).

This module imports neither FastAPI nor Starlette at import time: they are imported when a factory is called.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from connectivity.errors import ConfigError
from connectivity.security._authz_match import _patterns
from connectivity.security.apikeys import ANONYMOUS_KEY
from connectivity.security.identity import PEER_KEY, PRINCIPAL_KEY, Peer, Principal
from connectivity.security.spiffe import SCHEME

__all__ = ["require_groups", "require_peer", "require_scopes"]

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 section 3.3 scope-token


def _names(field: str, values: tuple[Any, ...], pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    if not values:
        raise ConfigError(field, values, "name at least one")
    for value in values:
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
            rule = "must be a scope token (printable ASCII, no space, '\"' or '\\')" if pattern else "non-empty"
            raise ConfigError(field, value, rule)
    return values


def _match(field: str, match: str) -> Literal["all", "any"]:
    if match not in ("all", "any"):
        raise ConfigError(field, match, "must be 'all' or 'any'")
    return match  # type: ignore[return-value]


def _with_connection(dependency: Callable[..., Awaitable[Any]], returns: type) -> Callable[..., Awaitable[Any]]:
    from starlette.requests import HTTPConnection

    # FastAPI reads the parameter's type from the signature; with postponed annotations it would be a string
    # naming a class this module does not import at the top. HTTPConnection serves HTTP and WebSocket routes.
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("connection", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection)],
        return_annotation=returns,
    )
    return dependency


def _principal_check(
    field: str, required: tuple[str, ...], match: str, attribute: str, insufficient: Callable[[], Exception]
) -> Callable[..., Awaitable[Principal]]:
    from fastapi import HTTPException

    wanted = frozenset(required)
    every = _match(f"{field}.match", match) == "all"

    async def dependency(connection: Any) -> Principal:
        scope = connection.scope
        principal = scope.get(PRINCIPAL_KEY)
        if not isinstance(principal, Principal):
            raise HTTPException(401, detail="not authenticated", headers={"WWW-Authenticate": "Bearer"})
        granted: frozenset[str] = getattr(principal, attribute)
        if wanted <= granted if every else not wanted.isdisjoint(granted):
            return principal
        if scope.get(ANONYMOUS_KEY) is True:  # authenticating may help: say so
            raise HTTPException(401, detail="not authenticated", headers={"WWW-Authenticate": "Bearer"})
        raise insufficient()

    return _with_connection(dependency, Principal)


def require_scopes(*scopes: str, match: Literal["all", "any"] = "all") -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the principal must hold the scopes (``Depends(require_scopes("orders:read"))``).

    Args:
        scopes: Scope tokens (RFC 6749 section 3.3).
        match: ``"all"`` (default) or ``"any"`` of them.

    Returns:
        An async dependency returning the :class:`~connectivity.security.Principal`; it raises ``401`` without an
        authenticated principal and ``403`` with ``WWW-Authenticate: Bearer error="insufficient_scope",
        scope="<the scopes>"`` when scopes are missing.

    Raises:
        ConfigError: No scope, or one that is not a scope token.

    .. versionadded:: 0.1
    """
    from fastapi import HTTPException

    required = _names("require_scopes.scopes", scopes, _SCOPE_TOKEN)
    challenge = f'Bearer error="insufficient_scope", scope="{" ".join(required)}"'

    def insufficient() -> Exception:
        return HTTPException(403, detail="insufficient scope", headers={"WWW-Authenticate": challenge})

    return _principal_check("require_scopes", required, match, "scopes", insufficient)


def require_groups(*groups: str, match: Literal["all", "any"] = "all") -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal must belong to the groups (``Depends(require_groups("ops"))``).

    Args:
        groups: Group names (API-key consumer groups, or the groups a JWT middleware put in the principal).
        match: ``"all"`` (default) or ``"any"`` of them.

    Returns:
        An async dependency returning the :class:`~connectivity.security.Principal`; it raises ``401`` without an
        authenticated principal and ``403`` when groups are missing.

    Raises:
        ConfigError: No group, or an empty name.

    .. versionadded:: 0.1
    """
    from fastapi import HTTPException

    required = _names("require_groups.groups", groups)

    def insufficient() -> Exception:
        return HTTPException(403, detail="not a member of the required groups")

    return _principal_check("require_groups", required, match, "groups", insufficient)


def require_peer(*peers: str) -> Callable[..., Awaitable[Peer]]:
    """A FastAPI dependency: the peer (mTLS) must be one of ``peers`` (``Depends(require_peer("spiffe://td/x"))``).

    Args:
        peers: SPIFFE ids (``"spiffe://td/ns/prod/sa/orders"``), trust domains (``"td"`` or
            ``"spiffe://td"``: every id in it), or Istio-style patterns (``"spiffe://td/ns/prod/*"``, ``"*"``
            for any verified peer), as in :class:`~connectivity.security.Source` ``principals``.

    Returns:
        An async dependency returning the :class:`~connectivity.security.Peer`; it raises ``403`` when there is
        no verified peer or it matches none of ``peers``.

    Raises:
        ConfigError: No pattern, or an invalid SPIFFE id or trust domain.

    .. versionadded:: 0.1
    """
    from fastapi import HTTPException

    match = _patterns("require_peer.peers", _names("require_peer.peers", peers), kind="peer")

    async def dependency(connection: Any) -> Peer:
        peer = connection.scope.get(PEER_KEY)
        spiffe_id = peer.spiffe_id if isinstance(peer, Peer) else None
        if spiffe_id is None:
            raise HTTPException(403, detail="a verified peer identity (mutual TLS) is required")
        if not match(str(spiffe_id)[len(SCHEME) :]):
            raise HTTPException(403, detail="peer not allowed")
        assert isinstance(peer, Peer)
        return peer

    return _with_connection(dependency, Peer)
