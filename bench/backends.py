"""Network backends: requests/s, client CPU and latency under concurrency, per backend, bare and under the stack.

The upstream is nginx answering ``return 200 "ok"`` in a child process (one process, ``master_process off``, no
access log), so that it costs next to nothing and never limits the client. A second nginx process is a
*sidecar*: it ``proxy_pass``-es to the upstream over keep-alive connections, as a mesh proxy next to the client
would. Both are pinned to one CPU and this process, the client, to another (when at least two are usable).
Contenders, all on asyncio in this one process:

* ``httpx``: ``httpx.AsyncClient()``, httpx's own httpcore pool: *default httpx*, the baseline of the targets;
* ``httpx + stack``: ``cx.transport(timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()),
  breaker=cx.CircuitBreaker(), telemetry=False, request_id=False)``: the full stack on the httpcore backend;
* ``aiohttp backend`` / ``aiohttp + stack``: ``cx.transports.AiohttpTransport()`` bare, and the same stack with
  ``backend="aiohttp"``;
* ``auto backend`` / ``auto + stack``: ``cx.transports.AutoTransport()`` bare, and the same stack with
  ``backend="auto"`` (which picks aiohttp on asyncio; the run checks that it did);
* ``raw aiohttp``: an ``aiohttp.ClientSession`` used directly, body read: the floor any httpx adapter sits on;
* ``httpx via sidecar``: ``httpx.AsyncClient()`` sending through the sidecar: the client keeps httpx's cost and the
  sidecar spends its own CPU on the hop, reported as the *sidecar hop proxy CPU*;
* ``httpx2`` (when httpx2 is installed, as in the ``bench`` group): ``httpx2.AsyncClient()`` with its own httpcore2
  pool, for reference. connectivity picks one library per process (httpx here), so the stack on httpx2 is not
  measured in this run.

Every client gets the same pool size (``max_connections`` = ``max_keepalive_connections`` = :data:`POOL_SIZE`, the
aiohttp connector's ``limit`` likewise), so the pool is never the variable. At each concurrency ``c`` of
:data:`LEVELS` a contender runs a closed loop: ``c`` tasks each sending ``GET /`` as soon as their previous one
returned, until ``requests`` requests were sent (or ``run_seconds`` passed). Requests/s is requests over wall time,
client CPU per request is :func:`time.process_time_ns` of this process over requests, latency is wall time per
request; the nginx processes' on-CPU time comes from ``/proc/<pid>/task/*/schedstat``. At ``c = 1`` the contenders
take turns every ``block`` requests (see :func:`bench._harness.schedule`), so machine noise lands on all alike (the
stack's overhead is judged there); at higher ``c`` each contender runs its whole share in one go after a warm-up
that opens its ``c`` connections, since a closed loop needs time to ramp up and drain. The order rotates every
round; reported values are medians over the rounds.

Targets, with the full stack on, against default httpx, in the same run:

* ``auto + stack`` >= :data:`RPS_TARGET` x the requests/s of ``httpx`` at ``c =`` :data:`RPS_LEVEL`;
* ``auto + stack`` p99 <= :data:`P99_TARGET` x ``httpx``'s at ``c =`` :data:`P99_LEVEL`;
* the stack's own overhead unchanged: the client CPU it adds on aiohttp (``auto + stack`` - ``aiohttp backend``)
  <= what it adds on httpcore (``httpx + stack`` - ``httpx``) + :data:`STACK_ALLOWANCE_US` at ``c = 1``, each the
  median over rounds of the per-round difference.

nginx is a system binary: without it the benchmark is skipped with a note (``pass`` stays true), and only
``python -m bench --strict`` turns that into a failure; likewise without the ``fast`` extra (httpx-aiohttp).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import anyio
import httpx

import connectivity as cx
from bench._harness import (
    machine_info,
    median,
    percentile,
    pinned,
    pinning,
    publish,
    schedule,
    table,
    verdict,
    version,
    write_results,
)
from bench.e2e import HOST, _free_port, _stop, _wait_ready
from bench.inbound import _cpu_clock

__all__ = [
    "CONTENDERS",
    "FULL",
    "HTTPX2",
    "LEVELS",
    "P99_LEVEL",
    "P99_TARGET",
    "POOL_SIZE",
    "QUICK",
    "RPS_LEVEL",
    "RPS_TARGET",
    "STACK_ALLOWANCE_US",
    "Settings",
    "contenders",
    "find_nginx",
    "run",
]

LEVELS = (1, 8, 32, 64)
"""The concurrencies measured: tasks sending at once from one client."""
RPS_TARGET = 2.0
"""Least requests/s of ``auto + stack``, relative to default httpx, at :data:`RPS_LEVEL`."""
RPS_LEVEL = 32
P99_TARGET = 0.2
"""Most p99 latency of ``auto + stack``, relative to default httpx, at :data:`P99_LEVEL`."""
P99_LEVEL = 64
STACK_ALLOWANCE_US = 10.0
"""Noise allowance (µs/request) when comparing the stack's added CPU on aiohttp with that on httpcore."""
POOL_SIZE = max(100, *LEVELS)
"""Connections every contender may open and keep alive: above the highest concurrency."""

