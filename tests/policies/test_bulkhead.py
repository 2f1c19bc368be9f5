"""Bulkhead: slots, the FIFO queue and its hand-over, shadow mode, status, validation, thread safety."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import weakref

import pytest

from connectivity.errors import ConfigError
from connectivity.policies.bulkhead import FULL, QUEUE_TIMEOUT, Bulkhead


def test_slots_up_to_the_limit_then_try_acquire_fails_without_counting_a_rejection() -> None:
    bulkhead = Bulkhead(max_concurrent=3)
    assert [bulkhead.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bulkhead.in_flight == 3
    assert bulkhead.rejected == 0  # the caller may still queue: only enqueue() decides a rejection


def test_without_a_queue_enqueue_rejects_as_full() -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    assert bulkhead.try_acquire()
    assert bulkhead.enqueue() is None
    assert bulkhead.status()["rejected_full"] == 1
    assert bulkhead.queued == 0


def test_queue_holds_max_queued_waiters_then_rejects() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=2)
    assert bulkhead.try_acquire()
    first, second = bulkhead.enqueue("a"), bulkhead.enqueue("b")
    assert first is not None
    assert second is not None
    assert not first.granted
    assert not second.granted
    assert bulkhead.queued == 2
    assert bulkhead.enqueue("c") is None
    assert bulkhead.rejected == 1


def test_release_hands_the_slot_to_waiters_in_arrival_order() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=3)
    assert bulkhead.try_acquire()
    tickets = [bulkhead.enqueue(name) for name in ("a", "b", "c")]
    handed = []
    for _ in range(3):
        ticket = bulkhead.release()
        assert ticket is not None
        assert ticket.granted
        handed.append(ticket.waiter)
        assert bulkhead.in_flight == 1  # the slot changed hands, it was never free
    assert handed == ["a", "b", "c"]
    assert all(ticket is not None and ticket.granted for ticket in tickets)
    assert bulkhead.release() is None
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


def test_a_newcomer_cannot_overtake_a_waiter() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1)
    assert bulkhead.try_acquire()
    waiting = bulkhead.enqueue("waiter")
    assert waiting is not None
    assert bulkhead.release() is waiting  # the slot goes to the waiter ...
    assert not bulkhead.try_acquire()  # ... not to whoever asks next


def test_enqueue_grants_at_once_when_a_slot_was_freed_since_try_acquire() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1)
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    bulkhead.release()  # another caller finished in between
    ticket = bulkhead.enqueue()
    assert ticket is not None
    assert ticket.granted
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)


def test_a_timed_out_waiter_leaves_the_queue_and_counts_a_queue_timeout() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1)
    assert bulkhead.try_acquire()
    ticket = bulkhead.enqueue()
    assert ticket is not None
    assert bulkhead.dequeue(ticket, timed_out=True)
    status = bulkhead.status()
    assert (status["queued"], status["rejected_queue_timeout"], status["rejected"]) == (0, 1, 1)
    assert bulkhead.release() is None  # nobody left to hand the slot to
    assert bulkhead.in_flight == 0


def test_a_cancelled_waiter_frees_its_queue_place_and_counts_nothing() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1)
    assert bulkhead.try_acquire()
    ticket = bulkhead.enqueue()
    assert ticket is not None
    assert bulkhead.dequeue(ticket)
    assert bulkhead.rejected == 0
    assert bulkhead.enqueue() is not None  # the place is free again


def test_dequeue_after_a_grant_reports_that_the_caller_owns_a_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1)
    assert bulkhead.try_acquire()
    ticket = bulkhead.enqueue()
    assert ticket is not None
    bulkhead.release()  # granted, but its waiter has not run yet
    assert not bulkhead.dequeue(ticket, timed_out=True)
    assert bulkhead.rejected == 0
    assert bulkhead.in_flight == 1
    bulkhead.release()  # the caller gives the granted slot back
    assert bulkhead.in_flight == 0


def test_shadow_mode_admits_everything_and_counts_what_it_would_have_rejected() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queued=1, shadow=True)
    assert all(bulkhead.try_acquire() for _ in range(5))
    assert bulkhead.in_flight == 5
    # calls 1-2 had slots, call 3 would have queued, calls 4-5 would have been rejected
    assert bulkhead.rejected == 2
    assert bulkhead.queued == 0
    for _ in range(5):
        assert bulkhead.release() is None
    assert bulkhead.in_flight == 0


def test_status_is_json_ready() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queued=4, queue_timeout=0.5, name="orders")
    bulkhead.try_acquire()
    status = bulkhead.status()
    assert json.loads(json.dumps(status)) == status
    assert status == {
        "name": "orders",
        "kind": "bulkhead",
        "shadow": False,
        "limit": 2,
        "max_queued": 4,
        "queue_timeout_s": 0.5,
        "in_flight": 1,
        "queued": 0,
        "admitted": 1,
        "rejected": 0,
        "rejected_full": 0,
        "rejected_queue_timeout": 0,
    }


def test_reasons_match_the_error_vocabulary() -> None:
    assert (FULL, QUEUE_TIMEOUT) == ("full", "queue timeout")


def test_frozen_and_weakly_referenceable() -> None:
    bulkhead = Bulkhead()
    with pytest.raises(dataclasses.FrozenInstanceError):
        bulkhead.max_concurrent = 5  # type: ignore[misc]
    assert weakref.ref(bulkhead)() is bulkhead  # the status registry holds it weakly


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent": 0}, "Bulkhead.max_concurrent"),
        ({"max_concurrent": -1}, "Bulkhead.max_concurrent"),
        ({"max_concurrent": 2.5}, "Bulkhead.max_concurrent"),
        ({"max_concurrent": True}, "Bulkhead.max_concurrent"),
        ({"max_concurrent": "8"}, "Bulkhead.max_concurrent"),
        ({"max_queued": -1}, "Bulkhead.max_queued"),
        ({"max_queued": 1.0}, "Bulkhead.max_queued"),
        ({"queue_timeout": 0}, "Bulkhead.queue_timeout"),
        ({"queue_timeout": -0.5}, "Bulkhead.queue_timeout"),
        ({"queue_timeout": math.nan}, "Bulkhead.queue_timeout"),
        ({"queue_timeout": math.inf}, "Bulkhead.queue_timeout"),
        ({"name": ""}, "Bulkhead.name"),
        ({"name": None}, "Bulkhead.name"),
        ({"shadow": "yes"}, "Bulkhead.shadow"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Bulkhead(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_shared_between_threads_the_limit_holds_and_nothing_leaks() -> None:
    bulkhead = Bulkhead(max_concurrent=4, max_queued=8)
    peak = 0
    peak_lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        nonlocal peak
        barrier.wait()
        for _ in range(2000):
            if bulkhead.try_acquire():
                with peak_lock:
                    peak = max(peak, bulkhead.in_flight)
                ticket = bulkhead.release()
                assert ticket is None  # nobody ever queues in this test

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= peak <= 4
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)
    assert bulkhead.status()["admitted"] > 0
