import json
import logging
import math
import threading
import types
from typing import Any

import pytest

from connectivity import ConfigError
from connectivity.policies import circuit as circuit_module
from connectivity.policies.breaker import (
    BUCKETS,
    CANCELLED,
    CLOSED,
    FAILURE,
    HALF_OPEN,
    IGNORED,
    ISOLATED,
    OPEN,
    SLOW_SUCCESS,
    SUCCESS,
    TRANSITIONS,
    Circuit,
    CircuitBreaker,
    Rejection,
    Transition,
)
from connectivity.testing import FakeClock


def _breaker(clock: FakeClock, **options: Any) -> CircuitBreaker:
    return CircuitBreaker(clock=clock, **options)


def _ticket(circuit: Circuit) -> int:
    ticket = circuit.admit()
    assert isinstance(ticket, int), f"expected a ticket, got {ticket!r}"
    return ticket


def _call(circuit: Circuit, outcome: int) -> None:
    """One admitted call with ``outcome``."""
    circuit.record(_ticket(circuit), outcome)


def _trip(circuit: Circuit) -> None:
    """Open a closed circuit configured with ``consecutive_failures=1``."""
    _call(circuit, FAILURE)
    assert circuit.state == OPEN


def _transitions(breaker: CircuitBreaker) -> list[Transition]:
    seen: list[Transition] = []
    breaker.add_listener(seen.append)
    return seen


# -- trip conditions -----------------------------------------------------------------------------------------


def test_consecutive_failures_trip_on_the_nth_failure_in_a_row() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, failure_ratio=None, consecutive_failures=3)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    for outcome in (FAILURE, FAILURE, SUCCESS, FAILURE, FAILURE):
        _call(circuit, outcome)
    assert circuit.state == CLOSED  # the success broke the streak
    assert circuit.status()["consecutive_failures"] == 2
    _call(circuit, FAILURE)
    assert circuit.state == OPEN
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [(CLOSED, OPEN, "3 consecutive failures")]


def test_a_slow_success_breaks_a_failure_streak() -> None:
    circuit = _breaker(FakeClock(), failure_ratio=None, consecutive_failures=2, slow_call_threshold=1.0).circuit()
    for outcome in (FAILURE, SLOW_SUCCESS, FAILURE):
        _call(circuit, outcome)
    assert circuit.state == CLOSED
    assert circuit.status()["consecutive_failures"] == 1


@pytest.mark.parametrize(
    ("ratio", "minimum_calls"),
    [
        (0.5, 10),
        (1.0, 1),
        (0.25, 4),
        # failures / calls == ratio exactly, but ratio * calls rounds up above failures in binary floating point:
        (0.28, 25),
        (0.07, 100),
        (0.56, 25),
    ],
)
def test_failure_ratio_trips_when_it_reaches_the_threshold_exactly_at_minimum_calls(
    ratio: float, minimum_calls: int
) -> None:
    failures = round(ratio * minimum_calls)
    assert failures / minimum_calls == ratio  # the test's premise: the ratio is reached exactly
    circuit = _breaker(
        FakeClock(), failure_ratio=ratio, minimum_calls=minimum_calls, window=minimum_calls, window_type="count"
    ).circuit()
    for _ in range(minimum_calls - failures):
        _call(circuit, SUCCESS)
    for _ in range(failures - 1):
        _call(circuit, FAILURE)
    assert circuit.state == CLOSED  # one call short of minimum_calls
    _call(circuit, FAILURE)
    assert circuit.window_counts() == (minimum_calls, failures, 0)
    assert circuit.state == OPEN


def test_failure_ratio_just_below_the_threshold_at_minimum_calls_stays_closed() -> None:
    circuit = _breaker(FakeClock(), failure_ratio=0.5, minimum_calls=10).circuit()
    for _ in range(6):
        _call(circuit, SUCCESS)
    for _ in range(4):
        _call(circuit, FAILURE)
    assert circuit.window_counts() == (10, 4, 0)
    assert circuit.state == CLOSED


def test_ratio_never_trips_below_minimum_calls() -> None:
    circuit = _breaker(FakeClock(), failure_ratio=0.1, minimum_calls=10).circuit()
    for _ in range(9):
        _call(circuit, FAILURE)
    assert circuit.window_counts() == (9, 9, 0)
    assert circuit.state == CLOSED
    _call(circuit, FAILURE)
    assert circuit.state == OPEN


