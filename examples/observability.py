"""Observability: a client calls service A, which calls service B; one trace, retries visible, Prometheus metrics.

Service B is a FaultyUpstream that answers 30 % of requests with 503; service A retries them. The OpenTelemetry SDK
prints every span on one line (console exporter) and exposes metrics in the Prometheus format (the Prometheus
reader; a real service would serve them with ``prometheus_client.start_http_server(port, addr="127.0.0.1")``).
Service A also mounts the status app, which the example reads at the end.

Run: python examples/observability.py   (needs opentelemetry-sdk and opentelemetry-exporter-prometheus)
"""

from __future__ import annotations

import logging
import random

import anyio
import httpx
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import connectivity as cx
from connectivity import admin
from connectivity.middleware import AccessLogMiddleware, RequestIDMiddleware, TracingMiddleware
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import serve

CALLS = 8


def one_line(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    resend = span.attributes.get("http.request.resend_count") if span.attributes else None
    status = span.attributes.get("http.response.status_code") if span.attributes else None
    events = ",".join(event.name.rsplit(".", 1)[-1] for event in span.events)
    return (
        f"  trace {context.trace_id:032x}"[:16]
        + f"  {span.kind.name:<8} {span.name:<16} status={status}"
        + (f" resend={resend}" if resend else "")
        + (f" events={events}" if events else "")
        + "\n"
    )


def install_sdk() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    return provider


async def main() -> None:
    provider = install_sdk()
    # One access-log line per inbound request of A and per outbound call of A to B.
    logging.basicConfig(level=logging.WARNING, format="  log %(name)s: %(message)s")
    logging.getLogger("connectivity.access").setLevel(logging.INFO)
    service_b_app = TracingMiddleware(
        FaultyUpstream(name="service-b", faults=Faults(error_rate=0.3), rng=random.Random(7))
    )
    with serve(service_b_app, name="service-b") as service_b:
        to_b = cx.transport(
            retry=cx.Retry(backoff=cx.Backoff.none(), budget=cx.RetryBudget()), name="service-b", access_log=True
        )

        async def front(request: Request) -> PlainTextResponse:
            async with httpx.AsyncClient(transport=to_b, base_url=service_b.url) as client:
                answer = await client.get("/orders")
            return PlainTextResponse(f"b answered {answer.status_code}", status_code=answer.status_code)

        service_a_app = RequestIDMiddleware(
            TracingMiddleware(
                AccessLogMiddleware(
                    Starlette(routes=[Route("/front", front), Mount("/_connectivity", app=admin.app())])
                )
            )
        )
        with serve(service_a_app, name="service-a") as service_a:
            ok = 0
            async with httpx.AsyncClient(transport=cx.transport(), base_url=service_a.url) as client:
                for number in range(CALLS):
                    response = await client.get("/front", headers={"x-request-id": f"example-{number}"})
                    ok += response.status_code == 200
                status = (await client.get("/_connectivity/clients")).json()
    provider.shutdown()

    retry_layer = next(layer for layer in status["service-b"]["layers"] if layer["type"] == "RetryTransport")
    print(
        f"status app: service-b retries up to {retry_layer['attempts']} attempts; "
        f"retry budget remaining {retry_layer['budget']['remaining']}"
    )
    wanted = ("http_client_request_duration_seconds_count", "connectivity_client_retries_total")
    for line in generate_latest().decode().splitlines():
        if line.startswith(wanted) and 'server_address="127.0.0.1"' in line:
            print(f"metric: {line}")
    print(f"ok: {ok}/{CALLS} calls through A to B succeeded")


if __name__ == "__main__":
    anyio.run(main)
