"""Consistent hashing on a ring (ketama; Envoy's ``RING_HASH``).

Theory of operation: each candidate is placed on a 64-bit ring at ``ceil(scale * weight)`` points,
``hash("host:port_0")``, ``hash("host:port_1")``, ...; a request goes to the first point at or after the hash
of its key, wrapping around. ``scale`` is the smallest power of two that gives the ring at least
``minimum_ring_size`` points (at most ``maximum_ring_size``): ten equal endpoints get 128 points each with the
default 1024, which spreads their shares by about 10 % (one standard deviation) around equal; a larger
``minimum_ring_size`` evens them out further.

An endpoint's points depend on its own key and weight and on ``scale`` only, so removing an endpoint moves
exactly the keys it held and no others (one of ten: about 10 %), and adding one takes keys only for itself.
Only when the total weight crosses a power of two does ``scale`` change, and with it every endpoint's point
count (once). This is where the ring departs from Envoy's, which rescales every host's point count on every
membership change (removing one of ten equal hosts there moves about 17 % of the keys, not 10 %).

The ring is built once per candidate list (O(R log R) for R points) and cached with the snapshot; a lookup is a
binary search, O(log R). ``exclude`` and bounded load walk clockwise to the next distinct endpoint, so a retry
of a key goes to the key's second choice, consistently. Health changes rebuild the ring over the new healthy
set, which moves only the keys of the endpoints that left or came back.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Collection
from dataclasses import dataclass, field

from connectivity.balancing._hashing import TableCache, balance_factor, capacity, hash64, request_hash, walk
from connectivity.balancing.base import Candidates, Picker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.stats import EndpointStats
from connectivity.errors import ConfigError

__all__ = ["RingHash"]


class _Ring:
    __slots__ = ("distinct", "hashes", "owners")

    def __init__(self, hashes: list[int], owners: tuple[EndpointStats, ...], distinct: int) -> None:
        self.hashes = hashes
        self.owners = owners
        self.distinct = distinct


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RingHash(Picker):
    """Consistent hashing on a ketama ring (Envoy ``RING_HASH``; see the module docstring).

    Args:
        minimum_ring_size: The fewest points on the ring (Envoy default 1024).
        maximum_ring_size: The most points on the ring (Envoy default 8,388,608; a ring that large takes
            seconds to build in Python: keep weights within a sane ratio of each other).
        hash_balance_factor: Bounded load, in percent of the average load (Envoy's ``hash_balance_factor``,
            e.g. 125): an endpoint above it passes the request clockwise. ``None``: unbounded.

    Also takes ``healthy_panic_threshold`` and ``rng`` (the random point for requests without a key).
    The request's ``key`` (``pick(..., key=...)``) is hashed; ``None`` picks a random point.

    .. versionadded:: 0.1
    """

    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8_388_608
    hash_balance_factor: float | None = None
    _balance: float | None = field(init=False, repr=False)
    _cache: TableCache[_Ring] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        Picker.__post_init__(self)
        for name in ("minimum_ring_size", "maximum_ring_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8_388_608:
                raise ConfigError(f"RingHash.{name}", value, "must be an integer from 1 to 8388608")
        if self.maximum_ring_size < self.minimum_ring_size:
            raise ConfigError("RingHash.maximum_ring_size", self.maximum_ring_size, "must be >= minimum_ring_size")
        object.__setattr__(
            self, "_balance", balance_factor("RingHash.hash_balance_factor", self.hash_balance_factor)
        )
        object.__setattr__(self, "_cache", TableCache())

    def _build(self, candidates: Candidates) -> _Ring:
        weights = [stats.endpoint.weight for stats in candidates]
        total = math.fsum(weights)
        scale = 2.0 ** math.ceil(math.log2(self.minimum_ring_size / total))
        if scale * total > self.maximum_ring_size:
            scale = self.maximum_ring_size / total
        points: list[tuple[int, int]] = []
        for index, (stats, weight) in enumerate(zip(candidates, weights, strict=True)):
            prefix = stats.key.encode() + b"_"
            points.extend(
                (hash64(prefix + str(point).encode()), index) for point in range(max(1, math.ceil(scale * weight)))
            )
        points.sort()
        return _Ring([point for point, _ in points], tuple(candidates[i] for _, i in points), len(candidates))

    def ring_size(self, endpoints: EndpointSet) -> int:
        """How many points the ring over ``endpoints``' current candidates has (for status pages and tests)."""
        candidates = self._route(endpoints)
        return len(self._cache.get(candidates, self._build).hashes) if candidates else 0

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:
        ring = self._cache.get(candidates, self._build)
        hashes = ring.hashes
        index = bisect_left(hashes, request_hash(key, self._random.random))
        if index == len(hashes):
            index = 0
        factor = self._balance
        if factor is None and not exclude:
            return ring.owners[index]
        limit = None if factor is None else capacity(factor, endpoints.in_flight, len(candidates))
        return walk(ring.owners, index, ring.distinct, exclude, limit)
