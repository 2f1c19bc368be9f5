"""Driving a ``pybreaker.CircuitBreaker`` from a transport, for teams that already have one.

pybreaker decides; this adapter only translates. A 5xx response is turned into a failure by raising a private
marker inside ``calling()`` (pybreaker counts exceptions only) and the response is handed back afterwards;
pybreaker's ``CircuitBreakerError`` becomes :class:`~connectivity.CircuitOpenError`; pybreaker's state changes
become connectivity policy events through a pybreaker listener.

Caveats of pybreaker itself, not hidden here: it counts consecutive failures only (no ratio, no window), its
lock is held for the whole call (sync calls through one breaker are serialised; async calls run in one thread,
so they pass through its reentrant lock together), half-open lets every concurrent caller through, a cancelled
call counts as a failure, and its clock is the wall clock.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from connectivity._http import httpx
from connectivity.errors import CircuitOpenError
from connectivity.telemetry import events, semconv

__all__ = ["PybreakerCircuit"]


class _FailedStatus(Exception):
    """Raised inside pybreaker's ``calling()`` so it counts a 5xx response as a failure."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"status {response.status_code}")
        self.response = response


def _listener_class() -> type:
    import pybreaker

    class Announce(pybreaker.CircuitBreakerListener):
        """Turns pybreaker's state changes into connectivity policy events."""

        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            events.emit(
                events.BREAKER_STATE_CHANGE,
                {
                    semconv.CONNECTIVITY_BREAKER: str(cb.name or "pybreaker"),
                    semconv.CONNECTIVITY_STATE_FROM: str(getattr(old_state, "name", old_state)),
                    semconv.CONNECTIVITY_STATE_TO: str(getattr(new_state, "name", new_state)),
                    semconv.CONNECTIVITY_REASON: "pybreaker",
                },
            )

    return Announce


class PybreakerCircuit:
    """A ``pybreaker.CircuitBreaker`` behind the transport's admit/call/record steps."""

    __slots__ = ("_breaker", "_failure_statuses")

    def __init__(self, breaker: Any) -> None:
        self._breaker = breaker
        self._failure_statuses = frozenset(range(500, 600))
        announce = _listener_class()
        if not any(isinstance(listener, announce) for listener in breaker.listeners):
            breaker.add_listener(announce())

    def _rejected(self, request: httpx.Request, error: Exception) -> CircuitOpenError:
        breaker = self._breaker
        retry_after = None
        opened_at = getattr(getattr(breaker, "_state_storage", None), "opened_at", None)
        if isinstance(opened_at, datetime):
            elapsed = (datetime.now(timezone.utc) - opened_at.astimezone(timezone.utc)).total_seconds()
            retry_after = max(float(breaker.reset_timeout) - elapsed, 0.0)
        name = str(breaker.name or "pybreaker")
        return CircuitOpenError(
            f"circuit {name} is {breaker.current_state}: {request.method} not sent ({error})",
            request=request,
            breaker=name,
            state=str(breaker.current_state),
            retry_after=retry_after,
        )

    def send(self, inner: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
        import pybreaker

        response: httpx.Response | None = None
        try:
            with self._breaker.calling():
                response = inner.handle_request(request)
                if response.status_code in self._failure_statuses:
                    raise _FailedStatus(response)
        except _FailedStatus as failed:
            return failed.response
        except pybreaker.CircuitBreakerError as error:
            # pybreaker replaces the failure that trips it by its own error: give back what the call really got.
            if response is not None:
                return response
            cause = error.__context__
            if cause is not None and not isinstance(cause, _FailedStatus):
                raise cause from None
            raise self._rejected(request, error) from None
        return response

    async def asend(self, inner: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
        import pybreaker

        response: httpx.Response | None = None
        try:
            with self._breaker.calling():
                response = await inner.handle_async_request(request)
                if response.status_code in self._failure_statuses:
                    raise _FailedStatus(response)
        except _FailedStatus as failed:
            return failed.response
        except pybreaker.CircuitBreakerError as error:
            # pybreaker replaces the failure that trips it by its own error: give back what the call really got.
            if response is not None:
                return response
            cause = error.__context__
            if cause is not None and not isinstance(cause, _FailedStatus):
                raise cause from None
            raise self._rejected(request, error) from None
        return response
