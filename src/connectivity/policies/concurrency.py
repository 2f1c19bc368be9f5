"""Adaptive concurrency limits: a concurrency cap that finds itself (Netflix concurrency-limits semantics).

Theory of operation: a fixed bulkhead needs someone to know the right number; an adaptive limit measures it. Each
finished call is a *sample*: its round-trip time, how many calls were in flight when it started, and whether it
was *dropped* (a timeout, a transport error, an overload answer such as 503). An *algorithm* turns the current
limit and a sample into the next limit, the way TCP congestion control turns acknowledgements and losses into a
congestion window; :class:`AdaptiveConcurrency` clamps the result to ``[min_limit, max_limit]`` and admits calls
while fewer than ``limit`` are in flight. It never queues: a call over the limit is rejected at once, because
waiting is exactly the queueing the limit exists to prevent.

The algorithms are frozen configuration; :meth:`start` gives each limiter its own :class:`Estimator` (the
mutable part: moving averages, probe counters), updated under the limiter's lock. They follow the reference
implementation, ``com.netflix.concurrency.limits.limit`` (Apache-2.0):

* :class:`AIMD` (loss based, ``AIMDLimit``): a drop, or a sample slower than ``timeout``, multiplies the limit
  by ``backoff_ratio`` (and lowers it by at least 1); a good sample while at least half the limit is in use adds
  ``increase``. Latency changes below ``timeout`` are invisible to it.
* :class:`Gradient2` (latency based, ``Gradient2Limit``): compares this sample's RTT (short term) with an
  exponential average over about ``long_window`` samples (long term)::

      gradient  = max(0.5, min(1.0, tolerance * long_rtt / short_rtt))
      new_limit = limit * gradient + queue_size              # queue_size: sqrt(limit) unless set
      new_limit = limit * (1 - smoothing) + new_limit * smoothing

  so the limit shrinks (by half at most per step, smoothed) while calls take longer than ``tolerance`` times
  their long-term average, and grows by ``smoothing * queue_size`` per sample otherwise. When the long average
  is more than twice the current RTT (load went away) it decays by 5 % per sample so the limit recovers
  quickly. Drops are not a signal (latency is), as in the reference.
* :class:`Vegas` (delay based, ``VegasLimit``, after TCP Vegas): estimates the queue as
  ``limit * (1 - rtt_noload / rtt)`` against the lowest RTT seen and grows fast while that queue is tiny, slowly
  while it is small, and shrinks when it is large; a drop shrinks it too. ``rtt_noload`` is re-probed every
  ``probe_multiplier * limit`` samples (jittered by 0.5-1x) so a baseline that moved is found again.

All three leave the limit alone while fewer than half of it is in use (the caller is *app limited*: samples then
say nothing about the upstream's capacity), so a quiet client does not inflate its limit to ``max_limit``.

Cancelled calls are never samples: the adapters release their slot without calling :meth:`on_sample`.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative, finite_positive
from connectivity.policies.bulkhead import _check_flag, _check_name, _WeakReferenceable

__all__ = ["AIMD", "AdaptiveConcurrency", "Estimator", "Gradient2", "LimitAlgorithm", "Vegas"]


@runtime_checkable
class Estimator(Protocol):
    """One limiter's running estimate: the mutable half of an algorithm.

    .. versionadded:: 0.1
    """

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        """The next limit (not yet clamped) after a sample.

        Args:
            limit: The current (clamped) estimate.
            rtt: The sample's round-trip time, seconds.
            in_flight: Calls in flight when the sampled call was admitted (itself included).
            dropped: The call failed in a way that signals overload (timeout, transport error, 503/429/504).
        """
        ...

    def status(self) -> Mapping[str, object]:
        """The estimator's internals, for the status app (JSON data)."""
        ...


@runtime_checkable
class LimitAlgorithm(Protocol):
    """How a limit adapts: frozen configuration that starts one :class:`Estimator` per limiter.

    .. versionadded:: 0.1
    """

    def start(self) -> Estimator:
        """A fresh estimator for one limiter."""
        ...


def _ratio_open(field_name: str, value: object) -> float:
    """A number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(field_name, value, "must be a number between 0 and 1 (exclusive)")
    return float(value)


def _ratio_half_open(field_name: str, value: object) -> float:
    """A number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(field_name, value, "must be a number in (0, 1]")
    return float(value)


