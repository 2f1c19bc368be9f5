"""CircuitBreakerTransport: rejections, half-open under load, cancellation, scopes, telemetry, pybreaker."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pybreaker
import pytest

import connectivity as cx
from connectivity import admin
from connectivity.telemetry import events, semconv
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.testing.otel import InMemoryTelemetry
from connectivity.transports import CircuitBreakerTransport, TracingTransport

from .conftest import Sender


def tripping(clock: FakeClock, **overrides: Any) -> cx.CircuitBreaker:
    settings: dict[str, Any] = {"consecutive_failures": 2, "failure_ratio": None, "open_for": 5.0, "clock": clock}
    settings.update(overrides)
    return cx.CircuitBreaker(**settings)


def test_failures_trip_it_and_rejections_send_nothing(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([500, 503], default=200)
    transport = CircuitBreakerTransport(script, tripping(clock, name="orders"))
    assert [send(transport).status_code for _ in range(2)] == [500, 503]
    with pytest.raises(cx.CircuitOpenError) as rejected:
        send(transport)
    assert len(script.requests) == 2  # the third call never left
    error = rejected.value
    assert (error.breaker, error.state, error.retry_after) == ("orders", "open", 5.0)
    assert isinstance(error, httpx.TransportError)
    clock.advance(5.0)
    assert send(transport).status_code == 200  # the probe succeeded: closed again
    assert transport.breaker.circuit().state == "closed"


def test_4xx_are_not_failures_and_errors_are(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([404, 429, 404, httpx.ConnectError, httpx.ReadTimeout], default=200)
    transport = CircuitBreakerTransport(script, tripping(clock))
    assert [send(transport).status_code for _ in range(3)] == [404, 429, 404]
    assert transport.breaker.circuit().state == "closed"
    for error in (httpx.ConnectError, httpx.ReadTimeout):
        with pytest.raises(error):
            send(transport)
    assert transport.breaker.circuit().state == "open"


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_a_thousand_tasks_on_a_half_open_circuit_let_exactly_the_permits_through(mode: str) -> None:
    clock = FakeClock()
    breaker = tripping(clock, half_open_permits=3, half_open_successes=3)
    script = ScriptedTransport([500, 500], default=Step(200, delay=1.0), clock=clock)
    transport = CircuitBreakerTransport(script, breaker)
    outcomes: list[str] = []

    async def one(client: httpx.AsyncClient) -> None:
        try:
            await client.get("http://upstream/")
            outcomes.append("sent")
        except cx.CircuitOpenError as error:
            outcomes.append(error.state)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(2):
                await client.get("http://upstream/")
            clock.advance(5.0)
            async with anyio.create_task_group() as group:
                for _ in range(1000):
                    group.start_soon(one, client)

    anyio.run(main, backend=mode)
    assert len(script.requests) == 2 + 3
    assert outcomes.count("sent") == 3
    assert outcomes.count("half-open") == 997
    assert breaker.circuit().state == "closed"


def test_threads_on_a_half_open_circuit_let_exactly_the_permits_through() -> None:
    clock = FakeClock()
    breaker = tripping(clock, half_open_permits=2, half_open_successes=2)
    release = threading.Event()

    def held(request: httpx.Request) -> Step:
        assert release.wait(10)
        return Step(200)

    script = ScriptedTransport([500, 500], default=held)
    transport = CircuitBreakerTransport(script, breaker)
    client = httpx.Client(transport=transport)
    for _ in range(2):
        client.get("http://upstream/")
    clock.advance(5.0)
    start = threading.Barrier(64)
    rejections = threading.Condition()
    rejected = 0

    def one() -> str:
        nonlocal rejected
        start.wait(10)
        try:
            client.get("http://upstream/")
            return "sent"
        except cx.CircuitOpenError as error:
            with rejections:
                rejected += 1
                rejections.notify_all()
            return error.state

    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(one) for _ in range(64)]
        # The probes are held upstream until every other thread has been turned away.
        with rejections:
            assert rejections.wait_for(lambda: rejected == 62, timeout=10)
        release.set()
        outcomes = [future.result(10) for future in futures]
    assert outcomes.count("sent") == 2
    assert outcomes.count("half-open") == 62
    assert len(script.requests) == 2 + 2
    assert breaker.circuit().state == "closed"
    client.close()


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_cancelled_calls_never_trip_it_and_a_cancelled_probe_returns_its_permit(mode: str) -> None:
    clock = FakeClock()
    breaker = tripping(clock, consecutive_failures=1)
    script = ScriptedTransport(default=Step(200, delay=10.0), clock=clock)
    transport = CircuitBreakerTransport(script, breaker)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                with clock.timeout_scope(1.0):
                    await client.get("http://upstream/")
            assert breaker.circuit().state == "closed"
            breaker.circuit().record(breaker.circuit().admit(), cx.policies.breaker.FAILURE)  # trip it
            clock.advance(5.0)
            with clock.timeout_scope(1.0):  # the probe is cancelled...
                await client.get("http://upstream/")
            assert breaker.circuit().state == "half-open"
            assert breaker.circuit().status()["probes_in_flight"] == 0  # ...and its permit came back

    anyio.run(main, backend=mode)
    assert script.cancelled == 4


def test_host_scope_keeps_one_circuit_per_authority(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=lambda request: Step(500 if request.url.host == "bad" else 200))
    transport = CircuitBreakerTransport(script, tripping(clock), scope="host")
    for _ in range(2):
        send(transport, "GET", "http://bad:8080/")
    with pytest.raises(cx.CircuitOpenError) as rejected:
        send(transport, "GET", "http://bad:8080/")
    assert rejected.value.breaker == "breaker/bad:8080"
    assert send(transport, "GET", "http://good/").status_code == 200


def test_host_scope_tells_ports_and_ipv6_hosts_apart_and_names_circuits_by_authority(send: Sender) -> None:
    clock = FakeClock()
    breaker = tripping(clock)
    transport = CircuitBreakerTransport(ScriptedTransport(default=200), breaker, scope="host")
    for url in ("http://a:8080/", "http://a:8081/", "http://a/", "http://a:80/x", "http://[::1]:9000/"):
        assert send(transport, "GET", url).status_code == 200
    # The default port is no port (httpx normalises it), as the circuit's key always said.
    assert sorted(breaker.circuits()) == ["[::1]:9000", "a", "a:8080", "a:8081"]
    assert breaker.circuit("a:8080").name == "breaker/a:8080"


def test_host_scope_circuits_are_the_breakers_own_shared_by_transports(send: Sender) -> None:
    clock = FakeClock()
    breaker = tripping(clock)
    failing = CircuitBreakerTransport(ScriptedTransport(default=500), breaker, scope="host")
    healthy = ScriptedTransport(default=200)
    other = CircuitBreakerTransport(healthy, breaker, scope="host")
    for _ in range(2):
        send(failing, "GET", "http://orders:8080/")
    with pytest.raises(cx.CircuitOpenError):
        send(other, "GET", "http://orders:8080/")  # the same circuit, tripped through the other transport
    assert healthy.requests == []
    breaker.reset("orders:8080")
    assert send(other, "GET", "http://orders:8080/").status_code == 200


def test_slow_successes_are_still_classified_by_the_breaker(send: Sender) -> None:
    clock = FakeClock()
    breaker = cx.CircuitBreaker(
        failure_ratio=None, slow_call_threshold=0.5, minimum_calls=2, window=10, window_type="count", clock=clock
    )
    script = ScriptedTransport(default=Step(200, delay=1.0), clock=clock)
    transport = CircuitBreakerTransport(script, breaker)
    for _ in range(2):
        assert send(transport).status_code == 200
    assert breaker.circuit().state == "open"  # two slow calls out of two: the slow-call ratio tripped it


def test_a_status_listed_as_a_failure_below_400_is_a_failure(send: Sender) -> None:
    clock = FakeClock()
    breaker = tripping(clock, failure_statuses={500, 302})
    transport = CircuitBreakerTransport(ScriptedTransport(default=302), breaker)
    for _ in range(2):
        assert send(transport).status_code == 302
    assert breaker.circuit().state == "open"


def test_endpoint_scope_uses_the_balancers_choice(send: Sender) -> None:
    clock = FakeClock()
    transport = CircuitBreakerTransport(ScriptedTransport(default=500), tripping(clock), scope="endpoint")
    for _ in range(2):
        send(transport, extensions={"connectivity.endpoint": "10.0.0.7:80"})
    with pytest.raises(cx.CircuitOpenError):
        send(transport, extensions={"connectivity.endpoint": "10.0.0.7:80"})
    assert send(transport, extensions={"connectivity.endpoint": "10.0.0.8:80"}).status_code == 500


def test_a_trip_is_a_span_event_a_metric_and_visible_in_the_status_app(
    send: Sender, otel: InMemoryTelemetry
) -> None:
    clock = FakeClock()
    breaker = tripping(clock, name="status-orders")
    script = ScriptedTransport([500, 500], default=200)
    transport = TracingTransport(CircuitBreakerTransport(script, breaker), telemetry=otel.telemetry())
    send(transport)
    assert admin.snapshot("breakers")["breakers"]["status-orders"]["circuits"]["*"]["state"] == "closed"  # type: ignore[index]
    send(transport)  # this call trips it...
    # ...and the status app says so on the very next read.
    shown = admin.snapshot("breakers")["breakers"]["status-orders"]["circuits"]["*"]  # type: ignore[index]
    assert (shown["state"], shown["retry_after_s"]) == ("open", 5.0)
    logical = [span for span in otel.spans() if span.name == "GET call"][-1]
    (event,) = [event for event in logical.events if event.name == events.BREAKER_STATE_CHANGE]
    assert event.attributes[semconv.CONNECTIVITY_STATE_FROM] == "closed"
    assert event.attributes[semconv.CONNECTIVITY_STATE_TO] == "open"
    assert event.attributes[semconv.CONNECTIVITY_REASON] == "2 consecutive failures"
    (point,) = otel.metrics()[semconv.METRIC_BREAKER_TRANSITIONS]
    assert point.value == 1
    assert point.attributes[semconv.CONNECTIVITY_BREAKER] == "status-orders"


def test_shadow_mode_reports_but_never_rejects(send: Sender) -> None:
    clock = FakeClock()
    breaker = tripping(clock, shadow=True)
    script = ScriptedTransport(default=500)
    transport = CircuitBreakerTransport(script, breaker)
    assert [send(transport).status_code for _ in range(5)] == [500] * 5
    assert len(script.requests) == 5
    assert breaker.circuit().state == "open"
    assert breaker.circuit().rejected == 3


def test_the_builder_puts_it_inside_the_retry_layer(send: Sender) -> None:
    clock = FakeClock()
    breaker = tripping(clock, consecutive_failures=3)
    script = ScriptedTransport(default=503)
    transport = cx.transport(script, breaker=breaker, clock=clock, telemetry=False, request_id=False)
    assert send(transport).status_code == 503  # three attempts, three failures: now open
    assert len(script.requests) == 3
    with pytest.raises(cx.CircuitOpenError):
        send(transport)  # rejected at once, and a rejection is not retried
    assert len(script.requests) == 3


def test_a_pybreaker_breaker_drives_it(send: Sender) -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, name="legacy")
    heard: list[tuple[str, str]] = []
    unsubscribe = events.subscribe(
        lambda name, attributes: heard.append(
            (str(attributes[semconv.CONNECTIVITY_STATE_FROM]), str(attributes[semconv.CONNECTIVITY_STATE_TO]))
        )
    )
    try:
        script = ScriptedTransport([500, 200, 500, 502], default=200)
        transport = CircuitBreakerTransport(script, breaker)
        assert [send(transport).status_code for _ in range(4)] == [500, 200, 500, 502]
        with pytest.raises(cx.CircuitOpenError) as rejected:
            send(transport)
    finally:
        unsubscribe()
    assert len(script.requests) == 4
    assert rejected.value.breaker == "legacy"
    assert 0 < rejected.value.retry_after <= 60  # type: ignore[operator]
    assert heard == [("closed", "open")]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="breaker must be"):
        CircuitBreakerTransport(ScriptedTransport(), object())
    with pytest.raises(ValueError, match="scope"):
        CircuitBreakerTransport(ScriptedTransport(), cx.CircuitBreaker(), scope="pod")  # type: ignore[arg-type]
    with pytest.raises(cx.ConfigError, match=r"transport\.breaker"):
        cx.transport(breaker=pybreaker.CircuitBreaker())  # type: ignore[arg-type]


def test_a_pybreaker_trip_by_an_error_raises_that_error(send: Sender) -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60, name="legacy-errors")
    transport = CircuitBreakerTransport(ScriptedTransport([httpx.ConnectError], default=200), breaker)
    with pytest.raises(httpx.ConnectError):
        send(transport)  # pybreaker would have raised its own error instead
    with pytest.raises(cx.CircuitOpenError):
        send(transport)


def test_circuit_states_are_a_gauge(send: Sender, otel: InMemoryTelemetry) -> None:
    clock = FakeClock()
    breaker = tripping(clock, name="gauge-inventory")
    transport = TracingTransport(
        CircuitBreakerTransport(ScriptedTransport(default=500), breaker, scope="host"), telemetry=otel.telemetry()
    )
    send(transport, "GET", "http://a/")
    send(transport, "GET", "http://b/")
    send(transport, "GET", "http://b/")  # b trips
    states = {
        point.attributes[semconv.CONNECTIVITY_BREAKER]: point.value
        for point in otel.metrics()[semconv.METRIC_BREAKER_STATE]
        if str(point.attributes[semconv.CONNECTIVITY_BREAKER]).startswith("gauge-inventory")
    }
    assert states == {"gauge-inventory/a": 0, "gauge-inventory/b": 1}
