"""Retry budgets (Finagle / Linkerd semantics).

Theory of operation: a budget caps retries as a fraction of recent traffic instead of per request, so that a
struggling upstream sees at most ``(1 + ratio)`` times its normal load from us, never ``attempts`` times. Every
logical request *deposits* one unit; every retry (and every hedge) must *withdraw* one. Over the last ``ttl``
seconds, retries may add at most ``ratio * requests + min_per_second * ttl``; the floor lets a quiet client
still retry now and then.

Counts are kept in ``_SLOTS`` time slots covering ``ttl``; a slot older than ``ttl`` is forgotten as time moves,
so a burst of failures an hour ago does not starve retries now. One budget can be shared by many clients, threads
and tasks: a deposit is one lock-free count (it takes the lock only when time has moved to the next slot), and
every other update takes a lock held for a few integer operations.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, field

from connectivity.policies._validate import finite_non_negative, finite_positive, ratio
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["RetryBudget"]

_SLOTS = 10


@dataclass(frozen=True, slots=True, eq=False)
class RetryBudget:
    """A shared allowance of retries.

    Args:
        ratio: Retries may add at most this fraction of recent requests (0.2: +20 %).
        min_per_second: A floor of retries per second that is always allowed.
        ttl: How long a request counts as recent, seconds.
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).

    .. versionadded:: 0.1
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)
    _state: _BudgetState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ratio("RetryBudget.ratio", self.ratio)
        finite_non_negative("RetryBudget.min_per_second", self.min_per_second)
        finite_positive("RetryBudget.ttl", self.ttl)
        object.__setattr__(self, "_state", _BudgetState(self.ttl / _SLOTS))

    def deposit(self) -> None:
        """Record one logical request (call once per request, not per attempt)."""
        state = self._state
        if self.clock.now() >= state.next_slot_at:
            with state.lock:
                state.rotate(self.clock.now())
        state.count()

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent."""
        state = self._state
        with state.lock:
            state.rotate(self.clock.now())
            allowed = self.ratio * state.request_total() + self.min_per_second * self.ttl
            if state.retry_total + 1 > allowed + 1e-9:
                return False
            state.retries[state.index % _SLOTS] += 1
            state.retry_total += 1
            return True

    def balance(self) -> float:
        """How many retries the budget would allow right now."""
        state = self._state
        with state.lock:
            state.rotate(self.clock.now())
            allowed = self.ratio * state.request_total() + self.min_per_second * self.ttl
            return max(0.0, allowed - state.retry_total)


class _BudgetState:
    """The mutable counters behind a frozen RetryBudget (one per budget).

    Deposits, one per request, take no lock: each is one step of an :func:`itertools.count`, which the GIL makes
    atomic (CPython's :mod:`threading` counts its thread names the same way). A slot does not count its requests;
    it remembers how many had been counted when it began (``marks``), so the window holds what was counted since
    its oldest slot began. Everything else (moving to a new slot, retries, reading the counter) happens under
    ``lock``, and only a deposit that finds its slot over moves to the next.
    """

    __slots__ = ("count", "index", "lock", "marks", "next_slot_at", "reads", "retries", "retry_total", "width")

    def __init__(self, width: float) -> None:
        self.lock = threading.Lock()
        self.width = width
        self.index = -(_SLOTS + 1)  # far in the past: the first rotate starts from zero
        self.next_slot_at = -math.inf  # when the current slot is over: the first deposit moves to its slot
        self.count = itertools.count().__next__
        self.reads = 0  # steps of the counter taken to read it, not by requests
        self.marks = [0] * _SLOTS  # for slot i: requests counted before it began (at index i % _SLOTS)
        self.retries = [0] * _SLOTS
        self.retry_total = 0

    def counted(self) -> int:
        """Requests counted so far (with ``lock`` held); reading the counter steps it, and that is no request."""
        value = self.count() - self.reads
        self.reads += 1
        return value

    def request_total(self) -> int:
        """Requests in the window (with ``lock`` held): counted since its oldest slot began."""
        return self.counted() - self.marks[(self.index + 1) % _SLOTS]

    def rotate(self, now: float) -> None:
        """Move the window to the slot of ``now`` (with ``lock`` held)."""
        index = int(now // self.width)
        if index != self.index:
            self.rotate_to(index)

    def rotate_to(self, index: int) -> None:
        counted = self.counted()
        if index - self.index >= _SLOTS or index < self.index:
            self.marks = [counted] * _SLOTS
            self.retries = [0] * _SLOTS
            self.retry_total = 0
        else:
            for began in range(self.index + 1, index + 1):
                slot = began % _SLOTS
                self.marks[slot] = counted
                self.retry_total -= self.retries[slot]
                self.retries[slot] = 0
        self.index = index
        self.next_slot_at = (index + 1) * self.width
