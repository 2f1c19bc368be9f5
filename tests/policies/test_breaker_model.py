"""The circuit breaker against a brute-force reference model, driven by hypothesis.

The model keeps every counted outcome since the circuit last closed as ``(time, outcome)`` and recomputes the
window, the streak and the ratios from that list on every question, with exact fractions for bucket arithmetic.
Times, windows and open times are multiples of 1/4 s, so float sums on the clock are exact and both sides see the
same instants, including exact bucket and open-time boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, rule

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
    CircuitBreaker,
    Rejection,
    Transition,
)
from connectivity.testing import FakeClock

# Repeats weight the draw towards failures (a circuit that never trips tests little); all five occur.
OUTCOMES = (FAILURE, SUCCESS, FAILURE, SLOW_SUCCESS, FAILURE, IGNORED, SUCCESS, CANCELLED)
STEPS = (
    "zero",
    "tick",
    "bucket",
    "almost_window",
    "window",
    "open_for",
    "until_probe",
    "just_before_probe",
    "long",
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for :class:`CircuitBreaker` (no jitter: the model must know each open time)."""
    count = draw(st.booleans())
    conditions = draw(st.sets(st.sampled_from(("ratio", "consecutive", "slow")), min_size=1))
    open_for = draw(st.sampled_from((0.5, 1.0, 2.5, 5.0)))
    slow = "slow" in conditions
    return {
        "window_type": "count" if count else "time",
        "window": draw(st.integers(1, 8)) if count else draw(st.sampled_from((2.5, 5.0, 10.0, 30.0))),
        "minimum_calls": draw(st.integers(1, 6)),
        "failure_ratio": draw(st.sampled_from((0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 1.0)))
        if "ratio" in conditions
        else None,
        "consecutive_failures": draw(st.integers(1, 4)) if "consecutive" in conditions else None,
        "slow_call_threshold": 1.0 if slow else None,
        "slow_call_ratio": draw(st.sampled_from((None, 0.25, 0.5, 1.0))) if slow else None,
        "open_for": open_for,
        "open_for_max": draw(
            st.sampled_from((None, 1, 2, 4, 8)).map(lambda k: None if k is None else open_for * k)
        ),
        "half_open_permits": draw(st.integers(1, 3)),
        "half_open_successes": draw(st.one_of(st.none(), st.integers(1, 4))),
        "shadow": draw(st.booleans()),
    }


@dataclass
class Model:
    """The breaker's documented semantics, written as plainly as possible."""

    config: dict[str, Any]
    state: str = CLOSED
    epoch: int = 0  # bumped by every state change: tickets from an older epoch are ignored
    retry_at: float = 0.0
    openings: int = 0  # openings since the circuit last closed
    probes: int = 0
    probe_successes: int = 0
    rejected: int = 0
    period: list[tuple[float, int]] = field(default_factory=list)  # counted outcomes since the last close/reset
    transitions: list[tuple[str, str]] = field(default_factory=list)

    def window(self, now: float) -> list[int]:
        if self.config["window_type"] == "count":
            return [outcome for _, outcome in self.period[-self.config["window"] :]]
        width = Fraction(self.config["window"]) / BUCKETS
        current = math.floor(Fraction(now) / width)
        return [
            outcome for at, outcome in self.period if current - math.floor(Fraction(at) / width) <= BUCKETS - 1
        ]

    def counts(self, now: float) -> tuple[int, int, int]:
        window = self.window(now)
        return len(window), window.count(FAILURE), window.count(SLOW_SUCCESS)

    def streak(self) -> int:
        streak = 0
        for _, outcome in reversed(self.period):
            if outcome != FAILURE:
                break
            streak += 1
        return streak

    def should_trip(self, now: float) -> bool:
        config = self.config
        if config["consecutive_failures"] is not None and self.streak() >= config["consecutive_failures"]:
            return True
        calls, failures, slow = self.counts(now)
        minimum = config["minimum_calls"]
        if config["window_type"] == "count":
            minimum = min(minimum, config["window"])  # a window of N calls never holds more than N (Resilience4j)
        if calls < minimum:
            return False
        slow_ratio = config["slow_call_ratio"]
        if slow_ratio is None and config["slow_call_threshold"] is not None:
            slow_ratio = 1.0
        return (config["failure_ratio"] is not None and failures / calls >= config["failure_ratio"]) or (
            slow_ratio is not None and slow / calls >= slow_ratio
        )

    def open_for(self) -> float:
        base, cap = self.config["open_for"], self.config["open_for_max"]
        return base if cap is None else min(base * 2 ** (self.openings - 1), cap)

    def move(self, to_state: str, now: float) -> None:
        self.transitions.append((self.state, to_state))
        self.state = to_state
        self.epoch += 1
        self.probes = self.probe_successes = 0
        if to_state == OPEN:
            self.openings += 1
            self.retry_at = now + self.open_for()
        elif to_state == CLOSED:
            self.openings = 0
            self.period = []

    def admit(self, now: float) -> tuple[int, bool] | Rejection:
        if self.state == CLOSED:
            return self.epoch, False
        if self.state == OPEN:
            if now < self.retry_at:
                self.rejected += 1
                return Rejection("model", OPEN, self.retry_at - now)
            self.move(HALF_OPEN, now)
        if self.state == HALF_OPEN:
            if self.probes < self.config["half_open_permits"]:
                self.probes += 1
                return self.epoch, True
            self.rejected += 1
            return Rejection("model", HALF_OPEN, 0.0)
        self.rejected += 1
        return Rejection("model", ISOLATED, None)

    def record(self, ticket: tuple[int, bool] | None, outcome: int, now: float) -> None:
        if ticket is None or ticket[0] != self.epoch:
            return
        if ticket[1]:
            self.probes -= 1
            if outcome == SUCCESS:
                self.probe_successes += 1
                needed = self.config["half_open_successes"] or self.config["half_open_permits"]
                if self.probe_successes >= needed:
                    self.move(CLOSED, now)
            elif outcome in (FAILURE, SLOW_SUCCESS):
                self.move(OPEN, now)
            return
        assert self.state == CLOSED  # only a closed circuit hands out plain tickets
        if outcome in (IGNORED, CANCELLED):
            return
        self.period.append((now, outcome))
        if outcome in (FAILURE, SLOW_SUCCESS) and self.should_trip(now):
            self.move(OPEN, now)

    def isolate(self, now: float) -> None:
        if self.state != ISOLATED:
            self.move(ISOLATED, now)

    def reset(self, now: float) -> None:
        if self.state != CLOSED:
            self.move(CLOSED, now)
        else:
            self.period = []


