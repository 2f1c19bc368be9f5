"""Backoff: how long to wait before retry number *n*.

Three shapes, all capped:

* ``exponential`` with full jitter (AWS, Envoy): retry *n* (counted from 1) waits
  ``uniform(0, min(cap, base * multiplier**(n - 1)))``. Jitter spreads retries of many clients so they do not
  arrive in lock step.
* ``decorrelated`` jitter (AWS): ``min(cap, uniform(base, previous * 3))``.
* ``constant``: always ``base`` (optionally jittered by a fraction).

Delays come from an injectable :class:`random.Random`, so tests are deterministic. A tenacity wait strategy can be
adapted with :meth:`Backoff.from_tenacity`; it is called only when a retry actually happens, off the hot path.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from connectivity.errors import ConfigError
from connectivity.policies._validate import finite_non_negative, finite_positive, ratio

__all__ = ["Backoff"]

Kind = Literal["exponential", "decorrelated", "constant", "tenacity"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """A backoff schedule (immutable; safe to share).

    Prefer the constructors :meth:`exponential`, :meth:`decorrelated`, :meth:`constant` and
    :meth:`from_tenacity` to building one directly.

    Attributes:
        kind: The schedule's shape.
        base: First delay scale, seconds.
        cap: Upper bound of any delay, seconds.
        multiplier: Growth per retry for ``exponential``.
        jitter: For ``constant``: fraction of ``base`` to randomise (0 = none).
        rng: Random source; ``None`` uses the module-level generator. Pass ``random.Random(seed)`` in tests.

    .. versionadded:: 0.1
    """

    kind: Kind = "exponential"
    base: float = 0.025
    cap: float = 0.25
    multiplier: float = 2.0
    jitter: float = 0.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)
    _tenacity_wait: Callable[[Any], float] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("exponential", "decorrelated", "constant", "tenacity"):
            raise ConfigError("Backoff.kind", self.kind, "must be exponential, decorrelated, constant or tenacity")
        finite_non_negative("Backoff.base", self.base)
        finite_non_negative("Backoff.cap", self.cap)
        if self.cap < self.base:
            raise ConfigError("Backoff.cap", self.cap, f"must be >= base ({self.base})")
        if finite_positive("Backoff.multiplier", self.multiplier) < 1:
            raise ConfigError("Backoff.multiplier", self.multiplier, "must be >= 1")
        ratio("Backoff.jitter", self.jitter)
        if self.kind == "tenacity" and self._tenacity_wait is None:
            raise ConfigError("Backoff.kind", self.kind, "use Backoff.from_tenacity(wait)")

    @classmethod
    def exponential(
        cls,
        *,
        base: float = 0.025,
        cap: float = 0.25,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> Backoff:
        """Full jitter: retry *n* waits ``uniform(0, min(cap, base*multiplier**(n-1)))``."""
        return cls("exponential", base, cap, multiplier, 0.0, rng)

    @classmethod
    def decorrelated(cls, *, base: float = 0.025, cap: float = 0.25, rng: random.Random | None = None) -> Backoff:
        """Decorrelated jitter: each wait is ``min(cap, uniform(base, 3 * previous))``."""
        return cls("decorrelated", base, cap, 2.0, 0.0, rng)

    @classmethod
    def constant(cls, delay: float, *, jitter: float = 0.0, rng: random.Random | None = None) -> Backoff:
        """The same wait every time, optionally randomised by ``±jitter * delay / 2``."""
        finite_non_negative("Backoff.base", delay)
        return cls("constant", delay, delay * (1 + jitter), 2.0, jitter, rng)

    @classmethod
    def none(cls) -> Backoff:
        """Retry immediately."""
        return cls("constant", 0.0, 0.0)

    @classmethod
    def from_tenacity(cls, wait: Callable[[Any], float], *, cap: float = 60.0) -> Backoff:
        """Adapt a tenacity wait strategy (e.g. ``tenacity.wait_random_exponential(multiplier=0.1)``).

        The strategy receives a minimal ``RetryCallState`` whose ``attempt_number`` is the retry number; its
        answer is capped at ``cap``.
        """
        if not callable(wait):
            raise ConfigError("Backoff.from_tenacity.wait", wait, "must be a tenacity wait strategy")
        return cls("tenacity", 0.0, cap, 2.0, 0.0, None, wait)

    def delay(self, retry: int, previous: float = 0.0) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        Args:
            retry: 1-based retry number.
            previous: The previous delay (used by decorrelated jitter).
        """
        rand = (self.rng or random).random
        if self.kind == "exponential":
            ceiling = min(self.cap, self.base * self.multiplier ** (retry - 1))
            return rand() * ceiling
        if self.kind == "decorrelated":
            upper = max(self.base, previous * 3)
            return min(self.cap, self.base + rand() * (upper - self.base))
        if self.kind == "constant":
            if not self.jitter:
                return self.base
            spread = self.base * self.jitter
            return max(0.0, self.base - spread / 2 + rand() * spread)
        return min(self.cap, max(0.0, float(self._tenacity_call(retry))))

    def _tenacity_call(self, retry: int) -> float:
        import tenacity

        assert self._tenacity_wait is not None
        state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = retry
        return self._tenacity_wait(state)
