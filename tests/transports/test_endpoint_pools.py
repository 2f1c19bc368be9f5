"""EndpointPools: a transport per endpoint under the load balancer, created on first use, closed when its endpoint
has left and its last response is closed, never leaked over churn.

Unit tests over scripted per-endpoint transports that count their closes; the real-server scenarios (connections,
streamed responses, backends) are in ``tests/integration/test_balancing_pools.py``.
"""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import httpx
import pytest
from anyio import wait_all_tasks_blocked

from connectivity.balancing import RoundRobin
from connectivity.balancing.health import HealthCheck
from connectivity.discovery import Endpoint, Resolver, UpdateCallback
from connectivity.errors import ConfigError
from connectivity.testing import FakeClock, ScriptedTransport
from connectivity.transports import RetryTransport, TimeoutTransport
from connectivity.transports._endpoint_pools import EndpointPools, find_pools
from connectivity.transports.balancing import ENDPOINT_EXTENSION, LoadBalancingTransport

from .conftest import Sender

A, B, C = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"


class Counted(ScriptedTransport):
    """A scripted transport (200 for every request) that counts how often each side was closed."""

    def __init__(self) -> None:
        super().__init__(default=200)
        self.closes = 0
        self.acloses = 0
        self.after_close = 0  # requests it received once closed: must stay 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.after_close += self.shut
        return super().handle_request(request)

    def close(self) -> None:
        self.closes += 1

    async def aclose(self) -> None:
        self.acloses += 1

    @property
    def shut(self) -> bool:
        return bool(self.closes or self.acloses)


class Factory:
    """Builds the per-endpoint transports and keeps every one it built."""

    def __init__(self) -> None:
        self.built: list[Counted] = []

    def __call__(self) -> Counted:
        self.built.append(Counted())
        return self.built[-1]

    def open(self, *, asynchronous: bool = False) -> list[Counted]:
        """The transports not closed yet (for an async client: not closed by ``aclose()``)."""
        return [
            transport for transport in self.built if not (transport.acloses if asynchronous else transport.shut)
        ]


class Listed(Resolver):
    """A resolver over a list the test changes (due again after ``advance(10)`` on its clock)."""

    def __init__(self, endpoints: Iterable[str], *, clock: FakeClock) -> None:
        self.listed = list(endpoints)
        super().__init__("listed", refresh_interval=10.0, clock=clock)

    def _fetch(self) -> tuple[list[Endpoint], float | None]:
        return [Endpoint.parse(text) for text in self.listed], None


class Watched(Listed):
    """A resolver followed by ``watch()``: it looks the list up every second of its clock."""

    async def watch(self, on_update: UpdateCallback) -> None:
        seen = self.current().version
        while True:
            resolution = await self.arefresh()
            if resolution.version != seen:
                seen = resolution.version
                on_update(resolution)
            await self.clock.asleep(1.0)


def balanced(
    factory: Factory, resolver: Resolver | Iterable[str] = (A, B, C), **options: Any
) -> tuple[LoadBalancingTransport, EndpointPools]:
    pools = EndpointPools(factory)
    options.setdefault("picker", RoundRobin(rng=random.Random(1)))
    return LoadBalancingTransport(pools, service="orders", resolver=resolver, **options), pools


def within(send: Sender, transport: Any, body: Callable[[Callable[[str], httpx.Response]], None]) -> None:
    """Run ``body(get)`` inside one client of the kind under test (``get(url)`` sends a request and reads it);
    for an async client the body runs in a worker thread and each ``get`` on the client's event loop."""
    if not send.is_async:
        with httpx.Client(transport=transport) as client:
            body(client.get)
        return

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:

            def get(url: str) -> httpx.Response:
                return anyio.from_thread.run(client.get, url)

            await anyio.to_thread.run_sync(body, get)

    anyio.run(main, backend=send.mode)


def sent_to(transport: Counted) -> list[str]:
    return [str(request.extensions[ENDPOINT_EXTENSION]) for request in transport.requests]


# -- routing ------------------------------------------------------------------------------------------------------


def test_each_endpoint_gets_its_own_transport_built_on_first_use(send: Sender) -> None:
    factory = Factory()
    transport, pools = balanced(factory)
    assert len(factory.built) == 1  # the fallback only: endpoints' transports come with their first attempt

    def body(get: Callable[[str], httpx.Response]) -> None:
        for _ in range(6):
            get("http://orders/x")
        assert sorted(pools.pools) == [A, B, C]
        for key, pool in pools.pools.items():
            assert isinstance(pool, Counted)
            assert sent_to(pool) == [key, key]  # each endpoint's attempts, and only those, in its own transport
            assert all(request.url == f"http://{key}/x" for request in pool.requests)

    within(send, transport, body)
    assert len(factory.built) == 4
    assert not factory.built[0].requests  # the fallback served nothing
    assert all(built.shut for built in factory.built)  # closing the client closed every pool


def test_a_request_that_names_no_endpoint_uses_the_fallback(send: Sender) -> None:
    factory = Factory()
    pools = EndpointPools(factory)
    send(pools, url="http://10.0.0.9:80/")
    assert len(factory.built) == 1
    assert factory.built[0].requests[0].url == "http://10.0.0.9/"
    given = Counted()
    assert EndpointPools(factory, fallback=given).inner is given


