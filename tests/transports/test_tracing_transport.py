"""TracingTransport with the OpenTelemetry SDK's in-memory exporters: spans, events, metrics, propagation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.semconv.attributes import error_attributes, http_attributes, server_attributes, url_attributes
from opentelemetry.trace import SpanKind, StatusCode

import connectivity as cx
from connectivity.telemetry import Telemetry, events, semconv
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.testing.otel import InMemoryTelemetry as Otel
from connectivity.transports import HedgingTransport, RetryTransport, TracingTransport

from .conftest import Sender

REQUIRED_CLIENT = (
    http_attributes.HTTP_REQUEST_METHOD,
    server_attributes.SERVER_ADDRESS,
    server_attributes.SERVER_PORT,
    url_attributes.URL_FULL,
)


def by_kind(otel: Otel) -> tuple[Any, list[Any]]:
    spans = otel.spans()
    logical = [span for span in spans if span.kind is SpanKind.INTERNAL]
    attempts = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert len(logical) == 1, spans
    return logical[0], attempts


def test_a_call_retried_twice_gives_one_logical_span_and_three_attempt_spans(send: Sender, otel: Otel) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 503, 200], clock=clock)
    transport = cx.transport(script, telemetry=otel.telemetry(), clock=clock)
    response = send(transport, "GET", "http://orders.internal/items?page=2")
    assert response.status_code == 200

    logical, attempts = by_kind(otel)
    assert logical.name == "GET call"
    assert [span.name for span in attempts] == ["GET"] * 3
    assert [span.attributes.get(http_attributes.HTTP_REQUEST_RESEND_COUNT) for span in attempts] == [None, 1, 2]
    assert [span.attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE] for span in attempts] == [503, 503, 200]
    assert all(span.parent.span_id == logical.context.span_id for span in attempts)
    assert {span.context.trace_id for span in [logical, *attempts]} == {logical.context.trace_id}
    assert logical.attributes[semconv.CONNECTIVITY_ATTEMPTS] == 3
    assert logical.attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE] == 200

    scheduled = [event for event in logical.events if event.name == events.RETRY_SCHEDULED]
    assert [event.attributes[semconv.CONNECTIVITY_REASON] for event in scheduled] == ["status 503", "status 503"]
    assert [event.attributes[semconv.CONNECTIVITY_ATTEMPT] for event in scheduled] == [2, 3]
    assert all(event.attributes[semconv.CONNECTIVITY_DELAY] >= 0 for event in scheduled)

    # Every attempt carried its own span upstream, in W3C Trace Context.
    sent = [request.headers["traceparent"].rsplit("-", 1)[0] for request in script.requests]
    expected = [f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}" for span in attempts]
    assert sent == expected
    assert all(int(request.headers["traceparent"][-2:], 16) & 1 for request in script.requests)  # sampled


def test_failed_attempts_are_errors_and_the_call_says_why_it_gave_up(send: Sender, otel: Otel) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 503, 503], clock=clock)
    response = send(cx.transport(script, telemetry=otel.telemetry(), clock=clock))
    assert response.status_code == 503
    logical, attempts = by_kind(otel)
    assert [span.attributes[error_attributes.ERROR_TYPE] for span in attempts] == ["503"] * 3
    assert all(span.status.status_code is StatusCode.ERROR for span in [logical, *attempts])
    assert logical.attributes[semconv.CONNECTIVITY_REASON] == "attempts exhausted"
    gave_up = [event for event in logical.events if event.name == events.RETRY_GAVE_UP]
    assert [event.attributes[semconv.CONNECTIVITY_REASON] for event in gave_up] == ["attempts exhausted"]


def test_transport_errors_are_recorded_by_type(send: Sender, otel: Otel) -> None:
    clock = FakeClock()
    script = ScriptedTransport([httpx.ConnectError] * 3, clock=clock)
    with pytest.raises(cx.RetriesExhaustedError):
        send(cx.transport(script, telemetry=otel.telemetry(), clock=clock))
    logical, attempts = by_kind(otel)
    assert [span.attributes[error_attributes.ERROR_TYPE] for span in attempts] == ["ConnectError"] * 3
    assert http_attributes.HTTP_RESPONSE_STATUS_CODE not in attempts[0].attributes
    assert logical.attributes[error_attributes.ERROR_TYPE] == "RetriesExhaustedError"
    assert logical.status.status_code is StatusCode.ERROR


def test_every_span_has_the_required_attributes_and_the_default_port(send: Sender, otel: Otel) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    send(
        cx.transport(script, telemetry=otel.telemetry(), clock=clock),
        "POST",
        "https://pay.internal/charge",
        headers={"Idempotency-Key": "k1"},
    )
    send(cx.transport(ScriptedTransport([200]), telemetry=otel.telemetry()), "GET", "http://pay.internal:8080/")
    spans = otel.spans()
    assert len(spans) == 3 + 2
    for span in spans:
        for name in REQUIRED_CLIENT:
            assert name in span.attributes, (span.name, name)
    ports = {span.attributes[server_attributes.SERVER_PORT] for span in spans}
    assert ports == {443, 8080}
    assert {span.attributes[url_attributes.URL_FULL] for span in spans} == {
        "https://pay.internal/charge",
        "http://pay.internal:8080/",
    }


def test_unknown_methods_are_recorded_as_other(send: Sender, otel: Otel) -> None:
    send(TracingTransport(ScriptedTransport([200]), telemetry=otel.telemetry()), "PURGE", "http://cache/")
    assert sorted(span.name for span in otel.spans()) == ["HTTP", "HTTP call"]  # no method-driven cardinality
    for span in otel.spans():
        assert span.attributes[http_attributes.HTTP_REQUEST_METHOD] == "_OTHER"
        assert span.attributes[http_attributes.HTTP_REQUEST_METHOD_ORIGINAL] == "PURGE"


def test_without_retries_the_tracing_layer_observes_the_single_attempt(send: Sender, otel: Otel) -> None:
    script = ScriptedTransport([200])
    send(TracingTransport(script, telemetry=otel.telemetry()))
    logical, attempts = by_kind(otel)
    assert len(attempts) == 1
    assert attempts[0].parent.span_id == logical.context.span_id
    assert script.requests[0].headers["traceparent"].split("-")[2] == f"{attempts[0].context.span_id:016x}"


def test_the_innermost_attempt_maker_observes_attempts(otel: Otel) -> None:
    inner = HedgingTransport(ScriptedTransport([200]), cx.Hedge(delay=1.0))
    retry = RetryTransport(inner, cx.Retry())
    assert TracingTransport(retry).describe() == {"attempts_observed_by": "HedgingTransport"}
    assert TracingTransport(RetryTransport(ScriptedTransport([200]))).describe() == {
        "attempts_observed_by": "RetryTransport"
    }


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_hedged_attempts_are_sibling_spans_with_a_launch_event(mode: str, otel: Otel) -> None:
    send = Sender(mode)
    clock = FakeClock()
    script = ScriptedTransport(
        [Step(200, delay=3.0, content=b"slow"), Step(200, delay=0.1, content=b"fast")], clock=clock
    )
    transport = TracingTransport(
        HedgingTransport(script, cx.Hedge(delay=0.5), clock=clock), telemetry=otel.telemetry()
    )
    assert send(transport).content == b"fast"
    logical, attempts = by_kind(otel)
    assert len(attempts) == 2
    assert all(span.parent.span_id == logical.context.span_id for span in attempts)
    by_resend = {span.attributes.get(http_attributes.HTTP_REQUEST_RESEND_COUNT): span for span in attempts}
    assert by_resend[None].attributes[error_attributes.ERROR_TYPE] == "cancelled"  # the slow one lost
    assert by_resend[None].status.status_code is StatusCode.UNSET
    assert by_resend[1].attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE] == 200
    launched = [event for event in logical.events if event.name == events.HEDGE_LAUNCHED]
    assert [
        (event.attributes[semconv.CONNECTIVITY_ATTEMPT], event.attributes[semconv.CONNECTIVITY_DELAY])
        for event in launched
    ] == [(2, 0.5)]


def test_deadline_exceeded_is_an_event_of_the_call(send: Sender, otel: Otel) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=5.0)], clock=clock)
    transport = cx.transport(script, timeout=1.0, retry=False, telemetry=otel.telemetry(), clock=clock)
    with pytest.raises(cx.DeadlineExceededError):
        send(transport)
    logical, _ = by_kind(otel)
    exceeded = [event for event in logical.events if event.name == events.DEADLINE_EXCEEDED]
    assert [
        (e.attributes[semconv.CONNECTIVITY_REASON], e.attributes[semconv.CONNECTIVITY_DELAY]) for e in exceeded
    ] == [("deadline", 1.0)]
    assert logical.attributes[error_attributes.ERROR_TYPE] == "DeadlineExceededError"


def test_metrics_keep_attempts_and_logical_calls_apart(send: Sender, otel: Otel) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 503, 200], clock=clock)
    send(cx.transport(script, telemetry=otel.telemetry(), clock=clock), "GET", "http://orders.internal/")
    metrics = otel.metrics()
    attempts = metrics[semconv.METRIC_CLIENT_DURATION]
    by_status = {point.attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE]: point.count for point in attempts}
    assert by_status == {503: 2, 200: 1}
    for point in attempts:
        assert point.attributes[http_attributes.HTTP_REQUEST_METHOD] == "GET"
        assert point.attributes[server_attributes.SERVER_ADDRESS] == "orders.internal"
        assert point.attributes[server_attributes.SERVER_PORT] == 80
    (call,) = metrics[semconv.METRIC_CALL_DURATION]
    assert call.count == 1
    assert call.attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE] == 200
    (retries,) = metrics[semconv.METRIC_RETRIES]
    assert retries.value == 2
    assert retries.attributes[semconv.CONNECTIVITY_REASON] == "status 503"
    assert all(point.value == 0 for point in metrics[semconv.METRIC_CLIENT_ACTIVE])
    units = otel.units()
    assert units[semconv.METRIC_CLIENT_DURATION] == "s"
    assert units[semconv.METRIC_CALL_DURATION] == "s"


def test_with_no_provider_nothing_is_recorded_or_injected(send: Sender) -> None:
    telemetry = Telemetry()
    assert telemetry.tracer() is None  # no SDK installed globally in the test process
    assert telemetry.meters() is None
    script = ScriptedTransport([200])
    send(TracingTransport(script, telemetry=telemetry))
    assert "traceparent" not in script.requests[0].headers


def test_a_failing_listener_never_breaks_the_call(
    send: Sender, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[str] = []

    def broken(name: str, attributes: object) -> None:
        heard.append(name)
        raise RuntimeError("listener bug")

    unsubscribe = events.subscribe(broken)
    try:
        clock = FakeClock()
        response = send(
            cx.transport(ScriptedTransport([503, 200], clock=clock), telemetry=otel.telemetry(), clock=clock)
        )
    finally:
        unsubscribe()
    assert response.status_code == 200
    assert heard == [events.RETRY_SCHEDULED]
    assert "listener bug" in caplog.text
    events.emit(events.RETRY_SCHEDULED, {})
    assert heard == [events.RETRY_SCHEDULED]  # unsubscribed


def test_a_named_clients_budget_is_a_gauge(otel: Otel) -> None:
    budget = cx.RetryBudget(ratio=0.0, min_per_second=0.2, ttl=10.0)
    clock = FakeClock()
    transport = cx.transport(
        ScriptedTransport([503, 200], clock=clock),
        retry=cx.Retry(budget=budget),
        telemetry=otel.telemetry(),
        name="gauge-orders",
        clock=clock,
    )
    with httpx.Client(transport=transport) as client:
        assert client.get("http://upstream/").status_code == 200
    points = {
        point.attributes["connectivity.budget"]: point.value
        for point in otel.metrics()[semconv.METRIC_BUDGET_REMAINING]
    }
    assert points["gauge-orders"] == 1.0  # 2 allowed, 1 spent on the retry
