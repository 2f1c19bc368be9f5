"""Circuit breaking: an upstream that starts failing is cut off, probed, and taken back once it recovers.

The replica answers 503 to every request for a while. The breaker (failure ratio 50 % over at least 10 calls)
opens, and further calls fail at once with CircuitOpenError, without reaching the replica. After the open time, one
probe goes through. The replica has recovered by then, so the probe succeeds and the circuit closes. The status
app shows each state as it happens.

Run: python examples/circuit_breaking.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse

import anyio
import httpx

import connectivity as cx
from connectivity import admin
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import serve


def breaker_state() -> str:
    circuits = admin.snapshot("breakers")["breakers"]["inventory"]["circuits"]  # type: ignore[index]
    return ", ".join(f"{key}: {circuit['state']}" for key, circuit in circuits.items())


async def main() -> None:
    breaker = cx.CircuitBreaker(name="inventory", failure_ratio=0.5, minimum_calls=10, window=30.0, open_for=0.5)
    upstream = FaultyUpstream(name="inventory", faults=Faults(error_rate=1.0, error_status=503))
    with serve(upstream, name="inventory") as server:
        transport = cx.transport(retry=False, breaker=breaker, name="inventory")
        sent = answered = rejected = 0
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            for _ in range(20):
                sent += 1
                try:
                    response = await client.get("/stock/42")
                    answered += response.status_code == 200
                except cx.CircuitOpenError as error:
                    rejected += 1
                    last = error
            print(f"failing upstream: {sent} calls, {rejected} rejected at once ({last.state}, probe in ", end="")
            print(f"{last.retry_after:.2f} s); the upstream saw {upstream.stats.requests} requests")
            print(f"status app: {breaker_state()}")

            upstream.faults = Faults()  # the replica recovers
            while True:  # wait out the open time: the next call after it is the probe
                try:
                    response = await client.get("/stock/42")
                    break
                except cx.CircuitOpenError as error:
                    await anyio.sleep(error.retry_after or 0.05)
            print(f"probe answered {response.status_code}; status app: {breaker_state()}")
            for _ in range(10):
                sent += 1
                response = await client.get("/stock/42")
                answered += response.status_code == 200
    print(f"ok: {answered}/{sent} calls answered 200 after recovery; {rejected} were rejected while open")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
