"""Balancing: what a pick costs with 10 and with 10,000 endpoints, and what the balanced stack costs end to end.

Pick part (pure, no I/O): ``picker.pick_stats(endpoint_set)`` on snapshots of 10 and of 10,000 endpoints, each
endpoint with one latency sample (so EWMA's decay arithmetic runs), for the two P2C pickers:

* ``LeastRequest n=10`` / ``LeastRequest n=10000``: Envoy's least-request P2C;
* ``EWMA n=10`` / ``EWMA n=10000``: Finagle's and Linkerd's peak-EWMA P2C;
* ``RoundRobin n=10`` / ``RoundRobin n=10000``: for reference (no target).

Each round times ``picks`` picks per contender with :func:`time.process_time_ns`, the contenders taking turns every
``block`` picks (see :func:`bench._harness.schedule`); reported values are medians over the rounds, and the ratio
10,000 / 10 is also given as the median of the per-round ratios (paired). The target: a P2C pick with 10,000
endpoints costs at most :data:`TARGET_PICK_SCALING` x one with 10 (O(1) picks: only cache misses may differ).

End-to-end part: ``replicas`` uvicorn upstreams (:mod:`bench._upstream`, each in its own process, all pinned to
one CPU and the client to another when two are usable), sequential ``GET`` requests over keep-alive connections:

* ``httpx``: a bare client sending each request to the next replica's URL in turn (the same connections a
  balancer opens), the baseline;
* ``balanced (EWMA)``: ``LoadBalancingTransport(<httpx's transport>, service="orders", resolver=<replicas>,
  picker=EWMA())`` on ``http://orders/``;
* ``balanced (EWMA + outlier)``: the same with ``outlier=OutlierDetector()``;
* ``balanced (round robin)``: ``picker=RoundRobin()``;
* ``balanced (EWMA, pool per endpoint)``: EWMA over
  :class:`~connectivity.transports._endpoint_pools.EndpointPools`, one httpx transport per replica (what
  ``connectivity.transport(discovery=...)`` builds): the balancing layer plus the pool map;
* ``httpx (control)``: a second bare client: its distance from ``httpx`` is the run's noise floor.

The balancer wraps httpx's own network transport (``httpx.AsyncHTTPTransport``/``httpx.HTTPTransport``), so the
difference is the balancing layer alone (and the pool map, for the per-endpoint contender). Each client kind
(``AsyncClient`` on asyncio, ``Client``) runs ``rounds`` rounds of ``requests`` requests per contender after a
warm-up, interleaved every ``block`` requests; client CPU is :func:`time.process_time_ns`. The target: the
balanced stacks cost at most :data:`TARGET_E2E_RATIO` x bare httpx client CPU, judged on the paired median (the
median over rounds of each round's ratio).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench import e2e as e2e_bench
from bench._harness import cpu_rounds, machine_info, median, pinned, pinning, publish, table, verdict
from bench.e2e import HOST, _async_rounds, _sync_rounds, serve
from connectivity.balancing import EWMA, EndpointSet, LeastRequest, Picker, RoundRobin
from connectivity.discovery import Endpoint
from connectivity.policies.outlier import OutlierDetector
from connectivity.transports._endpoint_pools import EndpointPools
from connectivity.transports.balancing import LoadBalancingTransport

__all__ = ["FULL", "QUICK", "TARGET_E2E_RATIO", "TARGET_PICK_SCALING", "Settings", "run"]

TARGET_PICK_SCALING = 1.5
"""Most a P2C pick with 10,000 endpoints may cost, as a multiple of a pick with 10."""

TARGET_E2E_RATIO = 1.03
"""Most client CPU the balanced stack may cost per request, as a multiple of a bare httpx client."""

SIZES = (10, 10_000)
PICKERS: dict[str, Callable[[], Picker]] = {
    "LeastRequest": lambda: LeastRequest(rng=random.Random(1)),
    "EWMA": lambda: EWMA(rng=random.Random(1)),
    "RoundRobin": lambda: RoundRobin(rng=random.Random(1)),
}
TARGETED = ("LeastRequest", "EWMA")

BARE = "httpx"
EWMA_STACK = "balanced (EWMA)"
OUTLIER_STACK = "balanced (EWMA + outlier)"
ROUND_ROBIN_STACK = "balanced (round robin)"
POOLS_STACK = "balanced (EWMA, pool per endpoint)"
CONTROL = "httpx (control)"
E2E_CONTENDERS = (BARE, EWMA_STACK, OUTLIER_STACK, ROUND_ROBIN_STACK, POOLS_STACK, CONTROL)
E2E_TARGETED = (EWMA_STACK, OUTLIER_STACK, POOLS_STACK)

Timer = Callable[[int], int]
"""Makes ``n`` picks and returns the CPU nanoseconds they took."""


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        picks: Picks per contender per round (pick part).
        rounds: Measured rounds (both parts; the reported value is the median over them).
        warmup: Untimed picks per contender before the first round.
        block: Picks a contender makes before handing over to the next.
        requests: Requests per contender per round (end-to-end part).
        e2e_warmup: Untimed requests per contender before the first round.
        e2e_block: Requests a contender sends before handing over to the next.
        replicas: Upstream processes.
    """

    picks: int
    rounds: int
    warmup: int
    block: int
    requests: int
    e2e_warmup: int
    e2e_block: int = 10
    replicas: int = 3


