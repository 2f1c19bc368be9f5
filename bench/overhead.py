"""Overhead: CPU the retry + timeout + budget stack adds to one call on the success path, with no network.

Four contenders answer the same requests with the same pre-built ``200`` response:

* ``bare``: an in-memory transport called directly;
* ``connectivity``: that transport wrapped in the retry + timeout + budget stack,
  ``cx.transport(inner, timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()),
  telemetry=False, request_id=False)``, the inner transport flagged as enforcing deadlines itself, as the
  default network transport does (it bounds every socket operation by the deadline), so the async path needs no
  cancel scope: the path ``cx.transport()`` users get;
* ``connectivity+scope``: the same stack over the unflagged transport, as over any custom inner transport: there
  the async path runs the call inside a cancel scope;
* ``connectivity full``: the whole default stack over the flagged transport, with a circuit breaker, tracing (no
  SDK configured) and request ids (:data:`FULL_STACK`), held to :data:`TARGET_FULL_ADDED_US`.

The difference is what the stack costs per request; the budget allows at most :data:`TARGET_ADDED_US` µs. The
``connectivity+scope`` row is shown, not held to a target: it is the price of the cancel scope that a deadline
needs over a transport that does not bound its own waits (anyio's scope alone costs 5-12 µs to open and close,
asyncio's and trio's native ones 5-8 µs), not of the stack. Each
mode (``handle_request``, ``handle_async_request`` on asyncio, and on trio when it is installed) runs ``rounds``
rounds of ``calls`` calls per contender, the contenders taking turns every ``block`` calls, timed with
:func:`time.process_time_ns`. Requests are built before a round starts, the way ``httpx.Client.build_request``
would (default headers, httpx's ``timeout`` extension), and are never reused, so the stack pays for every header
and extension it writes. The response's ``extensions`` dict is renewed on every call for both contenders, so
per-response bookkeeping (the ``CallRecord``) is paid on every call, not only the first.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

import connectivity as cx
from bench._harness import machine_info, median, schedule, table, verdict, write_results

__all__ = [
    "FULL",
    "QUICK",
    "TARGET_ADDED_US",
    "TARGET_FULL_ADDED_US",
    "DeadlineAwareMemoryTransport",
    "MemoryTransport",
    "Settings",
    "build_full_stack",
    "build_stack",
    "run",
]

TARGET_ADDED_US = 5.0
"""Most CPU, in µs per request, the stack may add on the success path."""

TARGET_FULL_ADDED_US = 10.0
"""Most CPU, in µs per request, the full stack (with the circuit breaker) may add on the success path."""

STACK = (
    "cx.transport(inner, timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()), "
    "telemetry=False, request_id=False)"
)
FULL_STACK = (
    "cx.transport(inner, timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()), "
    "breaker=cx.CircuitBreaker()): the whole default stack, tracing (no SDK) and request ids included"
)
_URL = "http://127.0.0.1:8000/orders/42"
_CONTENDERS = ("bare", "connectivity", "connectivity+scope", "connectivity full")
_STACKS = _CONTENDERS[1:]
_TARGETS: dict[str, float | None] = {
    "connectivity": TARGET_ADDED_US,
    "connectivity+scope": None,  # shown: the price of a cancel scope, not of the stack (see the module docstring)
    "connectivity full": TARGET_FULL_ADDED_US,
}


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        calls: Calls per contender per round.
        rounds: Measured rounds (the reported value is the median over them).
        warmup: Untimed calls per contender before the first round.
        block: Calls a contender makes before handing over to the other (see :func:`bench._harness.schedule`).
    """

    calls: int
    rounds: int
    warmup: int
    block: int = 1_000


FULL = Settings(calls=20_000, rounds=7, warmup=2_000)
QUICK = Settings(calls=1_000, rounds=5, warmup=200, block=100)


class MemoryTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers every request, sync or async, with one pre-built ``200`` response and no I/O."""

    def __init__(self) -> None:
        self._response = httpx.Response(200, content=b"ok")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._response
        response.extensions = {}
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = self._response
        response.extensions = {}
        return response


class DeadlineAwareMemoryTransport(MemoryTransport):
    """:class:`MemoryTransport` flagged as enforcing deadlines itself (true: it never blocks)."""

    connectivity_deadline_aware = True


def _flag_recognised() -> bool:
    """Whether the library still flags its network transport the way :class:`DeadlineAwareMemoryTransport` is.

    If not, the two stack contenders measure the same path.
    """
    return bool(getattr(cx.transports.HTTPTransport, "connectivity_deadline_aware", False))


def build_stack(inner: httpx.BaseTransport | httpx.AsyncBaseTransport) -> cx.transports.Layer:
    """The stack under test (see :data:`STACK`)."""
    return cx.transport(
        inner,
        timeout=cx.Timeout(total=10.0),
        retry=cx.Retry(budget=cx.RetryBudget()),
        telemetry=False,
        request_id=False,
    )


def build_full_stack(inner: httpx.BaseTransport | httpx.AsyncBaseTransport) -> cx.transports.Layer:
    """The whole outbound stack on the success path (see :data:`FULL_STACK`)."""
    return cx.transport(
        inner,
        timeout=cx.Timeout(total=10.0),
        retry=cx.Retry(budget=cx.RetryBudget()),
        breaker=cx.CircuitBreaker(),
    )


@functools.cache
def _template() -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
    with httpx.Client(trust_env=False) as client:
        request = client.build_request("GET", _URL)
    return list(request.headers.raw), dict(request.extensions["timeout"])


def _requests(count: int) -> list[httpx.Request]:
    """Fresh requests shaped like the ones ``httpx.Client`` sends: its default headers and timeout extension."""
    headers, timeout = _template()
    return [
        httpx.Request("GET", _URL, headers=headers, extensions={"timeout": dict(timeout)}) for _ in range(count)
    ]


def _check_success_path(stack: cx.transports.Layer) -> None:
    """Refuse to time anything but the success path: one attempt, a 200 and a CallRecord."""
    response = stack.handle_request(_requests(1)[0])
    record = response.extensions.get("connectivity")
    if response.status_code != 200 or not isinstance(record, cx.CallRecord) or record.attempts != 1:
        raise RuntimeError(f"the stack did not take the success path: {response!r}, {record!r}")


def _time_sync(handle: Callable[[httpx.Request], httpx.Response], requests: list[httpx.Request]) -> int:
    start = time.process_time_ns()
    for request in requests:
        handle(request)
    return time.process_time_ns() - start


async def _time_async(
    handle: Callable[[httpx.Request], Awaitable[httpx.Response]], requests: list[httpx.Request]
) -> int:
    start = time.process_time_ns()
    for request in requests:
        await handle(request)
    return time.process_time_ns() - start


def _round_requests(settings: Settings) -> dict[str, list[list[httpx.Request]]]:
    """Every contender's requests for one round, already cut into the blocks :func:`schedule` asks for."""
    blocks: dict[str, list[list[httpx.Request]]] = {name: [] for name in _CONTENDERS}
    for name, size in schedule(_CONTENDERS, settings.calls, settings.block, 0):
        blocks[name].append(_requests(size))
    return blocks


def _sync_mode(settings: Settings) -> dict[str, list[float]]:
    inner = MemoryTransport()
    handles = {
        "bare": inner.handle_request,
        "connectivity": build_stack(DeadlineAwareMemoryTransport()).handle_request,
        "connectivity+scope": build_stack(inner).handle_request,
        "connectivity full": build_full_stack(DeadlineAwareMemoryTransport()).handle_request,
    }
    for handle in handles.values():
        _time_sync(handle, _requests(settings.warmup))
    rounds: dict[str, list[float]] = {name: [] for name in _CONTENDERS}
    for index in range(settings.rounds):
        blocks = _round_requests(settings)
        cpu = dict.fromkeys(_CONTENDERS, 0)
        gc.collect()
        for name, _ in schedule(_CONTENDERS, settings.calls, settings.block, index):
            cpu[name] += _time_sync(handles[name], blocks[name].pop())
        for name in _CONTENDERS:
            rounds[name].append(cpu[name] / settings.calls)
    return rounds


def _async_mode(settings: Settings, backend: str) -> dict[str, list[float]]:
    async def measure() -> dict[str, list[float]]:
        inner = MemoryTransport()
        handles = {
            "bare": inner.handle_async_request,
            "connectivity": build_stack(DeadlineAwareMemoryTransport()).handle_async_request,
            "connectivity+scope": build_stack(inner).handle_async_request,
            "connectivity full": build_full_stack(DeadlineAwareMemoryTransport()).handle_async_request,
        }
        for handle in handles.values():
            await _time_async(handle, _requests(settings.warmup))
        rounds: dict[str, list[float]] = {name: [] for name in _CONTENDERS}
        for index in range(settings.rounds):
            blocks = _round_requests(settings)
            cpu = dict.fromkeys(_CONTENDERS, 0)
            gc.collect()
            for name, _ in schedule(_CONTENDERS, settings.calls, settings.block, index):
                cpu[name] += await _time_async(handles[name], blocks[name].pop())
            for name in _CONTENDERS:
                rounds[name].append(cpu[name] / settings.calls)
        return rounds

    return anyio.run(measure, backend=backend)


