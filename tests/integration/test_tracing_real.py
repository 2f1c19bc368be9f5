"""Tracing against real uvicorn upstreams: per-attempt spans, propagation on the wire, nothing secret recorded."""

from __future__ import annotations

import logging

import httpx
import pytest
from opentelemetry.trace import SpanKind

import connectivity as cx
from connectivity.telemetry import events
from connectivity.testing import Faults
from connectivity.testing.otel import InMemoryTelemetry
from connectivity.transports import HTTPTransport

from .conftest import AttemptRouter, settled
from .test_real_upstream import request

SECRETS = ("s3cr3t-bearer", "cookie-s3cr3t", "key-s3cr3t", "query-s3cr3t", "pass-s3cr3t")


def test_a_call_retried_twice_carries_each_attempts_trace_context_upstream(
    mode: str,
    faulty_upstream_factory,
    otel: InMemoryTelemetry,  # type: ignore[no-untyped-def]
) -> None:
    failing = faulty_upstream_factory("failing", faults=Faults(error_rate=1.0))
    healthy = faulty_upstream_factory("healthy")
    transport = cx.transport(
        AttemptRouter(HTTPTransport(), [failing.url, failing.url, healthy.url]),
        retry=cx.Retry(backoff=cx.Backoff.none()),
        telemetry=otel.telemetry(),
    )
    response = request(mode, transport, "GET", f"{failing.url}/orders/7")
    assert response.status_code == 200

    spans = otel.spans()
    (logical,) = [span for span in spans if span.kind is SpanKind.INTERNAL]
    attempts = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert len(attempts) == 3
    assert [span.attributes.get("http.request.resend_count") for span in attempts] == [None, 1, 2]
    assert [event.name for event in logical.events] == [events.RETRY_SCHEDULED, events.RETRY_SCHEDULED]
    # The upstreams saw one traceparent per attempt: the attempt span's own ids, in the call's trace.
    received = [record.header("traceparent") for record in settled(failing).records] + [
        record.header("traceparent") for record in settled(healthy).records
    ]
    assert [value.split("-")[1:3] for value in received if value] == [
        [f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"] for span in attempts
    ]
    # Each attempt span names the replica it reached.
    ports = [span.attributes["server.port"] for span in attempts]
    assert ports == [httpx.URL(failing.url).port, httpx.URL(failing.url).port, httpx.URL(healthy.url).port]


def test_no_secret_reaches_a_span_a_metric_a_log_or_an_error(
    mode: str,
    faulty_upstream_factory,
    otel: InMemoryTelemetry,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    failing = faulty_upstream_factory("failing", faults=Faults(error_rate=1.0))
    url = httpx.URL(failing.url)
    transport = cx.transport(
        retry=cx.Retry(backoff=cx.Backoff.none()), telemetry=otel.telemetry(), access_log=True
    )
    caplog.set_level(logging.DEBUG)
    secret_url = f"http://user:pass-s3cr3t@{url.host}:{url.port}/pay?token=query-s3cr3t&page=2"
    headers = {"Authorization": "Bearer s3cr3t-bearer", "Cookie": "sid=cookie-s3cr3t", "X-API-Key": "key-s3cr3t"}
    response = request(mode, transport, "GET", secret_url, headers=headers)
    assert response.status_code == 503

    refused = cx.transport(
        AttemptRouter(HTTPTransport(), ["http://127.0.0.1:9"]),
        retry=cx.Retry(backoff=cx.Backoff.none()),
        telemetry=otel.telemetry(),
        access_log=True,
    )
    with pytest.raises(cx.RetriesExhaustedError) as error:
        request(mode, refused, "GET", secret_url, headers=headers)

    recorded = [repr(span.to_json()) for span in otel.spans()]
    recorded += [repr(points) for points in otel.metrics().values()]
    recorded += [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    recorded += [str(error.value), repr(error.value)]
    assert len(otel.spans()) == 2 * (1 + 3)
    assert any("REDACTED" in text for text in recorded)
    for text in recorded:
        for secret in SECRETS:
            assert secret not in text
    access = [record.__dict__["access"] for record in caplog.records if hasattr(record, "access")]
    assert [(entry["status"], entry["attempts"]) for entry in access] == [(503, 3), (None, 3)]
    assert access[0]["url"].endswith("/pay?token=REDACTED&page=2")
    assert access[0]["trace_id"] == f"{otel.spans()[3].context.trace_id:032x}"
    assert access[1]["error"] == "RetriesExhaustedError"


@pytest.mark.anyio
async def test_client_to_service_a_to_service_b_is_one_trace(otel: InMemoryTelemetry) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from connectivity.middleware import RequestIDMiddleware, TracingMiddleware
    from connectivity.testing.server import serve

    async def leaf(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"b saw request id {request.headers.get('x-request-id')}")

    b_app = RequestIDMiddleware(
        TracingMiddleware(Starlette(routes=[Route("/leaf", leaf)]), telemetry=otel.telemetry())
    )
    with serve(b_app, name="service-b") as service_b:
        outbound = cx.transport(telemetry=otel.telemetry())

        async def front(request: Request) -> PlainTextResponse:
            async with httpx.AsyncClient(transport=outbound) as client:  # type: ignore[arg-type]
                answer = await client.get(f"{service_b.url}/leaf")
            return PlainTextResponse(answer.text)

        a_app = RequestIDMiddleware(
            TracingMiddleware(Starlette(routes=[Route("/front", front)]), telemetry=otel.telemetry())
        )
        with serve(a_app, name="service-a") as service_a:
            async with httpx.AsyncClient(transport=cx.transport(telemetry=otel.telemetry())) as client:
                response = await client.get(f"{service_a.url}/front", headers={"x-request-id": "chain-1"})
            assert response.text == "b saw request id chain-1"  # the id crossed the hop too
            # client: logical + attempt; A: server + logical + attempt; B: server.
            spans = otel.wait_for_spans(6)

    assert len({span.context.trace_id for span in spans}) == 1
    by_id = {span.context.span_id: span for span in spans}

    def chain(span: object) -> list[str]:
        names = []
        while span is not None:
            names.append(f"{span.kind.name}:{span.name}")  # type: ignore[attr-defined]
            parent = span.parent  # type: ignore[attr-defined]
            span = by_id.get(parent.span_id) if parent is not None else None
        return names

    (b_server,) = [span for span in spans if span.kind is SpanKind.SERVER and span.name == "GET /leaf"]
    assert chain(b_server) == [
        "SERVER:GET /leaf",
        "CLIENT:GET",
        "INTERNAL:GET call",
        "SERVER:GET /front",
        "CLIENT:GET",
        "INTERNAL:GET call",
    ]
