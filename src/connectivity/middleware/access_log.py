"""An inbound access log as pure ASGI middleware: exactly one structured record per HTTP request."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from opentelemetry import trace as trace_api

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    error_type,
    request_id_of,
    require_app,
    require_telemetry,
    route_of,
    target_path,
)
from connectivity.telemetry.otel import Telemetry

__all__ = ["AccessLogMiddleware"]

_LOGGER = logging.getLogger("connectivity.access")


class AccessLogMiddleware:
    """Log one record per inbound HTTP request, when its response completes or the app fails.

    Args:
        app: The ASGI application to wrap.
        logger: Where records go (default: the ``connectivity.access`` logger).
        level: Their level (default ``INFO``). When the logger would drop it, requests pass straight through and
            nothing is measured.
        telemetry: Only its redaction policy is used here, for the query string (default: the default policy).

    Raises:
        ConfigError: ``level`` is not an int.
        TypeError: ``logger`` is not a :class:`logging.Logger` or ``telemetry`` not a ``Telemetry``.

    The message reads ``GET /items?token=REDACTED 200 3.1ms``; the record is in ``record.access``, a JSON-ready
    dict: ``direction`` (``inbound``), ``method``, ``target`` (the path as received and the redacted query),
    ``route`` (the route template, ``None`` when no route matched), ``status``, ``duration_s``, ``bytes_sent``
    (response body bytes), ``request_id``, ``trace_id`` and ``span_id`` (hex, ``None`` outside a trace),
    ``client_address``, ``user_agent`` and ``error`` (the exception's class when the app raised, else ``None``).
    No other header value is ever recorded.

    The record is written as the last body message is handed to the server, so it exists once a client has the
    whole response. An app that raises before completing its response is logged with the status already sent,
    or ``500`` (what the error middleware or server answers), and the exception is re-raised. Place it inside
    Starlette's error handling (``app.add_middleware(AccessLogMiddleware)``) to see the exceptions the framework
    turns into 500s; outside it, the 500 is logged as a plain response. Put it inside
    :class:`~connectivity.middleware.TracingMiddleware` for the trace and span ids.

    .. versionadded:: 0.1
    """

    __slots__ = ("app", "level", "logger", "telemetry")

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.app = require_app("AccessLogMiddleware", app)
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"AccessLogMiddleware: logger must be a logging.Logger, got {type(logger).__name__}")
        if isinstance(level, bool) or not isinstance(level, int):
            raise ConfigError("AccessLogMiddleware.level", level, "must be a logging level (an int)")
        self.logger = logger if logger is not None else _LOGGER
        self.level = level
        self.telemetry = require_telemetry("AccessLogMiddleware", telemetry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(self.level):
            await self.app(scope, receive, send)
            return
        entry = _Entry(self, scope, send)
        try:
            await self.app(scope, receive, entry.send)
        except BaseException as exc:
            if not entry.logged:
                entry.log(exc)
            raise
        if not entry.logged:  # the app returned without completing its response
            entry.log(None)


class _Entry:
    """One request being logged."""

    __slots__ = (
        "bytes_sent",
        "logged",
        "owner",
        "path",
        "request_id",
        "root_path",
        "scope",
        "span_id",
        "started",
        "status",
        "trace_id",
        "trailers",
        "upstream",
    )

    def __init__(self, owner: AccessLogMiddleware, scope: Scope, send: Send) -> None:
        self.owner = owner
        self.scope = scope
        self.upstream = send
        self.path = str(scope.get("path", ""))
        self.root_path = str(scope.get("root_path", ""))
        self.status: int | None = None
        self.bytes_sent = 0
        self.trailers = False
        self.logged = False
        self.request_id = request_id_of(scope)
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self._capture_trace()
        self.started = perf_counter()

    def _capture_trace(self) -> None:
        context = trace_api.get_current_span().get_span_context()
        if context.is_valid:
            self.trace_id = format(context.trace_id, "032x")
            self.span_id = format(context.span_id, "016x")

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.trailers = bool(message.get("trailers", False))
            # Layers inside this one (request id, tracing) have set their context by now.
            if self.request_id is None:
                self.request_id = request_id_of(self.scope)
            if self.trace_id is None:
                self._capture_trace()
        elif kind == "http.response.body":
            self.bytes_sent += len(message.get("body", b""))
            if not message.get("more_body", False) and not self.trailers and not self.logged:
                self.log(None)
        elif kind == "http.response.trailers" and not message.get("more_trailers", False) and not self.logged:
            self.log(None)
        await self.upstream(message)

    def log(self, error: BaseException | None) -> None:
        self.logged = True
        duration = perf_counter() - self.started
        scope = self.scope
        owner = self.owner
        query = scope.get("query_string") or b""
        target = owner.telemetry.redaction.target(target_path(scope), query.decode("latin-1"))
        status = self.status if self.status is not None else 500
        client = scope.get("client")
        user_agent = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"user-agent":
                user_agent = value.decode("latin-1")
                break
        method = str(scope.get("method", ""))
        record: dict[str, Any] = {
            "direction": "inbound",
            "method": method,
            "target": target,
            "route": route_of(scope, self.path, self.root_path),
            "status": status,
            "duration_s": round(duration, 6),
            "bytes_sent": self.bytes_sent,
            "request_id": self.request_id if self.request_id is not None else request_id_of(scope),
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "client_address": client[0] if client else None,
            "user_agent": user_agent,
            "error": None if error is None else error_type(error),
        }
        owner.logger.log(
            owner.level, "%s %s %d %.1fms", method, target, status, duration * 1000, extra={"access": record}
        )
