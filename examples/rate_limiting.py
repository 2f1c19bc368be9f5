"""Rate limiting on both sides: a FastAPI service limits each API key by plan; clients pace themselves.

The service (FastAPI under uvicorn on 127.0.0.1) runs RateLimitMiddleware keyed by API key: "interactive" keys
may send 10 requests per second, "batch" keys 5. It answers 429 with Retry-After, the IETF RateLimit fields and a
problem body; allowed responses carry RateLimit-Policy and RateLimit as well.

1. An impatient client fires 30 requests at once: the service admits a burst of about 10 and refuses the rest.
2. A client with RateLimitTransport(mode="wait") at 8 requests per second fires 12 at once: they queue (in order)
   on the client, leave spaced out, and the service never has to refuse one.
3. A batch client configured far too generously (100/s) meets the service's 5/s. Once the key's quota is spent,
   the service's answer says so (RateLimit r=0;t=1) and the transport holds that host off for that long, so the
   next calls wait instead of running into 429s. (A 429's Retry-After is honoured the same way.)

Run: python examples/rate_limiting.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import anyio
import httpx
from fastapi import FastAPI

import connectivity as cx
from connectivity.middleware.ratelimit import RateLimitMiddleware, api_key
from connectivity.testing.server import serve
from connectivity.transports.ratelimit import RateLimitTransport

PLANS = {"interactive-key-1": "interactive", "interactive-key-2": "interactive", "batch-key-1": "batch"}


def plan_of(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return PLANS.get(value.decode("latin-1"))
    return None


def service() -> RateLimitMiddleware:
    app = FastAPI()

    @app.get("/quote/{n}")
    async def quote(n: int) -> dict[str, int]:
        return {"n": n}

    return RateLimitMiddleware(
        app,
        limiter=cx.RateLimiter("2/s", name="anonymous"),
        key=api_key(),
        plans={
            "interactive": cx.RateLimiter("10/s", name="interactive"),
            "batch": cx.RateLimiter("5/s", name="batch"),
        },
        plan=plan_of,
        headers=True,  # the RateLimit fields on allowed responses too, so clients can pace themselves
    )


async def impatient(url: str, statuses: collections.Counter[int]) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"x-api-key": "interactive-key-1"}) as client:

        async def one(n: int) -> None:
            response = await client.get(f"/quote/{n}")
            statuses[response.status_code] += 1
            if response.status_code == 429 and statuses[429] == 1:
                headers = response.headers
                print(f"  a 429: Retry-After {headers['retry-after']}, RateLimit {headers['ratelimit']}")
                print(f"         {response.json()['title']}: {response.json()['detail']}")

        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(one, n)
    print(f"1. impatient client, 30 requests at once: {statuses[200]} answered, {statuses[429]} refused with 429")


async def paced(url: str, statuses: collections.Counter[int]) -> None:
    limiter = cx.RateLimiter(cx.RateLimit(8, 1.0, burst=1, name="8/s"), name="paced-client")
    transport = RateLimitTransport(httpx.AsyncHTTPTransport(), limiter, mode="wait", max_wait=2.0)
    sent_at: list[float] = []
    async with httpx.AsyncClient(
        transport=transport, base_url=url, headers={"x-api-key": "interactive-key-2"}
    ) as c:
        began = time.monotonic()

        async def one(n: int) -> None:
            response = await c.get(f"/quote/{n}")
            sent_at.append(time.monotonic() - began)
            statuses[response.status_code] += 1
            if n == 0:
                print(f"  the service advertises RateLimit-Policy {response.headers['ratelimit-policy']}")

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(one, n)
    spacing = (max(sent_at) - min(sent_at)) / (len(sent_at) - 1)
    print(
        f"2. paced client (8/s, wait), 12 requests at once: {statuses[200]} answered, {statuses[429]} refused; "
        f"answers {spacing * 1000:.0f} ms apart on average, the last after {max(sent_at):.2f} s"
    )


async def cooperative(url: str, statuses: collections.Counter[int]) -> None:
    limiter = cx.RateLimiter("100/s", name="batch-client")  # far more than the service allows this key
    transport = RateLimitTransport(httpx.AsyncHTTPTransport(), limiter, mode="wait", max_wait=2.0)
    async with httpx.AsyncClient(transport=transport, base_url=url, headers={"x-api-key": "batch-key-1"}) as c:
        began = time.monotonic()
        for n in range(8):
            response = await c.get(f"/quote/{n}")
            statuses[response.status_code] += 1
            held = transport.describe()["held_off"]
            if held or response.status_code == 429:
                print(
                    f"  call {n} at {time.monotonic() - began:.2f} s: {response.status_code}, "
                    f"RateLimit {response.headers['ratelimit']}, Retry-After {response.headers.get('retry-after')}"
                    f"; the client now holds off {held}"
                )
        elapsed = time.monotonic() - began
    print(
        f"3. batch client (100/s configured, the service allows 5/s), 8 calls in turn: {statuses[200]} answered, "
        f"{statuses[429]} refused with 429; finished after {elapsed:.2f} s"
    )


async def main() -> None:
    with serve(service(), name="quotes") as server:
        parts = [collections.Counter[int]() for _ in range(3)]
        await impatient(server.url, parts[0])
        await paced(server.url, parts[1])
        await cooperative(server.url, parts[2])
    answered = sum(part[200] for part in parts)
    total = sum(part.total() for part in parts)
    refused = [part[429] for part in parts]
    print(
        f"ok: {answered}/{total} calls answered 200; 429s: {refused[0]} for the impatient client, "
        f"{refused[1]} for the paced one, {refused[2]} for the cooperative batch client"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
