"""Tracing: what the tracing layer costs with no SDK, and against OpenTelemetry's own httpx instrumentation.

Two measurements, one run:

* **no SDK, in memory**: ``TracingTransport(inner)`` against the in-memory transport called directly, with no
  tracer or meter provider installed (the state of every process that has not configured OpenTelemetry). The
  layer must add at most :data:`TARGET_NO_SDK_US` µs per request: it has to notice that nothing records and step
  aside (the API's no-op ``start_as_current_span`` alone costs more than that).
* **with the SDK, end to end** against the uvicorn upstream of the e2e benchmark (another process), every
  contender on the *same* SDK tracer provider (a synchronous span processor whose exporter drops spans) and meter
  provider (an in-memory reader):

  - ``httpx``: a bare client, no telemetry (the floor);
  - ``otel-httpx``: ``HTTPXClientInstrumentor.instrument_client`` from ``opentelemetry-instrumentation-httpx``:
    one CLIENT span and a duration metric per request;
  - ``connectivity tracing``: ``TracingTransport(HTTPTransport())``: a logical span *and* an attempt span, two
    duration metrics, per request (it does more);
  - ``connectivity full``: ``cx.transport(telemetry=...)``: the same plus retries, budget, deadline, request id.

  ``connectivity tracing`` must cost no more client CPU than ``otel-httpx``.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

import connectivity as cx
from bench._harness import machine_info, median, schedule, table, verdict, write_results
from bench.e2e import _async_block, _Round, _sync_block, upstream
from bench.overhead import MemoryTransport
from connectivity.telemetry import Telemetry

__all__ = ["FULL", "QUICK", "TARGET_NO_SDK_US", "Settings", "run"]

TARGET_NO_SDK_US = 3.0
"""Most CPU, in µs per request, the tracing layer may add when no SDK is installed."""

BARE = "httpx"
OTEL = "otel-httpx"
TRACING = "connectivity tracing"
FULL_STACK = "connectivity full"
E2E_CONTENDERS = (BARE, OTEL, TRACING, FULL_STACK)


@dataclass(frozen=True)
class Settings:
    """How much work one run does (``calls``/``block``: in memory; ``requests``/``e2e_block``: end to end)."""

    calls: int
    requests: int
    rounds: int
    block: int = 1_000
    e2e_block: int = 10


FULL = Settings(calls=20_000, requests=400, rounds=7)
QUICK = Settings(calls=1_000, requests=30, rounds=3, block=100, e2e_block=5)


# -- no SDK, in memory ------------------------------------------------------------------------------------


def _requests(count: int) -> list[httpx.Request]:
    with httpx.Client(trust_env=False) as client:
        return [client.build_request("GET", "http://127.0.0.1:8000/orders/42") for _ in range(count)]


def _memory_sync(settings: Settings) -> dict[str, Any]:
    bare = MemoryTransport()
    traced = cx.transports.TracingTransport(MemoryTransport())
    if traced.telemetry.tracer() is not None or traced.telemetry.meters() is not None:
        raise SystemExit(
            "tracing: a global OpenTelemetry provider is installed; the no-SDK case cannot be measured"
        )
    calls: dict[str, Callable[[httpx.Request], Any]] = {
        "bare": bare.handle_request,
        "tracing": traced.handle_request,
    }
    return _memory_rounds(calls, settings)


def _memory_rounds(calls: dict[str, Callable[[httpx.Request], Any]], settings: Settings) -> dict[str, Any]:
    names = list(calls)
    for call in calls.values():
        for request in _requests(200):
            call(request)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for index in range(settings.rounds):
        spent = dict.fromkeys(names, 0)
        gc.collect()
        for name, size in schedule(names, settings.calls, settings.block, index):
            requests = _requests(size)
            call = calls[name]
            started = time.process_time_ns()
            for request in requests:
                call(request)
            spent[name] += time.process_time_ns() - started
        for name in names:
            per_round[name].append(spent[name] / settings.calls / 1000)
    added = [t - b for t, b in zip(per_round["tracing"], per_round["bare"], strict=True)]
    return {
        "bare_us": round(median(per_round["bare"]), 3),
        "tracing_us": round(median(per_round["tracing"]), 3),
        "added_us": round(median(added), 3),
        "rounds": per_round,
    }


async def _memory_async(settings: Settings) -> dict[str, Any]:
    bare = MemoryTransport()
    traced = cx.transports.TracingTransport(MemoryTransport())
    names = ["bare", "tracing"]
    calls = {"bare": bare.handle_async_request, "tracing": traced.handle_async_request}
    for call in calls.values():
        for request in _requests(200):
            await call(request)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for index in range(settings.rounds):
        spent = dict.fromkeys(names, 0)
        gc.collect()
        for name, size in schedule(names, settings.calls, settings.block, index):
            requests = _requests(size)
            call = calls[name]
            started = time.process_time_ns()
            for request in requests:
                await call(request)
            spent[name] += time.process_time_ns() - started
        for name in names:
            per_round[name].append(spent[name] / settings.calls / 1000)
    added = [t - b for t, b in zip(per_round["tracing"], per_round["bare"], strict=True)]
    return {
        "bare_us": round(median(per_round["bare"]), 3),
        "tracing_us": round(median(per_round["tracing"]), 3),
        "added_us": round(median(added), 3),
        "rounds": per_round,
    }


# -- with the SDK, end to end -----------------------------------------------------------------------------


class _Pipeline:
    """One SDK tracer provider and meter provider shared by every contender."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def telemetry(self) -> Telemetry:
        return Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def instrument(self, client: httpx.Client | httpx.AsyncClient) -> None:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(
            client, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _transport(name: str, pipeline: _Pipeline) -> Any:
    if name == TRACING:
        return cx.transports.TracingTransport(cx.transports.HTTPTransport(), telemetry=pipeline.telemetry())
    if name == FULL_STACK:
        return cx.transport(telemetry=pipeline.telemetry())
    return None


def _e2e_sync(url: str, settings: Settings, pipeline: _Pipeline) -> dict[str, list[float]]:
    with contextlib.ExitStack() as stack:
        calls = {}
        for name in E2E_CONTENDERS:
            client = stack.enter_context(httpx.Client(transport=_transport(name, pipeline), trust_env=False))
            if name == OTEL:
                pipeline.instrument(client)
            calls[name] = client.get
        return _e2e_rounds_sync(calls, url, settings)


def _e2e_rounds_sync(calls: dict[str, Any], url: str, settings: Settings) -> dict[str, list[float]]:
    names = list(calls)
    for call in calls.values():
        _sync_block(call, url, 50, _Round())
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for index in range(settings.rounds):
        shares = {name: _Round() for name in names}
        gc.collect()
        for name, size in schedule(names, settings.requests, settings.e2e_block, index):
            _sync_block(calls[name], url, size, shares[name])
        for name in names:
            per_round[name].append(shares[name].cpu_ns / settings.requests / 1000)
            if shares[name].errors:
                raise SystemExit(f"tracing: {name} had {shares[name].errors} failed requests")
    return per_round


def _e2e_async(url: str, settings: Settings, pipeline: _Pipeline) -> dict[str, list[float]]:
    async def measure() -> dict[str, list[float]]:
        async with contextlib.AsyncExitStack() as stack:
            calls = {}
            for name in E2E_CONTENDERS:
                client = await stack.enter_async_context(
                    httpx.AsyncClient(transport=_transport(name, pipeline), trust_env=False)
                )
                if name == OTEL:
                    pipeline.instrument(client)
                calls[name] = client.get
            names = list(calls)
            for call in calls.values():
                await _async_block(call, url, 50, _Round())
            per_round: dict[str, list[float]] = {name: [] for name in names}
            for index in range(settings.rounds):
                shares = {name: _Round() for name in names}
                gc.collect()
                for name, size in schedule(names, settings.requests, settings.e2e_block, index):
                    await _async_block(calls[name], url, size, shares[name])
                for name in names:
                    per_round[name].append(shares[name].cpu_ns / settings.requests / 1000)
                    if shares[name].errors:
                        raise SystemExit(f"tracing: {name} had {shares[name].errors} failed requests")
            return per_round

    return anyio.run(measure, backend="asyncio")


def _summarise_e2e(per_round: dict[str, list[float]]) -> dict[str, Any]:
    bare = median(per_round[BARE])
    otel = median(per_round[OTEL])
    summary: dict[str, Any] = {}
    for name, values in per_round.items():
        paired_vs_otel = [v - o for v, o in zip(values, per_round[OTEL], strict=True)]
        summary[name] = {
            "cpu_us_per_request": round(median(values), 1),
            "added_over_httpx_us": round(median(values) - bare, 1),
            "vs_otel_httpx": round(median(values) / otel, 3),
            "minus_otel_httpx_paired_us": round(median(paired_vs_otel), 1),
            "rounds": [round(value, 1) for value in values],
        }
    summary["pass"] = summary[TRACING]["minus_otel_httpx_paired_us"] <= 0.0
    return summary


def run(
    *, quick: bool = False, rounds: int | None = None, requests: int | None = None, results_dir: Path | None = None
) -> dict[str, Any]:
    """Run both measurements, print tables and verdicts, and write ``tracing.json``."""
    try:
        import opentelemetry.instrumentation.httpx
        import opentelemetry.sdk  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"tracing: needs the bench group's OpenTelemetry packages ({exc.name} missing)") from None
    base = QUICK if quick else FULL
    settings = Settings(
        calls=base.calls,
        requests=requests or base.requests,
        rounds=rounds or base.rounds,
        block=base.block,
        e2e_block=min(base.e2e_block, requests or base.e2e_block),
    )
    print(
        f"tracing: no SDK in memory ({settings.rounds} rounds x {settings.calls} calls), then with the SDK end to "
        f"end ({settings.rounds} rounds x {settings.requests} requests per contender, uvicorn in another process)"
    )
    memory = {"sync": _memory_sync(settings), "async": anyio.run(_memory_async, settings, backend="asyncio")}
    rows = [
        [mode, f"{r['bare_us']:.2f}", f"{r['tracing_us']:.2f}", f"{r['added_us']:+.2f}"]
        for mode, r in memory.items()
    ]
    print(table(["mode", "inner µs", "TracingTransport µs", "added µs (paired)"], rows))
    checks = [
        (
            f"tracing, no SDK, {mode}: +{r['added_us']:.2f} µs (target <= {TARGET_NO_SDK_US} µs)",
            r["added_us"] <= TARGET_NO_SDK_US,
        )
        for mode, r in memory.items()
    ]
    pipeline = _Pipeline()
    e2e: dict[str, Any] = {}
    try:
        with upstream(None) as url:
            e2e["async"] = _summarise_e2e(_e2e_async(url, settings, pipeline))
            e2e["sync"] = _summarise_e2e(_e2e_sync(url, settings, pipeline))
    finally:
        pipeline.shutdown()
    for mode, summary in e2e.items():
        print(f"\nwith the SDK, {'httpx.AsyncClient (asyncio)' if mode == 'async' else 'httpx.Client'}")
        rows = [
            [
                name,
                f"{summary[name]['cpu_us_per_request']:.1f}",
                f"{summary[name]['added_over_httpx_us']:+.1f}",
                f"{summary[name]['vs_otel_httpx']:.3f}x",
                f"{summary[name]['minus_otel_httpx_paired_us']:+.1f}",
            ]
            for name in E2E_CONTENDERS
        ]
        print(table(["contender", "CPU µs/req", "over httpx", "vs otel-httpx", "minus otel-httpx (paired)"], rows))
        checks.append(
            (f"tracing with the SDK, {mode}: {TRACING} <= {OTEL} (two spans against its one)", summary["pass"])
        )
    for text, ok in checks:
        print(f"{verdict(ok)}  {text}")
    payload = {
        "benchmark": "tracing",
        "quick": quick,
        "target_no_sdk_us": TARGET_NO_SDK_US,
        "no_sdk_in_memory": memory,
        "with_sdk_e2e": e2e,
        "checks": [{"check": text, "pass": ok} for text, ok in checks],
        "pass": all(ok for _, ok in checks),
        "machine": machine_info(),
    }
    path = write_results("tracing", payload, results_dir)
    print(f"results: {path}")
    return payload
