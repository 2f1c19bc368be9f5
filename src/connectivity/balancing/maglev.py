"""Maglev consistent hashing (Eisenbud et al., NSDI 2016; Envoy's ``MAGLEV``).

Theory of operation: a lookup table of ``table_size`` slots (a prime, Envoy's default 65537) is filled so that
every endpoint owns a share of slots proportional to its weight; a request goes to ``table[hash(key) %
table_size]``, O(1). Each endpoint has its own permutation of the slots, ``(offset + j * skip) % table_size``
with ``offset`` and ``skip`` from two independent hashes of ``"host:port"``; endpoints take turns claiming their
next free preferred slot until the table is full. Envoy's weighting: an endpoint of normalised weight ``w`` takes
a turn only in rounds where ``round * w`` has caught up with its running target, so a half-weight endpoint claims
every other round.

Compared with a ring: lookups are O(1) instead of O(log R), shares are within a fraction of a percent of the
weights, and removing one of ``n`` endpoints moves its keys plus a small extra fraction (Maglev trades perfect
minimal disruption for balance). Building costs O(M log M) table operations, about a tenth of a second in
Python for 65537 slots; it happens once per candidate list (membership or health change) and is cached with
the snapshot. ``exclude`` and bounded load probe the following slots, which belong to effectively random
endpoints.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from connectivity.balancing._hashing import TableCache, balance_factor, capacity, hash64, request_hash, walk
from connectivity.balancing.base import Candidates, Picker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.stats import EndpointStats
from connectivity.errors import ConfigError

__all__ = ["Maglev"]


def _is_prime(number: int) -> bool:
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    return all(number % divisor for divisor in range(3, math.isqrt(number) + 1, 2))


class _Table:
    __slots__ = ("distinct", "slots")

    def __init__(self, slots: list[EndpointStats], distinct: int) -> None:
        self.slots = slots
        self.distinct = distinct


def build_table(candidates: Candidates, size: int) -> list[EndpointStats]:
    """Envoy's weighted Maglev population of ``size`` slots (see the module docstring)."""
    weights = [stats.endpoint.weight for stats in candidates]
    total = math.fsum(weights)
    normalised = [weight / total for weight in weights]
    top = max(normalised)
    count = len(candidates)
    offsets = []
    skips = []
    for stats in candidates:
        name = stats.key.encode()
        offsets.append(hash64(name, b"maglev-offset") % size)
        skips.append(hash64(name, b"maglev-skip") % (size - 1) + 1)
    following = [0] * count  # each endpoint's next index in its permutation
    targets = [0.0] * count  # Envoy's target_weight: the endpoint claims a slot once round * weight reaches it
    table: list[EndpointStats | None] = [None] * size
    filled = 0
    round_ = 1
    while filled < size:
        for index in range(count):
            if round_ * normalised[index] < targets[index]:
                continue
            targets[index] += top
            offset, skip, step = offsets[index], skips[index], following[index]
            slot = (offset + step * skip) % size
            while table[slot] is not None:
                step += 1
                slot = (offset + step * skip) % size
            table[slot] = candidates[index]
            following[index] = step + 1
            filled += 1
            if filled == size:
                break
        round_ += 1
    return table  # type: ignore[return-value]  # every slot is filled


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Maglev(Picker):
    """Maglev consistent hashing (Envoy ``MAGLEV``; see the module docstring). O(1) per pick.

    Args:
        table_size: Slots in the lookup table; a prime (Envoy's default 65537). It must be well above the number
            of endpoints (Envoy recommends at least 100 times more) for shares to follow the weights.
        hash_balance_factor: Bounded load, in percent of the average load (Envoy's ``hash_balance_factor``, e.g.
            125). ``None``: unbounded.

    Also takes ``healthy_panic_threshold`` and ``rng`` (the random point for requests without a key).

    .. versionadded:: 0.1
    """

    table_size: int = 65537
    hash_balance_factor: float | None = None
    _balance: float | None = field(init=False, repr=False)
    _cache: TableCache[_Table] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        Picker.__post_init__(self)
        size = self.table_size
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not 3 <= size <= 5_000_011
            or not _is_prime(size)
        ):
            raise ConfigError("Maglev.table_size", size, "must be a prime number from 3 to 5000011")
        object.__setattr__(
            self, "_balance", balance_factor("Maglev.hash_balance_factor", self.hash_balance_factor)
        )
        object.__setattr__(self, "_cache", TableCache())

    def _build(self, candidates: Candidates) -> _Table:
        return _Table(build_table(candidates, self.table_size), len(candidates))

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:
        table = self._cache.get(candidates, self._build)
        slots = table.slots
        index = request_hash(key, self._random.random) % len(slots)
        factor = self._balance
        if factor is None and not exclude:
            return slots[index]
        limit = None if factor is None else capacity(factor, endpoints.in_flight, len(candidates))
        return walk(slots, index, table.distinct, exclude, limit)
