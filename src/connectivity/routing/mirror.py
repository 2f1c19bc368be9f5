"""Request mirroring's bookkeeping as a pure object: the in-flight bound, and what became of each sampled request.

Theory of operation: :class:`MirrorSlots` holds the counters of one mirroring transport behind a condition
variable (mirrors finish in worker threads for sync clients). A sampled request asks for a place twice: before
the primary is sent (:meth:`MirrorSlots.refusal`: a cheap unlocked read first, so a mirror that could not start
anyway costs the primary next to nothing) and when the mirror is launched (:meth:`MirrorSlots.take`, which
reserves the place). Every refusal is counted under its reason; a finished mirror gives its place back
(:meth:`MirrorSlots.done`). Nothing here does I/O or knows about httpx: the transport
(:class:`connectivity.transports.MirrorTransport`) launches the copies.
"""

from __future__ import annotations

import threading
from typing import Final, NamedTuple

from connectivity.policies._validate import at_least_int

__all__ = ["BODY", "FULL", "NOT_RUNNING", "STARTED", "MirrorSlots", "MirrorStats", "shadow_host"]

STARTED: Final = "started"
"""A place was taken: the mirror goes out."""
FULL: Final = "full"
"""Refused: ``max_concurrent`` mirrors are in flight."""
BODY: Final = "body"
"""Refused: the body is too large, or was not sent in full, so it cannot be replayed."""
NOT_RUNNING: Final = "not-running"
"""Refused: the transport is not running (an async one not entered, or closed)."""

_STARTED, _COMPLETED, _FAILED, _DROPPED, _SKIPPED, _NOT_RUNNING, _IN_FLIGHT = range(7)


class MirrorStats(NamedTuple):
    """Counters of a mirroring transport.

    Attributes:
        started: Mirrors launched.
        completed: Mirrors the shadow answered (any status).
        failed: Mirrors that failed (an error, a timeout, cancelled on close, a shadow unable to serve this
            client kind).
        dropped: Sampled requests not mirrored because ``max_concurrent`` mirrors were in flight.
        skipped: Sampled requests not mirrored because their body was too large or not fully sent.
        not_running: Sampled requests not mirrored because the transport was not entered, or already closed.
        in_flight: Mirrors in flight now.

    .. versionadded:: 0.1
    """

    started: int
    completed: int
    failed: int
    dropped: int
    skipped: int
    not_running: int
    in_flight: int


def shadow_host(host: str, suffix: str) -> str:
    """Envoy's shadow authority: ``suffix`` appended to the host part (``a:80`` -> ``a-shadow:80``,
    ``[::1]:80`` -> ``[::1]-shadow:80``)."""
    bracket = host.rfind("]")
    colon = host.rfind(":")
    if colon > bracket and (bracket != -1 or host.count(":") == 1):
        return f"{host[:colon]}{suffix}{host[colon:]}"
    return host + suffix


class MirrorSlots:
    """The in-flight bound of a mirroring transport and its counters; thread-safe.

    Args:
        max_concurrent: Mirrors in flight at most.

    .. versionadded:: 0.1
    """

    __slots__ = ("_cond", "_counts", "closed", "max_concurrent")

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = at_least_int("MirrorSlots.max_concurrent", max_concurrent, 1)
        self._cond = threading.Condition()
        self._counts = [0] * 7
        self.closed = False

    @property
    def in_flight(self) -> int:
        """Mirrors in flight now."""
        return self._counts[_IN_FLIGHT]

    def stats(self) -> MirrorStats:
        """The counters now."""
        with self._cond:
            return MirrorStats(*self._counts)

    def refusal(self, *, running: bool) -> str | None:
        """Before the primary is sent: the reason a mirror could not start anyway (counted), or ``None``."""
        if running and not self.closed and self._counts[_IN_FLIGHT] < self.max_concurrent:
            return None
        return self.take(running=running, reserve=False) or None

    def take(self, *, running: bool, replayable: bool = True, reserve: bool = True) -> str:
        """Take a place (:data:`STARTED`) or return the reason refused (counted). With ``reserve=False`` only
        check: ``""`` means there would be a place."""
        with self._cond:
            counts = self._counts
            if not replayable:
                counts[_SKIPPED] += 1
                return BODY
            if not running or self.closed:
                counts[_NOT_RUNNING] += 1
                return NOT_RUNNING
            if counts[_IN_FLIGHT] >= self.max_concurrent:
                counts[_DROPPED] += 1
                return FULL
            if not reserve:
                return ""
            counts[_STARTED] += 1
            counts[_IN_FLIGHT] += 1
            return STARTED

    def give_back(self) -> str:
        """A place taken could not be used after all (the transport stopped meanwhile): count it not running."""
        with self._cond:
            counts = self._counts
            counts[_STARTED] -= 1
            counts[_IN_FLIGHT] -= 1
            counts[_NOT_RUNNING] += 1
            self._cond.notify_all()
        return NOT_RUNNING

    def done(self, *, failed: bool) -> bool:
        """A mirror finished; returns whether none is in flight any more."""
        with self._cond:
            counts = self._counts
            counts[_IN_FLIGHT] -= 1
            counts[_FAILED if failed else _COMPLETED] += 1
            idle = counts[_IN_FLIGHT] == 0
            if idle:
                self._cond.notify_all()
            return idle

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no mirror is in flight; ``False`` if ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._counts[_IN_FLIGHT] == 0, timeout)