Ticket = tuple[int, "tuple[int, bool] | None"]


class BreakerMachine(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    @initialize(config=configs(), start=st.sampled_from((0.0, 7.25)))
    def build(self, config: dict[str, Any], start: float) -> None:
        self.clock = FakeClock(start)
        self.breaker = CircuitBreaker(clock=self.clock, **config)
        self.seen: list[Transition] = []
        self.breaker.add_listener(self.seen.append)
        self.circuit = self.breaker.circuit()
        self.model = Model(config)

    def _advance(self, step: str) -> None:
        config, model, now = self.breaker, self.model, self.clock.now()
        bucket = config.window / BUCKETS if config.window_type == "time" else 1.0
        amounts = {
            "zero": 0.0,
            "tick": 0.25,
            "bucket": bucket,
            "almost_window": bucket * (BUCKETS - 1),  # with "bucket": an outcome's last and first instant out
            "window": bucket * BUCKETS,
            "open_for": config.open_for,
            "until_probe": max(model.retry_at - now, 0.0),
            "just_before_probe": max(model.retry_at - now - 0.25, 0.0),
            "long": 1000.0,
        }
        self.clock.advance(amounts[step])

    @rule(target=tickets)
    def admit(self) -> Any:
        real = self.circuit.admit()
        expected = self.model.admit(self.clock.now())
        if isinstance(expected, Rejection):
            if self.breaker.shadow:
                assert real == -1
                return (real, None)
            assert isinstance(real, Rejection), f"admitted {real!r}, the model rejects: {expected!r}"
            assert (real.state, real.retry_after) == (expected.state, expected.retry_after)
            return multiple()
        assert isinstance(real, int), f"rejected: {real!r}, the model admits"
        assert real >= 0
        return (real, expected)

    def _record(self, ticket: Ticket, outcome: int) -> None:
        real, expected = ticket
        self.circuit.record(real, outcome)
        self.model.record(expected, outcome, self.clock.now())

    @rule(ticket=consumes(tickets), outcome=st.sampled_from(OUTCOMES))
    def record(self, ticket: Ticket, outcome: int) -> None:
        self._record(ticket, outcome)

    @rule(outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=8))
    def calls(self, outcomes: list[int]) -> None:
        """A burst of calls at one instant, each admitted and recorded at once (rejections skipped)."""
        for outcome in outcomes:
            ticket = self.admit()
            if isinstance(ticket, tuple):
                self._record(ticket, outcome)

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: str) -> None:
        self._advance(step)

    @rule(buckets=st.integers(1, BUCKETS + 1))
    def advance_buckets(self, buckets: int) -> None:
        """Whole buckets of a time window (whole seconds for a count window): lands on bucket boundaries."""
        width = self.breaker.window / BUCKETS if self.breaker.window_type == "time" else 1.0
        self.clock.advance(buckets * width)

    # Invariants rotate the time window to "now"; advancing and recording in one step lets record() rotate it.
    @rule(step=st.sampled_from(STEPS), ticket=consumes(tickets), outcome=st.sampled_from(OUTCOMES))
    def advance_then_record(self, step: str, ticket: Ticket, outcome: int) -> None:
        self._advance(step)
        self._record(ticket, outcome)

    @rule(isolate=st.booleans())
    def by_hand(self, isolate: bool) -> None:
        """One rule for both, so that operators do not act as often as traffic."""
        if isolate:
            self.circuit.isolate()
            self.model.isolate(self.clock.now())
        else:
            self.circuit.reset()
            self.model.reset(self.clock.now())

    @invariant()
    def same_state(self) -> None:
        assert self.circuit.state == self.model.state

    @invariant()
    def every_transition_is_allowed_and_expected(self) -> None:
        observed = [(t.from_state, t.to_state) for t in self.seen]
        assert set(observed) <= TRANSITIONS
        assert observed == self.model.transitions

    @invariant()
    def probes_within_permits(self) -> None:
        probes = self.circuit.status()["probes_in_flight"]
        assert probes == self.model.probes
        assert 0 <= self.model.probes <= self.breaker.half_open_permits

    @invariant()
    def same_window(self) -> None:
        assert self.circuit.window_counts() == self.model.counts(self.clock.now())

    @invariant()
    def same_status(self) -> None:
        status = self.circuit.status()
        model = self.model
        assert status["rejected"] == self.circuit.rejected == model.rejected
        assert status["consecutive_failures"] == model.streak()
        expected = round(max(model.retry_at - self.clock.now(), 0.0), 3) if model.state == OPEN else None
        assert status["retry_after_s"] == expected


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
