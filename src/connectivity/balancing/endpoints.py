"""Endpoint sets: immutable snapshots of what a picker chooses from.

Theory of operation: an :class:`EndpointSet` is built in O(n) whenever something that changes the choice
changes: discovery (:meth:`~EndpointSet.update`) or health (:meth:`~EndpointSet.with_unhealthy`, e.g. from an
outlier detector's eject and return events). Building precomputes what a pick needs, so a pick does no O(n) work:
the members, the healthy members, the healthy members of each zone and each zone's size. Derived snapshots
share the live :class:`~connectivity.balancing.EndpointStats` of the endpoints they keep (in-flight counts,
latency estimates, slow-start clocks), so a transport swaps its current snapshot atomically and in-flight
requests finish against the same counters.

A snapshot's membership, health and zone lists never change: pickers may cache what they derive from its
candidate lists (a hash ring, a Maglev table) by identity. (An endpoint that discovery re-announces with a new
weight or metadata under the same key keeps its stats object, which every snapshot shares, so older snapshots
see its latest attributes too.) ``None`` zones form a zone of their own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator

from connectivity.balancing.stats import DEFAULT_DECAY, DEFAULT_PENALTY, EndpointStats, _Lineage
from connectivity.discovery.endpoint import Endpoint
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["EndpointSet"]


class EndpointSet:
    """An immutable snapshot of the endpoints to pick from, their health and their live stats.

    Args:
        endpoints: The endpoints. A key seen twice keeps its first endpoint (discovery may repeat one).
        unhealthy: Keys of endpoints not to pick while enough others are healthy (see the pickers' panic
            threshold). Keys that are not members are ignored.
        clock: Time source for latency samples and slow start (inject
            :class:`~connectivity.testing.FakeClock` in tests).
        decay: Peak-EWMA decay time in seconds (see :mod:`connectivity.balancing.stats`).
        penalty: Latency in seconds assumed for an endpoint with a request in flight and no sample yet.

    The endpoints of this first snapshot are taken as established (no slow start); endpoints that join through
    :meth:`update` start their slow start then.

    Attributes:
        members: Every member's stats, in discovery order.
        healthy: The healthy members' stats, in discovery order.
        clock: The time source shared by the lineage.

    Raises:
        ConfigError: ``decay`` or ``penalty`` is invalid.
        TypeError: An item of ``endpoints`` is not an :class:`~connectivity.discovery.Endpoint`.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_by_key",
        "_lineage",
        "_outside",
        "_unhealthy",
        "_zone_healthy",
        "_zone_size",
        "clock",
        "healthy",
        "members",
    )

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        *,
        unhealthy: Collection[str] = (),
        clock: Clock = SYSTEM_CLOCK,
        decay: float = DEFAULT_DECAY,
        penalty: float = DEFAULT_PENALTY,
    ) -> None:
        self._build(_Lineage(clock, decay, penalty), endpoints, unhealthy, {}, -math.inf)

    def _build(
        self,
        lineage: _Lineage,
        endpoints: Iterable[Endpoint],
        unhealthy: Collection[str],
        previous: dict[str, EndpointStats],
        joined_at: float,
    ) -> None:
        self._lineage = lineage
        self.clock: Clock = lineage.clock  # an attribute, not a property: pickers read it on every pick
        by_key: dict[str, EndpointStats] = {}
        for endpoint in endpoints:
            if not isinstance(endpoint, Endpoint):
                raise TypeError(f"EndpointSet takes Endpoint objects, got {endpoint!r}")
            key = endpoint.key
            if key in by_key:
                continue
            stats = previous.get(key)
            if stats is None:
                stats = EndpointStats(endpoint, lineage, joined_at)
            elif stats.endpoint != endpoint:
                stats.endpoint = endpoint  # a new weight, zone or metadata; the load history stays
            by_key[key] = stats
        self._by_key = by_key
        self._unhealthy = frozenset(key for key in unhealthy if key in by_key)
        members = tuple(by_key.values())
        bad = self._unhealthy
        healthy = tuple(stats for stats in members if stats.key not in bad) if bad else members
        self.members = members
        self.healthy = healthy
        zone_size: dict[str | None, int] = {}
        zone_healthy: dict[str | None, list[EndpointStats]] = {}
        for stats in members:
            zone = stats.endpoint.zone
            zone_size[zone] = zone_size.get(zone, 0) + 1
        for stats in healthy:
            zone_healthy.setdefault(stats.endpoint.zone, []).append(stats)
        self._zone_size = zone_size
        self._zone_healthy = {zone: tuple(found) for zone, found in zone_healthy.items()}
        self._outside: dict[str | None, tuple[EndpointStats, ...]] = {}

    def _derive(self, endpoints: Iterable[Endpoint], unhealthy: Collection[str]) -> EndpointSet:
        derived = EndpointSet.__new__(EndpointSet)
        derived._build(self._lineage, endpoints, unhealthy, self._by_key, self._lineage.now())
        return derived

    # -- new snapshots ------------------------------------------------------------------------------------------

    def update(self, endpoints: Iterable[Endpoint]) -> EndpointSet:
        """A snapshot with these endpoints: members that stay keep their stats and health, new ones start slow
        start now, members that are gone are dropped (their in-flight requests still finish on their stats)."""
        return self._derive(endpoints, self._unhealthy)

    def with_unhealthy(self, keys: Collection[str]) -> EndpointSet:
        """A snapshot of the same members in which exactly ``keys`` are unhealthy (e.g. ``detector.ejected()``)."""
        return self._derive((stats.endpoint for stats in self.members), keys)

    # -- reading ------------------------------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every member endpoint, in discovery order."""
        return tuple(stats.endpoint for stats in self.members)

    @property
    def unhealthy(self) -> frozenset[str]:
        """Keys of the members that are unhealthy."""
        return self._unhealthy

    @property
    def in_flight(self) -> int:
        """Requests in flight over the whole lineage (members that left included, until they finish)."""
        return self._lineage.in_flight

    @property
    def healthy_percent(self) -> float:
        """``100 * healthy / members`` (100 for an empty set), the figure the panic threshold is compared with."""
        return 100.0 * len(self.healthy) / len(self.members) if self.members else 100.0

    def stats(self, key: str) -> EndpointStats:
        """The live stats of member ``key`` (``endpoint.key``).

        Raises:
            KeyError: ``key`` is not a member of this snapshot.
        """
        return self._by_key[key]

    def get(self, key: str) -> EndpointStats | None:
        """The live stats of member ``key``, or ``None``."""
        return self._by_key.get(key)

    def is_healthy(self, key: str) -> bool:
        """Whether ``key`` is a healthy member."""
        return key in self._by_key and key not in self._unhealthy

    def zone_size(self, zone: str | None) -> int:
        """How many members (healthy or not) are in ``zone``."""
        return self._zone_size.get(zone, 0)

    def healthy_in(self, zone: str | None) -> tuple[EndpointStats, ...]:
        """The healthy members of ``zone`` (O(1): precomputed)."""
        return self._zone_healthy.get(zone, ())

    def healthy_outside(self, zone: str | None) -> tuple[EndpointStats, ...]:
        """The healthy members of every other zone (O(n) the first time per zone and snapshot, then cached)."""
        found = self._outside.get(zone)
        if found is None:
            found = self._outside[zone] = tuple(s for s in self.healthy if s.endpoint.zone != zone)
        return found

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Endpoint]:
        return (stats.endpoint for stats in self.members)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, Endpoint):
            key = key.key
        return key in self._by_key

    def status(self) -> dict[str, object]:
        """What a status page shows: the members, their health and their load."""
        return {
            "members": len(self.members),
            "healthy": len(self.healthy),
            "in_flight": self.in_flight,
            "endpoints": [
                dict(stats.status(), healthy=stats.key not in self._unhealthy) for stats in self.members
            ],
        }

    def __repr__(self) -> str:
        return f"EndpointSet(members={len(self.members)}, healthy={len(self.healthy)})"
