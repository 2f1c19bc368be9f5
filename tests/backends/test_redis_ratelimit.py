"""RedisRateLimiter against a real redis-server: the local limiter's semantics, shared by instances and by four
processes, bounded and silent outages (failure_mode open and closed), the async twins on asyncio and trio, batched
mode's accuracy bound, and configuration errors.

Waits here are rate-limit time (a refill the test asserts on), never synchronisation: processes start on a line
on stdin, threads on a barrier, and loops are bounded in count and time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis

from connectivity.backends import _ratelimit_scripts as lua
from connectivity.backends.redis_ratelimit import RedisRateLimiter
from connectivity.errors import ConfigError
from connectivity.policies.ratelimit import Decision, RateLimit, RateLimiter
from connectivity.testing.redis import RedisServer
from connectivity.testing.redis import redis_server as serve_redis
from connectivity.testing.system import require_binary

pytestmark = pytest.mark.system

SRC = Path(__file__).resolve().parents[2] / "src"
LOGGER = "connectivity.backends.redis_ratelimit"
TIMEOUT = 0.1
MARGIN = 0.15  # scheduling slack on top of the timeout for one decision on a busy 2-CPU machine
SHARED = RateLimit(100, per=10.0, burst=20)  # the 100 per 10 s, burst 20 of the multi-process tests

LimiterFactory = Callable[..., RedisRateLimiter]


@pytest.fixture
def make_limiter(redis_server: RedisServer) -> Iterator[LimiterFactory]:
    """Build limiters on the test's server (``url=`` overrides it); every one is closed at the end."""
    made: list[RedisRateLimiter] = []

    def make(limits: Any = "20/s burst 5", **kwargs: Any) -> RedisRateLimiter:
        kwargs.setdefault("url", redis_server.url)
        kwargs.setdefault("name", "api")
        limiter = RedisRateLimiter(limits, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


def raw(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5.0)


def timed(call: Callable[[], Decision], durations: list[float]) -> Decision:
    started = time.perf_counter()
    decision = call()
    durations.append(time.perf_counter() - started)
    return decision


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "unavailable" in r.getMessage()]


# -- the local limiter's semantics --------------------------------------------------------------------------------


def test_burst_remaining_and_retry_after_match_the_local_limiter(make_limiter: LimiterFactory) -> None:
    limit = RateLimit(20, per=1.0, burst=5)  # T = 50 ms
    shared, local = make_limiter(limit), RateLimiter(limit)
    ours = [shared.try_acquire("k") for _ in range(6)]
    theirs = [local.try_acquire("k") for _ in range(6)]
    assert [d.allowed for d in ours] == [d.allowed for d in theirs] == [True] * 5 + [False]
    assert [d.remaining for d in ours] == [d.remaining for d in theirs] == [4, 3, 2, 1, 0, 0]
    assert all(d.limit is limit for d in ours)
    assert ours[0].reset_after == pytest.approx(0.05, abs=1e-6)
    refused = ours[-1]
    assert 0.05 - 0.04 < refused.retry_after <= 0.05  # one interval, less the time the burst took
    assert refused.reset_after == pytest.approx(refused.retry_after + 0.2, abs=2e-6)
    assert shared.wait_time("k") <= refused.retry_after
    time.sleep(refused.retry_after)  # rate-limit time: exactly one interval refills
    assert shared.try_acquire("k").allowed
    assert not shared.try_acquire("k").allowed
    assert (shared.allowed, shared.refused) == (6, 2)


def test_several_limits_are_consumed_together_or_not_at_all(make_limiter: LimiterFactory) -> None:
    per_second = RateLimit(10, per=1.0, burst=10)
    slow = RateLimit(20, per=10.0, burst=4)  # T = 0.5 s
    limiter = make_limiter([per_second, slow])
    assert all(limiter.try_acquire("k").allowed for _ in range(4))
    refusals = [limiter.try_acquire("k") for _ in range(100)]
    assert not any(d.allowed for d in refusals)
    assert {d.limit for d in refusals} == {slow}
    assert 0.4 < refusals[0].retry_after <= 0.5
    time.sleep(0.5)  # the slow limit frees one; had the refusals spent the per-second one, it would refuse ~10 s
    assert limiter.try_acquire("k").allowed


