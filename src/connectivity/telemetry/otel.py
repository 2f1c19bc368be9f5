"""Tracer and meter acquisition from ``opentelemetry-api`` only, at near-zero cost when nothing records.

Theory of operation: the API hands out proxy tracers and meters that forward to an SDK once one is installed,
and do nothing (slowly: ``start_as_current_span`` on the no-op tracer costs several microseconds) until then.
:class:`Telemetry` asks instead whether anything *can* record: a provider passed in explicitly, or a global one
set with ``trace.set_tracer_provider`` / ``metrics.set_meter_provider``. Until then :meth:`Telemetry.tracer`
and :meth:`Telemetry.meters` return ``None`` after reading one module attribute, and the layers skip all span
and metric work. The answer is re-read on every call, so an SDK installed after the client was built is picked
up by the next request; once found it is cached.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_internal

from connectivity._version import __version__
from connectivity.policies.budget import RetryBudget
from connectivity.telemetry import events, semconv
from connectivity.telemetry.redaction import DEFAULT_REDACTION, Redaction

__all__ = ["BREAKER_STATE_VALUES", "SCOPE", "Meters", "Telemetry", "track_breaker", "track_budget"]

SCOPE = "connectivity"
"""The instrumentation scope name of every tracer and meter connectivity creates."""

_NO_TRACER_PROVIDER = (trace_api.ProxyTracerProvider, trace_api.NoOpTracerProvider)
# Read once: the API's getters consult os.environ on every call while no provider is set.
_TRACER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_METER_FROM_ENV = "OTEL_PYTHON_METER_PROVIDER" in os.environ
# The fast path reads the API's module globals; should a future API rename them, use the public getters.
_FAST_TRACE = hasattr(trace_api, "_TRACER_PROVIDER")
_FAST_METRICS = hasattr(_metrics_internal, "_METER_PROVIDER")


def _global_tracer_provider() -> trace_api.TracerProvider | None:
    # One attribute read while no SDK is installed.
    provider = getattr(trace_api, "_TRACER_PROVIDER", None) if _FAST_TRACE else trace_api.get_tracer_provider()
    if provider is None:
        if not _TRACER_FROM_ENV:
            return None
        provider = trace_api.get_tracer_provider()
    return None if isinstance(provider, _NO_TRACER_PROVIDER) else provider


def _global_meter_provider() -> metrics_api.MeterProvider | None:
    provider = (
        getattr(_metrics_internal, "_METER_PROVIDER", None) if _FAST_METRICS else metrics_api.get_meter_provider()
    )
    if provider is None:
        if not _METER_FROM_ENV:
            return None
        provider = metrics_api.get_meter_provider()
    if isinstance(provider, metrics_api.NoOpMeterProvider) or provider is getattr(
        _metrics_internal, "_PROXY_METER_PROVIDER", None
    ):
        return None
    return provider


# Budgets whose balance the `connectivity.retry_budget.remaining` gauge reports, by name (one per client name:
# a frozen, slotted budget cannot be weakly referenced, and names are few).
_budgets: dict[str, RetryBudget] = {}
_budgets_lock = threading.Lock()


def track_budget(budget: RetryBudget, name: str) -> None:
    """Report ``budget``'s balance in ``connectivity.retry_budget.remaining{connectivity.budget=name}``.

    A later budget tracked under the same name replaces the earlier one.
    """
    with _budgets_lock:
        _budgets[name] = budget


BREAKER_STATE_VALUES = {"closed": 0, "open": 1, "half-open": 2, "isolated": 3}
"""The values of the ``connectivity.breaker.state`` gauge."""

# Breakers whose circuits the `connectivity.breaker.state` gauge reports, by name (a frozen, slotted breaker
# cannot be weakly referenced; a later breaker of the same name replaces the earlier one).
_breakers: dict[str, Any] = {}


def track_breaker(breaker: Any) -> None:
    """Report the state of every circuit of ``breaker`` (anything with ``name`` and ``circuits()``).

    The gauge is ``connectivity.breaker.state{connectivity.breaker=<circuit name>}``: 0 closed, 1 open,
    2 half-open, 3 isolated.
    """
    with _budgets_lock:
        _breakers[str(breaker.name)] = breaker


def _observe_breakers(options: CallbackOptions) -> Iterable[Observation]:
    with _budgets_lock:
        tracked = list(_breakers.values())
    return [
        Observation(BREAKER_STATE_VALUES.get(circuit.state, -1), {semconv.CONNECTIVITY_BREAKER: circuit.name})
        for breaker in tracked
        for circuit in breaker.circuits().values()
    ]


def _observe_budgets(options: CallbackOptions) -> Iterable[Observation]:
    with _budgets_lock:
        tracked = list(_budgets.items())
    return [Observation(budget.balance(), {"connectivity.budget": name}) for name, budget in tracked]


class Meters:
    """Every instrument connectivity records, created once per meter provider.

    Attributes are documented in the observability guide; the HTTP ones follow the stable conventions.
    """

    def __init__(self, provider: metrics_api.MeterProvider) -> None:
        meter = provider.get_meter(SCOPE, __version__)
        buckets = list(semconv.DURATION_BUCKETS)
        self.client_duration = meter.create_histogram(
            semconv.METRIC_CLIENT_DURATION,
            unit="s",
            description="Duration of HTTP client requests (each attempt is one request).",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.client_active = meter.create_up_down_counter(
            semconv.METRIC_CLIENT_ACTIVE,
            unit="{request}",
            description="Number of outbound HTTP requests in flight.",
        )
        self.call_duration = meter.create_histogram(
            semconv.METRIC_CALL_DURATION,
            unit="s",
            description="Duration of logical outbound calls, all attempts, backoff and hedging included.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.server_duration = meter.create_histogram(
            semconv.METRIC_SERVER_DURATION,
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.server_active = meter.create_up_down_counter(
            semconv.METRIC_SERVER_ACTIVE,
            unit="{request}",
            description="Number of inbound HTTP requests in flight.",
        )
        counter = meter.create_counter
        self.by_event = {
            events.RETRY_SCHEDULED: counter(semconv.METRIC_RETRIES, unit="{retry}", description="Retries made."),
            events.RETRY_GAVE_UP: counter(
                semconv.METRIC_GAVE_UP, unit="{call}", description="Failed attempts not retried, by reason."
            ),
            events.HEDGE_LAUNCHED: counter(
                semconv.METRIC_HEDGES, unit="{attempt}", description="Hedged attempts started."
            ),
            events.DEADLINE_EXCEEDED: counter(
                semconv.METRIC_DEADLINE_EXCEEDED, unit="{call}", description="Deadlines and per-try timeouts hit."
            ),
            events.BREAKER_STATE_CHANGE: counter(
                semconv.METRIC_BREAKER_TRANSITIONS, unit="{transition}", description="Circuit breaker transitions."
            ),
            events.RATE_LIMIT_WAIT: (
                decisions := counter(
                    semconv.METRIC_RATE_LIMIT_DECISIONS,
                    unit="{decision}",
                    description="Rate-limit decisions that delayed or refused a call.",
                )
            ),
            events.RATE_LIMIT_REFUSED: decisions,
            events.CONCURRENCY_REJECTED: counter(
                semconv.METRIC_CONCURRENCY_REJECTIONS,
                unit="{call}",
                description="Calls rejected by a bulkhead or concurrency limit.",
            ),
            events.ENDPOINT_PICKED: counter(
                semconv.METRIC_ENDPOINT_PICKS, unit="{pick}", description="Endpoints chosen by the balancer."
            ),
            events.ENDPOINT_EJECTED: (
                ejections := counter(
                    semconv.METRIC_ENDPOINT_EJECTIONS,
                    unit="{ejection}",
                    description="Endpoints ejected and restored.",
                )
            ),
            events.ENDPOINT_RESTORED: ejections,
        }
        meter.create_observable_gauge(
            semconv.METRIC_BREAKER_STATE,
            callbacks=[_observe_breakers],
            unit="1",
            description="Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 isolated.",
        )
        meter.create_observable_gauge(
            semconv.METRIC_BUDGET_REMAINING,
            callbacks=[_observe_budgets],
            unit="{retry}",
            description="Retries the budget would allow right now.",
        )

    def event(
        self, name: str, attributes: Mapping[str, events.AttributeValue], base: Mapping[str, Any] | None = None
    ) -> None:
        """Count a policy event (events without a metric, such as a budget refusal, are spans/logs only)."""
        instrument = self.by_event.get(name)
        if instrument is None:
            return
        merged = dict(base) if base else {}
        merged.update(attributes)
        merged.pop(semconv.CONNECTIVITY_DELAY, None)  # continuous: would make every data point a new series
        merged.pop(semconv.CONNECTIVITY_ATTEMPT, None)
        if name in (events.RATE_LIMIT_WAIT, events.RATE_LIMIT_REFUSED):
            merged["connectivity.decision"] = "wait" if name == events.RATE_LIMIT_WAIT else "refused"
        elif name in (events.ENDPOINT_EJECTED, events.ENDPOINT_RESTORED):
            merged["connectivity.decision"] = "ejected" if name == events.ENDPOINT_EJECTED else "restored"
        instrument.add(1, merged)


_meters_by_provider: weakref.WeakKeyDictionary[Any, Meters] = weakref.WeakKeyDictionary()
_meters_lock = threading.Lock()


def _meters_for(provider: metrics_api.MeterProvider) -> Meters:
    # One set of instruments per provider: several layers and middleware then share them.
    with _meters_lock:
        meters = _meters_by_provider.get(provider)
        if meters is None:
            meters = _meters_by_provider[provider] = Meters(provider)
        return meters


class Telemetry:
    """Where a layer gets its tracer, its instruments and its redaction policy.

    Args:
        tracer_provider: A provider to use instead of the global one (tests, or a dedicated pipeline).
        meter_provider: Likewise for metrics.
        redaction: What is never recorded (default: :data:`~connectivity.telemetry.DEFAULT_REDACTION`).

    .. versionadded:: 0.1
    """

    __slots__ = ("_meter_provider", "_meters", "_tracer", "_tracer_provider", "redaction")

    def __init__(
        self,
        *,
        tracer_provider: trace_api.TracerProvider | None = None,
        meter_provider: metrics_api.MeterProvider | None = None,
        redaction: Redaction = DEFAULT_REDACTION,
    ) -> None:
        if not isinstance(redaction, Redaction):
            raise TypeError(
                f"redaction must be a connectivity.telemetry.Redaction, got {type(redaction).__name__}"
            )
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer: trace_api.Tracer | None = None
        self._meters: Meters | None = None
        self.redaction = redaction

    def tracer(self) -> trace_api.Tracer | None:
        """The tracer, or ``None`` when no tracer provider is installed (skip all span work)."""
        tracer = self._tracer
        if tracer is not None:
            return tracer
        provider = self._tracer_provider or _global_tracer_provider()
        if provider is None or isinstance(provider, _NO_TRACER_PROVIDER):
            return None
        tracer = self._tracer = provider.get_tracer(SCOPE, __version__)
        return tracer

    def meters(self) -> Meters | None:
        """The instruments, or ``None`` when no meter provider is installed (skip all metric work)."""
        meters = self._meters
        if meters is not None:
            return meters
        provider = self._meter_provider or _global_meter_provider()
        if provider is None or isinstance(provider, metrics_api.NoOpMeterProvider):
            return None
        meters = self._meters = _meters_for(provider)
        return meters


_GLOBAL = Telemetry()


def _record_background(name: str, attributes: Mapping[str, events.AttributeValue]) -> None:
    meters = _GLOBAL.meters()
    if meters is not None:
        meters.event(name, attributes)


events._set_background(_record_background)
