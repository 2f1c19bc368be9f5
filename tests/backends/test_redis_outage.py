"""Redis dies, hangs or refuses us: every call decides locally, within the timeout, and nothing is raised."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from connectivity.backends.redis import RedisBreakerBackend, RedisCircuit
from connectivity.policies.breaker import FAILURE, SUCCESS, CircuitBreaker, Rejection
from connectivity.testing.redis import RedisServer
from connectivity.testing.redis import redis_server as serve_redis
from connectivity.testing.system import require_binary

from .conftest import REMOTE, BackendFactory, wait_until

pytestmark = pytest.mark.system

TIMEOUT = 0.1
MARGIN = 0.2
LOGGER = "connectivity.backends.redis"


def timed(call: Callable[[], Any], durations: list[float]) -> Any:
    started = time.perf_counter()
    result = call()
    durations.append(time.perf_counter() - started)
    return result


def drive(circuit: RedisCircuit, seconds: float, durations: list[float]) -> list[int | Rejection]:
    """Admit and record failures for ``seconds``, timing every single call."""
    answers: list[int | Rejection] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ticket = timed(circuit.admit, durations)
        answers.append(ticket)
        if isinstance(ticket, int):
            timed(lambda: circuit.record(ticket, FAILURE), durations)  # noqa: B023
        time.sleep(0.005)
    return answers


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "unavailable" in r.getMessage()]


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_outage_falls_back_to_the_local_circuit_then_recovers(
    make_backend: BackendFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    breaker = CircuitBreaker(name="orders", failure_ratio=None, consecutive_failures=3, open_for=30.0)
    backend = make_backend(timeout=TIMEOUT, retry_redis_after=0.3)
    circuit = backend.circuit(breaker)
    ticket = circuit.admit()
    assert isinstance(ticket, int)
    assert ticket & REMOTE
    circuit.record(ticket, SUCCESS)

    if outage == "killed":
        redis_server.stop()
    else:
        redis_server.pause()  # accepts connections, never answers: only the timeout ends a call
    durations: list[float] = []
    answers = drive(circuit, 1.0, durations)  # spans several retry_redis_after periods

    assert max(durations) <= TIMEOUT + MARGIN, durations
    assert all(isinstance(a, Rejection) or not a & REMOTE for a in answers)  # decided by the local circuit
    assert circuit.local.state == "open"  # the local circuit tripped on its own (3 consecutive failures)
    assert isinstance(answers[-1], Rejection)
    assert backend.degraded
    assert circuit.status()["degraded"] is True
    assert len(outage_warnings(caplog)) == 1  # once per outage, although Redis was tried again

    if outage == "killed":
        redis_server.start()
    else:
        redis_server.resume()

    def shared_again() -> bool:
        answer = circuit.admit()
        return isinstance(answer, int) and bool(answer & REMOTE)

    wait_until(shared_again, what="decisions to go to Redis again")
    assert not backend.degraded
    assert circuit.status()["degraded"] is False
    assert any("available again" in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_a_local_ticket_is_recorded_locally_after_redis_returns(
    make_backend: BackendFactory, redis_server: RedisServer
) -> None:
    breaker = CircuitBreaker(name="orders", failure_ratio=None, consecutive_failures=3)
    circuit = make_backend(timeout=TIMEOUT, retry_redis_after=0.0).circuit(breaker)
    redis_server.stop()
    local_ticket = circuit.admit()
    assert isinstance(local_ticket, int)
    assert not local_ticket & REMOTE
    redis_server.start()
    wait_until(lambda: not circuit.status()["degraded"], what="Redis to be used again")
    circuit.record(local_ticket, FAILURE)
    assert circuit.local.status()["failures"] == 1
    assert circuit.status()["failures"] == 0


def test_every_operation_falls_back_without_raising(
    make_backend: BackendFactory, redis_server: RedisServer
) -> None:
    circuit = make_backend(timeout=TIMEOUT, retry_redis_after=0.0).circuit(CircuitBreaker(name="all"))
    ticket = circuit.admit()
    redis_server.stop()
    circuit.record(ticket, FAILURE)  # type: ignore[arg-type]  # a Redis ticket whose outcome cannot be heard
    circuit.isolate()
    assert circuit.local.state == "isolated"
    assert circuit.admit() == Rejection("all", "isolated", None)
    circuit.reset()
    assert circuit.status()["state"] == "closed"
    assert circuit.status()["degraded"] is True


def test_no_password_in_warnings_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    binary = require_binary("redis-server")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with serve_redis(binary=binary, password="right-pass") as server:
        wrong = f"redis://:wrong-pass@127.0.0.1:{server.port}/0"
        backend = RedisBreakerBackend(wrong, timeout=TIMEOUT)
        assert "wrong-pass" not in repr(backend)
        circuit = backend.circuit(CircuitBreaker(name="auth"))
        assert isinstance(circuit.admit(), int)  # refused by Redis: decided locally
        assert circuit.status()["degraded"] is True
        backend.close()
        [message] = outage_warnings(caplog)
        assert "wrong-pass" not in caplog.text
        assert ":***@127.0.0.1" in message

        backend = RedisBreakerBackend(server.url, timeout=TIMEOUT)
        ticket = backend.circuit(CircuitBreaker(name="auth")).admit()
        assert isinstance(ticket, int)
        assert ticket & REMOTE
        backend.close()
