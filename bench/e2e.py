"""End to end: client CPU and latency per request to a real uvicorn upstream, for each way of adding retries.

The upstream (:mod:`bench._upstream`, a pure ASGI ``200 ok``) runs under uvicorn in a separate process, so its CPU
is not the client's; with two or more CPUs the client and the server are pinned to different ones. Every contender
sends sequential ``GET`` requests over one keep-alive connection; the retrying ones make up to 3 attempts on
transport errors and on 429/502/503/504 with short exponential backoff (built by :mod:`bench._contenders`):

* ``httpx``: a bare client, the baseline;
* ``connectivity (network)``: ``cx.transports.HTTPTransport()``, the network transport every connectivity stack
  here ends in, with no policy layer: the stacks' ``added over network`` column is what their layers cost;
* ``connectivity (full)``: ``cx.transport(timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()),
  telemetry=False, request_id=False)``: retries, a deadline over all attempts and a retry budget;
* ``connectivity (+breaker)``: the same plus a per-host circuit breaker and a bulkhead;
* ``connectivity (+balancer)``: the full stack plus load balancing over one discovered endpoint (the upstream),
  its requests addressed to the service (``http://upstream/``);
* ``connectivity (defaults)``: the full stack as built by default, with tracing (no SDK) and request ids: shown,
  not held to the ratio (tracing's own budget is checked in-process by :mod:`bench.tracing`);
* ``connectivity (retry)``: ``cx.transports.RetryTransport(cx.transports.HTTPTransport(), cx.Retry())``: retries
  only, the same job as httpx-retries;
* ``httpx-retries``: ``httpx_retries.RetryTransport`` with ``Retry(total=2, status_forcelist=...)``;
* ``stamina``: a bare client, each ``get`` wrapped in ``@stamina.retry(on=httpx.HTTPError, attempts=3)``;
* ``httpx (control)``: a second bare client, measured like the others: how far it lands from ``httpx`` is the
  noise floor of that run, printed under each table.

Each client kind (``AsyncClient`` on asyncio, ``Client``) runs ``rounds`` rounds of ``requests`` requests per
contender after a warm-up, the contenders taking turns every ``block`` requests so that noise from the rest of the
machine lands on all of them alike. Client CPU is :func:`time.process_time_ns` summed over a contender's blocks and
divided by its requests; latency is wall time per request. Reported values are medians over the rounds. A
round's contenders share its noise (their blocks alternate), so the ratios are judged *paired*: the median over
the rounds of each round's ratio to bare httpx in that same round (``cpu_ratio_paired_median``); the unpaired
ratio of the medians is reported beside it.

The targets: the full stack and the breaker stack <= :data:`TARGET_RATIO` x bare httpx client CPU, the balanced
stack <= :data:`BALANCED_TARGET_RATIO` x, the full stack cheaper than stamina;
``connectivity (retry)`` cheaper than httpx-retries, which does the same job. :mod:`bench.instructions` counts
the same work in instructions, which machine noise does not move.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx

from bench._contenders import (
    BALANCED_STACK,
    BARE,
    BREAKER_STACK,
    CONTENDERS,
    CONTROL,
    DESCRIPTIONS,
    FULL_STACK,
    HTTPX_RETRIES,
    NETWORK,
    RETRY_ONLY,
    STAMINA,
    AsyncGet,
    SyncGet,
    async_get,
    available,
    request_url,
    sync_get,
)
from bench._harness import machine_info, median, percentile, pinned, pinning, publish, schedule, table, verdict

__all__ = [
    "BALANCED_TARGET_RATIO",
    "FULL",
    "QUICK",
    "TARGET_RATIO",
    "Server",
    "Settings",
    "run",
    "serve",
    "upstream",
]

TARGET_RATIO = 1.02
"""Most client CPU the connectivity stack may cost, relative to a bare httpx client."""
BALANCED_TARGET_RATIO = 1.03
"""Most client CPU the stack with load balancing may cost, relative to a bare httpx client."""

HOST = "127.0.0.1"
_T = TypeVar("_T")
_ROOT = Path(__file__).resolve().parent.parent
_STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        requests: Requests per contender per round.
        rounds: Measured rounds (the reported value is the median over them).
        warmup: Untimed requests per contender before the first round (opens the keep-alive connection).
        block: Requests a contender sends before handing over to the next (see :func:`bench._harness.schedule`).
        processes: Fresh client processes per client kind, each running ``rounds`` rounds (1: the rounds run
            in this process). Where an interpreter happens to lay out its objects and hash its strings moves a
            stack's cost by several µs from one process to the next, more than a run's rounds move it; pooling
            the rounds of several processes measures what a process pays on average.
    """

    requests: int
    rounds: int
    warmup: int
    block: int = 10
    processes: int = 1


