"""The fault-injection policy: Envoy's fault filter decisions, deterministic with a scripted random source."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import httpx
import pytest

from connectivity.errors import ConfigError
from connectivity.routing import Abort, Delay, FaultDecision, FaultInjection, FaultStats, HeaderMatch


def draws(*values: float) -> Callable[[], float]:
    """A random source that returns ``values`` in order and fails the test if asked for more."""
    remaining = list(values)

    def draw() -> float:
        assert remaining, "more random draws than expected"
        return remaining.pop(0)

    return draw


def decide(fault: FaultInjection, headers: Iterable[tuple[str, str]] = (), *values: float) -> FaultDecision | None:
    return fault.decide(httpx.Headers(list(headers)), draws(*values))


def test_delay_and_abort_by_percentage() -> None:
    fault = FaultInjection(delay=Delay(0.5, percent=10), abort=Abort(status=503, percent=5))
    assert decide(fault, (), 0.099, 0.049) == FaultDecision(0.5, 503, None)
    assert decide(fault, (), 0.10, 0.049) == FaultDecision(None, 503, None)
    assert decide(fault, (), 0.05, 0.05) == FaultDecision(0.5, None, None)
    assert decide(fault, (), 0.5, 0.5) is None
    assert fault.stats() == FaultStats(delays_injected=2, aborts_injected=2, faults_overflow=0, active_faults=3)
    for _ in range(3):
        fault.release()
    assert fault.stats().active_faults == 0


def test_percentages_over_many_requests() -> None:
    fault = FaultInjection(abort=Abort(error="connect", percent=20))
    rng = random.Random(3)
    aborted = 0
    for _ in range(10_000):
        decision = fault.decide({}, rng.random)
        if decision is not None:
            assert decision == FaultDecision(None, None, "connect")
            aborted += 1
            fault.release()
    assert aborted / 10_000 == pytest.approx(0.2, abs=0.015)


def test_zero_and_hundred_percent() -> None:
    never = FaultInjection(delay=Delay(1.0, percent=0))
    always = FaultInjection(abort=Abort(status=500))
    assert decide(never, (), 0.0) is None
    assert decide(always, (), 0.999999) == FaultDecision(None, 500, None)


def test_header_conditions_gate_the_fault_without_drawing() -> None:
    fault = FaultInjection(abort=Abort(status=503), headers=[HeaderMatch("x-chaos", exact="on")])
    assert decide(fault, [("x-chaos", "off")]) is None  # no draw made
    assert decide(fault) is None
    assert decide(fault, [("X-Chaos", "on")], 0.0) == FaultDecision(None, 503, None)


def test_max_active_faults_overflows_like_envoy() -> None:
    fault = FaultInjection(delay=Delay(1.0), max_active_faults=2)
    assert decide(fault, (), 0.0) is not None
    assert decide(fault, (), 0.0) is not None
    assert decide(fault) is None  # full: no draw, counted as overflow
    assert fault.stats() == FaultStats(2, 0, 1, 2)
    fault.release()
    assert decide(fault, (), 0.0) is not None
    assert FaultInjection(delay=Delay(1.0), max_active_faults=0).decide({}, draws()) is None


def test_header_controlled_faults_only_when_enabled() -> None:
    fixed = FaultInjection(delay=Delay(0.2, percent=100), abort=Abort(status=500, percent=0))
    asked = [("x-envoy-fault-delay-request", "3000"), ("x-envoy-fault-abort-request", "418")]
    # Not enabled: the headers change nothing.
    assert decide(fixed, asked, 0.0, 0.0) == FaultDecision(0.2, None, None)
    controlled = FaultInjection(delay=Delay(header=True), abort=Abort(header=True))
    assert decide(controlled, asked, 0.0, 0.0) == FaultDecision(3.0, 418, None)
    assert decide(controlled, [], 0.0) is None  # no header, no fault, no draw
    assert decide(controlled, [("x-envoy-fault-abort-request", "700")]) is None  # not an HTTP status
    assert decide(controlled, [("x-envoy-fault-delay-request", "soon")]) is None


def test_percentage_headers_are_capped_by_the_configuration() -> None:
    fault = FaultInjection(abort=Abort(header=True, percent=50))
    base = [("x-envoy-fault-abort-request", "503")]
    lowered = [*base, ("x-envoy-fault-abort-request-percentage", "10")]
    assert decide(fault, lowered, 0.09) == FaultDecision(None, 503, None)
    assert decide(fault, lowered, 0.11) is None
    raised = [*base, ("x-envoy-fault-abort-request-percentage", "90")]
    assert decide(fault, raised, 0.6) is None  # capped at the configured 50 %
    malformed = [*base, ("x-envoy-fault-abort-request-percentage", "lots")]
    assert decide(fault, malformed, 0.4) == FaultDecision(None, 503, None)  # configured percentage
    delay = FaultInjection(delay=Delay(header=True, percent=100))
    delayed = [("x-envoy-fault-delay-request", "250"), ("x-envoy-fault-delay-request-percentage", "0")]
    assert decide(delay, delayed, 0.0) is None


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (FaultInjection, "FaultInjection"),
        (lambda: FaultInjection(delay=0.5), "FaultInjection.delay"),  # type: ignore[arg-type]
        (lambda: FaultInjection(abort=503), "FaultInjection.abort"),  # type: ignore[arg-type]
        (
            lambda: FaultInjection(abort=Abort(status=503), max_active_faults=-1),
            "FaultInjection.max_active_faults",
        ),
        (lambda: FaultInjection(abort=Abort(status=503), headers=["x"]), "FaultInjection.headers"),  # type: ignore[list-item]
        (Delay, "Delay"),
        (lambda: Delay(1.0, header=True), "Delay"),
        (lambda: Delay(-1.0), "Delay.seconds"),
        (lambda: Delay(1.0, percent=101), "Delay.percent"),
        (Abort, "Abort"),
        (lambda: Abort(status=503, error="connect"), "Abort"),
        (lambda: Abort(status=600), "Abort.status"),
        (lambda: Abort(error="reset"), "Abort.error"),  # type: ignore[arg-type]
        (lambda: Abort(status=503, percent=-1), "Abort.percent"),
    ],
)
def test_invalid_fault_configuration(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.field == field