def test_the_layers_between_find_the_pools_and_probes_use_them() -> None:
    factory = Factory()
    pools = EndpointPools(factory)
    stack = TimeoutTransport(pools, 5.0, per_try=True)
    assert find_pools(RetryTransport(stack)) is pools
    assert find_pools(Counted()) is None
    clock = FakeClock()
    check = HealthCheck(interval=1.0, no_traffic_interval=None)
    transport = LoadBalancingTransport(stack, service="orders", resolver=[A, B], health_check=check, clock=clock)

    probed: dict[str, list[str]] = {}

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport):
            await clock.asleep(0.5)  # the first round of checks
            probed.update((key, sent_to(pool)) for key, pool in pools.pools.items())  # type: ignore[misc]

    anyio.run(main)
    assert probed == {A: [A], B: [B]}  # each probe went through its endpoint's pool
    assert all(pool.requests[0].url.endswith("/healthz") for pool in factory.built[1:])


def test_a_bad_factory_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        EndpointPools("HTTPTransport")  # type: ignore[arg-type]
    assert raised.value.field == "EndpointPools.factory"


# -- lifetime -----------------------------------------------------------------------------------------------------


def test_churn_leaves_only_the_live_endpoints_pools(send: Sender) -> None:
    clock = FakeClock()
    resolver = Listed([A], clock=clock)
    factory = Factory()
    transport, pools = balanced(factory, resolver, clock=clock)
    rng = random.Random(3)
    everyone = [f"10.1.{n // 200}.{n % 200 + 1}:80" for n in range(12)]

    def cycles(get: Callable[[str], httpx.Response]) -> None:
        for _ in range(60):
            resolver.listed = rng.sample(everyone, rng.randint(1, 5))
            clock.advance(10.0)
            for _ in range(6):
                get("http://orders/")
            assert set(pools.pools) == set(resolver.listed)  # 6 round-robin requests reach every member
        opened = [pool for pool in factory.open(asynchronous=send.is_async) if pool is not factory.built[0]]
        assert len(opened) == len(pools.pools)  # every other transport ever built was closed
        assert pools.open == len(pools.pools)

    within(send, transport, cycles)
    assert len(factory.built) > 40  # endpoints came and went many times
    assert pools.open == 0


def test_a_retired_pool_closes_when_its_last_response_is_closed() -> None:
    factory = Factory()
    transport, pools = balanced(factory, (A,))
    with httpx.Client(transport=transport) as client:
        with client.stream("GET", "http://orders/") as streamed:
            (pool,) = pools.pools.values()
            assert pools.in_flight(A) == 1
            pools.retain([B])  # A leaves while its response is open
            assert not pool.shut  # type: ignore[attr-defined]
            assert pools.open == 1
            assert streamed.read() == b""
        assert pool.closes == 1  # type: ignore[attr-defined]
        assert pools.open == 0
        assert pools.in_flight(A) == 0


def test_an_idle_pool_closes_when_its_endpoint_leaves_and_an_async_one_is_awaited(send: Sender) -> None:
    # retain() is what the balancer calls when discovery changes the set (see the churn test)
    factory = Factory()
    transport, pools = balanced(factory, (A, B))

    def sync() -> None:
        with httpx.Client(transport=transport) as client:
            client.get("http://orders/")
            client.get("http://orders/")
            old = pools.pools[A]
            pools.retain([B])
            assert old.closes == 1  # type: ignore[attr-defined]
            assert pools.open == 1

    async def async_() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://orders/")
            await client.get("http://orders/")
            old = pools.pools[A]
            pools.retain([B])
            assert old.acloses == 0  # type: ignore[attr-defined]  # it takes an await
            await client.get("http://orders/")  # the next call through the pools closes it
            assert old.acloses == 1  # type: ignore[attr-defined]
            assert pools.open == 1

    send.run(sync, async_)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_with_a_watch_an_idle_async_pool_that_left_closes_in_the_task_group(backend: str) -> None:
    clock = FakeClock()
    resolver = Watched([A, B, C], clock=clock)
    factory = Factory()
    transport, pools = balanced(factory, resolver, clock=clock)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await clock.asleep(0.1)  # the watch resolved the list
            for _ in range(3):
                await client.get("http://orders/")
            gone = [pools.pools[B], pools.pools[C]]
            resolver.listed = [A]
            await clock.asleep(1.0)  # the watch applies the change: no request follows
            await wait_all_tasks_blocked()
            assert [built.acloses for built in gone] == [1, 1]  # type: ignore[attr-defined]
            assert list(pools.pools) == [A]
            assert pools.open == 1

    anyio.run(main, backend=backend)


def test_a_straggler_for_an_endpoint_that_left_gets_a_pool_of_its_own() -> None:
    factory = Factory()
    pools = EndpointPools(factory)
    pools.retain([A])
    request = httpx.Request("GET", f"http://{B}/", extensions={ENDPOINT_EXTENSION: Endpoint.parse(B)})
    with httpx.Client(transport=pools) as client:
        response = client.send(request, stream=True)
        straggler = factory.built[-1]
        assert B not in pools.pools  # not a member: never kept
        assert not straggler.shut
        response.close()
        assert straggler.closes == 1


