"""Bulkheads and adaptive concurrency limits as transports.

Every decision lives in the policies (:class:`connectivity.Bulkhead`, :class:`connectivity.AdaptiveConcurrency`);
these layers ask for a slot, wait for one when the bulkhead has a queue, and give it back.

**What a slot covers.** A slot is held from admission until the *response head* arrives (the inner transport
returns), not while the body streams: a slow reader of a large body does not hold the upstream's concurrency,
and a response that is never closed cannot leak a slot. The adaptive limiter's round-trip time is measured over
the same span.

**Waiting (bulkhead only).** A call that finds every slot taken joins the bulkhead's FIFO queue if it has room,
and waits for a slot handed over by a releasing call: async, by sleeping ``queue_timeout`` on the transport's
clock in a cancel scope that the hand-over cancels (so :class:`~connectivity.testing.FakeClock` controls the
timeout); sync, on a :class:`threading.Event` (bounded by ``queue_timeout`` in real seconds). A waiter that is
cancelled leaves the queue; if a slot was handed to it at that very moment, the slot passes on to the next
waiter: permits never leak. A bulkhead may be shared by sync and async clients on different threads: an async
waiter is woken on its own event loop, from whichever thread releases the slot.

**Rejections** raise :class:`~connectivity.ConcurrencyLimitError` (an :class:`httpx.TransportError`) carrying the
request, emit :data:`~connectivity.telemetry.events.CONCURRENCY_REJECTED`, and send nothing.
"""

from __future__ import annotations

from typing import Any

from connectivity._http import httpx
from connectivity.errors import ConcurrencyLimitError
from connectivity.policies.bulkhead import FULL, QUEUE_TIMEOUT, Bulkhead
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.concurrency import AdaptiveConcurrency
from connectivity.telemetry import events, semconv
from connectivity.telemetry.redaction import DEFAULT_REDACTION
from connectivity.transports._base import Inner, Layer
from connectivity.transports._waiters import AsyncWaiter, SyncWaiter

__all__ = ["DROP_STATUSES", "AdaptiveConcurrencyTransport", "BulkheadTransport"]

DROP_STATUSES = frozenset({429, 503, 504})
"""Responses that tell an adaptive limiter the upstream is overloaded (a *drop*, like a timeout)."""


def _rejected(request: httpx.Request, *, name: str, kind: str, limit: int, reason: str) -> ConcurrencyLimitError:
    events.emit(events.CONCURRENCY_REJECTED, {semconv.CONNECTIVITY_REASON: f"{name}: {reason}"})
    return ConcurrencyLimitError(
        f"{kind} {name!r} rejected {request.method} {DEFAULT_REDACTION.url(str(request.url))} "
        f"({reason}, limit {limit}); nothing was sent",
        request=request,
        limiter=name,
        limit=limit,
        reason=reason,
    )


def _register(name: str, policy: Bulkhead | AdaptiveConcurrency) -> None:
    # Imported here: the admin registry imports this package (for Layer), so a top-level import would be a cycle.
    from connectivity.admin.registry import register

    register("limiters", name, policy)


def _wake(ticket: Any) -> None:
    if ticket is not None:
        ticket.waiter.wake()


