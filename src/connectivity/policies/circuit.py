"""The circuit: one breaker state machine (see :mod:`connectivity.policies.breaker` for its configuration).

Theory of operation: a :class:`CircuitBreaker` is frozen configuration plus the :class:`Circuit` objects it hands
out, one per scope key (the whole client, one host, one endpoint). A circuit is an explicit state machine:

=============  ==========================================  ===============================================
state          on admit                                    on a recorded outcome
=============  ==========================================  ===============================================
``closed``     admit                                       count it; a trip condition holds → ``open``
``open``       reject, until ``open_for`` has passed;      (late outcomes of older calls are ignored)
               then → ``half-open`` and admit as a probe
``half-open``  admit while fewer than ``half_open_permits``  probe failure or slow call → ``open`` (longer);
               probes are in flight; reject the rest       ``half_open_successes`` successes → ``closed``
``isolated``   reject (by hand: :meth:`Circuit.isolate`)   ignored; :meth:`Circuit.reset` → ``closed``
=============  ==========================================  ===============================================

Every transition is a row of :data:`TRANSITIONS`; anything else raises, so a bug cannot invent a state change.

Trip conditions (any may be set; each is checked when a failure or a slow call is recorded, never on a
success): ``consecutive_failures`` failures in a row (pybreaker, Envoy's consecutive-5xx); a failure ratio at or
above ``failure_ratio`` over the sliding window once it holds ``minimum_calls`` outcomes (Polly, Resilience4j);
a slow-call ratio at or above ``slow_call_ratio`` (calls slower than ``slow_call_threshold``, Resilience4j).

The window is either the last ``window`` outcomes (``window_type="count"``) or the last ``window`` seconds
(``"time"``), kept as :data:`BUCKETS` buckets of ``window / BUCKETS`` seconds each: an outcome counts until the
bucket it fell in is more than ``BUCKETS - 1`` buckets old (exact at bucket granularity, as Resilience4j's
one-second aggregation is).

Admission hands out a *ticket* (an int: the circuit's epoch, shifted, plus a probe bit); an outcome is counted
only if the circuit is still in the epoch that admitted it, so a slow call admitted before the circuit opened
cannot close or reopen it later. The closed-state path of :meth:`Circuit.admit` takes no lock.

Cancellation is never a failure: record it as :data:`CANCELLED` (a probe's permit is returned, nothing counts).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from connectivity.policies.breaker import CircuitBreaker

__all__ = [
    "BUCKETS",
    "CANCELLED",
    "CLOSED",
    "FAILURE",
    "HALF_OPEN",
    "IGNORED",
    "ISOLATED",
    "OPEN",
    "SLOW_SUCCESS",
    "SUCCESS",
    "TRANSITIONS",
    "Circuit",
    "Listener",
    "Rejection",
    "Transition",
]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
ISOLATED = "isolated"

TRANSITIONS = frozenset(
    {
        (CLOSED, OPEN),  # a trip condition held
        (OPEN, HALF_OPEN),  # open_for passed: probe
        (HALF_OPEN, OPEN),  # a probe failed or was slow
        (HALF_OPEN, CLOSED),  # enough probes succeeded
        (CLOSED, ISOLATED),  # isolate()
        (OPEN, ISOLATED),
        (HALF_OPEN, ISOLATED),
        (ISOLATED, CLOSED),  # reset()
        (OPEN, CLOSED),  # reset() (from half-open: the row above)
    }
)
"""Every allowed ``(from, to)`` state change."""

# Outcomes of a call, as the adapters classify them.
SUCCESS = 0
FAILURE = 1
SLOW_SUCCESS = 2
"""A success slower than ``slow_call_threshold``: counts as a success and as slow."""
IGNORED = 3
"""Neither success nor failure (a 4xx, a 429 unless configured): not counted; a probe's permit is returned."""
CANCELLED = 4
"""The caller gave up (cancellation): never a failure; a probe's permit is returned."""

BUCKETS = 10
"""Buckets of a time-based window."""

Listener = Callable[["Transition"], None]