def test_ratios_are_checked_on_a_failure_never_on_a_success() -> None:
    circuit = _breaker(FakeClock(), failure_ratio=0.5, minimum_calls=4).circuit()
    for outcome in (FAILURE, FAILURE, FAILURE, SUCCESS):
        _call(circuit, outcome)
    assert circuit.window_counts() == (4, 3, 0)
    assert circuit.state == CLOSED  # minimum reached by a success: nothing is checked
    _call(circuit, FAILURE)
    assert circuit.state == OPEN


def test_slow_call_ratio_trips() -> None:
    breaker = _breaker(
        FakeClock(), failure_ratio=None, minimum_calls=4, slow_call_threshold=1.0, slow_call_ratio=0.5
    )
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    for outcome in (SUCCESS, SUCCESS, SLOW_SUCCESS):
        _call(circuit, outcome)
    assert circuit.state == CLOSED
    _call(circuit, SLOW_SUCCESS)
    assert circuit.window_counts() == (4, 0, 2)
    assert circuit.state == OPEN
    assert seen[0].reason == "slow-call ratio 0.50 >= 0.5 over 4 calls"


@pytest.mark.parametrize(("ratio", "minimum_calls"), [(0.5, 4), (0.28, 25)])
def test_slow_call_ratio_trips_when_it_reaches_the_threshold_exactly_at_minimum_calls(
    ratio: float, minimum_calls: int
) -> None:
    slow = round(ratio * minimum_calls)
    assert slow / minimum_calls == ratio
    circuit = _breaker(
        FakeClock(),
        failure_ratio=None,
        minimum_calls=minimum_calls,
        slow_call_threshold=1.0,
        slow_call_ratio=ratio,
    ).circuit()
    for _ in range(minimum_calls - slow):
        _call(circuit, SUCCESS)
    for _ in range(slow):
        _call(circuit, SLOW_SUCCESS)
    assert circuit.window_counts() == (minimum_calls, 0, slow)
    assert circuit.state == OPEN


def test_slow_call_ratio_defaults_to_every_call_slow() -> None:
    breaker = _breaker(FakeClock(), failure_ratio=None, minimum_calls=3, slow_call_threshold=2.0)
    assert breaker.slow_call_ratio == 1.0
    circuit = breaker.circuit()
    for outcome in (SLOW_SUCCESS, SUCCESS, SLOW_SUCCESS, SLOW_SUCCESS):
        _call(circuit, outcome)
    assert circuit.state == CLOSED  # 3 of 4 slow
    _call(circuit, SLOW_SUCCESS)
    _call(circuit, SLOW_SUCCESS)
    assert circuit.state == CLOSED  # 5 of 6: the time window keeps the success
    breaker.reset()
    for _ in range(3):
        _call(circuit, SLOW_SUCCESS)
    assert circuit.state == OPEN


def test_count_window_smaller_than_minimum_calls_is_rejected_or_can_still_trip() -> None:
    # With minimum_calls > window the ratio condition can never hold: a silent no-op configuration.
    # Resilience4j caps minimum_calls at a count window's size; refusing the configuration would do too.
    try:
        breaker = CircuitBreaker(window_type="count", window=10, clock=FakeClock())  # minimum_calls=20
    except ConfigError as error:
        refused: str | None = error.field
    else:
        refused = None
    if refused is not None:
        assert refused in {"CircuitBreaker.window", "CircuitBreaker.minimum_calls"}
        return
    assert breaker.minimum_calls == 10
    circuit = breaker.circuit()
    for _ in range(10):
        _call(circuit, FAILURE)
    assert circuit.state == OPEN


# -- windows -------------------------------------------------------------------------------------------------


def test_count_window_evicts_the_oldest_outcome() -> None:
    circuit = _breaker(FakeClock(), failure_ratio=0.5, minimum_calls=4, window=4, window_type="count").circuit()
    for outcome in (FAILURE, SUCCESS, SUCCESS, SUCCESS):
        _call(circuit, outcome)
    assert circuit.window_counts() == (4, 1, 0)
    _call(circuit, SUCCESS)
    assert circuit.window_counts() == (4, 0, 0)  # the failure left the window
    _call(circuit, FAILURE)
    assert circuit.window_counts() == (4, 1, 0)
    assert circuit.state == CLOSED
    _call(circuit, FAILURE)
    assert circuit.window_counts() == (4, 2, 0)
    assert circuit.state == OPEN


