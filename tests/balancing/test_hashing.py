"""Ring hash and Maglev: stickiness, minimal disruption, weights, bounded load, exclude."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from connectivity.balancing import EndpointSet, Maglev, RingHash
from connectivity.balancing._hashing import hash64, request_hash
from connectivity.balancing.maglev import build_table
from connectivity.discovery import Endpoint

from .conftest import count_picks, endpoints

KEYS = [f"user-{i}" for i in range(20_000)]


def _owners(picker: RingHash | Maglev, pool: EndpointSet) -> dict[str, str]:
    return {key: picker.pick(pool, key=key).key for key in KEYS}  # type: ignore[union-attr]


def test_hashes_are_stable_across_processes() -> None:
    # Pinned values: the ring must map a key to the same endpoint in every process and release.
    assert hash64(b"user-1") == 0x88E1EA21865AAC9A
    assert hash64(b"10.0.0.1:8080", b"maglev-offset") == 0x78E66AF7D1C0515D
    assert request_hash("user-1", random.random) == hash64(b"user-1")
    assert request_hash(b"user-1", random.random) == hash64(b"user-1")
    assert 0 <= request_hash(None, random.Random(1).random) < 2**64


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_the_same_key_always_goes_to_the_same_endpoint(kind: type[RingHash]) -> None:
    pool = EndpointSet(endpoints(10))
    first, second = kind(rng=random.Random(1)), kind(rng=random.Random(99))
    assert _owners(first, pool) == _owners(second, pool)  # another client, another rng: the same mapping


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_keys_spread_over_all_endpoints(kind: type[RingHash]) -> None:
    shares = Counter(_owners(kind(), EndpointSet(endpoints(10))).values())
    assert len(shares) == 10
    low, high = (0.7, 1.3) if kind is RingHash else (0.9, 1.1)  # Maglev balances to a fraction of a percent
    assert all(low * 2000 < count < high * 2000 for count in shares.values())


def test_ring_removal_moves_only_the_removed_endpoints_keys() -> None:
    members = endpoints(10)
    pool = EndpointSet(members)
    picker = RingHash()
    before = _owners(picker, pool)
    stayed = []
    for gone in members:
        after = _owners(picker, pool.update([e for e in members if e != gone]))
        moved = [key for key in KEYS if after[key] != before[key]]
        assert all(before[key] == gone.key for key in moved)  # no key moves between surviving endpoints
        assert len(moved) == sum(owner == gone.key for owner in before.values())
        stayed.append(1 - len(moved) / len(KEYS))
    # Each removal keeps the keys of the other nine; over the ten removals exactly 90 % stay on average.
    assert sum(stayed) / 10 == pytest.approx(0.90, abs=1e-9)
    assert min(stayed) >= 0.85


def test_ring_addition_takes_keys_only_for_the_newcomer() -> None:
    members = endpoints(10)
    picker = RingHash()
    before = _owners(picker, EndpointSet(members))
    newcomer = Endpoint("10.9.0.1", 8080)
    after = _owners(picker, EndpointSet([*members, newcomer]))
    moved = [key for key in KEYS if after[key] != before[key]]
    assert all(after[key] == newcomer.key for key in moved)
    assert 0.05 < len(moved) / len(KEYS) < 0.14


def test_maglev_removal_keeps_nearly_all_other_keys() -> None:
    members = endpoints(10)
    pool = EndpointSet(members)
    picker = Maglev()
    before = _owners(picker, pool)
    for gone in members[:3]:
        after = _owners(picker, pool.update([e for e in members if e != gone]))
        moved = [key for key in KEYS if after[key] != before[key]]
        collateral = [key for key in moved if before[key] != gone.key]
        assert len(collateral) / len(KEYS) < 0.01  # Maglev's small extra disruption
        assert 1 - len(moved) / len(KEYS) >= 0.87


def test_health_changes_move_only_the_keys_of_the_ejected_endpoint() -> None:
    members = endpoints(10)
    pool = EndpointSet(members)
    picker = RingHash()
    before = _owners(picker, pool)
    after = _owners(picker, pool.with_unhealthy({members[3].key}))
    assert all(before[key] == members[3].key for key in KEYS if after[key] != before[key])
    assert _owners(picker, pool.with_unhealthy(())) == before  # back: the same ring again


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_weights_scale_the_shares(kind: type[RingHash]) -> None:
    members = [*endpoints(2), *endpoints(1, subnet=1, weight=2)]
    shares = Counter(
        _owners(kind(minimum_ring_size=8192) if kind is RingHash else kind(), EndpointSet(members)).values()
    )
    heavy = shares[members[2].key] / len(KEYS)
    assert heavy == pytest.approx(0.5, abs=0.04)


def test_ring_size_follows_minimum_ring_size() -> None:
    assert RingHash().ring_size(EndpointSet(endpoints(10))) == 1280  # 128 points each, a power of two
    assert RingHash().ring_size(EndpointSet(endpoints(9))) == 9 * 128
    assert RingHash(minimum_ring_size=64).ring_size(EndpointSet(endpoints(10))) == 80
    assert RingHash(minimum_ring_size=1000, maximum_ring_size=1000).ring_size(EndpointSet(endpoints(10))) == 1000
    assert RingHash().ring_size(EndpointSet()) == 0


def test_the_ring_is_built_once_per_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    picker = RingHash()
    built: list[int] = []
    original = RingHash._build

    def counting(self: RingHash, candidates: tuple[object, ...]) -> object:
        built.append(len(candidates))
        return original(self, candidates)  # type: ignore[arg-type]

    monkeypatch.setattr(RingHash, "_build", counting)
    pool = EndpointSet(endpoints(10))
    for key in KEYS[:500]:
        picker.pick(pool, key=key)
    assert built == [10]
    picker.pick(pool.with_unhealthy({pool.endpoints[0].key}), key="x")
    picker.pick(pool, key="y")  # the two most recent candidate lists stay cached
    assert built == [10, 9]


def test_maglev_table_is_full_and_balanced() -> None:
    pool = EndpointSet(endpoints(7))
    table = build_table(pool.members, 65537)
    assert len(table) == 65537
    assert all(slot is not None for slot in table)
    counts = Counter(stats.key for stats in table)
    assert max(counts.values()) - min(counts.values()) <= 1  # equal weights: equal slots


def test_maglev_small_tables_work() -> None:
    picker = Maglev(table_size=251)
    assert len(count_picks(picker, EndpointSet(endpoints(5)), 2000)) == 5


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_no_key_picks_a_random_point(kind: type[RingHash]) -> None:
    picked = count_picks(kind(rng=random.Random(3)), EndpointSet(endpoints(5)), 5000)
    assert len(picked) == 5


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_exclude_gives_a_key_a_consistent_second_choice(kind: type[RingHash]) -> None:
    pool = EndpointSet(endpoints(10))
    picker = kind()
    for key in KEYS[:300]:
        first = picker.pick(pool, key=key)
        second = picker.pick(pool, key=key, exclude={first.key})  # type: ignore[union-attr]
        assert second is not None
        assert second != first
        assert picker.pick(pool, key=key, exclude={first.key}) == second  # the same retry target every time
    everyone = {e.key for e in pool.endpoints}
    assert picker.pick(pool, key="k", exclude=everyone) is not None  # all excluded: still an answer


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_bounded_load_caps_a_hot_key(kind: type[RingHash]) -> None:
    pool = EndpointSet(endpoints(4))
    picker = kind(hash_balance_factor=125)
    for _ in range(40):  # one hot key, requests that stay in flight
        picker.pick_stats(pool, key="hot").start()  # type: ignore[union-attr]
    loads = sorted(stats.in_flight for stats in pool.members)
    # capacity = ceil(1.25 * (m + 1) / 4): no endpoint ever exceeds ceil(1.25 * 40 / 4) = 13
    assert loads[-1] <= 13
    assert sum(loads) == 40
    unbounded, plain = EndpointSet(endpoints(4)), kind()
    for _ in range(40):
        plain.pick_stats(unbounded, key="hot").start()  # type: ignore[union-attr]
    assert max(stats.in_flight for stats in unbounded.members) == 40


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_bounded_load_keeps_keys_home_when_loads_are_even(kind: type[RingHash]) -> None:
    pool = EndpointSet(endpoints(10))
    assert _owners(kind(hash_balance_factor=150), pool) == _owners(kind(), pool)
