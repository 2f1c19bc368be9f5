"""Fault injection as a pure policy: Envoy's HTTP fault filter (delays and aborts), without the I/O.

Theory of operation: :class:`FaultInjection` is configuration plus a small thread-safe counter of the faults
active right now. For each request the transport asks :meth:`FaultInjection.decide` with the request's headers
and a random draw function; the answer is ``None`` (send as usual) or a :class:`FaultDecision`: a delay to wait
first, and/or an abort (an HTTP status to answer with, or a connection error to raise). The transport calls
:meth:`FaultInjection.release` when a faulted request is done. Time and randomness belong to the caller (an
injected clock and ``random.Random``), so tests are deterministic.

The order of checks is Envoy's:

1. ``headers``: every condition must hold, or the request passes untouched (no draw is made);
2. ``max_active_faults``: when that many faulted requests are in flight, the request passes untouched and
   ``faults_overflow`` is counted (no draw is made);
3. the delay: drawn against its percentage (one draw), its duration fixed or taken from a header;
4. the abort: drawn against its percentage (one draw), its status fixed or taken from a header.

A request may get both (the delay happens, then the abort). Header control (``Delay(header=True)``,
``Abort(header=True)``) is off unless configured, as in Envoy: the caller then asks for a fault with
``x-envoy-fault-delay-request`` (milliseconds) or ``x-envoy-fault-abort-request`` (an HTTP status, 200-599), and
may lower the percentage with ``x-envoy-fault-delay-request-percentage`` /
``x-envoy-fault-abort-request-percentage`` (capped at the configured percentage). A missing or malformed fault
header means no fault of that kind; a malformed percentage header means the configured percentage.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from connectivity.errors import ConfigError
from connectivity.routing.match import HeaderMatch

__all__ = [
    "ABORT_HEADER",
    "ABORT_PERCENT_HEADER",
    "DELAY_HEADER",
    "DELAY_PERCENT_HEADER",
    "Abort",
    "Delay",
    "FaultDecision",
    "FaultInjection",
    "FaultStats",
]

DELAY_HEADER: Final = "x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER: Final = "x-envoy-fault-delay-request-percentage"
ABORT_HEADER: Final = "x-envoy-fault-abort-request"
ABORT_PERCENT_HEADER: Final = "x-envoy-fault-abort-request-percentage"


def _percent(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(field, value, "must be a percentage between 0 and 100")
    return float(value)


@dataclass(frozen=True, slots=True)
class Delay:
    """Delay a share of requests before they are sent. Exactly one of ``seconds`` and ``header`` is given.

    Args:
        seconds: The fixed delay (Envoy's ``fixed_delay``).
        percent: Share of the requests delayed, 0-100.
        header: Take the delay from the request's ``x-envoy-fault-delay-request`` header (milliseconds), as
            Envoy's ``header_delay``; a request without it is not delayed.

    .. versionadded:: 0.1
    """

    seconds: float | None = None
    percent: float = 100.0
    header: bool = False

    def __post_init__(self) -> None:
        if (self.seconds is None) != bool(self.header):
            raise ConfigError("Delay", (self.seconds, self.header), "give exactly one of seconds and header=True")
        if self.seconds is not None and (
            isinstance(self.seconds, bool)
            or not isinstance(self.seconds, (int, float))
            or not 0 <= self.seconds < math.inf
        ):
            raise ConfigError("Delay.seconds", self.seconds, "must be a finite number of seconds >= 0")
        object.__setattr__(self, "percent", _percent("Delay.percent", self.percent))


@dataclass(frozen=True, slots=True)
class Abort:
    """Fail a share of requests without sending them. Exactly one of ``status``, ``error`` and ``header``.

    Args:
        status: Answer with this HTTP status (200-599; Envoy's ``http_status``).
        error: ``"connect"``: raise :class:`httpx.ConnectError`, as a refused connection would.
        percent: Share of the requests aborted, 0-100.
        header: Take the status from the request's ``x-envoy-fault-abort-request`` header (Envoy's
            ``header_abort``); a request without it is not aborted.

    .. versionadded:: 0.1
    """

    status: int | None = None
    error: Literal["connect"] | None = None
    percent: float = 100.0
    header: bool = False

    def __post_init__(self) -> None:
        given = [name for name in ("status", "error") if getattr(self, name) is not None]
        if self.header:
            given.append("header")
        if len(given) != 1:
            raise ConfigError("Abort", given or None, "give exactly one of status, error and header=True")
        if self.status is not None and (
            isinstance(self.status, bool) or not isinstance(self.status, int) or not 200 <= self.status <= 599
        ):
            raise ConfigError("Abort.status", self.status, "must be an HTTP status between 200 and 599")
        if self.error is not None and self.error != "connect":
            raise ConfigError("Abort.error", self.error, "must be 'connect'")
        object.__setattr__(self, "percent", _percent("Abort.percent", self.percent))


class FaultDecision(NamedTuple):
    """The fault chosen for one request (found in ``response.extensions["connectivity.fault"]``).

    Attributes:
        delay: Seconds to wait before going on, or ``None``.
        status: HTTP status to answer with instead of sending, or ``None``.
        error: ``"connect"`` to raise a connection error instead of sending, or ``None``.

    .. versionadded:: 0.1
    """

    delay: float | None
    status: int | None
    error: str | None


class FaultStats(NamedTuple):
    """Counters of a :class:`FaultInjection`, named as Envoy's fault filter statistics.

    .. versionadded:: 0.1
    """

    delays_injected: int
    aborts_injected: int
    faults_overflow: int
    active_faults: int


def _header_number(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


class FaultInjection:
    """Which requests get a delay or an abort (Envoy's HTTP fault filter semantics; see the module docstring).

    Args:
        delay: The delay fault, or ``None``.
        abort: The abort fault, or ``None``. At least one of ``delay`` and ``abort`` is given.
        headers: Conditions that must all hold for a request to be considered (:class:`HeaderMatch`).
        max_active_faults: At most this many faulted requests at once (``None``: no limit).

    Raises:
        ConfigError: Neither fault given, a bad condition or limit.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_aborts",
        "_active",
        "_delays",
        "_lock",
        "_overflow",
        "abort",
        "delay",
        "headers",
        "max_active_faults",
    )

    def __init__(
        self,
        *,
        delay: Delay | None = None,
        abort: Abort | None = None,
        headers: Iterable[HeaderMatch] = (),
        max_active_faults: int | None = None,
    ) -> None:
        if delay is None and abort is None:
            raise ConfigError("FaultInjection", None, "give a delay, an abort or both")
        if delay is not None and not isinstance(delay, Delay):
            raise ConfigError("FaultInjection.delay", delay, "must be a Delay")
        if abort is not None and not isinstance(abort, Abort):
            raise ConfigError("FaultInjection.abort", abort, "must be an Abort")
        conditions = tuple(headers)
        if any(not isinstance(condition, HeaderMatch) for condition in conditions):
            raise ConfigError("FaultInjection.headers", conditions, "must be HeaderMatch objects")
        if max_active_faults is not None and (
            isinstance(max_active_faults, bool) or not isinstance(max_active_faults, int) or max_active_faults < 0
        ):
            raise ConfigError("FaultInjection.max_active_faults", max_active_faults, "must be None or an int >= 0")
        self.delay = delay
        self.abort = abort
        self.headers = conditions
        self.max_active_faults = max_active_faults
        self._lock = threading.Lock()
        self._active = 0
        self._delays = 0
        self._aborts = 0
        self._overflow = 0

    def __repr__(self) -> str:
        return (
            f"FaultInjection(delay={self.delay!r}, abort={self.abort!r}, headers={self.headers!r}, "
            f"max_active_faults={self.max_active_faults!r})"
        )

    def stats(self) -> FaultStats:
        """The counters now."""
        with self._lock:
            return FaultStats(self._delays, self._aborts, self._overflow, self._active)

    def _full(self) -> bool:
        return self.max_active_faults is not None and self._active >= self.max_active_faults

    @staticmethod
    def _chance(percent: float, headers: Mapping[str, str], header: str | None) -> float:
        if header is None:
            return percent
        asked = _header_number(headers, header)
        return percent if asked is None else min(float(asked), percent)

    def decide(self, headers: Mapping[str, str], random: Callable[[], float]) -> FaultDecision | None:
        """The fault for a request with these headers, or ``None``. A decision must later be :meth:`release`\\ d.

        Args:
            headers: The request's headers (case-insensitive mapping, or a dict with lower-case names).
            random: Returns a fraction in ``[0, 1)``: called once per configured, applicable fault.
        """
        for condition in self.headers:
            if not condition.matches(headers):
                return None
        if self._full():
            with self._lock:
                self._overflow += 1
            return None
        delay: float | None = None
        spec = self.delay
        if spec is not None:
            if spec.header:
                millis = _header_number(headers, DELAY_HEADER)
                seconds = None if millis is None else millis / 1000.0
                chance = self._chance(spec.percent, headers, DELAY_PERCENT_HEADER)
            else:
                seconds, chance = spec.seconds, spec.percent
            if seconds is not None and random() * 100.0 < chance:
                delay = seconds
        status: int | None = None
        error: str | None = None
        abort = self.abort
        if abort is not None:
            if abort.header:
                code = _header_number(headers, ABORT_HEADER)
                wanted: int | str | None = code if code is not None and 200 <= code <= 599 else None
                chance = self._chance(abort.percent, headers, ABORT_PERCENT_HEADER)
            else:
                wanted, chance = (abort.status if abort.status is not None else abort.error), abort.percent
            if wanted is not None and random() * 100.0 < chance:
                status, error = (wanted, None) if isinstance(wanted, int) else (None, wanted)
        if delay is None and status is None and error is None:
            return None
        with self._lock:
            if self._full():  # another request took the last place between the check and now
                self._overflow += 1
                return None
            self._active += 1
            self._delays += delay is not None
            self._aborts += status is not None or error is not None
        return FaultDecision(delay, status, error)

    def release(self) -> None:
        """A faulted request is done (answered, failed or cancelled): it no longer counts as active."""
        with self._lock:
            self._active -= 1
