"""FaultInjectionTransport: Envoy-style delays and aborts, deterministic with a seeded RNG and a FakeClock."""

from __future__ import annotations

import random
from collections.abc import Mapping

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.errors import ConfigError, DeadlineExceededError
from connectivity.routing import Abort, Delay, FaultDecision, FaultInjection, HeaderMatch
from connectivity.telemetry import events
from connectivity.telemetry.events import FAULT_INJECTED
from connectivity.testing import FakeClock, ScriptedTransport
from connectivity.transports import RetryTransport, TimeoutTransport
from connectivity.transports.fault import FaultInjectionTransport

from .conftest import Sender


def upstream() -> ScriptedTransport:
    return ScriptedTransport(default=200)


def test_delay_waits_on_the_clock_then_sends(send: Sender) -> None:
    clock, inner = FakeClock(), upstream()
    transport = FaultInjectionTransport(inner, FaultInjection(delay=Delay(2.0)), clock=clock)
    response = send(transport)
    assert response.status_code == 200
    assert clock.now() == pytest.approx(2.0)
    assert response.extensions["connectivity.fault"] == FaultDecision(2.0, None, None)
    assert len(inner.requests) == 1
    assert transport.fault.stats().active_faults == 0


def test_abort_with_a_status_never_reaches_the_upstream(send: Sender) -> None:
    inner = upstream()
    transport = FaultInjectionTransport(inner, FaultInjection(abort=Abort(status=503)))
    response = send(transport, "POST", json={"a": 1})
    assert (response.status_code, response.content) == (503, b"fault filter abort")
    assert response.headers["content-type"] == "text/plain"
    assert response.extensions["connectivity.fault"] == FaultDecision(None, 503, None)
    assert inner.requests == []


def test_delay_then_abort(send: Sender) -> None:
    clock, inner = FakeClock(), upstream()
    fault = FaultInjection(delay=Delay(0.5), abort=Abort(status=500))
    response = send(FaultInjectionTransport(inner, fault, clock=clock))
    assert response.status_code == 500
    assert clock.now() == pytest.approx(0.5)
    assert inner.requests == []


def test_connection_abort_is_a_connect_error_that_retries_absorb(send: Sender) -> None:
    clock, inner = FakeClock(), upstream()
    fault = FaultInjectionTransport(inner, FaultInjection(abort=Abort(error="connect")), rng=random.Random(0))
    with pytest.raises(httpx.ConnectError, match="fault injected"):
        send(fault)
    half = FaultInjectionTransport(
        inner, FaultInjection(abort=Abort(error="connect", percent=50)), rng=random.Random(1)
    )
    response = send(RetryTransport(half, cx.Retry(attempts=5), clock=clock))
    assert response.status_code == 200
    assert response.extensions["connectivity"].attempts == 2  # the seed aborts the first attempt only


def test_percentages_follow_the_seeded_rng(send: Sender) -> None:
    predicted = FaultInjection(abort=Abort(status=503, percent=25))
    rng = random.Random(9)
    expected = []
    for _ in range(40):
        decision = predicted.decide({}, rng.random)
        expected.append(503 if decision else 200)
    transport = FaultInjectionTransport(
        upstream(), FaultInjection(abort=Abort(status=503, percent=25)), rng=random.Random(9)
    )

    def sync() -> list[int]:
        with httpx.Client(transport=transport) as client:
            return [client.get("http://upstream/").status_code for _ in range(40)]

    async def async_() -> list[int]:
        async with httpx.AsyncClient(transport=transport) as client:
            return [(await client.get("http://upstream/")).status_code for _ in range(40)]

    assert send.run(sync, async_) == expected
    assert 200 in expected
    assert 503 in expected


def test_header_condition_and_header_control(send: Sender) -> None:
    gated = FaultInjection(abort=Abort(status=503), headers=[HeaderMatch("x-chaos", exact="on")])
    assert send(FaultInjectionTransport(upstream(), gated)).status_code == 200
    assert send(FaultInjectionTransport(upstream(), gated), headers={"x-chaos": "on"}).status_code == 503

    asked = {"x-envoy-fault-abort-request": "418"}
    fixed = FaultInjection(abort=Abort(status=503, percent=0))
    assert send(FaultInjectionTransport(upstream(), fixed), headers=asked).status_code == 200  # not enabled
    controlled = FaultInjection(abort=Abort(header=True))
    assert send(FaultInjectionTransport(upstream(), controlled), headers=asked).status_code == 418
    assert send(FaultInjectionTransport(upstream(), controlled)).status_code == 200

    clock = FakeClock()
    delayed = FaultInjection(delay=Delay(header=True))
    response = send(
        FaultInjectionTransport(upstream(), delayed, clock=clock), headers={"x-envoy-fault-delay-request": "1500"}
    )
    assert response.extensions["connectivity.fault"] == FaultDecision(1.5, None, None)
    assert clock.now() == pytest.approx(1.5)


def test_per_request_override(send: Sender) -> None:
    transport = FaultInjectionTransport(upstream(), FaultInjection(abort=Abort(status=503)))
    assert send(transport, extensions={"connectivity.fault": False}).status_code == 200
    other = FaultInjection(abort=Abort(status=429))
    assert send(transport, extensions={"connectivity.fault": other}).status_code == 429


def test_injected_faults_are_policy_events(send: Sender) -> None:
    seen: list[tuple[str, Mapping[str, object]]] = []
    unsubscribe = events.subscribe(lambda name, attributes: seen.append((name, dict(attributes))))
    try:
        fault = FaultInjection(delay=Delay(0.25), abort=Abort(status=503))
        send(FaultInjectionTransport(upstream(), fault, clock=FakeClock()))
    finally:
        unsubscribe()
    assert [entry for entry in seen if entry[0] == FAULT_INJECTED] == [
        (FAULT_INJECTED, {"connectivity.reason": "delay", "connectivity.delay": 0.25}),
        (FAULT_INJECTED, {"connectivity.reason": "abort 503"}),
    ]


@pytest.mark.anyio
async def test_max_active_faults_counts_concurrent_delays() -> None:
    clock, inner = FakeClock(), upstream()
    fault = FaultInjection(delay=Delay(1.0), max_active_faults=2)
    transport = FaultInjectionTransport(inner, fault, clock=clock)
    decisions: list[object] = []
    async with httpx.AsyncClient(transport=transport) as client:

        async def one() -> None:
            response = await client.get("http://upstream/")
            decisions.append(response.extensions.get("connectivity.fault"))

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one)
    assert sorted(map(str, decisions)) == sorted(map(str, [None, None, *[FaultDecision(1.0, None, None)] * 2]))
    assert fault.stats() == (2, 0, 2, 0)  # 2 delays, 2 over the limit, none active any more
    assert clock.now() == pytest.approx(1.0)


@pytest.mark.anyio
async def test_a_cancelled_delay_releases_its_fault_and_a_deadline_still_fires() -> None:
    clock = FakeClock()
    fault = FaultInjection(delay=Delay(10.0))
    transport = FaultInjectionTransport(upstream(), fault, clock=clock)
    async with httpx.AsyncClient(transport=TimeoutTransport(transport, 1.0, clock=clock)) as client:
        with pytest.raises(DeadlineExceededError):
            await client.get("http://upstream/")
    assert clock.now() == pytest.approx(1.0)
    assert fault.stats().active_faults == 0


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        FaultInjectionTransport(upstream(), Abort(status=503))  # type: ignore[arg-type]
    assert caught.value.field == "FaultInjectionTransport.fault"
