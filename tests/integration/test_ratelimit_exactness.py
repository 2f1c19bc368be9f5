"""In-process exactness of RateLimiter under real concurrency.

200 tasks (asyncio, trio) or 32 threads hammer one key of ``100 per 10 s, burst 20`` for about 1.5 s of real time;
the admitted count must be within ``burst + rate * elapsed`` (GCRA's bound) and at least 95 % of it (nothing lost
to races).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from connectivity.policies.ratelimit import RateLimit, RateLimiter

LIMIT = RateLimit(100, per=10.0, burst=20)
RATE = LIMIT.rate / LIMIT.per  # 10 per second
RUN_S = 1.5
TASKS = 200
THREADS = 32
MAX_CALLS = 200_000  # per worker: the loops end on time, this only bounds them if the clock misbehaves


@dataclass
class Tally:
    """Admissions, and the span from the start of the first decision to the end of the last one."""

    admitted: int = 0
    decisions: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, admitted: int, decisions: int, first: float, last: float) -> None:
        with self.lock:
            self.admitted += admitted
            self.decisions += decisions
            self.first = min(self.first, first)
            self.last = max(self.last, last)

    def check(self) -> None:
        elapsed = self.last - self.first
        bound = LIMIT.burst + RATE * elapsed  # type: ignore[operator]
        assert self.decisions > 10 * self.admitted, "the limiter was not hammered: nothing was proved"
        assert self.admitted <= bound + 1e-9, (self.admitted, elapsed)
        assert self.admitted >= 0.95 * bound, (self.admitted, elapsed)


@pytest.mark.anyio
async def test_tasks_hammering_one_key_get_exactly_the_limit() -> None:
    limiter = RateLimiter(LIMIT)
    tally = Tally()
    deadline = time.monotonic() + RUN_S

    async def hammer() -> None:
        admitted = decisions = 0
        first = last = time.monotonic()
        while decisions < MAX_CALLS:
            started = time.monotonic()
            if started >= deadline:
                break
            if decisions == 0:
                first = started
            admitted += limiter.try_acquire("k").allowed
            decisions += 1
            last = time.monotonic()
            await anyio.lowlevel.checkpoint()  # let the 199 others in between any two decisions
        tally.add(admitted, decisions, first, last)

    async with anyio.create_task_group() as group:
        for _ in range(TASKS):
            group.start_soon(hammer)
    tally.check()
    assert limiter.allowed == tally.admitted


def test_threads_hammering_one_key_get_exactly_the_limit() -> None:
    limiter = RateLimiter(LIMIT)
    tally = Tally()
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            start.wait(timeout=30)
            deadline = time.monotonic() + RUN_S
            admitted = decisions = 0
            first = last = time.monotonic()
            while decisions < MAX_CALLS:
                started = time.monotonic()
                if started >= deadline:
                    break
                if decisions == 0:
                    first = started
                admitted += limiter.try_acquire("k").allowed
                decisions += 1
                last = time.monotonic()
            tally.add(admitted, decisions, first, last)
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    tally.check()
    assert limiter.allowed == tally.admitted


def test_many_keys_each_get_their_own_limit_under_threads() -> None:
    limiter = RateLimiter(RateLimit(5, per=60.0, burst=5))  # no refill within the test: exactly 5 per key
    keys = [f"tenant-{index}" for index in range(50)]
    counts = dict.fromkeys(keys, 0)
    lock = threading.Lock()
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait(timeout=30)
        for _ in range(20):
            for key in keys:
                if limiter.try_acquire(key).allowed:
                    with lock:
                        counts[key] += 1

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(counts.values()) == {5}
