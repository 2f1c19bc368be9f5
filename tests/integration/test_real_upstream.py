"""The acceptance behaviours of retries, deadlines and hedging against real uvicorn upstreams on loopback."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.testing import Faults
from connectivity.transports import HTTPTransport

from .conftest import AttemptRouter, settled

T = TypeVar("T")


def run(mode: str, sync: Callable[[], T], async_: Callable[[], Awaitable[T]]) -> T:
    return sync() if mode == "sync" else anyio.run(async_, backend=mode)


def request(mode: str, transport: httpx.BaseTransport, method: str, url: str, **kwargs: object) -> httpx.Response:
    def sync() -> httpx.Response:
        with httpx.Client(transport=transport) as client:
            return client.request(method, url, **kwargs)  # type: ignore[arg-type]

    async def async_() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:  # type: ignore[arg-type]
            return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

    return run(mode, sync, async_)


def test_post_is_not_resent_without_idempotency_key(mode: str, faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    server = faulty_upstream_factory("orders", faults=Faults(error_rate=1.0))
    transport = cx.transport(retry=cx.Retry(backoff=cx.Backoff.none()))
    response = request(mode, transport, "POST", f"{server.url}/orders", content=b'{"qty": 1}')
    assert response.status_code == 503
    assert settled(server).requests == 1

    response = request(
        mode, transport, "POST", f"{server.url}/orders", content=b'{"qty": 1}', headers={"Idempotency-Key": "a1"}
    )
    assert response.status_code == 503
    stats = settled(server)
    assert stats.requests == 1 + 3
    assert {record.body for record in stats.records} == {b'{"qty": 1}'}


def test_post_is_resent_after_a_connect_error(mode: str, faulty_upstream_factory, refused_url: str) -> None:  # type: ignore[no-untyped-def]
    server = faulty_upstream_factory("orders")
    transport = cx.transport(
        AttemptRouter(HTTPTransport(), [refused_url, server.url]), retry=cx.Retry(backoff=cx.Backoff.none())
    )
    response = request(mode, transport, "POST", f"{server.url}/orders", content=b"order-1")
    assert response.status_code == 200
    assert response.extensions["connectivity"].reasons == ("connect-failure",)
    stats = settled(server)
    assert stats.requests == 1
    assert stats.records[0].body == b"order-1"


def test_reset_connections_are_retried_for_idempotent_requests(mode: str, faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    flaky = faulty_upstream_factory("flaky", faults=Faults(reset_rate=1.0))
    healthy = faulty_upstream_factory("healthy")
    transport = cx.transport(AttemptRouter(HTTPTransport(), [flaky.url, healthy.url]))
    response = request(mode, transport, "PUT", f"{flaky.url}/item", content=b"v2")
    assert response.status_code == 200
    assert response.extensions["connectivity"].reasons == ("reset",)
    assert settled(healthy).records[0].body == b"v2"


def test_one_second_deadline_against_a_three_second_upstream(mode: str, faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    server = faulty_upstream_factory("slow", faults=Faults(latency=3.0))
    transport = cx.transport(timeout=cx.Timeout(total=1.0))
    started = time.monotonic()
    with pytest.raises(cx.DeadlineExceededError):
        request(mode, transport, "GET", f"{server.url}/slow")
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 1.5
    # No attempt outlives the deadline: the upstream saw the client go away while it was still working.
    stats = server.app.wait_for(lambda s: s.in_flight == 0 and s.disconnects >= 1, timeout=1.5)
    assert stats.completed == 0 or stats.ok == 0


def test_a_deadline_over_a_transport_that_does_not_enforce_it_cancels_the_call(
    mode: str, faulty_upstream_factory
) -> None:  # type: ignore[no-untyped-def]
    # httpx's own transports do not know the deadline: async calls run in a cancel scope (opened at the call's
    # first wait), sync ones get httpx's timeouts clamped to it.
    server = faulty_upstream_factory("slow", faults=Faults(latency=3.0))
    inner = httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport()
    transport = cx.transport(inner, timeout=cx.Timeout(total=1.0), retry=None)
    started = time.monotonic()
    with pytest.raises(cx.DeadlineExceededError):
        request(mode, transport, "GET", f"{server.url}/slow")
    assert 0.95 <= time.monotonic() - started < 1.5
    stats = server.app.wait_for(lambda s: s.in_flight == 0 and s.disconnects >= 1, timeout=1.5)
    assert stats.completed == 0 or stats.ok == 0


def test_deadline_covers_retries_against_a_slow_replica(mode: str, faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    server = faulty_upstream_factory("slow", faults=Faults(latency=0.3, error_rate=1.0))
    transport = cx.transport(
        timeout=cx.Timeout(total=1.0), retry=cx.Retry(attempts=10, backoff=cx.Backoff.constant(0.05))
    )
    started = time.monotonic()
    with pytest.raises(cx.DeadlineExceededError):
        request(mode, transport, "GET", f"{server.url}/")
    assert time.monotonic() - started < 1.4
    stats = server.app.wait_for(lambda s: s.in_flight == 0, timeout=1.5)
    # 0.3 + 0.05 + 0.3 + 0.05 + (cut at 1.0): the third attempt starts with 0.3 s in hand, so a slow machine still
    # sends it (with less left than the backoff, the retry layer would return the 503 instead of trying again).
    assert stats.requests == 3


def test_per_try_timeout_moves_on_to_a_healthy_replica(mode: str, faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    slow = faulty_upstream_factory("slow", faults=Faults(latency=5.0))
    fast = faulty_upstream_factory("fast")
    transport = cx.transport(
        AttemptRouter(HTTPTransport(), [slow.url, fast.url]),
        timeout=cx.Timeout(total=3.0, per_try=0.3),
        retry=cx.Retry(backoff=cx.Backoff.none()),
    )
    started = time.monotonic()
    response = request(mode, transport, "GET", f"{slow.url}/")
    assert response.json()["replica"] == "fast"
    assert response.extensions["connectivity"].reasons == ("per-try-timeout",)
    assert time.monotonic() - started < 1.5
    slow.app.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0, timeout=2.0)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hedging_returns_the_fast_replica_and_cancels_the_slow_request(
    backend: str, faulty_upstream_factory
) -> None:  # type: ignore[no-untyped-def]
    slow = faulty_upstream_factory("slow", faults=Faults(latency=3.0))
    fast = faulty_upstream_factory("fast")
    transport = cx.transport(
        AttemptRouter(HTTPTransport(), [slow.url, fast.url]),
        timeout=cx.Timeout(total=5.0),
        hedge=cx.Hedge(delay=0.1),
    )
    started = time.monotonic()
    response = request(backend, transport, "GET", f"{slow.url}/report")
    assert time.monotonic() - started < 1.0
    assert response.json()["replica"] == "fast"
    record = response.extensions["connectivity"]
    assert (record.hedges, record.winner) == (1, 1)
    # The slow replica saw the client disconnect: its request was cancelled, its connection closed.
    stats = slow.app.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0, timeout=2.0)
    assert stats.ok == 0
    slow.wait_for_connections(0, timeout=2.0)


def test_sync_hedging_returns_the_fast_replica(faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    slow = faulty_upstream_factory("slow", faults=Faults(latency=0.5))
    fast = faulty_upstream_factory("fast")
    transport = cx.transport(AttemptRouter(HTTPTransport(), [slow.url, fast.url]), hedge=cx.Hedge(delay=0.05))
    response = request("sync", transport, "GET", f"{slow.url}/report")
    assert response.json()["replica"] == "fast"
    # A blocking read cannot be interrupted: the slow attempt completes in the background and is then closed.
    slow.app.wait_for(lambda s: s.in_flight == 0, timeout=3.0)


def test_nothing_is_left_open_after_1000_requests_with_30_percent_faults(
    mode: str, faulty_upstream_factory
) -> None:  # type: ignore[no-untyped-def]
    server = faulty_upstream_factory(
        "faulty", faults=Faults(error_rate=0.2, reset_rate=0.1, reset_mode="close"), seed=7
    )
    network = HTTPTransport()
    transport = cx.transport(
        network,
        timeout=cx.Timeout(total=5.0),
        retry=cx.Retry(
            attempts=4, backoff=cx.Backoff.none(), budget=cx.RetryBudget(ratio=1.0, min_per_second=100)
        ),
    )
    url = f"{server.url}/item"
    total = 1000

    def sync() -> list[int]:
        statuses = []
        with httpx.Client(transport=transport) as client:
            for _ in range(total):
                try:
                    statuses.append(client.get(url).status_code)
                except cx.RetriesExhaustedError:
                    statuses.append(-1)
            assert all(c.is_idle() for c in network.sync._pool.connections)
        return statuses

    async def async_() -> list[int]:
        statuses = []
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(total):
                try:
                    statuses.append((await client.get(url)).status_code)
                except cx.RetriesExhaustedError:
                    statuses.append(-1)
            assert all(c.is_idle() for c in network.asynchronous._pool.connections)
        return statuses

    statuses = run(mode, sync, async_)
    assert len(statuses) == total
    assert statuses.count(200) > 0.98 * total  # 30 % faults, up to 4 attempts: almost all succeed
    stats = server.app.wait_for(lambda s: s.in_flight == 0, timeout=5.0)
    assert stats.requests > total  # retries happened
    server.wait_for_connections(0, timeout=5.0)  # the client closed every connection it opened


async def trickle(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """An upstream whose headers come at once and whose body trickles in over 1.2 s."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    for index in range(4):
        with anyio.move_on_after(0.3):
            await receive()  # returns early only if the client goes away
        await send({"type": "http.response.body", "body": b"x", "more_body": index < 3})


def test_total_deadline_covers_reading_the_body(mode: str) -> None:
    from connectivity.testing.server import serve

    with serve(trickle, name="trickle") as server:
        transport = cx.transport(timeout=cx.Timeout(total=0.5))
        started = time.monotonic()
        with pytest.raises(cx.DeadlineExceededError):
            request(mode, transport, "GET", server.url)
        assert time.monotonic() - started < 0.9
        server.wait_for_connections(0, timeout=3.0)


def test_retries_tell_the_upstream_the_attempt_number(mode: str, faulty_upstream_factory) -> None:  # type: ignore[no-untyped-def]
    flaky = faulty_upstream_factory("flaky", faults=Faults(error_rate=1.0))
    healthy = faulty_upstream_factory("healthy")
    transport = cx.transport(
        AttemptRouter(HTTPTransport(), [flaky.url, healthy.url]), retry=cx.Retry(backoff=cx.Backoff.none())
    )
    response = request(mode, transport, "GET", f"{flaky.url}/")
    assert response.json()["attempt"] == "2"
    assert settled(flaky).records[0].header("x-connectivity-attempt") is None
