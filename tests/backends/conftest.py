"""Real redis-server fixtures for the Redis backend tests (skipped without redis-server unless CI requires it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectivity.backends.redis import RedisBreakerBackend, RedisCircuit
from connectivity.policies.breaker import Circuit, Rejection
from connectivity.testing.redis import RedisServer
from connectivity.testing.redis import redis_server as serve_redis
from connectivity.testing.system import require_binary

REMOTE = 1 << 62
"""Tickets issued by Redis carry bit 62 (see connectivity.backends.redis)."""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free loopback port (the plugin fixture of the same name, once registered)."""
    binary = require_binary("redis-server")
    with serve_redis(binary=binary) as server:
        yield server


BackendFactory = Callable[..., RedisBreakerBackend]


@pytest.fixture
def make_backend(redis_server: RedisServer) -> Iterator[BackendFactory]:
    """Build backends on the test's server (``url=`` overrides it); every one is closed at the end."""
    made: list[RedisBreakerBackend] = []

    def make(**kwargs: Any) -> RedisBreakerBackend:
        # The library's 50 ms default is for production; on a loaded 2-core runner a healthy Redis can take
        # longer, and a test about shared semantics must not fall back to local state. Outage tests pass their own.
        kwargs.setdefault("timeout", 1.0)
        backend = RedisBreakerBackend(kwargs.pop("url", redis_server.url), **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def admit_when_open_elapsed(circuit: Circuit | RedisCircuit, timeout: float = 5.0) -> int:
    """Poll ``admit()`` until the circuit admits again (its open time passed), bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        ticket = circuit.admit()
        if not isinstance(ticket, Rejection):
            return ticket
        assert ticket.state == "open", ticket
        assert time.monotonic() < deadline, f"{circuit.name} still rejecting after {timeout} s"
        time.sleep(min(ticket.retry_after or 0.01, 0.02))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.01)
