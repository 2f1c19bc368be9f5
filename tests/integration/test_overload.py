"""Load shedding under overload, on a real uvicorn server over loopback.

The app has a fixed capacity: a pool of ``CAPACITY`` workers, each request holding one for ``WORK`` seconds (an
``anyio.sleep`` standing for the app's work, like a database pool of that size). ``4 * CAPACITY`` clients then
each send ``PER_CLIENT`` requests back to back (closed loop; after a 503 a client backs off for ``WORK`` only,
far less than ``Retry-After`` asks, so the overload lasts the whole run). Without a limit every request is
admitted and waits for a worker: with four requests per worker, a request waits about ``3 * WORK`` and takes about
``4 * WORK``. With :class:`ConcurrencyLimitMiddleware` at the app's capacity, the excess is shed at once with 503
and the requests that are admitted take about ``WORK``.

Client and server share one process (the server runs in a thread), so every request's CPU cost lands on both
sides: the bounds below leave room for that, and the comparison of medians is what proves the point.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import anyio
import httpx

from connectivity.middleware.concurrency import ConcurrencyLimitMiddleware
from connectivity.testing.server import serve

# WORK is long next to the CPU a request costs (client and server share one process, under coverage in CI), so
# the latencies measure the queueing the middleware prevents, not the machine's speed.
WORK = 0.2
CAPACITY = 4
CLIENTS = 4 * CAPACITY
PER_CLIENT = 5


class FixedCapacityApp:
    """``CAPACITY`` workers; a request waits for a free worker, then works ``WORK`` seconds."""

    def __init__(self) -> None:
        self._workers: anyio.Semaphore | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self._workers is None:  # created on the server's event loop
            self._workers = anyio.Semaphore(CAPACITY)
        async with self._workers:
            await anyio.sleep(WORK)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def _quantile(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(q * len(ordered)) - 1]


def _drive(url: str) -> list[tuple[httpx.Response, float]]:
    """``CLIENTS`` concurrent clients, ``PER_CLIENT`` requests each; every response with its latency."""
    results: list[tuple[httpx.Response, float]] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in range(PER_CLIENT):
            started = time.perf_counter()
            response = await client.get(url)
            results.append((response, time.perf_counter() - started))
            if response.status_code == 503:
                await anyio.sleep(WORK)  # the client's backoff before trying again (shorter than Retry-After)

    async def main() -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        with anyio.fail_after(15):
            async with httpx.AsyncClient(limits=limits, timeout=10) as client, anyio.create_task_group() as tg:
                for _ in range(CLIENTS):
                    tg.start_soon(client_loop, client)

    anyio.run(main)
    assert len(results) == CLIENTS * PER_CLIENT
    return results


def test_under_4x_overload_the_middleware_keeps_p99_bounded_and_sheds_with_503_and_retry_after() -> None:
    with serve(FixedCapacityApp(), name="unprotected") as unprotected:
        baseline = _drive(f"{unprotected.url}/work")
    with serve(ConcurrencyLimitMiddleware(FixedCapacityApp(), limit=CAPACITY), name="protected") as protected:
        shedding = _drive(f"{protected.url}/work")

    # Without a limit nothing is shed, and every request queues behind the others for a worker.
    assert {response.status_code for response, _ in baseline} == {200}
    unprotected_latencies = [latency for _, latency in baseline]
    p50_unprotected = _quantile(unprotected_latencies, 0.5)
    p99_unprotected = _quantile(unprotected_latencies, 0.99)
    assert p50_unprotected > 3 * WORK

    # With the limit, the admitted requests take about WORK, the excess is shed with a proper 503.
    served = [latency for response, latency in shedding if response.status_code == 200]
    shed = [response for response, _ in shedding if response.status_code != 200]
    assert served
    assert shed
    assert len(served) + len(shed) == CLIENTS * PER_CLIENT
    for response in shed:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/problem+json"
        assert json.loads(response.content)["detail"] == "concurrency limit reached"
    p50_protected = _quantile(served, 0.5)
    p99_protected = _quantile(served, 0.99)
    assert p99_protected < 10 * WORK, p99_protected
    assert p50_protected < 2 * WORK, p50_protected
    assert p99_protected < p99_unprotected, (p99_protected, p99_unprotected)
