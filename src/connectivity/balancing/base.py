"""What every picker shares: the panic threshold, locality preference with failover, slow start, ``exclude``.

Theory of operation: a pick is two steps, both O(1) on an :class:`~connectivity.balancing.EndpointSet`
snapshot (which precomputed its healthy members and zones):

1. **Route** to a candidate list.

   - *Panic* (Envoy's ``healthy_panic_threshold``, default 50 %): when fewer than that percentage of the members
     are healthy, the health flags are no longer believed (a detector that ejects most of a cluster is more
     likely wrong than the cluster) and every member is a candidate, healthy or not. ``0`` disables panic: with
     no healthy member the pick returns ``None``.
   - *Locality* (pickers that take ``local_zone``): the healthy members of the local zone are preferred. Their
     share is Envoy's priority failover: ``min(1, overprovisioning_factor / 100 * healthy / size)`` of the
     zone, so a zone at or above 1 / 1.4 = 71 % health keeps all the traffic and a zone in trouble spills the
     rest to the healthy members of other zones, gradually, down to none when it has no healthy member left.
     ``overprovisioning_factor=None`` keeps all traffic local while one local member is healthy.
     (Envoy disables locality routing in panic; so does this.)
   - Otherwise: the healthy members.

2. **Choose** among the candidates (each picker's own rule). ``exclude`` holds keys to avoid if possible (a
   retry passes the endpoints it already tried): pickers skip them with a bounded number of redraws and fall
   back to an excluded endpoint rather than fail.

*Slow start* (pickers that take ``slow_start``) scales an endpoint's effective weight by
:meth:`SlowStart.factor <connectivity.balancing.SlowStart.factor>`: P2C pickers divide its score by it,
round robin and random accept it with that probability (and move on otherwise), smooth weighted round robin
multiplies its weight. Hash pickers ignore slow start and locality, as Envoy's ring hash and Maglev do, since
either would move keys.

Pickers are frozen, validated configuration; the little mutable state some keep (a round-robin position,
smooth-WRR weights, a cached ring) is internal and thread-safe. Randomness comes from the injected
``rng`` only, so a seeded :class:`random.Random` makes every pick reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field

from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.slowstart import SlowStart
from connectivity.balancing.stats import EndpointStats
from connectivity.discovery.endpoint import Endpoint
from connectivity.errors import ConfigError

__all__ = ["Candidates", "Picker", "ZoneAwarePicker"]

Candidates = tuple[EndpointStats, ...]

_NO_KEYS: frozenset[str] = frozenset()


def percent(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(name, value, "must be a number from 0 to 100 (a percentage)")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Picker:
    """Base class of the pickers: routing by health and panic, then each picker's choice.

    Args:
        healthy_panic_threshold: Below this percentage of healthy members, pick among all members (Envoy's
            ``healthy_panic_threshold``, default 50; ``0`` disables panic).
        rng: The source of randomness (inject a seeded :class:`random.Random` for reproducible picks).

    .. versionadded:: 0.1
    """

    healthy_panic_threshold: float = 50.0
    rng: random.Random | None = field(default=None, repr=False)
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = type(self).__name__
        percent(f"{name}.healthy_panic_threshold", self.healthy_panic_threshold)
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise ConfigError(f"{name}.rng", self.rng, "must be a random.Random or None")
        object.__setattr__(self, "_random", self.rng if self.rng is not None else random.Random())

    def pick(
        self, endpoints: EndpointSet, *, key: str | bytes | None = None, exclude: Collection[str] = _NO_KEYS
    ) -> Endpoint | None:
        """Choose an endpoint for one request.

        Args:
            endpoints: The current snapshot.
            key: The request's hash key (hash pickers only; others ignore it). ``None``: a random point.
            exclude: Keys of endpoints to avoid if another candidate exists (e.g. those a retry already tried).

        Returns:
            The endpoint, or ``None`` when there is no candidate: the set is empty, or no member is healthy and
            panic is disabled. (The transport turns ``None`` into its "no healthy endpoint" error.)
        """
        chosen = self.pick_stats(endpoints, key=key, exclude=exclude)
        return None if chosen is None else chosen.endpoint

    def pick_stats(
        self, endpoints: EndpointSet, *, key: str | bytes | None = None, exclude: Collection[str] = _NO_KEYS
    ) -> EndpointStats | None:
        """Like :meth:`pick`, but returns the chosen endpoint's live stats (to ``start()``/``finish()`` it)."""
        candidates = self._route(endpoints)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return self._choose(candidates, endpoints, key, exclude)

    def _route(self, endpoints: EndpointSet) -> Candidates:
        members = endpoints.members
        healthy = endpoints.healthy
        if len(healthy) * 100.0 < self.healthy_panic_threshold * len(members):
            return members
        return healthy

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:  # pragma: no cover - every picker overrides it
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ZoneAwarePicker(Picker):
    """Base class of the pickers that also honour locality and slow start (see the module docstring).

    Args:
        local_zone: The caller's zone; its healthy members are preferred (``None``: no preference).
        overprovisioning_factor: Envoy's overprovisioning factor in percent (default 140): the local zone keeps
            ``min(1, factor / 100 * healthy fraction)`` of the traffic. ``None``: keep all traffic local while
            any local member is healthy.
        slow_start: Ramp up the weight of endpoints that joined recently (``None``: off).

    .. versionadded:: 0.1
    """

    local_zone: str | None = None
    overprovisioning_factor: float | None = 140.0
    slow_start: SlowStart | None = None

    def __post_init__(self) -> None:
        Picker.__post_init__(self)
        name = type(self).__name__
        zone = self.local_zone
        if zone is not None and (not isinstance(zone, str) or not zone.strip()):
            raise ConfigError(f"{name}.local_zone", zone, "must be a non-empty string, or None")
        factor = self.overprovisioning_factor
        if factor is not None and (
            isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf")
        ):
            raise ConfigError(f"{name}.overprovisioning_factor", factor, "must be a percentage > 0, or None")
        if self.slow_start is not None and not isinstance(self.slow_start, SlowStart):
            raise ConfigError(f"{name}.slow_start", self.slow_start, "must be a SlowStart or None")

    def _route(self, endpoints: EndpointSet) -> Candidates:
        members = endpoints.members
        healthy = endpoints.healthy
        if len(healthy) * 100.0 < self.healthy_panic_threshold * len(members):
            return members
        zone = self.local_zone
        if zone is None:
            return healthy
        local = endpoints.healthy_in(zone)
        if not local:
            return healthy  # no healthy local member: every healthy one is elsewhere
        factor = self.overprovisioning_factor
        if factor is None or len(local) == len(healthy):
            return local
        share = factor / 100.0 * len(local) / endpoints.zone_size(zone)
        if share >= 1.0 or self._random.random() < share:
            return local
        return endpoints.healthy_outside(zone)

    def _factor(self, stats: EndpointStats, now: float) -> float:
        """The slow-start factor of ``stats`` at ``now`` (1.0 after the window, or without slow start)."""
        slow_start = self.slow_start
        if slow_start is None:
            return 1.0
        age = now - stats.added_at
        return 1.0 if age >= slow_start.window else slow_start.factor(age)

    def _warming(self, stats: EndpointStats, now: float) -> bool:
        """Whether ``stats`` is still inside its slow-start window (cheap: one comparison)."""
        slow_start = self.slow_start
        return slow_start is not None and now - stats.added_at < slow_start.window
