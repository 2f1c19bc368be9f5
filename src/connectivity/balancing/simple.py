"""Round robin and random: the pickers that look at nothing but the candidate list.

Both are O(1) per pick (plus a bounded number of extra steps for ``exclude`` and slow start) and ignore endpoint
weights; use :class:`~connectivity.balancing.Weighted` for weights. Round robin starts at a random position (as
Envoy does), so many clients started together do not all hit the first endpoint first. With slow start, an
endpoint inside its window is taken with probability equal to its slow-start factor and skipped otherwise,
which gives it that fraction of its normal share.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field

from connectivity.balancing.base import Candidates, ZoneAwarePicker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.stats import EndpointStats

__all__ = ["Random", "RoundRobin"]

_SLOW_START_TRIES = 8
"""Extra steps a pick may take to skip endpoints that slow start turns away (bounded: O(1))."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RoundRobin(ZoneAwarePicker):
    """Each candidate in turn. O(1) per pick.

    Takes the options of :class:`~connectivity.balancing.ZoneAwarePicker` (panic threshold, local zone,
    overprovisioning factor, slow start, rng). Weights are ignored.

    .. versionadded:: 0.1
    """

    _position: itertools.count[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ZoneAwarePicker.__post_init__(self)
        object.__setattr__(self, "_position", itertools.count(self._random.randrange(1 << 16)))

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:
        size = len(candidates)
        position = self._position
        chosen = candidates[next(position) % size]  # next() on itertools.count is atomic: no lock
        if not exclude and self.slow_start is None:
            return chosen
        now = endpoints.clock.now()
        random = self._random.random
        # Consecutive positions are distinct endpoints: len(exclude) + 1 steps pass every excluded one.
        for _ in range(min(size, len(exclude) + _SLOW_START_TRIES)):
            if (not exclude or chosen.key not in exclude) and (
                not self._warming(chosen, now) or random() < self._factor(chosen, now)
            ):
                return chosen
            chosen = candidates[next(position) % size]
        return chosen


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Random(ZoneAwarePicker):
    """A uniformly random candidate. O(1) per pick.

    Takes the options of :class:`~connectivity.balancing.ZoneAwarePicker`. Weights are ignored.

    .. versionadded:: 0.1
    """

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:
        size = len(candidates)
        random = self._random.random
        chosen = candidates[int(random() * size)]
        if not exclude and self.slow_start is None:
            return chosen
        now = endpoints.clock.now()
        for _ in range(len(exclude) + _SLOW_START_TRIES):
            if (not exclude or chosen.key not in exclude) and (
                not self._warming(chosen, now) or random() < self._factor(chosen, now)
            ):
                return chosen
            chosen = candidates[int(random() * size)]
        return chosen