HTTPX = "httpx"
HTTPX_STACK = "httpx + stack"
AIOHTTP = "aiohttp backend"
AIOHTTP_STACK = "aiohttp + stack"
AUTO = "auto backend"
AUTO_STACK = "auto + stack"
RAW_AIOHTTP = "raw aiohttp"
SIDECAR = "httpx via sidecar"
HTTPX2 = "httpx2"
CONTENDERS = (HTTPX, HTTPX_STACK, AIOHTTP, AIOHTTP_STACK, AUTO, AUTO_STACK, RAW_AIOHTTP, SIDECAR)
"""The contenders every run has; :func:`contenders` adds :data:`HTTPX2` where httpx2 is installed."""


def contenders() -> tuple[str, ...]:
    """This run's contenders: :data:`CONTENDERS`, and ``httpx2`` when it can be imported."""
    return (*CONTENDERS, HTTPX2) if importlib.util.find_spec("httpx2") is not None else CONTENDERS


_STACK = "timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()), breaker=cx.CircuitBreaker(), "
_DESCRIPTIONS = {
    HTTPX: "httpx.AsyncClient(): httpx's own httpcore pool (default httpx)",
    HTTPX_STACK: f"httpx.AsyncClient(transport=cx.transport({_STACK}telemetry=False, request_id=False))",
    AIOHTTP: "httpx.AsyncClient(transport=cx.transports.AiohttpTransport())",
    AIOHTTP_STACK: "the full stack (as httpx + stack) with backend='aiohttp'",
    AUTO: "httpx.AsyncClient(transport=cx.transports.AutoTransport())",
    AUTO_STACK: "the full stack (as httpx + stack) with backend='auto'",
    RAW_AIOHTTP: "aiohttp.ClientSession() used directly, body read",
    SIDECAR: "httpx.AsyncClient() sending through the sidecar nginx (proxy_pass, keep-alive to the upstream)",
    HTTPX2: "httpx2.AsyncClient(): httpx2's own httpcore2 pool (when httpx2 is installed)",
}
_BACKENDS = {"httpcore": (HTTPX, HTTPX_STACK), "aiohttp": (AIOHTTP, AIOHTTP_STACK), "auto": (AUTO, AUTO_STACK)}
"""Backend -> (bare, under the stack)."""
_CHECKED_PAIRS = {"httpcore": (HTTPX, HTTPX_STACK), "aiohttp": (AIOHTTP, AUTO_STACK)}
"""The stack's added CPU compared by the overhead check: (bare, under the stack) for each side."""

