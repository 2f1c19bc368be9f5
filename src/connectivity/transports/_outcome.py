"""Translating httpx events into the policies' vocabulary, and recording what the policies did."""

from __future__ import annotations

import httpx

from connectivity.errors import DeadlineExceededError, PerTryTimeoutError
from connectivity.policies.retry import CONNECT_FAILURE, PER_TRY_TIMEOUT, READ_TIMEOUT, RESET

__all__ = ["EXTENSION", "CallRecord", "failure_kind", "record_of"]

EXTENSION = "connectivity"
"""Key of the :class:`CallRecord` in ``response.extensions``."""


def failure_kind(exc: BaseException) -> str | None:
    """The retry policy's name for an httpx error, or ``None`` for errors no policy retries.

    ``connect-failure`` is reserved for errors raised before any request byte left: a refused or timed-out
    connection. A pool timeout is local saturation, not an upstream failure, and is not retried.
    """
    if isinstance(exc, DeadlineExceededError):
        return None
    if isinstance(exc, PerTryTimeoutError):
        return PER_TRY_TIMEOUT
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return CONNECT_FAILURE
    if isinstance(exc, httpx.ReadTimeout):
        return READ_TIMEOUT
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.WriteTimeout)):
        return RESET
    return None


class CallRecord:
    """What the connectivity layers did for one call, found in ``response.extensions["connectivity"]``.

    Attributes:
        attempts: Attempts made by the retry layer (1 when the first succeeded).
        reasons: Why each failed attempt was retried or given up on (``"status 503"``, ``"connect-failure"``).
        waits: Seconds waited before each retry.
        gave_up: Why no further attempt was made although the last one failed, or ``None``.
        hedges: Extra (hedged) attempts started.
        winner: Index of the attempt whose response was returned (0 = the first).

    .. versionadded:: 0.1
    """

    __slots__ = ("attempts", "gave_up", "hedges", "reasons", "waits", "winner")

    def __init__(self) -> None:
        self.attempts = 1
        self.reasons: tuple[str, ...] = ()
        self.waits: tuple[float, ...] = ()
        self.gave_up: str | None = None
        self.hedges = 0
        self.winner = 0

    def __repr__(self) -> str:
        return (
            f"CallRecord(attempts={self.attempts}, reasons={self.reasons!r}, waits={self.waits!r}, "
            f"gave_up={self.gave_up!r}, hedges={self.hedges}, winner={self.winner})"
        )


def record_of(response: httpx.Response) -> CallRecord:
    """The response's :class:`CallRecord`, created on first use."""
    record: CallRecord | None = response.extensions.get(EXTENSION)
    if record is None:
        record = response.extensions[EXTENSION] = CallRecord()
    return record