FULL = Settings(picks=200_000, rounds=9, warmup=20_000, block=20_000, requests=500, e2e_warmup=100)
QUICK = Settings(picks=5_000, rounds=3, warmup=500, block=1_000, requests=40, e2e_warmup=10, e2e_block=5)


# -- picks --------------------------------------------------------------------------------------------------------


def _endpoint_set(size: int) -> EndpointSet:
    endpoints = [Endpoint(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8080) for i in range(size)]
    snapshot = EndpointSet(endpoints)
    draw = random.Random(size)
    for stats in snapshot.members:
        stats.observe(draw.uniform(0.001, 0.02))
    return snapshot


def _pick_timer(pick: Callable[[EndpointSet], object], snapshot: EndpointSet) -> Timer:
    def timer(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            pick(snapshot)
        return time.process_time_ns() - start

    return timer


def _pick_timers() -> dict[str, Timer]:
    sets = {size: _endpoint_set(size) for size in SIZES}
    return {
        f"{name} n={size}": _pick_timer(make().pick_stats, snapshot)
        for name, make in PICKERS.items()
        for size, snapshot in sets.items()
    }


def _picks(settings: Settings) -> dict[str, Any]:
    rounds = cpu_rounds(
        _pick_timers(),
        count=settings.picks,
        rounds=settings.rounds,
        block=settings.block,
        warmup=settings.warmup,
    )
    contenders = {
        name: {"median_ns_per_pick": round(median(values), 1), "rounds_ns_per_pick": [round(v, 1) for v in values]}
        for name, values in rounds.items()
    }
    comparisons: dict[str, Any] = {}
    for name in PICKERS:
        small, large = rounds[f"{name} n={SIZES[0]}"], rounds[f"{name} n={SIZES[1]}"]
        paired = median([big / little for big, little in zip(large, small, strict=True)])
        ratio = median(large) / median(small)
        targeted = name in TARGETED
        comparisons[f"{name} n={SIZES[1]} vs n={SIZES[0]}"] = {
            "ratio": round(ratio, 3),
            "ratio_paired_median": round(paired, 3),
            "target_ratio": TARGET_PICK_SCALING if targeted else None,
            "pass": paired <= TARGET_PICK_SCALING if targeted else True,
        }
    return {"contenders": contenders, "comparisons": comparisons}


def _print_picks(result: dict[str, Any]) -> None:
    rows = [
        [
            name,
            f"{summary['median_ns_per_pick']:.0f}",
            f"{min(summary['rounds_ns_per_pick']):.0f}",
            f"{max(summary['rounds_ns_per_pick']):.0f}",
        ]
        for name, summary in result["contenders"].items()
    ]
    print(table(["picker", "ns/pick (median)", "min", "max"], rows))
    for name, comparison in result["comparisons"].items():
        target = comparison["target_ratio"]
        line = f"{comparison['ratio_paired_median']:.3f}x (paired; medians {comparison['ratio']:.3f}x)"
        if target is None:
            print(f"info  balancing pick {name}: {line}")
        else:
            print(f"{verdict(comparison['pass'])}  balancing pick {name}: {line} <= {target}x")


# -- end to end --------------------------------------------------------------------------------------------------


def _balancer(name: str, endpoints: list[str], network: Callable[[], Any]) -> LoadBalancingTransport:
    picker: Picker = RoundRobin() if name == ROUND_ROBIN_STACK else EWMA()
    outlier = OutlierDetector() if name == OUTLIER_STACK else None
    inner = EndpointPools(network) if name == POOLS_STACK else network()
    return LoadBalancingTransport(inner, service="orders", resolver=endpoints, picker=picker, outlier=outlier)


def _sync_calls(urls: list[str], stack: contextlib.ExitStack) -> dict[str, Callable[[], httpx.Response]]:
    endpoints = [httpx.URL(url).netloc.decode() for url in urls]
    calls: dict[str, Callable[[], httpx.Response]] = {}
    for name in E2E_CONTENDERS:
        if name in (BARE, CONTROL):
            client = stack.enter_context(httpx.Client(trust_env=False))
            turns = itertools.cycle(urls)
            calls[name] = lambda client=client, turns=turns: client.get(next(turns))
        else:
            transport = _balancer(name, endpoints, httpx.HTTPTransport)
            client = stack.enter_context(httpx.Client(transport=transport, trust_env=False))
            calls[name] = lambda client=client: client.get("http://orders/")
    return calls


async def _async_calls(
    urls: list[str], stack: contextlib.AsyncExitStack
) -> dict[str, Callable[[], Awaitable[httpx.Response]]]:
    endpoints = [httpx.URL(url).netloc.decode() for url in urls]
    calls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {}
    for name in E2E_CONTENDERS:
        if name in (BARE, CONTROL):
            client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
            turns = itertools.cycle(urls)
            calls[name] = lambda client=client, turns=turns: client.get(next(turns))
        else:
            transport = _balancer(name, endpoints, httpx.AsyncHTTPTransport)
            client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, trust_env=False))
            calls[name] = lambda client=client: client.get("http://orders/")
    return calls


