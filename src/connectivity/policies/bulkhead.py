"""Bulkheads: a fixed cap on concurrent calls, with an optional bounded FIFO queue.

Theory of operation: a :class:`Bulkhead` is frozen configuration plus one hidden state object (a lock, two
counters and a FIFO of :class:`Ticket` objects), so one bulkhead can be shared by many clients, threads and
tasks. Adapters drive it with a few calls, each a handful of integer operations under the lock:

=============================  ===============================================================================
call                           what the bulkhead does
=============================  ===============================================================================
:meth:`~Bulkhead.try_acquire`  a slot is free: take it (``True``); otherwise ``False`` and nothing changes
:meth:`~Bulkhead.enqueue`      a slot is free (it was released meanwhile): a ticket already ``granted``; room
                               in the queue: a waiting ticket, last in line; no room: ``None``, and a
                               ``"full"`` rejection is counted
:meth:`~Bulkhead.release`      the slot passes straight to the first waiting ticket (returned, so the adapter
                               can wake its waiter); with nobody waiting it becomes free
:meth:`~Bulkhead.dequeue`      a waiter gives up (queue timeout or cancellation): its ticket leaves the queue
                               (``True``); ``False`` when a release granted it a slot first, which the caller
                               now owns (use it, or give it back with :meth:`~Bulkhead.release`)
=============================  ===============================================================================

Slots are handed over, never left free while someone waits, so the queue is served strictly in arrival order and
a newcomer cannot overtake a waiter. Invariant: ``queued > 0`` implies ``in_flight == max_concurrent``.

The bulkhead never waits itself and never reads a clock: the adapters wait (a cancellable sleep on their clock,
a threading event) and bound the wait by ``queue_timeout``; the policy only decides. In ``shadow`` mode every
call is admitted at once and never queued; a call that would have found neither a slot nor room in the queue is
counted as a rejection, so a configuration can be tried on live traffic first.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_positive

__all__ = ["FULL", "QUEUE_TIMEOUT", "Bulkhead", "Ticket"]

FULL = "full"
"""Rejection reason: no free slot and no room in the queue."""
QUEUE_TIMEOUT = "queue timeout"
"""Rejection reason: waited ``queue_timeout`` seconds in the queue without getting a slot."""


class _WeakReferenceable:
    """A slotted base that lets frozen, slotted policies be held weakly (the status registry does)."""

    __slots__ = ("__weakref__",)


def _check_name(field_name: str, value: object) -> str:
    """A non-empty string (names appear in errors, events and the status app)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, value, "must be a non-empty string")
    return value


def _check_flag(field_name: str, value: object) -> bool:
    """``True`` or ``False``, nothing truthy."""
    if not isinstance(value, bool):
        raise ConfigError(field_name, value, "must be True or False")
    return value


class Ticket:
    """One caller's place in a bulkhead's queue.

    Attributes:
        granted: A slot was handed to this ticket: its holder owns a slot and must release it.
        waiter: Whatever the adapter needs to wake the waiting caller (an event); the bulkhead never touches it.

    .. versionadded:: 0.1
    """

    __slots__ = ("granted", "waiter")

    def __init__(self, waiter: Any = None, *, granted: bool = False) -> None:
        self.waiter = waiter
        self.granted = granted

    def __repr__(self) -> str:
        return f"Ticket(granted={self.granted})"


