"""Policy events: how every layer reports its decisions, once, to whoever listens.

Theory of operation: a layer that decides something worth knowing (a retry scheduled, a hedge launched, a breaker
opening, an endpoint ejected) calls :func:`emit` with an event name from this module and a few attributes. The
event goes

* to the *call* it happened in, if a :class:`~connectivity.transports.TracingTransport` is observing one (it
  becomes a span event on the call's logical span, a policy metric, and part of the access-log record);
* otherwise to the process-wide recorder (a policy metric on the global meter provider), for decisions taken
  outside any call, such as a health checker ejecting an endpoint;
* and always to the listeners added with :func:`subscribe` (tests, custom exporters).

Nothing is paid on the success path: layers emit only when they decide something, and :func:`emit` with no
observer and no listener is a context-variable read.

A listener that raises is logged and otherwise ignored: observability can never break a call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Protocol

__all__ = [
    "BREAKER_STATE_CHANGE",
    "BUDGET_EXHAUSTED",
    "CONCURRENCY_REJECTED",
    "DEADLINE_EXCEEDED",
    "ENDPOINT_EJECTED",
    "ENDPOINT_PICKED",
    "ENDPOINT_RESTORED",
    "EVENTS",
    "FAULT_INJECTED",
    "HEDGE_LAUNCHED",
    "MIRROR_DROPPED",
    "RATE_LIMIT_REFUSED",
    "RATE_LIMIT_WAIT",
    "RETRY_GAVE_UP",
    "RETRY_SCHEDULED",
    "TOKEN_FAILED",
    "TOKEN_FETCHED",
    "AttributeValue",
    "CallObserver",
    "Listener",
    "emit",
    "subscribe",
]

AttributeValue = str | bool | int | float
Listener = Callable[[str, Mapping[str, AttributeValue]], None]

RETRY_SCHEDULED = "connectivity.retry.scheduled"
"""A failed attempt will be retried. Attributes: ``connectivity.reason``, ``connectivity.delay`` (seconds),
``connectivity.attempt`` (the number of the attempt about to be made)."""
RETRY_GAVE_UP = "connectivity.retry.gave_up"
"""A failed attempt will not be retried. Attributes: ``connectivity.reason`` (why not: ``attempts exhausted``,
``retry budget exhausted``, ``method not idempotent``, ...), ``connectivity.attempt``."""
BUDGET_EXHAUSTED = "connectivity.retry_budget.exhausted"
"""A retry or hedge was refused by the retry budget. Attributes: ``connectivity.attempt``."""
HEDGE_LAUNCHED = "connectivity.hedge.launched"
"""A hedged (backup) attempt was started. Attributes: ``connectivity.attempt``, ``connectivity.delay``."""
DEADLINE_EXCEEDED = "connectivity.deadline.exceeded"
"""A deadline or per-try timeout fired. Attributes: ``connectivity.reason`` (``deadline`` or ``per-try``),
``connectivity.delay`` (the limit, seconds)."""
BREAKER_STATE_CHANGE = "connectivity.breaker.state_change"
"""A circuit breaker changed state. Attributes: ``connectivity.breaker``, ``connectivity.state.from``,
``connectivity.state.to``, ``connectivity.reason``."""
RATE_LIMIT_WAIT = "connectivity.rate_limit.wait"
"""A call waited for a rate limiter. Attributes: ``connectivity.reason`` (the limit), ``connectivity.delay``."""
RATE_LIMIT_REFUSED = "connectivity.rate_limit.refused"
"""A rate limiter refused a call. Attributes: ``connectivity.reason`` (the limit), ``connectivity.delay`` (retry
after, seconds)."""
CONCURRENCY_REJECTED = "connectivity.concurrency.rejected"
"""A bulkhead or concurrency limiter rejected a call. Attributes: ``connectivity.reason``."""
ENDPOINT_PICKED = "connectivity.endpoint.picked"
"""A balancer chose an endpoint. Attributes: ``connectivity.endpoint``, ``connectivity.reason`` (why)."""
ENDPOINT_EJECTED = "connectivity.endpoint.ejected"
"""An endpoint was ejected. Attributes: ``connectivity.endpoint``, ``connectivity.reason``,
``connectivity.delay`` (ejection time, seconds)."""
ENDPOINT_RESTORED = "connectivity.endpoint.restored"
"""An ejected endpoint was put back. Attributes: ``connectivity.endpoint``."""
TOKEN_FETCHED = "connectivity.credentials.fetched"
"""A token was fetched. Attributes: ``connectivity.reason`` (``initial``, ``expired``, ``refresh ahead``,
``rejected``), ``connectivity.delay`` (the token's lifetime, seconds)."""
TOKEN_FAILED = "connectivity.credentials.failed"
"""A token fetch failed. Attributes: ``connectivity.reason`` (e.g. ``status 500``, ``not JSON``)."""
FAULT_INJECTED = "connectivity.fault.injected"
"""a fault was injected. Attributes: ``connectivity.reason`` (``"delay"``, ``"abort 503"``,
``"abort connect"``) and, for a delay, ``connectivity.delay`` (seconds)."""
MIRROR_DROPPED = "connectivity.mirror.dropped"
"""a sampled request was not mirrored. Attributes: ``connectivity.reason`` (``"full"``,
``"body"``, ``"not-running"``)."""

EVENTS = frozenset(
    {
        RETRY_SCHEDULED,
        RETRY_GAVE_UP,
        BUDGET_EXHAUSTED,
        HEDGE_LAUNCHED,
        DEADLINE_EXCEEDED,
        BREAKER_STATE_CHANGE,
        RATE_LIMIT_WAIT,
        RATE_LIMIT_REFUSED,
        CONCURRENCY_REJECTED,
        ENDPOINT_PICKED,
        ENDPOINT_EJECTED,
        ENDPOINT_RESTORED,
        TOKEN_FETCHED,
        TOKEN_FAILED,
        FAULT_INJECTED,
        MIRROR_DROPPED,
    }
)
"""Every event name a connectivity layer emits."""

_log = logging.getLogger("connectivity.telemetry")


class CallObserver(Protocol):
    """What observes one outbound call (set by the tracing layer for the duration of the call)."""

    def event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        """Record a policy event that happened during the call."""


_CALL: ContextVar[CallObserver | None] = ContextVar("connectivity.telemetry.call", default=None)


class _Hub:
    """Who hears events besides the current call: swapped as a whole under a lock, read without one."""

    __slots__ = ("background", "listeners")

    def __init__(self) -> None:
        self.listeners: tuple[Listener, ...] = ()
        self.background: Listener | None = None


_hub = _Hub()
_lock = threading.Lock()


def _deliver(target: Listener, name: str, attributes: Mapping[str, AttributeValue]) -> None:
    try:
        target(name, attributes)
    except Exception:  # an observer must never break the call that emitted
        _log.exception("telemetry listener %r failed on %s", target, name)


def emit(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
    """Report a policy decision to the current call's observer, or the process-wide recorder, and to listeners.

    Args:
        name: One of the event names of this module (:data:`EVENTS`), or a name of your own.
        attributes: Low-cardinality attributes (strings, numbers, booleans). Never a secret.
    """
    attributes = attributes if attributes is not None else {}
    call = _CALL.get()
    if call is not None:
        _deliver(call.event, name, attributes)
    elif _hub.background is not None:
        _deliver(_hub.background, name, attributes)
    for listener in _hub.listeners:
        _deliver(listener, name, attributes)


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener(name, attributes)`` for every policy event in this process; returns the unsubscribe."""
    with _lock:
        _hub.listeners = (*_hub.listeners, listener)

    def unsubscribe() -> None:
        with _lock:
            _hub.listeners = tuple(item for item in _hub.listeners if item is not listener)

    return unsubscribe


def _set_background(recorder: Listener | None) -> None:
    """Install the recorder of events that happen outside any observed call (the telemetry module's)."""
    _hub.background = recorder
