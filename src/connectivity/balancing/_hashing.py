"""What the hash pickers share: a stable 64-bit hash, request keys, bounded-load admission and the table cache.

The hash is BLAKE2b truncated to 64 bits: stable across processes and Python versions (``hash()`` is salted per
process) and well spread. It is not Envoy's xxHash64, so the same key may map to another endpoint than an Envoy
ring over the same hosts would.

Bounded load (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2016; Envoy's
``hash_balance_factor``): with ``c = hash_balance_factor / 100``, ``n`` candidates and ``m`` requests in flight,
an endpoint accepts a new request while ``in_flight + 1 <= ceil(c * (m + 1) / n)``; an endpoint over that
capacity passes the request to the next endpoint along the ring (or table). Since the average is below the
capacity, some endpoint always accepts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection
from hashlib import blake2b
from typing import Generic, TypeVar

from connectivity.balancing.stats import EndpointStats
from connectivity.errors import ConfigError

__all__ = ["TableCache", "accepts", "balance_factor", "capacity", "hash64", "request_hash", "walk"]

T = TypeVar("T")


def balance_factor(name: str, value: object) -> float | None:
    """``hash_balance_factor`` (a percentage >= 100, or ``None``) as a multiplier of the average load."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 100 <= value < math.inf:
        raise ConfigError(name, value, "must be a percentage >= 100 (e.g. 125 for 1.25x the average), or None")
    return value / 100.0


def hash64(data: bytes, person: bytes = b"") -> int:
    """A stable 64-bit hash of ``data`` (``person`` gives an independent hash family, as a seed would)."""
    return int.from_bytes(blake2b(data, digest_size=8, person=person).digest(), "little")


def request_hash(key: str | bytes | None, random: Callable[[], float]) -> int:
    """The 64-bit hash of a request key; a random point when there is no key (Envoy does the same)."""
    if key is None:
        return int(random() * 18446744073709551616.0) & 0xFFFFFFFFFFFFFFFF
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogatepass")
    return hash64(key)


def capacity(factor: float, total_in_flight: int, candidates: int) -> int:
    """The most requests in flight one of ``candidates`` endpoints may have, this one included."""
    return math.ceil(factor * (total_in_flight + 1) / candidates)


def accepts(stats: EndpointStats, limit: int) -> bool:
    """Whether ``stats`` can take one more request under a bounded-load ``limit``."""
    return stats.in_flight + 1 <= limit


class TableCache(Generic[T]):
    """The tables a hash picker built for the last few candidate lists, keyed by the lists' identity.

    A snapshot's candidate tuples (its members, its healthy members) never change, so a table built for one
    stays right for as long as the snapshot is current; the two most recent are kept (healthy and panic).
    """

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[tuple[EndpointStats, ...], T]] = []

    def get(self, candidates: tuple[EndpointStats, ...], build: Callable[[tuple[EndpointStats, ...]], T]) -> T:
        for owner, table in self._entries:  # a copy of the list is read: no lock on the hit path
            if owner is candidates:
                return table
        with self._lock:
            for owner, table in self._entries:
                if owner is candidates:
                    return table
            table = build(candidates)
            self._entries = [(candidates, table), *self._entries[:1]]
            return table


def walk(
    owners: tuple[EndpointStats, ...] | list[EndpointStats],
    start: int,
    distinct: int,
    exclude: Collection[str],
    limit: int | None,
) -> EndpointStats:
    """The first owner from ``owners[start]`` onwards (wrapping) that is not excluded and, with a bounded-load
    ``limit``, has room; else the first one not excluded; else ``owners[start]``.

    ``distinct`` is how many different endpoints ``owners`` holds: the walk stops once it has seen them all.
    """
    size = len(owners)
    seen: set[str] = set()
    fallback: EndpointStats | None = None
    for step in range(size):
        owner = owners[(start + step) % size]
        name = owner.key
        if name in seen:
            continue
        seen.add(name)
        if not exclude or name not in exclude:
            if limit is None or owner.in_flight + 1 <= limit:
                return owner
            if fallback is None:
                fallback = owner
        if len(seen) >= distinct:
            break
    return fallback if fallback is not None else owners[start % size]
