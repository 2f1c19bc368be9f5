"""What the inbound middleware share: ASGI types, header access, the route template, and argument checks.

Nothing here imports Starlette or FastAPI: the route template is read from what those frameworks leave in the
scope (``scope["route"]``), recognised by duck typing, so the middleware work under any ASGI framework.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from opentelemetry.propagators.textmap import Getter

from connectivity.telemetry import semconv
from connectivity.telemetry.otel import Telemetry
from connectivity.telemetry.request_id import current_request_id, valid

__all__ = [
    "ASGIApp",
    "HEADER_GETTER",
    "REQUEST_ID_ATTRIBUTE",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "error_type",
    "header_map",
    "is_cancellation",
    "request_id_of",
    "require_app",
    "require_telemetry",
    "route_of",
    "server_of",
    "target_path",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_ATTRIBUTE = semconv.CONNECTIVITY_REQUEST_ID
"""The span attribute carrying the request id of the inbound request."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_MAX_ROUTE_DEPTH = 8  # nested mounts searched by the fallback matcher


# -- argument checks ------------------------------------------------------------------------------------------
def require_app(owner: str, app: Any) -> ASGIApp:
    """``app`` if it is callable (an ASGI app); a :class:`TypeError` naming ``owner`` otherwise."""
    if not callable(app):
        raise TypeError(f"{owner}: app must be an ASGI application (a callable), got {type(app).__name__}")
    return app  # type: ignore[no-any-return]


def require_telemetry(owner: str, telemetry: Any) -> Telemetry:
    """``telemetry``, a fresh global-provider :class:`Telemetry` for ``None``, or a :class:`TypeError`."""
    if telemetry is None:
        return Telemetry()
    if not isinstance(telemetry, Telemetry):
        raise TypeError(
            f"{owner}: telemetry must be a connectivity.telemetry.Telemetry or None, "
            f"got {type(telemetry).__name__}"
        )
    return telemetry


# -- headers --------------------------------------------------------------------------------------------------
def header_map(scope: Scope) -> dict[str, list[str]]:
    """Every request header, by lower-cased name, values in arrival order (decoded as latin-1, as ASGI says)."""
    headers: dict[str, list[str]] = {}
    for name, value in scope.get("headers") or ():
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return headers


class _HeaderGetter(Getter[Mapping[str, list[str]]]):
    """Reads propagation fields from a :func:`header_map` (names are compared lower-cased)."""

    def get(self, carrier: Mapping[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: Mapping[str, list[str]]) -> list[str]:
        return list(carrier)


HEADER_GETTER = _HeaderGetter()
"""The propagation getter for a :func:`header_map`."""


def server_of(headers: Mapping[str, list[str]], scope: Scope, scheme: str) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port``: from the ``Host`` header if there is one, else ``scope["server"]``.

    A ``Host`` without a port means the scheme's default port, as a client reading the URL would assume.
    """
    host = headers.get("host")
    if host:
        text = host[0].strip()
        address, port_text = text, ""
        if text.startswith("["):  # IPv6 literal: [::1]:8080
            close = text.find("]")
            if close != -1:
                address, rest = text[1:close], text[close + 1 :]
                port_text = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            address, _, port_text = text.partition(":")
        port: int | None = None
        if port_text:
            if port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535:
                port = int(port_text)
        else:
            port = _DEFAULT_PORTS.get(scheme)
        if address:
            return address, port
    server = scope.get("server")
    if server:
        return server[0], server[1]
    return None, None


def target_path(scope: Scope) -> str:
    """The request path as received (``raw_path``, still percent-encoded, so no decoded control character can
    reach a log line), falling back to ``path``."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.partition(b"?")[0].decode("latin-1")
    return str(scope.get("path", ""))


def request_id_of(scope: Scope) -> str | None:
    """The current request id, else the one :class:`RequestIDMiddleware` left in ``scope["state"]`` (only a valid
    id: anything else in there was not put by us and is not recorded)."""
    request_id = current_request_id()
    if request_id is not None:
        return request_id
    state = scope.get("state")
    if isinstance(state, Mapping):
        value = state.get("request_id")
        if isinstance(value, str) and valid(value):
            return value
    return None


# -- errors ---------------------------------------------------------------------------------------------------
is_cancellation = semconv.is_cancellation
error_type = semconv.error_type


# -- route ----------------------------------------------------------------------------------------------------
def _is_mount(route: object) -> bool:
    # Starlette is necessarily imported when one of its routes is in the scope: no import here.
    routing = sys.modules.get("starlette.routing")
    mount = getattr(routing, "Mount", None)
    return mount is not None and isinstance(route, mount)


def _template(route: object, root_path: str) -> str | None:
    """The path template of a matched route object, prefixed with the mount path it was matched under."""
    prefix = root_path.rstrip("/")
    if _is_mount(route):
        # A mount matched but nothing inside it did (or it holds a plain app): everything under the prefix.
        return prefix + "/{path}"
    path = getattr(route, "path_format", None)
    if not isinstance(path, str):
        path = getattr(route, "path", None)
    if not isinstance(path, str) or not path:
        return None
    return (prefix + path) or "/"


def _search(routes: Iterable[Any], scope: Scope, depth: int) -> str | None:
    partial: tuple[Any, Scope] | None = None
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, child = matches(scope)
        kind = getattr(match, "name", None)
        if kind == "FULL":
            return _resolve(route, {**scope, **child}, depth)
        if kind == "PARTIAL" and partial is None:  # e.g. 405: Starlette answers with the first partial match
            partial = (route, {**scope, **child})
    return None if partial is None else _resolve(*partial, depth)


def _resolve(route: Any, scope: Scope, depth: int) -> str | None:
    inner = getattr(route, "routes", None)
    if inner and depth < _MAX_ROUTE_DEPTH:
        found = _search(inner, scope, depth + 1)
        if found is not None:
            return found
    return _template(route, str(scope.get("root_path", "")))


def route_of(scope: Scope, path: str, root_path: str) -> str | None:
    """``http.route``: the template of the route that handled the request, or ``None`` when none is known.

    Starlette (1.x) and FastAPI put the matched route object in ``scope["route"]`` and extend ``root_path`` by the
    mount prefix, on the scope dict the middleware passed down; the template is ``root_path + path_format``. When
    the framework did not (older Starlette, a 404), the router's routes are matched again as OpenTelemetry's
    Starlette instrumentation does, against the ``path`` and ``root_path`` the request arrived with. The raw path
    is never used: it would make every URL a metric series.

    Args:
        scope: The request's scope, after the app has run (or started its response).
        path: ``scope["path"]`` as it was when the request entered the middleware.
        root_path: ``scope["root_path"]`` as it was then.
    """
    route = scope.get("route")
    if route is not None:
        return _template(route, str(scope.get("root_path", "")))
    router = scope.get("router") or scope.get("app")
    routes = getattr(router, "routes", None)
    if not routes:
        return None
    probe = {key: value for key, value in scope.items() if key not in _ROUTING_KEYS}
    probe["path"] = path
    probe["root_path"] = root_path
    try:
        return _search(routes, probe, 0)
    except Exception:  # a third-party route that cannot be probed must not break the request
        return None


# What routing writes into the scope: left out of the probe so matching starts from the request as it arrived.
_ROUTING_KEYS = frozenset({"route", "path_params", "endpoint", "app_root_path", "fastapi"})