FULL = Settings(requests=500, rounds=7, warmup=100, processes=3)
QUICK = Settings(requests=40, rounds=5, warmup=10, block=5)


# -- the upstream process -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """Poll a TCP connect until it succeeds (``True``), the process dies or the deadline passes (``False``)."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass(frozen=True)
class Server:
    """A uvicorn child process started by :func:`serve`.

    Attributes:
        url: Its root URL on the loopback interface.
        pid: Its process id (uvicorn runs the app in this process: no workers, no reloader).
    """

    url: str
    pid: int


@contextlib.contextmanager
def serve(app: str, cpu: int | None = None, *, attempts: int = 3) -> Iterator[Server]:
    """Run the ASGI app ``app`` (``"module:attribute"``, importable from the repository root) under uvicorn in a
    child process on a free loopback port; yields the running :class:`Server`.

    Args:
        app: The app to serve, as uvicorn names it.
        cpu: Pin the server process to this CPU (``None``: no pinning).
        attempts: Ports to try (another process may take a free port between our check and uvicorn's bind).

    Raises:
        RuntimeError: The server did not accept connections within the startup deadline.
    """
    failure = ""
    for _ in range(attempts):
        port = _free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--app-dir",
            str(_ROOT),
            "--host",
            HOST,
            "--port",
            str(port),
            "--http",
            "h11",
            "--loop",
            "asyncio",
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
            # Contenders wait for each other between rounds: keep their idle connections open meanwhile.
            "--timeout-keep-alive",
            "600",
        ]
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                if cpu is not None:
                    os.sched_setaffinity(process.pid, {cpu})
                if _wait_ready(process, port, time.monotonic() + _STARTUP_TIMEOUT):
                    yield Server(f"http://{HOST}:{port}/", process.pid)
                    return
                stderr.seek(0)
                failure = stderr.read().decode(errors="replace")[-2000:]
            finally:
                _stop(process)
    raise RuntimeError(f"the uvicorn upstream {app} did not start; last error output:\n{failure}")


@contextlib.contextmanager
def upstream(cpu: int | None = None, *, attempts: int = 3) -> Iterator[str]:
    """Run :mod:`bench._upstream` under uvicorn in a child process on a free loopback port; yields its URL.

    Args:
        cpu: Pin the server process to this CPU (``None``: no pinning).
        attempts: Ports to try (another process may take a free port between our check and uvicorn's bind).

    Raises:
        RuntimeError: The server did not accept connections within the startup deadline.
    """
    with serve("bench._upstream:app", cpu, attempts=attempts) as server:
        yield server.url


# -- contenders -------------------------------------------------------------------------------------------


def _sent_to(get: Callable[[str], _T], target: str) -> Callable[[str], _T]:
    """``get`` that ignores the URL it is called with and requests ``target`` (the balanced contender's service):
    the rounds call every contender with the upstream's URL."""

    def call(_url: str) -> _T:
        return get(target)

    return call


async def _async_contenders(stack: contextlib.AsyncExitStack, url: str) -> dict[str, AsyncGet]:
    calls: dict[str, AsyncGet] = {}
    for name in CONTENDERS:
        if available(name):
            get = await async_get(name, stack, url)
            target = request_url(name, url)
            calls[name] = get if target == url else _sent_to(get, target)
    return calls


def _sync_contenders(stack: contextlib.ExitStack, url: str) -> dict[str, SyncGet]:
    calls: dict[str, SyncGet] = {}
    for name in CONTENDERS:
        if available(name):
            get = sync_get(name, stack, url)
            target = request_url(name, url)
            calls[name] = get if target == url else _sent_to(get, target)
    return calls


# -- rounds -----------------------------------------------------------------------------------------------