class BulkheadTransport(Layer):
    """Cap the calls in flight through this transport with a :class:`connectivity.Bulkhead`.

    Args:
        inner: The transport to call.
        bulkhead: The policy (shared by every transport given the same object).
        clock: Time source for the async queue timeout (inject :class:`~connectivity.testing.FakeClock`).

    Raises:
        ConcurrencyLimitError: (from a call) No slot and no room in the queue (``reason="full"``), or no slot
            within ``queue_timeout`` (``reason="queue timeout"``); nothing was sent.

    The bulkhead is registered with the status app (:mod:`connectivity.admin`) under ``"limiters"``, by name,
    for as long as it is alive.

    .. versionadded:: 0.1
    """

    __slots__ = ("_acquire", "_bulkhead", "_clock", "_give_back")

    def __init__(self, inner: Inner, bulkhead: Bulkhead, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(inner)
        if not isinstance(bulkhead, Bulkhead):
            raise TypeError(f"bulkhead must be a connectivity.Bulkhead, got {type(bulkhead).__name__}")
        self._bulkhead = bulkhead
        self._clock = clock
        # Bound once: every call takes and gives back a slot.
        self._acquire = bulkhead.try_acquire
        self._give_back = bulkhead.release
        _register(bulkhead.name, bulkhead)

    @property
    def bulkhead(self) -> Bulkhead:
        """The policy."""
        return self._bulkhead

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer: the bulkhead's configuration and occupancy now."""
        return self._bulkhead.status()

    def _reject(self, request: httpx.Request, reason: str) -> ConcurrencyLimitError:
        bulkhead = self._bulkhead
        return _rejected(
            request, name=bulkhead.name, kind="bulkhead", limit=bulkhead.max_concurrent, reason=reason
        )

    def _release(self) -> None:
        _wake(self._bulkhead.release())

    def _wait(self, request: httpx.Request) -> None:
        """Queue for a slot (sync): return holding one, or raise the rejection."""
        bulkhead = self._bulkhead
        waiter = SyncWaiter()
        ticket = bulkhead.enqueue(waiter)
        if ticket is None:
            raise self._reject(request, FULL)
        if ticket.granted:
            return
        try:
            waiter.event.wait(bulkhead.queue_timeout)
        except BaseException:  # KeyboardInterrupt while queued: leave the queue, pass on a slot granted meanwhile
            if not bulkhead.dequeue(ticket):
                self._release()
            raise
        if not ticket.granted and bulkhead.dequeue(ticket, timed_out=True):
            raise self._reject(request, QUEUE_TIMEOUT)
        # Granted (possibly just as the timeout expired): the slot is ours.

    async def _await(self, request: httpx.Request) -> None:
        """Queue for a slot (async): return holding one, or raise the rejection."""
        bulkhead = self._bulkhead
        waiter = AsyncWaiter()
        ticket = bulkhead.enqueue(waiter)
        if ticket is None:
            raise self._reject(request, FULL)
        if ticket.granted:
            return
        try:
            with waiter.scope:
                await self._clock.asleep(bulkhead.queue_timeout)
        except BaseException:  # cancelled while queued: leave the queue, pass on a slot granted meanwhile
            if not bulkhead.dequeue(ticket):
                self._release()
            raise
        if not ticket.granted and bulkhead.dequeue(ticket, timed_out=True):
            raise self._reject(request, QUEUE_TIMEOUT)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        if not self._acquire():
            self._wait(request)
        try:
            return inner.handle_request(request)
        finally:
            handed = self._give_back()
            if handed is not None:  # the slot passed to a waiter: wake it
                handed.waiter.wake()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        if not self._acquire():
            await self._await(request)
        try:
            return await inner.handle_async_request(request)
        finally:
            handed = self._give_back()
            if handed is not None:
                handed.waiter.wake()


class AdaptiveConcurrencyTransport(Layer):
    """Cap the calls in flight with an adaptive limit (:class:`~connectivity.AdaptiveConcurrency`).

    Args:
        inner: The transport to call.
        limiter: The policy (shared by every transport given the same object).
        clock: Time source for round-trip times (inject :class:`~connectivity.testing.FakeClock` in tests).

    Raises:
        ConcurrencyLimitError: (from a call) The limit is reached (``reason="full"``); nothing was sent. There
            is no queue: waiting is the latency the limit protects against.

    Each call is a sample: its round-trip time to the response head, the calls in flight when it was admitted,
    and whether it was *dropped*: a transport error (timeouts included) or a 429/503/504 response. A cancelled
    call (a hedge that lost, a deadline, a caller that went away) is released without a sample. An error that is
    not a transport error (a bug) is released without a sample too: it says nothing about the upstream.

    The limiter is registered with the status app (:mod:`connectivity.admin`) under ``"limiters"``, by name.

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_limiter")

    def __init__(self, inner: Inner, limiter: AdaptiveConcurrency, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(inner)
        if not isinstance(limiter, AdaptiveConcurrency):
            raise TypeError(f"limiter must be a connectivity.AdaptiveConcurrency, got {type(limiter).__name__}")
        self._limiter = limiter
        self._clock = clock
        _register(limiter.name, limiter)

    @property
    def limiter(self) -> AdaptiveConcurrency:
        """The policy."""
        return self._limiter

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer: the limit now, occupancy and the algorithm's state."""
        return self._limiter.status()

    def _admit(self, request: httpx.Request) -> int:
        limiter = self._limiter
        if not limiter.try_acquire():
            raise _rejected(request, name=limiter.name, kind="limiter", limit=limiter.limit, reason=FULL)
        return limiter.in_flight

    def _finish(self, started: float, in_flight: int, dropped: bool) -> None:
        limiter = self._limiter
        limiter.release()
        limiter.on_sample(self._clock.now() - started, in_flight, dropped)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        in_flight = self._admit(request)
        started = self._clock.now()
        try:
            response = inner.handle_request(request)
        except httpx.TransportError:
            self._finish(started, in_flight, True)
            raise
        except BaseException:
            self._limiter.release()
            raise
        self._finish(started, in_flight, response.status_code in DROP_STATUSES)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        in_flight = self._admit(request)
        started = self._clock.now()
        try:
            response = await inner.handle_async_request(request)
        except httpx.TransportError:
            self._finish(started, in_flight, True)
            raise
        except BaseException:  # cancellation is never a sample
            self._limiter.release()
            raise
        self._finish(started, in_flight, response.status_code in DROP_STATUSES)
        return response
