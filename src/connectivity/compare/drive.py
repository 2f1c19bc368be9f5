"""Driving load: one bounded block of requests through one contender, open loop or closed loop, and what it cost.

Theory of operation: a *block* is ``count`` GET requests sent by one contender while nothing else sends. In the
open loop the n-th request is started at ``start + n / rate`` whatever the earlier ones are doing, and its latency
runs from that scheduled moment (so a stalled client or proxy cannot hide its queueing: no coordinated omission);
in the closed loop ``concurrency`` workers send back to back. Either way the block ends after ``count`` requests or
``limit`` seconds (requests still unfinished then are cancelled and counted as failures), so no load loop is
unbounded.

Before the block, untimed, :func:`settle` gives the contender a fresh connection pool and opens the connections
the mode needs (one per replica for the open loop, ``concurrency`` for the closed loop), so every block of every
contender starts from the same state (see :mod:`connectivity.compare.contenders` for why it matters). Around the
block the runner reads the clocks that matter: this process's CPU time (:func:`time.process_time_ns`: the
client's CPU, nothing else runs here during a block), the sidecar's CPU (``/proc`` schedstat, through its
``cpu_ns()``), the upstream fleet's request counter, the policy events emitted meanwhile in-process, and what the
sidecar reports it did (its ``counters()``: retries, ejections, rate-limited requests).

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from connectivity._http import httpx

__all__ = ["Block", "Contender", "Mode", "percentile", "run_block", "settle"]

Mode = Literal["open", "closed"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between ranks (0 when empty)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


@dataclass
class Contender:
    """One way of calling the upstream service.

    Attributes:
        name: ``"httpx"``, ``"connectivity"``, ``"nginx"``...
        client: The client it sends with.
        urls: The URLs it sends to, taken in turn (several for bare httpx, which has no balancer).
        cpu_ns: Reads the sidecar's CPU time (``None`` for in-process contenders).
        rss_bytes: Reads the sidecar's resident memory (``None`` for in-process contenders).
        renew: Replaces the client's connection pool with an empty one (``None``: it cannot).
        counters: Reads what the sidecar reports it did, cumulative (``None`` for in-process contenders).
    """

    name: str
    client: httpx.AsyncClient
    urls: Sequence[str]
    cpu_ns: Callable[[], int] | None = None
    rss_bytes: Callable[[], int] | None = None
    renew: Callable[[], Awaitable[None]] | None = None
    counters: Callable[[], Mapping[str, int]] | None = None


@dataclass
class Block:
    """What one block of requests got and cost.

    Attributes:
        requests: Requests started.
        ok: Requests answered 2xx.
        latencies: Seconds per request (every request, successful or not).
        failures: Failed requests by cause (``"503"``, ``"ConnectError"``, ``"cancelled"``...).
        client_cpu_ns: CPU time of this process during the block.
        proxy_cpu_ns: CPU time of the sidecar during the block (``None`` without one).
        proxy_rss_bytes: The sidecar's resident memory after the block (``None`` without one).
        upstream_requests: Requests the upstream replicas received during the block.
        events: Policy events emitted during the block, by name (a sidecar's: what it reports, see ``counters``).
        wall: Seconds the block took.
    """

    requests: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    client_cpu_ns: int = 0
    proxy_cpu_ns: int | None = None
    proxy_rss_bytes: int | None = None
    upstream_requests: int = 0
    events: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The block's figures as JSON-ready numbers (latencies in ms, CPU in µs per request)."""
        count = max(self.requests, 1)
        ms = [latency * 1000 for latency in self.latencies]
        return {
            "requests": self.requests,
            "success_rate": self.ok / count,
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=0.0),
            "client_cpu_us": self.client_cpu_ns / count / 1000,
            "proxy_cpu_us": None if self.proxy_cpu_ns is None else self.proxy_cpu_ns / count / 1000,
            "proxy_rss_mb": None if self.proxy_rss_bytes is None else self.proxy_rss_bytes / 2**20,
            "upstream_per_request": self.upstream_requests / count,
            "failures": dict(self.failures),
            "events": dict(self.events),
            "wall_s": self.wall,
        }