class _Round:
    """One contender's share of a round: CPU summed over its blocks, and every request's latency."""

    __slots__ = ("cpu_ns", "errors", "latencies")

    def __init__(self) -> None:
        self.cpu_ns = 0
        self.errors = 0
        self.latencies: list[int] = []

    def result(self) -> dict[str, Any]:
        count = len(self.latencies)
        return {
            "requests": count,
            "errors": self.errors,
            "cpu_ns": self.cpu_ns,
            "cpu_us_per_request": round(self.cpu_ns / count / 1000, 2),
            "p50_us": round(percentile(self.latencies, 50) / 1000, 1),
            "p99_us": round(percentile(self.latencies, 99) / 1000, 1),
        }


def _sync_block(call: SyncGet, url: str, count: int, into: _Round) -> None:
    latencies = into.latencies
    clock = time.perf_counter_ns
    cpu = time.process_time_ns()
    for _ in range(count):
        start = clock()
        try:
            if call(url).status_code != 200:
                into.errors += 1
        except httpx.HTTPError:
            into.errors += 1
        latencies.append(clock() - start)
    into.cpu_ns += time.process_time_ns() - cpu


async def _async_block(call: AsyncGet, url: str, count: int, into: _Round) -> None:
    latencies = into.latencies
    clock = time.perf_counter_ns
    cpu = time.process_time_ns()
    for _ in range(count):
        start = clock()
        try:
            if (await call(url)).status_code != 200:
                into.errors += 1
        except httpx.HTTPError:
            into.errors += 1
        latencies.append(clock() - start)
    into.cpu_ns += time.process_time_ns() - cpu


