"""Inbound: the server CPU that :class:`RateLimitMiddleware` adds to a bare Starlette app under uvicorn.

Every contender is the same Starlette app (one route, ``GET /`` answering ``PlainTextResponse("ok")``, see
:mod:`bench._inbound_app`), each served by uvicorn (h11, asyncio, lifespan off, no access log) in a child process
of its own, all of them pinned to one CPU while this process, the client, is pinned to another (when at least two
are usable):

* ``bare``: the app alone, the baseline;
* ``ratelimit``: the app with ``app.add_middleware(RateLimitMiddleware, limiter=RateLimiter("1000000/s"))``: keyed
  by client address, every option at its default (allowed responses go out as the app made them); held to the
  target;
* ``ratelimit (headers=True)``: the same with the ``RateLimit`` and ``RateLimit-Policy`` fields on every allowed
  response: shown, not held to the target (it does more than the default: two more fields for uvicorn to write);
* ``bare (control)``: a second bare server, measured like the others: how far it lands from ``bare`` is the noise
  floor of that run, printed under the table.

The limit is never exhausted, so every request is allowed and the middleware does its whole bookkeeping. The
client sends sequential ``GET`` requests over one keep-alive ``httpx.Client`` per server; its own CPU does not
matter. A server's cost is its on-CPU time, read from ``/proc/<pid>/task/*/schedstat`` (nanoseconds; the tick-based
``utime + stime`` of ``/proc/<pid>/stat`` where schedstat is missing) before and after each block of requests,
summed over its blocks and divided by its requests.

Every round starts fresh servers: two processes serving the very same app differ by a few per cent for their
whole life (memory layout, hash seed), as much as the effect measured, so one process per contender for a whole
run would report that difference as the middleware's. A new set of processes per round turns it into round-to-round
noise, which the median over many rounds absorbs. After a warm-up, each round sends ``requests`` requests to every
server, the servers taking turns every ``block`` requests (see :func:`bench._harness.schedule`) so that noise from
the rest of the machine lands on all of them alike. Reported values are medians over the rounds, with the ratio to
``bare`` both of the medians and paired per round (each round's contender over that round's ``bare``).

The target: ``ratelimit`` <= :data:`TARGET_RATIO` x ``bare`` server CPU per request, judged on the paired median
ratio (the machine's speed drifts between rounds; a round's servers share its conditions).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._harness import machine_info, median, pinned, pinning, publish, schedule, table, verdict, version
from bench.e2e import HOST, serve

__all__ = ["CONTENDERS", "FULL", "QUICK", "TARGET_RATIO", "Settings", "run"]

TARGET_RATIO = 1.05
"""Most server CPU per request the app behind the rate-limit middleware may cost, relative to the bare app."""

BARE = "bare"
RATELIMIT = "ratelimit"
WITH_HEADERS = "ratelimit (headers=True)"
CONTROL = "bare (control)"

CONTENDERS: dict[str, str] = {
    BARE: "bench._inbound_app:bare",
    RATELIMIT: "bench._inbound_app:ratelimit",
    WITH_HEADERS: "bench._inbound_app:ratelimit_headers",
    CONTROL: "bench._inbound_app:bare",
}
"""Contender name -> the app its uvicorn process serves."""

_DESCRIPTIONS = {
    BARE: "Starlette(routes=[Route('/', PlainTextResponse('ok'))])",
    RATELIMIT: "the same + app.add_middleware(RateLimitMiddleware, limiter=RateLimiter('1000000/s')): "
    "client-address key, default options (headers=False)",
    WITH_HEADERS: "the same with headers=True (RateLimit fields on allowed responses)",
    CONTROL: "a second bare server: the noise floor",
}
_HELD = frozenset({RATELIMIT})
_REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        requests: Requests per contender per round.
        rounds: Measured rounds, each on freshly started servers (the reported value is the median over them).
        warmup: Untimed requests per server before its round (opens the keep-alive connection).
        block: Requests sent to one server before handing over to the next (see :func:`bench._harness.schedule`).
        max_seconds: No round starts after this long (the rounds done so far are reported; at least one runs).
    """

    requests: int
    rounds: int
    warmup: int
    block: int = 100
    max_seconds: float = 600.0


