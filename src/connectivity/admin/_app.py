"""The admin app: a read-only JSON view of the process's connectivity state, in raw ASGI.

Theory of operation: :func:`app` validates its options and returns an ASGI callable; nothing is served until the
caller mounts it (``app.mount("/_connectivity", connectivity.admin._app())``), so the admin surface is off by
default. An HTTP request is answered in one pass, with no I/O but the two ``send`` calls: access control first
(a loopback client unless ``allow_remote``, then the bearer token if one is configured), so that a refused client
learns nothing about the routes; then the route, relative to the mount point; then a live
:meth:`~connectivity.admin.Registry.snapshot` of the registry, serialised as JSON. Nothing is cached, so a breaker
that trips shows on the next request. Lifespan events are acknowledged (the app can also be served on its own) and
websocket connections are refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from connectivity.admin.registry import KINDS, REGISTRY, Registry
from connectivity.errors import ConfigError

__all__ = ["ASGIApp", "app"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application (the same shape as ``starlette.types.ASGIApp``)."""

_METHODS = ("GET", "HEAD")
_ALLOW = ", ".join(_METHODS).encode()

_ROUTES: dict[str, str] = {
    "/": "this index",
    "/status": "every registered source, by kind",
    "/clients": "clients: their transport stacks and active policies",
    "/breakers": "circuit breakers and their states",
    "/limiters": "rate and concurrency limiters and their states",
    "/endpoints": "endpoints with their health and ejection state",
}
_KIND_ROUTES = {f"/{kind}": kind for kind in KINDS}

_Response: TypeAlias = "tuple[int, list[tuple[bytes, bytes]], bytes]"


def app(*, registry: Registry | None = None, token: str | None = None, allow_remote: bool = False) -> ASGIApp:
    """Build the admin app: a read-only JSON view of connectivity clients, breakers, limiters and endpoints.

    It is off by default: nothing is served until the returned app is mounted, e.g.
    ``starlette_app.mount("/_connectivity", connectivity.admin._app())`` (Starlette, FastAPI) or served on its own.
    Routes, relative to the mount point, accept ``GET`` and ``HEAD``:

    ==============  ===============================================================
    ``/``           an index of the routes
    ``/status``     the whole snapshot: ``{kind: {name: status}}``
    ``/clients``    registered clients: their transport layers and policies
    ``/breakers``   circuit breakers
    ``/limiters``   rate and concurrency limiters
    ``/endpoints``  endpoints, their health and ejection state
    ==============  ===============================================================

    Every status is read from the registry at request time. Responses are ``application/json`` with
    ``Cache-Control: no-store``; errors are ``application/problem+json`` (RFC 9457): ``403`` for a client that is
    not on the loopback interface (also when the server does not report the client address, e.g. a Unix socket),
    ``401`` with ``WWW-Authenticate: Bearer`` without the right token, ``404`` for an unknown path, ``405`` with
    ``Allow`` for another method.

    The loopback check trusts ``scope["client"]``: behind a reverse proxy on the same host every request looks
    local, unless the server rewrites the client address from the proxy's headers (uvicorn's
    ``--proxy-headers``). Set a ``token`` when the app may be reachable through a proxy.

    Args:
        registry: Where to read the sources (default: the process-wide :data:`connectivity.admin.REGISTRY`).
        token: If given, every request must carry ``Authorization: Bearer <token>`` (compared in constant time).
            Visible ASCII characters only, no whitespace.
        allow_remote: Serve clients that are not on the loopback interface too (put an authorization
            middleware or a ``token`` in front when you do).

    Returns:
        The ASGI application.

    Raises:
        ConfigError: ``token`` is empty or has whitespace, control or non-ASCII characters (the message never
            contains the token), or ``allow_remote`` is not a bool.
        TypeError: ``registry`` is not a :class:`~connectivity.admin.Registry`.

    .. versionadded:: 0.1
    """
    if registry is not None and not isinstance(registry, Registry):
        raise TypeError(f"registry must be a connectivity.admin.Registry, got {type(registry).__name__}")
    if token is not None and not (
        isinstance(token, str) and token and all("\x21" <= char <= "\x7e" for char in token)
    ):
        # Never echo the value: a secret with one stray character is still a secret.
        raise ConfigError(
            "admin.app.token",
            "<redacted>",
            "must be a non-empty string of visible ASCII characters, no whitespace",
        )
    if not isinstance(allow_remote, bool):
        raise ConfigError("admin.app.allow_remote", allow_remote, "must be a bool")
    return _AdminApp(
        REGISTRY if registry is None else registry,
        None if token is None else token.encode("ascii"),
        allow_remote,
    )


