"""Rate-limit keys: who is calling, as functions of the ASGI scope.

**Client addresses.** ``X-Forwarded-For`` (or RFC 7239 ``Forwarded``) is believed only when the direct peer is
one of ``trusted_proxies`` (addresses or CIDR blocks), and then only as far as the chain of trusted hops goes:
the header is read right to left, skipping trusted proxies, and the first address that is not one is the client.
Anything a client writes itself sits to the left of that and is never reached, so a spoofed header buys nothing;
from an untrusted peer the header is not read at all. IPv6 clients are limited per /64 by default.

Keys are namespaced (``ip:``, ``key:``, ...), and secrets never become keys: an API key is replaced by a keyed
hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import Scope, route_of

__all__ = [
    "CLAIMS_SCOPE_KEY",
    "CLIENT_IP_SCOPE_KEY",
    "PEER_ID_SCOPE_KEY",
    "KeyFunc",
    "api_key",
    "client_ip",
    "combine",
    "header",
    "jwt_subject",
    "route",
    "spiffe_id",
]

KeyFunc: TypeAlias = Callable[[Scope], str]
"""Who is calling: a function of the ASGI scope returning the rate-limit key."""

CLIENT_IP_SCOPE_KEY = "connectivity.client_ip"
"""Scope key where the middleware leaves the client address it resolved (through trusted proxies)."""
PEER_ID_SCOPE_KEY = "connectivity.peer_id"
CLAIMS_SCOPE_KEY = "connectivity.claims"

_log = logging.getLogger("connectivity.ratelimit")
_Address: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"
_Network: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
_FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
_MAX_KEY_PART = 256
_API_KEY_SALT = b"connectivity.ratelimit.api_key.v1"


# -- client addresses -----------------------------------------------------------------------------------------
def _networks(field: str, proxies: Iterable[str]) -> tuple[_Network, ...]:
    if isinstance(proxies, (str, bytes)) or not isinstance(proxies, Iterable):
        raise ConfigError(field, proxies, "must be a collection of addresses or CIDR blocks (not one string)")
    return tuple(_network(field, entry) for entry in proxies)


def _network(field: str, entry: object) -> _Network:
    try:
        return ipaddress.ip_network(str(entry).strip(), strict=False)
    except ValueError:
        raise ConfigError(field, entry, "must be an IP address or a CIDR block such as 10.0.0.0/8") from None


def _address(text: str) -> _Address | None:
    """An address from a peer or a forwarded hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``"[::1]"``)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:  # "unknown", an obfuscated RFC 7239 identifier, garbage
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: _Address, networks: tuple[_Network, ...]) -> bool:
    return any(address in network for network in networks)


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers") or () if key.lower() == name]


def _forwarded_hops(scope: Scope, header_name: str) -> list[str]:
    """The addresses a forwarding header lists, client first (all lines of the field, in order)."""
    lines = _headers(scope, header_name.encode("latin-1"))
    if header_name == "x-forwarded-for":
        return [hop for line in lines for hop in line.split(",")]
    hops = []
    for line in lines:
        for element in line.split(","):
            found = "unknown"  # an element without for= is a hop we cannot place: it stops the walk
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    found = value
            hops.append(found)
    return hops


def _resolve(scope: Scope, networks: tuple[_Network, ...], header_name: str) -> str | None:
    """The client's address: the peer's, or the nearest untrusted hop of a chain of trusted proxies."""
    client = scope.get("client")
    peer = client[0] if client else None
    if not isinstance(peer, str):
        return None
    current = _address(peer)
    if current is None:
        return peer  # a Unix socket path or a test client name: use it as is
    if not networks or not _trusted(current, networks):
        return str(current)
    for hop in reversed(_forwarded_hops(scope, header_name)):
        address = _address(hop)
        if address is None:
            break  # what lies to the left of garbage cannot be attributed: stop at the last proxy we trust
        current = address
        if not _trusted(address, networks):
            break
    return str(current)


def _ip_key(address: str | None, ipv6_prefix: int) -> str:
    if address is None:
        return "ip:unknown"
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and ipv6_prefix < 128:
        return f"ip:{ipaddress.ip_network(f'{parsed}/{ipv6_prefix}', strict=False)}"
    return f"ip:{parsed if parsed is not None else address[:_MAX_KEY_PART]}"


def _fallback(scope: Scope) -> str:
    """The client-address key, as resolved by the middleware (or from the peer alone without it)."""
    address = scope.get(CLIENT_IP_SCOPE_KEY)
    if not isinstance(address, str):
        address = _resolve(scope, (), "x-forwarded-for")
    return _ip_key(address, 64)


# -- key functions --------------------------------------------------------------------------------------------
def client_ip(
    trusted_proxies: Iterable[str] | None = None,
    *,
    forwarded_header: str = "x-forwarded-for",
    ipv6_prefix: int = 64,
) -> KeyFunc:
    """Key by client address: ``ip:203.0.113.7``, or ``ip:2001:db8:1:2::/64`` for IPv6.

    Args:
        trusted_proxies: Addresses or CIDR blocks of the proxies whose forwarding header is believed. ``None``
            (default) uses the address :class:`RateLimitMiddleware` resolved with its own ``trusted_proxies``;
            an empty collection trusts nobody (the direct peer is the client).
        forwarded_header: ``"x-forwarded-for"`` or ``"forwarded"`` (RFC 7239): the one your proxies write. Only
            one is read: a client could write the other one freely.
        ipv6_prefix: IPv6 clients are limited per network of this prefix length (128: per address).

    Raises:
        ConfigError: A proxy is not an address or CIDR block, the header is unknown, or the prefix is out of range.

    .. versionadded:: 0.1
    """
    header_name = _forwarded_header("client_ip.forwarded_header", forwarded_header)
    if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 0 <= ipv6_prefix <= 128:
        raise ConfigError("client_ip.ipv6_prefix", ipv6_prefix, "must be an integer from 0 to 128")
    if trusted_proxies is None:

        def resolved_ip(scope: Scope) -> str:
            address = scope.get(CLIENT_IP_SCOPE_KEY)
            if not isinstance(address, str):
                address = _resolve(scope, (), header_name)
            return _ip_key(address, ipv6_prefix)

        return resolved_ip
    networks = _networks("client_ip.trusted_proxies", trusted_proxies)

    def ip(scope: Scope) -> str:
        return _ip_key(_resolve(scope, networks, header_name), ipv6_prefix)

    return ip


