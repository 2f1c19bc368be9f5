"""The rate limiter's wait line: first come, first served, and the cost already queued per key."""

from __future__ import annotations

from connectivity.transports._ratelimit_queue import Queues, Ticket
from connectivity.transports._waiters import SyncWaiter


def _ticket(cost: float) -> Ticket:
    return Ticket(SyncWaiter(), cost)


def test_the_cost_ahead_follows_tickets_joining_and_leaving_in_any_order() -> None:
    queues = Queues()
    first, second, third = _ticket(1.0), _ticket(2.5), _ticket(0.5)
    other = _ticket(4.0)
    assert queues.ahead("a") == 0.0
    for ticket in (first, second, third):
        queues.enqueue("a", ticket)
    queues.enqueue("b", other)
    assert (queues.ahead("a"), queues.ahead("b"), queues.waiting()) == (4.0, 4.0, 4)
    queues.dequeue("a", second)  # leaves from the middle (a cancelled caller)
    assert queues.ahead("a") == 1.5
    assert not third.at_front()
    queues.dequeue("a", first)  # the head is served: the next one moves up and is woken
    assert queues.ahead("a") == 0.5
    assert third.at_front()
    assert third.waiter.event.is_set()
    queues.dequeue("a", second)  # leaving twice changes nothing
    assert queues.ahead("a") == 0.5
    queues.dequeue("a", third)
    assert (queues.ahead("a"), queues.ahead("b"), queues.waiting()) == (0.0, 4.0, 1)
    queues.enqueue("a", first)  # an emptied line starts again from nothing
    assert queues.ahead("a") == 1.0
    assert first.at_front()
