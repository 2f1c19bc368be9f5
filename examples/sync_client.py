"""The same stack with the sync httpx.Client: retries, a POST made retryable by its Idempotency-Key, a deadline.

Run: python examples/sync_client.py
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

import connectivity as cx
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import serve

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REQUESTS = 30

# Seeded fault draws, so every run meets the same faults: 20 % of orders fail, and the first payment attempt fails
# but its retry goes through. /slow takes 2 s to answer anything. All three are served on 127.0.0.1.
orders = FaultyUpstream(name="orders", faults=Faults(error_rate=0.2), rng=random.Random(2))
payments = FaultyUpstream(name="payments", faults=Faults(error_rate=0.5), rng=random.Random(2))
slow = FaultyUpstream(name="slow", faults=Faults(latency=2.0))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    path = str(scope.get("path", ""))
    target = slow if path.startswith("/slow") else payments if path.startswith("/payments") else orders
    await target(scope, receive, send)


transport = cx.transport(
    timeout=cx.Timeout(total=2.0, per_try=0.5),
    retry=cx.Retry(attempts=3, backoff=cx.Backoff.exponential(base=0.01, cap=0.1), budget=cx.RetryBudget()),
)


def main(base_url: str) -> None:
    with httpx.Client(transport=transport, base_url=base_url) as client:
        responses = [client.get(f"/orders/{n}") for n in range(REQUESTS)]
        successes = sum(response.status_code == 200 for response in responses)
        attempts = sum(response.extensions["connectivity"].attempts for response in responses)
        print(f"GET: {successes}/{REQUESTS} succeeded in {attempts} attempts ({orders.stats.errors} x 503 hidden)")

        # A POST is retried only when the server can tell a retry from a new request: the Idempotency-Key.
        key = str(uuid.uuid4())
        paid = client.post("/payments", json={"order": 42, "cents": 1999}, headers={"Idempotency-Key": key})
        record = paid.extensions["connectivity"]
        keys = {r.header("idempotency-key") for r in payments.stats.records}
        print(f"POST with Idempotency-Key: {paid.status_code} after {record.attempts} attempt(s) {record.reasons}")
        print(f"  every attempt carried the same key: {keys == {key}}")

        payments.faults = Faults(error_rate=1.0)
        refused = client.post("/payments", json={"order": 43, "cents": 500})
        record = refused.extensions["connectivity"]
        print(f"POST without a key: {refused.status_code} after {record.attempts} attempt ({record.gave_up})")

        # The ambient deadline works the same with the sync client; nothing waits past it.
        began = time.monotonic()
        try:
            with cx.deadline(0.3):
                client.get("/slow/report")
        except cx.DeadlineExceededError as exc:
            waited = time.monotonic() - began
            print(f"/slow/report: {type(exc).__name__} after {waited:.2f} s")
        else:
            raise SystemExit("the slow path answered within its deadline?")
    print(
        f"ok: {successes}/{REQUESTS} GETs succeeded, payment {paid.status_code}, deadline hit after {waited:.2f} s"
    )


if __name__ == "__main__":
    with serve(app, name="upstream") as server:
        main(server.url)
