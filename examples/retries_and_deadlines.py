"""Retries under a budget, per-try and total timeouts, and an ambient deadline, against a flaky local upstream.

Run: python examples/retries_and_deadlines.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import httpx

import connectivity as cx
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import serve

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REQUESTS = 50

# One replica answers 20 % of requests with 503 after 1-5 ms (seeded: every run meets the same faults); another
# takes 2 s to answer anything. Both are served on 127.0.0.1, the slow one under /slow.
orders = FaultyUpstream(
    name="orders", faults=Faults(error_rate=0.2, latency=("uniform", 0.001, 0.005)), rng=random.Random(7)
)
slow = FaultyUpstream(name="slow", faults=Faults(latency=2.0), rng=random.Random(7))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    target = slow if str(scope.get("path", "")).startswith("/slow") else orders
    await target(scope, receive, send)


transport = cx.transport(
    # propagate=True: our own upstream may read x-connectivity-timeout-ms (it is off by default).
    timeout=cx.Timeout(total=2.0, per_try=0.5, propagate=True),
    retry=cx.Retry(
        attempts=3,
        backoff=cx.Backoff.exponential(base=0.01, cap=0.1),
        budget=cx.RetryBudget(ratio=0.2, min_per_second=10),
    ),
)


async def main(base_url: str) -> None:
    records: list[cx.CallRecord] = []
    statuses: list[int] = []
    retried: list[dict[str, str]] = []  # connectivity headers the upstream saw on successful retries
    limiter = anyio.CapacityLimiter(10)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:

        async def call(n: int) -> None:
            async with limiter:
                response = await client.get(f"/orders/{n}")
            statuses.append(response.status_code)
            records.append(response.extensions["connectivity"])
            if response.status_code == 200 and response.json()["attempt"] is not None:
                retried.append(response.json()["headers"])

        async with anyio.create_task_group() as group:
            for n in range(REQUESTS):
                group.start_soon(call, n)

        successes = statuses.count(200)
        attempts = sum(record.attempts for record in records)
        gave_up = sorted({record.gave_up for record in records if record.gave_up})
        errors = orders.stats.errors
        print(f"{successes}/{REQUESTS} succeeded in {attempts} attempts; the upstream sent {errors} x 503")
        print(f"  gave up: {gave_up or 'never'}; a successful retry carried {retried[0] if retried else None}")

        # Calls made inside cx.deadline() share what is left of one budget, retries and body reads included.
        with cx.deadline(1.0):
            await client.get("/orders/a")
            await client.get("/orders/b")
            left = cx.current_deadline()
            assert left is not None
            print(f"two calls inside cx.deadline(1.0) left {left.remaining():.3f} s")

        began = time.monotonic()
        try:
            with cx.deadline(0.3):
                await client.get("/slow/report")
        except cx.DeadlineExceededError as exc:
            waited = time.monotonic() - began
            print(f"/slow/report: {type(exc).__name__} after {waited:.2f} s ({exc})")
        else:
            raise SystemExit("the slow path answered within its deadline?")
        await slow.await_for(lambda stats: stats.disconnects == 1)  # the upstream saw the client hang up
    print(f"ok: {successes}/{REQUESTS} requests succeeded, {attempts} attempts, deadline hit after {waited:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="retries, timeouts and deadlines against a flaky upstream")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    with serve(app, name="upstream") as server:
        anyio.run(main, server.url, backend=args.backend)
