"""The Etcd resolver against a real etcd: prefix reads over the v3 JSON gateway, watch updates within a second,
reconnection with backoff, polling when the watch fails, and the last good set kept through outages and bad
values."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import httpx
import pytest

from connectivity.balancing import EndpointSet, RoundRobin
from connectivity.discovery import DiscoveryError, Endpoint, Etcd, Resolution
from connectivity.discovery.etcd import _prefix_end
from connectivity.errors import ConfigError
from connectivity.policies.backoff import Backoff
from connectivity.testing.etcd import EtcdServer
from connectivity.testing.server import serve

from .conftest import keys, wait_until

PREFIX = "/services/orders/"
FAST = Backoff.exponential(base=0.05, cap=0.2)


def entry(address: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {"address": address, "port": port, **extra}


# -- configuration (no server) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefix": ""}, "Etcd.prefix"),
        ({"prefix": PREFIX, "endpoints": []}, "Etcd.endpoints"),
        ({"prefix": PREFIX, "endpoints": ["127.0.0.1:2379"]}, "Etcd.endpoints[0]"),
        ({"prefix": PREFIX, "endpoints": "etcd:2379"}, "Etcd.endpoints[0]"),
        ({"prefix": PREFIX, "timeout": 0}, "Etcd.timeout"),
        ({"prefix": PREFIX, "idle_timeout": -1}, "Etcd.idle_timeout"),
        ({"prefix": PREFIX, "backoff": 1.0}, "Etcd.backoff"),
        ({"prefix": PREFIX, "gateway": "v3"}, "Etcd.gateway"),
        ({"prefix": PREFIX, "refresh_interval": 0}, "Etcd.refresh_interval"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Etcd(**kwargs)
    assert caught.value.field == field


def test_the_range_end_of_a_prefix() -> None:
    assert _prefix_end(b"/services/orders/") == b"/services/orders0"
    assert _prefix_end(b"a\xff") == b"b"
    assert _prefix_end(b"\xff\xff") == b"\0"


def test_nothing_listening_is_unavailable_and_never_raises() -> None:
    resolution = Etcd(PREFIX, endpoints="http://127.0.0.1:9", timeout=1).refresh()
    assert isinstance(resolution.exception, DiscoveryError)
    assert resolution.exception.kind == "unavailable"
    assert "no etcd answered: ConnectError" in str(resolution.error)


# -- reads ------------------------------------------------------------------------------------------------------


@pytest.mark.system
def test_refresh_reads_every_key_under_the_prefix_in_key_order(etcd_server: EtcdServer) -> None:
    etcd_server.put(PREFIX + "b", entry("10.0.0.2", weight=2, zone="eu-1b", metadata={"version": "v2"}))
    etcd_server.put(PREFIX + "a", entry("10.0.0.1"))
    etcd_server.put("/services/orders-canary/x", entry("10.9.9.9"))  # shares the text, not the prefix
    etcd_server.put("/services/orders0", entry("10.9.9.8"))  # the range end itself is excluded
    resolution = Etcd(PREFIX, endpoints=etcd_server.url).refresh()
    assert resolution.endpoints == (
        Endpoint("10.0.0.1", 8080),
        Endpoint("10.0.0.2", 8080, 2, "eu-1b", {"version": "v2"}),
    )
    assert (resolution.error, resolution.source) == (None, f"etcd:{PREFIX}")


@pytest.mark.system
def test_two_keys_for_one_endpoint_give_one_endpoint(etcd_server: EtcdServer) -> None:
    etcd_server.put(PREFIX + "old-lease", entry("10.0.0.1", weight=1))
    etcd_server.put(PREFIX + "new-lease", entry("10.0.0.1", weight=5))
    resolution = Etcd(PREFIX, endpoints=etcd_server.url).refresh()
    assert [(e.key, e.weight) for e in resolution.endpoints] == [("10.0.0.1:8080", 5)]  # the first key's


@pytest.mark.system
def test_a_dead_gateway_hands_over_to_the_next(etcd_server: EtcdServer) -> None:
    etcd_server.put(PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=["http://127.0.0.1:9", etcd_server.url])
    assert keys(resolver.refresh()) == ["10.0.0.1:8080"]
    assert keys(resolver.refresh()) == ["10.0.0.1:8080"]  # now starting with the one that answered


@pytest.mark.system
@pytest.mark.anyio
async def test_async_refresh(etcd_server: EtcdServer) -> None:
    await anyio.to_thread.run_sync(etcd_server.put, PREFIX + "a", entry("10.0.0.1"))
    resolution = await Etcd(PREFIX, endpoints=etcd_server.url).arefresh()
    assert keys(resolution) == ["10.0.0.1:8080"]


@pytest.mark.system
def test_an_invalid_value_names_the_key_and_keeps_the_last_good_set(etcd_server: EtcdServer) -> None:
    etcd_server.put(PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=etcd_server.url)
    good = resolver.refresh()
    cases: list[tuple[str | dict[str, Any], str, str]] = [
        ("10.0.0.2:8080", f"etcd:{PREFIX}b", "must be a JSON endpoint object"),
        (entry("10.0.0.2", port=70000), f"etcd:{PREFIX}b.port", "from 1 to 65535"),
        ({"host": "10.0.0.2", "port": 80}, f"etcd:{PREFIX}b.host", "is not a field"),
    ]
    for value, field, rule in cases:
        etcd_server.put(PREFIX + "b", value)
        failed = resolver.refresh()
        assert isinstance(failed.exception, ConfigError)
        assert (failed.exception.field, failed.endpoints, failed.version) == (field, good.endpoints, 1)
        assert rule in failed.exception.rule
    etcd_server.delete(PREFIX + "b")
    assert resolver.refresh().error is None


@pytest.mark.system
def test_an_outage_keeps_the_last_good_set(etcd_server: EtcdServer) -> None:
    etcd_server.put(PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=etcd_server.url, timeout=1)
    good = resolver.refresh()
    etcd_server.stop()
    failed = resolver.refresh()
    assert isinstance(failed.exception, DiscoveryError)
    assert (failed.exception.kind, failed.endpoints, failed.version) == ("unavailable", good.endpoints, 1)
    etcd_server.start()
    assert resolver.refresh().error is None


# -- the watch --------------------------------------------------------------------------------------------------


class Updates:
    """Collects a watch's updates; ``wait_for(predicate)`` waits (bounded) for one that matches."""

    def __init__(self) -> None:
        self.seen: list[Resolution] = []
        self._changed = anyio.Event()

    def __call__(self, resolution: Resolution) -> None:
        self.seen.append(resolution)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[Resolution], bool], within: float) -> Resolution:
        with anyio.fail_after(within):
            while True:
                for resolution in self.seen:
                    if predicate(resolution):
                        return resolution
                self._changed = anyio.Event()
                await self._changed.wait()