_log = logging.getLogger("connectivity.breaker")
_PROBE = 1


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of one circuit (given to listeners and returned by ``admit``/``record``).

    Attributes:
        circuit: The circuit's name (breaker name, plus ``/key`` for a scoped circuit).
        from_state: The state left.
        to_state: The state entered.
        reason: Why (``"failure ratio 0.55 >= 0.5 over 20 calls"``, ``"open for 5 s elapsed"``, ...).
        open_for: Seconds the circuit stays open (when ``to_state`` is open).
    """

    circuit: str
    from_state: str
    to_state: str
    reason: str
    open_for: float | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a call was not admitted.

    Attributes:
        circuit: The circuit's name.
        state: ``open``, ``half-open`` (every probe permit is taken) or ``isolated``.
        retry_after: Seconds until a probe may be admitted (``None`` when isolated).
    """

    circuit: str
    state: str
    retry_after: float | None


def _value(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` (how many times it was advanced), without advancing it."""
    return int(repr(counter)[6:-1])


def _call_listener(listener: Listener, transition: Transition) -> None:
    try:
        listener(transition)
    except Exception:  # a listener can never break a call
        _log.exception("circuit breaker listener %r failed", listener)


class Circuit:
    """One breaker state machine (see the module docstring). Thread-safe; shared by threads and tasks.

    Adapters call :meth:`admit` before a call and :meth:`record` with its outcome after; both return the
    :class:`Transition` they caused, if any, or a :class:`Rejection`.
    """

    remote: ClassVar[bool] = False
    """Decisions are this process's own (a shared circuit, e.g. in Redis, says ``True`` and is awaited)."""

    __slots__ = (
        "_bucket",
        "_bucket_end",
        "_changed",
        "_consecutive",
        "_counts",
        "_epoch",
        "_fast",
        "_lock",
        "_mark",
        "_now",
        "_opened",
        "_outcomes",
        "_plain",
        "_probe_successes",
        "_probes",
        "_rejected",
        "_retry_at",
        "_timed",
        "_totals",
        "_width",
        "breaker",
        "name",
        "state",
    )

    def __init__(self, breaker: CircuitBreaker, name: str) -> None:
        self.breaker = breaker
        self.name = name
        self.state = CLOSED
        self._lock = threading.Lock()
        self._epoch = 0
        self._retry_at = 0.0  # when open: the time probes may start
        self._opened = 0  # consecutive openings without closing (for open_for growth)
        self._probes = 0  # probes in flight (half-open)
        self._probe_successes = 0
        self._consecutive = 0
        self._rejected = 0
        # Time window: per bucket [other calls, failures, slow, plain successes] and their running totals. Plain
        # successes (the common case) are counted without the lock, by an atomic counter; the bucket they fall in
        # is settled when the window rotates (a success racing a bucket boundary may land in the next bucket).
        # Count window: a deque of outcome codes, under the lock.
        self._timed = breaker.window_type == "time"
        self._width = breaker.window / BUCKETS
        self._now = breaker.clock.now
        self._bucket = 0
        self._bucket_end = self._width  # when bucket 0 ends: until then no success needs to look at buckets
        self._counts = [[0, 0, 0, 0] for _ in range(BUCKETS)]
        self._totals = [0, 0, 0, 0]
        self._plain = itertools.count()
        self._mark = 0  # the plain-success count when the current bucket began
        self._outcomes: deque[int] = deque()
        # The ticket whose successes may be counted without the lock: a closed circuit's, with a time window.
        self._fast = 0 if self._timed else -2
        self._changed: Transition | None = None  # set under the lock, announced once it is released

    # -- admission --------------------------------------------------------------------------------------------

    def admit(self) -> int | Rejection:
        """A ticket (pass it to :meth:`record`) or, when the call must not be made, a :class:`Rejection`.

        In shadow mode a call that would be rejected is admitted with a ticket of ``-1``, whose outcome is not
        counted; :attr:`rejected` counts it all the same.
        """
        if self.state is CLOSED:
            return self._epoch << 1  # no lock: reading two attributes is atomic enough for a closed circuit
        with self._lock:
            ticket = self._admit_locked()
            changed, self._changed = self._changed, None
        if changed is not None:
            self._notify(changed)
        if isinstance(ticket, Rejection) and self.breaker.shadow:
            return -1
        return ticket

    def _admit_locked(self) -> int | Rejection:
        state = self.state
        if state is CLOSED:
            return self._epoch << 1
        if state is OPEN:
            left = self._retry_at - self.breaker.clock.now()
            if left > 0:
                self._rejected += 1
                return Rejection(self.name, OPEN, left)
            self._transition(HALF_OPEN, "open time elapsed")
            state = HALF_OPEN
        if state is HALF_OPEN:
            if self._probes < self.breaker.half_open_permits:
                self._probes += 1
                return self._epoch << 1 | _PROBE
            self._rejected += 1
            return Rejection(self.name, HALF_OPEN, 0.0)
        self._rejected += 1
        return Rejection(self.name, ISOLATED, None)

    # -- outcomes ---------------------------------------------------------------------------------------------

    def record(self, ticket: int, outcome: int) -> None:
        """Count the outcome of an admitted call (``outcome`` is :data:`SUCCESS`, :data:`FAILURE`, ...)."""
        if ticket == self._fast and outcome == SUCCESS:
            # The common case, without the lock: a success cannot trip anything.
            now = self._now()
            if now >= self._bucket_end:
                with self._lock:
                    index = int(now // self._width)
                    if index != self._bucket:
                        self._rotate(index)
            next(self._plain)
            if self._consecutive:
                self._consecutive = 0
            return
        if ticket < 0:
            return
        with self._lock:
            if ticket >> 1 != self._epoch:
                return  # admitted before the last state change: it says nothing about the current state
            if ticket & _PROBE:
                self._record_probe(outcome)
            elif self.state is CLOSED:
                self._record_closed(outcome)
            changed, self._changed = self._changed, None
        if changed is not None:
            self._notify(changed)

    def _record_probe(self, outcome: int) -> None:
        self._probes -= 1
        if outcome == SUCCESS:
            self._probe_successes += 1
            required = self.breaker.half_open_successes or 1
            if self._probe_successes >= required:
                self._transition(CLOSED, f"{self._probe_successes} probe(s) succeeded")
        elif outcome in (FAILURE, SLOW_SUCCESS):
            self._transition(OPEN, "probe failed" if outcome == FAILURE else "probe was slow")

    def _record_closed(self, outcome: int) -> None:
        if outcome >= IGNORED:
            return
        breaker = self.breaker
        failed = outcome == FAILURE
        slow = outcome == SLOW_SUCCESS
        totals = self._totals
        if self._timed:
            index = int(self._now() // self._width)
            if index != self._bucket:
                self._rotate(index)
            if outcome == SUCCESS:
                next(self._plain)
                self._consecutive = 0
                return
            counts = self._counts[index % BUCKETS]
            counts[0] += 1
            counts[1] += failed
            counts[2] += slow
        else:
            outcomes = self._outcomes
            if len(outcomes) == breaker.window:
                evicted = outcomes.popleft()
                totals[0] -= 1
                totals[1] -= evicted == FAILURE
                totals[2] -= evicted == SLOW_SUCCESS
            outcomes.append(outcome)
        totals[0] += 1
        totals[1] += failed
        totals[2] += slow
        if failed:
            self._consecutive += 1
        else:
            self._consecutive = 0
            if not slow:
                return  # a plain success can trip nothing
        reason = self._trip_reason()
        if reason is not None:
            self._transition(OPEN, reason)

    def _rotate(self, index: float) -> None:
        index = int(index)
        totals = self._totals
        plain = _value(self._plain)
        if index - self._bucket >= BUCKETS or index < self._bucket:
            for counts in self._counts:
                counts[:] = [0, 0, 0, 0]
            totals[:] = [0, 0, 0, 0]
        else:
            # Settle the plain successes of the bucket that is ending, then forget the buckets that expire.
            ending = plain - self._mark
            self._counts[self._bucket % BUCKETS][3] += ending
            totals[3] += ending
            for expired in range(self._bucket + 1, index + 1):
                counts = self._counts[expired % BUCKETS]
                for field_index in range(4):
                    totals[field_index] -= counts[field_index]
                counts[:] = [0, 0, 0, 0]
        self._mark = plain
        self._bucket = index
        self._bucket_end = (index + 1) * self._width

    def _window(self) -> tuple[int, int, int]:
        """``(calls, failures, slow)`` in the window as it stands (time window: rotated by the caller)."""
        totals = self._totals
        if self._timed:
            return totals[0] + totals[3] + _value(self._plain) - self._mark, totals[1], totals[2]
        return totals[0], totals[1], totals[2]

    def _trip_reason(self) -> str | None:
        breaker = self.breaker
        if breaker.consecutive_failures is not None and self._consecutive >= breaker.consecutive_failures:
            return f"{self._consecutive} consecutive failures"
        calls, failures, slow = self._window()
        if calls < breaker.minimum_calls:
            return None
        # Divide, do not multiply: 0.28 * 25 is 7.000000000000001, and 7 failures in 25 calls must trip 0.28.
        if breaker.failure_ratio is not None and failures / calls >= breaker.failure_ratio:
            return f"failure ratio {failures / calls:.2f} >= {breaker.failure_ratio:g} over {calls} calls"
        if breaker.slow_call_ratio is not None and slow / calls >= breaker.slow_call_ratio:
            return f"slow-call ratio {slow / calls:.2f} >= {breaker.slow_call_ratio:g} over {calls} calls"
        return None

    # -- transitions ------------------------------------------------------------------------------------------

    def _open_for(self) -> float:
        breaker = self.breaker
        seconds = breaker.open_for
        if breaker.open_for_max is not None and self._opened > 1:
            # The exponent is capped: a day-long outage reopens thousands of times, and 2.0 ** 1024 overflows.
            seconds = min(breaker.open_for * 2.0 ** min(self._opened - 1, 60), breaker.open_for_max)
        if breaker.jitter:
            seconds *= 1.0 + breaker.jitter * (2.0 * random.random() - 1.0)
        return seconds

    def _transition(self, to_state: str, reason: str) -> None:
        from_state = self.state
        if (from_state, to_state) not in TRANSITIONS:
            raise RuntimeError(f"circuit {self.name}: no transition {from_state} -> {to_state} ({reason})")
        self.state = to_state
        self._epoch += 1
        self._fast = self._epoch << 1 if to_state is CLOSED and self._timed else -2
        self._probes = 0
        self._probe_successes = 0
        open_for = None
        if to_state is OPEN:
            self._opened += 1
            open_for = self._open_for()
            self._retry_at = self.breaker.clock.now() + open_for
        elif to_state is CLOSED:
            self._opened = 0
            self._consecutive = 0
            self._clear_window()
        # Listeners run once the lock is released (one of them may well look at this circuit).
        self._changed = Transition(self.name, from_state, to_state, reason, open_for)

    def _notify(self, transition: Transition) -> None:
        for listener in self.breaker._registry.listeners:
            _call_listener(listener, transition)

    def _clear_window(self) -> None:
        for counts in self._counts:
            counts[:] = [0, 0, 0, 0]
        self._totals[:] = [0, 0, 0, 0]
        self._mark = _value(self._plain)
        self._outcomes.clear()

    def isolate(self) -> None:
        """Reject every call until :meth:`reset`."""
        with self._lock:
            if self.state is not ISOLATED:
                self._transition(ISOLATED, "isolated by hand")
            changed, self._changed = self._changed, None
        if changed is not None:
            self._notify(changed)

    def reset(self) -> None:
        """Close the circuit and forget its window."""
        with self._lock:
            if self.state is not CLOSED:
                self._transition(CLOSED, "reset by hand")
            else:
                self._consecutive = 0
                self._clear_window()
            changed, self._changed = self._changed, None
        if changed is not None:
            self._notify(changed)

    # -- inspection -------------------------------------------------------------------------------------------

    @property
    def rejected(self) -> int:
        """Calls rejected so far (in shadow mode: calls that would have been)."""
        return self._rejected

    def window_counts(self) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` currently in the window (time windows are rotated to now)."""
        with self._lock:
            if self._timed:
                index = int(self._now() // self._width)
                if index != self._bucket:
                    self._rotate(index)
            return self._window()

    def status(self) -> Mapping[str, object]:
        """A JSON-ready snapshot for the status app."""
        calls, failures, slow = self.window_counts()
        with self._lock:
            state = self.state
            retry_after = max(self._retry_at - self.breaker.clock.now(), 0.0) if state is OPEN else None
            return {
                "state": state,
                "calls": calls,
                "failures": failures,
                "slow": slow,
                "consecutive_failures": self._consecutive,
                "probes_in_flight": self._probes,
                "rejected": self._rejected,
                "retry_after_s": None if retry_after is None else round(retry_after, 3),
            }