def _log10(limit: float) -> int:
    """``max(1, int(log10(limit)))``: Netflix's Log10RootFunction, the unit Vegas grows and shrinks by."""
    return max(1, int(math.log10(limit))) if limit >= 1 else 1


# -- AIMD -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AIMD:
    """Additive increase, multiplicative decrease on drops (Netflix ``AIMDLimit``).

    Args:
        backoff_ratio: On a drop (or a sample slower than ``timeout``) the limit becomes
            ``min(limit - 1, int(limit * backoff_ratio))``. Between 0 and 1, exclusive.
        increase: Added to the limit after a good sample taken while at least half the limit was in flight.
        timeout: A sample slower than this many seconds counts as a drop.

    .. versionadded:: 0.1
    """

    backoff_ratio: float = 0.9
    increase: int = 1
    timeout: float = 5.0

    def __post_init__(self) -> None:
        _ratio_open("AIMD.backoff_ratio", self.backoff_ratio)
        at_least_int("AIMD.increase", self.increase, 1)
        finite_positive("AIMD.timeout", self.timeout)

    def start(self) -> Estimator:
        """AIMD keeps no state besides the limit: it is its own estimator."""
        return self

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        """See :meth:`Estimator.update`."""
        current = int(limit)
        if dropped or rtt > self.timeout:
            return float(max(1, min(current - 1, int(current * self.backoff_ratio))))
        if in_flight * 2 >= current:
            return float(current + self.increase)
        return limit

    def status(self) -> Mapping[str, object]:
        """See :meth:`Estimator.status`."""
        return {"backoff_ratio": self.backoff_ratio, "increase": self.increase, "timeout_s": self.timeout}


# -- Gradient2 ------------------------------------------------------------------------------------------------
_WARMUP = 10  # the long-term average is a plain mean of the first samples, as in the reference
_DECAY = 0.95  # applied to the long-term average while it is more than twice the current RTT


@dataclass(frozen=True, slots=True)
class Gradient2:
    """Latency-gradient limit (Netflix ``Gradient2Limit``): shrink while RTT rises above its long-term average.

    Args:
        smoothing: How much of each new estimate is taken (0.2: 20 %), in (0, 1].
        tolerance: How much slower than the long-term average a call may be before the limit shrinks (1.5:
            50 % slower); at least 1.
        long_window: Samples the long-term exponential average spans (its factor is ``2 / (long_window + 1)``).
        queue_size: How far the limit may grow per step while latency is normal; ``None``: ``sqrt(limit)``.

    .. versionadded:: 0.1
    """

    smoothing: float = 0.2
    tolerance: float = 1.5
    long_window: int = 600
    queue_size: float | None = None

    def __post_init__(self) -> None:
        _ratio_half_open("Gradient2.smoothing", self.smoothing)
        if finite_positive("Gradient2.tolerance", self.tolerance) < 1.0:
            raise ConfigError("Gradient2.tolerance", self.tolerance, "must be at least 1")
        at_least_int("Gradient2.long_window", self.long_window, 1)
        if self.queue_size is not None:
            finite_non_negative("Gradient2.queue_size", self.queue_size)

    def start(self) -> Estimator:
        """A fresh estimator: an empty long-term average."""
        return _Gradient2Estimator(self)


class _Gradient2Estimator:
    __slots__ = ("config", "count", "long_rtt", "short_rtt", "total")

    def __init__(self, config: Gradient2) -> None:
        self.config = config
        self.long_rtt = 0.0
        self.short_rtt = 0.0
        self.count = 0
        self.total = 0.0

    def _long(self, rtt: float) -> float:
        if self.count < _WARMUP:
            self.count += 1
            self.total += rtt
            self.long_rtt = self.total / self.count
        else:
            factor = 2.0 / (self.config.long_window + 1)
            self.long_rtt = self.long_rtt * (1 - factor) + rtt * factor
        return self.long_rtt

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        config = self.config
        queue_size = math.sqrt(limit) if config.queue_size is None else config.queue_size
        short = max(rtt, 1e-9)  # a zero RTT (a virtual clock) would divide by zero
        self.short_rtt = short
        long = self._long(short)
        if long / short > 2:
            # Load went away: let the baseline fall faster than the average alone would.
            self.long_rtt *= _DECAY
        if in_flight < limit / 2:
            return limit  # app limited: the sample says nothing about capacity
        gradient = max(0.5, min(1.0, config.tolerance * long / short))
        new_limit = limit * gradient + queue_size
        return limit * (1 - config.smoothing) + new_limit * config.smoothing

    def status(self) -> Mapping[str, object]:
        return {
            "smoothing": self.config.smoothing,
            "tolerance": self.config.tolerance,
            "long_window": self.config.long_window,
            "short_rtt_s": self.short_rtt,
            "long_rtt_s": self.long_rtt,
        }


