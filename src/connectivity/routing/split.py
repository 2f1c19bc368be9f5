"""Choosing a route's target: weighted traffic splits, sticky cohorts and header overrides.

Theory of operation: a split is a list of targets with weights that sum to 100 (percent, as in Istio's
``VirtualService``; ``0`` is allowed, so blue/green is ``{"blue": 0, "green": 100}``). The weights become a
cumulative table once, when the route is built; choosing a target is then a draw of a fraction ``u`` in
``[0, 1)`` and a binary search for ``u * 100`` in the table.

Where ``u`` comes from decides the behaviour:

* an :class:`Override` whose header condition holds forces its target (``x-canary: 1`` forces the canary) and no
  draw is made;
* with :class:`Sticky`, ``u`` is a stable hash (BLAKE2b-64) of a header's or cookie's value, so one user always
  lands on the same side. The same value gives the same ``u`` in every process and on every route, so a user is
  in the same cohort everywhere. Because targets take consecutive slices of ``[0, 100)`` in the order given,
  putting the canary *last* means raising its weight from 5 to 10 moves users from stable to canary only: the
  ones already on the canary stay there;
* otherwise ``u`` is the transport's random number generator's (injectable: seed it in tests).
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from connectivity.errors import ConfigError
from connectivity.routing.match import HeaderMatch

__all__ = ["Backend", "Override", "Sticky", "WeightTable", "stable_fraction"]

TOTAL_WEIGHT: Final = 100.0
"""Split weights are percentages: they must sum to this."""
_TOLERANCE: Final = 1e-6


def stable_fraction(value: str) -> float:
    """A fraction in ``[0, 1)`` that depends only on ``value``: the same in every process and every run."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0  # 2 ** 64


@dataclass(frozen=True, slots=True)
class Backend:
    """One target of a weighted split.

    Args:
        target: The target's name (a key of the routing transport's ``targets``).
        weight: Its share of the traffic, in percent (0-100).

    .. versionadded:: 0.1
    """

    target: str
    weight: float

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError("Backend.target", self.target, "must be a non-empty target name")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"Backend[{self.target!r}].weight", weight, "must be a finite number")
        if not 0 <= weight <= TOTAL_WEIGHT:
            raise ConfigError(f"Backend[{self.target!r}].weight", weight, "must be between 0 and 100 (percent)")


@dataclass(frozen=True, slots=True)
class Sticky:
    """Keep one user on one side of a split: hash a header's or a cookie's value instead of drawing at random.

    Exactly one of ``header`` and ``cookie`` is given. A request without it is split at random.

    Args:
        header: The header whose value identifies the user (``"x-user-id"``).
        cookie: The cookie whose value identifies the user (``"session"``).

    .. versionadded:: 0.1
    """

    header: str | None = None
    cookie: str | None = None

    def __post_init__(self) -> None:
        if (self.header is None) == (self.cookie is None):
            raise ConfigError("Sticky", (self.header, self.cookie), "give exactly one of header and cookie")
        for kind in ("header", "cookie"):
            value = getattr(self, kind)
            if value is not None and (not isinstance(value, str) or not value or not value.isascii()):
                raise ConfigError(f"Sticky.{kind}", value, "must be a non-empty ASCII name")
        if self.header is not None:
            object.__setattr__(self, "header", self.header.lower())

    def key(self, headers: Mapping[str, str]) -> str | None:
        """The value to hash, or ``None`` when the request does not carry it."""
        if self.header is not None:
            return headers.get(self.header) or None
        cookies = headers.get("cookie")
        if not cookies:
            return None
        for pair in cookies.split(";"):
            name, _, value = pair.strip().partition("=")
            if name == self.cookie:
                return value or None
        return None


@dataclass(frozen=True, slots=True)
class Override:
    """Force a target when a header condition holds (``x-canary: 1`` forces the canary), whatever the weights.

    Args:
        match: The header condition.
        target: The target it forces (it need not be in the split: a 0 % green side is reachable this way).

    .. versionadded:: 0.1
    """

    match: HeaderMatch
    target: str

    def __post_init__(self) -> None:
        if not isinstance(self.match, HeaderMatch):
            raise ConfigError("Override.match", self.match, "must be a HeaderMatch")
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError("Override.target", self.target, "must be a non-empty target name")

    @classmethod
    def header(cls, name: str, value: str | None = None, *, target: str) -> Override:
        """Force ``target`` when header ``name`` equals ``value`` (or, without a value, is present)."""
        match = HeaderMatch(name, present=True) if value is None else HeaderMatch(name, exact=value)
        return cls(match, target)


class WeightTable:
    """The cumulative table of a split: ``pick(u)`` maps a fraction in ``[0, 1)`` to a target.

    Raises:
        ConfigError: No backend, a target listed twice, or weights that do not sum to 100.
    """

    __slots__ = ("_bounds", "_last", "_targets", "backends")

    def __init__(self, backends: tuple[Backend, ...], *, field: str = "split") -> None:
        if not backends:
            raise ConfigError(field, backends, "needs at least one target")
        seen: set[str] = set()
        for backend in backends:
            if backend.target in seen:
                raise ConfigError(field, backend.target, "target listed twice")
            seen.add(backend.target)
        total = math.fsum(backend.weight for backend in backends)
        if abs(total - TOTAL_WEIGHT) > _TOLERANCE:
            weights = {backend.target: backend.weight for backend in backends}
            raise ConfigError(
                field, weights, f"weights are percentages and must sum to 100 (they sum to {total:g})"
            )
        bounds: list[float] = []
        running = 0.0
        for backend in backends:
            running += backend.weight
            bounds.append(running)
        self.backends = backends
        self._bounds = bounds
        self._targets = tuple(backend.target for backend in backends)
        # A fraction that rounding pushes past the last bound goes to the last target with a weight.
        self._last = next(i for i in reversed(range(len(backends))) if backends[i].weight > 0)

    @property
    def targets(self) -> tuple[str, ...]:
        """Every target named, weight 0 included."""
        return self._targets

    def pick(self, fraction: float) -> str:
        """The target owning ``fraction * 100`` in the cumulative table (a 0 % target is never picked)."""
        index = bisect_right(self._bounds, fraction * TOTAL_WEIGHT)
        return self._targets[index if index <= self._last else self._last]


def choose(
    table: WeightTable,
    headers: Mapping[str, str],
    random: Callable[[], float],
    sticky: Sticky | None,
    overrides: tuple[Override, ...],
) -> tuple[str, str]:
    """The target for one request and why (``"override"``, ``"sticky"``, ``"split"``)."""
    for override in overrides:
        if override.match.matches(headers):
            return override.target, "override"
    if sticky is not None:
        key = sticky.key(headers)
        if key is not None:
            return table.pick(stable_fraction(key)), "sticky"
    return table.pick(random()), "split"