class _AdminApp:
    __slots__ = ("_allow_remote", "_registry", "_token")

    def __init__(self, registry: Registry, token: bytes | None, allow_remote: bool) -> None:
        self._registry = registry
        self._token = token
        self._allow_remote = allow_remote

    def __repr__(self) -> str:
        token = "set" if self._token is not None else "none"
        return f"<connectivity admin app: token {token}, allow_remote={self._allow_remote}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            status, headers, body = self._respond(scope)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            # Closing before accepting rejects the handshake (the server answers 403).
            await send({"type": "websocket.close", "code": 1000})
        else:
            raise ValueError(f"the connectivity admin app does not handle ASGI {kind!r} scopes")

    def _respond(self, scope: Scope) -> _Response:
        if not self._allow_remote and not _is_loopback(scope.get("client")):
            return _problem(403, "Forbidden", "the admin app serves loopback clients only")
        if self._token is not None:
            presented = _bearer(scope.get("headers") or ())
            if presented is None:
                return _problem(401, "Unauthorized", "a bearer token is required", challenge=b"Bearer")
            if not hmac.compare_digest(presented, self._token):
                return _problem(
                    401, "Unauthorized", "the bearer token is not valid", challenge=b'Bearer error="invalid_token"'
                )
        path = _route_path(scope)
        if path not in _ROUTES:
            return _problem(404, "Not Found", f"no admin route {path}; see {scope.get('root_path', '')}/")
        if scope["method"] not in _METHODS:
            return _problem(405, "Method Not Allowed", "the admin app is read-only", allow=True)
        if path == "/":
            root = scope.get("root_path", "").rstrip("/")
            return _json(200, {"routes": {root + route: about for route, about in _ROUTES.items()}})
        kind = _KIND_ROUTES.get(path)
        if kind is None:
            return _json(200, self._registry.snapshot())
        return _json(200, self._registry.snapshot(kind)[kind])


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _route_path(scope: Scope) -> str:
    """The path below the mount point, as Starlette's ``Mount`` computes it.

    Starlette >= 0.33 keeps the full ``path`` and appends the mount prefix to ``root_path``; older versions (and
    some servers) strip the prefix from ``path`` already. Either way the remainder is the route; a trailing slash
    is ignored.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            path = rest
    path = path.rstrip("/")
    return path or "/"


def _is_loopback(client: object) -> bool:
    if not isinstance(client, (list, tuple)) or not client or not isinstance(client[0], str):
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback


def _bearer(headers: Any) -> bytes | None:
    """The credentials of the first ``Authorization`` header if its scheme is Bearer."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = bytes(value).strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            return credentials.strip(b" \t") or None
    return None


def _json(status: int, body: object, *, content_type: bytes = b"application/json") -> _Response:
    # default=str is a last resort: the registry already reduces statuses to JSON data.
    encoded = json.dumps(body, default=str, sort_keys=True, indent=2).encode() + b"\n"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(encoded)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    return status, headers, encoded


def _problem(
    status: int, title: str, detail: str, *, challenge: bytes | None = None, allow: bool = False
) -> _Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    status, headers, encoded = _json(status, body, content_type=b"application/problem+json")
    if challenge is not None:
        headers.append((b"www-authenticate", challenge))
    if allow:
        headers.append((b"allow", _ALLOW))
    return status, headers, encoded
