"""Rate limit: the CPU cost of a decision, connectivity against ``limits`` and ``aiolimiter``, local and in Redis.

Local part, every contender asked about one key whose capacity is never exhausted (so every answer is "allowed" and
every contender does its whole bookkeeping), all in one asyncio event loop:

* ``connectivity RateLimiter.try_acquire``: GCRA on ``RateLimit(1e9, per=1.0)``;
* ``limits MovingWindowRateLimiter.hit``: ``limits``' moving window over its ``MemoryStorage``, on
  ``RateLimitItemPerSecond(10**9)`` (a moving window keeps one entry per hit of the last second: that list is the
  algorithm's own cost);
* ``aiolimiter AsyncLimiter.acquire``: ``await limiter.acquire()`` on ``AsyncLimiter(10**9, 1)`` (a leaky bucket;
  never waits here).

Redis part (skipped, with a note, when ``redis-server`` is not on ``PATH``): a throwaway ``redis-server`` from
:mod:`connectivity.testing.redis`, one key, capacity never exhausted, one round trip per decision:

* ``connectivity RedisRateLimiter.atry_acquire``: on asyncio (``redis.asyncio``), ``"1000000/s"``;
* ``connectivity RedisRateLimiter.try_acquire``: the sync twin, for reference (no target);
* ``limits aio MovingWindowRateLimiter.hit (Redis)``: ``limits.aio.strategies.MovingWindowRateLimiter`` over
  ``limits.aio.storage.RedisStorage(..., implementation="redispy")``, ``RateLimitItemPerSecond(10**6)``.

Each round times ``calls`` decisions per contender with :func:`time.process_time_ns` (the CPU of this process: the
client), the contenders taking turns every ``block`` decisions (see :func:`bench._harness.schedule`); reported
values are medians over the rounds, as decisions per CPU second. The Redis part also reports the server's CPU per
decision (``INFO cpu`` around every block) and the wall time per decision. Targets: the local limiter at least
:data:`TARGET_VS_LIMITS` x ``limits``' moving window and at least :data:`TARGET_VS_AIOLIMITER` x aiolimiter; the
Redis decision at least :data:`TARGET_REDIS` x ``limits``' async Redis moving window (client CPU).
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench._harness import machine_info, median, publish, schedule, table, verdict, version

__all__ = ["FULL", "QUICK", "TARGET_REDIS", "TARGET_VS_AIOLIMITER", "TARGET_VS_LIMITS", "Settings", "run"]

TARGET_VS_LIMITS = 3.0
"""Least throughput the local limiter must have, as a multiple of ``limits``' in-memory moving window."""

TARGET_VS_AIOLIMITER = 1.0
"""Least throughput the local limiter must have, as a multiple of aiolimiter's."""

TARGET_REDIS = 1.5
"""Least throughput (client CPU) of a Redis decision, as a multiple of ``limits``' async Redis moving window."""

LOCAL = "connectivity RateLimiter.try_acquire"
LIMITS_MEMORY = "limits MovingWindowRateLimiter.hit (memory)"
AIOLIMITER = "aiolimiter AsyncLimiter.acquire"
REDIS_ASYNC = "connectivity RedisRateLimiter.atry_acquire"
REDIS_SYNC = "connectivity RedisRateLimiter.try_acquire (sync)"
LIMITS_REDIS = "limits aio MovingWindowRateLimiter.hit (Redis)"

