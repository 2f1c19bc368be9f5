"""EndpointStats (in flight, peak EWMA, penalty) and EndpointSet snapshots (derivation, health, zones)."""

from __future__ import annotations

import math
import threading

import pytest

from connectivity.balancing import DEFAULT_DECAY, EndpointSet, EndpointStats
from connectivity.discovery import Endpoint
from connectivity.errors import ConfigError
from connectivity.testing import FakeClock

from .conftest import endpoints


def _one(clock: FakeClock, **options: float) -> EndpointStats:
    return EndpointSet([Endpoint("10.0.0.1", 80)], clock=clock, **options).stats("10.0.0.1:80")


# -- in flight ------------------------------------------------------------------------------------------------


def test_start_and_finish_count_in_flight_per_endpoint_and_per_lineage(fake_clock: FakeClock) -> None:
    pool = EndpointSet(endpoints(2), clock=fake_clock)
    first, second = pool.members
    tickets = [first.start(), first.start(), second.start()]
    assert (first.in_flight, second.in_flight, pool.in_flight) == (2, 1, 3)
    first.finish(tickets[0])
    second.finish(tickets[2])
    assert (first.in_flight, second.in_flight, pool.in_flight) == (1, 0, 1)
    second.finish(tickets[2])  # one finish too many never drives a count below zero
    assert (second.in_flight, pool.in_flight) == (0, 1)


def test_in_flight_is_exact_under_threads(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)

    def work() -> None:
        for _ in range(2000):
            stats.finish(stats.start(), observe=False)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.in_flight == 0


# -- peak EWMA ------------------------------------------------------------------------------------------------


def test_first_sample_is_the_estimate(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)
    assert stats.latency() is None
    started = stats.start()
    fake_clock.advance(0.120)
    stats.finish(started)
    assert stats.latency() == pytest.approx(0.120)


def test_a_slower_sample_is_believed_at_once(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)
    stats.observe(0.010)
    fake_clock.advance(0.001)
    stats.observe(0.500)
    assert stats.latency() == pytest.approx(0.500)


def test_a_faster_sample_is_blended_in_by_elapsed_time(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)
    stats.observe(0.200)
    fake_clock.advance(DEFAULT_DECAY)  # one decay time: weight e^-1
    weight = math.exp(-1.0)
    current = 0.200 * weight
    stats.observe(0.010)
    assert stats.latency() == pytest.approx(current * weight + 0.010 * (1 - weight))
    # Right after a sample, a burst of fast samples barely moves it: the decay is by time, not by count.
    before = stats.latency()
    for _ in range(100):
        stats.observe(0.001)
    assert stats.latency() == pytest.approx(before)


def test_the_estimate_decays_towards_zero_while_idle(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock, decay=5.0)
    stats.observe(0.200)
    fake_clock.advance(5.0)
    assert stats.latency() == pytest.approx(0.200 * math.exp(-1.0))
    assert stats.cost(fake_clock.now()) == pytest.approx(0.200 * math.exp(-1.0))
    fake_clock.advance(50.0)
    assert stats.latency() == pytest.approx(0.200 * math.exp(-11.0))


def test_cost_is_latency_times_in_flight_plus_one(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)
    stats.observe(0.050)
    stats.start()
    stats.start()
    assert stats.cost(fake_clock.now()) == pytest.approx(0.050 * 3)


def test_unsampled_endpoint_costs_nothing_idle_and_the_penalty_while_busy(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock, penalty=7.0)
    assert stats.cost(fake_clock.now()) == 0.0  # a new endpoint gets its first request at once
    stats.start()
    assert stats.cost(fake_clock.now()) == pytest.approx(7.0 * 2)  # ... and no second one before it answers


def test_finish_without_observing_leaves_the_estimate(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)
    started = stats.start()
    fake_clock.advance(0.001)
    stats.finish(started, observe=False)
    assert stats.latency() is None
    stats.finish(stats.start(), latency=0.25)
    assert stats.latency() == pytest.approx(0.25)


