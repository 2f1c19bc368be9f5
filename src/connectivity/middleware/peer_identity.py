"""Who is the calling workload: its certificate identity, as pure ASGI middleware.

Theory of operation: for each HTTP or WebSocket request the middleware asks its configured *sources*, in order,
and the first one that is *present* decides:

* ``"tls"``: the ASGI TLS extension (``scope["extensions"]["tls"]``), filled in by a server that terminated TLS
  itself (uvicorn with :class:`connectivity.security.uvicorn.TLSH11Protocol`). It is present when the client sent
  a certificate; the server verified it during the handshake, so it is believed from any address.
* ``"xfcc"``: Envoy's ``x-forwarded-client-cert``, and ``"client-cert"``: RFC 9440's ``Client-Cert``. A proxy that
  terminated the client's TLS writes them, so they are believed only when the direct peer (``scope["client"]``)
  is one of ``trusted_proxies``. From an XFCC header, the *last* element counts: the proxy next to this service
  appended it, about its own client.

From any other address the three client-certificate headers (``Client-Cert-Chain`` too) are removed from the
scope before the app sees them, whatever the sources, as Envoy's default ``SANITIZE`` does: an app (or a library
in it) that reads them can never be fooled by a client that wrote them itself.

A source that is present but unusable (a malformed header, bytes that are not a certificate, a URI SAN that is not
a valid SPIFFE id, more than one URI SAN, a certificate that breaks the X509-SVID leaf rules) gives *no identity*,
and the sources after it are not asked: a broken credential never falls back to a weaker one. A certificate
without any URI SAN gives a :class:`~connectivity.security.identity.Peer` without a SPIFFE id (its DNS names only).

The result goes into ``scope["connectivity.peer"]`` (a :class:`~connectivity.security.identity.Peer`) and, with a
SPIFFE id, ``scope["connectivity.peer_id"]`` (its text), where ``ratelimit_keys.spiffe_id()``, authorization and
handlers read it. With ``require=True`` (or an allow-list), a request without a SPIFFE id is answered ``401`` and
one whose id is not allowed ``403``, each with an RFC 9457 problem body, before the app sees it.

Cost: a request without client-certificate headers costs one pass over its header names; parsing happens once
per distinct certificate or header value, whose result (identity or none) is kept in a small LRU cache.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias, TypeVar, cast

from cachetools import LRUCache
from cryptography import x509

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import ASGIApp, Receive, Scope, Send, require_app
from connectivity.middleware.ratelimit_keys import _address, _networks, _trusted
from connectivity.policies._validate import at_least_int
from connectivity.security.identity import PEER_ID_KEY, PEER_KEY, Peer
from connectivity.security.spiffe import SpiffeId, validate_trust_domain
from connectivity.security.x509 import dns_names, load_certificates, svid_id, uri_names
from connectivity.security.xfcc import (
    CLIENT_CERT,
    CLIENT_CERT_CHAIN,
    XFCC,
    MalformedHeaderError,
    parse_client_cert,
    parse_xfcc,
)

__all__ = ["SOURCES", "PeerIdentityMiddleware", "Source"]

Source: TypeAlias = Literal["tls", "xfcc", "client-cert"]
"""Where an identity may come from."""

SOURCES: tuple[Source, ...] = ("tls", "xfcc", "client-cert")
"""Every source, in the order the ASGI TLS extension, Envoy's header and RFC 9440's are usually preferred."""

_log = logging.getLogger("connectivity.peer_identity")
_Network: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"

# Lower-case header name -> the source it feeds (the chain feeds none, but is sanitised all the same).
_HEADERS: Final[Mapping[bytes, str]] = {
    XFCC.encode("ascii"): "xfcc",
    CLIENT_CERT.encode("ascii"): "client-cert",
    CLIENT_CERT_CHAIN.encode("ascii"): "client-cert-chain",
}
_ABSENT: Final = object()  # a source with nothing to say (as opposed to None: it spoke, and it was unusable)
_MISSING: Final = object()
_MAX_CACHED_LENGTH = 16_384  # longer values (a chain in XFCC) are parsed every time rather than held
_MAX_TRUST_ENTRIES = 1024
_T = TypeVar("_T")


def _problem(status: int, title: str, detail: str) -> bytes:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return json.dumps(body, separators=(",", ":")).encode("ascii")


_UNAUTHORIZED = _problem(401, "Unauthorized", "a verified peer identity (a SPIFFE id) is required")
_FORBIDDEN = _problem(403, "Forbidden", "the peer identity is not allowed")


# -- from certificates and headers to a Peer (pure; results are cached by the middleware) --------------------
def _certificate_peer(certificate: x509.Certificate, source: Source, origin: str) -> Peer:
    dns = tuple(dns_names(certificate))
    if not uri_names(certificate):
        return Peer(None, dns, source)
    return Peer(svid_id(certificate, source=origin), dns, source)


def _tls_peer(pem: str) -> Peer:
    origin = "TLS client certificate"
    return _certificate_peer(load_certificates(pem, source=origin)[0], "tls", origin)


def _client_cert_peer(value: str) -> Peer:
    der = parse_client_cert(value)
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        raise MalformedHeaderError(CLIENT_CERT, "does not hold a DER certificate") from None
    return _certificate_peer(certificate, "client-cert", CLIENT_CERT)


def _xfcc_peer(value: str) -> Peer:
    element = parse_xfcc(value)[-1]
    if element.uri:
        if len(element.uri) != 1:
            raise MalformedHeaderError(
                XFCC, f"the last element has {len(element.uri)} URI SANs; an X509-SVID has exactly one"
            )
        return Peer(SpiffeId.parse(element.uri[0], field=f"{XFCC} URI"), element.dns, "xfcc")
    if element.cert is not None:  # a proxy configured to forward the certificate rather than its names
        origin = f"{XFCC} Cert"
        return _certificate_peer(load_certificates(element.cert, source=origin)[0], "xfcc", origin)
    return Peer(None, element.dns, "xfcc")


_PARSERS = {"tls": _tls_peer, "xfcc": _xfcc_peer, "client-cert": _client_cert_peer}


def _parse(source: Source, text: str) -> Peer | None:
    try:
        return _PARSERS[source](text)
    except (MalformedHeaderError, ConfigError) as error:  # ConfigError: CertificateError, InvalidSpiffeIdError
        _log.warning("peer identity from %s ignored: %s", source, error)
    except Exception as error:  # cryptography raising on a malformed extension must not become a 500
        _log.warning("peer identity from %s ignored: unreadable certificate (%s)", source, type(error).__name__)
    return None


# -- configuration -------------------------------------------------------------------------------------------
def _collection(field: str, value: Iterable[_T]) -> list[_T]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(field, value, "must be a collection (not one string)")
    return list(value)


def _sources(value: Iterable[Source]) -> tuple[Source, ...]:
    field = "PeerIdentityMiddleware.sources"
    items = _collection(field, value)
    if not items:
        raise ConfigError(field, value, "must name at least one source")
    for item in items:
        if item not in SOURCES:
            raise ConfigError(field, item, f"must be one of {', '.join(SOURCES)}")
    if len(set(items)) != len(items):
        raise ConfigError(field, value, "must not name a source twice")
    return tuple(items)


def _allowed_ids(value: Iterable[str | SpiffeId] | None) -> frozenset[SpiffeId]:
    field = "PeerIdentityMiddleware.allowed_ids"
    if value is None:
        return frozenset()
    items = _collection(field, value)
    return frozenset(item if isinstance(item, SpiffeId) else SpiffeId.parse(item, field=field) for item in items)


def _trust_domains(value: Iterable[str] | None) -> frozenset[str]:
    field = "PeerIdentityMiddleware.allowed_trust_domains"
    if value is None:
        return frozenset()
    return frozenset(validate_trust_domain(item, field=field) for item in _collection(field, value))


def _paths(value: Iterable[str]) -> tuple[str, ...]:
    field = "PeerIdentityMiddleware.exclude_paths"
    paths = _collection(field, value)
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(field, path, "must be a path starting with '/'")
    return tuple(paths)


class PeerIdentityMiddleware:
    """Record the calling workload's identity in the scope; optionally require it and restrict it.

    Args:
        app: The ASGI application to wrap.
        sources: Where an identity may come from, in order of preference (the first present one decides):
            ``"tls"`` (the ASGI TLS extension), ``"xfcc"`` (Envoy's ``x-forwarded-client-cert``),
            ``"client-cert"`` (RFC 9440). Only ``"tls"`` by default: a header source is trusted only when named.
        trusted_proxies: Addresses or CIDR blocks of the proxies whose XFCC / Client-Cert headers are believed
            (matched against ``scope["client"]``). Required with a header source. From every other address those
            headers are removed before the app sees them.
        require: Answer ``401`` when no source gives a SPIFFE id.
        allowed_ids: SPIFFE ids allowed to call (text or :class:`~connectivity.security.SpiffeId`).
        allowed_trust_domains: Trust domains whose every id is allowed to call (``"bank.example"``). With an
            allow-list, a request whose id is on neither list gets ``403``, and one without an id ``401``
            (an allow-list implies ``require``: not presenting a certificate must not be a way around it).
        exclude_paths: Paths where nothing is enforced (identity is still recorded and headers sanitised): an
            exact path, or a prefix when it ends with ``/``. Empty by default.
        cache_size: Distinct certificates / header values whose parsed identity is kept (LRU).

    Raises:
        ConfigError: An unknown or repeated source, a header source without ``trusted_proxies``, a proxy that is
            not an address or CIDR block, an invalid SPIFFE id or trust domain (``InvalidSpiffeIdError``), a path
            not starting with ``/``, or ``cache_size`` < 1.

    Status codes follow Envoy's split between authentication (``jwt_authn``: 401, the credential is missing or
    unusable) and authorization (``rbac``: 403 "access denied", the identity is known but not allowed). The 401
    carries no ``WWW-Authenticate`` challenge: no HTTP authentication scheme exists for TLS client certificates
    (the challenge is the TLS handshake's CertificateRequest). A WebSocket handshake that is refused is closed
    with code 1008 (policy violation), which the server turns into ``403``.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_cache",
        "_exact",
        "_lock",
        "_networks",
        "_prefixes",
        "_trust",
        "allowed_ids",
        "allowed_trust_domains",
        "app",
        "exclude_paths",
        "require",
        "sources",
        "trusted_proxies",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        sources: Iterable[Source] = ("tls",),
        trusted_proxies: Iterable[str] = (),
        require: bool = False,
        allowed_ids: Iterable[str | SpiffeId] | None = None,
        allowed_trust_domains: Iterable[str] | None = None,
        exclude_paths: Iterable[str] = (),
        cache_size: int = 256,
    ) -> None:
        self.app = require_app("PeerIdentityMiddleware", app)
        self.sources = _sources(sources)
        self._networks: tuple[_Network, ...] = _networks("PeerIdentityMiddleware.trusted_proxies", trusted_proxies)
        self.trusted_proxies = tuple(str(network) for network in self._networks)
        headers = [source for source in self.sources if source != "tls"]
        if headers and not self._networks:
            raise ConfigError(
                "PeerIdentityMiddleware.trusted_proxies",
                trusted_proxies,
                f"must list the proxies allowed to send the {' and '.join(headers)} header(s)",
            )
        if not isinstance(require, bool):
            raise ConfigError("PeerIdentityMiddleware.require", require, "must be True or False")
        self.allowed_ids = _allowed_ids(allowed_ids)
        self.allowed_trust_domains = _trust_domains(allowed_trust_domains)
        self.require = require or bool(self.allowed_ids or self.allowed_trust_domains)
        self.exclude_paths = _paths(exclude_paths)
        self._exact = frozenset(path for path in self.exclude_paths if not path.endswith("/"))
        self._prefixes = tuple(path for path in self.exclude_paths if path.endswith("/"))
        self._cache: LRUCache[tuple[str, str], Peer | None] = LRUCache(
            maxsize=at_least_int("PeerIdentityMiddleware.cache_size", cache_size, 1)
        )
        self._lock = threading.Lock()  # cachetools caches are not thread-safe; one app may serve several loops
        self._trust: dict[str, bool] = {}

    # -- sources ---------------------------------------------------------------------------------------------
    def _cached(self, source: Source, text: str) -> Peer | None:
        key = (source, text)
        with self._lock:
            found = self._cache.get(key, _MISSING)
        if found is not _MISSING:
            return cast("Peer | None", found)
        peer = _parse(source, text)
        if len(text) <= _MAX_CACHED_LENGTH:
            with self._lock:
                self._cache[key] = peer
        return peer

    def _from_tls(self, scope: Scope) -> object:
        extensions = scope.get("extensions")
        tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
        if not isinstance(tls, Mapping):
            return _ABSENT
        chain = tls.get("client_cert_chain")
        if isinstance(chain, (list, tuple)):
            leaf = chain[0] if chain else None
        elif isinstance(chain, Iterable) and not isinstance(chain, (str, bytes)):
            leaf = next(iter(chain), None)
        else:
            leaf = None
        if leaf is None:
            return _ABSENT  # no client certificate
        error = tls.get("client_cert_error")
        if error is not None:
            _log.warning("peer identity from tls ignored: the server reports %s", error)
            return None
        if not isinstance(leaf, str):
            _log.warning("peer identity from tls ignored: the certificate is not PEM text")
            return None
        return self._cached("tls", leaf)

    def _from_trusted_proxy(self, scope: Scope) -> bool:
        client = scope.get("client")
        host = client[0] if client else None
        if not isinstance(host, str):
            return False
        trusted = self._trust.get(host)
        if trusted is None:
            address = _address(host)
            trusted = address is not None and _trusted(address, self._networks)
            if len(self._trust) >= _MAX_TRUST_ENTRIES:
                self._trust.clear()
            self._trust[host] = trusted
        return trusted

    def _identify(self, scope: Scope) -> Peer | None:
        headers = scope.get("headers")
        found: dict[str, list[str]] | None = None
        if headers:
            for name, value in headers:
                kind = _HEADERS.get(name.lower())
                if kind is not None:
                    if found is None:
                        found = {}
                    found.setdefault(kind, []).append(value.decode("latin-1"))
        trusted = False
        if found is not None:
            trusted = self._from_trusted_proxy(scope)
            if not trusted:
                scope["headers"] = [(name, value) for name, value in headers or () if name.lower() not in _HEADERS]
                _log.debug("client-certificate headers from untrusted peer %s removed", scope.get("client"))
        for source in self.sources:
            if source == "tls":
                result = self._from_tls(scope)
            elif trusted and found is not None and source in found:
                result = self._cached(source, ",".join(found[source]))
            else:
                continue
            if result is not _ABSENT:
                return cast("Peer | None", result)
        return None

    # -- enforcement -------------------------------------------------------------------------------------------
    def _excluded(self, path: object) -> bool:
        return isinstance(path, str) and (
            path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))
        )

    def _denial(self, peer: Peer | None) -> int:
        """0 when the request may go on, else the status to answer with."""
        spiffe_id = peer.spiffe_id if peer is not None else None
        if spiffe_id is None:
            return 401
        if (self.allowed_ids or self.allowed_trust_domains) and not (
            spiffe_id in self.allowed_ids or spiffe_id.trust_domain in self.allowed_trust_domains
        ):
            return 403
        return 0

    async def _deny(self, scope: Scope, send: Send, status: int) -> None:
        _log.debug("request from %s refused with %d", scope.get("client"), status)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        body = _UNAUTHORIZED if status == 401 else _FORBIDDEN
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        # Only this middleware's verdict counts: whatever an outer layer left under our keys goes.
        scope.pop(PEER_KEY, None)
        scope.pop(PEER_ID_KEY, None)
        peer = self._identify(scope)
        if peer is not None:
            scope[PEER_KEY] = peer
            if peer.spiffe_id is not None:
                scope[PEER_ID_KEY] = str(peer.spiffe_id)
        if self.require and not self._excluded(scope.get("path")):
            status = self._denial(peer)
            if status:
                await self._deny(scope, send, status)
                return
        await self.app(scope, receive, send)