def test_an_attempt_that_raced_a_retirement_takes_a_fresh_pool() -> None:
    factory = Factory()
    pools = EndpointPools(factory)
    pools.retain([A])
    endpoint = Endpoint.parse(A)
    request = httpx.Request("GET", f"http://{A}/", extensions={ENDPOINT_EXTENSION: endpoint})
    with httpx.Client(transport=pools) as client:
        client.send(request).close()
        first = pools.pools[A]
        # The attempt found A's pool just before it was retired and closed: it must not use a closed pool.
        stale = pools._pools[A]
        pools.retain([])
        assert first.closes == 1  # type: ignore[attr-defined]
        pools._pools[A] = stale  # as the racing attempt saw the map
        response = client.send(request, stream=True)
        assert len(first.requests) == 1  # type: ignore[attr-defined]
        assert factory.built[-1] is not first
        assert len(factory.built[-1].requests) == 1
        response.close()
        assert factory.built[-1].closes == 1


def test_threads_racing_membership_changes_never_use_a_closed_pool_nor_leak_one() -> None:
    factory = Factory()
    pools = EndpointPools(factory)
    keys = [f"10.2.0.{n}:80" for n in range(1, 5)]
    failures: list[BaseException] = []

    def sender(client: httpx.Client, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):  # bounded
                key = rng.choice(keys)
                extensions = {ENDPOINT_EXTENSION: Endpoint.parse(key)}
                response = client.send(httpx.Request("GET", f"http://{key}/", extensions=extensions), stream=True)
                try:
                    response.read()
                finally:
                    response.close()
        except BaseException as error:  # reported below
            failures.append(error)

    with httpx.Client(transport=pools) as client:
        threads = [threading.Thread(target=sender, args=(client, seed)) for seed in range(6)]
        for thread in threads:
            thread.start()
        rng = random.Random(0)
        for _ in range(1_000_000):  # bounded; ends with the senders
            if not any(thread.is_alive() for thread in threads):
                break
            pools.retain(rng.sample(keys, rng.randint(0, len(keys))))
        for thread in threads:
            thread.join(30.0)
        assert not failures
        assert sum(built.after_close for built in factory.built) == 0
        pools.retain([])
        assert pools.open == 0
        assert factory.open() == [factory.built[0]]  # only the fallback: every endpoint's transport was closed
        assert len(factory.built) > 20  # pools came and went


def test_a_failed_attempt_is_not_counted_in_flight(send: Sender) -> None:
    pools = EndpointPools(lambda: ScriptedTransport(default=httpx.ConnectError))
    transport = LoadBalancingTransport(pools, service="orders", resolver=[A])

    def body(get: Callable[[str], httpx.Response]) -> None:
        with pytest.raises(httpx.ConnectError):
            get("http://orders/")
        assert pools.in_flight(A) == 0
        assert pools.open == 1

    within(send, transport, body)
    assert pools.open == 0


def test_close_and_aclose_close_every_pool(send: Sender) -> None:
    factory = Factory()
    transport, pools = balanced(factory)
    for _ in range(3):
        send(transport)  # each Sender call opens and closes a client: every pool is closed at its end
        assert factory.open() == []
        assert pools.open == 0
        assert pools.pools == {}
    side = "acloses" if send.is_async else "closes"
    assert all(getattr(built, side) >= 1 for built in factory.built)


def test_describe_shows_the_pools() -> None:
    factory = Factory()
    transport, pools = balanced(factory, (A, B))
    with httpx.Client(transport=transport) as client, client.stream("GET", "http://orders/"):
        described = pools.describe()
    assert described == {"pools": {A: {"in_flight": 1}}, "retired_open": 0} or described == {
        "pools": {B: {"in_flight": 1}},
        "retired_open": 0,
    }
    assert "EndpointPools(pools=" in repr(pools)


def test_a_second_load_balancer_over_the_same_pools_is_refused() -> None:
    # Each balancer keeps the pools of its own endpoints and retires the rest: two over one EndpointPools would
    # close each other's pools, so the second is refused at construction, naming what to do instead.
    pools = EndpointPools(lambda: ScriptedTransport(default=200))
    first = LoadBalancingTransport(pools, service="orders", resolver=[A])
    with pytest.raises(ConfigError) as info:
        LoadBalancingTransport(pools, service="payments", resolver=[B])
    assert info.value.field == "LoadBalancingTransport.inner"
    assert "give each balancer its own EndpointPools" in str(info.value)
    assert find_pools(first) is pools


def test_pools_whose_balancer_is_gone_can_serve_a_new_one() -> None:
    pools = EndpointPools(lambda: ScriptedTransport(default=200))
    LoadBalancingTransport(pools, service="orders", resolver=[A])
    gc.collect()  # the first balancer, never kept, is gone
    second = LoadBalancingTransport(pools, service="orders", resolver=[A, B])
    assert find_pools(second) is pools