def test_cost_peek_and_shadow(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter("1/minute burst 5")
    for _ in range(5):
        assert limiter.peek("k", cost=5).allowed  # looking takes nothing
    assert (limiter.allowed, limiter.refused) == (0, 0)
    taken = limiter.try_acquire("k", cost=3)
    assert (taken.allowed, taken.remaining) == (True, 2)
    refused = limiter.try_acquire("k", cost=3)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(60.0, abs=0.1)
    assert limiter.try_acquire("k", cost=2).allowed

    too_big = limiter.try_acquire("other", cost=6)  # more than the whole burst: never, as the local limiter says
    assert not too_big.allowed
    assert math.isinf(too_big.retry_after)
    assert limiter.peek("other", cost=6).retry_after == pytest.approx(60.0, abs=0.1)

    shadow = make_limiter("1/minute burst 2", name="shadowed", shadow=True)
    assert all(shadow.try_acquire("k").allowed for _ in range(5))
    assert (shadow.allowed, shadow.refused) == (2, 3)


def test_instances_share_one_limit_per_name_and_key(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    first, second = make_limiter("1/minute burst 5"), make_limiter("1/minute burst 5")
    other_name = make_limiter("1/minute burst 5", name="other")
    assert all(first.try_acquire("tenant{1}/x").allowed for _ in range(3))
    assert [second.try_acquire("tenant{1}/x").allowed for _ in range(3)] == [True, True, False]
    assert other_name.try_acquire("tenant{1}/x").allowed
    # One hash per (name, key), in one Cluster slot; braces and slashes in names and keys cannot break the tag.
    keys = sorted(key.decode() for key in raw(redis_server).keys("connectivity:ratelimit:*"))
    assert keys == [
        "connectivity:ratelimit:{api/tenant%7B1%7D%2Fx}",
        "connectivity:ratelimit:{other/tenant%7B1%7D%2Fx}",
    ]


def test_keys_expire_after_the_largest_tolerance(make_limiter: LimiterFactory, redis_server: RedisServer) -> None:
    limiter = make_limiter([RateLimit(10, per=1.0, burst=10), RateLimit(5, per=60.0, burst=2)])  # 1 s and 24 s
    limiter.try_acquire("k")
    ttl = raw(redis_server).pttl("connectivity:ratelimit:{api/k}")
    assert 23_000 < ttl <= 24_001
    limiter.peek("fresh")
    assert raw(redis_server).exists("connectivity:ratelimit:{api/fresh}") == 0  # peeking writes nothing


def test_hold_off_is_shared_and_outlives_the_tolerance(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    first, second = make_limiter("20/s burst 5"), make_limiter("20/s burst 5")  # tolerance 0.25 s
    first.hold_off("k", 0.6)
    refused = second.try_acquire("k")
    assert not refused.allowed
    assert 0.5 < refused.retry_after <= 0.6
    assert raw(redis_server).pttl("connectivity:ratelimit:{api/k}") > 500
    time.sleep(0.35)  # past the tolerance: the hold must still be there
    assert not second.try_acquire("k").allowed
    assert (second.allowed, second.refused) == (0, 2)
    time.sleep(second.wait_time("k"))
    # Over: the limits are where they were, as with the local limiter (the hold-off is kept apart).
    assert [second.try_acquire("k").allowed for _ in range(6)] == [True] * 5 + [False]
    first.hold_off("k", math.nan)  # ignored, like the local limiter
    first.hold_off("k", -1.0)


def test_batched_mode_holds_off_at_once_here_and_at_the_next_sync_elsewhere(make_limiter: LimiterFactory) -> None:
    limits = "100000/s burst 100000"  # never the reason for a refusal here
    here, there = make_limiter(limits, sync_interval=0.05), make_limiter(limits, sync_interval=0.05)
    assert here.try_acquire("k").allowed  # views in place
    assert there.try_acquire("k").allowed
    here.hold_off("k", 1.0)
    held = here.try_acquire("k")
    assert not held.allowed
    assert 0.9 < held.retry_after <= 1.0
    started = time.monotonic()
    while time.monotonic() - started < 0.5:  # `there` learns it at its next sync, within two intervals
        decision = there.try_acquire("k")
        if not decision.allowed:
            break
    assert not decision.allowed
    assert 0.5 < decision.retry_after <= 1.0
    assert time.monotonic() - started < 0.2


# -- four processes, one redis-server -----------------------------------------------------------------------------

WORKER = r"""
import json, sys, time
import anyio, anyio.lowlevel, anyio.to_thread
from connectivity.backends.redis_ratelimit import RedisRateLimiter

URL, TASKS, SECONDS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
MAX_CALLS = 100_000


async def main() -> None:
    limiter = RedisRateLimiter("100/10s burst 20", url=URL, name="shared", timeout=2.0)
    await limiter.apeek("warm-up")  # the script is loaded
    async with anyio.create_task_group() as group:  # one connection per task, before the clock starts
        for _ in range(TASKS):
            group.start_soon(limiter.apeek, "warm-up")
    print(json.dumps({"ready": True}), flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)  # "go", sent to every process at once
    deadline = time.monotonic() + SECONDS
    tally = {"admitted": 0, "decisions": 0, "first": float("inf"), "last": 0.0}

    async def hammer() -> None:
        calls = 0
        while calls < MAX_CALLS:
            started = time.monotonic()
            if started >= deadline:
                break
            tally["first"] = min(tally["first"], started)
            decision = await limiter.atry_acquire("k")
            tally["last"] = max(tally["last"], time.monotonic())
            tally["admitted"] += decision.allowed
            tally["decisions"] += 1
            calls += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        for _ in range(TASKS):
            group.start_soon(hammer)
    tally["degraded"] = limiter.degraded_decisions
    print(json.dumps(tally), flush=True)
    await limiter.aclose()
    limiter.close()


anyio.run(main)
"""


def test_four_processes_of_200_tasks_admit_exactly_the_shared_limit(redis_server: RedisServer) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_server.url, "200", "2.0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert json.loads(process.stdout.readline()) == {"ready": True}
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        tallies = []
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, f"worker exited with {process.wait(timeout=30)}"
            tallies.append(json.loads(line))
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
    assert all(tally["degraded"] == 0 for tally in tallies), tallies  # every decision was Redis's
    admitted = sum(tally["admitted"] for tally in tallies)
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    elapsed = max(tally["last"] for tally in tallies) - min(tally["first"] for tally in tallies)
    bound = SHARED.burst + SHARED.rate / SHARED.per * elapsed  # type: ignore[operator]
    assert sum(tally["decisions"] for tally in tallies) > 10 * admitted  # really hammered
    assert admitted <= bound, (admitted, elapsed)
    assert admitted >= 0.95 * bound, (admitted, elapsed)


# -- outages ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["killed", "frozen"])
@pytest.mark.parametrize("failure_mode", ["open", "closed"])
def test_an_outage_is_bounded_silent_and_decided_by_the_failure_mode(
    make_limiter: LimiterFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    outage: str,
    failure_mode: str,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    limit = RateLimit(100, per=1.0, burst=10)
    limiter = make_limiter(
        limit, timeout=TIMEOUT, retry_redis_after=0.3, failure_mode=failure_mode, expected_replicas=2
    )
    assert limiter.try_acquire("k").allowed
    assert not limiter.degraded

    if outage == "killed":
        redis_server.stop()
    else:
        redis_server.pause()  # accepts connections, never answers: only the timeout ends a call
    durations: list[float] = []
    answers: list[Decision] = []
    started = time.monotonic()
    for _ in range(10_000):  # about 1 s: several retry_redis_after periods, so Redis is tried again
        if time.monotonic() - started > 1.0:
            break
        answers.append(timed(lambda: limiter.try_acquire("k"), durations))
        timed(lambda: limiter.peek("k"), durations)
    elapsed = time.monotonic() - started

    assert max(durations) <= TIMEOUT + MARGIN, max(durations)
    assert limiter.degraded
    assert limiter.status()["degraded"] is True
    assert limiter.degraded_decisions >= len(answers)
    assert all(d.limit is limit for d in answers)  # the configured limit, not its local share
    allowed = sum(d.allowed for d in answers)
    if failure_mode == "open":
        # The local fallback: 100/s burst 10 divided by 2 replicas is 50/s burst 5, for this process.
        assert 5 <= allowed <= 5 + 50 * elapsed + 1
        assert limiter.local.limits[0].burst == 5
        assert limiter.local.limits[0].rate == 50
    else:
        assert allowed == 0
        assert {d.retry_after for d in answers} == {0.3}
    assert len(outage_warnings(caplog)) == 1  # once per outage, although Redis was tried again

    if outage == "killed":
        redis_server.start()  # empty: the script must be loaded again
    else:
        redis_server.resume()
    for _ in range(100):  # within retry_redis_after, one caller tries Redis again
        decision = limiter.try_acquire("after")
        if not limiter.degraded:
            break
        time.sleep(0.01)
    assert not limiter.degraded
    assert decision.allowed
    assert [r.getMessage() for r in caplog.records if "available again" in r.getMessage()]


def test_warnings_and_errors_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    secret = "s3cr3t-pass"
    with serve_redis(binary=require_binary("redis-server"), password=secret) as server:
        limiter = RedisRateLimiter("10/s", url=server.url, timeout=TIMEOUT, retry_redis_after=0.0)
        assert limiter.try_acquire("k").allowed
        assert secret not in repr(limiter)
        assert secret not in json.dumps(limiter.status())
        server.stop()
        limiter.try_acquire("k")
        limiter.close()
    wrong = RedisRateLimiter("10/s", url=f"redis://:{secret}@127.0.0.1:1/0", timeout=TIMEOUT)
    wrong.try_acquire("k")
    wrong.close()
    messages = outage_warnings(caplog)
    assert len(messages) == 2
    assert all(secret not in message for message in messages)
    with pytest.raises(ConfigError) as error:
        RedisRateLimiter("10/s", url=f"redis://:{secret}@127.0.0.1:6379/zero")
    assert secret not in str(error.value)


def test_a_redis_restarted_empty_gets_the_script_again(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    limiter = make_limiter("1/minute burst 3", retry_redis_after=0.0)
    assert limiter.try_acquire("k").remaining == 2
    redis_server.stop()
    redis_server.start()
    answers = [limiter.try_acquire("k") for _ in range(3)]  # the first meets the dead connection
    assert not limiter.degraded
    assert answers[-1].remaining in (1, 2)  # state lost with the data, decided in Redis again


# -- async --------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_twins(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter("20/s burst 5")
    assert (await limiter.apeek("k")).allowed
    answers = [await limiter.atry_acquire("k") for _ in range(6)]
    assert [d.allowed for d in answers] == [True] * 5 + [False]
    assert [d.remaining for d in answers] == [4, 3, 2, 1, 0, 0]
    assert not (await limiter.apeek("k")).allowed
    await limiter.ahold_off("held", 0.5)
    held = await limiter.atry_acquire("held")
    assert not held.allowed
    assert 0.4 < held.retry_after <= 0.5
    await limiter.ahold_off("held", math.inf)  # ignored
    await limiter.aclose()


@pytest.mark.anyio
async def test_async_twins_are_bounded_by_the_timeout_during_an_outage(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    limiter = make_limiter("100/s burst 10", timeout=TIMEOUT, retry_redis_after=0.0)
    assert (await limiter.atry_acquire("k")).allowed
    redis_server.pause()
    try:
        durations = []
        for _ in range(3):  # retry_redis_after=0: every call pays the timeout, none more
            started = time.perf_counter()
            decision = await limiter.atry_acquire("k")
            durations.append(time.perf_counter() - started)
            assert decision.allowed  # the local fallback
        assert max(durations) <= TIMEOUT + MARGIN, durations
        assert limiter.degraded
    finally:
        redis_server.resume()
    await limiter.aclose()


@pytest.mark.anyio
async def test_many_tasks_share_the_limit(make_limiter: LimiterFactory) -> None:
    # About sharing, not outages: 20 tasks open their connections at once, which a loaded machine may not do
    # within the default 50 ms (the fallback would then decide, and be right for one process only).
    limiter = make_limiter("1/minute burst 25", timeout=1.0)
    results: list[bool] = []

    async def take() -> None:
        for _ in range(5):
            decision = await limiter.atry_acquire("k")
            results.append(decision.allowed)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(take)
    assert limiter.degraded_decisions == 0
    assert sum(results) == 25
    assert len(results) == 100
    await limiter.aclose()


# -- batched mode -------------------------------------------------------------------------------------------------


def evalsha_calls(server: RedisServer) -> int:
    stats = raw(server).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_batched_mode_decides_locally_and_syncs_in_one_round_trip(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    limit = RateLimit(10_000, per=60.0, burst=1000)  # T = 6 ms
    limiter = make_limiter(limit, sync_interval=0.05)
    limiter.peek("warm-up")
    before = evalsha_calls(redis_server)
    started = time.monotonic()
    answers = [limiter.try_acquire(f"k{index % 10}") for index in range(3000)]
    elapsed = time.monotonic() - started
    assert all(d.allowed for d in answers)
    calls = evalsha_calls(redis_server) - before
    # 10 first decisions in Redis, then one pipeline of 10 scripts per interval.
    assert calls <= 10 + 10 * (elapsed / 0.05 + 2), (calls, elapsed)
    assert calls < len(answers) / 5
    limiter.flush()
    # Every admission reached Redis: 300 per key, so about 700 (plus the refill) remain for an exact limiter.
    remaining = make_limiter(limit).peek("k0").remaining
    refill = (time.monotonic() - started) / limit.interval
    assert 700 - 2 <= remaining <= 700 + refill + 1, (remaining, refill)


async def _hammer_replicas(
    limiters: list[RedisRateLimiter], tasks: int, seconds: float, phases: bool = False
) -> tuple[int, float]:
    """Admissions of ``limiters`` hammered together (or, with ``phases``, one after the other), and the span."""
    admitted = 0
    first, last = math.inf, -math.inf

    async def hammer(limiter: RedisRateLimiter, until: float) -> None:
        nonlocal admitted, first, last
        for _ in range(100_000):
            started = time.monotonic()
            if started >= until:
                return
            first = min(first, started)
            decision = await limiter.atry_acquire("k")  # not `admitted += await ...`: that reads before awaiting
            admitted += decision.allowed
            last = max(last, time.monotonic())
            await anyio.lowlevel.checkpoint()

    if phases:
        for limiter in limiters:
            until = time.monotonic() + seconds / len(limiters)
            async with anyio.create_task_group() as group:
                for _ in range(tasks):
                    group.start_soon(hammer, limiter, until)
    else:
        until = time.monotonic() + seconds
        async with anyio.create_task_group() as group:
            for limiter in limiters:
                for _ in range(tasks):
                    group.start_soon(hammer, limiter, until)
    for limiter in limiters:
        await limiter.aclose()
    return admitted, last - first


@pytest.mark.parametrize(("replicas", "active", "phases"), [(4, 4, False), (4, 1, False), (4, 4, True)])
def test_batched_mode_accuracy_bound(
    make_limiter: LimiterFactory, replicas: int, active: int, phases: bool
) -> None:
    interval = 0.1
    # About accuracy, not outages: 200 tasks on one event loop (under coverage in CI) can delay a sync's reply past
    # a second, which must not count as Redis being down.
    limiters = [
        make_limiter(SHARED, name="batched", sync_interval=interval, expected_replicas=replicas, timeout=5.0)
        for _ in range(replicas)
    ]
    admitted, elapsed = anyio.run(_hammer_replicas, limiters[:active], 50, 2.0, phases)
    rate = SHARED.rate / SHARED.per
    exact = SHARED.burst + rate * elapsed  # type: ignore[operator]
    # The documented bound, both ways: about replicas * rate * sync_interval more or fewer than exact (fewer also
    # by up to one request per replica left in its batch when the run stops).
    assert admitted <= exact + replicas * rate * interval + 1, (admitted, exact)
    assert admitted >= exact - replicas * rate * interval - 2 * replicas, (admitted, exact)
    assert all(limiter.degraded_decisions == 0 for limiter in limiters)


def test_batched_mode_never_batches_a_burst_smaller_than_the_replicas(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    limiter = make_limiter("1/minute burst 2", sync_interval=0.05, expected_replicas=4)
    limiter.peek("warm-up")  # the very first call also loads the script
    before = evalsha_calls(redis_server)
    assert [limiter.try_acquire("k").allowed for _ in range(4)] == [True, True, False, False]
    assert evalsha_calls(redis_server) - before == 4  # every decision in Redis: exact


def test_batched_mode_outage_falls_back_and_keeps_pending_admissions(
    make_limiter: LimiterFactory, redis_server: RedisServer
) -> None:
    limiter = make_limiter("100/s burst 100", sync_interval=0.05, timeout=TIMEOUT, retry_redis_after=0.0)
    assert all(limiter.try_acquire("k").allowed for _ in range(50))
    redis_server.pause()
    try:
        durations: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < 0.3:
            timed(lambda: limiter.try_acquire("k"), durations)
        assert max(durations) <= TIMEOUT + MARGIN
        assert limiter.degraded
    finally:
        redis_server.resume()
    for _ in range(100):
        limiter.try_acquire("k")
        if not limiter.degraded:
            break
    assert not limiter.degraded


# -- status and configuration -------------------------------------------------------------------------------------


def test_status_is_json_ready(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter("10/s; 100/h", sync_interval=0.5, expected_replicas=3)
    limiter.try_acquire("k")
    status = limiter.status()
    assert json.loads(json.dumps(status)) == status
    assert status["remote"] is True
    assert limiter.remote is True
    assert (status["kind"], status["failure_mode"], status["expected_replicas"]) == ("rate-limit", "open", 3)
    assert status["sync_interval"] == 0.5
    assert status["limits"] == [
        {"name": "10/s", "rate": 10.0, "per_s": 1.0, "burst": 10},
        {"name": "100/h", "rate": 100.0, "per_s": 3600.0, "burst": 100},
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limits": ""}, "rate limit"),
        ({"limits": "nonsense"}, "rate limit"),
        ({"limits": []}, "RedisRateLimiter.limits"),
        ({"limits": [object()]}, "RedisRateLimiter.limits"),
        ({"limits": 5}, "RedisRateLimiter.limits"),
        ({"url": 5}, "RedisRateLimiter.url"),
        ({"url": "http://example.com"}, "RedisRateLimiter.url"),
        ({"url": "redis://127.0.0.1:notaport/0"}, "RedisRateLimiter.url"),
        ({"url": "redis://127.0.0.1:6379/zero"}, "RedisRateLimiter.url"),
        ({"prefix": ""}, "RedisRateLimiter.prefix"),
        ({"prefix": "a{b"}, "RedisRateLimiter.prefix"),
        ({"name": ""}, "RedisRateLimiter.name"),
        ({"timeout": 0}, "RedisRateLimiter.timeout"),
        ({"timeout": math.nan}, "RedisRateLimiter.timeout"),
        ({"timeout": math.inf}, "RedisRateLimiter.timeout"),
        ({"failure_mode": "maybe"}, "RedisRateLimiter.failure_mode"),
        ({"expected_replicas": 0}, "RedisRateLimiter.expected_replicas"),
        ({"expected_replicas": True}, "RedisRateLimiter.expected_replicas"),
        ({"expected_replicas": 2.0}, "RedisRateLimiter.expected_replicas"),
        ({"retry_redis_after": -1}, "RedisRateLimiter.retry_redis_after"),
        ({"sync_interval": 0}, "RedisRateLimiter.sync_interval"),
        ({"sync_interval": math.nan}, "RedisRateLimiter.sync_interval"),
        ({"max_keys": 0}, "RedisRateLimiter.max_keys"),
        ({"client": object()}, "RedisRateLimiter.client"),
        ({"client": redis.Redis(socket_timeout=None)}, "RedisRateLimiter.client"),  # a call could hang
        ({"async_client": object()}, "RedisRateLimiter.async_client"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs: dict[str, Any], field: str) -> None:
    kwargs = {"limits": "10/s", **kwargs}
    with pytest.raises(ConfigError) as error:
        RedisRateLimiter(**kwargs)
    assert error.value.field == field


def test_a_bad_cost_or_key_is_refused_before_any_round_trip(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    for cost in (0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="cost"):
            limiter.try_acquire("k", cost)
        with pytest.raises(ValueError, match="cost"):
            limiter.peek("k", cost)
    with pytest.raises(TypeError):
        limiter.try_acquire(5)  # type: ignore[arg-type]


def test_your_own_clients_are_used_and_left_open(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=1.0)
    limiter = RedisRateLimiter("2/minute", url="redis://127.0.0.1:1/0", client=client, name="own")
    assert [limiter.try_acquire("k").allowed for _ in range(3)] == [True, True, False]
    limiter.close()
    assert client.ping()
    client.close()


def test_the_script_is_the_one_in_the_scripts_module() -> None:
    assert "redis.call('TIME')" in lua.DECIDE
    assert time.time() > lua.EPOCH


def test_the_limits_adapter_runs_over_limits_redis_storage(redis_server: RedisServer) -> None:
    pytest.importorskip("limits")
    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    first = LimitsAdapter("moving-window", redis_server.url, "3/minute", name="adapted")
    second = LimitsAdapter("moving-window", redis_server.url, "3/minute", name="adapted")
    assert [first.try_acquire("k").allowed for _ in range(2)] == [True, True]
    answers = [second.try_acquire("k") for _ in range(2)]  # the same window, in Redis
    assert [d.allowed for d in answers] == [True, False]
    assert 0 < answers[-1].retry_after <= 60
