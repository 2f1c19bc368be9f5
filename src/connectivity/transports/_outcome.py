"""Translating httpx events into the policies' vocabulary, and recording what the policies did."""

from __future__ import annotations

from dataclasses import dataclass, replace

from connectivity._http import httpx
from connectivity.errors import DeadlineExceededError, PerTryTimeoutError
from connectivity.policies.retry import CONNECT_FAILURE, PER_TRY_TIMEOUT, READ_TIMEOUT, RESET

__all__ = [
    "ATTEMPT",
    "DRAIN_LIMIT",
    "EXTENSION",
    "FIRST_TRY",
    "CallRecord",
    "adiscard",
    "discard",
    "failure_kind",
    "next_attempt",
    "record_of",
    "set_record",
]

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


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What the connectivity layers did for one call, found in ``response.extensions["connectivity"]``.

    Immutable: a layer that has something to add stores a new record (the success path shares one).

    Attributes:
        attempts: Attempts made by the retry layer (1 when the first succeeded).
        reasons: Why each failed attempt was retried or given up on (``"status 503"``, ``"connect-failure"``).
        waits: Seconds waited before each retry.
        gave_up: Why no further attempt was made although the last one failed, or ``None``.
        hedges: Extra (hedged) attempts started.
        winner: Index of the attempt whose response was returned (0 = the first).

    .. versionadded:: 0.1
    """

    attempts: int = 1
    reasons: tuple[str, ...] = ()
    waits: tuple[float, ...] = ()
    gave_up: str | None = None
    hedges: int = 0
    winner: int = 0


FIRST_TRY = CallRecord()
"""The record of a call whose first attempt succeeded, shared by all such calls."""


DRAIN_LIMIT = 64 * 1024
"""Bytes of a discarded response body read before closing it, so its keep-alive connection can be reused."""


def discard(response: httpx.Response) -> None:
    """Close a response nobody will read; a small body is read first so the connection goes back to the pool."""
    if response.is_stream_consumed:
        response.close()
        return
    try:
        drained = 0
        for chunk in response.iter_raw():
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                break
    except (httpx.HTTPError, httpx.StreamError):
        pass  # the connection is dropped instead of reused: nothing else to do
    finally:
        response.close()


async def adiscard(response: httpx.Response) -> None:
    """Async :func:`discard`."""
    if response.is_stream_consumed:
        await response.aclose()
        return
    try:
        drained = 0
        async for chunk in response.aiter_raw():
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                break
    except (httpx.HTTPError, httpx.StreamError):
        pass
    finally:
        await response.aclose()


ATTEMPT = "connectivity.attempt"
"""Request extension: the number of the attempt this request object is (1 for the first), across all layers."""


def next_attempt(request: httpx.Request) -> int:
    """Number the next attempt of ``request``'s call: one counter shared by the retry and hedging layers."""
    number = int(request.extensions.get(ATTEMPT, 1)) + 1
    request.extensions[ATTEMPT] = number
    return number


def record_of(response: httpx.Response) -> CallRecord:
    """The response's :class:`CallRecord` (:data:`FIRST_TRY` when no layer recorded anything)."""
    record: CallRecord | None = response.extensions.get(EXTENSION)
    return FIRST_TRY if record is None else record


def set_record(response: httpx.Response, **changes: object) -> None:
    """Store a copy of the response's record with ``changes`` applied."""
    response.extensions[EXTENSION] = replace(record_of(response), **changes)  # type: ignore[arg-type]