@dataclass(frozen=True, slots=True, eq=False)
class Bulkhead(_WeakReferenceable):
    """A cap on concurrent calls, shared by every client, thread and task that uses it.

    Args:
        max_concurrent: Calls allowed in flight at once.
        max_queued: Calls allowed to wait for a slot when all are taken (0: no queue, reject at once). Waiters
            are served first come, first served.
        queue_timeout: Seconds a queued call waits for a slot before it is rejected (``"queue timeout"``).
        name: Names the bulkhead in errors, events and the status app.
        shadow: Decide and count rejections, but admit every call at once: try a limit on live traffic first.

    Raises:
        ConfigError: A size is not an integer of the right range, ``queue_timeout`` is not a finite number
            greater than 0, ``name`` is empty, or ``shadow`` is not a bool.

    Example::

        bulkhead = Bulkhead(max_concurrent=64, max_queued=128, queue_timeout=0.5, name="orders")
        transport = BulkheadTransport(httpx.AsyncHTTPTransport(), bulkhead)

    .. versionadded:: 0.1
    """

    max_concurrent: int = 64
    max_queued: int = 0
    queue_timeout: float = 1.0
    name: str = "bulkhead"
    shadow: bool = False
    _state: _BulkheadState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        at_least_int("Bulkhead.max_concurrent", self.max_concurrent, 1)
        at_least_int("Bulkhead.max_queued", self.max_queued, 0)
        finite_positive("Bulkhead.queue_timeout", self.queue_timeout)
        _check_name("Bulkhead.name", self.name)
        _check_flag("Bulkhead.shadow", self.shadow)
        object.__setattr__(self, "_state", _BulkheadState())

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now (in shadow mode this may exceed ``max_concurrent``)."""
        return self._state.in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return self._state.queued

    @property
    def rejected(self) -> int:
        """Calls rejected so far, for any reason (in shadow mode: calls that would have been)."""
        state = self._state
        with state.lock:
            return state.rejected_full + state.rejected_timeout

    def try_acquire(self) -> bool:
        """Take a slot if one is free now; ``False`` (and nothing taken, nothing counted) otherwise.

        In shadow mode this always takes a slot, counting a rejection when the call would have found neither a
        slot nor room in the queue.
        """
        state = self._state
        with state.lock:
            if state.in_flight < self.max_concurrent:
                state.in_flight += 1
                state.admitted += 1
                return True
            if not self.shadow:
                return False
            if state.in_flight >= self.max_concurrent + self.max_queued:
                state.rejected_full += 1
            state.in_flight += 1
            state.admitted += 1
            return True

    def enqueue(self, waiter: Any = None) -> Ticket | None:
        """Join the queue after :meth:`try_acquire` failed.

        Args:
            waiter: Stored on the ticket for the adapter (what :meth:`release` hands back to be woken).

        Returns:
            A ticket: already ``granted`` if a slot was freed since :meth:`try_acquire` (the caller holds it),
            else waiting in line. ``None`` when the queue is full: the call is rejected (counted as ``"full"``).
        """
        state = self._state
        with state.lock:
            if state.in_flight < self.max_concurrent or self.shadow:
                state.in_flight += 1
                state.admitted += 1
                return Ticket(waiter, granted=True)
            if state.queued >= self.max_queued:
                state.rejected_full += 1
                return None
            ticket = Ticket(waiter)
            state.queue.append(ticket)
            state.queued += 1
            return ticket

    def dequeue(self, ticket: Ticket, *, timed_out: bool = False) -> bool:
        """Give up waiting.

        Args:
            ticket: The caller's ticket from :meth:`enqueue`.
            timed_out: The caller waited ``queue_timeout``: count a ``"queue timeout"`` rejection. A cancelled
                caller passes ``False``: cancellation is never a rejection.

        Returns:
            ``True`` if the ticket left the queue; ``False`` if it had been granted a slot first (the caller owns
            that slot: use it, or :meth:`release` it).
        """
        state = self._state
        with state.lock:
            if ticket.granted:
                return False
            try:
                state.queue.remove(ticket)
            except ValueError:
                return True  # dequeued already: idempotent
            state.queued -= 1
            if timed_out:
                state.rejected_timeout += 1
            return True

    def release(self) -> Ticket | None:
        """Give a slot back.

        Returns:
            The ticket the slot was handed to (wake its waiter), or ``None`` when nobody was waiting.
        """
        state = self._state
        with state.lock:
            if state.queue:
                ticket = state.queue.popleft()
                state.queued -= 1
                state.admitted += 1
                ticket.granted = True
                return ticket  # in_flight unchanged: the slot changed hands
            if state.in_flight > 0:
                state.in_flight -= 1
            return None

    def status(self) -> dict[str, object]:
        """What the status app shows: the configuration, the occupancy now, and rejection counts so far."""
        state = self._state
        with state.lock:
            return {
                "name": self.name,
                "kind": "bulkhead",
                "shadow": self.shadow,
                "limit": self.max_concurrent,
                "max_queued": self.max_queued,
                "queue_timeout_s": self.queue_timeout,
                "in_flight": state.in_flight,
                "queued": state.queued,
                "admitted": state.admitted,
                "rejected": state.rejected_full + state.rejected_timeout,
                "rejected_full": state.rejected_full,
                "rejected_queue_timeout": state.rejected_timeout,
            }


class _BulkheadState:
    """The mutable counters behind a frozen Bulkhead (one per bulkhead, guarded by ``lock``)."""

    __slots__ = ("admitted", "in_flight", "lock", "queue", "queued", "rejected_full", "rejected_timeout")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.queued = 0
        self.queue: deque[Ticket] = deque()
        self.admitted = 0
        self.rejected_full = 0
        self.rejected_timeout = 0