def _sync_mode(urls: list[str], settings: e2e_bench.Settings) -> dict[str, list[dict[str, Any]]]:
    with contextlib.ExitStack() as stack:
        calls = {name: lambda _url, call=call: call() for name, call in _sync_calls(urls, stack).items()}
        return _sync_rounds(calls, "", settings)


def _async_mode(urls: list[str], settings: e2e_bench.Settings) -> dict[str, list[dict[str, Any]]]:
    async def measure() -> dict[str, list[dict[str, Any]]]:
        async with contextlib.AsyncExitStack() as stack:
            made = await _async_calls(urls, stack)
            calls = {name: lambda _url, call=call: call() for name, call in made.items()}
            return await _async_rounds(calls, "", settings)

    return anyio.run(measure, backend="asyncio")


def _summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    bare_rounds = [result["cpu_us_per_request"] for result in rounds[BARE]]
    bare = median(bare_rounds)
    contenders: dict[str, Any] = {}
    for name, results in rounds.items():
        cpu = [result["cpu_us_per_request"] for result in results]
        contenders[name] = {
            "cpu_us_per_request": round(median(cpu), 2),
            "cpu_us_min_max": [min(cpu), max(cpu)],
            "cpu_ratio_vs_httpx": round(median(cpu) / bare, 3),
            "cpu_added_us_paired_median": round(
                median([mine - base for mine, base in zip(cpu, bare_rounds, strict=True)]), 2
            ),
            "cpu_ratio_paired_median": round(
                median([mine / base for mine, base in zip(cpu, bare_rounds, strict=True)]), 3
            ),
            "p50_us": round(median([result["p50_us"] for result in results]), 1),
            "p99_us": round(median([result["p99_us"] for result in results]), 1),
            "errors": sum(result["errors"] for result in results),
            "rounds": results,
        }
    checks = {
        f"{name} <= {TARGET_E2E_RATIO}x {BARE} (paired median)": contenders[name]["cpu_ratio_paired_median"]
        <= TARGET_E2E_RATIO
        for name in E2E_TARGETED
    }
    errors = sum(summary["errors"] for summary in contenders.values())
    checks["no request failed"] = errors == 0
    return {
        "contenders": contenders,
        "checks": checks,
        "noise_floor_us": abs(contenders[CONTROL]["cpu_added_us_paired_median"]),
        "pass": all(checks.values()),
    }