FULL = Settings(requests=500, rounds=21, warmup=100)
QUICK = Settings(requests=60, rounds=3, warmup=20, block=20, max_seconds=120.0)


# -- server CPU -------------------------------------------------------------------------------------------


def _schedstat_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid`` (the first field of each ``schedstat``)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{task}/schedstat"
        with contextlib.suppress(FileNotFoundError), open(path, encoding="ascii") as stats:  # a thread just ended
            total += int(stats.read().split()[0])
    return total


def _stat_ns(pid: int) -> int:
    """``utime + stime`` of ``pid`` (whole process, in clock ticks: coarse), as nanoseconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _cpu_clock(pid: int) -> tuple[str, Callable[[], int]] | None:
    """How to read the server's CPU: ``(source, read)``, or ``None`` where ``/proc`` offers neither."""
    for source, read in (("schedstat", _schedstat_ns), ("stat utime+stime", _stat_ns)):
        try:
            read(pid)
        except (OSError, ValueError, IndexError):
            continue
        return source, functools.partial(read, pid)
    return None


# -- rounds -----------------------------------------------------------------------------------------------


@dataclass
class _Server:
    client: httpx.Client
    url: str
    cpu: Callable[[], int]


class _Share:
    """One contender's share of a round: server CPU and wall time summed over its blocks."""

    __slots__ = ("errors", "requests", "server_ns", "wall_ns")

    def __init__(self) -> None:
        self.server_ns = 0
        self.wall_ns = 0
        self.requests = 0
        self.errors = 0

    def result(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "server_ns": self.server_ns,
            "server_us_per_request": round(self.server_ns / self.requests / 1000, 3),
            "wall_us_per_request": round(self.wall_ns / self.requests / 1000, 1),
        }


def _ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _block(server: _Server, count: int, into: _Share) -> None:
    client, url = server.client, server.url
    before = server.cpu()
    started = time.perf_counter_ns()
    for _ in range(count):
        if not _ok(client, url):
            into.errors += 1
    into.wall_ns += time.perf_counter_ns() - started
    into.server_ns += server.cpu() - before
    into.requests += count


def _check_served(name: str, server: _Server) -> None:
    """One request: the app answers ``ok``, with the ``RateLimit`` fields exactly when they are expected."""
    response = server.client.get(server.url)
    fields = {"ratelimit", "ratelimit-policy"} & set(response.headers.keys())
    expected = {"ratelimit", "ratelimit-policy"} if name == WITH_HEADERS else set()
    if response.status_code != 200 or response.text != "ok" or fields != expected:
        raise RuntimeError(
            f"inbound: {name} answered {response.status_code} {response.text[:80]!r} with RateLimit fields "
            f"{sorted(fields)} (expected 200 'ok' with {sorted(expected)}): it is not serving the app to measure"
        )


class _NoClock(Exception):
    """``/proc`` offers no way to read a server's CPU time here."""


Check = Callable[[str, _Server], None]
"""Raises unless the named contender's server serves the app to measure."""


