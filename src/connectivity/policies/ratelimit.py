"""Rate limits: the generic cell rate algorithm (GCRA), several limits per key, bounded keyed state.

Theory of operation: a :class:`RateLimit` allows ``rate`` requests per ``per`` seconds with a ``burst``. GCRA
(the algorithm behind redis-cell and Stripe's limiter; a token bucket computed in one number) keeps, per key and
limit, a *theoretical arrival time* ``tat``. With the emission interval ``T = per / rate`` and the tolerance
``burst * T``, a request of cost ``n`` at time ``now`` is allowed when

    max(tat, now) + n * T - now <= burst * T

and then ``tat`` becomes ``max(tat, now) + n * T``. From idle, ``burst`` requests pass at once; after that one
request every ``T`` seconds. Over any interval of ``E`` seconds at most ``burst + E / T`` requests are admitted,
which is the exactness bound the tests count. A refused request learns exactly when it would pass
(``retry_after``) and changes nothing.

A :class:`RateLimiter` evaluates all its limits for a key together (e.g. 10/s and 1,000/h) and consumes from
none of them unless every one allows: a request refused by the hourly limit does not spend the per-second one.
Keys idle for longer than the largest tolerance are equivalent to new ones, so their state is dropped whenever
the table outgrows ``max_keys``; if it is still too big, the least recently used keys go (an attacker with
unbounded keys resets their own, never anyone else's).
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from connectivity.errors import ConfigError
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["Decision", "RateLimit", "RateLimiter", "parse_limits"]

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_LIMIT = re.compile(
    r"\s*(?P<rate>\d+(?:\.\d+)?)\s*(?:/|per)\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)"
    r"(?:\s+burst\s+(?P<burst>\d+))?\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` requests per ``per`` seconds, with bursts of up to ``burst`` requests at once.

    Args:
        rate: Requests allowed per period (> 0).
        per: The period in seconds (> 0).
        burst: Requests allowed back to back from idle (default: ``rate``, rounded up; at least 1).
        name: Names the limit in ``RateLimit-Policy`` headers, events and errors (default: ``"<rate>/<per>s"``).

    .. versionadded:: 0.1
    """

    rate: float
    per: float = 1.0
    burst: int | None = None
    name: str = ""
    interval: float = field(init=False, repr=False)
    tolerance: float = field(init=False, repr=False)
    """``burst * T``: how far ahead of now a key's theoretical arrival time may run."""

    def __post_init__(self) -> None:
        for label, value in (("rate", self.rate), ("per", self.per)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"RateLimit.{label}", value, "must be a finite number > 0")
        if self.burst is None:
            object.__setattr__(self, "burst", max(1, math.ceil(self.rate)))
        burst = self.burst
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError("RateLimit.burst", burst, "must be an integer >= 1")
        if not isinstance(self.name, str):
            raise ConfigError("RateLimit.name", self.name, "must be a string")
        if not self.name:
            object.__setattr__(self, "name", f"{self.rate:g}/{self.per:g}s")
        object.__setattr__(self, "interval", self.per / self.rate)
        object.__setattr__(self, "tolerance", burst * self.interval)


class Decision(NamedTuple):
    """The answer to :meth:`RateLimiter.try_acquire`; immutable.

    A named tuple, built at the cost of a tuple on the hot path. Test ``decision.allowed``: like any non-empty
    tuple, a decision is always true.

    Attributes:
        allowed: Whether the request may go (in shadow mode: whether it would have).
        retry_after: Seconds until the same request would be allowed (0 when allowed).
        remaining: Requests still allowed right now under the tightest limit, after this one.
        reset_after: Seconds until the tightest limit is back to its full burst.
        limit: The limit that decided: the one that refused, or the tightest one.
    """

    allowed: bool
    retry_after: float
    remaining: int
    reset_after: float
    limit: RateLimit


