"""The wait line of :class:`~connectivity.transports.RateLimitTransport` (``mode="wait"``): callers of one key are
served first come, first served.

Theory of operation: a caller that cannot be admitted at once takes a :class:`Ticket` in its key's queue and waits
until its ticket is at the front and the limiter admits it (or its wait budget runs out). Leaving the queue
(served, refused or cancelled) hands the front to the next ticket and wakes its waiter: a thread through a
:class:`threading.Event`, a task by cancelling the cancel scope it sleeps in (from any thread, through its event
loop's token).
"""

from __future__ import annotations

import collections
import threading

from connectivity.transports._waiters import AsyncWaiter, SyncWaiter

__all__ = ["Queues", "Ticket"]


class Ticket:
    """A place in a key's queue. ``head`` is set (under the queues' lock) when it reaches the front."""

    __slots__ = ("cost", "head", "waiter")

    def __init__(self, waiter: SyncWaiter | AsyncWaiter, cost: float) -> None:
        self.waiter = waiter
        self.cost = cost
        self.head = False

    def at_front(self) -> bool:
        # A method, not the attribute: another thread or task sets ``head`` while this one waits.
        return self.head


class Queues:
    """Every key's line of tickets; thread-safe."""

    __slots__ = ("_costs", "_lock", "_queues")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Ticket]] = {}
        self._costs: dict[str, float] = {}  # the cost in each line, kept as tickets come and go (not summed)

    def waiting(self) -> int:
        """Tickets in every line."""
        with self._lock:
            return sum(len(queue) for queue in self._queues.values())

    def ahead(self, key: str) -> float:
        """The cost already queued for ``key``."""
        if not self._queues:
            return 0.0
        with self._lock:
            return self._costs.get(key, 0.0)

    def enqueue(self, key: str, ticket: Ticket) -> None:
        """Join ``key``'s line (at the front when it is empty)."""
        with self._lock:
            queue = self._queues.setdefault(key, collections.deque())
            ticket.head = not queue
            queue.append(ticket)
            self._costs[key] = self._costs.get(key, 0.0) + ticket.cost

    def dequeue(self, key: str, ticket: Ticket) -> None:
        """Leave the line (served, refused or cancelled); if ``ticket`` was the head, wake the next one."""
        successor: Ticket | None = None
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                return
            was_head = bool(queue) and queue[0] is ticket
            try:
                queue.remove(ticket)
            except ValueError:
                pass  # not in the line (already left it)
            else:
                self._costs[key] -= ticket.cost
            if not queue:
                del self._queues[key]
                self._costs.pop(key, None)
            elif was_head:
                successor = queue[0]
                successor.head = True
        if successor is not None:
            successor.waiter.wake()
