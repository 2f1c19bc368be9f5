"""Passive outlier detection: eject endpoints that fail unlike the others, return them after a while.

Theory of operation (Envoy's detector, defaults and rules, on an injected clock). :meth:`OutlierDetector.record`
takes each call's outcome per endpoint key: an HTTP status, or a local failure mapped as Envoy maps it (connect
failure or reset: 503; timeout: 504; cancellation: nothing). Detectors, with Envoy's enforcement defaults:
``consecutive_5xx`` (5 in a row, gateway errors included; 100 %), ``consecutive_gateway_failure`` (5 of
502/503/504 in a row; 0 %: only counted), and at each sweep over the calls since the last one, ``success_rate``
(below ``mean - 1.9 * stdev`` among the >= 5 hosts with >= 100 calls; 100 %) and ``failure_percentage`` (>= 85 %
failed among the >= 5 hosts with >= 50 calls; 0 %).

The cap is Envoy's exact rule: with ``e`` of ``n`` hosts ejected, eject if ``100 * (e + 1) / n <=
max_ejection_percent``, or, with ``always_eject_one_host``, if ``e == 0``. So with the default 10 % **a set of
fewer than 10 endpoints sees no ejection** unless ``always_eject_one_host=True`` or a higher percentage is set
(old Envoy documentation said "at least one host regardless"; current Envoy made that an opt-in).

An ejection lasts ``min(base_ejection_time * k, max_ejection_time)`` (+ jitter), ``k`` being Envoy's backoff: +1
per ejection (until the cap), -1 per sweep spent in service an ``interval`` or more after the last return; so
30, 60, 90 ... 300 s for a host that keeps failing. The host returns exactly when its ejection ends (Envoy: at
the next sweep), its consecutive counters cleared. Sweeps run lazily, in order, from the first call that finds
one due, or from :meth:`OutlierDetector.sweep`. Listeners get an :class:`OutlierEvent` per ejection and return;
one that raises is logged and ignored.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative, finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.retry import CONNECT_FAILURE, PER_TRY_TIMEOUT, READ_TIMEOUT, RESET

__all__ = [
    "CANCELLED",
    "CONSECUTIVE_5XX",
    "CONSECUTIVE_GATEWAY_FAILURE",
    "EJECT",
    "FAILURE_PERCENTAGE",
    "LOCAL_ORIGIN_STATUS",
    "RETURN",
    "SUCCESS_RATE",
    "OutlierDetector",
    "OutlierEvent",
    "OutlierListener",
]

CONSECUTIVE_5XX: Final = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE: Final = "consecutive_gateway_failure"
SUCCESS_RATE: Final = "success_rate"
FAILURE_PERCENTAGE: Final = "failure_percentage"
EJECT: Final = "eject"
RETURN: Final = "return"
CANCELLED: Final = "cancelled"
"""The outcome of a call the caller gave up on: never counted (cancellation is not a failure)."""

LOCAL_ORIGIN_STATUS: Final = {CONNECT_FAILURE: 503, RESET: 503, READ_TIMEOUT: 504, PER_TRY_TIMEOUT: 504}
"""How a local failure counts, as Envoy maps local-origin errors when they are not split from HTTP statuses."""

_GATEWAY = frozenset({502, 503, 504})
_DETECTORS = (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE, SUCCESS_RATE, FAILURE_PERCENTAGE)
_COUNTS = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)
_PERCENTS = (
    "max_ejection_percent",
    "failure_percentage_threshold",
    *(f"enforcing_{kind}" for kind in _DETECTORS),
)
_log = logging.getLogger("connectivity.outlier")


@dataclass(frozen=True, slots=True)
class OutlierEvent:
    """An ejection or a return (given to listeners).

    Attributes:
        detector: The detector's name.
        key: The endpoint's key.
        action: :data:`EJECT` or :data:`RETURN`.
        reason: Ejection: the detector (:data:`CONSECUTIVE_5XX`, ...). Return: ``"ejection time elapsed"``,
            ``"returned by hand"`` or ``"removed"``.
        ejections: How many times the endpoint has been ejected so far.
        duration: Seconds the ejection lasts (ejection) or lasted (return).
        at: The clock reading of the event.
        detail: Why, for people (e.g. the success rate and the threshold).

    .. versionadded:: 0.1
    """

    detector: str
    key: str
    action: str
    reason: str
    ejections: int
    duration: float
    at: float
    detail: str = ""


OutlierListener = Callable[[OutlierEvent], None]


def _call_listener(listener: OutlierListener, event: OutlierEvent) -> None:
    try:
        listener(event)
    except Exception:  # a listener can never break a call
        _log.exception("outlier detector listener %r failed", listener)


class _Host:
    """One endpoint's counters and ejection state."""

    __slots__ = (
        "backoff",
        "consecutive_5xx",
        "consecutive_gateway",
        "ejected_at",
        "ejected_until",
        "ejections",
        "returned_at",
        "success_rate",
        "successes",
        "total",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.successes = 0  # in the current interval
        self.total = 0
        self.ejected_until: float | None = None
        self.ejected_at = 0.0
        self.returned_at: float | None = None
        self.ejections = 0
        self.backoff = 0  # Envoy's ejectTimeBackoff
        self.success_rate: float | None = None  # as of the last sweep (for status)


class _State:
    __slots__ = (
        "active",
        "counters",
        "due",
        "hosts",
        "listeners",
        "lock",
        "mean",
        "next_sweep",
        "open",
        "returns",
        "threshold",
    )

    def __init__(self, now: float, interval: float) -> None:
        self.lock = threading.Lock()
        self.hosts: dict[str, _Host] = {}
        self.open = True  # keys join on first record until update() fixes the membership
        self.active = 0  # hosts ejected now
        self.returns: list[tuple[float, str]] = []  # a heap of (ejected_until, key); stale entries are skipped
        self.next_sweep = self.due = now + interval  # due: the next sweep or return, whichever comes first
        self.listeners: tuple[OutlierListener, ...] = ()
        self.counters = {f"{kind}.{what}": 0 for kind in _DETECTORS for what in ("detected", "enforced")}
        self.counters["overflow"] = 0
        self.mean: float | None = None
        self.threshold: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OutlierDetector:
    """Envoy's passive outlier detection over a set of endpoint keys (see the module docstring).

    Args:
        consecutive_5xx: 5xx in a row (local failures included) that make an outlier.
        consecutive_gateway_failure: 502/503/504 in a row (connect failures, resets, timeouts included).
        interval: Seconds between sweeps (success-rate analysis, backoff decay).
        base_ejection_time: Seconds of a first ejection; later ones are multiples of it.
        max_ejection_time: The longest ejection (default: the larger of 300 s and ``base_ejection_time``).
        max_ejection_time_jitter: Up to this many random seconds are added to each ejection.
        max_ejection_percent: The cap on hosts ejected at once, in percent (exact rule: module docstring).
        always_eject_one_host: Allow one ejection even when ``max_ejection_percent`` would not.
        enforcing_consecutive_5xx: Percent chance that a detected outlier is ejected (0: only counted).
        enforcing_consecutive_gateway_failure: The same for gateway failures (Envoy default 0).
        enforcing_success_rate: The same for the success-rate detector.
        success_rate_minimum_hosts: Hosts with enough volume for the success-rate detector to run.
        success_rate_request_volume: Calls in an interval for a host to count in the success-rate detector.
        success_rate_stdev_factor: Outliers are below ``mean - factor * stdev`` (Envoy writes 1900 for 1.9).
        failure_percentage_threshold: The failure percentage at or above which a host is an outlier.
        enforcing_failure_percentage: The same for the failure-percentage detector (Envoy default 0).
        failure_percentage_minimum_hosts: Hosts with enough volume for the failure-percentage detector.
        failure_percentage_request_volume: Calls in an interval for a host to count there.
        name: Names the detector in events and the status app.
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).
        rng: Randomness for partial enforcement and jitter (inject a seeded :class:`random.Random` in tests).

    Raises:
        ConfigError: A field is invalid; ``field`` names it.

    .. versionadded:: 0.1
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float | None = None
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: float = 10.0
    always_eject_one_host: bool = False
    enforcing_consecutive_5xx: float = 100.0
    enforcing_consecutive_gateway_failure: float = 0.0
    enforcing_success_rate: float = 100.0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: float = 1.9
    failure_percentage_threshold: float = 85.0
    enforcing_failure_percentage: float = 0.0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    name: str = "outlier"
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)
    rng: random.Random | None = field(default=None, repr=False)
    _state: _State = field(init=False, repr=False)
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = "OutlierDetector."
        for count in _COUNTS:
            at_least_int(name + count, getattr(self, count), 1)
        for percent in _PERCENTS:
            if not 0 <= finite_non_negative(name + percent, getattr(self, percent)) <= 100:
                raise ConfigError(name + percent, getattr(self, percent), "must be a percentage from 0 to 100")
        finite_positive(name + "interval", self.interval)
        base = finite_positive(name + "base_ejection_time", self.base_ejection_time)
        if self.max_ejection_time is None:
            object.__setattr__(self, "max_ejection_time", max(300.0, base))
        if finite_positive(name + "max_ejection_time", self.max_ejection_time) < base:
            raise ConfigError(name + "max_ejection_time", self.max_ejection_time, "must be >= base_ejection_time")
        finite_non_negative(name + "max_ejection_time_jitter", self.max_ejection_time_jitter)
        finite_non_negative(name + "success_rate_stdev_factor", self.success_rate_stdev_factor)
        if not isinstance(self.always_eject_one_host, bool):
            raise ConfigError(name + "always_eject_one_host", self.always_eject_one_host, "must be a bool")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(name + "name", self.name, "must be a non-empty string")
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise ConfigError(name + "rng", self.rng, "must be a random.Random or None")
        object.__setattr__(self, "_random", self.rng if self.rng is not None else random.Random())
        object.__setattr__(self, "_state", _State(self.clock.now(), self.interval))

    # -- feeding ----------------------------------------------------------------------------------------------

    def record(self, key: str, outcome: int | str) -> None:
        """Count one call's outcome for endpoint ``key`` (``endpoint.key``).

        Args:
            key: The endpoint's key. New keys join the tracked set until :meth:`update` is first called; after
                that, keys outside the last update are ignored (a late answer from a removed endpoint).
            outcome: An HTTP status (5xx fail), a failure kind of :data:`LOCAL_ORIGIN_STATUS`, or
                :data:`CANCELLED` (not counted).

        Raises:
            ValueError: ``outcome`` is neither an HTTP status nor a known failure kind.
        """
        status = LOCAL_ORIGIN_STATUS.get(outcome) if isinstance(outcome, str) else outcome
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            if outcome == CANCELLED:
                return
            raise ValueError(
                f"outcome must be an HTTP status or one of {sorted(LOCAL_ORIGIN_STATUS)}: {outcome!r}"
            )
        state = self._state
        now = self.clock.now()
        events: list[OutlierEvent] = []
        with state.lock:
            if now >= state.due:
                self._advance(now, events)
            host = state.hosts.get(key)
            if host is None:
                if not state.open:
                    return
                host = state.hosts[key] = _Host()
            host.total += 1
            if status < 500:
                host.successes += 1
                host.consecutive_5xx = 0
                host.consecutive_gateway = 0
            else:
                if status in _GATEWAY:
                    host.consecutive_gateway += 1
                    if host.consecutive_gateway >= self.consecutive_gateway_failure and host.ejected_until is None:
                        host.consecutive_gateway = 0
                        self._eject(key, host, CONSECUTIVE_GATEWAY_FAILURE, now, events, "")
                else:
                    host.consecutive_gateway = 0
                host.consecutive_5xx += 1
                if host.consecutive_5xx >= self.consecutive_5xx and host.ejected_until is None:
                    host.consecutive_5xx = 0
                    self._eject(key, host, CONSECUTIVE_5XX, now, events, "")
        self._notify(events)

    def update(self, keys: Iterable[str]) -> None:
        """Track exactly ``keys`` from now on (call it whenever discovery changes the endpoint set).

        New keys start clean; keys that left are forgotten (an ejected one frees its place under the cap, as in
        Envoy, with a :data:`RETURN` event of reason ``"removed"``).
        """
        wanted = set(keys)
        state = self._state
        now = self.clock.now()
        events: list[OutlierEvent] = []
        with state.lock:
            state.open = False
            hosts = state.hosts
            for key in [key for key in hosts if key not in wanted]:
                host = hosts.pop(key)
                if host.ejected_until is not None:
                    state.active -= 1
                    events.append(
                        OutlierEvent(self.name, key, RETURN, "removed", host.ejections, now - host.ejected_at, now)
                    )
            for key in wanted:
                if key not in hosts:
                    hosts[key] = _Host()
        self._notify(events)

    def sweep(self) -> None:
        """Run what is due now: returns whose time has come, and interval sweeps (a timer may call this)."""
        events: list[OutlierEvent] = []
        with self._state.lock:
            self._advance(self.clock.now(), events)
        self._notify(events)

    def uneject(self, key: str) -> bool:
        """Return ``key`` to service now (e.g. an active health check passed); ``False`` if it was not ejected."""
        state = self._state
        now = self.clock.now()
        with state.lock:
            host = state.hosts.get(key)
            if host is None or host.ejected_until is None:
                return False
            event = self._return(key, host, now, "returned by hand")
        self._notify([event])
        return True

    # -- reading ----------------------------------------------------------------------------------------------

    def is_ejected(self, key: str) -> bool:
        """Whether endpoint ``key`` is ejected now."""
        state = self._state
        if self.clock.now() >= state.due:
            self.sweep()
        host = state.hosts.get(key)
        return host is not None and host.ejected_until is not None

    def ejected(self) -> frozenset[str]:
        """The keys ejected now (pass them to ``EndpointSet.with_unhealthy``)."""
        state = self._state
        if self.clock.now() >= state.due:
            self.sweep()
        with state.lock:
            return frozenset(key for key, host in state.hosts.items() if host.ejected_until is not None)

    def add_listener(self, listener: OutlierListener) -> Callable[[], None]:
        """Call ``listener(event)`` on every ejection and return; returns the remover.

        A listener that raises is logged and ignored: it can never break a call.
        """
        state = self._state
        with state.lock:
            if listener not in state.listeners:
                state.listeners = (*state.listeners, listener)

        def remove() -> None:
            with state.lock:
                state.listeners = tuple(item for item in state.listeners if item is not listener)

        return remove

    def status(self) -> dict[str, object]:
        """What the status app shows: the counters, the last success-rate statistics and every host."""
        state = self._state
        if self.clock.now() >= state.due:
            self.sweep()
        with state.lock:
            hosts = {
                key: {
                    "ejected_until": host.ejected_until,
                    "ejections": host.ejections,
                    "success_rate": host.success_rate,
                }
                for key, host in state.hosts.items()
            }
            return {
                "name": self.name,
                "ejected": state.active,
                "hosts": hosts,
                "success_rate_average": state.mean,
                "success_rate_ejection_threshold": state.threshold,
                "counters": dict(state.counters),
            }

    # -- internals (called with the lock held) ----------------------------------------------------------------

    def _advance(self, now: float, events: list[OutlierEvent]) -> None:
        """Run the returns and sweeps due by ``now``, in time order."""
        state = self._state
        interval = self.interval
        while state.next_sweep <= now:
            at = state.next_sweep
            self._returns(at, events)
            self._sweep(at, events)
            state.next_sweep = at + interval
            if state.active == 0 and state.next_sweep <= now and not self._pending():
                # Nothing ejected, no backoff to decay, no calls since: the sweeps in between would do nothing.
                state.next_sweep += math.floor((now - state.next_sweep) / interval + 1) * interval
        self._returns(now, events)
        state.due = min(state.next_sweep, state.returns[0][0]) if state.returns else state.next_sweep

    def _pending(self) -> bool:
        return any(host.backoff or host.total for host in self._state.hosts.values())

    def _returns(self, now: float, events: list[OutlierEvent]) -> None:
        state = self._state
        returns = state.returns
        while returns and returns[0][0] <= now:
            until, key = heapq.heappop(returns)
            host = state.hosts.get(key)
            if host is not None and host.ejected_until == until:
                events.append(self._return(key, host, until, "ejection time elapsed"))

    def _return(self, key: str, host: _Host, at: float, reason: str) -> OutlierEvent:
        state = self._state
        state.active -= 1
        host.ejected_until = None
        host.returned_at = at
        host.consecutive_5xx = 0
        host.consecutive_gateway = 0
        return OutlierEvent(self.name, key, RETURN, reason, host.ejections, at - host.ejected_at, at)

    def _sweep(self, at: float, events: list[OutlierEvent]) -> None:
        state = self._state
        hosts = state.hosts
        rated: list[tuple[str, _Host, float, int]] = []
        for key, host in hosts.items():
            host.success_rate = None
            if host.ejected_until is None and host.total:
                rate = 100.0 * host.successes / host.total
                host.success_rate = rate
                rated.append((key, host, rate, host.total))
            host.successes = host.total = 0
        state.mean = state.threshold = None
        if len(hosts) >= self.success_rate_minimum_hosts or len(hosts) >= self.failure_percentage_minimum_hosts:
            self._rates(rated, at, events)
        for host in hosts.values():  # Envoy's backoff decay: a sweep in service, an interval after the return
            returned = host.returned_at
            if (
                host.backoff
                and host.ejected_until is None
                and returned is not None
                and at - returned >= self.interval
            ):
                host.backoff -= 1

    def _rates(self, rated: list[tuple[str, _Host, float, int]], at: float, events: list[OutlierEvent]) -> None:
        state = self._state
        valid = [
            (key, host, rate) for key, host, rate, calls in rated if calls >= self.success_rate_request_volume
        ]
        if len(valid) >= self.success_rate_minimum_hosts:  # at least 1: never empty here
            mean = math.fsum(rate for _, _, rate in valid) / len(valid)
            stdev = math.sqrt(math.fsum((rate - mean) ** 2 for _, _, rate in valid) / len(valid))
            state.mean = mean
            state.threshold = threshold = mean - self.success_rate_stdev_factor * stdev
            for key, host, rate in valid:
                if rate < threshold and host.ejected_until is None:
                    detail = f"success rate {rate:.4g}% < {threshold:.4g}% (mean {mean:.4g}%, stdev {stdev:.4g})"
                    self._eject(key, host, SUCCESS_RATE, at, events, detail)
        limit = self.failure_percentage_threshold
        valid = [
            (key, host, rate)
            for key, host, rate, calls in rated
            if calls >= self.failure_percentage_request_volume
        ]
        if len(valid) >= self.failure_percentage_minimum_hosts:
            for key, host, rate in valid:
                if 100.0 - rate >= limit and host.ejected_until is None:
                    self._eject(
                        key, host, FAILURE_PERCENTAGE, at, events, f"failed {100.0 - rate:.4g}% >= {limit:g}%"
                    )

    def _eject(
        self, key: str, host: _Host, kind: str, now: float, events: list[OutlierEvent], detail: str
    ) -> None:
        state = self._state
        counters = state.counters
        counters[f"{kind}.detected"] += 1
        active = state.active
        allowed = 100.0 * (active + 1) / len(state.hosts) <= self.max_ejection_percent
        if not allowed and not (self.always_eject_one_host and active == 0):
            counters["overflow"] += 1
            return
        enforcing: float = getattr(self, f"enforcing_{kind}")
        if enforcing <= 0.0 or (enforcing < 100.0 and self._random.random() * 100.0 >= enforcing):
            return
        counters[f"{kind}.enforced"] += 1
        state.active += 1
        host.ejections += 1
        base = self.base_ejection_time
        longest = self.max_ejection_time if self.max_ejection_time is not None else base  # set in __post_init__
        if host.backoff * base < longest + base:
            host.backoff += 1
        duration = min(base * host.backoff, longest)
        if self.max_ejection_time_jitter:
            duration += self._random.uniform(0.0, self.max_ejection_time_jitter)
        host.ejected_at = now
        host.ejected_until = until = now + duration
        heapq.heappush(state.returns, (until, key))
        state.due = min(state.due, until)
        events.append(OutlierEvent(self.name, key, EJECT, kind, host.ejections, duration, now, detail))

    def _notify(self, events: list[OutlierEvent]) -> None:
        for event in events:
            for listener in self._state.listeners:
                _call_listener(listener, event)
