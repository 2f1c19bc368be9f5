"""The async twins: redis.asyncio on asyncio; the sync client in a worker thread on trio (never a crash)."""

from __future__ import annotations

import time

import anyio
import pytest

from connectivity.backends.redis import RedisCircuit
from connectivity.policies.breaker import FAILURE, SUCCESS, CircuitBreaker, Rejection
from connectivity.testing.redis import RedisServer

from .conftest import REMOTE, BackendFactory

pytestmark = [pytest.mark.system, pytest.mark.anyio]

TIMEOUT = 0.1
MARGIN = 0.2


async def aadmit_when_open_elapsed(circuit: RedisCircuit) -> int:
    with anyio.fail_after(5.0):
        while True:
            ticket = await circuit.aadmit()
            if not isinstance(ticket, Rejection):
                return ticket
            await anyio.sleep(0.01)


async def lifecycle(make_backend: BackendFactory) -> None:
    backend = make_backend()
    breaker = CircuitBreaker(name="async", failure_ratio=None, consecutive_failures=2, open_for=0.2)
    circuit = backend.circuit(breaker)
    try:
        for _ in range(2):
            ticket = await circuit.aadmit()
            assert isinstance(ticket, int)
            assert ticket & REMOTE
            await circuit.arecord(ticket, FAILURE)
        assert circuit.state == "open"
        rejection = make_backend().circuit(breaker).admit()  # another client, sync: the same shared state
        assert isinstance(rejection, Rejection)
        assert rejection.state == "open"
        probe = await aadmit_when_open_elapsed(circuit)
        assert probe & 1
        await circuit.arecord(probe, SUCCESS)
        assert circuit.state == "closed"
    finally:
        await backend.aclose()


async def outage(make_backend: BackendFactory, redis_server: RedisServer) -> None:
    backend = make_backend(timeout=TIMEOUT, retry_redis_after=0.2)
    circuit = backend.circuit(CircuitBreaker(name="down", failure_ratio=None, consecutive_failures=2))
    try:
        assert await circuit.aadmit() & REMOTE  # type: ignore[operator]
        redis_server.pause()
        durations = []
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            started = time.perf_counter()
            ticket = await circuit.aadmit()
            if isinstance(ticket, int):
                assert not ticket & REMOTE
                await circuit.arecord(ticket, FAILURE)
            durations.append(time.perf_counter() - started)
            await anyio.sleep(0.005)
        assert max(durations) <= TIMEOUT + MARGIN, durations
        assert circuit.local.state == "open"
        assert backend.degraded
    finally:
        redis_server.resume()
        await backend.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_twins_share_state_on_asyncio(make_backend: BackendFactory) -> None:
    await lifecycle(make_backend)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_outage_falls_back_within_the_timeout(
    make_backend: BackendFactory, redis_server: RedisServer
) -> None:
    await outage(make_backend, redis_server)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_probe_permits_are_global(make_backend: BackendFactory) -> None:
    # About shared permits, not outages: 20 tasks connect at once, which a loaded machine may not do within the
    # default 50 ms (each would then decide on its own local circuit).
    backend = make_backend(timeout=1.0)
    breaker = CircuitBreaker(
        name="probes", failure_ratio=None, consecutive_failures=1, open_for=0.2, half_open_permits=2
    )
    circuit = backend.circuit(breaker)
    try:
        await circuit.arecord(await circuit.aadmit(), FAILURE)  # type: ignore[arg-type]
        with anyio.fail_after(5):
            while True:  # poll the shared state until the open time has passed
                if circuit.status()["retry_after_s"] == 0.0:
                    break
                await anyio.sleep(0.01)
        results: list[int | Rejection] = []

        async def race() -> None:
            results.append(await circuit.aadmit())

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(race)
        assert not backend.degraded
        assert sum(isinstance(result, int) for result in results) == 2
    finally:
        await backend.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancellation_is_not_an_outage(make_backend: BackendFactory, redis_server: RedisServer) -> None:
    backend = make_backend(timeout=1.0)
    circuit = backend.circuit(CircuitBreaker(name="cancelled"))
    try:
        await circuit.aadmit()
        redis_server.pause()
        with anyio.move_on_after(0.05) as scope:
            await circuit.aadmit()
        assert scope.cancelled_caught
        assert not backend.degraded
    finally:
        redis_server.resume()
        await backend.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_uses_the_sync_client_in_a_worker_thread(make_backend: BackendFactory) -> None:
    await lifecycle(make_backend)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_outage_falls_back_without_crashing(
    make_backend: BackendFactory, redis_server: RedisServer
) -> None:
    await outage(make_backend, redis_server)


def test_each_event_loop_gets_its_own_client(make_backend: BackendFactory) -> None:
    backend = make_backend()
    circuit = backend.circuit(CircuitBreaker(name="loops"))

    async def main() -> int:
        ticket = await circuit.aadmit()
        assert isinstance(ticket, int)
        await circuit.arecord(ticket, SUCCESS)
        await backend.aclose()
        return ticket

    for _ in range(3):
        assert anyio.run(main, backend="asyncio") & REMOTE
    assert circuit.status()["calls"] == 3
