"""Circuit breaking: stop calling a dependency that keeps failing, probe it, and resume when it recovers.

A :class:`CircuitBreaker` is frozen configuration plus the circuits it hands out, one per scope key (the whole
client, one host, one endpoint). The state machine itself, its table of transitions, its windows and its
tickets are in :mod:`connectivity.policies.circuit`; the names are re-exported here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from connectivity.errors import ConfigError
from connectivity.policies._validate import finite_positive
from connectivity.policies.circuit import (
    BUCKETS,
    CANCELLED,
    CLOSED,
    FAILURE,
    HALF_OPEN,
    IGNORED,
    ISOLATED,
    OPEN,
    SLOW_SUCCESS,
    SUCCESS,
    TRANSITIONS,
    Circuit,
    Listener,
    Rejection,
    Transition,
)
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "BUCKETS",
    "CANCELLED",
    "CLOSED",
    "FAILURE",
    "HALF_OPEN",
    "IGNORED",
    "ISOLATED",
    "OPEN",
    "SLOW_SUCCESS",
    "SUCCESS",
    "TRANSITIONS",
    "Circuit",
    "CircuitBreaker",
    "Listener",
    "Rejection",
    "Transition",
]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "must be an integer >= 1")
    return value


def _ratio_or_none(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(name, value, "must be a number in (0, 1], or None")
    return float(value)


@dataclass(frozen=True, slots=True, eq=False)
class CircuitBreaker:
    """When to stop calling a failing dependency, and how to find out that it has recovered.

    Args:
        failure_ratio: Trip when failures / (successes + failures) over the window reaches this (``None``: off).
        minimum_calls: Outcomes the window must hold before a ratio can trip it.
        window: Seconds (``window_type="time"``) or outcomes (``"count"``) the ratios look back over.
        window_type: ``"time"`` (a sliding window of seconds) or ``"count"`` (the last ``window`` outcomes).
        consecutive_failures: Trip after this many failures in a row, whatever the window says (``None``: off).
        slow_call_threshold: A call slower than this (seconds) is slow (``None``: no slow-call condition).
        slow_call_ratio: Trip when slow calls / calls reaches this (default 1.0 when a threshold is set).
        open_for: Seconds the circuit stays open before admitting probes.
        open_for_max: With a value, each reopening without closing in between doubles ``open_for``, up to this.
        jitter: Spread each open time by up to this fraction either way (0.1: ±10 %), so replicas do not probe
            in lockstep.
        half_open_permits: Probes admitted at once while half-open; further calls are rejected at once.
        half_open_successes: Successful probes needed to close (default: ``half_open_permits``).
        failure_statuses: Response statuses that are failures (default: 500-599). 4xx are not; 429 is neither
            unless listed here.
        name: Names the breaker in errors, events, metrics and the status app.
        shadow: Decide and report, but never reject: try a configuration on live traffic first.
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).

    Defaults follow Polly / MS.Extensions.Http.Resilience (failure ratio 0.1 there, 0.5 here as in
    Resilience4j; minimum throughput 100 there, 20 here; window 30 s; break 5 s).

    .. versionadded:: 0.1
    """

    failure_ratio: float | None = 0.5
    minimum_calls: int = 20
    window: float = 30.0
    window_type: Literal["time", "count"] = "time"
    consecutive_failures: int | None = None
    slow_call_threshold: float | None = None
    slow_call_ratio: float | None = None
    open_for: float = 5.0
    open_for_max: float | None = None
    jitter: float = 0.0
    half_open_permits: int = 1
    half_open_successes: int | None = None
    failure_statuses: frozenset[int] = frozenset(range(500, 600))
    name: str = "breaker"
    shadow: bool = False
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)
    _registry: _Registry = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _ratio_or_none("CircuitBreaker.failure_ratio", self.failure_ratio)
        _positive_int("CircuitBreaker.minimum_calls", self.minimum_calls)
        if self.window_type not in ("time", "count"):
            raise ConfigError("CircuitBreaker.window_type", self.window_type, "must be 'time' or 'count'")
        if self.window_type == "count":
            window = self.window
            if isinstance(window, float) and window.is_integer():
                object.__setattr__(self, "window", int(window))
            _positive_int("CircuitBreaker.window", self.window)
            # As Resilience4j does: a window of N calls can never hold more than N outcomes.
            object.__setattr__(self, "minimum_calls", min(self.minimum_calls, int(self.window)))
        else:
            finite_positive("CircuitBreaker.window", self.window)
        if self.consecutive_failures is not None:
            _positive_int("CircuitBreaker.consecutive_failures", self.consecutive_failures)
        if self.slow_call_threshold is not None:
            finite_positive("CircuitBreaker.slow_call_threshold", self.slow_call_threshold)
            if self.slow_call_ratio is None:
                object.__setattr__(self, "slow_call_ratio", 1.0)
        _ratio_or_none("CircuitBreaker.slow_call_ratio", self.slow_call_ratio)
        if self.slow_call_ratio is not None and self.slow_call_threshold is None:
            raise ConfigError("CircuitBreaker.slow_call_ratio", self.slow_call_ratio, "needs slow_call_threshold")
        if self.failure_ratio is None and self.consecutive_failures is None and self.slow_call_threshold is None:
            raise ConfigError(
                "CircuitBreaker.failure_ratio", None, "set at least one trip condition (ratio, consecutive, slow)"
            )
        finite_positive("CircuitBreaker.open_for", self.open_for)
        if self.open_for_max is not None:
            finite_positive("CircuitBreaker.open_for_max", self.open_for_max)
            if self.open_for_max < self.open_for:
                raise ConfigError("CircuitBreaker.open_for_max", self.open_for_max, "must be >= open_for")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ConfigError("CircuitBreaker.jitter", self.jitter, "must be a number in [0, 1)")
        _positive_int("CircuitBreaker.half_open_permits", self.half_open_permits)
        if self.half_open_successes is None:
            object.__setattr__(self, "half_open_successes", self.half_open_permits)
        _positive_int("CircuitBreaker.half_open_successes", self.half_open_successes)
        try:
            statuses = frozenset(self.failure_statuses)
        except TypeError:
            raise ConfigError(
                "CircuitBreaker.failure_statuses", self.failure_statuses, "must be a collection of status codes"
            ) from None
        if any(isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599 for s in statuses):
            raise ConfigError(
                "CircuitBreaker.failure_statuses", self.failure_statuses, "must be HTTP status codes"
            )
        object.__setattr__(self, "failure_statuses", statuses)
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("CircuitBreaker.name", self.name, "must be a non-empty string")
        object.__setattr__(self, "_registry", _Registry())

    # -- circuits ---------------------------------------------------------------------------------------------

    def circuit(self, key: str = "") -> Circuit:
        """The circuit for scope ``key`` (``""``: the breaker's single circuit), created on first use."""
        circuits = self._registry.circuits
        found = circuits.get(key)
        if found is not None:
            return found
        with self._registry.lock:
            found = circuits.get(key)
            if found is None:
                found = circuits[key] = Circuit(self, f"{self.name}/{key}" if key else self.name)
            return found

    def circuits(self) -> dict[str, Circuit]:
        """Every circuit created so far, by key."""
        return dict(self._registry.circuits)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(transition)`` on every state change of every circuit; returns the remover.

        A listener that raises is logged and ignored: it can never break a call.
        """
        registry = self._registry
        with registry.lock:
            if listener not in registry.listeners:  # the same hook added twice is called once
                registry.listeners = (*registry.listeners, listener)

        def remove() -> None:
            with registry.lock:
                registry.listeners = tuple(item for item in registry.listeners if item is not listener)

        return remove

    def isolate(self, key: str | None = None) -> None:
        """Reject every call of circuit ``key`` (of every circuit, the main one included, when ``None``) until
        :meth:`reset`."""
        for circuit in self._targets(key):
            circuit.isolate()

    def reset(self, key: str | None = None) -> None:
        """Close circuit ``key`` (every circuit when ``None``) and forget its window."""
        for circuit in self._targets(key):
            circuit.reset()

    def _targets(self, key: str | None) -> list[Circuit]:
        if key is not None:
            return [self.circuit(key)]
        main = self.circuit()
        return [main, *(circuit for circuit in self._registry.circuits.values() if circuit is not main)]

    def status(self) -> dict[str, object]:
        """What the status app shows: the configuration and every circuit's state."""
        return {
            "shadow": self.shadow,
            "failure_ratio": self.failure_ratio,
            "minimum_calls": self.minimum_calls,
            "window": self.window,
            "window_type": self.window_type,
            "consecutive_failures": self.consecutive_failures,
            "slow_call_threshold_s": self.slow_call_threshold,
            "open_for_s": self.open_for,
            "half_open_permits": self.half_open_permits,
            "circuits": {key or "*": circuit.status() for key, circuit in self.circuits().items()},
        }

    def classify_status(self, status: int, elapsed: float | None = None) -> int:
        """The outcome of a response: :data:`FAILURE`, :data:`SUCCESS`, :data:`SLOW_SUCCESS` or :data:`IGNORED`."""
        if status in self.failure_statuses:
            return FAILURE
        if status >= 400:
            return IGNORED
        threshold = self.slow_call_threshold
        if threshold is not None and elapsed is not None and elapsed > threshold:
            return SLOW_SUCCESS
        return SUCCESS


class _Registry:
    """The mutable part of a frozen breaker: its circuits and listeners."""

    __slots__ = ("circuits", "listeners", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.circuits: dict[str, Circuit] = {}
        self.listeners: tuple[Listener, ...] = ()