def test_count_window_evicts_slow_calls_too() -> None:
    circuit = _breaker(
        FakeClock(), failure_ratio=None, window=2, window_type="count", slow_call_threshold=1.0, minimum_calls=3
    ).circuit()
    for outcome in (SLOW_SUCCESS, SUCCESS, SUCCESS):
        _call(circuit, outcome)
    assert circuit.window_counts() == (2, 0, 0)


def test_time_window_bucket_expires_exactly_when_more_than_buckets_minus_one_old() -> None:
    clock = FakeClock()
    circuit = _breaker(clock, window=10.0, minimum_calls=100).circuit()  # buckets of 1 s
    _call(circuit, FAILURE)  # t=0: bucket 0
    clock.advance(0.75)
    _call(circuit, SUCCESS)  # t=0.75: bucket 0
    clock.advance(0.25)
    _call(circuit, SLOW_SUCCESS)  # t=1: bucket 1
    clock.advance(BUCKETS - 1 - 1 + 0.75)  # t=9.75: bucket 9, bucket 0 is BUCKETS - 1 old
    assert circuit.window_counts() == (3, 1, 1)
    clock.advance(0.25)  # t=10: bucket 10, bucket 0 is BUCKETS old
    assert circuit.window_counts() == (1, 0, 1)
    clock.advance(0.75)  # t=10.75
    assert circuit.window_counts() == (1, 0, 1)
    clock.advance(0.25)  # t=11: bucket 1 expires too
    assert circuit.window_counts() == (0, 0, 0)


def test_time_window_forgets_everything_after_a_long_quiet_spell() -> None:
    clock = FakeClock()
    circuit = _breaker(clock, window=10.0, minimum_calls=100).circuit()
    for second in range(BUCKETS):
        _call(circuit, FAILURE if second % 2 else SUCCESS)
        clock.advance(1.0)
    assert circuit.window_counts() == (9, 5, 0)  # t=10: the first second has left
    clock.advance(1000.0)
    _call(circuit, SUCCESS)
    assert circuit.window_counts() == (1, 0, 0)


def test_trip_counts_only_outcomes_still_in_the_time_window() -> None:
    clock = FakeClock()
    circuit = _breaker(clock, failure_ratio=0.5, minimum_calls=6, window=10.0).circuit()
    for _ in range(5):
        _call(circuit, FAILURE)
    clock.advance(10.0)
    _call(circuit, FAILURE)
    assert circuit.window_counts() == (1, 1, 0)
    assert circuit.state == CLOSED

    other = _breaker(clock, failure_ratio=0.5, minimum_calls=6, window=10.0).circuit()
    for _ in range(5):
        _call(other, FAILURE)
    clock.advance(9.75)
    _call(other, FAILURE)
    assert other.state == OPEN


# -- open, half-open -----------------------------------------------------------------------------------------


def test_open_becomes_half_open_after_open_for_and_not_a_tick_before() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=5.0)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    assert seen[-1].open_for == 5.0
    clock.advance(math.nextafter(5.0, 0.0))
    rejection = circuit.admit()
    assert isinstance(rejection, Rejection)
    assert rejection.state == OPEN
    assert rejection.retry_after == pytest.approx(5.0 - clock.now())
    assert rejection.retry_after > 0
    assert circuit.state == OPEN
    clock.advance(5.0 - clock.now())
    assert clock.now() == 5.0
    ticket = circuit.admit()
    assert isinstance(ticket, int)
    assert ticket >= 0
    assert circuit.state == HALF_OPEN
    assert [(t.from_state, t.to_state) for t in seen] == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_open_rejection_reports_the_time_left() -> None:
    clock = FakeClock()
    circuit = _breaker(clock, consecutive_failures=1, open_for=5.0).circuit()
    _trip(circuit)
    clock.advance(1.5)
    assert circuit.admit() == Rejection("breaker", OPEN, 3.5)
    assert circuit.rejected == 1
    assert circuit.status()["retry_after_s"] == 3.5


@pytest.mark.parametrize("permits", [1, 2, 3])
def test_half_open_admits_exactly_the_permits_then_rejects(permits: int) -> None:
    clock = FakeClock()
    circuit = _breaker(clock, consecutive_failures=1, open_for=1.0, half_open_permits=permits).circuit()
    _trip(circuit)
    clock.advance(1.0)
    probes = [circuit.admit() for _ in range(permits)]
    assert all(isinstance(probe, int) and probe >= 0 for probe in probes)
    assert circuit.status()["probes_in_flight"] == permits
    rejected_before = circuit.rejected
    for _ in range(3):
        assert circuit.admit() == Rejection("breaker", HALF_OPEN, 0.0)
    assert circuit.state == HALF_OPEN
    assert circuit.rejected == rejected_before + 3