def _summarise(rounds: dict[str, list[float]]) -> dict[str, Any]:
    bare = rounds["bare"]
    bare_median = median(bare)
    stacks: dict[str, dict[str, Any]] = {}
    for name in _STACKS:
        ours = rounds[name]
        target = _TARGETS[name]
        added_us = (median(ours) - bare_median) / 1000
        stacks[name] = {
            "added_us": round(added_us, 3),
            "added_us_paired_median": round(median([(o - b) / 1000 for o, b in zip(ours, bare, strict=True)]), 3),
            "ratio": round(median(ours) / bare_median, 2) if bare_median else None,
            "target_added_us": target,
            "pass": target is None or added_us <= target,
        }
    return {
        "contenders": {
            name: {
                "rounds_ns_per_call": [round(v, 1) for v in values],
                "median_ns_per_call": round(median(values), 1),
            }
            for name, values in rounds.items()
        },
        # The headline is the path cx.transport() users get; every stack's numbers are under "stacks".
        **stacks["connectivity"],
        "stacks": stacks,
        "pass": all(stack["pass"] for stack in stacks.values()),
    }


def _trio_available() -> bool:
    try:
        import trio  # noqa: F401
    except ImportError:
        return False
    return True


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    calls: int | None = None,
    trio: bool = True,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the overhead benchmark, print its table and verdicts, and write ``overhead.json``.

    Args:
        quick: Few rounds of few calls (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds.
        calls: Override the calls per contender per round.
        trio: Also measure the async path on trio when trio is installed.
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.
    """
    base = QUICK if quick else FULL
    settings = Settings(
        calls=calls or base.calls,
        rounds=rounds or base.rounds,
        warmup=min(base.warmup, calls or base.warmup),
        block=min(base.block, calls or base.block),
    )
    began = time.perf_counter()
    _check_success_path(build_stack(MemoryTransport()))
    _check_success_path(build_stack(DeadlineAwareMemoryTransport()))
    _check_success_path(build_full_stack(DeadlineAwareMemoryTransport()))
    if not _flag_recognised():
        print("note: the network transport is no longer flagged deadline-aware; both stacks take the same path")
    print(
        f"overhead: {STACK}\n"
        f"  vs the in-memory transport called directly; {settings.rounds} rounds x {settings.calls} calls per "
        f"contender, taking turns every {settings.block} calls; CPU time (process_time)"
    )
    modes: dict[str, dict[str, Any]] = {"sync": _summarise(_sync_mode(settings))}
    modes["asyncio"] = _summarise(_async_mode(settings, "asyncio"))
    if trio and _trio_available():
        modes["trio"] = _summarise(_async_mode(settings, "trio"))

    rows = []
    for mode, result in modes.items():
        contenders = result["contenders"]
        for name, stack in result["stacks"].items():
            rows.append(
                [
                    mode,
                    name,
                    f"{contenders['bare']['median_ns_per_call'] / 1000:.2f}",
                    f"{contenders[name]['median_ns_per_call'] / 1000:.2f}",
                    f"{stack['added_us']:.2f}",
                    f"{stack['added_us_paired_median']:.2f}",
                    f"{stack['ratio']:.0f}x",
                ]
            )
    print(
        table(
            ["mode", "stack", "bare µs/call", "stack µs/call", "added µs", "added µs (paired)", "ratio"],
            rows,
            left=2,
        )
    )
    for mode, result in modes.items():
        for name, stack in result["stacks"].items():
            if stack["target_added_us"] is None:
                print(f"INFO  overhead {mode} {name}: +{stack['added_us']:.2f} µs per request (shown, no target)")
                continue
            print(
                f"{verdict(stack['pass'])}  overhead {mode} {name}: +{stack['added_us']:.2f} µs per request "
                f"(target <= {stack['target_added_us']:g} µs)"
            )
    payload: dict[str, Any] = {
        "benchmark": "overhead",
        "quick": quick,
        "target_added_us": TARGET_ADDED_US,
        "config": {
            "stack": STACK,
            "inner": "MemoryTransport: a pre-built httpx.Response(200), extensions renewed per call",
            "stacks": {
                "connectivity": "inner flagged deadline-aware like the network transport (no cancel scope)",
                "connectivity+scope": "inner unflagged, as any custom transport (async: a cancel scope per call)",
                "connectivity full": FULL_STACK,
            },
            "calls_per_round": settings.calls,
            "rounds": settings.rounds,
            "warmup_calls": settings.warmup,
            "timer": "time.process_time_ns",
            "block_calls": settings.block,
            "order": "contenders alternate every block of calls; the order rotates every block and round",
        },
        "machine": machine_info(),
        "modes": modes,
        "pass": all(result["pass"] for result in modes.values()),
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    path = write_results("overhead", payload, results_dir)
    print(f"results: {path}")
    return payload