def _sync_rounds(calls: Mapping[str, SyncGet], url: str, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every contender's share of every round, by contender: ``calls`` take turns every ``block`` requests."""
    names = list(calls)
    for call in calls.values():
        _sync_block(call, url, settings.warmup, _Round())
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(settings.rounds):
        shares = {name: _Round() for name in names}
        gc.collect()
        for name, size in schedule(names, settings.requests, settings.block, index):
            _sync_block(calls[name], url, size, shares[name])
        for name in names:
            measured[name].append(shares[name].result())
    return measured


async def _async_rounds(
    calls: Mapping[str, AsyncGet], url: str, settings: Settings
) -> dict[str, list[dict[str, Any]]]:
    """:func:`_sync_rounds` for ``AsyncClient`` contenders."""
    names = list(calls)
    for call in calls.values():
        await _async_block(call, url, settings.warmup, _Round())
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(settings.rounds):
        shares = {name: _Round() for name in names}
        gc.collect()
        for name, size in schedule(names, settings.requests, settings.block, index):
            await _async_block(calls[name], url, size, shares[name])
        for name in names:
            measured[name].append(shares[name].result())
    return measured


def _sync_mode(url: str, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    with contextlib.ExitStack() as stack:
        return _sync_rounds(_sync_contenders(stack, url), url, settings)


def _async_mode(url: str, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    async def measure() -> dict[str, list[dict[str, Any]]]:
        async with contextlib.AsyncExitStack() as stack:
            return await _async_rounds(await _async_contenders(stack, url), url, settings)

    return anyio.run(measure, backend="asyncio")


_MODES: dict[str, Callable[[str, Settings], dict[str, list[dict[str, Any]]]]] = {
    "async": _async_mode,
    "sync": _sync_mode,
}
_WORKER_TIMEOUT = 1800.0


def _in_process(mode: str, url: str, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """One client process's rounds, run in a fresh interpreter (``python -m bench.e2e MODE URL ...``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "bench.e2e", mode, url]
    command += [str(value) for value in (settings.requests, settings.rounds, settings.warmup, settings.block)]
    completed = subprocess.run(
        command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=_WORKER_TIMEOUT, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"e2e {mode} client process failed ({completed.returncode}):\n{completed.stderr[-2000:]}"
        )
    rounds: dict[str, list[dict[str, Any]]] = json.loads(completed.stdout)
    return rounds


def _measure(mode: str, url: str, settings: Settings) -> tuple[dict[str, list[dict[str, Any]]], list[int]]:
    """Every round of ``mode``, pooled over ``settings.processes`` processes, and each round's process."""
    if settings.processes <= 1:
        rounds = _MODES[mode](url, settings)
        return rounds, [0] * settings.rounds
    pooled: dict[str, list[dict[str, Any]]] = {}
    origin: list[int] = []
    for process in range(settings.processes):
        for name, results in _in_process(mode, url, settings).items():
            pooled.setdefault(name, []).extend(results)
        origin.extend([process] * settings.rounds)
    return pooled, origin


def _worker(argv: Sequence[str]) -> int:
    """``python -m bench.e2e MODE URL REQUESTS ROUNDS WARMUP BLOCK``: print one process's rounds as JSON."""
    mode, url, *numbers = argv
    requests, rounds, warmup, block = (int(number) for number in numbers)
    settings = Settings(requests=requests, rounds=rounds, warmup=warmup, block=block)
    json.dump(_MODES[mode](url, settings), sys.stdout)
    return 0


# -- report -----------------------------------------------------------------------------------------------


def _summarise(rounds: dict[str, list[dict[str, Any]]], origin: Sequence[int] | None = None) -> dict[str, Any]:
    contenders: dict[str, Any] = {}
    for name, results in rounds.items():
        cpu = [result["cpu_us_per_request"] for result in results]
        contenders[name] = {
            "cpu_us_per_request": round(median(cpu), 2),
            "cpu_us_min_max": [min(cpu), max(cpu)],
            "p50_us": round(median([result["p50_us"] for result in results]), 1),
            "p99_us": round(median([result["p99_us"] for result in results]), 1),
            "errors": sum(result["errors"] for result in results),
            "rounds": results,
        }
    bare = contenders[BARE]["cpu_us_per_request"]
    bare_rounds = [result["cpu_us_per_request"] for result in rounds[BARE]]
    paired: dict[str, float] = {}
    for name, summary in contenders.items():
        summary["cpu_ratio_vs_httpx"] = round(summary["cpu_us_per_request"] / bare, 3)
        summary["cpu_added_us_vs_httpx"] = round(summary["cpu_us_per_request"] - bare, 2)
        own = [result["cpu_us_per_request"] for result in rounds[name]]
        summary["cpu_added_us_paired_median"] = round(
            median([mine - base for mine, base in zip(own, bare_rounds, strict=True)]), 2
        )
        if NETWORK in rounds:  # what the policy layers add over the network transport they end in
            network_rounds = [result["cpu_us_per_request"] for result in rounds[NETWORK]]
            summary["cpu_added_us_over_network_paired_median"] = round(
                median([mine - base for mine, base in zip(own, network_rounds, strict=True)]), 2
            )
        ratios = [mine / base for mine, base in zip(own, bare_rounds, strict=True)]
        paired[name] = median(ratios)
        summary["cpu_ratio_paired_median"] = round(paired[name], 4)
        if origin is not None and len(set(origin)) > 1:
            summary["cpu_ratio_paired_median_by_process"] = [
                round(median([ratio for ratio, where in zip(ratios, origin, strict=True) if where == process]), 4)
                for process in sorted(set(origin))
            ]

    def cost(name: str) -> float:
        return paired[name]  # unrounded

    # The budget and stamina (which wraps a whole call, deadline included) are set against the full stack;
    # httpx-retries against connectivity's retry layer alone, which does the same job (no budget, no deadline).
    # The resilience stacks are held to the ratio; the defaults row (tracing with no SDK, request ids) is shown
    # for what every user pays, with tracing's own budget checked in-process by `bench.tracing`.
    checks = {
        f"{name} <= {TARGET_RATIO}x {BARE} (paired)": cost(name) <= TARGET_RATIO
        for name in (FULL_STACK, BREAKER_STACK)
        if name in contenders
    }
    if BALANCED_STACK in contenders:
        checks[f"{BALANCED_STACK} <= {BALANCED_TARGET_RATIO}x {BARE} (paired)"] = (
            cost(BALANCED_STACK) <= BALANCED_TARGET_RATIO
        )
    if RETRY_ONLY in contenders and HTTPX_RETRIES in contenders:
        checks[f"{RETRY_ONLY} < {HTTPX_RETRIES} (same job)"] = cost(RETRY_ONLY) < cost(HTTPX_RETRIES)
    if STAMINA in contenders:
        checks[f"{FULL_STACK} < {STAMINA}"] = cost(FULL_STACK) < cost(STAMINA)
    result: dict[str, Any] = {"contenders": contenders, "checks": checks, "pass": all(checks.values())}
    if CONTROL in contenders:
        control = contenders[CONTROL]
        result["noise_floor_us"] = max(
            abs(control["cpu_added_us_vs_httpx"]), abs(control["cpu_added_us_paired_median"])
        )
    return result


def _over_network(summary: dict[str, Any]) -> str:
    added = summary.get("cpu_added_us_over_network_paired_median")
    return "" if added is None else f"{added:+.1f}"


def _print_mode(mode: str, result: dict[str, Any]) -> None:
    rows = []
    for name, summary in result["contenders"].items():
        low, high = summary["cpu_us_min_max"]
        rows.append(
            [
                name,
                f"{summary['cpu_us_per_request']:.1f}",
                f"{low:.0f}-{high:.0f}",
                f"{summary['cpu_ratio_vs_httpx']:.3f}x",
                f"{summary['cpu_added_us_vs_httpx']:+.1f}",
                f"{summary['cpu_added_us_paired_median']:+.1f}",
                f"{summary['cpu_ratio_paired_median']:.3f}x",
                _over_network(summary),
                f"{summary['p50_us']:.0f}",
                f"{summary['p99_us']:.0f}",
                str(summary["errors"]),
            ]
        )
    print(f"\n{mode}")
    print(
        table(
            [
                "contender",
                "CPU µs/req",
                "rounds min-max",
                "CPU vs httpx",
                "added µs",
                "added (paired)",
                "ratio (paired)",
                "over network µs",
                "p50 µs",
                "p99 µs",
                "errors",
            ],
            rows,
        )
    )
    if "noise_floor_us" in result:
        print(f"noise floor in this run (httpx vs its control twin): {result['noise_floor_us']:.1f} µs")
    for check, ok in result["checks"].items():
        print(f"{verdict(ok)}  e2e {mode}: {check}")


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    processes: int | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the e2e benchmark, print its tables and verdicts, and write ``e2e.json``.

    Args:
        quick: Few rounds of few requests (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds (per client process).
        requests: Override the requests per contender per round.
        processes: Override the number of client processes per client kind.
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.

    Raises:
        SystemExit: ``sniffio`` is missing (httpcore would then retry importing it on every request, adding
            hundreds of µs and making the comparison meaningless).
    """
    try:
        import sniffio  # noqa: F401
    except ImportError:
        raise SystemExit(
            "e2e: sniffio is not installed; httpcore is ~400 µs slower per request without it"
        ) from None
    base = QUICK if quick else FULL
    settings = Settings(
        requests=requests or base.requests,
        rounds=rounds or base.rounds,
        warmup=base.warmup,
        block=min(base.block, requests or base.block),
        processes=processes or base.processes,
    )
    client_cpu, server_cpu = pinning()
    began = time.perf_counter()
    where = f"in each of {settings.processes} client processes" if settings.processes > 1 else "in this process"
    print(
        f"e2e: sequential GETs to uvicorn on {HOST} (separate process), {settings.rounds} rounds x "
        f"{settings.requests} requests per contender {where}, taking turns every {settings.block} requests; "
        "client CPU (process_time) and wall latency"
    )
    modes: dict[str, Any] = {}
    with upstream(server_cpu) as url, pinned(client_cpu):
        modes["async"] = _summarise(*_measure("async", url, settings))
        _print_mode("httpx.AsyncClient (asyncio)", modes["async"])
        modes["sync"] = _summarise(*_measure("sync", url, settings))
        _print_mode("httpx.Client", modes["sync"])
    payload: dict[str, Any] = {
        "benchmark": "e2e",
        "quick": quick,
        "target_ratio": TARGET_RATIO,
        "balanced_target_ratio": BALANCED_TARGET_RATIO,
        "config": {
            "requests_per_round": settings.requests,
            "rounds": settings.rounds,
            "client_processes": settings.processes,
            "warmup_requests": settings.warmup,
            "timer": "time.process_time_ns (client process), time.perf_counter_ns per request",
            "block_requests": settings.block,
            "order": "contenders take turns every block of requests; the order rotates every block and round",
            "upstream": "uvicorn (h11, asyncio) in a child process, pure ASGI 200 'ok'",
            "contenders": DESCRIPTIONS,
        },
        "machine": machine_info({"pinning": {"client_cpu": client_cpu, "server_cpu": server_cpu}}),
        "modes": modes,
        "pass": all(mode["pass"] for mode in modes.values()),
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("e2e", payload, results_dir)


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