def test_half_open_closes_after_half_open_successes_successes() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0, half_open_permits=2, half_open_successes=3)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _call(circuit, SUCCESS)
    _trip(circuit)
    clock.advance(1.0)
    first, second = _ticket(circuit), _ticket(circuit)
    circuit.record(first, SUCCESS)
    circuit.record(second, SUCCESS)
    assert circuit.state == HALF_OPEN  # 2 of 3
    circuit.record(_ticket(circuit), SUCCESS)  # a returned permit admits the third probe
    assert circuit.state == CLOSED
    assert seen[-1] == Transition("breaker", HALF_OPEN, CLOSED, "3 probe(s) succeeded")
    assert circuit.window_counts() == (0, 0, 0)  # closing starts a fresh window
    assert circuit.status()["consecutive_failures"] == 0


def test_half_open_successes_default_to_the_permits() -> None:
    clock = FakeClock()
    circuit = _breaker(clock, consecutive_failures=1, open_for=1.0, half_open_permits=2).circuit()
    _trip(circuit)
    clock.advance(1.0)
    first, second = _ticket(circuit), _ticket(circuit)
    circuit.record(first, SUCCESS)
    assert circuit.state == HALF_OPEN
    circuit.record(second, SUCCESS)
    assert circuit.state == CLOSED


@pytest.mark.parametrize(("outcome", "reason"), [(FAILURE, "probe failed"), (SLOW_SUCCESS, "probe was slow")])
def test_half_open_reopens_on_a_failed_or_slow_probe(outcome: int, reason: str) -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=2.0, half_open_permits=2, slow_call_threshold=1.0)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    clock.advance(2.0)
    good, bad = _ticket(circuit), _ticket(circuit)
    circuit.record(good, SUCCESS)
    circuit.record(bad, outcome)
    assert circuit.state == OPEN
    assert seen[-1] == Transition("breaker", HALF_OPEN, OPEN, reason, 2.0)
    assert isinstance(circuit.admit(), Rejection)
    clock.advance(2.0)
    assert isinstance(circuit.admit(), int)
    assert circuit.state == HALF_OPEN


def test_open_for_doubles_on_each_reopening_up_to_open_for_max_and_resets_on_close() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0, open_for_max=5.0)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    for _ in range(5):
        clock.advance(seen[-1].open_for or 0.0)
        circuit.record(_ticket(circuit), FAILURE)
    assert [t.open_for for t in seen if t.to_state == OPEN] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    clock.advance(4.75)
    assert circuit.admit() == Rejection("breaker", OPEN, 0.25)  # the cap is the time enforced
    clock.advance(0.25)
    circuit.record(_ticket(circuit), SUCCESS)
    assert circuit.state == CLOSED
    _trip(circuit)
    assert seen[-1].open_for == 1.0


def test_open_for_stays_put_without_open_for_max() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=3.0)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    for _ in range(4):
        clock.advance(3.0)
        circuit.record(_ticket(circuit), FAILURE)
    assert [t.open_for for t in seen if t.to_state == OPEN] == [3.0] * 5


def test_open_for_growth_stays_capped_through_a_long_outage() -> None:
    # A dependency down for hours: every probe fails. At 60 s per opening 1100 reopenings are ~18 hours.
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0, open_for_max=60.0)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    for _ in range(1100):
        clock.advance(seen[-1].open_for or 0.0)
        circuit.record(_ticket(circuit), FAILURE)
    assert circuit.state == OPEN
    assert seen[-1].open_for == 60.0


def test_jitter_spreads_open_for_either_way_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=10.0, jitter=0.1)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    for _ in range(200):
        _trip(circuit)
        circuit.reset()
    spread = [t.open_for for t in seen if t.to_state == OPEN]
    assert all(value is not None and 9.0 <= value <= 11.0 for value in spread)
    assert len(set(spread)) > 100

    for draw, expected in ((0.0, 9.0), (0.5, 10.0), (math.nextafter(1.0, 0.0), 11.0)):
        monkeypatch.setattr(circuit_module, "random", types.SimpleNamespace(random=lambda draw=draw: draw))
        clock = FakeClock()
        breaker = _breaker(clock, consecutive_failures=1, open_for=10.0, jitter=0.1)
        opened = _transitions(breaker)
        circuit = breaker.circuit()
        _trip(circuit)
        open_for = opened[-1].open_for
        assert open_for is not None
        assert open_for == pytest.approx(expected)
        assert 9.0 <= open_for <= 11.0  # "up to" 10 %: rounding may reach the bound itself
        clock.advance(open_for * (1 - 1e-9))
        assert isinstance(circuit.admit(), Rejection)
        clock.advance(open_for - clock.now())
        assert isinstance(circuit.admit(), int)  # the jittered time is the one enforced


