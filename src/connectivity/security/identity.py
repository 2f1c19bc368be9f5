"""Who is calling: the peer workload (mTLS) and the request's principal (JWT or API key), as ASGI scope keys.

Inbound middleware record what they verified in the ASGI scope, where authorization, rate-limit keys and
handlers read it:

* ``scope["connectivity.peer"]``: a :class:`Peer` (set by ``PeerIdentityMiddleware``), and its SPIFFE id as text in
  ``scope["connectivity.peer_id"]``;
* ``scope["connectivity.principal"]``: a :class:`Principal` (set by ``JWTAuthMiddleware`` or
  ``APIKeyAuthMiddleware``), and a JWT's verified claims in ``scope["connectivity.claims"]``.

This mirrors Istio's split between ``source.principal`` (the peer) and ``request.auth.principal`` (the end user).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from connectivity.security.spiffe import SpiffeId

__all__ = [
    "CLAIMS_KEY",
    "PEER_ID_KEY",
    "PEER_KEY",
    "PRINCIPAL_KEY",
    "Peer",
    "Principal",
    "peer_of",
    "principal_of",
]

PEER_KEY = "connectivity.peer"
PEER_ID_KEY = "connectivity.peer_id"
PRINCIPAL_KEY = "connectivity.principal"
CLAIMS_KEY = "connectivity.claims"


@dataclass(frozen=True, slots=True)
class Peer:
    """The workload at the other end of the connection, as proven by its certificate.

    Attributes:
        spiffe_id: Its SPIFFE id (``None`` when the certificate carries none).
        dns_names: Its DNS SANs.
        source: How it was learnt: ``"tls"`` (this process terminated TLS), ``"xfcc"`` (Envoy's
            ``x-forwarded-client-cert`` from a trusted proxy) or ``"client-cert"`` (RFC 9440 from a trusted proxy).

    .. versionadded:: 0.1
    """

    spiffe_id: SpiffeId | None
    dns_names: tuple[str, ...] = ()
    source: Literal["tls", "xfcc", "client-cert"] = "tls"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request, as proven by a request credential.

    Attributes:
        id: The JWT's subject (``sub``) or the API key's consumer id.
        method: ``"jwt"`` or ``"api_key"``.
        scopes: Granted scopes (a JWT's ``scope``/``scp`` claim).
        groups: Groups (an API-key consumer's groups, or a configured JWT claim).
        claims: The JWT's verified claims (empty for API keys). Left out of ``repr``.

    .. versionadded:: 0.1
    """

    id: str
    method: Literal["jwt", "api_key"]
    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False, compare=False)


def _scope(source: Any) -> Mapping[str, Any]:
    scope = getattr(source, "scope", source)  # a Starlette Request, or the ASGI scope itself
    if not isinstance(scope, Mapping):
        raise TypeError(f"expected an ASGI scope or a request, got {type(source).__name__}")
    return scope


def peer_of(source: Any) -> Peer | None:
    """The verified peer of a request (an ASGI scope or a Starlette/FastAPI ``Request``), if any."""
    peer = _scope(source).get(PEER_KEY)
    return peer if isinstance(peer, Peer) else None


def principal_of(source: Any) -> Principal | None:
    """The authenticated principal of a request (an ASGI scope or a Starlette/FastAPI ``Request``), if any."""
    principal = _scope(source).get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None
