"""Smooth weighted round robin, as nginx's upstream module does it.

Theory of operation: every candidate keeps a *current weight*. On each pick, every candidate's current weight
grows by its effective weight; the candidate with the largest current weight wins and gives back the total of
the effective weights. Over any run of ``sum(weights)`` picks each endpoint is chosen exactly ``weight`` times,
and the picks are spread out rather than bunched: weights 5, 1, 1 give ``a a b a c a a``, not ``a a a a a b c``.

The effective weight is the endpoint's weight times its slow-start factor (nginx instead lowers it after
failures; here outlier detection does that job by marking endpoints unhealthy). Excluded endpoints sit out the
pick, as nginx skips peers a retry already tried; if every candidate is excluded, the exclusion is ignored.

Cost: O(n) per pick (a scan of the candidates, under a lock), as in nginx. Use it for the small upstream groups
it is designed for; for large sets use :class:`~connectivity.balancing.LeastRequest` or
:class:`~connectivity.balancing.EWMA`, which honour weights in O(1).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from connectivity.balancing.base import Candidates, ZoneAwarePicker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.stats import EndpointStats

__all__ = ["Weighted"]


class _State:
    __slots__ = ("current", "lock", "members")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: dict[str, float] = {}
        self.members: object = None  # the snapshot membership the weights were pruned for


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Weighted(ZoneAwarePicker):
    """Smooth weighted round robin (nginx's ``upstream`` default). O(n) per pick.

    Takes the options of :class:`~connectivity.balancing.ZoneAwarePicker`.

    .. versionadded:: 0.1
    """

    _state: _State = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ZoneAwarePicker.__post_init__(self)
        object.__setattr__(self, "_state", _State())

    def _choose(
        self, candidates: Candidates, endpoints: EndpointSet, key: str | bytes | None, exclude: Collection[str]
    ) -> EndpointStats:
        state = self._state
        now = endpoints.clock.now()
        slow = self.slow_start is not None
        with state.lock:
            current = state.current
            if state.members is not endpoints.members:
                # A new snapshot: forget the endpoints that left, so the table does not grow with churn.
                members = endpoints.members
                state.members = members
                if len(current) > len(members):
                    keep = {stats.key for stats in members}
                    for gone in [name for name in current if name not in keep]:
                        del current[gone]
            for skip in (exclude, ()):
                total = 0.0
                best: EndpointStats | None = None
                best_weight = 0.0
                for stats in candidates:
                    name = stats.key
                    if skip and name in skip:
                        continue
                    weight = stats.endpoint.weight
                    if slow:
                        weight *= self._factor(stats, now)
                    total += weight
                    value = current[name] = current.get(name, 0.0) + weight
                    if best is None or value > best_weight:
                        best, best_weight = stats, value
                if best is not None:
                    current[best.key] = best_weight - total
                    return best
        raise AssertionError("unreachable: candidates are never empty")  # pragma: no cover