_STARTUP_TIMEOUT = 20.0
_REQUEST_TIMEOUT = 10.0
_GRACE = 15.0
"""Seconds a run may take past ``run_seconds`` for the requests in flight before it is cancelled."""
_NGINX_PLACES = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        requests: Requests per contender per round at every concurrency above 1.
        single: Requests per contender per round at concurrency 1.
        rounds: Measured rounds (the reported values are medians over them).
        block: At concurrency 1, requests a contender sends before handing over to the next.
        run_seconds: No request of one contender's run starts after this long.
        max_seconds: No round starts after this long (at least one runs).
    """

    requests: int
    single: int
    rounds: int
    block: int = 50
    run_seconds: float = 60.0
    max_seconds: float = 900.0


FULL = Settings(requests=2000, single=1000, rounds=3)
QUICK = Settings(requests=200, single=100, rounds=2, block=25, run_seconds=10.0, max_seconds=120.0)


# -- nginx ------------------------------------------------------------------------------------------------


def find_nginx() -> str | None:
    """The nginx binary: on ``PATH``, or in a usual sbin directory (often not on an unprivileged ``PATH``)."""
    search = os.pathsep.join(filter(None, [os.environ.get("PATH"), *_NGINX_PLACES]))
    return shutil.which("nginx", path=search)


def _nginx_version(binary: str) -> str | None:
    try:
        completed = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"nginx/(\d+(?:\.\d+)+)", completed.stderr + completed.stdout)
    return match.group(1) if match else None


def _config(directory: Path, name: str, body: str) -> str:
    """A whole nginx configuration: one foreground process, every file it writes in ``directory``."""
    paths = {
        f"{kind}_temp_path": f'"{directory / f"{name}-{kind}"}"'
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    temp = "\n".join(f"    {directive} {path};" for directive, path in paths.items())
    return f"""daemon off;
master_process off;
worker_processes 1;
pid "{directory / f"{name}.pid"}";
error_log "{directory / f"{name}-error.log"}" warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp}
    keepalive_timeout 600s;
    keepalive_requests 1000000;
{body}
}}
"""


def _upstream_body(port: int) -> str:
    return f"""    server {{
        listen {HOST}:{port};
        location / {{
            return 200 "ok";
        }}
    }}"""


def _sidecar_body(upstream_port: int) -> Callable[[int], str]:
    def body(port: int) -> str:
        return f"""    upstream app {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""

    return body


class _NginxError(Exception):
    """nginx rejected its configuration or did not start."""


@dataclass(frozen=True)
class _Nginx:
    url: str
    port: int
    pid: int
    cpu: Callable[[], int]
    clock: str


def _version_at_least(version: str | None, wanted: tuple[int, ...]) -> bool:
    if version is None:
        return False
    return tuple(int(part) for part in version.split(".")) >= wanted


@contextlib.contextmanager
def _nginx(
    binary: str, directory: Path, name: str, body: Callable[[int], str], cpu: int | None, *, attempts: int = 3
) -> Iterator[_Nginx]:
    """Run nginx with the server block ``body(port)`` on a free loopback port, pinned to ``cpu``.

    Raises:
        _NginxError: ``nginx -t`` rejected the configuration, or nginx did not accept connections in time.
    """
    # -e (1.19.5+) sends the messages of start-up, before the configuration is read, to our directory too.
    early_log = (
        ["-e", str(directory / f"{name}-error.log")]
        if _version_at_least(_nginx_version(binary), (1, 19, 5))
        else []
    )
    failure = ""
    for _ in range(attempts):
        port = _free_port()
        conf = directory / f"{name}.conf"
        conf.write_text(_config(directory, name, body(port)), encoding="utf-8")
        command = [binary, "-p", str(directory), *early_log, "-c", str(conf)]
        checked = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False)
        if checked.returncode != 0:
            output = (checked.stderr + checked.stdout)[-1500:]
            raise _NginxError(
                f"nginx -t rejected the {name} configuration (status {checked.returncode}):\n{output}"
            )
        with open(directory / f"{name}-stderr.log", "wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            if cpu is not None:
                os.sched_setaffinity(process.pid, {cpu})
            if _wait_ready(process, port, time.monotonic() + _STARTUP_TIMEOUT):
                clock = _cpu_clock(process.pid)
                if clock is None:
                    raise _NoClock
                source, read = clock
                yield _Nginx(f"http://{HOST}:{port}/", port, process.pid, read, source)
                return
            logs = [directory / f"{name}-stderr.log", directory / f"{name}-error.log"]
            failure = "".join(path.read_text(errors="replace") for path in logs if path.exists())[-2000:]
        finally:
            _stop(process)
    raise _NginxError(f"nginx ({name}) did not start; last error output:\n{failure}")


class _NoClock(Exception):
    """``/proc`` offers no way to read nginx's CPU time here."""


# -- contenders -------------------------------------------------------------------------------------------

Get = Callable[[str], Awaitable[bool]]
"""A contender: send ``GET url``, read the body, say whether it was a 200."""


def _limits() -> httpx.Limits:
    return httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)