# -- outcomes that do not count ------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [IGNORED, CANCELLED])
def test_ignored_and_cancelled_never_count_when_closed(outcome: int) -> None:
    circuit = _breaker(FakeClock(), failure_ratio=0.5, minimum_calls=1, consecutive_failures=2).circuit()
    for _ in range(10):
        _call(circuit, outcome)
    assert circuit.window_counts() == (0, 0, 0)
    assert circuit.state == CLOSED


@pytest.mark.parametrize("outcome", [IGNORED, CANCELLED])
def test_ignored_and_cancelled_do_not_break_a_failure_streak(outcome: int) -> None:
    circuit = _breaker(FakeClock(), failure_ratio=None, consecutive_failures=2).circuit()
    for step in (FAILURE, outcome, outcome):
        _call(circuit, step)
    assert circuit.status()["consecutive_failures"] == 1
    _call(circuit, FAILURE)
    assert circuit.state == OPEN


@pytest.mark.parametrize("outcome", [IGNORED, CANCELLED])
def test_ignored_and_cancelled_probes_return_their_permit_and_count_nothing(outcome: int) -> None:
    clock = FakeClock()
    circuit = _breaker(clock, consecutive_failures=1, open_for=1.0, half_open_permits=1).circuit()
    _trip(circuit)
    clock.advance(1.0)
    probe = _ticket(circuit)
    assert isinstance(circuit.admit(), Rejection)
    circuit.record(probe, outcome)
    assert circuit.state == HALF_OPEN
    assert circuit.status()["probes_in_flight"] == 0
    circuit.record(_ticket(circuit), SUCCESS)  # the permit came back, and the cancelled probe was no success
    assert circuit.state == CLOSED


# -- stale tickets -------------------------------------------------------------------------------------------


def test_a_call_admitted_before_the_circuit_opened_cannot_reopen_or_close_it() -> None:
    clock = FakeClock()
    circuit = _breaker(clock, consecutive_failures=1, open_for=1.0).circuit()
    slow_failure, slow_success = _ticket(circuit), _ticket(circuit)
    _trip(circuit)
    clock.advance(1.0)
    probe = _ticket(circuit)
    circuit.record(slow_success, SUCCESS)
    circuit.record(slow_failure, FAILURE)
    assert circuit.state == HALF_OPEN
    assert circuit.status()["probes_in_flight"] == 1
    circuit.record(probe, SUCCESS)
    assert circuit.state == CLOSED


def test_a_probe_admitted_before_a_reopening_is_ignored() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0, half_open_permits=2, half_open_successes=1)
    circuit = breaker.circuit()
    _trip(circuit)
    clock.advance(1.0)
    failing, late = _ticket(circuit), _ticket(circuit)
    circuit.record(failing, FAILURE)
    clock.advance(1.0)
    current = _ticket(circuit)
    circuit.record(late, SUCCESS)  # would close the circuit if it counted
    assert circuit.state == HALF_OPEN
    assert circuit.status()["probes_in_flight"] == 1
    circuit.record(current, FAILURE)
    assert circuit.state == OPEN


def test_a_call_admitted_before_isolate_and_reset_is_ignored() -> None:
    circuit = _breaker(FakeClock(), failure_ratio=None, consecutive_failures=1).circuit()
    ticket = _ticket(circuit)
    circuit.isolate()
    circuit.reset()
    circuit.record(ticket, FAILURE)
    assert circuit.state == CLOSED
    assert circuit.window_counts() == (0, 0, 0)


# -- isolate, reset ------------------------------------------------------------------------------------------


def test_isolate_rejects_everything_until_reset() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    circuit.isolate()
    circuit.isolate()  # idempotent: no second transition
    for _ in range(3):
        assert circuit.admit() == Rejection("breaker", ISOLATED, None)
        clock.advance(1000.0)
    assert circuit.rejected == 3
    assert circuit.status()["retry_after_s"] is None
    circuit.reset()
    assert isinstance(circuit.admit(), int)
    assert [(t.from_state, t.to_state) for t in seen] == [(CLOSED, ISOLATED), (ISOLATED, CLOSED)]