Timer = Callable[[int], Awaitable[int]]
"""Makes ``n`` decisions and returns the CPU nanoseconds they took."""


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        calls: Local decisions per contender per round.
        rounds: Measured rounds (the reported value is the median over them).
        warmup: Untimed decisions per contender before the first round.
        block: Decisions a contender makes before handing over to the next.
        redis_calls: Redis decisions per contender per round (a round trip each: fewer).
        redis_block: Redis decisions per turn.
    """

    calls: int
    rounds: int
    warmup: int
    block: int = 10_000
    redis_calls: int = 5_000
    redis_block: int = 500


FULL = Settings(calls=100_000, rounds=7, warmup=10_000)
QUICK = Settings(calls=5_000, rounds=3, warmup=500, block=1_000, redis_calls=300, redis_block=100)


_version = version  # this module's own name for it, which the smoke tests stub


class _Refusals:
    """Counts answers that were not "allowed": a run with any is refused (it timed something else)."""

    def __init__(self) -> None:
        self.count = 0


# -- local contenders ---------------------------------------------------------------------------------------------


def _local_timers(refusals: _Refusals) -> tuple[dict[str, Timer], Callable[[], bool]]:
    from aiolimiter import AsyncLimiter
    from limits import RateLimitItemPerSecond
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    from connectivity.policies.ratelimit import RateLimit, RateLimiter

    ours = RateLimiter(RateLimit(1e9, per=1.0), name="bench")
    moving = MovingWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerSecond(10**9)
    leaky = AsyncLimiter(10**9, 1)

    async def local(n: int) -> int:
        acquire = ours.try_acquire
        start = time.process_time_ns()
        for _ in range(n):
            if not acquire("k").allowed:
                refusals.count += 1
        return time.process_time_ns() - start

    async def limits_memory(n: int) -> int:
        hit = moving.hit
        start = time.process_time_ns()
        for _ in range(n):
            if not hit(item, "k"):
                refusals.count += 1
        return time.process_time_ns() - start

    async def aiolimiter(n: int) -> int:
        acquire = leaky.acquire
        start = time.process_time_ns()
        for _ in range(n):
            await acquire()
        return time.process_time_ns() - start

    timers: dict[str, Timer] = {LOCAL: local, LIMITS_MEMORY: limits_memory, AIOLIMITER: aiolimiter}
    return timers, lambda: ours.refused == 0 and leaky.has_capacity()


# -- Redis contenders ---------------------------------------------------------------------------------------------


class _ServerCPU:
    """redis-server's CPU seconds (user + system), from ``INFO cpu``, read outside the timed blocks."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=5.0)

    def seconds(self) -> float:
        info = self._client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def close(self) -> None:
        self._client.close()


def _redis_timers(url: str, refusals: _Refusals) -> tuple[dict[str, Timer], Callable[[], Awaitable[None]]]:
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    from connectivity.backends.redis_ratelimit import RedisRateLimiter

    ours = RedisRateLimiter("1000000/s", url=url, name="bench", timeout=1.0)
    storage = RedisStorage(f"async+{url}", implementation="redispy")
    moving = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(10**6)

    async def redis_async(n: int) -> int:
        acquire = ours.atry_acquire
        start = time.process_time_ns()
        for _ in range(n):
            if not (await acquire("k")).allowed:
                refusals.count += 1
        return time.process_time_ns() - start

    async def redis_sync(n: int) -> int:
        acquire = ours.try_acquire
        start = time.process_time_ns()
        for _ in range(n):
            if not acquire("k").allowed:
                refusals.count += 1
        return time.process_time_ns() - start

    async def limits_redis(n: int) -> int:
        hit = moving.hit
        start = time.process_time_ns()
        for _ in range(n):
            if not await hit(item, "k"):
                refusals.count += 1
        return time.process_time_ns() - start

    async def close() -> None:
        if ours.degraded_decisions:
            refusals.count += ours.degraded_decisions  # a decision made without Redis is not a Redis decision
        await ours.aclose()
        ours.close()
        client = getattr(getattr(storage, "bridge", None), "storage", None)  # limits' redis.asyncio client
        if client is not None:
            await client.aclose()

    timers: dict[str, Timer] = {REDIS_ASYNC: redis_async, REDIS_SYNC: redis_sync, LIMITS_REDIS: limits_redis}
    return timers, close


# -- measuring ----------------------------------------------------------------------------------------------------


