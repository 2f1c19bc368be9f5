"""One observed outbound call: its logical span, its attempt spans, its metrics and its policy events.

Theory of operation: :class:`~connectivity.transports.TracingTransport` opens a :class:`CallTrace` for each call
and makes it current (a context variable, inherited by hedging tasks and threads). Attempts are observed by the
layer that makes them: the innermost retry or hedging layer under the tracing layer (its *owner*), or the tracing
layer itself when nothing below it makes attempts. That layer sends each attempt through :meth:`CallTrace.send`
or :meth:`CallTrace.asend`, which wrap it in a CLIENT span (with ``http.request.resend_count`` from the call's
shared attempt counter), inject the trace context into the attempt's headers and record
``http.client.request.duration``. Policy events (:func:`connectivity.telemetry.emit`) land on the logical span.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter
from typing import Any

from opentelemetry import propagate
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from connectivity._http import httpx
from connectivity.telemetry import semconv
from connectivity.telemetry.events import AttributeValue
from connectivity.telemetry.otel import Meters
from connectivity.telemetry.redaction import Redaction
from connectivity.transports._outcome import ATTEMPT

__all__ = [
    "CallTrace",
    "end_span",
    "outcome_attributes",
    "protocol_version",
    "request_attributes",
    "span_name",
]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Attributes of http.client.request.duration, from the request's attributes (the rest are response-side).
_METRIC_KEYS = (
    semconv.HTTP_REQUEST_METHOD,
    semconv.SERVER_ADDRESS,
    semconv.SERVER_PORT,
    semconv.URL_SCHEME,
)


def request_attributes(request: httpx.Request, redaction: Redaction) -> dict[str, Any]:
    """The stable HTTP client attributes known before sending: method, ``url.full`` (redacted), server, scheme."""
    url = request.url
    method = request.method
    scheme = url.scheme
    attributes: dict[str, Any] = {
        semconv.HTTP_REQUEST_METHOD: method if method in semconv.KNOWN_METHODS else semconv.OTHER_METHOD,
        semconv.SERVER_ADDRESS: url.host,
        # Present for default ports too (the conventions require it; httpx leaves url.port None for them).
        semconv.SERVER_PORT: url.port or _DEFAULT_PORTS.get(scheme, 0),
        semconv.URL_SCHEME: scheme,
        semconv.URL_FULL: redaction.url(str(url)),
    }
    if method not in semconv.KNOWN_METHODS:
        attributes[semconv.HTTP_REQUEST_METHOD_ORIGINAL] = method
    return attributes


def protocol_version(response: httpx.Response) -> str | None:
    """``1.1`` or ``2`` from the response's ``http_version`` extension (``None`` when unknown)."""
    version = response.extensions.get("http_version")
    if not version:
        return None
    text = version.decode("ascii", "replace") if isinstance(version, bytes) else str(version)
    return text.removeprefix("HTTP/") or None


def span_name(method: str) -> str:
    """The conventions' span name: the method, or ``HTTP`` for a method outside the known set."""
    return method if method in semconv.KNOWN_METHODS else "HTTP"


def outcome_attributes(response: httpx.Response | None, error: BaseException | None) -> dict[str, Any]:
    """The attributes known once a request ended: status, protocol version, ``error.type`` (status >= 400)."""
    outcome: dict[str, Any] = {}
    if response is not None:
        status = response.status_code
        outcome[semconv.HTTP_RESPONSE_STATUS_CODE] = status
        version = protocol_version(response)
        if version is not None:
            outcome[semconv.NETWORK_PROTOCOL_VERSION] = version
        if status >= 400:
            outcome[semconv.ERROR_TYPE] = str(status)
    elif error is not None:
        outcome[semconv.ERROR_TYPE] = semconv.error_type(error)
    return outcome


def end_span(span: trace_api.Span, outcome: dict[str, Any]) -> None:
    """Record the outcome on ``span`` and end it (a cancellation is not an error)."""
    span.set_attributes(outcome)
    failure = outcome.get(semconv.ERROR_TYPE)
    if failure is not None and failure != semconv.CANCELLED:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


