"""Power of two choices: draw a few candidates at random, send to the least loaded of them.

Theory of operation: comparing two random candidates instead of scanning all of them costs O(1) per pick and,
as Mitzenmacher showed, almost all of the benefit of a full scan: the maximum load drops exponentially compared
with one random choice, and a stale load view does not make every client herd onto the same "best" endpoint,
which a full scan does. ``choice_count`` (Envoy's name, default 2) draws more candidates.

The candidates are distinct and drawn uniformly; the score decides:

- :class:`LeastRequest` (Envoy's least-request balancer): ``(in_flight + 1) / effective_weight``, the inverse of
  Envoy's ``weight / (active_requests + 1)`` with ``active_request_bias`` 1, so equal weights compare in-flight
  requests and a heavier endpoint is allowed proportionally more of them.
- :class:`EWMA` (Finagle's and Linkerd's P2C peak-EWMA): ``latency_estimate * (in_flight + 1) /
  effective_weight`` (see :mod:`connectivity.balancing.stats` for the estimate and the penalty of endpoints
  without samples).

``effective_weight`` is the endpoint's weight times its slow-start factor. Ties go to the first candidate drawn.
An excluded candidate is redrawn (a bounded number of times) before it is compared. Each candidate's score costs
one call of the picker's load function (``EndpointStats.cost`` for EWMA); slow start adds its factor only when on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ClassVar

from connectivity.balancing.base import Candidates, ZoneAwarePicker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.stats import EndpointStats
from connectivity.errors import ConfigError

__all__ = ["EWMA", "LeastRequest"]

_REDRAWS = 3
"""Redraws to replace an excluded candidate (bounded: a pick stays O(1))."""


def _requests(stats: EndpointStats, now: float) -> float:
    return stats.in_flight + 1


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class _PowerOfChoices(ZoneAwarePicker):
    choice_count: int = 2

    _load: ClassVar[Callable[[EndpointStats, float], float]]
    """The score before weighting: ``(stats, now) -> load`` (lower is better)."""

    def __post_init__(self) -> None:
        ZoneAwarePicker.__post_init__(self)
        count = self.choice_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ConfigError(f"{type(self).__name__}.choice_count", count, "must be an integer >= 2")

    def _score(self, stats: EndpointStats, now: float) -> float:
        """The load divided by the effective weight (the endpoint's weight times its slow-start factor)."""
        weight = stats.endpoint.weight
        if self.slow_start is not None:
            weight *= self._factor(stats, now)
        return type(self)._load(stats, now) / weight

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:
        size = len(candidates)
        now = endpoints.clock.now()
        if size <= self.choice_count:
            drawn: Candidates | list[EndpointStats] = candidates  # few candidates: compare them all
            if exclude:
                drawn = [stats for stats in candidates if stats.key not in exclude] or candidates
        else:
            drawn = self._draw(candidates, size, exclude)
        # Without slow start (the common case) a candidate costs one call: its load, divided by its weight here.
        load = None if self.slow_start is not None else type(self)._load
        best = drawn[0]
        best_score = self._score(best, now) if load is None else load(best, now) / best.endpoint.weight
        for stats in drawn[1:]:
            score = self._score(stats, now) if load is None else load(stats, now) / stats.endpoint.weight
            if score < best_score:
                best, best_score = stats, score
        return best

    def _draw(self, candidates: Candidates, size: int, exclude: Collection[str]) -> list[EndpointStats]:
        random = self._random.random
        first = int(random() * size)
        if exclude:
            for _ in range(_REDRAWS):
                if candidates[first].key not in exclude:
                    break
                first = int(random() * size)
        second = int(random() * (size - 1))  # a distinct second index, without a retry loop
        if second >= first:
            second += 1
        if exclude:
            for _ in range(_REDRAWS):
                if candidates[second].key not in exclude:
                    break
                second = int(random() * (size - 1))
                if second >= first:
                    second += 1
        drawn = [candidates[first], candidates[second]]
        if self.choice_count > 2:
            taken = {first, second}
            while len(taken) < self.choice_count:  # choice_count < size here: ends after ~choice_count draws
                index = int(random() * size)
                if index not in taken:
                    taken.add(index)
                    drawn.append(candidates[index])
        if exclude:  # an excluded candidate competes only when every drawn one is excluded
            drawn = [stats for stats in drawn if stats.key not in exclude] or drawn
        return drawn


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LeastRequest(_PowerOfChoices):
    """P2C on requests in flight (Envoy's ``LEAST_REQUEST``). O(choice_count) per pick, whatever the set size.

    Args:
        choice_count: Candidates drawn per pick (Envoy's ``choice_count``, default 2, at least 2).

    Also takes the options of :class:`~connectivity.balancing.ZoneAwarePicker`.

    .. versionadded:: 0.1
    """

    _load = _requests


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EWMA(_PowerOfChoices):
    """P2C on peak-EWMA latency * (in flight + 1) (Finagle's and Linkerd's default). O(choice_count) per pick.

    Args:
        choice_count: Candidates drawn per pick (default 2, at least 2).

    Also takes the options of :class:`~connectivity.balancing.ZoneAwarePicker`. The decay time and the penalty
    of unsampled endpoints belong to the measurement, so they are set on the
    :class:`~connectivity.balancing.EndpointSet` (``decay=``, ``penalty=``).

    .. versionadded:: 0.1
    """

    _load = EndpointStats.cost
