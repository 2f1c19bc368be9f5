"""The shared circuit in Redis against the local Circuit: same transitions, same reasons, same thresholds."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from connectivity.backends.redis import RedisCircuit
from connectivity.policies.breaker import (
    CANCELLED,
    FAILURE,
    IGNORED,
    SLOW_SUCCESS,
    SUCCESS,
    Circuit,
    CircuitBreaker,
    Rejection,
    Transition,
)
from connectivity.testing.redis import RedisServer

from .conftest import REMOTE, BackendFactory, admit_when_open_elapsed, wait_until

pytestmark = pytest.mark.system


def heard(breaker: CircuitBreaker) -> list[tuple[str, str, str]]:
    events: list[tuple[str, str, str]] = []

    def listen(transition: Transition) -> None:
        events.append((transition.from_state, transition.to_state, transition.reason))

    breaker.add_listener(listen)
    return events


def play(circuit: Circuit | RedisCircuit, outcomes: Sequence[int]) -> list[str]:
    """Admit and record each outcome in turn; the state after each step (or the rejection)."""
    seen = []
    for outcome in outcomes:
        ticket = circuit.admit()
        if isinstance(ticket, Rejection):
            seen.append(f"rejected {ticket.state}")
            continue
        circuit.record(ticket, outcome)
        seen.append(circuit.state)
    return seen


def twins(make_backend: BackendFactory, **config: Any) -> tuple[Circuit, RedisCircuit, list[Any], list[Any]]:
    """A local circuit and a Redis circuit with the same configuration, and what their listeners hear."""
    local_breaker = CircuitBreaker(name="local", **config)
    shared_breaker = dataclasses.replace(local_breaker, name="shared")
    shared = make_backend().circuit(shared_breaker)
    return local_breaker.circuit(), shared, heard(local_breaker), heard(shared_breaker)


F, S, SLOW = FAILURE, SUCCESS, SLOW_SUCCESS

SCRIPTS: dict[str, tuple[dict[str, Any], list[int]]] = {
    "ratio": (
        {"failure_ratio": 0.5, "minimum_calls": 4, "open_for": 0.2},
        [S, F, S, S, F, IGNORED, CANCELLED, F, S],
    ),
    "consecutive": (
        {"failure_ratio": None, "consecutive_failures": 3, "open_for": 0.2},
        [F, F, S, F, F, S, F, F, F, S],
    ),
    "count window": (
        {"failure_ratio": 0.5, "minimum_calls": 4, "window": 4, "window_type": "count", "open_for": 0.2},
        [F, S, S, S, F, S, S, F, F, S],
    ),
    "slow calls": (
        {
            "failure_ratio": None,
            "slow_call_threshold": 1.0,
            "slow_call_ratio": 0.5,
            "minimum_calls": 3,
            "open_for": 0.2,
        },
        [S, SLOW, S, S, SLOW, SLOW, S],
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_same_transitions_as_the_local_circuit(make_backend: BackendFactory, name: str) -> None:
    config, outcomes = SCRIPTS[name]
    local, shared, local_events, shared_events = twins(make_backend, half_open_permits=2, **config)

    assert play(shared, outcomes) == play(local, outcomes)
    assert shared.state == local.state == "open"
    assert play(shared, [S]) == play(local, [S]) == ["rejected open"]
    counts = ("calls", "failures", "slow", "consecutive_failures", "probes_in_flight")
    assert {k: shared.status()[k] for k in counts} == {k: local.status()[k] for k in counts}

    # open -> half-open once open_for has passed; exactly half_open_permits probes; successes close it.
    probes = [admit_when_open_elapsed(shared), shared.admit()]
    local_probes = [admit_when_open_elapsed(local), local.admit()]
    assert all(isinstance(ticket, int) for ticket in probes + local_probes)
    assert shared.status()["probes_in_flight"] == local.status()["probes_in_flight"] == 2
    assert play(shared, [S]) == play(local, [S]) == ["rejected half-open"]
    for ticket, local_ticket in zip(probes, local_probes, strict=True):
        shared.record(ticket, SUCCESS)
        local.record(local_ticket, SUCCESS)
        assert shared.state == local.state
    assert shared.state == "closed"
    assert shared_events == local_events
    assert [event[:2] for event in shared_events] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert shared.status()["calls"] == local.status()["calls"] == 0  # closing forgets the window


@pytest.mark.parametrize(("ratio", "calls"), [(0.28, 25), (0.07, 100), (0.56, 25), (0.5, 4)])
@pytest.mark.parametrize("slow", [False, True])
def test_a_ratio_reached_exactly_trips(make_backend: BackendFactory, ratio: float, calls: int, slow: bool) -> None:
    bad = round(ratio * calls)
    assert bad / calls == ratio
    config: dict[str, Any] = {"minimum_calls": calls, "window": calls, "window_type": "count"}
    if slow:
        config.update(failure_ratio=None, slow_call_threshold=1.0, slow_call_ratio=ratio)
    else:
        config.update(failure_ratio=ratio)
    circuit = make_backend().circuit(CircuitBreaker(name="exact", **config))
    play(circuit, [S] * (calls - bad) + [SLOW if slow else F] * (bad - 1))
    assert circuit.state == "closed"
    play(circuit, [SLOW if slow else F])
    assert circuit.state == "open"


def test_failed_probe_reopens_for_longer_up_to_open_for_max(make_backend: BackendFactory) -> None:
    config = {"failure_ratio": None, "consecutive_failures": 1, "open_for": 0.2, "open_for_max": 0.5}
    local, shared, local_events, shared_events = twins(make_backend, **config)
    opened: list[float | None] = []
    shared.breaker.add_listener(lambda transition: opened.append(transition.open_for))
    for circuit in (local, shared):
        play(circuit, [F])
        for _ in range(3):  # reopen: 0.4, then 0.5 (the cap)
            circuit.record(admit_when_open_elapsed(circuit), FAILURE)
        circuit.record(admit_when_open_elapsed(circuit), SUCCESS)
    assert shared_events == local_events
    assert [event[2] for event in shared_events][:3] == [
        "1 consecutive failures",
        "open time elapsed",
        "probe failed",
    ]
    assert [seconds for seconds in opened if seconds is not None] == [0.2, 0.4, 0.5, 0.5]
    assert shared.state == "closed"


def test_jitter_spreads_the_open_time(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(name="jittery", failure_ratio=None, consecutive_failures=1, open_for=10.0, jitter=0.5)
    backend = make_backend()
    opened: list[float] = []
    breaker.add_listener(lambda transition: opened.append(transition.open_for or 0.0))
    for key in map(str, range(20)):
        circuit = backend.circuit(breaker, key)
        circuit.record(circuit.admit(), FAILURE)  # type: ignore[arg-type]
        rejection = circuit.admit()
        assert isinstance(rejection, Rejection)
        assert rejection.retry_after is not None
        assert 5.0 - 0.1 <= rejection.retry_after <= 15.0
    assert all(5.0 <= seconds <= 15.0 for seconds in opened)
    assert len(set(opened)) > 1


def test_half_open_permits_are_global_across_threads_and_clients(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(
        name="probes", failure_ratio=None, consecutive_failures=1, open_for=0.2, half_open_permits=3
    )
    # Four clients, as four processes would be; given time to connect 32 threads at once (not an outage test).
    circuits = [make_backend(timeout=1.0).circuit(breaker) for _ in range(4)]
    circuits[0].record(circuits[0].admit(), FAILURE)  # type: ignore[arg-type]
    assert circuits[0].state == "open"
    wait_until(lambda: circuits[1].status()["retry_after_s"] == 0.0, what="open time elapsed")

    barrier = threading.Barrier(32)
    results: list[int | Rejection] = []
    lock = threading.Lock()

    def race(circuit: RedisCircuit) -> None:
        barrier.wait(timeout=10)
        ticket = circuit.admit()
        with lock:
            results.append(ticket)

    threads = [threading.Thread(target=race, args=(circuits[i % 4],)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    tickets = [ticket for ticket in results if isinstance(ticket, int)]
    assert len(results) == 32
    assert len(tickets) == 3
    assert all(ticket & REMOTE and ticket & 1 for ticket in tickets)  # Redis probes
    assert {ticket.state for ticket in results if isinstance(ticket, Rejection)} == {"half-open"}
    assert circuits[2].status()["probes_in_flight"] == 3


def test_stale_tickets_are_ignored(make_backend: BackendFactory, redis_server: RedisServer) -> None:
    breaker = CircuitBreaker(name="stale", failure_ratio=None, consecutive_failures=2, open_for=0.2)
    circuit = make_backend(retry_redis_after=0.0).circuit(breaker)
    early = circuit.admit()
    assert isinstance(early, int)
    play(circuit, [F, F])
    assert circuit.state == "open"
    circuit.record(early, SUCCESS)  # admitted before the trip: says nothing about the open circuit
    assert circuit.status()["calls"] == 2

    circuit.reset()
    before_restart = circuit.admit()
    assert isinstance(before_restart, int)
    redis_server.stop()
    redis_server.start()  # empty: a new circuit, a new epoch (server time), so the old ticket cannot match it
    circuit.record(circuit.admit(), SUCCESS)  # type: ignore[arg-type]
    circuit.record(before_restart, FAILURE)
    assert circuit.status()["calls"] == 1
    assert circuit.status()["failures"] == 0


def test_time_window_forgets_old_outcomes(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(name="window", failure_ratio=0.5, minimum_calls=4, window=0.5)
    circuit = make_backend().circuit(breaker)
    play(circuit, [F, F, F])
    assert circuit.status()["calls"] == 3
    wait_until(lambda: circuit.status()["calls"] == 0, what="the window to forget")
    assert play(circuit, [F]) == ["closed"]  # 1 failure in the window: the 3 old ones are gone
    assert circuit.status()["failures"] == 1


def test_lost_probe_permits_are_reclaimed_after_the_probe_lease(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(name="lease", failure_ratio=None, consecutive_failures=1, open_for=0.2)
    events = heard(breaker)
    circuit = make_backend(probe_lease=0.3).circuit(breaker)
    play(circuit, [F])
    probe = admit_when_open_elapsed(circuit)  # its process "dies": it never records
    assert probe & 1
    rejection = circuit.admit()
    assert isinstance(rejection, Rejection)
    assert rejection.state == "half-open"

    def reopened() -> bool:
        answer = circuit.admit()
        return isinstance(answer, Rejection) and answer.state == "open"

    wait_until(reopened, what="the lost probe to reopen the circuit")
    assert events[-1] == ("half-open", "open", "probe(s) lost: no outcome within the probe lease")
    circuit.record(admit_when_open_elapsed(circuit), SUCCESS)
    assert circuit.state == "closed"


def test_isolate_and_reset_are_shared_and_isolation_never_expires(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(name="orders", consecutive_failures=5)
    first = make_backend(idle_ttl=60.0).circuit(breaker, "host-a")
    second = make_backend(idle_ttl=60.0).circuit(breaker, "host-a")
    direct = redis.Redis.from_url(first._backend._url)
    try:
        first.isolate()
        rejection = second.admit()
        assert rejection == Rejection("orders/host-a", "isolated", None)
        assert first.local.state == "isolated"  # the fallback holds the operator's intent too
        state_key = "connectivity:breaker:{orders/host-a}:state"
        assert direct.pttl(state_key) == -1
        second.reset()
        assert isinstance(first.admit(), int)
        assert 0 < direct.pttl(state_key) <= 60_000
        assert first.local.state == "closed"
    finally:
        direct.close()


def test_keys_share_one_cluster_slot_and_expire_when_idle(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(
        name="a{b}/c%", failure_ratio=0.5, minimum_calls=2, window=3, window_type="count", open_for=0.1
    )
    backend = make_backend(prefix="test:", idle_ttl=0.3)
    circuit = backend.circuit(breaker, "x/y")
    play(circuit, [S, S])
    direct = redis.Redis.from_url(backend._url)
    try:
        keys = sorted(direct.keys("test:*"))
        assert keys == [b"test:{a%7Bb%7D%2Fc%25/x%2Fy}:state", b"test:{a%7Bb%7D%2Fc%25/x%2Fy}:window"]
        assert len({key_slot(key) for key in keys}) == 1
        assert all(0 < direct.pttl(key) <= 300 for key in keys)
        wait_until(lambda: not direct.keys("test:*"), what="idle keys to expire")
        assert circuit.status()["calls"] == 0
    finally:
        direct.close()


def test_shadow_mode_admits_everything_but_counts_rejections(make_backend: BackendFactory) -> None:
    breaker = CircuitBreaker(name="shadow", failure_ratio=None, consecutive_failures=1, open_for=30.0, shadow=True)
    circuit = make_backend().circuit(breaker)
    play(circuit, [F])
    assert circuit.state == "open"
    assert circuit.admit() == -1
    circuit.record(-1, FAILURE)
    assert circuit.status()["rejected"] == 1


def test_circuits_are_cached_per_breaker_name_and_key(make_backend: BackendFactory) -> None:
    backend = make_backend()
    breaker = CircuitBreaker(name="cached", failure_ratio=None, consecutive_failures=1, open_for=30.0)
    circuit = backend.circuit(breaker, "k")
    assert backend.circuit(breaker, "k") is circuit
    assert backend.circuit(breaker) is not circuit
    assert circuit.remote is True
    assert circuit.name == breaker.circuit("k").name == "cached/k"
    reloaded = dataclasses.replace(breaker, open_for=60.0)  # a reloaded configuration, same name
    fresh = backend.circuit(reloaded, "k")
    assert fresh is not circuit
    assert backend.circuit(reloaded, "k") is fresh
    play(circuit, [F])
    rejection = fresh.admit()  # the same shared state
    assert isinstance(rejection, Rejection)
    assert rejection.state == "open"


def test_status_is_json_ready(make_backend: BackendFactory) -> None:
    import json

    circuit = make_backend().circuit(CircuitBreaker(name="status", consecutive_failures=1, open_for=5.0))
    play(circuit, [F])
    status = circuit.status()
    assert json.loads(json.dumps(status)) == status
    assert status["state"] == "open"
    assert status["shared"] is True
    assert status["degraded"] is False
    assert 4.0 < status["retry_after_s"] <= 5.0  # type: ignore[operator]
