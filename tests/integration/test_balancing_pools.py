"""Connection pools per endpoint with real uvicorn replicas on loopback: ``connectivity.transport(discovery=...)``
gives each endpoint its own pool, and an endpoint that discovery removes has its pool closed once its last
response, still streaming when it left, has finished. Each test runs with httpx.Client, and with
httpx.AsyncClient on asyncio and trio; the aiohttp and auto backends run per endpoint too (asyncio).

Discovery is a real :class:`~connectivity.discovery.File` resolver polled on a fake clock: the test rewrites the
file and advances the clock, and the next request applies the change.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.balancing import RoundRobin
from connectivity.discovery import File
from connectivity.testing import FakeClock
from connectivity.testing.server import RunningServer, serve
from connectivity.transports import AiohttpTransport, AutoTransport, HTTPTransport
from connectivity.transports._endpoint_pools import EndpointPools, find_pools

HAS_AIOHTTP = importlib.util.find_spec("httpx_aiohttp") is not None


class Trickle:
    """``/stream`` sends ``first-``, then ``rest`` once :attr:`release` is set; any other path answers ``ok``."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] != "/stream":
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.body", "body": b"first-", "more_body": True})
        released = await anyio.to_thread.run_sync(self.release.wait, 10.0)  # bounded
        await send({"type": "http.response.body", "body": b"rest" if released else b"timeout"})


class Listing:
    """An endpoints file the test rewrites (by rename, as File expects), and the resolver polling it."""

    def __init__(self, directory: Path, servers: list[RunningServer[Trickle]]) -> None:
        self.path = directory / "orders.json"
        self.clock = FakeClock()
        self.write(servers)
        self.resolver = File(self.path, interval=1.0, clock=self.clock)

    def write(self, servers: list[RunningServer[Trickle]]) -> None:
        staged = self.path.with_suffix(".tmp")
        staged.write_text(json.dumps([{"address": "127.0.0.1", "port": server.port} for server in servers]))
        staged.replace(self.path)

    def change(self, servers: list[RunningServer[Trickle]]) -> None:
        """List these servers; the next request applies it."""
        self.write(servers)
        self.clock.advance(1.0)


@contextlib.contextmanager
def replicas(count: int) -> Iterator[list[RunningServer[Trickle]]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(Trickle(), name=f"replica-{n}")) for n in range(count)]


def key(server: RunningServer[Trickle]) -> str:
    return f"127.0.0.1:{server.port}"


def balanced(discovery: Any, **options: Any) -> tuple[Any, EndpointPools]:
    options.setdefault("retry", False)
    transport = cx.transport(
        discovery=discovery, balancer=RoundRobin(), service="orders", telemetry=False, **options
    )
    pools = find_pools(transport)
    assert pools is not None
    return transport, pools


def connections(transport: Any) -> list[str]:
    """The httpcore connections of one endpoint's HTTPTransport (sync and async pools), as httpcore shows them."""
    assert isinstance(transport, HTTPTransport)
    found = []
    for side in (transport._sync, transport._async):
        if side is not None:
            found.extend(repr(connection) for connection in side._pool.connections)
    return found


def within(mode: str, transport: Any, body: Callable[[Callable[..., Any]], None]) -> None:
    """Run ``body(call)`` inside one client of this mode; ``call(name, *args)`` runs a client method, returning
    its result (for an async client: on the client's loop, the body in a worker thread)."""
    if mode == "sync":
        with httpx.Client(transport=transport, base_url="http://orders") as client:
            body(lambda name, *args: getattr(client, name)(*args))
        return

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:

            def call(name: str, *args: Any) -> Any:
                return anyio.from_thread.run(getattr(client, name), *args)

            await anyio.to_thread.run_sync(body, call)

    anyio.run(main, backend=mode)


def test_each_endpoint_gets_its_own_pool_and_connection(mode: str) -> None:
    with replicas(3) as servers:
        transport, pools = balanced([key(server) for server in servers])

        def body(call: Callable[..., Any]) -> None:
            for _ in range(9):  # round robin: three requests per endpoint
                assert call("get", "/").text == "ok"
            assert sorted(pools.pools) == sorted(key(server) for server in servers)
            assert len({id(pool) for pool in pools.pools.values()}) == 3
            for server in servers:
                (connection,) = connections(pools.pools[key(server)])  # its own pool: one connection, reused
                assert f":{server.port}'" in connection
                assert server.connections_opened == 1
                assert server.open_connections == 1

        within(mode, transport, body)
        for server in servers:
            server.wait_for_connections(0)  # closing the client closed every pool