def _round(
    index: int,
    settings: Settings,
    server_cpu: int | None,
    contenders: Mapping[str, str],
    headers: Mapping[str, str] | None,
    check: Check,
) -> tuple[dict[str, dict[str, Any]], str]:
    """One round on freshly started servers: every contender's share, and where the server CPU was read."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, _Server] = {}
        source = ""
        names = list(contenders)
        shift = index % len(names)  # no contender is always the first or the last process started
        for name in (*names[shift:], *names[:shift]):
            process = stack.enter_context(serve(contenders[name], server_cpu))
            clock = _cpu_clock(process.pid)
            if clock is None:
                raise _NoClock
            source, cpu = clock
            client = stack.enter_context(httpx.Client(trust_env=False, timeout=_REQUEST_TIMEOUT, headers=headers))
            servers[name] = _Server(client, process.url, cpu)
        for name, server in servers.items():
            check(name, server)
            _block(server, settings.warmup, _Share())
        shares = {name: _Share() for name in names}
        gc.collect()
        for name, size in schedule(names, settings.requests, settings.block, index):
            _block(servers[name], size, shares[name])
        return {name: share.result() for name, share in shares.items()}, source


def _measure(
    settings: Settings,
    server_cpu: int | None,
    contenders: Mapping[str, str] = CONTENDERS,
    *,
    headers: Mapping[str, str] | None = None,
    check: Check = _check_served,
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Every round's shares by contender (fewer rounds than asked if ``max_seconds`` ran out), and the clock.

    Args:
        settings: How much work.
        server_cpu: Pin the servers to this CPU (``None``: no pinning).
        contenders: Contender name -> the app its uvicorn process serves.
        headers: Sent with every request.
        check: Run once per server and round, before its warm-up.
    """
    deadline = time.monotonic() + settings.max_seconds
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    source = ""
    for index in range(settings.rounds):
        if index and time.monotonic() > deadline:
            break
        shares, source = _round(index, settings, server_cpu, contenders, headers, check)
        for name, result in shares.items():
            rounds[name].append(result)
    return rounds, source


# -- report -----------------------------------------------------------------------------------------------


def _summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    bare_rounds = [result["server_us_per_request"] for result in rounds[BARE]]
    bare = median(bare_rounds)
    contenders: dict[str, Any] = {}
    paired: dict[str, float] = {}
    for name, results in rounds.items():
        own = [result["server_us_per_request"] for result in results]
        cost = median(own)
        paired[name] = median([mine / base for mine, base in zip(own, bare_rounds, strict=True)])
        contenders[name] = {
            "held_to_target": name in _HELD,
            "server_us_per_request": round(cost, 2),
            "server_us_min_max": [min(own), max(own)],
            "ratio_vs_bare": round(cost / bare, 3),
            "added_us_vs_bare": round(cost - bare, 2),
            "ratio_paired_median": round(paired[name], 3),
            "added_us_paired_median": round(
                median([mine - base for mine, base in zip(own, bare_rounds, strict=True)]), 2
            ),
            "wall_us_per_request": round(median([result["wall_us_per_request"] for result in results]), 1),
            "errors": sum(result["errors"] for result in results),
            "rounds": results,
        }
    # Judged on the paired ratio: each round's servers ran side by side, while the machine's speed drifts from
    # one round to the next (the ratio of the medians is reported too).
    checks = {
        f"{name} <= {TARGET_RATIO}x {BARE}": paired[name] <= TARGET_RATIO for name in contenders if name in _HELD
    }
    control = contenders[CONTROL]
    return {
        "contenders": contenders,
        "checks": checks,
        "check_on": "ratio_paired_median",
        "noise_floor_us": max(abs(control["added_us_vs_bare"]), abs(control["added_us_paired_median"])),
        "noise_floor_ratio": round(
            max(abs(control["ratio_vs_bare"] - 1), abs(control["ratio_paired_median"] - 1)), 3
        ),
        "pass": all(checks.values()),
    }


def _print(result: dict[str, Any]) -> None:
    rows = []
    for name, summary in result["contenders"].items():
        low, high = summary["server_us_min_max"]
        rows.append(
            [
                name,
                f"{summary['server_us_per_request']:.1f}",
                f"{low:.0f}-{high:.0f}",
                f"{summary['ratio_vs_bare']:.3f}x",
                f"{summary['added_us_vs_bare']:+.1f}",
                f"{summary['ratio_paired_median']:.3f}x",
                f"{summary['added_us_paired_median']:+.1f}",
                f"{summary['wall_us_per_request']:.0f}",
                str(summary["errors"]),
            ]
        )
    headers = [
        "contender",
        "server µs/req",
        "rounds min-max",
        "vs bare",
        "added µs",
        "vs bare (paired)",
        "added (paired)",
        "wall µs/req",
        "errors",
    ]
    print(table(headers, rows))
    _print_noise_floor(result)
    for name, summary in result["contenders"].items():
        if summary["held_to_target"]:
            ok = result["checks"][f"{name} <= {TARGET_RATIO}x {BARE}"]
            ratio, added = summary["ratio_paired_median"], summary["added_us_paired_median"]
            print(
                f"{verdict(ok)}  inbound: {name} <= {TARGET_RATIO}x {BARE} "
                f"(paired median {ratio:.3f}x, {added:+.1f} µs)"
            )