def _forwarded_header(field: str, value: object) -> str:
    if not isinstance(value, str) or value.lower() not in _FORWARDED_HEADERS:
        raise ConfigError(field, value, "must be 'x-forwarded-for' or 'forwarded'")
    return value.lower()


def _header_name(field: str, name: object) -> bytes:
    if not isinstance(name, str) or not name or not name.isascii() or any(c in name for c in " \t:\r\n"):
        raise ConfigError(field, name, "must be a header name")
    return name.lower().encode("ascii")


def api_key(header: str = "x-api-key", *, secret: bytes | str | None = None) -> KeyFunc:
    """Key by API key: ``key:<keyed hash>``; the raw key is never a key, so never in logs or the status app.

    Args:
        header: The request header carrying the key (the first one counts). Requests without one are limited by
            client address.
        secret: Keys the hash (BLAKE2b), so that a low-entropy API key cannot be recovered from its hash by
            guessing. Use the same secret in every process sharing a limiter (a fixed library salt by default).

    .. versionadded:: 0.1
    """
    name = _header_name("api_key.header", header)
    salt = secret.encode("utf-8") if isinstance(secret, str) else (secret or _API_KEY_SALT)
    if not isinstance(salt, bytes):
        raise ConfigError("api_key.secret", secret, "must be bytes or a string")
    if len(salt) > 64:  # BLAKE2b keys are at most 64 bytes
        salt = hashlib.blake2b(salt).digest()

    def key(scope: Scope) -> str:
        for field, value in scope.get("headers") or ():
            if field.lower() == name and value.strip():
                return f"key:{hashlib.blake2b(value.strip(), key=salt, digest_size=16).hexdigest()}"
        return _fallback(scope)

    return key


def jwt_subject(claim: str = "sub") -> KeyFunc:
    """Key by a claim of the caller's verified JWT: ``jwt.sub:<value>``; client address when there is none.

    The claims are read from where an authentication middleware in front of this one left them:
    ``scope["state"]["claims"]`` (Starlette's ``request.state.claims``) or ``scope["connectivity.claims"]``. This
    function verifies nothing: put the rate limit *inside* the authentication middleware.

    .. versionadded:: 0.1
    """
    if not isinstance(claim, str) or not claim:
        raise ConfigError("jwt_subject.claim", claim, "must be a non-empty string")

    def key(scope: Scope) -> str:
        state = scope.get("state")
        claims = state.get("claims") if isinstance(state, Mapping) else None
        if not isinstance(claims, Mapping):
            claims = scope.get(CLAIMS_SCOPE_KEY)
        value = claims.get(claim) if isinstance(claims, Mapping) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return f"jwt.{claim}:{str(value)[:_MAX_KEY_PART]}"
        return _fallback(scope)

    return key


def spiffe_id() -> KeyFunc:
    """Key by the caller's workload identity (``scope["connectivity.peer_id"]``, set by mTLS termination):
    ``spiffe:<id>``; client address without one.

    .. versionadded:: 0.1
    """

    def key(scope: Scope) -> str:
        peer = scope.get(PEER_ID_SCOPE_KEY)
        if isinstance(peer, str) and peer:
            return f"spiffe:{peer[:_MAX_KEY_PART]}"
        return _fallback(scope)

    return key


def header(name: str) -> KeyFunc:
    """Key by the value of a request header (e.g. a tenant id): ``header.<name>:<value>``; client address without
    it. The value is used as is: for secrets use :func:`api_key`, which hashes them.

    .. versionadded:: 0.1
    """
    field = _header_name("header.name", name)
    label = field.decode("ascii")

    def key(scope: Scope) -> str:
        for found, value in scope.get("headers") or ():
            if found.lower() == field and value.strip():
                return f"header.{label}:{value.strip().decode('latin-1')[:_MAX_KEY_PART]}"
        return _fallback(scope)

    return key


def route() -> KeyFunc:
    """Key by method and route template (``route:GET /items/{item_id}``), or path when no route is known.

    Inside a Starlette or FastAPI app (``app.add_middleware``) the template is found by matching the app's routes;
    wrapped around the app from outside, the path is used. Combine it with a caller key to limit each caller per
    route: ``combine(api_key(), route())``.

    .. versionadded:: 0.1
    """

    def key(scope: Scope) -> str:
        path = str(scope.get("path", ""))
        template = route_of(scope, path, str(scope.get("root_path", "")))
        return f"route:{scope.get('method', 'GET')} {template or path[:_MAX_KEY_PART]}"

    return key


def combine(*keys: KeyFunc) -> KeyFunc:
    """One key made of several (``"key:1f..|route:GET /search"``): a limit per combination.

    .. versionadded:: 0.1
    """
    if not keys or not all(callable(key) for key in keys):
        raise ConfigError("combine.keys", keys, "must be one or more key functions")

    def key(scope: Scope) -> str:
        return "|".join(part(scope) for part in keys)

    return key