async def _measure(
    timers: dict[str, Timer],
    rounds: int,
    calls: int,
    block: int,
    warmup: int,
    server: _ServerCPU | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per contender: CPU ns per decision for every round (and, with ``server``, server and wall ns too)."""
    names = tuple(timers)
    for timed in timers.values():
        await timed(warmup)
    results: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "server": [], "wall": []} for name in names}
    for index in range(rounds):
        cpu = dict.fromkeys(names, 0)
        server_s = dict.fromkeys(names, 0.0)
        wall = dict.fromkeys(names, 0)
        gc.collect()
        for name, size in schedule(names, calls, block, index):
            before = server.seconds() if server is not None else 0.0
            started = time.perf_counter_ns()
            cpu[name] += await timers[name](size)
            wall[name] += time.perf_counter_ns() - started
            if server is not None:
                server_s[name] += server.seconds() - before
        for name in names:
            results[name]["cpu"].append(cpu[name] / calls)
            results[name]["wall"].append(wall[name] / calls)
            results[name]["server"].append(server_s[name] * 1e9 / calls)
    return results


def _summary(values: dict[str, list[float]], *, with_server: bool) -> dict[str, Any]:
    cpu = median(values["cpu"])
    summary: dict[str, Any] = {
        "rounds_ns_per_decision": [round(value, 1) for value in values["cpu"]],
        "median_ns_per_decision": round(cpu, 1),
        "decisions_per_cpu_s": round(1e9 / cpu) if cpu > 0 else None,
        "median_wall_ns_per_decision": round(median(values["wall"]), 1),
    }
    if with_server:
        server = median(values["server"])
        summary["median_server_ns_per_decision"] = round(server, 1)
        summary["decisions_per_cpu_s_with_server"] = round(1e9 / (cpu + server)) if cpu + server > 0 else None
    return summary


def _compare(rounds: dict[str, dict[str, list[float]]], ours: str, theirs: str, target: float) -> dict[str, Any]:
    """Throughput ratio ours/theirs (= their CPU per decision / ours), median and paired per round."""
    ours_cpu, theirs_cpu = rounds[ours]["cpu"], rounds[theirs]["cpu"]
    ratio = median(theirs_cpu) / median(ours_cpu) if median(ours_cpu) > 0 else 0.0
    paired = [t / o for o, t in zip(ours_cpu, theirs_cpu, strict=True) if o > 0]
    return {
        "ratio": round(ratio, 3),
        "ratio_paired_median": round(median(paired), 3) if paired else None,
        "target_ratio": target,
        "pass": ratio >= target,
    }


def _redis_part(settings: Settings, refusals: _Refusals) -> dict[str, Any]:
    """The Redis contenders on a throwaway redis-server, or why they were skipped."""
    binary = shutil.which("redis-server")
    if binary is None:
        return {"skipped": "redis-server is not on PATH", "contenders": {}, "comparisons": {}, "pass": True}
    from connectivity.testing.redis import redis_server

    with redis_server(binary=binary) as server:
        cpu = _ServerCPU(server.url)

        async def measure() -> dict[str, dict[str, list[float]]]:
            timers, close = _redis_timers(server.url, refusals)
            try:
                return await _measure(
                    timers,
                    settings.rounds,
                    settings.redis_calls,
                    settings.redis_block,
                    min(settings.warmup, settings.redis_calls),
                    cpu,
                )
            finally:
                await close()

        try:
            rounds = anyio.run(measure)
        finally:
            cpu.close()
    comparison = _compare(rounds, REDIS_ASYNC, LIMITS_REDIS, TARGET_REDIS)
    return {
        "skipped": None,
        "redis_server": binary,
        "contenders": {name: _summary(values, with_server=True) for name, values in rounds.items()},
        "comparisons": {f"{REDIS_ASYNC} vs {LIMITS_REDIS}": comparison},
        "pass": comparison["pass"],
    }


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    calls: int | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the rate limit benchmark, print its tables and verdicts, and write ``ratelimit.json``.

    Args:
        quick: Few rounds of few decisions (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds.
        calls: Override the local decisions per contender per round (the Redis part makes a tenth, at least 10).
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.
    """
    base = QUICK if quick else FULL
    redis_calls = max(10, calls // 10) if calls else base.redis_calls
    settings = Settings(
        calls=calls or base.calls,
        rounds=rounds or base.rounds,
        warmup=min(base.warmup, calls or base.warmup),
        block=min(base.block, calls or base.block),
        redis_calls=redis_calls,
        redis_block=min(base.redis_block, redis_calls),
    )
    began = time.perf_counter()
    versions = {name: _version(name) for name in ("limits", "aiolimiter", "redis", "hiredis")}
    missing = [name for name in ("limits", "aiolimiter") if versions[name] is None]
    if missing:
        return _skipped(quick, settings, f"not installed: {', '.join(missing)}", began, results_dir, versions)
    print(
        f"ratelimit: one decision, capacity always available; {settings.rounds} rounds x {settings.calls} local "
        f"decisions per contender, taking turns every {settings.block}; CPU time of this process (process_time)"
    )
    refusals = _Refusals()

    async def measure_local() -> tuple[dict[str, dict[str, list[float]]], bool]:
        timers, check = _local_timers(refusals)
        measured = await _measure(timers, settings.rounds, settings.calls, settings.block, settings.warmup)
        return measured, check()

    local_rounds, still_open = anyio.run(measure_local)
    local = {
        "contenders": {name: _summary(values, with_server=False) for name, values in local_rounds.items()},
        "comparisons": {
            f"{LOCAL} vs {LIMITS_MEMORY}": _compare(local_rounds, LOCAL, LIMITS_MEMORY, TARGET_VS_LIMITS),
            f"{LOCAL} vs {AIOLIMITER}": _compare(local_rounds, LOCAL, AIOLIMITER, TARGET_VS_AIOLIMITER),
        },
    }
    print(_table(local["contenders"], with_server=False))
    redis_part = _redis_part(settings, refusals)
    if redis_part["skipped"]:
        print(f"note: Redis part skipped: {redis_part['skipped']}")
    else:
        print(_table(redis_part["contenders"], with_server=True))
    if refusals.count or not still_open:
        raise RuntimeError(f"{refusals.count} decisions were refused or made without Redis: nothing valid timed")

    comparisons = {**local["comparisons"], **redis_part["comparisons"]}
    for name, comparison in comparisons.items():
        print(
            f"{verdict(comparison['pass'])}  ratelimit {name}: {comparison['ratio']:.2f}x the throughput "
            f"(paired {comparison['ratio_paired_median']}x; target >= {comparison['target_ratio']:g}x)"
        )
    payload: dict[str, Any] = {
        "benchmark": "ratelimit",
        "quick": quick,
        "targets": {
            f"{LOCAL} vs {LIMITS_MEMORY}": TARGET_VS_LIMITS,
            f"{LOCAL} vs {AIOLIMITER}": TARGET_VS_AIOLIMITER,
            f"{REDIS_ASYNC} vs {LIMITS_REDIS}": TARGET_REDIS,
        },
        "config": {
            "contenders": {
                LOCAL: "RateLimiter(RateLimit(1e9, per=1.0)).try_acquire('k')",
                LIMITS_MEMORY: "MovingWindowRateLimiter(MemoryStorage()).hit(RateLimitItemPerSecond(10**9), 'k')",
                AIOLIMITER: "await AsyncLimiter(10**9, 1).acquire()",
                REDIS_ASYNC: "await RedisRateLimiter('1000000/s').atry_acquire('k') on asyncio",
                REDIS_SYNC: "RedisRateLimiter('1000000/s').try_acquire('k')",
                LIMITS_REDIS: "await MovingWindowRateLimiter(RedisStorage('async+redis://...', "
                "implementation='redispy')).hit(RateLimitItemPerSecond(10**6), 'k')",
            },
            "calls_per_round": settings.calls,
            "redis_calls_per_round": settings.redis_calls,
            "rounds": settings.rounds,
            "warmup_calls": settings.warmup,
            "block_calls": settings.block,
            "redis_block_calls": settings.redis_block,
            "timer": "time.process_time_ns (this process: the client); Redis server CPU from INFO cpu",
            "order": "contenders alternate every block of calls; the order rotates every block and round",
            "loop": "every contender runs inside one asyncio event loop",
        },
        "machine": machine_info(versions),
        "local": local,
        "redis": redis_part,
        "comparisons": comparisons,
        "skipped": None,
        "pass": all(comparison["pass"] for comparison in comparisons.values()),
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("ratelimit", payload, results_dir)


def _table(contenders: dict[str, dict[str, Any]], *, with_server: bool) -> str:
    headers = ["contender", "ns/decision", "decisions/CPU s", "wall µs/decision"]
    if with_server:
        headers += ["server ns/decision", "decisions/CPU s (+server)"]
    rows = []
    for name, summary in contenders.items():
        row = [
            name,
            f"{summary['median_ns_per_decision']:.0f}",
            f"{summary['decisions_per_cpu_s']:,}",
            f"{summary['median_wall_ns_per_decision'] / 1000:.2f}",
        ]
        if with_server:
            row += [
                f"{summary['median_server_ns_per_decision']:.0f}",
                f"{summary['decisions_per_cpu_s_with_server']:,}",
            ]
        rows.append(row)
    return table(headers, rows)


def _skipped(
    quick: bool,
    settings: Settings,
    reason: str,
    began: float,
    results_dir: Path | None,
    versions: dict[str, str | None],
) -> dict[str, Any]:
    print(f"SKIPPED  ratelimit: {reason}")
    payload: dict[str, Any] = {
        "benchmark": "ratelimit",
        "quick": quick,
        "targets": {},
        "config": {"calls_per_round": settings.calls, "rounds": settings.rounds},
        "machine": machine_info(versions),
        "local": {"contenders": {}, "comparisons": {}},
        "redis": {"skipped": reason, "contenders": {}, "comparisons": {}, "pass": True},
        "comparisons": {},
        "skipped": reason,
        "pass": True,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("ratelimit", payload, results_dir)
