"""Hedging: a slow replica and a fast one; the hedge sent after 50 ms answers first.

Run: python examples/hedging.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import time

import anyio
import httpx

import connectivity as cx
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import RunningServer, serve
from connectivity.transports import HTTPTransport

CALLS = 5


class ByAttempt(httpx.AsyncBaseTransport):
    """Sends attempt N to replica N, the way a balancer sends a hedge to another endpoint than the first try."""

    # Every request ends up in an HTTPTransport, which bounds its socket I/O by the ambient deadline: the
    # TimeoutTransport above needs no cancel scope of its own.
    connectivity_deadline_aware = True

    def __init__(self, replicas: list[str]) -> None:
        self._replicas = [httpx.URL(url) for url in replicas]
        self._network = HTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt: int = request.extensions.get("connectivity.attempt", 1)
        replica = self._replicas[(attempt - 1) % len(self._replicas)]
        request.url = request.url.copy_with(host=replica.host, port=replica.port)
        request.headers["host"] = replica.netloc.decode()
        return await self._network.handle_async_request(request)

    async def aclose(self) -> None:
        await self._network.aclose()


async def main(slow: RunningServer[FaultyUpstream], fast: RunningServer[FaultyUpstream]) -> None:
    transport = cx.transport(ByAttempt([slow.url, fast.url]), timeout=2.0, hedge=cx.Hedge(delay=0.05))
    fast_answers = 0
    async with httpx.AsyncClient(transport=transport, base_url="http://replicas") as client:
        for n in range(CALLS):
            began = time.monotonic()
            response = await client.get(f"/quote/{n}")
            replica = response.json()["replica"]
            fast_answers += replica == "fast"
            record: cx.CallRecord = response.extensions["connectivity"]
            print(f"/quote/{n}: {replica} answered in {time.monotonic() - began:.3f} s; {record}")
        # Each losing first attempt was cancelled mid-flight: the slow replica saw its client go away.
        abandoned = (await slow.app.await_for(lambda stats: stats.disconnects == CALLS)).disconnects
        print(f"the slow replica saw {abandoned} attempts abandoned by the client")

        # The same call with hedging turned off for this request: it waits for the slow replica.
        began = time.monotonic()
        response = await client.get("/quote/once", extensions={"connectivity.hedge": False})
        once = time.monotonic() - began
        print(f"/quote/once (no hedge): {response.json()['replica']} answered in {once:.3f} s")
    print(f"ok: {fast_answers}/{CALLS} hedged calls answered by the fast replica; unhedged call took {once:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="hedged requests over a slow and a fast replica")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    slow = FaultyUpstream(name="slow", faults=Faults(latency=0.5))
    fast = FaultyUpstream(name="fast", faults=Faults(latency=0.005))
    with serve(slow, name="slow") as slow_server, serve(fast, name="fast") as fast_server:
        anyio.run(main, slow_server, fast_server, backend=args.backend)
