"""Routing shared by the pickers: panic threshold, locality preference with failover, slow start."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from connectivity.balancing import (
    EWMA,
    EndpointSet,
    LeastRequest,
    Maglev,
    Picker,
    Random,
    RingHash,
    RoundRobin,
    SlowStart,
    Weighted,
    ZoneAwarePicker,
)
from connectivity.discovery import Endpoint
from connectivity.errors import ConfigError
from connectivity.testing import FakeClock

from .conftest import count_picks, endpoints

ALL = [RoundRobin, Random, LeastRequest, EWMA, Weighted, RingHash, Maglev]
ZONED = [RoundRobin, Random, LeastRequest, EWMA, Weighted]

# -- panic ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_below_the_panic_threshold_every_member_is_a_candidate(kind: type[Picker]) -> None:
    members = endpoints(10)
    sick = {e.key for e in members[:6]}  # 40 % healthy < 50 %
    picked = count_picks(kind(rng=random.Random(1)), EndpointSet(members, unhealthy=sick), 4000, key=None)
    assert len(picked) == 10
    assert sum(picked[key] for key in sick) > 1500  # unhealthy ones take their share again


@pytest.mark.parametrize("kind", ALL)
def test_at_the_panic_threshold_health_still_counts(kind: type[Picker]) -> None:
    members = endpoints(10)
    sick = {e.key for e in members[:5]}  # exactly 50 %: not below
    picked = count_picks(kind(rng=random.Random(1)), EndpointSet(members, unhealthy=sick), 2000)
    assert set(picked) == {e.key for e in members[5:]}


def test_panic_threshold_is_configurable_and_zero_disables_it() -> None:
    members = endpoints(10)
    pool = EndpointSet(members, unhealthy={e.key for e in members[:8]})  # 20 % healthy
    assert set(count_picks(Random(healthy_panic_threshold=20, rng=random.Random(1)), pool, 500)) == {
        e.key for e in members[8:]
    }
    assert len(count_picks(Random(healthy_panic_threshold=21, rng=random.Random(1)), pool, 2000)) == 10
    everyone_sick = EndpointSet(members, unhealthy={e.key for e in members})
    assert Random(healthy_panic_threshold=0).pick(everyone_sick) is None
    assert Random().pick(everyone_sick) is not None  # default 50 %: panic picks among all


# -- locality -------------------------------------------------------------------------------------------------


def _zones() -> tuple[list[Endpoint], list[Endpoint]]:
    return endpoints(5, zone="eu-1a"), endpoints(5, zone="eu-1b", subnet=1)


@pytest.mark.parametrize("kind", ZONED)
def test_local_zone_takes_all_traffic_while_healthy(kind: type[ZoneAwarePicker]) -> None:
    local, remote = _zones()
    picked = count_picks(kind(local_zone="eu-1a", rng=random.Random(1)), EndpointSet(local + remote), 2000)
    assert set(picked) == {e.key for e in local}


@pytest.mark.parametrize("kind", ZONED)
def test_local_zone_fails_over_gradually_then_completely(kind: type[ZoneAwarePicker]) -> None:
    local, remote = _zones()
    remote_keys = {e.key for e in remote}
    picker = kind(local_zone="eu-1a", rng=random.Random(1))
    # 4 of 5 healthy: 80 % * 1.4 >= 1, the zone keeps everything.
    pool = EndpointSet(local + remote, unhealthy={local[0].key})
    assert not remote_keys & set(count_picks(picker, pool, 2000))
    # 2 of 5 healthy: the zone keeps 40 % * 1.4 = 56 %, the rest spills to the other zone.
    pool = pool.with_unhealthy({e.key for e in local[:3]})
    picked = count_picks(picker, pool, 10_000)
    spilled = sum(picked[key] for key in remote_keys) / 10_000
    assert spilled == pytest.approx(0.44, abs=0.02)
    assert not {e.key for e in local[:3]} & set(picked)
    # None healthy: all traffic goes to the other zone (5 of 10 healthy overall: no panic).
    pool = pool.with_unhealthy({e.key for e in local})
    assert set(count_picks(picker, pool, 2000)) == remote_keys


def test_strict_locality_keeps_everything_local_while_one_local_endpoint_is_healthy() -> None:
    local, remote = _zones()
    picker = RoundRobin(local_zone="eu-1a", overprovisioning_factor=None, rng=random.Random(1))
    pool = EndpointSet(local + remote, unhealthy={e.key for e in local[1:]})
    assert count_picks(picker, pool, 100) == Counter({local[0].key: 100})
    pool = pool.with_unhealthy({e.key for e in local})
    assert set(count_picks(picker, pool, 100)) == {e.key for e in remote}


def test_an_unknown_local_zone_uses_every_healthy_endpoint() -> None:
    local, remote = _zones()
    picked = count_picks(Random(local_zone="us-2", rng=random.Random(1)), EndpointSet(local + remote), 2000)
    assert len(picked) == 10


def test_panic_ignores_locality() -> None:
    local, remote = _zones()
    pool = EndpointSet(local + remote, unhealthy={e.key for e in local + remote[:1]})  # 40 % healthy
    picked = count_picks(Random(local_zone="eu-1a", rng=random.Random(1)), pool, 3000)
    assert len(picked) == 10


# -- slow start -----------------------------------------------------------------------------------------------


def test_slow_start_factor_follows_envoys_formula() -> None:
    ramp = SlowStart(window=60.0)
    assert ramp.factor(0.0) == ramp.factor(6.0) == pytest.approx(0.1)  # the 10 % floor
    assert ramp.factor(30.0) == pytest.approx(0.5)
    assert ramp.factor(59.0) == pytest.approx(59 / 60)
    assert ramp.factor(60.0) == ramp.factor(1e9) == 1.0
    aggressive = SlowStart(window=100.0, aggression=2.0, min_weight_percent=1)
    assert aggressive.factor(25.0) == pytest.approx(0.5)  # (25 / 100) ** (1 / 2)
    assert SlowStart(window=0.5).factor(0.1) == 1.0  # the time factor counts at least 1 s


def _ramp_share(kind: type[ZoneAwarePicker], clock: FakeClock, at: float) -> float:
    """The share of picks a newcomer joining 3 established endpoints gets ``at`` seconds after joining."""
    pool = EndpointSet(endpoints(3), clock=clock)
    newcomer = Endpoint("10.9.0.1", 8080)
    pool = pool.update([*pool.endpoints, newcomer])
    clock.advance(at)
    picked = count_picks(kind(slow_start=SlowStart(window=60.0), rng=random.Random(8)), pool, 20_000)
    return picked[newcomer.key] / 20_000


@pytest.mark.parametrize("kind", [RoundRobin, Random, Weighted])
@pytest.mark.parametrize(("at", "factor"), [(0.0, 0.1), (30.0, 0.5), (45.0, 0.75), (60.0, 1.0)])
def test_slow_start_ramps_a_newcomers_share(
    kind: type[ZoneAwarePicker], at: float, factor: float, fake_clock: FakeClock
) -> None:
    expected = factor / (3 + factor)  # its effective weight against three full ones
    assert _ramp_share(kind, fake_clock, at) == pytest.approx(expected, abs=0.012)


@pytest.mark.parametrize("kind", [LeastRequest, EWMA])
def test_slow_start_lowers_a_newcomers_score_weight_in_p2c(
    kind: type[ZoneAwarePicker], fake_clock: FakeClock
) -> None:
    pool = EndpointSet(endpoints(2), clock=fake_clock)
    for stats in pool.members:
        stats.observe(0.010)
        for _ in range(3):
            stats.start()  # 3 in flight each: score (3 + 1) / 1
    newcomer = Endpoint("10.9.0.1", 8080)
    pool = pool.update([*pool.endpoints, newcomer])
    pool.stats(newcomer.key).observe(0.010)
    picker = kind(slow_start=SlowStart(window=60.0), choice_count=3, rng=random.Random(1))
    # Idle, but at 10 % weight its score (0 + 1) / 0.1 = 10 loses to (3 + 1) / 1 = 4.
    assert count_picks(picker, pool, 50)[newcomer.key] == 0
    fake_clock.advance(60.0)
    for stats in pool.members[:2]:
        stats.observe(0.010)
    assert count_picks(picker, pool, 50)[newcomer.key] == 50  # full weight: idle wins


def test_first_snapshot_endpoints_are_not_in_slow_start(fake_clock: FakeClock) -> None:
    pool = EndpointSet(endpoints(4), clock=fake_clock)
    picked = count_picks(Random(slow_start=SlowStart(window=60.0), rng=random.Random(2)), pool, 8000)
    assert all(abs(count - 2000) < 150 for count in picked.values())


# -- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Random(healthy_panic_threshold=101), "Random.healthy_panic_threshold"),
        (lambda: RoundRobin(healthy_panic_threshold=-1), "RoundRobin.healthy_panic_threshold"),
        (lambda: RingHash(healthy_panic_threshold="50"), "RingHash.healthy_panic_threshold"),
        (lambda: Random(rng=3), "Random.rng"),
        (lambda: EWMA(local_zone=""), "EWMA.local_zone"),
        (lambda: Weighted(overprovisioning_factor=0), "Weighted.overprovisioning_factor"),
        (lambda: LeastRequest(overprovisioning_factor=float("inf")), "LeastRequest.overprovisioning_factor"),
        (lambda: LeastRequest(slow_start=60), "LeastRequest.slow_start"),
        (lambda: LeastRequest(choice_count=1), "LeastRequest.choice_count"),
        (lambda: EWMA(choice_count=2.0), "EWMA.choice_count"),
        (lambda: SlowStart(window=0), "SlowStart.window"),
        (lambda: SlowStart(window=10, aggression=0), "SlowStart.aggression"),
        (lambda: SlowStart(window=10, min_weight_percent=0), "SlowStart.min_weight_percent"),
        (lambda: SlowStart(window=10, min_weight_percent=101), "SlowStart.min_weight_percent"),
        (lambda: RingHash(minimum_ring_size=0), "RingHash.minimum_ring_size"),
        (lambda: RingHash(maximum_ring_size=2**24), "RingHash.maximum_ring_size"),
        (lambda: RingHash(minimum_ring_size=2048, maximum_ring_size=1024), "RingHash.maximum_ring_size"),
        (lambda: RingHash(hash_balance_factor=99), "RingHash.hash_balance_factor"),
        (lambda: Maglev(table_size=65536), "Maglev.table_size"),
        (lambda: Maglev(table_size=2), "Maglev.table_size"),
        (lambda: Maglev(hash_balance_factor=True), "Maglev.hash_balance_factor"),
    ],
)
def test_invalid_configuration_names_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()  # type: ignore[operator]
    assert raised.value.field == field


def test_pickers_are_keyword_only_and_frozen() -> None:
    picker = EWMA()
    with pytest.raises(TypeError):
        EWMA(50.0)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        picker.choice_count = 3  # type: ignore[misc]