def _transport(name: str) -> httpx.AsyncBaseTransport | None:
    """The transport of an httpx contender (``None``: httpx's own)."""
    stacked = {HTTPX_STACK: "httpcore", AIOHTTP_STACK: "aiohttp", AUTO_STACK: "auto"}
    if name in stacked:
        return cx.transport(
            timeout=cx.Timeout(total=10.0),
            retry=cx.Retry(budget=cx.RetryBudget()),
            breaker=cx.CircuitBreaker(),
            telemetry=False,
            request_id=False,
            backend=stacked[name],  # type: ignore[arg-type]
            limits=_limits(),
        )
    if name == AIOHTTP:
        return cx.transports.AiohttpTransport(limits=_limits())
    if name == AUTO:
        return cx.transports.AutoTransport(limits=_limits())
    return None


def _network(transport: Any) -> Any:
    """The innermost transport under the stack's layers."""
    while isinstance(transport, cx.transports.Layer):
        transport = transport.inner
    return transport


async def _contender(name: str, stack: contextlib.AsyncExitStack) -> tuple[Get, Any]:
    """Contender ``name``'s ``get`` on a new client that ``stack`` closes, and its network transport."""
    if name == RAW_AIOHTTP:
        import aiohttp

        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_SIZE),
                timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT),
            )
        )

        async def raw_get(url: str) -> bool:
            async with session.get(url) as response:
                await response.read()
                return response.status == 200

        return raw_get, None
    if name == HTTPX2:
        import httpx2

        limits = httpx2.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
        client2 = await stack.enter_async_context(
            httpx2.AsyncClient(limits=limits, trust_env=False, timeout=_REQUEST_TIMEOUT)
        )

        async def get2(url: str) -> bool:
            return (await client2.get(url)).status_code == 200

        return get2, None
    transport = _transport(name)
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, limits=_limits(), trust_env=False, timeout=_REQUEST_TIMEOUT)
    )

    async def get(url: str) -> bool:
        return (await client.get(url)).status_code == 200

    return get, _network(transport)


# -- runs -------------------------------------------------------------------------------------------------


class _Share:
    """One contender's share of a round at one concurrency, summed over its runs."""

    __slots__ = ("cpu_ns", "errors", "first_error", "latencies", "sidecar_ns", "upstream_ns", "wall_ns")

    def __init__(self) -> None:
        self.cpu_ns = 0
        self.wall_ns = 0
        self.upstream_ns = 0
        self.sidecar_ns = 0
        self.errors = 0
        self.first_error: str | None = None
        self.latencies: list[int] = []

    def result(self) -> dict[str, Any]:
        count = max(1, len(self.latencies))
        return {
            "requests": len(self.latencies),
            "errors": self.errors,
            "first_error": self.first_error,
            "requests_per_s": round(len(self.latencies) / (self.wall_ns / 1e9), 1) if self.wall_ns else 0.0,
            "cpu_us_per_request": round(self.cpu_ns / count / 1000, 1),
            "p50_ms": round(percentile(self.latencies, 50) / 1e6, 3) if self.latencies else None,
            "p99_ms": round(percentile(self.latencies, 99) / 1e6, 3) if self.latencies else None,
            "upstream_cpu_us_per_request": round(self.upstream_ns / count / 1000, 1),
            "sidecar_cpu_us_per_request": round(self.sidecar_ns / count / 1000, 1),
        }


