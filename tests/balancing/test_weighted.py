"""Smooth weighted round robin: nginx's sequence, exact proportions, exclusion, churn."""

from __future__ import annotations

import random
from collections import Counter

from connectivity.balancing import EndpointSet, Weighted
from connectivity.discovery import Endpoint

from .conftest import count_picks


def _weighted(*weights: float) -> EndpointSet:
    return EndpointSet(Endpoint(f"10.0.0.{i + 1}", 80, weight) for i, weight in enumerate(weights))


def test_nginx_sequence_for_weights_5_1_1() -> None:
    pool = _weighted(5, 1, 1)
    a, b, c = (e.key for e in pool.endpoints)
    picker = Weighted(rng=random.Random(1))
    assert [picker.pick(pool).key for _ in range(14)] == [a, a, b, a, c, a, a] * 2  # type: ignore[union-attr]


def test_every_cycle_gives_each_endpoint_exactly_its_weight() -> None:
    pool = _weighted(1, 2, 3, 4)
    picker = Weighted()
    for _ in range(5):
        cycle = Counter(picker.pick(pool).key for _ in range(10))  # type: ignore[union-attr]
        assert [cycle[e.key] for e in pool.endpoints] == [1, 2, 3, 4]


def test_fractional_weights() -> None:
    picked = count_picks(Weighted(), _weighted(0.5, 1.5), 4000)
    assert sorted(picked.values()) == [1000, 3000]


def test_excluded_endpoints_sit_out_the_pick() -> None:
    pool = _weighted(5, 1, 1)
    a = pool.endpoints[0].key
    picker = Weighted()
    assert all(picker.pick(pool, exclude={a}).key != a for _ in range(20))  # type: ignore[union-attr]


def test_churn_forgets_departed_endpoints() -> None:
    pool = _weighted(1, 1, 1, 1)
    picker = Weighted()
    count_picks(picker, pool, 10)
    smaller = pool.update(pool.endpoints[:2])
    picked = count_picks(picker, smaller, 10)
    assert sorted(picked.values()) == [5, 5]
    assert set(picker._state.current) == {e.key for e in smaller.endpoints}