@pytest.mark.parametrize("state", [OPEN, HALF_OPEN])
def test_isolate_and_reset_from_open_and_half_open(state: str) -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    if state == HALF_OPEN:
        clock.advance(1.0)
        _ticket(circuit)
    assert circuit.state == state
    circuit.isolate()
    assert circuit.state == ISOLATED
    clock.advance(10.0)
    assert isinstance(circuit.admit(), Rejection)
    circuit.reset()
    assert circuit.state == CLOSED
    assert circuit.window_counts() == (0, 0, 0)
    assert seen[-2:] == [
        Transition("breaker", state, ISOLATED, "isolated by hand"),
        Transition("breaker", ISOLATED, CLOSED, "reset by hand"),
    ]

    _trip(circuit)
    if state == HALF_OPEN:
        clock.advance(1.0)
        _ticket(circuit)
    circuit.reset()  # straight back to closed
    assert circuit.state == CLOSED
    assert (seen[-1].from_state, seen[-1].to_state) == (state, CLOSED)


def test_reset_of_a_closed_circuit_forgets_its_window_without_a_transition() -> None:
    breaker = _breaker(FakeClock(), failure_ratio=0.5, minimum_calls=4, consecutive_failures=3)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    for _ in range(2):
        _call(circuit, FAILURE)
    circuit.reset()
    assert circuit.window_counts() == (0, 0, 0)
    assert circuit.status()["consecutive_failures"] == 0
    for _ in range(2):
        _call(circuit, FAILURE)
    assert circuit.state == CLOSED
    assert seen == []


def test_breaker_isolate_and_reset_act_on_every_circuit_or_one_key() -> None:
    breaker = _breaker(FakeClock())
    a, b = breaker.circuit("a"), breaker.circuit("b")
    assert a.name == "breaker/a"
    breaker.isolate()
    assert (a.state, b.state, breaker.circuit().state) == (ISOLATED, ISOLATED, ISOLATED)
    breaker.reset("a")
    assert (a.state, b.state) == (CLOSED, ISOLATED)
    breaker.isolate("c")  # created on first use, isolated at once
    assert breaker.circuit("c").state == ISOLATED
    breaker.reset()
    # The breaker-wide calls cover the main circuit too.
    assert {key: circuit.state for key, circuit in breaker.circuits().items()} == dict.fromkeys(
        ["", *"abc"], CLOSED
    )


def test_breaker_isolate_without_circuits_isolates_the_main_one() -> None:
    breaker = _breaker(FakeClock())
    breaker.isolate()
    assert breaker.circuit().state == ISOLATED
    breaker.reset()
    assert breaker.circuit().state == CLOSED


def test_breaker_isolate_also_isolates_the_main_circuit_when_keyed_circuits_exist() -> None:
    # CircuitBreaker.isolate's docstring: "every circuit when None, and the main one".
    breaker = _breaker(FakeClock())
    breaker.circuit("a")
    breaker.isolate()
    assert breaker.circuit("a").state == ISOLATED
    assert breaker.circuit().state == ISOLATED


# -- shadow mode ---------------------------------------------------------------------------------------------


def test_shadow_mode_admits_everything_but_counts_would_be_rejections() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0, shadow=True)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    _trip(circuit)
    assert [circuit.admit() for _ in range(3)] == [-1, -1, -1]
    assert circuit.rejected == 3
    circuit.record(-1, SUCCESS)  # a shadow admission's outcome says nothing
    assert circuit.state == OPEN
    clock.advance(1.0)
    probe = circuit.admit()
    assert isinstance(probe, int)
    assert probe >= 0
    assert circuit.admit() == -1  # the probe permit is taken
    assert circuit.rejected == 4
    circuit.record(probe, SUCCESS)
    assert circuit.state == CLOSED
    circuit.isolate()
    assert circuit.admit() == -1
    assert circuit.rejected == 5
    assert [t.to_state for t in seen] == [OPEN, HALF_OPEN, CLOSED, ISOLATED]


# -- listeners -----------------------------------------------------------------------------------------------