async def _run(
    get: Get, url: str, count: int, concurrency: int, seconds: float, servers: tuple[_Nginx, _Nginx], into: _Share
) -> None:
    """A closed loop: ``concurrency`` tasks send ``count`` requests in all, none starting after ``seconds``."""
    remaining = count
    deadline = time.monotonic() + seconds
    latencies = into.latencies
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            start = clock()
            try:
                ok = await get(url)
            except Exception as error:  # a failed request is counted, whatever its library calls it
                ok = False
                if into.first_error is None:
                    into.first_error = f"{type(error).__name__}: {error}"[:300]
            latencies.append(clock() - start)
            if not ok:
                into.errors += 1

    upstream, sidecar = servers
    upstream_before, sidecar_before = upstream.cpu(), sidecar.cpu()
    wall = clock()
    cpu = time.process_time_ns()
    with anyio.move_on_after(seconds + _GRACE):
        async with anyio.create_task_group() as group:
            for _ in range(min(concurrency, count)):
                group.start_soon(worker)
    into.cpu_ns += time.process_time_ns() - cpu
    into.wall_ns += clock() - wall
    into.upstream_ns += upstream.cpu() - upstream_before
    into.sidecar_ns += sidecar.cpu() - sidecar_before


Rounds = dict[int, dict[str, list[dict[str, Any]]]]
"""Concurrency -> contender -> one result per round."""


