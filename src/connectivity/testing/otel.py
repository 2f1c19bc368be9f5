"""An OpenTelemetry SDK pipeline kept in memory, for asserting on what connectivity records.

Needs ``opentelemetry-sdk`` (a test dependency, not a runtime one). The providers are handed to the layers under
test explicitly (``Telemetry(tracer_provider=..., meter_provider=...)``), never installed globally: the global
providers can be set only once per process, so tests that set them leak into each other.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from connectivity.telemetry.otel import Telemetry
from connectivity.telemetry.redaction import DEFAULT_REDACTION, Redaction

__all__ = ["InMemoryTelemetry"]


class InMemoryTelemetry:
    """Span and metric pipelines whose output stays in memory.

    Attributes:
        tracer_provider: An SDK ``TracerProvider`` exporting to memory, synchronously.
        meter_provider: An SDK ``MeterProvider`` read on demand.

    Raises:
        ImportError: ``opentelemetry-sdk`` is not installed.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("InMemoryTelemetry needs opentelemetry-sdk: pip install opentelemetry-sdk") from exc

        self._exporter = InMemorySpanExporter()
        self._ended = threading.Condition()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self._exporter))
        ended = self._ended

        class Notify(SpanProcessor):
            """Wakes :meth:`wait_for_spans` whenever a span ends."""

            def on_end(self, span: Any) -> None:
                with ended:
                    ended.notify_all()

        self.tracer_provider.add_span_processor(Notify())
        self._reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self._reader])

    def telemetry(self, *, redaction: Redaction = DEFAULT_REDACTION) -> Telemetry:
        """A :class:`~connectivity.telemetry.Telemetry` recording into this pipeline."""
        return Telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, redaction=redaction
        )

    def spans(self) -> list[Any]:
        """Finished spans (SDK ``ReadableSpan``), in the order they ended."""
        return list(self._exporter.get_finished_spans())

    def wait_for_spans(self, count: int, *, timeout: float = 5.0) -> list[Any]:
        """The finished spans once at least ``count`` have ended (a server ends its span after responding).

        Raises:
            TimeoutError: Fewer than ``count`` spans ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._ended:
            while len(self._exporter.get_finished_spans()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    ended = len(self._exporter.get_finished_spans())
                    raise TimeoutError(f"{ended} span(s) ended within {timeout} s, expected {count}")
                self._ended.wait(left)
        return self.spans()

    def clear(self) -> None:
        """Forget the finished spans."""
        self._exporter.clear()

    def _metrics(self) -> list[Any]:
        data = self._reader.get_metrics_data()
        if data is None:
            return []
        return [
            metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        ]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points, collected now (cumulative since the pipeline started)."""
        found: dict[str, list[Any]] = {}
        for metric in self._metrics():
            found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def units(self) -> dict[str, str]:
        """Metric name -> unit, for the metrics recorded so far."""
        return {metric.name: metric.unit for metric in self._metrics()}

    def shutdown(self) -> None:
        """Shut both providers down."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
