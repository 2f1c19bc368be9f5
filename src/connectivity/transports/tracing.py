"""OpenTelemetry tracing and metrics for outbound calls, as a transport.

Theory of operation: for each call the transport opens one *logical* span (kind INTERNAL, named
``"{method} call"``) and makes a :class:`~connectivity.transports._observe.CallTrace` current; each attempt then
gets its own CLIENT span (named ``"{method}"``, the conventions' name) under the logical one, opened by the layer
that makes attempts (see :mod:`connectivity.transports._observe`). Policy decisions taken during the call (retry
scheduled, hedge launched, deadline exceeded, ...) become events on the logical span.

Metrics: ``http.client.request.duration`` per attempt (the conventions' meaning: one HTTP request),
``connectivity.client.call.duration`` per logical call, so a degrading upstream shows in the first even when
retries keep the second green.

With no SDK installed the transport reads one module attribute per call and otherwise steps aside.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.trace import SpanKind

from connectivity._http import httpx
from connectivity.telemetry import semconv
from connectivity.telemetry.events import _CALL
from connectivity.telemetry.otel import Telemetry
from connectivity.telemetry.redaction import Redaction
from connectivity.transports._base import Inner, Layer
from connectivity.transports._observe import (
    CallTrace,
    end_span,
    outcome_attributes,
    request_attributes,
    span_name,
)
from connectivity.transports._outcome import record_of
from connectivity.transports.hedging import HedgingTransport
from connectivity.transports.retry import RetryTransport

__all__ = ["TracingTransport", "attempt_owner"]

_METRIC_KEYS = (semconv.HTTP_REQUEST_METHOD, semconv.SERVER_ADDRESS, semconv.SERVER_PORT, semconv.URL_SCHEME)


def attempt_owner(transport: object) -> Layer | None:
    """The innermost retry or hedging layer in ``transport``'s stack (the layer that makes attempts), if any."""
    owner: Layer | None = None
    while isinstance(transport, Layer):
        if isinstance(transport, (RetryTransport, HedgingTransport)):
            owner = transport
        transport = transport.inner
    return owner


class TracingTransport(Layer):
    """Trace and measure outbound calls: a logical span per call, a CLIENT span per attempt, policy events.

    Args:
        inner: The transport to call; put this layer outermost so the logical span covers retries and waits.
        telemetry: Providers and redaction (default: the global providers, default redaction).
        tracer_provider: Shortcut for ``Telemetry(tracer_provider=...)``.
        meter_provider: Shortcut for ``Telemetry(meter_provider=...)``.
        redaction: Shortcut for ``Telemetry(redaction=...)``.

    Attempts are observed by the innermost :class:`RetryTransport` or :class:`HedgingTransport` under this
    layer, or by this layer when there is none. The trace context is injected into every attempt with the global
    propagator (W3C Trace Context unless configured otherwise).

    .. versionadded:: 0.1
    """

    __slots__ = ("_owner", "_telemetry")

    def __init__(
        self,
        inner: Inner,
        *,
        telemetry: Telemetry | None = None,
        tracer_provider: trace_api.TracerProvider | None = None,
        meter_provider: metrics_api.MeterProvider | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        super().__init__(inner)
        if telemetry is not None and (tracer_provider or meter_provider or redaction):
            raise TypeError("pass either telemetry= or tracer_provider=/meter_provider=/redaction=, not both")
        if telemetry is None:
            telemetry = (
                Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, redaction=redaction)
                if redaction is not None
                else Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
            )
        elif not isinstance(telemetry, Telemetry):
            raise TypeError(
                f"telemetry must be a connectivity.telemetry.Telemetry, got {type(telemetry).__name__}"
            )
        self._telemetry = telemetry
        self._owner: Layer = attempt_owner(inner) or self

    @property
    def telemetry(self) -> Telemetry:
        """Providers and redaction in use."""
        return self._telemetry

    def describe(self) -> dict[str, Any]:
        """What the status app shows for this layer."""
        return {"attempts_observed_by": type(self._owner).__name__}

    def _open(self, request: httpx.Request) -> tuple[CallTrace, Any, float] | None:
        telemetry = self._telemetry
        tracer = telemetry.tracer()
        meters = telemetry.meters()
        if tracer is None and meters is None:
            return None
        base = request_attributes(request, telemetry.redaction)
        span = None
        if tracer is not None:
            span = tracer.start_span(f"{span_name(request.method)} call", kind=SpanKind.INTERNAL, attributes=base)
        call = CallTrace(self._owner, tracer, meters, telemetry.redaction, span, base, request.url)
        return call, _CALL.set(call), perf_counter()

    @staticmethod
    def _close(
        call: CallTrace, started: float, response: httpx.Response | None, error: BaseException | None
    ) -> None:
        elapsed = perf_counter() - started
        base = call.base
        outcome = outcome_attributes(response, error)
        if response is not None:
            record = record_of(response)
            if record.gave_up is not None:
                outcome[semconv.CONNECTIVITY_REASON] = record.gave_up
        span = call.span
        if span is not None:
            span.set_attribute(semconv.CONNECTIVITY_ATTEMPTS, call.attempts)
            end_span(span, outcome)
        meters = call.meters
        if meters is not None:
            metric = {key: base[key] for key in _METRIC_KEYS}
            outcome.pop(semconv.CONNECTIVITY_REASON, None)
            metric.update(outcome)
            meters.call_duration.record(elapsed, metric)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        opened = self._open(request)
        if opened is None:
            return inner.handle_request(request)
        call, token, started = opened
        try:
            response = call.send(inner, request) if self._owner is self else inner.handle_request(request)
        except BaseException as exc:
            self._close(call, started, None, exc)
            raise
        finally:
            _CALL.reset(token)
        self._close(call, started, response, None)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        opened = self._open(request)
        if opened is None:
            return await inner.handle_async_request(request)
        call, token, started = opened
        try:
            if self._owner is self:
                response = await call.asend(inner, request)
            else:
                response = await inner.handle_async_request(request)
        except BaseException as exc:
            self._close(call, started, None, exc)
            raise
        finally:
            _CALL.reset(token)
        self._close(call, started, response, None)
        return response
