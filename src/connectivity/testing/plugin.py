"""The connectivity pytest plugin: a fake clock, real faulty upstream servers and in-memory telemetry.

Registered through the ``pytest11`` entry point, so it loads wherever ``connectivity-sdk`` is installed. Heavy or
optional imports (uvicorn, the clock) happen inside the fixtures, so merely loading the plugin costs nothing and
needs nothing beyond pytest.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from connectivity.testing.clock import FakeClock
    from connectivity.testing.dnsmasq import DnsmasqServer
    from connectivity.testing.etcd import EtcdServer
    from connectivity.testing.otel import InMemoryTelemetry
    from connectivity.testing.redis import RedisServer
    from connectivity.testing.server import RunningServer
    from connectivity.testing.upstream import Faults, FaultyUpstream

__all__ = [
    "DnsmasqFactory",
    "UpstreamFactory",
    "dnsmasq_factory",
    "etcd_server",
    "fake_clock",
    "faulty_upstream",
    "faulty_upstream_factory",
]

DnsmasqFactory = Callable[..., "DnsmasqServer"]
"""Starts a dnsmasq with the records given as keyword arguments (those of
:func:`connectivity.testing.dnsmasq.dnsmasq_server`)."""

_SYSTEM_MARKER = "system: needs a system binary (skipped locally when absent; required in CI)"


class UpstreamFactory(Protocol):
    """Starts a named :class:`~connectivity.testing.upstream.FaultyUpstream` replica on a real server."""

    def __call__(
        self, name: str = "upstream", *, faults: Faults | None = None, seed: int | str | None = None
    ) -> RunningServer[FaultyUpstream]:
        """Start a replica.

        Args:
            name: Replica name (echoed in its responses; must be unique within the test).
            faults: Initial faults (default: none).
            seed: Seed of the replica's ``random.Random``; default derived from ``name``, so runs repeat.
        """
        ...


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``system`` marker unless the project already declares it."""
    declared = config.getini("markers")
    if not any(str(line).split(":", 1)[0].strip() == "system" for line in declared):
        config.addinivalue_line("markers", _SYSTEM_MARKER)


@pytest.fixture
def otel() -> Iterator[InMemoryTelemetry]:
    """An in-memory OpenTelemetry SDK pipeline (needs ``opentelemetry-sdk``): pass ``otel.telemetry()`` to a
    layer, then assert on ``otel.spans()`` and ``otel.metrics()``."""
    from connectivity.testing.otel import InMemoryTelemetry

    pipeline = InMemoryTelemetry()
    yield pipeline
    pipeline.shutdown()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free 127.0.0.1 port: ``.url``, ``.port``, ``.stop()``/``.start()`` (same
    port), ``.pause()``/``.resume()``. Skipped without redis-server unless CONNECTIVITY_REQUIRE_SYSTEM_DEPS=1."""
    from connectivity.testing.redis import redis_server as serve_redis
    from connectivity.testing.system import require_binary

    with serve_redis(binary=require_binary("redis-server")) as server:
        yield server


@pytest.fixture
def dnsmasq_factory() -> Iterator[DnsmasqFactory]:
    """Start throwaway dnsmasq servers on free 127.0.0.1 ports: ``dnsmasq_factory(srv=[SRV(...)], hosts={...},
    ttl=1)`` returns a running :class:`~connectivity.testing.dnsmasq.DnsmasqServer` (``.nameserver``,
    ``.set_hosts()``, ``.restart(srv=...)``); all are killed when the test ends. Skipped without dnsmasq unless
    CONNECTIVITY_REQUIRE_SYSTEM_DEPS=1."""
    from connectivity.testing.dnsmasq import dnsmasq_server
    from connectivity.testing.system import require_binary

    binary = require_binary("dnsmasq")
    with contextlib.ExitStack() as stack:

        def start(**records: Any) -> DnsmasqServer:
            return stack.enter_context(dnsmasq_server(binary=binary, **records))

        yield start


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A throwaway single-member etcd on free 127.0.0.1 ports: ``.url``, ``.put()``, ``.delete()``,
    ``.replace()``, ``.stop()``/``.start()`` (same ports, data kept). Skipped without etcd unless
    CONNECTIVITY_REQUIRE_SYSTEM_DEPS=1."""
    from connectivity.testing.etcd import etcd_server as serve_etcd
    from connectivity.testing.system import require_binary

    with serve_etcd(binary=require_binary("etcd")) as server:
        yield server


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh :class:`~connectivity.testing.clock.FakeClock`."""
    from connectivity.testing.clock import FakeClock

    return FakeClock()


@pytest.fixture
def faulty_upstream_factory() -> Iterator[UpstreamFactory]:
    """Start any number of named faulty replicas; every one is stopped when the test ends."""
    from connectivity.testing.server import serve
    from connectivity.testing.upstream import FaultyUpstream

    names: set[str] = set()
    with contextlib.ExitStack() as stack:

        def start(
            name: str = "upstream", *, faults: Faults | None = None, seed: int | str | None = None
        ) -> RunningServer[FaultyUpstream]:
            if name in names:
                raise ValueError(f"an upstream named {name!r} is already running in this test")
            names.add(name)
            rng = random.Random(f"connectivity:{name}" if seed is None else seed)
            app = FaultyUpstream(name=name, faults=faults, rng=rng)
            return stack.enter_context(serve(app, name=name))

        yield start


@pytest.fixture
def faulty_upstream(faulty_upstream_factory: UpstreamFactory) -> RunningServer[FaultyUpstream]:
    """One running faulty replica named ``"upstream"``: ``.url``, and the knobs and stats on ``.app``."""
    return faulty_upstream_factory("upstream")