def parse_limits(text: str) -> list[RateLimit]:
    """Parse ``"100/10s"``, ``"10/second; 1000/hour"``, ``"5 per minute burst 10"`` into limits.

    Raises:
        ConfigError: The text is not a ``;``- or ``,``-separated list of ``<rate>/<count?><unit>[ burst N]``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("rate limit", text, "must be a non-empty string such as '100/10s'")
    limits = []
    for part in re.split(r"[;,]", text):
        match = _LIMIT.fullmatch(part)
        unit = _UNITS.get(match.group("unit").lower()) if match else None
        if match is None or unit is None:
            raise ConfigError(
                "rate limit", part.strip(), "expected '<rate>/<period>' with a period such as s, 10s, minute, hour"
            )
        count = float(match.group("count") or 1)
        burst = match.group("burst")
        limits.append(
            RateLimit(
                rate=float(match.group("rate")),
                per=count * unit,
                burst=int(burst) if burst else None,
                name=part.strip(),
            )
        )
    return limits


def _prune(entries: dict[str, Any], now: float, limit: int) -> None:
    """Drop the entries that mean nothing any more (all times in the past), then the least recently used.

    Called when ``entries`` outgrows ``limit``. When live keys fill the table, it is cut to ``limit - limit // 16``
    so the scan runs once per ``limit // 16`` new keys, not on every one (a stream of new keys costs O(1) each).
    """
    for key in [
        key for key, value in entries.items() if (max(value) if isinstance(value, list) else value) <= now
    ]:
        del entries[key]
    if len(entries) > limit:
        keep = limit - limit // 16
        for key in list(itertools.islice(entries, len(entries) - keep)):
            del entries[key]


_INF = math.inf
_new_tuple = tuple.__new__


def _cost(cost: float) -> float:
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost <= 0 or not math.isfinite(cost):
        raise ValueError(f"cost must be a finite number > 0, got {cost!r}")
    return cost


class RateLimiter:
    """Keys and their GCRA state under one or more limits; thread-safe and shared by threads and tasks.

    Args:
        limits: The limits (``RateLimit`` objects, or one string for :func:`parse_limits`).
        name: Names the limiter in events, metrics and the status app.
        max_keys: Keys kept at most (the least recently used beyond that is forgotten).
        shadow: Decide and count, but always allow.
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).

    .. versionadded:: 0.1
    """

    remote: ClassVar[bool] = False
    """Decisions are this process's own (a shared limiter, e.g. in Redis, says ``True`` and is awaited)."""

    __slots__ = (
        "_holds",
        "_lock",
        "_now",
        "_only",
        "_state",
        "allowed",
        "clock",
        "limits",
        "max_keys",
        "name",
        "refused",
        "shadow",
    )

    def __init__(
        self,
        limits: Sequence[RateLimit] | RateLimit | str,
        *,
        name: str = "rate-limit",
        max_keys: int = 100_000,
        shadow: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(limits, str):
            limits = parse_limits(limits)
        elif isinstance(limits, RateLimit):
            limits = [limits]
        limits = list(limits)
        if not limits or not all(isinstance(limit, RateLimit) for limit in limits):
            raise ConfigError("RateLimiter.limits", limits, "must be one or more connectivity.RateLimit")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError("RateLimiter.max_keys", max_keys, "must be an integer >= 1")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("RateLimiter.name", name, "must be a non-empty string")
        self.limits: tuple[RateLimit, ...] = tuple(limits)
        self.name = name
        self.max_keys = max_keys
        self.shadow = bool(shadow)
        self.clock = clock
        self._now = clock.now
        # One limit: try_acquire's fast path (the common case: about 3x cheaper than the general one).
        only = self.limits[0]
        self._only = (only, only.interval, only.tolerance) if len(self.limits) == 1 and not self.shadow else None
        self._lock = threading.Lock()
        # Plain dicts, least recently used first: a key whose arrival times are all in the past is exactly a new
        # key, so idle keys are dropped whenever the dict outgrows max_keys (then the least recently used go).
        self._state: dict[str, list[float]] = {}
        # Hold-offs asked for by servers: key -> until when.
        self._holds: dict[str, float] = {}
        self.allowed = 0
        self.refused = 0

    def _decide(self, key: str, cost: float, commit: bool) -> Decision:
        now = self._now()
        with self._lock:
            if self._holds:
                held = self._holds.get(key)
                if held is not None:
                    if held > now:
                        if commit:
                            self.refused += 1
                        limit = self.limits[0]
                        return Decision(self.shadow, 0.0 if self.shadow else held - now, 0, held - now, limit)
                    del self._holds[key]
            tats = self._state.get(key)
            if tats is None:
                tats = [now] * len(self.limits)
            refusal: Decision | None = None
            tightest: Decision | None = None
            new_tats = []
            for limit, tat in zip(self.limits, tats, strict=True):
                base = tat if tat > now else now
                new_tat = base + cost * limit.interval
                ahead = new_tat - now
                tolerance = limit.tolerance
                if ahead > tolerance + 1e-9:
                    # A single request of more than a whole burst can never pass, however long it waits. (A peek
                    # asks when that much would have passed one request at a time: finite.)
                    too_big = commit and cost * limit.interval > tolerance + 1e-9
                    retry_after = math.inf if too_big else ahead - tolerance
                    if refusal is None or retry_after > refusal.retry_after:
                        refusal = Decision(False, retry_after, 0, base - now, limit)
                    new_tats.append(tat)
                    continue
                remaining = int((tolerance - ahead) / limit.interval + 1e-9)
                if tightest is None or remaining < tightest.remaining:
                    tightest = Decision(True, 0.0, remaining, ahead, limit)
                new_tats.append(new_tat)
            if refusal is not None:
                if commit:
                    self.refused += 1
                    if key in self._state:  # a refused key is in use all the same
                        self._state[key] = self._state.pop(key)
                if self.shadow:
                    return Decision(True, 0.0, 0, refusal.reset_after, refusal.limit)
                return refusal
            if commit:
                state = self._state
                state.pop(key, None)  # re-inserted last: the most recently used
                state[key] = new_tats
                if len(state) > self.max_keys:
                    _prune(state, now, self.max_keys)
                self.allowed += 1
            assert tightest is not None
            return tightest

    def try_acquire(self, key: str = "", cost: float = 1.0) -> Decision:
        """Take ``cost`` requests' worth for ``key`` from every limit, or none when any refuses.

        A cost above a limit's burst can never pass: its ``retry_after`` is infinite.

        Raises:
            ValueError: ``cost`` is not a finite number > 0.
        """
        if cost.__class__ is not float or not 0.0 < cost < _INF:
            cost = float(_cost(cost))
        only = self._only
        if only is None or self._holds:
            return self._decide(key, cost, True)
        # One limit, no hold-offs: the general path below, unrolled (a third of its cost); a refusal is left to
        # the general path, which decides afresh.
        limit, interval, tolerance = only
        now = self._now()
        lock = self._lock
        lock.acquire()
        try:
            state = self._state
            tats = state.pop(key, None)
            tat = now if tats is None else tats[0]
            new_tat = (tat if tat > now else now) + cost * interval
            ahead = new_tat - now
            if ahead <= tolerance + 1e-9:
                if tats is None:
                    tats = [new_tat]
                else:
                    tats[0] = new_tat
                state[key] = tats  # re-inserted last: the most recently used
                if len(state) > self.max_keys:
                    _prune(state, now, self.max_keys)
                self.allowed += 1
                return _new_tuple(Decision, (True, 0.0, int((tolerance - ahead) / interval + 1e-9), ahead, limit))
            if tats is not None:
                state[key] = tats
        finally:
            lock.release()
        return self._decide(key, cost, True)

    def peek(self, key: str = "", cost: float = 1.0) -> Decision:
        """What :meth:`try_acquire` would answer now, without taking anything.

        For a ``cost`` above the burst, ``retry_after`` says when that many requests would have passed one at a
        time (what a queue of waiters needs to know), not "never".
        """
        return self._decide(key, _cost(cost), False)

    def wait_time(self, key: str = "", cost: float = 1.0) -> float:
        """Seconds until ``cost`` requests for ``key`` would be allowed (0 when they would be now)."""
        return self.peek(key, cost).retry_after

    def hold_off(self, key: str, seconds: float) -> None:
        """Allow nothing for ``key`` for ``seconds`` (a server said ``Retry-After``): cooperative throttling."""
        if not math.isfinite(seconds) or seconds <= 0:
            return
        until = self.clock.now() + seconds
        with self._lock:
            holds = self._holds
            holds[key] = max(until, holds.pop(key, until))
            if len(holds) > self.max_keys:
                _prune(holds, self.clock.now(), self.max_keys)

    def keys(self) -> Iterable[str]:
        """The keys currently tracked."""
        now = self.clock.now()
        with self._lock:
            return [key for key, tats in self._state.items() if max(tats) > now]

    def status(self) -> dict[str, object]:
        """A JSON-ready snapshot for the status app."""
        keys = len(list(self.keys()))
        return {
            "name": self.name,
            "kind": "rate-limit",
            "shadow": self.shadow,
            "limits": [
                {"name": limit.name, "rate": limit.rate, "per_s": limit.per, "burst": limit.burst}
                for limit in self.limits
            ],
            "keys": keys,
            "allowed": self.allowed,
            "refused": self.refused,
        }