def picked(picker: RoundRobin, pool: EndpointSet, requests: int = 4) -> set[str]:
    chosen = [picker.pick(pool) for _ in range(requests)]
    return {endpoint.key for endpoint in chosen if endpoint is not None}


async def eventually(predicate: Callable[[], bool], within: float) -> None:
    """Poll ``predicate`` (a state no callback announces, e.g. an error) until it holds, bounded by ``within``."""
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(call, *args)


@pytest.mark.system
@pytest.mark.anyio
async def test_etcd_watch_updates_move_traffic_within_one_second(etcd_server: EtcdServer) -> None:
    await in_thread(etcd_server.put, PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=etcd_server.url, backoff=FAST)
    updates = Updates()
    # What a load-balancing transport does with the callback: rebuild its snapshot, pick from it per request.
    pool = EndpointSet()
    picker = RoundRobin(rng=random.Random(7))

    def on_update(resolution: Resolution) -> None:
        nonlocal pool
        pool = pool.update(resolution.endpoints)
        updates(resolution)

    threads = threading.active_count()
    async with anyio.create_task_group() as group:
        group.start_soon(resolver.watch, on_update)
        await updates.wait_for(lambda r: keys(r) == ["10.0.0.1:8080"], within=5)
        assert picked(picker, pool) == {"10.0.0.1:8080"}
        # A new endpoint set in one transaction: traffic moves to it within one second.
        await in_thread(etcd_server.replace, PREFIX, {"b": entry("10.0.0.2"), "c": entry("10.0.0.3")})
        changed = time.monotonic()
        await updates.wait_for(lambda r: keys(r) == ["10.0.0.2:8080", "10.0.0.3:8080"], within=1.0)
        assert time.monotonic() - changed < 1.0
        assert picked(picker, pool) == {"10.0.0.2:8080", "10.0.0.3:8080"}
        await in_thread(etcd_server.delete, PREFIX + "b")
        await updates.wait_for(lambda r: keys(r) == ["10.0.0.3:8080"], within=1.0)
        # An invalid value is an error, not an update; fixing it is.
        await in_thread(etcd_server.put, PREFIX + "d", "garbage")
        await eventually(lambda: resolver.current().error is not None, within=1.0)
        assert isinstance(resolver.current().exception, ConfigError)
        await in_thread(etcd_server.put, PREFIX + "d", entry("10.0.0.4"))
        await updates.wait_for(lambda r: keys(r) == ["10.0.0.3:8080", "10.0.0.4:8080"], within=1.0)
        group.cancel_scope.cancel()
    assert [update.version for update in updates.seen] == [1, 2, 3, 4]
    assert all(update.error is None for update in updates.seen)
    assert threading.active_count() == threads  # the watch left nothing behind


