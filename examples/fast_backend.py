"""backend="auto": the fastest network backend that can serve each client, with the same semantics everywhere.

On asyncio with the `fast` extra installed, aiohttp serves the calls; on trio, for a sync client, for HTTP/2 or
without the extra, httpx's own httpcore does. Either way retries, deadlines and errors behave the same.

Run: python examples/fast_backend.py [--backend asyncio|trio]
     (pip install 'connectivity-sdk[fast]' for the aiohttp backend)
"""

from __future__ import annotations

import argparse
import random

import anyio
import httpx

import connectivity as cx
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import RunningServer, serve
from connectivity.transports import AutoTransport, Layer

REQUESTS = 40


def network_of(transport: object) -> object:
    """The innermost (network) transport of a stack."""
    while isinstance(transport, Layer):
        transport = transport.inner
    return transport


async def main(server: RunningServer[FaultyUpstream], loop: str) -> None:
    transport = cx.transport(
        backend="auto",
        timeout=cx.Timeout(total=2.0, per_try=0.5),
        retry=cx.Retry(attempts=3, backoff=cx.Backoff.exponential(base=0.01, cap=0.05)),
        limits=httpx.Limits(max_connections=8),
    )
    auto = network_of(transport)
    assert isinstance(auto, AutoTransport)

    successes = attempts = 0
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:

        async def call(n: int) -> None:
            nonlocal successes, attempts
            response = await client.get(f"/orders/{n}")
            successes += response.status_code == 200
            attempts += response.extensions["connectivity"].attempts

        async with anyio.create_task_group() as tg:
            for n in range(REQUESTS):
                tg.start_soon(call, n)
    served = auto.selected[loop]
    print(f"{loop}: served by {served}; {successes}/{REQUESTS} succeeded in {attempts} attempts")

    # A sync client over the same options is always served by httpcore.
    with httpx.Client(transport=transport, base_url=server.url) as client:
        status = client.get("/orders/sync").status_code
    print(f"sync: served by {auto.selected['sync']}; status {status}")

    # A feature a backend lacks fails when the transport is built, never silently.
    try:
        cx.transport(backend="aiohttp", http2=True)
    except cx.BackendUnavailableError as exc:
        print(f"backend='aiohttp', http2=True: {type(exc).__name__}: {exc.reason}")
    else:
        raise SystemExit("aiohttp accepted HTTP/2?")
    print(f"ok: {successes}/{REQUESTS} succeeded, served by {served} on {loop}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the fastest network backend for the running event loop")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    # Seeded: 10 % of requests fail with 503, and the retries hide them.
    upstream = FaultyUpstream(name="orders", faults=Faults(error_rate=0.1), rng=random.Random(7))
    with serve(upstream, name="orders") as running:
        anyio.run(main, running, args.backend, backend=args.backend)