def _measure(settings: Settings, upstream: _Nginx, sidecar: _Nginx) -> tuple[Rounds, dict[str, Any]]:
    """Every round's results, and which backend each ``auto`` transport picked."""
    servers = (upstream, sidecar)
    names = list(contenders())

    async def measure() -> tuple[Rounds, dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            built = {name: await _contender(name, stack) for name in names}
            gets = {name: get for name, (get, _) in built.items()}
            urls = {name: sidecar.url if name == SIDECAR else upstream.url for name in names}
            for name in names:  # every contender answers, before anything is measured
                probe = _Share()
                await _run(gets[name], urls[name], 20, 1, settings.run_seconds, servers, probe)
                if probe.errors:
                    raise RuntimeError(
                        f"backends: {name} failed {probe.errors} of 20 requests: {probe.first_error}"
                    )
            selected = {name: built[name][1].selected for name in (AUTO, AUTO_STACK)}
            rounds: Rounds = {level: {name: [] for name in names} for level in LEVELS}
            deadline = time.monotonic() + settings.max_seconds
            for index in range(settings.rounds):
                if index and time.monotonic() > deadline:
                    break
                for position, level in enumerate(LEVELS):
                    shares = {name: _Share() for name in names}
                    if level == 1:
                        for name in names:
                            await _run(gets[name], urls[name], 20, 1, settings.run_seconds, servers, _Share())
                        gc.collect()
                        for name, size in schedule(names, settings.single, settings.block, index):
                            await _run(
                                gets[name], urls[name], size, 1, settings.run_seconds, servers, shares[name]
                            )
                    else:
                        shift = (index + position) % len(names)
                        for name in (*names[shift:], *names[:shift]):
                            # Untimed: opens the contender's `level` connections (idle ones expire meanwhile).
                            await _run(
                                gets[name], urls[name], 2 * level, level, settings.run_seconds, servers, _Share()
                            )
                            gc.collect()
                            await _run(
                                gets[name],
                                urls[name],
                                settings.requests,
                                level,
                                settings.run_seconds,
                                servers,
                                shares[name],
                            )
                    for name, share in shares.items():
                        rounds[level][name].append(share.result())
            return rounds, selected

    return anyio.run(measure, backend="asyncio")


# -- report -----------------------------------------------------------------------------------------------


def _paired(own: list[dict[str, Any]], base: list[dict[str, Any]]) -> float:
    """The median over rounds of (own - base) client CPU per request: each round's pair shared its conditions."""
    return round(
        median(
            [
                mine["cpu_us_per_request"] - theirs["cpu_us_per_request"]
                for mine, theirs in zip(own, base, strict=True)
            ]
        ),
        1,
    )


def _level(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    contenders: dict[str, Any] = {}
    for name, rounds in results.items():
        rps = [result["requests_per_s"] for result in rounds]
        cpu = [result["cpu_us_per_request"] for result in rounds]
        p99 = [result["p99_ms"] for result in rounds if result["p99_ms"] is not None]
        p50 = [result["p50_ms"] for result in rounds if result["p50_ms"] is not None]
        contenders[name] = {
            "requests_per_s": round(median(rps), 1),
            "requests_per_s_min_max": [min(rps), max(rps)],
            "cpu_us_per_request": round(median(cpu), 1),
            "cpu_us_min_max": [min(cpu), max(cpu)],
            "p50_ms": round(median(p50), 3) if p50 else None,
            "p99_ms": round(median(p99), 3) if p99 else None,
            "upstream_cpu_us_per_request": round(median([r["upstream_cpu_us_per_request"] for r in rounds]), 1),
            "errors": sum(result["errors"] for result in rounds),
            "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None),
            "rounds": rounds,
        }
    stack_added = {
        backend: _paired(results[stacked], results[bare]) for backend, (bare, stacked) in _BACKENDS.items()
    }
    return {
        "contenders": contenders,
        "sidecar_proxy_cpu_us_per_request": round(
            median([result["sidecar_cpu_us_per_request"] for result in results[SIDECAR]]), 1
        ),
        "stack_added_cpu_us": stack_added,
    }


def _summarise(rounds: Rounds) -> dict[str, Any]:
    levels = {level: _level(results) for level, results in rounds.items()}
    at_rps = levels[RPS_LEVEL]["contenders"]
    at_p99 = levels[P99_LEVEL]["contenders"]
    rps_ratio = at_rps[AUTO_STACK]["requests_per_s"] / at_rps[HTTPX]["requests_per_s"]
    p99_ratio = at_p99[AUTO_STACK]["p99_ms"] / at_p99[HTTPX]["p99_ms"]
    single = rounds[1]
    added = {side: _paired(single[stacked], single[bare]) for side, (bare, stacked) in _CHECKED_PAIRS.items()}
    # A failed request is a fast one: a contender with errors cannot pass on speed.
    clean = {
        level: at[AUTO_STACK]["errors"] == 0 and at[HTTPX]["errors"] == 0
        for level, at in ((RPS_LEVEL, at_rps), (P99_LEVEL, at_p99))
    }
    checks = {
        f"{AUTO_STACK} >= {RPS_TARGET}x {HTTPX} requests/s at c={RPS_LEVEL}": clean[RPS_LEVEL]
        and rps_ratio >= RPS_TARGET,
        f"{AUTO_STACK} p99 <= {P99_TARGET}x {HTTPX} p99 at c={P99_LEVEL}": clean[P99_LEVEL]
        and p99_ratio <= P99_TARGET,
        f"stack's added CPU on aiohttp <= on httpcore + {STACK_ALLOWANCE_US:g} µs at c=1": added["aiohttp"]
        <= added["httpcore"] + STACK_ALLOWANCE_US,
    }
    client_cpu = {
        name: {str(level): levels[level]["contenders"][name]["cpu_us_per_request"] for level in LEVELS}
        for name in contenders()
    }
    return {
        "levels": {str(level): result for level, result in levels.items()},
        "client_cpu_us_per_request": client_cpu,
        "sidecar_proxy_cpu_us_per_request": {
            str(level): levels[level]["sidecar_proxy_cpu_us_per_request"] for level in LEVELS
        },
        "check_values": {
            f"requests_per_s_ratio_c{RPS_LEVEL}": round(rps_ratio, 2),
            f"p99_ratio_c{P99_LEVEL}": round(p99_ratio, 3),
            "stack_added_cpu_us_c1": {
                "httpcore": added["httpcore"],
                "aiohttp": added["aiohttp"],
                "allowance_us": STACK_ALLOWANCE_US,
                "pairs": {side: f"{stacked} - {bare}" for side, (bare, stacked) in _CHECKED_PAIRS.items()},
                "method": "median over rounds of the per-round difference in client CPU per request",
            },
            "speed_checks_need_no_errors": True,
        },
        "checks": checks,
        "pass": all(checks.values()),
    }


def _print(result: dict[str, Any], rounds: int) -> None:
    for level in LEVELS:
        summary = result["levels"][str(level)]
        rows = [
            [
                name,
                f"{one['requests_per_s']:,.0f}",
                f"{one['cpu_us_per_request']:,.0f}",
                "-" if one["p50_ms"] is None else f"{one['p50_ms']:.2f}",
                "-" if one["p99_ms"] is None else f"{one['p99_ms']:.2f}",
                f"{one['upstream_cpu_us_per_request']:.0f}",
                str(one["errors"]),
            ]
            for name, one in summary["contenders"].items()
        ]
        headers = ["contender", "req/s", "CPU µs/req", "p50 ms", "p99 ms", "nginx µs/req", "errors"]
        print(f"\nc = {level}")
        print(table(headers, rows))
        print(f"sidecar hop: {summary['sidecar_proxy_cpu_us_per_request']:.0f} µs of proxy CPU per request")
        for name, one in summary["contenders"].items():
            if one["first_error"]:
                print(f"  {name}: first error: {one['first_error']}")
    print(f"\nclient CPU µs per request (median of {rounds} rounds), next to a sidecar hop's proxy CPU")
    rows = [
        [name, *(f"{value:,.0f}" for value in per_level.values())]
        for name, per_level in result["client_cpu_us_per_request"].items()
    ]
    rows.append(
        ["sidecar hop (proxy CPU)", *(f"{v:,.0f}" for v in result["sidecar_proxy_cpu_us_per_request"].values())]
    )
    print(table(["contender", *(f"c={level}" for level in LEVELS)], rows))
    values = result["check_values"]
    added = values["stack_added_cpu_us_c1"]
    texts = [
        f"{values[f'requests_per_s_ratio_c{RPS_LEVEL}']:.2f}x",
        f"{values[f'p99_ratio_c{P99_LEVEL}']:.3f}x",
        f"aiohttp {added['aiohttp']:+.1f} µs, httpcore {added['httpcore']:+.1f} µs",
    ]
    for (check, ok), text in zip(result["checks"].items(), texts, strict=True):
        print(f"{verdict(ok)}  backends: {check} ({text})")


def _machine(client_cpu: int | None, server_cpu: int | None, nginx: str | None) -> dict[str, Any]:
    info = machine_info(
        {
            "pinning": {"client_cpu": client_cpu, "nginx_cpu": server_cpu},
            "nginx": None if nginx is None else _nginx_version(nginx),
            "event_loop": "asyncio (default policy)",
        }
    )
    info["packages"].update({name: version(name) for name in ("aiohttp", "httpx-aiohttp", "yarl")})
    return info


def _config_payload(settings: Settings) -> dict[str, Any]:
    return {
        "levels": list(LEVELS),
        "requests_per_round": settings.requests,
        "requests_per_round_c1": settings.single,
        "rounds": settings.rounds,
        "block_requests_c1": settings.block,
        "run_seconds": settings.run_seconds,
        "max_seconds": settings.max_seconds,
        "pool_size": POOL_SIZE,
        "load": "closed loop: c tasks, each sending GET / as soon as its previous request returned",
        "order": f"c=1: contenders take turns every {settings.block} requests, the order rotating every block and "
        "round; c>1: each contender's requests in one run after an untimed warm-up of 2c requests, the order "
        "rotating every round and concurrency",
        "timer": "client: time.process_time_ns (this process), wall time per request and per run; nginx: on-CPU "
        "time of its process",
        "upstream": 'nginx, one process (master_process off), access_log off, location / { return 200 "ok"; }',
        "sidecar": "a second nginx process: proxy_pass to the upstream, keepalive 64, proxy_http_version 1.1",
        "contenders": {name: _DESCRIPTIONS[name] for name in contenders()},
        "targets": {
            "requests_per_s_ratio": {"min": RPS_TARGET, "at": RPS_LEVEL, "of": AUTO_STACK, "vs": HTTPX},
            "p99_ratio": {"max": P99_TARGET, "at": P99_LEVEL, "of": AUTO_STACK, "vs": HTTPX},
            "stack_added_cpu_allowance_us": STACK_ALLOWANCE_US,
        },
    }


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the backends benchmark, print its tables and verdicts, and write ``backends.json``.

    Args:
        quick: One short round per concurrency (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds.
        requests: Override the requests per contender per round and concurrency (half of it at ``c = 1``).
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file. Without nginx or the ``fast`` extra, ``skipped`` holds the
        reason and ``pass`` is true (``python -m bench --strict`` counts a skip as a miss). When nginx does not
        start or a contender fails its first requests, ``error`` says what happened and ``pass`` is false.
    """
    began = time.perf_counter()
    base = QUICK if quick else FULL
    settings = Settings(
        requests=requests or base.requests,
        single=max(1, requests // 2) if requests else base.single,
        rounds=rounds or base.rounds,
        block=min(base.block, max(1, requests // 2)) if requests else base.block,
        run_seconds=base.run_seconds,
        max_seconds=base.max_seconds,
    )
    nginx = find_nginx()
    client_cpu, server_cpu = pinning()
    missing = [name for name in ("httpx_aiohttp", "aiohttp") if importlib.util.find_spec(name) is None]
    if nginx is None:
        reason = "nginx not found on PATH or in /usr/sbin (install it, e.g. apt-get install nginx, to run this)"
        return _unmeasured(
            quick, settings, began, results_dir, _machine(client_cpu, server_cpu, None), skipped=reason
        )
    if missing:
        reason = f"not installed: {', '.join(missing)} (pip install 'connectivity-sdk[fast]')"
        return _unmeasured(
            quick, settings, began, results_dir, _machine(client_cpu, server_cpu, nginx), skipped=reason
        )
    machine = _machine(client_cpu, server_cpu, nginx)
    print(
        f"backends: closed-loop GETs at c = {', '.join(map(str, LEVELS))} to nginx on {HOST} (separate process), "
        f"{settings.rounds} rounds x {settings.requests} requests per contender and concurrency "
        f"({settings.single} at c = 1), asyncio; client CPU (process_time), wall latency, nginx on-CPU time"
    )
    try:
        with TemporaryDirectory(prefix="bench-nginx-") as directory:
            folder = Path(directory)
            with (
                _nginx(nginx, folder, "upstream", _upstream_body, server_cpu) as upstream,
                _nginx(nginx, folder, "sidecar", _sidecar_body(upstream.port), server_cpu) as sidecar,
                pinned(client_cpu),
            ):
                measured, selected = _measure(settings, upstream, sidecar)
                clock = upstream.clock
    except _NoClock:
        reason = "no /proc/<pid>/schedstat or /proc/<pid>/stat to read nginx's CPU time"
        return _unmeasured(quick, settings, began, results_dir, machine, skipped=reason)
    except (_NginxError, RuntimeError, OSError, subprocess.SubprocessError) as failure:
        return _unmeasured(quick, settings, began, results_dir, machine, error=str(failure))
    result = _summarise(measured)
    completed = len(measured[LEVELS[0]][HTTPX])
    _print(result, completed)
    picked = {name: choice.get("asyncio") for name, choice in selected.items()}
    if any(choice != "aiohttp" for choice in picked.values()):
        print(f"note: backend='auto' did not pick aiohttp on asyncio: {picked}")
    config = _config_payload(settings)
    config.update(rounds_completed=completed, nginx_cpu_clock=clock, auto_selected=selected)
    payload: dict[str, Any] = {
        "benchmark": "backends",
        "quick": quick,
        "skipped": None,
        "error": None,
        "config": config,
        "machine": machine,
        **result,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    path = write_results("backends", payload, results_dir)
    print(f"elapsed: {payload['elapsed_s']:.0f} s")
    print(f"results: {path}")
    return payload


def _unmeasured(
    quick: bool,
    settings: Settings,
    began: float,
    results_dir: Path | None,
    machine: dict[str, Any],
    *,
    skipped: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    print(f"SKIPPED  backends: {skipped}" if skipped else f"ERROR  backends: {error}")
    payload: dict[str, Any] = {
        "benchmark": "backends",
        "quick": quick,
        "skipped": skipped,
        "error": error,
        "config": _config_payload(settings),
        "machine": machine,
        "levels": {},
        "checks": {},
        "pass": error is None,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("backends", payload, results_dir)