def test_status_and_repr(fake_clock: FakeClock) -> None:
    stats = _one(fake_clock)
    assert "latency=-" in repr(stats)
    stats.observe(0.0123)
    assert stats.status() == {"endpoint": "10.0.0.1:80", "in_flight": 0, "latency_ms": 12.3, "added_at": -math.inf}
    assert "12.3ms" in repr(stats)


@pytest.mark.parametrize(
    ("option", "value"), [("decay", 0), ("decay", math.inf), ("penalty", -1.0), ("penalty", "1")]
)
def test_invalid_lineage_settings_name_the_field(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        EndpointSet(endpoints(1), **{option: value})  # type: ignore[arg-type]
    assert raised.value.field == f"EndpointSet.{option}"


# -- snapshots ------------------------------------------------------------------------------------------------


def test_snapshot_reading() -> None:
    members = endpoints(3, zone="a") + endpoints(2, zone="b", subnet=1)
    pool = EndpointSet(members, unhealthy={members[0].key, "not-a-member:1"})
    assert len(pool) == 5
    assert list(pool) == members
    assert pool.endpoints == tuple(members)
    assert members[1].key in pool
    assert members[1] in pool
    assert "x:1" not in pool
    assert pool.unhealthy == frozenset({members[0].key})
    assert [s.key for s in pool.healthy] == [e.key for e in members[1:]]
    assert pool.healthy_percent == 80.0
    assert (pool.zone_size("a"), pool.zone_size("b"), pool.zone_size("c")) == (3, 2, 0)
    assert [s.key for s in pool.healthy_in("a")] == [members[1].key, members[2].key]
    assert [s.key for s in pool.healthy_outside("a")] == [e.key for e in members[3:]]
    assert pool.healthy_outside("a") is pool.healthy_outside("a")  # computed once per snapshot
    assert not pool.is_healthy(members[0].key)
    assert pool.is_healthy(members[1].key)
    assert pool.get("x:1") is None
    assert pool.stats(members[1].key).endpoint == members[1]
    with pytest.raises(KeyError):
        pool.stats("x:1")
    status = pool.status()
    assert status["members"] == 5
    assert status["healthy"] == 4
    assert "members=5, healthy=4" in repr(pool)
    assert EndpointSet().healthy_percent == 100.0


def test_duplicates_keep_the_first_and_non_endpoints_are_rejected() -> None:
    first = Endpoint("10.0.0.1", 80, weight=2)
    pool = EndpointSet([first, Endpoint("10.0.0.1", 80, weight=5)])
    assert pool.endpoints == (first,)
    with pytest.raises(TypeError):
        EndpointSet(["10.0.0.1:80"])  # type: ignore[list-item]


def test_update_keeps_stats_and_health_of_survivors_and_times_newcomers(fake_clock: FakeClock) -> None:
    old = endpoints(3)
    pool = EndpointSet(old, clock=fake_clock, unhealthy={old[2].key})
    kept = pool.stats(old[0].key)
    kept.start()
    kept.observe(0.04)
    fake_clock.advance(12.0)
    newcomer = Endpoint("10.9.9.9", 80)
    reweighted = Endpoint(old[0].address, old[0].port, weight=4)
    updated = pool.update([reweighted, old[2], newcomer])
    assert updated.stats(old[0].key) is kept  # the same live counters
    assert kept.endpoint == reweighted
    assert kept.in_flight == 1
    assert updated.unhealthy == frozenset({old[2].key})
    assert kept.added_at == -math.inf  # the first snapshot's endpoints are established
    assert updated.stats(newcomer.key).added_at == 12.0
    assert updated.in_flight == 1
    assert old[1].key not in updated
    assert [stats.key for stats in pool.members] == [e.key for e in old]  # membership never changes
    assert pool.endpoints[0] == reweighted  # ... but every snapshot sees an endpoint's latest attributes


def test_with_unhealthy_replaces_the_health_flags() -> None:
    members = endpoints(4)
    pool = EndpointSet(members, unhealthy={members[0].key})
    changed = pool.with_unhealthy({members[1].key, members[2].key})
    assert changed.unhealthy == frozenset({members[1].key, members[2].key})
    assert changed.stats(members[0].key) is pool.stats(members[0].key)
    assert pool.with_unhealthy(()).healthy == pool.with_unhealthy(()).members