async def _one(contender: Contender, url: str, began: float, block: Block) -> None:
    cause: str | None = None
    try:
        response = await contender.client.get(url)
        if not response.is_success:
            cause = str(response.status_code)
    except httpx.HTTPError as exc:
        cause = type(exc).__name__
    except anyio.get_cancelled_exc_class():
        block.failures["cancelled"] += 1
        block.latencies.append(time.perf_counter() - began)
        raise
    block.latencies.append(time.perf_counter() - began)
    if cause is None:
        block.ok += 1
    else:
        block.failures[cause] += 1


async def _open_loop(contender: Contender, block: Block, count: int, rate: float) -> None:
    urls = contender.urls
    async with anyio.create_task_group() as group:
        start = time.perf_counter()
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            block.requests += 1
            group.start_soon(_one, contender, urls[index % len(urls)], due, block)


async def _closed_loop(contender: Contender, block: Block, count: int, concurrency: int) -> None:
    urls = contender.urls

    async def worker() -> None:
        while block.requests < count:
            index = block.requests
            block.requests += 1
            await _one(contender, urls[index % len(urls)], time.perf_counter(), block)

    async with anyio.create_task_group() as group:
        for _ in range(min(concurrency, count)):
            group.start_soon(worker)


async def settle(contender: Contender, *, mode: Mode, concurrency: int, replicas: int) -> None:
    """Untimed, before a block: renew the contender's pool, then open the connections the mode needs.

    The open loop gets ``replicas`` requests one after the other (one connection per replica, or one to the
    sidecar); the closed loop ``concurrency`` requests at once (a connection per worker). Failures are ignored: the
    block that follows measures them.
    """
    if contender.renew is not None:
        await contender.renew()
    urls = contender.urls

    async def one(index: int) -> None:
        try:
            response = await contender.client.get(urls[index % len(urls)])
            await response.aclose()
        except httpx.HTTPError:
            pass

    if mode == "open":
        for index in range(replicas):
            await one(index)
        return
    async with anyio.create_task_group() as group:
        for index in range(concurrency):
            group.start_soon(one, index)


async def run_block(
    contender: Contender,
    *,
    mode: Mode,
    count: int,
    rate: float,
    concurrency: int,
    limit: float,
    upstream_requests: Callable[[], int],
    events: Mapping[str, int],
    before: Callable[[], Awaitable[None]] | None = None,
) -> Block:
    """Send one block of ``count`` requests through ``contender`` and measure it.

    Args:
        contender: Who sends.
        mode: ``"open"`` (``rate`` requests per second) or ``"closed"`` (``concurrency`` workers).
        count: Requests in the block.
        rate: Open-loop rate, requests per second.
        concurrency: Closed-loop workers.
        limit: Seconds after which the block is cut short (unfinished requests count as ``"cancelled"``).
        upstream_requests: Reads the fleet's request counter (called before and after the block).
        events: A live counter of policy events by name (read before and after the block).
        before: Awaited just before the clocks start (e.g. to let the previous block's connections settle).

    Returns:
        The block's outcome and costs.
    """
    block = Block()
    if before is not None:
        await before()
    upstream_before = upstream_requests()
    events_before = Counter(events)
    proxy_before = contender.cpu_ns() if contender.cpu_ns is not None else None
    reported_before = Counter(contender.counters()) if contender.counters is not None else Counter()
    began = time.perf_counter()
    cpu_before = time.process_time_ns()
    with anyio.move_on_after(limit):
        if mode == "open":
            await _open_loop(contender, block, count, rate)
        else:
            await _closed_loop(contender, block, count, concurrency)
    block.client_cpu_ns = time.process_time_ns() - cpu_before
    block.wall = time.perf_counter() - began
    if proxy_before is not None and contender.cpu_ns is not None:
        block.proxy_cpu_ns = contender.cpu_ns() - proxy_before
    if contender.rss_bytes is not None:
        block.proxy_rss_bytes = contender.rss_bytes()
    block.upstream_requests = upstream_requests() - upstream_before
    block.events = Counter(events) - events_before
    if contender.counters is not None:
        block.events.update(Counter(contender.counters()) - reported_before)
    # A request never started (the limit struck first) is a failure the client saw too.
    block.failures["not sent"] += count - block.requests
    block.requests = count
    block.failures = +block.failures
    return block
