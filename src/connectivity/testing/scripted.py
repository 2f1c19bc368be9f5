"""A transport that plays a script: responses, errors and delays, for unit tests of policies.

Each request takes the next step of the script. A step is an ``int`` status, an :class:`httpx.Response`, an
exception (class or instance), a callable ``request -> step``, or a :class:`Step` that adds a delay and headers.
Delays pass on the injected clock (use :class:`~connectivity.testing.FakeClock`), and honour httpx's read timeout
the way a real connection does: a delay longer than the request's read timeout raises :class:`httpx.ReadTimeout`
after that timeout. The transport records every request (with its body) and counts responses handed out, closed,
and attempts cancelled mid-flight, so tests can assert that nothing was left open.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import anyio

from connectivity._http import httpx
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["RecordedRequest", "ScriptedTransport", "Step", "StepLike"]


@dataclass(frozen=True)
class Step:
    """One scripted outcome.

    Args:
        outcome: Status code, response, exception class or instance.
        delay: Seconds (on the transport's clock) before the outcome.
        headers: Headers of a status-code response.
        content: Body of a status-code response.
    """

    outcome: int | httpx.Response | BaseException | type[BaseException]
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


StepLike: TypeAlias = (
    "int | httpx.Response | BaseException | type[BaseException] | Step | Callable[[httpx.Request], Any]"
)


@dataclass
class RecordedRequest:
    """A request as the scripted transport saw it."""

    method: str
    url: str
    headers: httpx.Headers
    body: bytes
    extensions: dict[str, Any]


class _TrackedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, owner: ScriptedTransport, content: bytes) -> None:
        self._owner = owner
        self._content = content
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield self._content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._content

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._owner._count("closed")

    async def aclose(self) -> None:
        self.close()


class ScriptedTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Play scripted outcomes, sync or async.

    Args:
        script: The steps, consumed one per request.
        default: Step used once the script is exhausted; ``None`` fails the test with an AssertionError.
        clock: Clock for delays.

    Attributes:
        requests: Every request received, in order.
        in_flight: Requests currently being handled.
        cancelled: Requests cancelled during their delay.
        responses: Responses handed out.
        closed: Responses closed by the caller.
    """

    def __init__(
        self,
        script: Iterable[StepLike] = (),
        *,
        default: StepLike | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._script = list(script)
        self._default = default
        self._clock = clock
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.cancelled = 0
        self.responses = 0
        self.closed = 0

    @property
    def open_responses(self) -> int:
        """Responses handed out and not yet closed."""
        return self.responses - self.closed

    def _count(self, name: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def _next(self, request: httpx.Request) -> Step:
        with self._lock:
            if self._script:
                step: Any = self._script.pop(0)
            elif self._default is not None:
                step = self._default
            else:
                raise AssertionError(f"script exhausted at request {len(self.requests)}: {request!r}")
        if callable(step) and not isinstance(step, type):
            step = step(request)
        return step if isinstance(step, Step) else Step(step)

    def _record(self, request: httpx.Request, body: bytes) -> None:
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method, str(request.url), request.headers.copy(), body, dict(request.extensions)
                )
            )

    def _outcome(self, request: httpx.Request, step: Step) -> httpx.Response:
        outcome = step.outcome
        if isinstance(outcome, type) and issubclass(outcome, httpx.RequestError):
            raise outcome(f"scripted {outcome.__name__}", request=request)
        if isinstance(outcome, type):
            raise outcome()
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, int):
            response = httpx.Response(outcome, headers=step.headers, stream=_TrackedStream(self, step.content))
        else:
            response = outcome
        self._count("responses")
        return response

    @staticmethod
    def _read_timeout(request: httpx.Request) -> float | None:
        timeout = request.extensions.get("timeout") or {}
        value = timeout.get("read")
        return None if value is None else float(value)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        body = b"".join(request.stream)
        self._record(request, body)
        step = self._next(request)
        self._count("in_flight")
        try:
            if step.delay:
                limit = self._read_timeout(request)
                if limit is not None and step.delay > limit:
                    self._clock.sleep(limit)
                    raise httpx.ReadTimeout("scripted read timeout", request=request)
                self._clock.sleep(step.delay)
            return self._outcome(request, step)
        finally:
            self._count("in_flight", -1)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        body = b"".join([chunk async for chunk in request.stream])
        self._record(request, body)
        step = self._next(request)
        self._count("in_flight")
        try:
            if step.delay:
                limit = self._read_timeout(request)
                try:
                    if limit is not None and step.delay > limit:
                        await self._clock.asleep(limit)
                        raise httpx.ReadTimeout("scripted read timeout", request=request)
                    await self._clock.asleep(step.delay)
                except anyio.get_cancelled_exc_class():
                    self._count("cancelled")
                    raise
            return self._outcome(request, step)
        finally:
            self._count("in_flight", -1)