def test_listeners_get_every_transition_in_order() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0, name="orders")
    seen = _transitions(breaker)
    circuit = breaker.circuit("db")
    _trip(circuit)
    clock.advance(1.0)
    circuit.record(_ticket(circuit), FAILURE)
    clock.advance(2.0)
    circuit.record(_ticket(circuit), SUCCESS)
    circuit.isolate()
    circuit.reset()
    assert [(t.from_state, t.to_state) for t in seen] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, ISOLATED),
        (ISOLATED, CLOSED),
    ]
    assert all((t.from_state, t.to_state) in TRANSITIONS for t in seen)
    assert {t.circuit for t in seen} == {"orders/db"}
    assert [t.open_for for t in seen if t.to_state == OPEN] == [1.0, 1.0]
    assert all(t.open_for is None for t in seen if t.to_state != OPEN)


def test_a_listener_added_twice_is_called_once_and_removing_it_stops_calls() -> None:
    breaker = _breaker(FakeClock())
    seen: list[Transition] = []
    remove = breaker.add_listener(seen.append)
    breaker.add_listener(seen.append)
    circuit = breaker.circuit()
    circuit.isolate()
    assert len(seen) == 1
    remove()
    circuit.reset()
    assert len(seen) == 1


def test_a_raising_listener_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    breaker = _breaker(FakeClock(), failure_ratio=None, consecutive_failures=1)

    def broken(transition: Transition) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    seen = _transitions(breaker)
    circuit = breaker.circuit()
    with caplog.at_level(logging.ERROR, logger="connectivity.breaker"):
        _trip(circuit)
    assert [t.to_state for t in seen] == [OPEN]  # the listener after it still ran
    (record,) = caplog.records
    assert record.name == "connectivity.breaker"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "listener bug"


def test_listeners_run_without_the_circuit_lock_held() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=1.0)
    circuit = breaker.circuit()
    statuses: list[object] = []

    def inspecting(transition: Transition) -> None:
        statuses.append(circuit.status()["state"])
        circuit.window_counts()
        if transition.to_state == CLOSED:
            circuit.isolate()  # a listener may even act on the circuit

    breaker.add_listener(inspecting)

    def scenario() -> None:
        _trip(circuit)
        clock.advance(1.0)
        circuit.record(_ticket(circuit), SUCCESS)

    worker = threading.Thread(target=scenario, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "a listener deadlocked on the circuit lock"
    assert statuses == [OPEN, HALF_OPEN, CLOSED, ISOLATED]
    assert circuit.state == ISOLATED


# -- classification, status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "elapsed", "expected"),
    [
        (200, None, SUCCESS),
        (200, 0.5, SUCCESS),
        (200, 1.0, SUCCESS),  # not slower than the threshold
        (200, 1.5, SLOW_SUCCESS),
        (302, 2.0, SLOW_SUCCESS),
        (404, 5.0, IGNORED),
        (400, None, IGNORED),
        (429, None, IGNORED),
        (500, None, FAILURE),
        (503, 0.1, FAILURE),
        (599, None, FAILURE),
    ],
)
def test_classify_status(status: int, elapsed: float | None, expected: int) -> None:
    breaker = CircuitBreaker(slow_call_threshold=1.0)
    assert breaker.classify_status(status, elapsed) == expected


def test_classify_status_without_a_slow_threshold_never_says_slow() -> None:
    assert CircuitBreaker().classify_status(200, 1e9) == SUCCESS


def test_429_is_a_failure_only_when_listed() -> None:
    breaker = CircuitBreaker(failure_statuses=frozenset({429, 503}))
    assert breaker.classify_status(429) == FAILURE
    assert breaker.classify_status(503) == FAILURE
    assert breaker.classify_status(500) == IGNORED