class CallTrace:
    """The telemetry of one outbound call (see the module docstring).

    Attributes:
        owner: The layer that observes attempts (``send``/``asend``).
        span: The call's logical span, or ``None`` when tracing does not record.
    """

    __slots__ = (
        "_attempts",
        "_context",
        "_tracer",
        "_url",
        "base",
        "events",
        "meters",
        "owner",
        "redaction",
        "span",
    )

    def __init__(
        self,
        owner: object,
        tracer: trace_api.Tracer | None,
        meters: Meters | None,
        redaction: Redaction,
        span: trace_api.Span | None,
        base: Mapping[str, Any],
        url: httpx.URL | None = None,
    ) -> None:
        self.owner = owner
        self._tracer = tracer
        self.meters = meters
        self.redaction = redaction
        self.span = span
        self._context: Context | None = None if span is None else trace_api.set_span_in_context(span)
        self.base = base
        self._url = url
        self._attempts: list[int] = []  # append is atomic: sync hedging attempts run in worker threads
        self.events: list[tuple[str, Mapping[str, AttributeValue]]] = []

    @property
    def attempts(self) -> int:
        """Attempts observed so far."""
        return len(self._attempts)

    def event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        """A policy event during the call: a span event on the logical span, a metric, a line in the access log."""
        self.events.append((name, attributes))
        if self.span is not None:
            self.span.add_event(name, attributes)
        if self.meters is not None:
            self.meters.event(
                name,
                attributes,
                {key: self.base[key] for key in (semconv.SERVER_ADDRESS, semconv.SERVER_PORT) if key in self.base},
            )

    # -- attempts --------------------------------------------------------------------------------------------

    def _start(self, request: httpx.Request) -> tuple[dict[str, Any], trace_api.Span | None, float, httpx.URL]:
        url = request.url
        # The call's attributes are the first attempt's, unless a layer has sent this attempt elsewhere.
        attributes = dict(self.base) if url is self._url else request_attributes(request, self.redaction)
        number = int(request.extensions.get(ATTEMPT, 1))
        self._attempts.append(number)
        if number > 1:
            attributes[semconv.HTTP_REQUEST_RESEND_COUNT] = number - 1
        span = None
        if self._tracer is not None:
            span = self._tracer.start_span(
                span_name(request.method), context=self._context, kind=SpanKind.CLIENT, attributes=attributes
            )
            # Each attempt carries its own span id upstream (a retry overwrites the previous attempt's header).
            propagate.inject(request.headers, context=trace_api.set_span_in_context(span))
        if self.meters is not None:
            self.meters.client_active.add(1, {key: attributes[key] for key in _METRIC_KEYS})
        return attributes, span, perf_counter(), url

    def _end(
        self,
        request: httpx.Request,
        opened: tuple[dict[str, Any], trace_api.Span | None, float, httpx.URL],
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> None:
        attributes, span, started, url = opened
        at_start = attributes
        elapsed = perf_counter() - started
        outcome: dict[str, Any] = {}
        if request.url is not url:
            # A layer below (a balancer) sent the attempt elsewhere: record where it really went.
            moved = request_attributes(request, self.redaction)
            outcome.update(
                (key, moved[key]) for key in (semconv.SERVER_ADDRESS, semconv.SERVER_PORT, semconv.URL_FULL)
            )
            attributes = {**attributes, **outcome}
        outcome.update(outcome_attributes(response, error))
        if span is not None:
            end_span(span, outcome)
        if self.meters is not None:
            self.meters.client_active.add(-1, {key: at_start[key] for key in _METRIC_KEYS})
            metric = {key: attributes[key] for key in _METRIC_KEYS}
            metric.update((key, value) for key, value in outcome.items() if key != semconv.URL_FULL)
            self.meters.client_duration.record(elapsed, metric)

    def send(self, target: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
        """Make one attempt through ``target``, observed."""
        opened = self._start(request)
        try:
            response = target.handle_request(request)
        except BaseException as exc:
            self._end(request, opened, None, exc)
            raise
        self._end(request, opened, response, None)
        return response

    async def asend(self, target: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
        """Make one attempt through ``target``, observed (async)."""
        opened = self._start(request)
        try:
            response = await target.handle_async_request(request)
        except BaseException as exc:
            self._end(request, opened, None, exc)
            raise
        self._end(request, opened, response, None)
        return response
