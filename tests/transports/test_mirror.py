"""MirrorTransport: fire-and-forget shadow traffic that never slows or fails the primary, bounded, leak-free."""

from __future__ import annotations

import logging
import random
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.errors import ConfigError
from connectivity.routing import MirrorStats, shadow_host
from connectivity.testing import Faults, ScriptedTransport, Step
from connectivity.testing.plugin import UpstreamFactory
from connectivity.transports import HTTPTransport
from connectivity.transports.mirror import MirrorTransport

from .conftest import Sender

URL = "http://orders.internal:8080/orders?id=7"


def primary() -> ScriptedTransport:
    return ScriptedTransport(default=lambda request: Step(200, content=b"primary"))


def run(send: Sender, transport: MirrorTransport, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send ``requests`` in one client, wait for the mirrors to finish, then leave the client."""

    def sync() -> list[httpx.Response]:
        with httpx.Client(transport=transport) as client:
            responses = [client.request(**{"method": "GET", "url": URL, **r}) for r in requests]
            assert transport.wait_idle(5)
        return responses

    async def async_() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport) as client:
            responses = [await client.request(**{"method": "GET", "url": URL, **r}) for r in requests]
            with anyio.fail_after(5):
                await transport.await_idle()
        return responses

    return send.run(sync, async_)


def test_the_shadow_gets_a_copy_marked_with_a_shadow_host(send: Sender) -> None:
    main, shadow = primary(), ScriptedTransport(default=204)
    transport = MirrorTransport(main, shadow)
    (response,) = run(send, transport, [{"method": "POST", "json": {"item": 1}, "headers": {"x-user": "u1"}}])
    assert response.content == b"primary"
    assert response.extensions["connectivity.mirror"] == "started"
    (copy,) = shadow.requests
    (original,) = main.requests
    assert (copy.method, copy.url, copy.body) == ("POST", URL, b'{"item":1}')
    assert copy.headers["host"] == "orders.internal-shadow:8080"
    assert original.headers["host"] == "orders.internal:8080"
    assert copy.headers["x-user"] == "u1"
    assert set(copy.extensions) == {"timeout"}  # none of the primary's policy comes along
    assert transport.stats() == MirrorStats(1, 1, 0, 0, 0, 0, 0)


def test_a_shadow_url_and_no_host_suffix(send: Sender) -> None:
    shadow = ScriptedTransport(default=200)
    transport = MirrorTransport(primary(), shadow, url="http://10.0.0.9:9000/shadow", host_suffix=None)
    run(send, transport, [{}])
    (copy,) = shadow.requests
    assert copy.url == "http://10.0.0.9:9000/shadow/orders?id=7"
    assert copy.headers["host"] == "orders.internal:8080"


@pytest.mark.parametrize(
    ("host", "shadowed"),
    [
        ("a:80", "a-shadow:80"),
        ("a", "a-shadow"),
        ("[::1]:80", "[::1]-shadow:80"),
        ("[::1]", "[::1]-shadow"),
        ("::1", "::1-shadow"),
    ],
)
def test_shadow_host_follows_envoy(host: str, shadowed: str) -> None:
    assert shadow_host(host, "-shadow") == shadowed


def test_sampling_uses_the_injected_rng_and_per_request_overrides(send: Sender) -> None:
    shadow = ScriptedTransport(default=200)
    transport = MirrorTransport(primary(), shadow, percent=30, rng=random.Random(5), max_concurrent=50)
    expected_rng = random.Random(5)
    expected = sum(expected_rng.random() * 100 < 30 for _ in range(50))
    responses = run(send, transport, [{} for _ in range(50)])
    assert len(shadow.requests) == expected
    assert sum("connectivity.mirror" in r.extensions for r in responses) == expected
    forced = MirrorTransport(primary(), shadow := ScriptedTransport(default=200), percent=0)
    run(send, forced, [{"extensions": {"connectivity.mirror": True}}, {}])
    assert len(shadow.requests) == 1
    never = MirrorTransport(primary(), shadow := ScriptedTransport(default=200))
    run(send, never, [{"extensions": {"connectivity.mirror": False}}])
    assert shadow.requests == []


@pytest.mark.parametrize(
    "outcome",
    [httpx.ConnectError, httpx.ReadTimeout, RuntimeError("a bug in the shadow"), 500, Step(200, delay=10.0)],
)
def test_shadow_failures_never_reach_the_caller(send: Sender, outcome: object) -> None:
    shadow = ScriptedTransport(default=outcome)  # type: ignore[arg-type]
    transport = MirrorTransport(primary(), shadow, timeout=0.2)
    responses = run(send, transport, [{}, {}])
    assert [r.content for r in responses] == [b"primary", b"primary"]
    stats = transport.stats()
    assert stats.started == 2
    assert stats.in_flight == 0
    failed = 0 if outcome == 500 else 2
    assert (stats.failed, stats.completed) == (failed, 2 - failed)


def test_primary_errors_propagate_and_are_still_mirrored(send: Sender) -> None:
    shadow = ScriptedTransport(default=200)
    transport = MirrorTransport(ScriptedTransport(default=httpx.ConnectError), shadow)
    with pytest.raises(httpx.ConnectError):
        run(send, transport, [{}])
    if send.mode == "sync":
        assert transport.wait_idle(5)
    assert len(shadow.requests) == 1


def test_ambient_deadline_and_trace_do_not_reach_the_mirror(send: Sender) -> None:
    seen: list[object] = []

    def record(request: httpx.Request) -> Step:
        seen.append(cx.current_deadline())
        return Step(200)

    transport = MirrorTransport(primary(), ScriptedTransport(default=record))

    def sync() -> None:
        with httpx.Client(transport=transport) as client, cx.deadline(30):
            client.get(URL)
            assert transport.wait_idle(5)

    async def async_() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with cx.deadline(30):
                await client.get(URL)
            with anyio.fail_after(5):
                await transport.await_idle()

    send.run(sync, async_)
    assert seen == [None]


def test_bodies_over_the_cap_are_skipped_and_streamed_bodies_are_copied(send: Sender) -> None:
    main, shadow = primary(), ScriptedTransport(default=200)
    transport = MirrorTransport(main, shadow, max_body_bytes=10)

    def chunks() -> Iterator[bytes]:
        yield b"abc"
        yield b"def"

    async def achunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    def big() -> Iterator[bytes]:
        yield b"0123456789"
        yield b"x"

    async def abig() -> AsyncIterator[bytes]:
        yield b"0123456789"
        yield b"x"

    streamed, large = (achunks, abig) if send.is_async else (chunks, big)
    responses = run(
        send,
        transport,
        [
            {"method": "POST", "content": b"0123456789A"},
            {"method": "POST", "content": streamed()},
            {"method": "POST", "content": large()},
        ],
    )
    assert [r.extensions["connectivity.mirror"] for r in responses] == ["skipped", "started", "skipped"]
    assert [r.body for r in main.requests] == [b"0123456789A", b"abcdef", b"0123456789x"]  # the primary is whole
    assert [r.body for r in shadow.requests] == [b"abcdef"]
    assert transport.stats().skipped == 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_mirrors_beyond_the_bound_are_dropped_and_cancelled_on_exit(backend: str) -> None:
    shadow = ScriptedTransport(default=Step(200, delay=60.0))
    transport = MirrorTransport(primary(), shadow, max_concurrent=2, timeout=120.0)

    async def main() -> None:
        with anyio.fail_after(10):
            await hung()

    async def hung() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            responses = [await client.get(URL) for _ in range(5)]
            outcomes = [r.extensions["connectivity.mirror"] for r in responses]
            assert outcomes == ["started", "started", "dropped", "dropped", "dropped"]
            while shadow.in_flight < 2:  # both mirrors reached the shadow and hang there
                await anyio.lowlevel.checkpoint()
        # Leaving the client cancelled the hung mirrors: nothing outlives it.
        assert shadow.cancelled == 2
        assert shadow.in_flight == 0

    anyio.run(main, backend=backend)
    assert transport.stats() == MirrorStats(2, 0, 2, 3, 0, 0, 0)


def test_sync_mirrors_beyond_the_bound_are_dropped() -> None:
    release = threading.Event()

    def hang(request: httpx.Request) -> Step:
        release.wait(10)
        return Step(200)

    shadow = ScriptedTransport(default=hang)
    transport = MirrorTransport(primary(), shadow, max_concurrent=2)
    with httpx.Client(transport=transport) as client:
        outcomes = [client.get(URL).extensions["connectivity.mirror"] for _ in range(5)]
        assert outcomes == ["started", "started", "dropped", "dropped", "dropped"]
        assert transport.stats().in_flight == 2
        release.set()
    # close() waited for the pool: no mirror thread is left.
    assert not [t for t in threading.enumerate() if t.name.startswith("connectivity-mirror")]
    assert transport.stats() == MirrorStats(2, 2, 0, 3, 0, 0, 0)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_mirroring_needs_the_transport_entered(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    shadow = ScriptedTransport(default=200)
    transport = MirrorTransport(primary(), shadow)

    async def main() -> list[str]:
        client = httpx.AsyncClient(transport=transport)  # never entered
        outcomes = [(await client.get(URL)).extensions["connectivity.mirror"] for _ in range(3)]
        await client.aclose()
        return outcomes

    with caplog.at_level(logging.WARNING, logger="connectivity.mirror"):
        assert anyio.run(main, backend=backend) == ["not-running"] * 3
    assert shadow.requests == []
    assert transport.stats().not_running == 3
    assert len([r for r in caplog.records if "not running" in r.getMessage()]) == 1


def test_closing_closes_the_shadow_too() -> None:
    class Closing(ScriptedTransport):
        closed_calls = 0

        def close(self) -> None:
            self.closed_calls += 1

    shadow = Closing()
    MirrorTransport(primary(), shadow).close()
    assert shadow.closed_calls == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"percent": 101}, "MirrorTransport.percent"),
        ({"percent": True}, "MirrorTransport.percent"),
        ({"url": "ftp://x"}, "MirrorTransport.url"),
        ({"max_concurrent": 0}, "MirrorTransport.max_concurrent"),
        ({"max_body_bytes": -1}, "MirrorTransport.max_body_bytes"),
        ({"timeout": 0}, "MirrorTransport.timeout"),
        ({"host_suffix": 5}, "MirrorTransport.host_suffix"),
        ({"shadow": "http://shadow"}, "MirrorTransport.shadow"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], field: str) -> None:
    shadow = kwargs.pop("shadow", ScriptedTransport())
    with pytest.raises(ConfigError) as caught:
        MirrorTransport(primary(), shadow, **kwargs)
    assert caught.value.field == field


# -- real servers on loopback ---------------------------------------------------------------------------------


def test_the_primary_never_waits_for_a_hung_shadow(send: Sender, faulty_upstream_factory: UpstreamFactory) -> None:
    main = faulty_upstream_factory("primary")
    shadow = faulty_upstream_factory("shadow", faults=Faults(hang=True))
    transport = MirrorTransport(
        HTTPTransport(),
        HTTPTransport(),
        url=shadow.url,
        max_concurrent=4,
        timeout=0.5 if send.mode == "sync" else 60,
    )

    def sync() -> list[str]:
        with httpx.Client(transport=transport) as client:
            outcomes = [client.get(f"{main.url}/orders").extensions["connectivity.mirror"] for _ in range(20)]
            shadow.app.wait_for(lambda s: s.in_flight == 4)
        return outcomes  # close() waited for the hung mirrors' 0.5 s timeout

    async def async_() -> list[str]:
        with anyio.fail_after(10):  # the primary calls complete although four shadow calls hang
            async with httpx.AsyncClient(transport=transport) as client:
                outcomes = [
                    (await client.get(f"{main.url}/orders")).extensions["connectivity.mirror"] for _ in range(20)
                ]
                await shadow.app.await_for(lambda s: s.in_flight == 4)
            # Leaving the client cancelled them: the shadow saw its clients go away.
            await shadow.app.await_for(lambda s: s.in_flight == 0 and s.disconnects == 4)
        return outcomes

    outcomes = send.run(sync, async_)
    assert outcomes == ["started"] * 4 + ["dropped"] * 16
    assert main.app.stats.ok == 20
    stats = transport.stats()
    assert (stats.started, stats.dropped, stats.failed, stats.in_flight) == (4, 16, 4, 0)
    record = shadow.app.wait_for(lambda s: len(s.records) == 4).records[0]
    assert record.header("host") == f"127.0.0.1-shadow:{main.port}"
    assert record.path == "/orders"


def test_the_primary_never_waits_for_a_slow_failing_shadow(
    send: Sender, faulty_upstream_factory: UpstreamFactory
) -> None:
    """The same client sends pairs of requests, one mirrored and one not (``connectivity.mirror`` per request),
    in alternating order; the shadow answers in 200 ms, half the time with a 500. Every mirrored call returns long
    before its shadow could have answered, and no shadow error reaches the caller. (How much latency mirroring
    adds, paired against unmirrored calls, is measured by ``python -m bench mirror``, not here.)"""
    main = faulty_upstream_factory("primary")
    shadow = faulty_upstream_factory("shadow", faults=Faults(latency=0.2, error_rate=0.5, error_status=500))
    transport = MirrorTransport(HTTPTransport(), HTTPTransport(), url=shadow.url, max_concurrent=2)
    url = f"{main.url}/orders"
    pairs, warmup = 60, 5
    on, off = {"connectivity.mirror": True}, {"connectivity.mirror": False}

    def order(i: int) -> tuple[dict[str, bool], dict[str, bool]]:
        return (off, on) if i % 2 else (on, off)

    def sync() -> list[tuple[float, float]]:
        timings: list[tuple[float, float]] = []
        with httpx.Client(transport=transport) as client:
            for i in range(warmup + pairs):
                pair = {}
                for extensions in order(i):
                    started = time.perf_counter()
                    assert client.get(url, extensions=extensions).status_code == 200
                    pair[extensions is on] = time.perf_counter() - started
                if i >= warmup:
                    timings.append((pair[False], pair[True]))
        return timings

    async def async_() -> list[tuple[float, float]]:
        timings: list[tuple[float, float]] = []
        async with httpx.AsyncClient(transport=transport) as client:
            for i in range(warmup + pairs):
                pair = {}
                for extensions in order(i):
                    started = time.perf_counter()
                    assert (await client.get(url, extensions=extensions)).status_code == 200
                    pair[extensions is on] = time.perf_counter() - started
                if i >= warmup:
                    timings.append((pair[False], pair[True]))
        return timings

    timings = send.run(sync, async_)
    stats = transport.stats()
    # Mirrors really went out (and were dropped beyond the bound), each taking 200 ms: over 60 primary calls.
    assert stats.started >= 2
    assert stats.dropped > 0
    assert stats.in_flight == 0
    # A call that waited for its shadow would take 200 ms; the mirrored ones take what the unmirrored ones take.
    assert statistics.median(mirrored for _, mirrored in timings) < 0.1, (timings, stats)


def test_a_shadow_that_is_down_never_reaches_the_caller(
    send: Sender, faulty_upstream_factory: UpstreamFactory
) -> None:
    main = faulty_upstream_factory("primary")
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    transport = MirrorTransport(HTTPTransport(), HTTPTransport(), url=f"http://127.0.0.1:{closed_port}")
    responses = run(send, transport, [{"url": f"{main.url}/orders"} for _ in range(3)])
    assert [r.status_code for r in responses] == [200, 200, 200]
    stats = transport.stats()
    assert (stats.started, stats.failed, stats.in_flight) == (3, 3, 0)
