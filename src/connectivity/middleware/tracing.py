"""Inbound tracing and metrics as pure ASGI middleware: one SERVER span and one duration per HTTP request.

Theory of operation: when neither a tracer nor a meter records, a request costs two method calls and the app is
awaited with the server's own ``receive`` and ``send``. Otherwise the middleware

* extracts the caller's trace context with the global propagator (a request with more than one ``traceparent``,
  or one listing several, gets a new trace: which one the caller meant cannot be known, and W3C trace context
  says to ignore it),
* starts a SERVER span named after the method and makes it current while the app runs, so the spans of the
  outbound calls the handler makes are its children and one trace crosses every hop,
* watches ``send``: the status is taken from ``http.response.start``, and the route template the framework matched
  (see :func:`~connectivity.middleware._asgi.route_of`) is read at that moment too,
* when the app returns or raises, names the span ``"{method} {route}"``, records ``error.type`` (the exception's
  class, else the status of a 5xx), the ``http.server.request.duration`` histogram and ends the span.

An exception is recorded and re-raised, never turned into a response: Starlette's ``ServerErrorMiddleware`` (or the
server) answers it. If another instrumentation already runs a recording SERVER span around this middleware
(OpenTelemetry's ``OpenTelemetryMiddleware``), no second span is started and no metric recorded twice: the route
and the attributes that span lacks are added to it instead, before the response ends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import propagate
from opentelemetry import trace as trace_api
from opentelemetry.trace import SpanKind, Status, StatusCode

from connectivity.middleware._asgi import (
    HEADER_GETTER,
    REQUEST_ID_ATTRIBUTE,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    error_type,
    header_map,
    is_cancellation,
    request_id_of,
    require_app,
    require_telemetry,
    route_of,
    server_of,
)
from connectivity.telemetry import semconv
from connectivity.telemetry.otel import Meters, Telemetry

__all__ = ["TracingMiddleware"]

_TRACE_CONTEXT = ("traceparent", "tracestate")


class TracingMiddleware:
    """Trace and measure every inbound HTTP request (stable OpenTelemetry HTTP server conventions).

    Args:
        app: The ASGI application to wrap.
        telemetry: Where spans and metrics go, and the redaction policy for ``url.query``. Default: the global
            tracer and meter providers, looked up per request until one is installed.

    The SERVER span carries ``http.request.method`` (``_OTHER`` for a non-standard method, with
    ``http.request.method_original``), ``url.path``, ``url.scheme``, ``url.query`` (redacted), ``server.address``
    and ``server.port`` (from ``Host``), ``client.address``, ``network.protocol.version``,
    ``user_agent.original``, ``http.response.status_code``, ``http.route`` (when the framework matched a route),
    ``error.type`` and ``connectivity.request_id`` (when a request id is current). It is named ``"GET"`` at
    start and ``"GET /items/{item_id}"`` once the route is known (``HTTP`` stands for an ``_OTHER`` method).

    Metrics: ``http.server.request.duration`` (seconds) and ``http.server.active_requests``.

    Put it outside the app (``TracingMiddleware(app)``) to time everything the app does, or inside Starlette's
    error handling with ``app.add_middleware(TracingMiddleware)``; either way the route template is found. Put
    :class:`~connectivity.middleware.RequestIDMiddleware` outside it, so the span records the request id.

    .. versionadded:: 0.1
    """

    __slots__ = ("app", "telemetry")

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry | None = None) -> None:
        self.app = require_app("TracingMiddleware", app)
        self.telemetry = require_telemetry("TracingMiddleware", telemetry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracer = self.telemetry.tracer()
        meters = self.telemetry.meters()
        if tracer is None and meters is None:
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, send, tracer, meters).run(receive)


class _Exchange:
    """The telemetry of one request: state shared by the ``send`` wrapper and the end of the call."""

    __slots__ = (
        "app",
        "attributes",
        "meters",
        "method",
        "metric",
        "outer",
        "path",
        "request_id",
        "root_path",
        "route",
        "scope",
        "send",
        "span",
        "span_method",
        "status",
        "telemetry",
        "tracer",
    )

    def __init__(
        self,
        owner: TracingMiddleware,
        scope: Scope,
        send: Send,
        tracer: trace_api.Tracer | None,
        meters: Meters | None,
    ) -> None:
        self.app = owner.app
        self.send = send
        self.telemetry = owner.telemetry
        self.scope = scope
        self.tracer = tracer
        self.path = str(scope.get("path", ""))
        self.root_path = str(scope.get("root_path", ""))
        original = str(scope.get("method", ""))
        self.method = original if original in semconv.KNOWN_METHODS else semconv.OTHER_METHOD
        self.span_method = "HTTP" if self.method == semconv.OTHER_METHOD else self.method
        self.metric: dict[str, Any] = {
            semconv.HTTP_REQUEST_METHOD: self.method,
            semconv.URL_SCHEME: str(scope.get("scheme") or "http"),
        }
        current = trace_api.get_current_span()
        # Someone else's SERVER span is already timing this request: enrich it, do not nest a second one.
        self.outer = (
            current if current.is_recording() and getattr(current, "kind", None) == SpanKind.SERVER else None
        )
        self.meters = None if self.outer is not None else meters
        self.attributes: dict[str, Any] | None = None
        self.span: trace_api.Span | None = None
        self.status: int | None = None
        self.route: str | None = None
        self.request_id = request_id_of(scope)

    # -- the request ------------------------------------------------------------------------------------------
    async def run(self, receive: Receive) -> None:
        scope = self.scope
        token = None
        headers: dict[str, list[str]] | None = None
        if self.outer is not None or self.tracer is not None:
            headers = header_map(scope)
            self.attributes = self._request_attributes(headers)
        if self.outer is None and self.tracer is not None and headers is not None:
            parent = propagate.extract(_trusted_trace_context(headers), getter=HEADER_GETTER)
            self.span = self.tracer.start_span(
                self.span_method, context=parent, kind=SpanKind.SERVER, attributes=self.attributes
            )
            token = context_api.attach(trace_api.set_span_in_context(self.span, parent))
        meters = self.meters
        if meters is not None:
            meters.server_active.add(1, self.metric)
        started = perf_counter()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, self._send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                self._finish(error, perf_counter() - started)
            finally:
                if token is not None:
                    context_api.detach(token)

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.route = route_of(self.scope, self.path, self.root_path)
            if self.request_id is None:
                self.request_id = request_id_of(self.scope)
            if self.outer is not None:
                # The outer instrumentation ends its span when the last body message goes out: enrich it now.
                self._enrich_outer(None)
        await self.send(message)

    def _request_attributes(self, headers: Mapping[str, list[str]]) -> dict[str, Any]:
        scope = self.scope
        scheme = self.metric[semconv.URL_SCHEME]
        attributes: dict[str, Any] = {
            semconv.HTTP_REQUEST_METHOD: self.method,
            semconv.URL_PATH: self.path,
            semconv.URL_SCHEME: scheme,
        }
        original = str(scope.get("method", ""))
        if original != self.method:
            attributes[semconv.HTTP_REQUEST_METHOD_ORIGINAL] = original
        query = scope.get("query_string")
        if query:
            attributes[semconv.URL_QUERY] = self.telemetry.redaction.query(query.decode("latin-1"))
        address, port = server_of(headers, scope, scheme)
        if address is not None:
            attributes[semconv.SERVER_ADDRESS] = address
        if port is not None:
            attributes[semconv.SERVER_PORT] = port
        client = scope.get("client")
        if client:
            attributes[semconv.CLIENT_ADDRESS] = client[0]
        version = scope.get("http_version")
        if version:
            attributes[semconv.NETWORK_PROTOCOL_VERSION] = version
        agent = headers.get("user-agent")
        if agent:
            attributes[semconv.USER_AGENT_ORIGINAL] = agent[0]
        return attributes

    # -- the end ----------------------------------------------------------------------------------------------
    def _outcome(self, error: BaseException | None) -> dict[str, Any]:
        outcome: dict[str, Any] = {}
        if self.status is not None:
            outcome[semconv.HTTP_RESPONSE_STATUS_CODE] = self.status
        if self.route is not None:
            outcome[semconv.HTTP_ROUTE] = self.route
        if error is not None:
            outcome[semconv.ERROR_TYPE] = error_type(error)
        elif self.status is not None and self.status >= 500:
            outcome[semconv.ERROR_TYPE] = str(self.status)
        return outcome

    def _finish(self, error: BaseException | None, elapsed: float) -> None:
        if self.status is None:  # the app raised (or returned) before starting a response
            self.route = route_of(self.scope, self.path, self.root_path)
        if self.request_id is None:
            self.request_id = request_id_of(self.scope)
        outcome = self._outcome(error)
        failed = semconv.ERROR_TYPE in outcome and not (error is not None and is_cancellation(error))
        meters = self.meters
        if meters is not None:
            meters.server_active.add(-1, self.metric)
            metric = {**self.metric, **outcome}
            version = self.scope.get("http_version")
            if version:
                metric[semconv.NETWORK_PROTOCOL_VERSION] = version
            meters.server_duration.record(elapsed, metric)
        span = self.span
        if span is not None:
            span.set_attributes(outcome)
            if self.request_id is not None:
                span.set_attribute(REQUEST_ID_ATTRIBUTE, self.request_id)
            if self.route is not None:
                span.update_name(f"{self.span_method} {self.route}")
            if failed:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        elif self.outer is not None:
            self._enrich_outer(error)

    def _enrich_outer(self, error: BaseException | None) -> None:
        """Add what the outer SERVER span lacks: the route above all (its owner cannot know it), then ours."""
        outer = self.outer
        if outer is None or not outer.is_recording():
            return
        existing = getattr(outer, "attributes", None)
        present: Mapping[str, Any] = existing if isinstance(existing, Mapping) else {}
        additions = {**(self.attributes or {}), **self._outcome(error)}
        if self.request_id is not None:
            additions[REQUEST_ID_ATTRIBUTE] = self.request_id
        for key, value in additions.items():
            # url.query is always ours: the redacted value replaces whatever was recorded before.
            if key not in present or key in (semconv.HTTP_ROUTE, semconv.URL_QUERY):
                outer.set_attribute(key, value)
        if self.route is not None:
            outer.update_name(f"{self.span_method} {self.route}")


def _trusted_trace_context(headers: dict[str, list[str]]) -> dict[str, list[str]]:
    """The headers to extract from: without trace context when ``traceparent`` is ambiguous (W3C: ignore it)."""
    traceparent = headers.get("traceparent")
    if traceparent is not None and (len(traceparent) > 1 or "," in traceparent[0]):
        return {name: values for name, values in headers.items() if name not in _TRACE_CONTEXT}
    return headers
