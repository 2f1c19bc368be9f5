"""Load balancing across three real uvicorn replicas on loopback: one healthy, one failing half its requests with
503, one 200 ms slower.

The must-show scenario: P2C-EWMA sends at most 10 % of the attempts to the slow replica once warmed up; the failing
replica is ejected exactly when it reaches the configured consecutive 5xx, gets no new attempt while ejected and
comes back when its ejection time ends; with retries preferring another endpoint the client sees >= 99.9 %
success over 2,000 requests. Round robin runs in the same test, over the same replicas, for comparison.

Requests run with bounded concurrency (8 at a time; every load loop is bounded); ejection times are short (0.25 s,
capped at 1 s) so several eject/return cycles happen within the run. Concurrency matters to the EWMA share: the
replicas run in this process, so under heavier concurrency the "healthy" one queues behind the client and the other
servers for the GIL (p99 ~200 ms at 16 in flight), and P2C-EWMA, rightly, starts using the slow one's spare
capacity (6-11 % at 16 in flight, 2-4 % at 8).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.balancing import EWMA, RoundRobin
from connectivity.balancing.health import HealthCheck
from connectivity.policies.outlier import EJECT, OutlierDetector, OutlierEvent
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import RunningServer
from connectivity.transports import HTTPTransport, Layer, RetryTransport
from connectivity.transports.balancing import ENDPOINT_EXTENSION, LoadBalancingTransport

CONSECUTIVE_5XX = 5
WARM_UP = 200
CONCURRENCY = 8


class Journal(Layer):
    """Below the balancer: writes every attempt's start and status in order, next to the detector's events."""

    def __init__(self, inner: HTTPTransport) -> None:
        super().__init__(inner)
        self.entries: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def note(self, kind: str, key: str, detail: Any = None) -> None:
        with self.lock:
            self.entries.append((kind, key, detail))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = str(request.extensions[ENDPOINT_EXTENSION])
        self.note("start", key)
        try:
            response = await self._async_inner().handle_async_request(request)
        except Exception as exc:
            self.note("error", key, type(exc).__name__)
            raise
        self.note("status", key, response.status_code)  # the balancer records it right after: same order
        return response


def _run(picker: Any, servers: dict[str, RunningServer[FaultyUpstream]], requests: int) -> dict[str, Any]:
    endpoints = [f"127.0.0.1:{server.port}" for server in servers.values()]
    detector = OutlierDetector(
        consecutive_5xx=CONSECUTIVE_5XX,
        always_eject_one_host=True,  # 3 endpoints: the default 10 % cap would never eject one
        base_ejection_time=0.25,
        max_ejection_time=1.0,
        interval=1.0,
    )
    journal = Journal(HTTPTransport())
    returned_at: dict[float, float] = {}

    def on_event(event: OutlierEvent) -> None:
        journal.note(event.action, event.key, event)
        if event.action != EJECT:
            returned_at[event.at] = time.monotonic()

    detector.add_listener(on_event)
    balancer = LoadBalancingTransport(
        journal, service="orders", resolver=endpoints, picker=picker, outlier=detector
    )
    retry = cx.Retry(attempts=3, prefer_other_endpoint=True, backoff=cx.Backoff.exponential(base=0.005, cap=0.02))
    outcomes: Counter[str] = Counter()

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=RetryTransport(balancer, retry), base_url="http://orders"
        ) as client:

            async def worker(queue: list[int]) -> None:
                while queue:
                    queue.pop()
                    try:
                        response = await client.get("/orders")
                        outcomes[str(response.status_code)] += 1
                    except httpx.HTTPError as error:
                        outcomes[type(error).__name__] += 1

            for count, measured in ((WARM_UP, False), (requests, True)):
                if measured:
                    outcomes.clear()
                    for server in servers.values():
                        server.app.reset_stats()
                queue = list(range(count))
                async with anyio.create_task_group() as group:
                    for _ in range(CONCURRENCY):
                        group.start_soon(worker, queue)

    began = time.monotonic()
    anyio.run(main, backend="asyncio")
    attempts = {name: server.app.wait_for(lambda s: s.in_flight == 0).requests for name, server in servers.items()}
    return {
        "elapsed": time.monotonic() - began,
        "attempts": attempts,
        "share": {name: count / sum(attempts.values()) for name, count in attempts.items()},
        "success": outcomes["200"] / requests,
        "outcomes": dict(outcomes),
        "journal": list(journal.entries),
        "returned_at": returned_at,
        "keys": {name: f"127.0.0.1:{server.port}" for name, server in servers.items()},
    }


def _check_ejections(result: dict[str, Any]) -> tuple[int, int]:
    """Replay the journal (warm-up included) for the failing replica: ejected exactly at the configured
    consecutive 5xx, no new attempt while ejected, back after its ejection time.

    Returns:
        The ejections seen, and the attempts sent to the replica after a return.
    """
    flaky = result["keys"]["flaky"]
    consecutive = 0
    ejected_at: float | None = None
    duration = 0.0
    ejections = attempts_after_return = 0
    returned = False
    for kind, key, detail in result["journal"]:
        if key != flaky:
            continue
        if kind == EJECT:
            assert consecutive == CONSECUTIVE_5XX, f"ejected after {consecutive} consecutive 5xx"
            ejections += 1
            ejected_at, duration = detail.at, detail.duration
            consecutive = 0
        elif kind == "return":
            assert ejected_at is not None
            assert detail.at - ejected_at == pytest.approx(duration)
            assert result["returned_at"][detail.at] >= ejected_at + duration  # not a moment early, in real time
            ejected_at = None
            consecutive = 0
            returned = True
        elif kind == "start":
            assert ejected_at is None, "an attempt was sent to an ejected endpoint"
            attempts_after_return += returned
        elif ejected_at is None:  # an outcome counted by the detector (stragglers of an ejected host are not)
            consecutive = consecutive + 1 if detail in (503, "ConnectError") else 0
            assert consecutive <= CONSECUTIVE_5XX
    return ejections, attempts_after_return


def test_p2c_ewma_avoids_the_slow_replica_ejects_the_failing_one_and_retries_keep_success(
    faulty_upstream_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = {
        "healthy": faulty_upstream_factory("healthy"),
        "flaky": faulty_upstream_factory("flaky", faults=Faults(error_rate=0.5, error_status=503)),
        "slow": faulty_upstream_factory("slow", faults=Faults(latency=0.2)),
    }
    ewma = _run(EWMA(rng=random.Random(7)), servers, 2000)
    round_robin = _run(RoundRobin(rng=random.Random(7)), servers, 600)

    with capsys.disabled():
        print()
        for name, result in (("P2C-EWMA", ewma), ("round robin", round_robin)):
            shares = ", ".join(f"{replica} {share:.1%}" for replica, share in result["share"].items())
            print(
                f"{name:>11}: attempts {shares}; client success {result['success']:.2%} "
                f"({result['outcomes']}) in {result['elapsed']:.1f} s"
            )

    assert ewma["share"]["slow"] <= 0.10
    assert round_robin["share"]["slow"] > 0.25  # what the slow replica gets when latency is ignored
    assert ewma["success"] >= 0.999
    assert round_robin["success"] >= 0.999
    for result in (ewma, round_robin):
        ejections, after_return = _check_ejections(result)
        assert ejections >= 1
        assert after_return >= 1  # back in service after its ejection time


def test_active_health_checks_take_a_failing_replica_out_and_bring_it_back(
    mode: str, faulty_upstream_factory: Any
) -> None:
    good = faulty_upstream_factory("good")
    sick = faulty_upstream_factory("sick", faults=Faults(error_rate=1.0, error_status=503))
    keys = {f"127.0.0.1:{good.port}": "good", f"127.0.0.1:{sick.port}": "sick"}
    check = HealthCheck(interval=0.05, timeout=1.0, no_traffic_interval=None, healthy_threshold=2)
    transport = LoadBalancingTransport(
        HTTPTransport(), service="orders", resolver=list(keys), picker=RoundRobin(), health_check=check
    )
    changed = threading.Event()
    seen: list[str] = []

    def wait_for(condition: Any) -> None:
        for _ in range(500):  # bounded: 5 s
            if condition():
                return
            changed.wait(0.01)
        raise AssertionError("condition not reached in 5 s")

    def sync() -> None:
        with httpx.Client(transport=transport, base_url="http://orders") as client:
            client.get("/")
            wait_for(lambda: transport.endpoints.unhealthy == {f"127.0.0.1:{sick.port}"})
            seen.extend(keys[str(client.get("/").extensions[ENDPOINT_EXTENSION])] for _ in range(6))
            sick.app.faults = Faults()
            wait_for(lambda: transport.endpoints.unhealthy == frozenset())

    async def async_() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            await client.get("/")
            await anyio.to_thread.run_sync(wait_for, lambda: bool(transport.endpoints.unhealthy))
            assert transport.endpoints.unhealthy == {f"127.0.0.1:{sick.port}"}
            seen.extend([keys[str((await client.get("/")).extensions[ENDPOINT_EXTENSION])] for _ in range(6)])
            sick.app.faults = Faults()
            await anyio.to_thread.run_sync(wait_for, lambda: not transport.endpoints.unhealthy)

    if mode == "sync":
        sync()
    else:
        anyio.run(async_, backend=mode)
    assert seen == ["good"] * 6
    probes = [record for record in sick.app.stats.records if record.path == "/healthz"]
    assert probes
    assert probes[0].header("host") == "orders"
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("connectivity-health-")]