def test_a_removed_endpoint_closes_its_pool_after_its_streamed_response_finishes(
    mode: str, tmp_path: Path
) -> None:
    with replicas(2) as (leaving, staying):
        listing = Listing(tmp_path, [leaving])
        transport, pools = balanced(listing.resolver)
        body: list[bytes] = []

        def retired_not_closed() -> None:
            """The streaming endpoint left discovery (applied by a request that went to the other)."""
            assert list(pools.pools) == [key(staying)]
            assert pools.in_flight(key(leaving)) == 1
            assert leaving.open_connections == 1  # its pool is retired, not closed: the stream goes on
            assert pools.open == 2
            leaving.app.release.set()

        if mode == "sync":
            with httpx.Client(transport=transport, base_url="http://orders") as client:
                with client.stream("GET", "/stream") as response:
                    chunks = response.iter_raw()
                    body.append(next(chunks))
                    listing.change([staying])
                    assert client.get("/").text == "ok"
                    retired_not_closed()
                    body.extend(chunks)
                leaving.wait_for_connections(0)  # the last response closed: its pool closed, connection with it
                assert pools.open == 1
        else:

            async def main() -> None:
                async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
                    async with client.stream("GET", "/stream") as response:
                        chunks = response.aiter_raw()
                        body.append(await chunks.__anext__())
                        listing.change([staying])
                        assert (await client.get("/")).text == "ok"
                        retired_not_closed()
                        body.extend([chunk async for chunk in chunks])
                    await anyio.to_thread.run_sync(leaving.wait_for_connections, 0)
                    assert pools.open == 1

            anyio.run(main, backend=mode)
        assert b"".join(body) == b"first-rest"  # the response finished normally
        staying.wait_for_connections(0)


def test_limits_apply_per_endpoint(mode: str) -> None:
    """``max_connections=1`` per endpoint: while one endpoint's only connection streams, another endpoint still
    serves at once (one shared pool would make the second request wait, and fail on its pool timeout)."""
    with replicas(2) as servers:
        transport, pools = balanced([key(server) for server in servers], limits=httpx.Limits(max_connections=1))
        timeout = httpx.Timeout(10.0, pool=0.5)
        body: list[bytes] = []

        def release() -> None:
            for server in servers:
                server.app.release.set()

        if mode == "sync":
            with (
                httpx.Client(transport=transport, base_url="http://orders", timeout=timeout) as client,
                client.stream("GET", "/stream") as response,
            ):
                chunks = response.iter_raw()
                body.append(next(chunks))
                assert client.get("/").text == "ok"  # the other endpoint, its own pool
                release()
                body.extend(chunks)
        else:

            async def main() -> None:
                async with (
                    httpx.AsyncClient(transport=transport, base_url="http://orders", timeout=timeout) as client,
                    client.stream("GET", "/stream") as response,
                ):
                    chunks = response.aiter_raw()
                    body.append(await chunks.__anext__())
                    assert (await client.get("/")).text == "ok"
                    release()
                    body.extend([chunk async for chunk in chunks])

            anyio.run(main, backend=mode)
        assert b"".join(body) == b"first-rest"
        assert all(pool._kwargs["limits"].max_connections == 1 for pool in pools.pools.values())  # type: ignore[attr-defined]


def test_churn_leaves_only_the_live_endpoints_pools_and_connections(mode: str, tmp_path: Path) -> None:
    with replicas(4) as servers:
        listing = Listing(tmp_path, servers[:2])
        transport, pools = balanced(listing.resolver)

        def body(call: Callable[..., Any]) -> None:
            for cycle in range(12):
                live = [servers[(cycle + n) % 4] for n in range(2)]
                listing.change(live)
                for _ in range(4):
                    assert call("get", "/").text == "ok"
                assert sorted(pools.pools) == sorted(key(server) for server in live)
                assert pools.open == 2
            for server in servers:
                server.wait_for_connections(1 if key(server) in pools.pools else 0)

        within(mode, transport, body)
        for server in servers:
            server.wait_for_connections(0)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "aiohttp", marks=pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed")
        ),
        "auto",
    ],
)
def test_the_aiohttp_and_auto_backends_run_per_endpoint(backend: str, tmp_path: Path) -> None:
    with replicas(3) as servers:
        listing = Listing(tmp_path, servers)
        transport, pools = balanced(listing.resolver, backend=backend)
        kind = {"aiohttp": AiohttpTransport, "auto": AutoTransport}[backend]

        async def main() -> None:
            async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
                for _ in range(6):
                    assert (await client.get("/")).text == "ok"
                assert len(pools.pools) == 3
                assert all(isinstance(pool, kind) for pool in pools.pools.values())
                if backend == "auto" and HAS_AIOHTTP:
                    assert {pool.selected["asyncio"] for pool in pools.pools.values()} == {"aiohttp"}  # type: ignore[attr-defined]
                for server in servers:
                    assert server.connections_opened == 1
                listing.change(servers[1:])
                assert (await client.get("/")).text == "ok"
                await anyio.to_thread.run_sync(servers[0].wait_for_connections, 0)  # its pool closed
                assert len(pools.pools) == 2

        anyio.run(main, backend="asyncio")
        for server in servers:
            server.wait_for_connections(0)
