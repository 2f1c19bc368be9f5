"""MirrorSlots: the in-flight bound of mirroring and its counters, without any I/O."""

from __future__ import annotations

import threading

import pytest

from connectivity.errors import ConfigError
from connectivity.routing import MirrorSlots, MirrorStats
from connectivity.routing.mirror import BODY, FULL, NOT_RUNNING, STARTED


def test_places_are_taken_refused_and_given_back() -> None:
    slots = MirrorSlots(2)
    assert slots.refusal(running=True) is None  # room: nothing counted yet
    assert slots.take(running=True) == STARTED
    assert slots.take(running=True) == STARTED
    assert slots.refusal(running=True) == FULL  # counted as dropped before the primary is even sent
    assert slots.take(running=True) == FULL
    assert slots.take(running=True, replayable=False) == BODY
    assert slots.take(running=False) == NOT_RUNNING
    assert slots.stats() == MirrorStats(
        started=2, completed=0, failed=0, dropped=2, skipped=1, not_running=1, in_flight=2
    )
    assert slots.done(failed=False) is False
    assert slots.done(failed=True) is True  # none in flight any more
    assert slots.take(running=True) == STARTED
    assert slots.give_back() == NOT_RUNNING
    assert slots.stats() == MirrorStats(2, 1, 1, 2, 1, 2, 0)
    slots.closed = True
    assert slots.refusal(running=True) == NOT_RUNNING


def test_wait_idle_wakes_when_the_last_mirror_finishes() -> None:
    slots = MirrorSlots(4)
    for _ in range(3):
        assert slots.take(running=True) == STARTED
    assert slots.wait_idle(0) is False
    workers = [threading.Thread(target=slots.done, kwargs={"failed": False}) for _ in range(3)]
    for worker in workers:
        worker.start()
    assert slots.wait_idle(5) is True
    for worker in workers:
        worker.join()
    assert slots.stats().completed == 3


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ConfigError) as caught:
        MirrorSlots(0)
    assert caught.value.field == "MirrorSlots.max_concurrent"