@pytest.mark.system
@pytest.mark.anyio
async def test_resolver_outage_keeps_the_last_good_set_and_the_watch_reconnects(etcd_server: EtcdServer) -> None:
    await in_thread(etcd_server.put, PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=etcd_server.url, backoff=FAST, timeout=1)
    updates = Updates()
    async with anyio.create_task_group() as group:
        group.start_soon(resolver.watch, updates)
        good = await updates.wait_for(lambda r: keys(r) == ["10.0.0.1:8080"], within=5)
        await in_thread(etcd_server.stop)
        await eventually(lambda: resolver.current().error is not None, within=5.0)
        failed = resolver.current()
        assert isinstance(failed.exception, DiscoveryError)
        assert (failed.exception.kind, failed.endpoints, failed.version) == ("unavailable", good.endpoints, 1)
        await in_thread(etcd_server.start)  # same ports, same data
        await in_thread(etcd_server.put, PREFIX + "b", entry("10.0.0.2"))
        recovered = await updates.wait_for(lambda r: len(r.endpoints) == 2, within=10)
        assert recovered.error is None
        group.cancel_scope.cancel()


@pytest.mark.system
@pytest.mark.anyio
async def test_a_quiet_watch_is_reopened_after_the_idle_timeout(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="connectivity.discovery")
    await in_thread(etcd_server.put, PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=etcd_server.url, idle_timeout=0.2, backoff=FAST)
    updates = Updates()
    async with anyio.create_task_group() as group:
        group.start_soon(resolver.watch, updates)
        await updates.wait_for(lambda r: r.version == 1, within=5)
        await anyio.sleep(0.7)  # the scenario: three idle periods without an event
        await in_thread(etcd_server.put, PREFIX + "b", entry("10.0.0.2"))
        await updates.wait_for(lambda r: r.version == 2, within=1.0)
        group.cancel_scope.cancel()
    assert resolver.current().error is None
    reopened = [r.getMessage() for r in caplog.records if "idle" in r.getMessage()]
    assert len(reopened) >= 2, caplog.text  # each quiet period ended in a fresh read, not in a failure
    assert "watch failed" not in caplog.text