def test_status_is_json_serialisable_in_every_state() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, open_for=2.0, slow_call_threshold=1.0)
    circuit = breaker.circuit("x")
    snapshots = [circuit.status()]
    _call(circuit, SLOW_SUCCESS)
    _trip(circuit)
    clock.advance(0.5)
    snapshots.append(circuit.status())
    clock.advance(1.5)
    _ticket(circuit)
    snapshots.append(circuit.status())
    circuit.isolate()
    snapshots.append(circuit.status())
    decoded = [json.loads(json.dumps(snapshot)) for snapshot in snapshots]
    assert [snapshot["state"] for snapshot in decoded] == [CLOSED, OPEN, HALF_OPEN, ISOLATED]
    assert decoded[1] == {
        "state": OPEN,
        "calls": 2,
        "failures": 1,
        "slow": 1,
        "consecutive_failures": 1,
        "probes_in_flight": 0,
        "rejected": 0,
        "retry_after_s": 1.5,
    }
    assert decoded[2]["probes_in_flight"] == 1
    whole = json.loads(json.dumps(breaker.status()))
    assert whole["circuits"]["x"]["state"] == ISOLATED
    assert whole["slow_call_threshold_s"] == 1.0


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"failure_ratio": 0}, "failure_ratio"),
        ({"failure_ratio": 0.0}, "failure_ratio"),
        ({"failure_ratio": -0.5}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"failure_ratio": math.nan}, "failure_ratio"),
        ({"failure_ratio": True}, "failure_ratio"),
        ({"failure_ratio": "0.5"}, "failure_ratio"),
        ({"slow_call_threshold": 1.0, "slow_call_ratio": 0.0}, "slow_call_ratio"),
        ({"slow_call_threshold": 1.0, "slow_call_ratio": 1.01}, "slow_call_ratio"),
        ({"slow_call_ratio": 0.5}, "slow_call_ratio"),  # no threshold
        ({"slow_call_threshold": 0}, "slow_call_threshold"),
        ({"slow_call_threshold": math.inf}, "slow_call_threshold"),
        ({"window": 0}, "window"),
        ({"window": -30.0}, "window"),
        ({"window": math.nan}, "window"),
        ({"window": math.inf}, "window"),
        ({"window_type": "count", "window": 2.5}, "window"),
        ({"window_type": "count", "window": 0}, "window"),
        ({"window_type": "count", "window": -5}, "window"),
        ({"window_type": "count", "window": True}, "window"),
        ({"window_type": "sliding"}, "window_type"),
        ({"window_type": "TIME"}, "window_type"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"minimum_calls": 2.0}, "minimum_calls"),
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"open_for": 0}, "open_for"),
        ({"open_for": -1.0}, "open_for"),
        ({"open_for": math.nan}, "open_for"),
        ({"open_for": math.inf}, "open_for"),
        ({"open_for": 5.0, "open_for_max": 4.9}, "open_for_max"),
        ({"open_for_max": math.inf}, "open_for_max"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
        ({"jitter": True}, "jitter"),
        ({"half_open_permits": 0}, "half_open_permits"),
        ({"half_open_permits": -1}, "half_open_permits"),
        ({"half_open_successes": 0}, "half_open_successes"),
        ({"failure_ratio": None}, "failure_ratio"),  # no trip condition at all
        ({"failure_statuses": frozenset({600})}, "failure_statuses"),
        ({"failure_statuses": frozenset({99})}, "failure_statuses"),
        ({"failure_statuses": frozenset({"500"})}, "failure_statuses"),
        ({"failure_statuses": frozenset({True})}, "failure_statuses"),
        ({"failure_statuses": "500"}, "failure_statuses"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
    ],
)
def test_bad_configuration_raises_config_error_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        CircuitBreaker(**options)
    assert raised.value.field == f"CircuitBreaker.{field}"
    assert f"CircuitBreaker.{field}=" in str(raised.value)


@pytest.mark.parametrize("statuses", [500, None, 5.5])
def test_failure_statuses_that_are_not_a_collection_raise_config_error(statuses: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        CircuitBreaker(failure_statuses=statuses)
    assert raised.value.field == "CircuitBreaker.failure_statuses"


def test_valid_configurations_build_and_fill_their_defaults() -> None:
    assert CircuitBreaker().half_open_successes == 1
    assert CircuitBreaker(half_open_permits=3).half_open_successes == 3
    assert CircuitBreaker(failure_ratio=None, consecutive_failures=5).consecutive_failures == 5
    assert CircuitBreaker(failure_ratio=None, slow_call_threshold=0.5).slow_call_ratio == 1.0
    assert CircuitBreaker(window_type="count", window=50).window == 50
    assert CircuitBreaker(open_for=5.0, open_for_max=5.0, jitter=0.0).open_for_max == 5.0
    statuses: Any = [502, 503]
    assert CircuitBreaker(failure_statuses=statuses).failure_statuses == frozenset({502, 503})


# -- threads -------------------------------------------------------------------------------------------------


def test_threads_lose_no_updates() -> None:
    threads, calls = 32, 1000
    circuit = _breaker(FakeClock(), window=threads * calls + 1, window_type="count", minimum_calls=10).circuit()
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            for index in range(calls):
                ticket = circuit.admit()
                assert isinstance(ticket, int)
                circuit.record(ticket, FAILURE if index % 10 == 9 else SUCCESS)
        except BaseException as error:  # reported below: an assert in a thread would be lost
            errors.append(error)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []
    assert circuit.state == CLOSED
    assert circuit.window_counts() == (threads * calls, threads * calls // 10, 0)
