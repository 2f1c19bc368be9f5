"""Load balancing: three replicas of one service, a slow one and a failing one, balanced inside the client.

Three replicas of "orders" run on 127.0.0.1: one healthy, one answering 503 to half of its requests, one taking
200 ms per request. The client calls http://orders/... through
``cx.transport(discovery=[...], balancer=EWMA(), outlier=OutlierDetector(...), retry=...)``, so every attempt
goes to one replica picked by peak-EWMA latency times load. The slow replica gets little traffic, the failing one
is ejected after 3 errors in a row, and retries (which prefer another replica) hide its errors from the caller.
The same traffic with round robin shows what the slow replica costs when the picker ignores it. Last, a route
table splits traffic 90/10 between two versions (a canary), keeps a user on one side, and lets ``x-canary: 1``
force the canary.

Run: python examples/load_balancing.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping

import anyio
import httpx

import connectivity as cx
from connectivity.balancing import EWMA, Picker, RoundRobin
from connectivity.policies.outlier import OutlierDetector, OutlierEvent
from connectivity.routing import Override, Route, RouteChoice, Sticky
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import serve
from connectivity.transports import RoutingTransport

CALLS = 240
CONCURRENCY = 8
FATES = random.Random(2)


class Tally:
    """What a batch of calls did: answers, latencies, and the replica each answer came from."""

    def __init__(self) -> None:
        self.calls = 0
        self.ok = 0
        self.latencies: list[float] = []
        self.answered_by: Counter[str] = Counter()
        self.routes: Counter[tuple[str, str]] = Counter()  # (target, reason) from the route table

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0


async def call_many(
    client: httpx.AsyncClient,
    calls: int,
    names: Mapping[str, str],
    *,
    headers: Mapping[str, str] | None = None,
    tally: Tally | None = None,
) -> Tally:
    """``calls`` GETs, ``CONCURRENCY`` at a time."""
    tally = tally if tally is not None else Tally()
    todo = iter(range(calls))

    async def worker() -> None:
        for number in todo:
            started = time.perf_counter()
            response = await client.get(f"/orders/{number}", headers=headers)
            tally.latencies.append(time.perf_counter() - started)
            tally.calls += 1
            tally.ok += response.status_code == 200
            endpoint = response.extensions.get("connectivity.endpoint")  # the replica that gave this answer
            if endpoint is not None:
                tally.answered_by[names.get(endpoint.key, endpoint.key)] += 1
            choice: RouteChoice | None = response.extensions.get("connectivity.route")
            if choice is not None:
                tally.routes[choice.target, choice.reason] += 1

    async with anyio.create_task_group() as group:
        for _ in range(CONCURRENCY):
            group.start_soon(worker)
    return tally


def shares(counts: Mapping[str, int], order: list[str]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{name} {counts.get(name, 0)} ({counts.get(name, 0) / total:.0%})" for name in order)


async def balanced(
    picker: Picker, replicas: dict[str, FaultyUpstream], addresses: dict[str, str]
) -> tuple[Tally, Counter[str], list[OutlierEvent]]:
    """CALLS calls through the balanced stack; returns the tally, the attempts each replica saw, the ejections."""
    for upstream in replicas.values():
        upstream.reset_stats()
    FATES.seed(2)  # the flaky replica's n-th request fails or not alike in every run
    ejections: list[OutlierEvent] = []
    # Envoy's default cap (10 % of the hosts) never ejects one of 3: allow one ejection whatever the cap.
    detector = OutlierDetector(always_eject_one_host=True, consecutive_5xx=3, base_ejection_time=30.0)
    detector.add_listener(lambda event: ejections.append(event) if event.action == "eject" else None)
    transport = cx.transport(
        discovery=list(addresses.values()),  # "127.0.0.1:<port>" of each replica
        balancer=picker,
        outlier=detector,
        retry=cx.Retry(attempts=3),  # a retry picks again and prefers a replica this call has not tried
        service="orders",
    )
    names = {address: name for name, address in addresses.items()}
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        tally = await call_many(client, CALLS, names)
    attempts = Counter({name: upstream.stats.requests for name, upstream in replicas.items()})
    return tally, attempts, ejections


def report(
    title: str,
    tally: Tally,
    attempts: Counter[str],
    ejections: list[OutlierEvent],
    names: Mapping[str, str],
    elapsed: float,
) -> None:
    order = list(attempts)
    print(f"{title}: {tally.ok}/{tally.calls} calls answered 200 in {elapsed:.2f} s, ", end="")
    print(f"latency p50 {tally.percentile(0.5):.0f} ms, p99 {tally.percentile(0.99):.0f} ms")
    print(f"  attempts each replica saw: {shares(attempts, order)}")
    for event in ejections:
        print(f"  ejected {names[event.key]} ({event.key}) by {event.reason} for {event.duration:.0f} s")
    # The replica that gave each answer is in response.extensions["connectivity.endpoint"].
    print(f"  answers by replica: {shares(tally.answered_by, order)}")


@contextlib.contextmanager
def running(replicas: Mapping[str, FaultyUpstream]) -> Iterator[dict[str, str]]:
    """Serve each replica on 127.0.0.1; yields name -> "127.0.0.1:<port>"."""
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(serve(app, name=name)) for name, app in replicas.items()}
        yield {name: f"{server.host}:{server.port}" for name, server in servers.items()}


async def main() -> None:
    half_fail = Faults(error_rate=0.5, error_status=503)
    replicas = {
        "healthy": FaultyUpstream(name="healthy"),
        "flaky": FaultyUpstream(name="flaky", faults=half_fail, rng=FATES),
        "slow": FaultyUpstream(name="slow", faults=Faults(latency=0.2)),
    }
    calls = answered = 0
    slow_share: dict[str, float] = {}
    with running(replicas) as addresses:
        names = {address: name for name, address in addresses.items()}
        print("replicas: " + ", ".join(f"{name} {address}" for name, address in addresses.items()))
        for title, picker in (("EWMA", EWMA(rng=random.Random(4))), ("round robin", RoundRobin())):
            started = time.perf_counter()
            tally, attempts, ejections = await balanced(picker, replicas, addresses)
            report(title, tally, attempts, ejections, names, time.perf_counter() - started)
            ejected = {names[event.key] for event in ejections}
            assert ejected == {"flaky"}, f"expected the flaky replica to be ejected, got {ejected or 'none'}"
            calls, answered = calls + tally.calls, answered + tally.ok
            slow_share[title] = attempts["slow"] / sum(attempts.values())

    versions = {"v1": FaultyUpstream(name="orders-v1"), "v2": FaultyUpstream(name="orders-v2")}
    with running(versions) as addresses:
        route = Route(
            "orders",
            separated_prefix="/orders",
            split={"orders-v1": 90, "orders-v2": 10},  # percent; the canary last, so raising it only adds users
            sticky=Sticky(header="x-user-id"),  # a request with this header always lands on the same side
            overrides=[Override.header("x-canary", "1", target="orders-v2")],
        )
        transport = RoutingTransport(
            [route],
            targets={  # each target is a stack of its own (retries, balancing over that version's replicas)
                "orders-v1": cx.transport(discovery=[addresses["v1"]], service="orders"),
                "orders-v2": cx.transport(discovery=[addresses["v2"]], service="orders"),
            },
            rng=random.Random(3),
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            split = await call_many(client, 200, {})
            forced = await call_many(client, 20, {}, headers={"x-canary": "1"})
            users: dict[str, Tally] = {}
            for user in ("ann", "bob", "cyd", "dee", "eve", "sam"):
                users[user] = await call_many(client, 5, {}, headers={"x-user-id": user})
    canary = sum(count for (target, _), count in split.routes.items() if target == "orders-v2")
    print(f"canary split 90/10: {dict(sorted(split.routes.items()))} -> {canary / split.calls:.1%} to the canary")
    print(f"x-canary: 1 -> {dict(forced.routes)}")
    sides = {user: sorted({target for target, _ in tally.routes}) for user, tally in users.items()}
    print("sticky by x-user-id, 5 calls each: " + ", ".join(f"{u} {'/'.join(t)}" for u, t in sides.items()))
    assert all(len(targets) == 1 for targets in sides.values()), "a user moved between versions"
    for tally in (split, forced, *users.values()):
        calls, answered = calls + tally.calls, answered + tally.ok
    print(
        f"ok: {answered}/{calls} calls answered 200; the slow replica got {slow_share['EWMA']:.0%} of the "
        f"attempts with EWMA vs {slow_share['round robin']:.0%} with round robin; the flaky replica was ejected; "
        f"the canary took {canary}/{split.calls}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