# -- Vegas ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Vegas:
    """Delay-based limit after TCP Vegas (Netflix ``VegasLimit``).

    With ``L = max(1, int(log10(limit)))`` and ``queue = ceil(limit * (1 - rtt_noload / rtt))``: grow by
    ``beta * L`` while ``queue <= L``, by ``L`` while ``queue < alpha * L``, shrink by ``L`` when
    ``queue > beta * L`` or on a drop, otherwise hold.

    Args:
        alpha: Queue size (in units of ``L``) below which the limit grows.
        beta: Queue size (in units of ``L``) above which the limit shrinks; also the fast-growth step.
        smoothing: How much of each new estimate is taken, in (0, 1] (1: all of it, the reference's default).
        probe_multiplier: Re-measure ``rtt_noload`` every ``probe_multiplier * limit`` samples (times a random
            0.5-1 jitter, so replicas do not probe together).

    .. versionadded:: 0.1
    """

    alpha: float = 3.0
    beta: float = 6.0
    smoothing: float = 1.0
    probe_multiplier: int = 30

    def __post_init__(self) -> None:
        finite_positive("Vegas.alpha", self.alpha)
        if finite_positive("Vegas.beta", self.beta) < self.alpha:
            raise ConfigError("Vegas.beta", self.beta, "must be at least Vegas.alpha")
        _ratio_half_open("Vegas.smoothing", self.smoothing)
        at_least_int("Vegas.probe_multiplier", self.probe_multiplier, 1)

    def start(self) -> Estimator:
        """A fresh estimator: no ``rtt_noload`` yet."""
        return _VegasEstimator(self)


class _VegasEstimator:
    __slots__ = ("config", "jitter", "probe_count", "random", "rtt_noload")

    def __init__(self, config: Vegas) -> None:
        self.config = config
        self.random = random.Random()
        self.rtt_noload = 0.0
        self.probe_count = 0
        self.jitter = self.random.uniform(0.5, 1.0)

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        config = self.config
        rtt = max(rtt, 1e-9)
        self.probe_count += 1
        if self.jitter * config.probe_multiplier * limit <= self.probe_count:
            self.jitter = self.random.uniform(0.5, 1.0)
            self.probe_count = 0
            self.rtt_noload = rtt
            return limit
        if self.rtt_noload == 0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return limit
        step = _log10(limit)
        if dropped:
            new_limit = limit - step
        elif in_flight * 2 < limit:
            return limit
        else:
            queue = math.ceil(limit * (1 - self.rtt_noload / rtt))
            if queue <= step:
                new_limit = limit + config.beta * step
            elif queue < config.alpha * step:
                new_limit = limit + step
            elif queue > config.beta * step:
                new_limit = limit - step
            else:
                return limit
        return (1 - config.smoothing) * limit + config.smoothing * max(1.0, new_limit)

    def status(self) -> Mapping[str, object]:
        return {"alpha": self.config.alpha, "beta": self.config.beta, "rtt_noload_s": self.rtt_noload}


