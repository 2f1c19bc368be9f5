"""Round robin, random, least request (P2C) and EWMA (P2C): distributions, exclude, determinism, O(1) picks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from connectivity.balancing import (
    EWMA,
    EndpointSet,
    EndpointStats,
    LeastRequest,
    Maglev,
    Picker,
    Random,
    RingHash,
    RoundRobin,
    Weighted,
)
from connectivity.testing import FakeClock

from .conftest import count_picks, endpoints, simulate

ALL = [RoundRobin, Random, LeastRequest, EWMA, Weighted, RingHash, Maglev]


@pytest.mark.parametrize("kind", ALL)
def test_empty_set_gives_none(kind: type[Picker]) -> None:
    assert kind(rng=random.Random(1)).pick(EndpointSet()) is None


@pytest.mark.parametrize("kind", ALL)
def test_a_single_candidate_is_always_chosen_even_if_excluded(kind: type[Picker]) -> None:
    pool = EndpointSet(endpoints(1))
    only = pool.endpoints[0]
    assert kind(rng=random.Random(1)).pick(pool, key="k", exclude={only.key}) == only


@pytest.mark.parametrize("kind", ALL)
def test_picks_are_reproducible_with_a_seeded_rng(kind: type[Picker]) -> None:
    pool = EndpointSet(endpoints(20))

    def run() -> list[str]:
        picker = kind(rng=random.Random(42))
        return [picker.pick(pool).key for _ in range(200)]  # type: ignore[union-attr]

    assert run() == run()


@pytest.mark.parametrize("kind", ALL)
def test_unhealthy_members_are_not_picked(kind: type[Picker]) -> None:
    members = endpoints(10)
    pool = EndpointSet(members, unhealthy={members[0].key, members[1].key})
    picked = count_picks(kind(rng=random.Random(3)), pool, 2000)
    assert members[0].key not in picked
    assert members[1].key not in picked
    assert len(picked) == 8


@pytest.mark.parametrize("kind", ALL)
def test_exclude_prefers_another_endpoint(kind: type[Picker]) -> None:
    members = endpoints(10)
    pool = EndpointSet(members)
    picker = kind(rng=random.Random(5))
    for attempt in range(300):
        first = picker.pick(pool, key=f"k{attempt}")
        assert first is not None
        retry = picker.pick(pool, key=f"k{attempt}", exclude={first.key})
        assert retry is not None
        assert retry.key != first.key


def test_pick_stats_returns_the_live_stats() -> None:
    pool = EndpointSet(endpoints(3))
    stats = LeastRequest(rng=random.Random(1)).pick_stats(pool)
    assert stats is pool.stats(stats.key)  # type: ignore[union-attr]


# -- round robin and random ---------------------------------------------------------------------------------


def test_round_robin_visits_every_candidate_in_turn() -> None:
    pool = EndpointSet(endpoints(5))
    picker = RoundRobin(rng=random.Random(9))
    keys = [picker.pick(pool).key for _ in range(15)]  # type: ignore[union-attr]
    assert Counter(keys) == Counter({e.key: 3 for e in pool.endpoints})
    assert keys[:5] == keys[5:10] == keys[10:]


def test_round_robin_starts_at_a_random_position() -> None:
    pool = EndpointSet(endpoints(10))
    firsts = {RoundRobin(rng=random.Random(seed)).pick(pool).key for seed in range(20)}  # type: ignore[union-attr]
    assert len(firsts) > 3


def test_random_is_uniform() -> None:
    pool = EndpointSet(endpoints(4))
    picked = count_picks(Random(rng=random.Random(11)), pool, 40_000)
    assert all(abs(count - 10_000) < 500 for count in picked.values())


# -- least request ------------------------------------------------------------------------------------------


def test_least_request_never_picks_the_most_loaded_endpoint() -> None:
    pool = EndpointSet(endpoints(5))
    loaded = pool.members[0]
    for _ in range(50):
        loaded.start()
    picked = count_picks(LeastRequest(rng=random.Random(2)), pool, 5000)
    # Two distinct candidates are drawn: the loaded one loses every comparison.
    assert picked[loaded.key] == 0
    assert len(picked) == 4


def test_least_request_spreads_load_under_traffic() -> None:
    pool = EndpointSet(endpoints(8))
    picker = LeastRequest(rng=random.Random(4))
    for _ in range(800):  # requests that never finish: each pick adds one in flight
        picker.pick_stats(pool).start()  # type: ignore[union-attr]
    loads = [stats.in_flight for stats in pool.members]
    assert max(loads) - min(loads) <= 3  # random picks would spread them by tens


def test_least_request_weights_allow_proportionally_more_in_flight() -> None:
    light, heavy = endpoints(1)[0], endpoints(1, subnet=1, weight=3)[0]
    pool = EndpointSet([light, heavy])
    picker = LeastRequest(rng=random.Random(4))
    for _ in range(400):
        picker.pick_stats(pool).start()  # type: ignore[union-attr]
    assert pool.stats(heavy.key).in_flight == pytest.approx(3 * pool.stats(light.key).in_flight, abs=4)


def test_choice_count_above_two_compares_more_candidates() -> None:
    pool = EndpointSet(endpoints(10))
    for index, stats in enumerate(pool.members):
        for _ in range(index):
            stats.start()  # loads 0..9
    two = count_picks(LeastRequest(rng=random.Random(6)), pool, 3000)
    five = count_picks(LeastRequest(choice_count=5, rng=random.Random(6)), pool, 3000)
    idle = pool.members[0].key
    assert five[idle] > two[idle]
    everyone = count_picks(LeastRequest(choice_count=10, rng=random.Random(6)), pool, 100)
    assert everyone == Counter({idle: 100})  # as many choices as candidates: the least loaded, always


# -- EWMA -----------------------------------------------------------------------------------------------------


def test_ewma_sends_at_most_a_tenth_of_the_traffic_to_a_slow_endpoint(fake_clock: FakeClock) -> None:
    pool = EndpointSet(endpoints(5), clock=fake_clock)
    slow = pool.members[0].key
    picked = simulate(
        EWMA(rng=random.Random(7)),
        pool,
        fake_clock,
        lambda key: 0.200 if key == slow else 0.005,
        gap=0.002,
        duration=60.0,
        warm_up=5.0,
    )
    share = picked[slow] / sum(picked.values())
    assert share <= 0.10
    # Round robin, for comparison, gives it its fifth.
    fake_clock.advance(100.0)
    baseline = simulate(
        RoundRobin(rng=random.Random(7)),
        EndpointSet(endpoints(5), clock=fake_clock),
        fake_clock,
        lambda key: 0.200 if key == slow else 0.005,
        gap=0.002,
        duration=10.0,
    )
    assert baseline[slow] / sum(baseline.values()) == pytest.approx(0.2, abs=0.01)


def test_ewma_tries_a_slow_endpoint_again_once_its_estimate_has_decayed(fake_clock: FakeClock) -> None:
    pool = EndpointSet(endpoints(2), clock=fake_clock, decay=1.0)
    slow, fast = pool.members
    slow.observe(1.0)
    fast.observe(0.010)
    picker = EWMA(rng=random.Random(1))
    assert count_picks(picker, pool, 50)[slow.key] == 0
    fake_clock.advance(5.0)  # avoided meanwhile, slow has decayed to 1.0 * e^-5 = 6.7 ms
    fast.observe(0.010)  # while fast kept answering in 10 ms
    assert count_picks(picker, pool, 1)[slow.key] == 1


def test_ewma_gives_a_new_endpoint_one_request_until_it_answers(fake_clock: FakeClock) -> None:
    pool = EndpointSet(endpoints(2), clock=fake_clock)
    old, new = pool.members
    old.observe(0.010)
    picker = EWMA(rng=random.Random(1))
    first = picker.pick_stats(pool)
    assert first is new  # unsampled and idle: cost 0
    first.start()  # type: ignore[union-attr]
    assert count_picks(picker, pool, 20) == Counter({old.key: 20})  # the penalty while its probe is out


# -- O(1) ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [LeastRequest, EWMA])
def test_p2c_scores_choice_count_candidates_whatever_the_set_size(
    kind: type[LeastRequest], monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[object] = []
    original = kind._load

    def counting(stats: EndpointStats, now: float) -> float:
        scored.append(stats)
        return original(stats, now)

    monkeypatch.setattr(kind, "_load", counting)
    picker = kind(rng=random.Random(1))
    for size in (10, 10_000):
        pool = EndpointSet(endpoints(size))
        scored.clear()
        for _ in range(100):
            picker.pick(pool)
        assert len(scored) == 200  # two candidates per pick: no scan of the set


@pytest.mark.parametrize("kind", [RoundRobin, Random, LeastRequest, EWMA])
def test_picks_do_not_copy_or_scan_the_candidate_list(kind: type[Picker]) -> None:
    """A pick indexes the snapshot's precomputed tuples; it builds no per-pick list of the set (O(1))."""
    pool = EndpointSet(endpoints(10_000), unhealthy={f"10.0.0.{i}:8080" for i in range(1, 11)})

    class Spy(tuple):  # type: ignore[type-arg]
        iterated = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Spy.iterated += 1
            return super().__iter__()

    object.__setattr__(pool, "healthy", Spy(pool.healthy))
    picker = kind(rng=random.Random(1))
    for _ in range(100):
        picker.pick(pool, exclude={"10.0.0.20:8080"})
    assert Spy.iterated == 0