class RangeOnlyGateway:
    """An HTTP front for etcd that forwards reads but cannot stream: ``/v3/watch`` answers 501."""

    def __init__(self, etcd_url: str) -> None:
        self.etcd_url = etcd_url
        self.ranges = 0
        self.watches = 0

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v3/kv/range":
            self.ranges += 1
            async with httpx.AsyncClient(trust_env=False) as client:
                answer = await client.post(self.etcd_url + "/v3/kv/range", content=body)
            status, payload = answer.status_code, answer.content
        else:
            self.watches += 1
            status, payload = 501, b'{"error": "streaming not supported", "message": "streaming not supported"}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.mark.system
@pytest.mark.anyio
async def test_when_the_watch_fails_the_resolver_falls_back_to_polling(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectivity.discovery")
    await in_thread(etcd_server.put, PREFIX + "a", entry("10.0.0.1"))
    gateway = RangeOnlyGateway(etcd_server.url)
    with serve(gateway) as server:
        resolver = Etcd(PREFIX, endpoints=server.url, refresh_interval=0.3, backoff=FAST)
        updates = Updates()
        async with anyio.create_task_group() as group:
            group.start_soon(resolver.watch, updates)
            await updates.wait_for(lambda r: keys(r) == ["10.0.0.1:8080"], within=5)
            await in_thread(etcd_server.put, PREFIX + "b", entry("10.0.0.2"))
            await updates.wait_for(lambda r: len(r.endpoints) == 2, within=2)
            group.cancel_scope.cancel()
    assert "watch failed (DiscoveryError" in caplog.text
    assert "HTTP 501: streaming not supported" in caplog.text
    assert gateway.watches >= 1
    assert gateway.ranges >= 2
    assert resolver.current().error is None  # reads work: a failing watch is no resolution error


@pytest.mark.system
def test_the_gateway_answers_on_v3(etcd_server: EtcdServer) -> None:
    # etcd 3.4+ serves the JSON gateway under /v3 (3.3 used /v3beta); a wrong path is an error, not a crash.
    wrong = Etcd(PREFIX, endpoints=etcd_server.url, gateway="/v2").refresh()
    assert isinstance(wrong.exception, DiscoveryError)
    assert "HTTP 404" in str(wrong.error)
    wait_until(lambda: Etcd(PREFIX, endpoints=etcd_server.url).refresh().error is None, what="a /v3 read")


@pytest.mark.system
@pytest.mark.anyio
async def test_a_failing_update_callback_ends_the_watch_with_its_error(etcd_server: EtcdServer) -> None:
    await in_thread(etcd_server.put, PREFIX + "a", entry("10.0.0.1"))
    resolver = Etcd(PREFIX, endpoints=etcd_server.url, backoff=FAST)
    watching = anyio.Event()

    def on_update(resolution: Resolution) -> None:
        if resolution.version == 1:
            watching.set()
            return
        raise RuntimeError("callback bug")  # a bug in the caller is not a registry failure to retry

    with anyio.fail_after(5), pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="callback bug")):
        async with anyio.create_task_group() as group:
            group.start_soon(resolver.watch, on_update)
            await watching.wait()
            await in_thread(etcd_server.put, PREFIX + "b", entry("10.0.0.2"))
            await anyio.sleep_forever()  # ended by the watch's error


@pytest.mark.system
@pytest.mark.anyio
async def test_a_watch_from_a_compacted_revision_is_cancelled_and_read_again(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectivity.discovery")
    for index in range(3):
        revision = await in_thread(etcd_server.put, PREFIX + "a", entry(f"10.0.0.{index + 1}"))
    await in_thread(etcd_server.call, "kv/compaction", {"revision": str(revision)})
    resolver = Etcd(PREFIX, endpoints=etcd_server.url)
    published: list[Resolution] = []
    async with httpx.AsyncClient(trust_env=False) as client:
        with anyio.fail_after(5):
            # Following from revision 2 (compacted): etcd creates the watch, then cancels it; the resolver
            # returns to read the set again instead of failing.
            await resolver._follow(client, {}, 1, published.append)
    assert published == []
    assert "watch cancelled" in caplog.text
    assert "compact_revision" in caplog.text