# -- the limiter ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class AdaptiveConcurrency(_WeakReferenceable):
    """A concurrency limit that adapts to the latency and drops it observes; shared by threads and tasks.

    Args:
        algorithm: How the limit adapts: :class:`Gradient2` (default), :class:`AIMD` or :class:`Vegas`.
        min_limit: The limit never goes below this.
        max_limit: The limit never goes above this.
        initial_limit: The limit before any sample; within ``[min_limit, max_limit]``.
        name: Names the limiter in errors, events and the status app.
        shadow: Adapt and count rejections, but admit every call: watch what a limit would do first.

    Raises:
        ConfigError: ``algorithm`` is not an algorithm, a limit is not an integer >= 1, the limits are out of
            order, ``name`` is empty, or ``shadow`` is not a bool.

    Adapters call :meth:`try_acquire` before a call (reject it on ``False``), then :meth:`release` and
    :meth:`on_sample` when it finishes, or only :meth:`release` when it was cancelled.

    .. versionadded:: 0.1
    """

    algorithm: LimitAlgorithm = field(default_factory=Gradient2)
    min_limit: int = 1
    max_limit: int = 1000
    initial_limit: int = 20
    name: str = "adaptive"
    shadow: bool = False
    _state: _LimiterState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, LimitAlgorithm):
            raise ConfigError(
                "AdaptiveConcurrency.algorithm", self.algorithm, "must be AIMD(), Gradient2(), Vegas() or similar"
            )
        at_least_int("AdaptiveConcurrency.min_limit", self.min_limit, 1)
        at_least_int("AdaptiveConcurrency.max_limit", self.max_limit, self.min_limit)
        at_least_int("AdaptiveConcurrency.initial_limit", self.initial_limit, self.min_limit)
        if self.initial_limit > self.max_limit:
            raise ConfigError(
                "AdaptiveConcurrency.initial_limit", self.initial_limit, f"must be at most {self.max_limit}"
            )
        _check_name("AdaptiveConcurrency.name", self.name)
        _check_flag("AdaptiveConcurrency.shadow", self.shadow)
        estimator = self.algorithm.start()
        if not isinstance(estimator, Estimator):
            raise ConfigError("AdaptiveConcurrency.algorithm", self.algorithm, "start() must return an Estimator")
        object.__setattr__(self, "_state", _LimiterState(estimator, float(self.initial_limit)))

    @property
    def limit(self) -> int:
        """The current limit."""
        return int(self._state.estimate)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet released (in shadow mode this may exceed the limit)."""
        return self._state.in_flight

    @property
    def rejected(self) -> int:
        """Calls rejected so far (in shadow mode: calls that would have been)."""
        return self._state.rejected

    def try_acquire(self) -> bool:
        """Admit a call if fewer than :attr:`limit` are in flight; ``False`` (counted as a rejection) otherwise.

        In shadow mode every call is admitted; one that would have been rejected is counted.
        """
        state = self._state
        with state.lock:
            if state.in_flight < int(state.estimate):
                state.in_flight += 1
                state.admitted += 1
                return True
            state.rejected += 1
            if not self.shadow:
                return False
            state.in_flight += 1
            state.admitted += 1
            return True

    def release(self) -> None:
        """Give an admitted call's slot back (after a sample, or instead of one for a cancelled call)."""
        state = self._state
        with state.lock:
            if state.in_flight > 0:
                state.in_flight -= 1

    def on_sample(self, rtt: float, in_flight: int, dropped: bool = False) -> int:
        """Feed one finished call to the algorithm.

        Args:
            rtt: Seconds from admission to the answer (for a transport: the response head).
            in_flight: Calls in flight when the sampled call was admitted, itself included.
            dropped: It failed in a way that signals overload (timeout, transport error, 503/429/504).

        Returns:
            The limit after the sample, clamped to ``[min_limit, max_limit]``.

        Raises:
            ValueError: ``rtt`` is negative or not a finite number.
        """
        if not math.isfinite(rtt) or rtt < 0:
            raise ValueError(f"rtt must be a finite number of seconds >= 0, got {rtt!r}")
        state = self._state
        with state.lock:
            proposed = state.estimator.update(state.estimate, rtt, in_flight, dropped)
            if not math.isfinite(proposed):
                proposed = state.estimate
            state.estimate = max(float(self.min_limit), min(float(self.max_limit), proposed))
            state.samples += 1
            state.drops += bool(dropped)
            return int(state.estimate)

    def status(self) -> dict[str, object]:
        """What the status app shows: the limit now, occupancy, counts, and the algorithm's internals."""
        state = self._state
        with state.lock:
            return {
                "name": self.name,
                "kind": "adaptive",
                "algorithm": type(self.algorithm).__name__,
                "shadow": self.shadow,
                "limit": int(state.estimate),
                "min_limit": self.min_limit,
                "max_limit": self.max_limit,
                "in_flight": state.in_flight,
                "admitted": state.admitted,
                "rejected": state.rejected,
                "samples": state.samples,
                "drops": state.drops,
                "estimator": dict(state.estimator.status()),
            }


class _LimiterState:
    """The mutable part of a frozen AdaptiveConcurrency (guarded by ``lock``)."""

    __slots__ = ("admitted", "drops", "estimate", "estimator", "in_flight", "lock", "rejected", "samples")

    def __init__(self, estimator: Estimator, estimate: float) -> None:
        self.lock = threading.Lock()
        self.estimator = estimator
        self.estimate = estimate
        self.in_flight = 0
        self.admitted = 0
        self.rejected = 0
        self.samples = 0
        self.drops = 0