def _print_mode(mode: str, result: dict[str, Any]) -> None:
    rows = [
        [
            name,
            f"{summary['cpu_us_per_request']:.1f}",
            f"{summary['cpu_ratio_paired_median']:.3f}x",
            f"{summary['cpu_added_us_paired_median']:+.1f}",
            f"{summary['p50_us']:.0f}",
            f"{summary['p99_us']:.0f}",
            str(summary["errors"]),
        ]
        for name, summary in result["contenders"].items()
    ]
    print(f"\n{mode}")
    print(
        table(
            ["contender", "CPU µs/req", "vs httpx (paired)", "added µs (paired)", "p50 µs", "p99 µs", "errors"],
            rows,
        )
    )
    print(f"noise floor in this run (httpx vs its control twin): {result['noise_floor_us']:.1f} µs")
    for check, ok in result["checks"].items():
        print(f"{verdict(ok)}  balancing e2e {mode}: {check}")


def _e2e(settings: Settings) -> dict[str, Any]:
    client_cpu, server_cpu = pinning()
    shape = e2e_bench.Settings(  # what the e2e machinery reads of our settings
        requests=settings.requests, rounds=settings.rounds, warmup=settings.e2e_warmup, block=settings.e2e_block
    )
    modes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(serve("bench._upstream:app", server_cpu)).url for _ in range(settings.replicas)
        ]
        with pinned(client_cpu):
            modes["async"] = _summarise(_async_mode(urls, shape))
            _print_mode("httpx.AsyncClient (asyncio)", modes["async"])
            modes["sync"] = _summarise(_sync_mode(urls, shape))
            _print_mode("httpx.Client", modes["sync"])
    return {"pinning": {"client_cpu": client_cpu, "server_cpu": server_cpu}, "modes": modes}


# -- entry point -------------------------------------------------------------------------------------------------


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    picks: int | None = None,
    e2e: bool = True,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the balancing benchmark, print its tables and verdicts, and write ``balancing.json``.

    Args:
        quick: Few rounds of little work (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds (both parts).
        requests: Override the requests per contender per round (end-to-end part).
        picks: Override the picks per contender per round (pick part).
        e2e: Run the end-to-end part (it starts ``replicas`` uvicorn processes).
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.
    """
    base = QUICK if quick else FULL
    settings = Settings(
        picks=picks or base.picks,
        rounds=rounds or base.rounds,
        warmup=base.warmup,
        block=min(base.block, picks or base.block),
        requests=requests or base.requests,
        e2e_warmup=base.e2e_warmup,
        e2e_block=min(base.e2e_block, requests or base.e2e_block),
        replicas=base.replicas,
    )
    began = time.perf_counter()
    print(
        f"balancing picks: pick_stats() on {SIZES[0]} and {SIZES[1]} endpoints, {settings.rounds} rounds x "
        f"{settings.picks} picks per contender, taking turns every {settings.block}; CPU (process_time)"
    )
    picks_result = _picks(settings)
    _print_picks(picks_result)
    e2e_result: dict[str, Any] | None = None
    if e2e:
        print(
            f"\nbalancing e2e: sequential GETs to {settings.replicas} uvicorn replicas on {HOST} (separate "
            f"processes), {settings.rounds} rounds x {settings.requests} requests per contender, taking turns "
            f"every {settings.e2e_block}; client CPU (process_time) and wall latency"
        )
        e2e_result = _e2e(settings)
    passed = all(comparison["pass"] for comparison in picks_result["comparisons"].values()) and (
        e2e_result is None or all(mode["pass"] for mode in e2e_result["modes"].values())
    )
    payload: dict[str, Any] = {
        "benchmark": "balancing",
        "quick": quick,
        "config": {
            "picks_per_round": settings.picks,
            "rounds": settings.rounds,
            "pick_warmup": settings.warmup,
            "pick_block": settings.block,
            "sizes": list(SIZES),
            "requests_per_round": settings.requests,
            "e2e_warmup_requests": settings.e2e_warmup,
            "e2e_block_requests": settings.e2e_block,
            "replicas": settings.replicas,
            "timer": "time.process_time_ns (this process)",
            "order": "contenders take turns every block; the order rotates every block and round",
        },
        "targets": {"pick_scaling": TARGET_PICK_SCALING, "e2e_ratio": TARGET_E2E_RATIO},
        "machine": machine_info(),
        "picks": picks_result,
        "e2e": e2e_result,
        "pass": passed,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("balancing", payload, results_dir)