def _print_noise_floor(result: dict[str, Any]) -> None:
    print(
        f"noise floor in this run (bare vs its control twin): {result['noise_floor_us']:.1f} µs, "
        f"{result['noise_floor_ratio'] * 100:.1f} %"
    )


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the inbound benchmark, print its table and verdict, and write ``inbound.json``.

    Args:
        quick: Few rounds of few requests (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds.
        requests: Override the requests per contender per round.
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.

    Raises:
        RuntimeError: A server did not start, or does not serve the app it should.
    """
    base = QUICK if quick else FULL
    settings = Settings(
        requests=requests or base.requests,
        rounds=rounds or base.rounds,
        warmup=base.warmup,
        block=min(base.block, requests or base.block),
        max_seconds=base.max_seconds,
    )
    began = time.perf_counter()
    missing = [name for name in ("uvicorn", "starlette") if importlib.util.find_spec(name) is None]
    if missing:
        return _skipped(quick, settings, f"not installed: {', '.join(missing)}", began, results_dir)
    client_cpu, server_cpu = pinning()
    print(
        f"inbound: sequential GETs to {len(CONTENDERS)} uvicorn servers on {HOST} (one process each, fresh every "
        f"round), {settings.rounds} rounds x {settings.requests} requests per server, taking turns every "
        f"{settings.block} requests; server on-CPU time"
    )
    try:
        with pinned(client_cpu):
            measured, source = _measure(settings, server_cpu)
    except _NoClock:
        return _skipped(quick, settings, "no /proc/<pid>/schedstat or /proc/<pid>/stat", began, results_dir)
    result = _summarise(measured)
    _print(result)
    payload: dict[str, Any] = {
        "benchmark": "inbound",
        "quick": quick,
        "target_ratio": TARGET_RATIO,
        "config": {
            "requests_per_round": settings.requests,
            "rounds": settings.rounds,
            "rounds_completed": len(measured[BARE]),
            "warmup_requests": settings.warmup,
            "block_requests": settings.block,
            "max_seconds": settings.max_seconds,
            "timer": f"server process on-CPU time ({source}) around every block",
            "order": "servers take turns every block of requests; the order rotates every block and round",
            "server": "uvicorn (h11, asyncio, lifespan off, no access log), one child process per contender, "
            "started afresh every round",
            "client": "one keep-alive httpx.Client per server, sequential GETs",
            "contenders": _DESCRIPTIONS,
            "held_to_target": sorted(_HELD),
        },
        "machine": machine_info(
            {
                "pinning": {"client_cpu": client_cpu, "server_cpu": server_cpu},
                "starlette": version("starlette"),
            }
        ),
        **result,
        "skipped": None,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("inbound", payload, results_dir)


def _skipped(
    quick: bool, settings: Settings, reason: str, began: float, results_dir: Path | None
) -> dict[str, Any]:
    print(f"SKIPPED  inbound: {reason}")
    payload: dict[str, Any] = {
        "benchmark": "inbound",
        "quick": quick,
        "target_ratio": TARGET_RATIO,
        "config": {"requests_per_round": settings.requests, "rounds": settings.rounds},
        "machine": machine_info(),
        "contenders": {},
        "checks": {},
        "skipped": reason,
        "pass": True,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("inbound", payload, results_dir)
