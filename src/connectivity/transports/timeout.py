"""Deadlines and per-try timeouts as a transport.

Theory of operation: a :class:`TimeoutTransport` works out how long the call may take: its own limit, or what is
left of the ambient deadline (:func:`connectivity.deadline`, or an outer ``TimeoutTransport``), whichever is
shorter. Then it

* refuses to start an attempt when nothing is left (no attempt outlives the deadline);
* makes the remaining budget the ambient deadline for the layers inside it (so a retry layer will not wait out a
  backoff it has no time for);
* over the deadline-aware :class:`~connectivity.transports.HTTPTransport`, relies on the connection: every
  connect, read and write (the response body's included) is bounded at the socket by what is left, so only the
  pool timeout is clamped and no cancel scope is needed;
* over any other transport, runs an async call in a cancel scope that fires at the deadline (the inner request
  is cancelled, its connection dropped); a sync call, which nothing can interrupt, gets httpx's timeouts clamped
  and its result checked on return;
* optionally tells the upstream how long it has, in ``x-connectivity-timeout-ms``.

When the limit that fired was its own per-try limit it raises :class:`~connectivity.PerTryTimeoutError` (a retry
layer outside may try again); when the total deadline ran out it raises
:class:`~connectivity.DeadlineExceededError` (nobody retries that).

Directly over a :class:`~connectivity.transports.RetryTransport` whose attempts are bounded at the socket (the
stack :func:`connectivity.transport` builds), a total limit hands its calls to the retry layer, which opens and
closes this layer's limit around its loop (this layer's :meth:`TimeoutTransport._open`, ``_settle`` and
``_close``) in the same frame. The work and the errors are the same, for one frame fewer per call.
"""

from __future__ import annotations

from contextvars import Token

from connectivity._http import httpx
from connectivity.errors import DeadlineExceededError, PerTryTimeoutError
from connectivity.policies._validate import optional_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.deadline import DEADLINE_HEADER, Deadline, _current
from connectivity.policies.timeout import Timeout
from connectivity.telemetry import events, semconv
from connectivity.telemetry.events import emit
from connectivity.transports._base import Inner, Layer

__all__ = ["TimeoutTransport", "clamp_timeouts", "deadline_aware"]

_HTTPX_TIMEOUT_KEYS = ("connect", "read", "write", "pool")


_UNCHANGED = object()
_Opened = tuple[Deadline, float, object, "Token[Deadline | None] | None"]
"""What :meth:`TimeoutTransport._open` returns: the deadline, its seconds, the timeouts to restore, the token."""


def clamp_timeouts(request: httpx.Request, left: float, *, pool_only: bool = False) -> object:
    """Lower httpx's per-operation timeouts to ``left`` seconds; returns what to hand to :func:`_restore`.

    With ``pool_only``, only the pool timeout is lowered, and nothing is copied when it is already short enough.
    """
    extensions = request.extensions
    original = extensions.get("timeout")
    if pool_only and original:
        pool = original.get("pool")
        if pool is not None and pool <= left:
            return _UNCHANGED
        extensions["timeout"] = {**original, "pool": left}
    elif original:
        extensions["timeout"] = {
            key: left if (value := original.get(key)) is None or value > left else value
            for key in _HTTPX_TIMEOUT_KEYS
        }
    else:
        extensions["timeout"] = dict.fromkeys(_HTTPX_TIMEOUT_KEYS, left)
    return original


def deadline_aware(transport: object) -> bool:
    """Whether ``transport`` enforces the ambient deadline on its own (at the socket, or by a layer that does)."""
    while isinstance(transport, Layer):
        if isinstance(transport, TimeoutTransport):
            return True
        transport = transport.inner
    return bool(getattr(transport, "connectivity_deadline_aware", False))


def _spent(deadline: Deadline) -> bool:
    # The timer that fired was the deadline's (give or take clock granularity), not an unrelated httpx timeout.
    return deadline.expires_at - deadline.clock.now() <= 1e-3


def _restore(request: httpx.Request, original: object) -> None:
    if original is None:
        request.extensions.pop("timeout", None)
    else:
        request.extensions["timeout"] = original


class TimeoutTransport(Layer):
    """Bound an outbound call by a total deadline or a per-try timeout.

    Args:
        inner: The transport to call.
        timeout: Seconds allowed (``None``: only an ambient deadline applies). A :class:`connectivity.Timeout`
            is accepted too: its ``total`` is used, or its ``per_try`` when ``per_try=True``.
        per_try: This layer limits a single attempt: exceeding it raises ``PerTryTimeoutError`` (retryable)
            instead of ``DeadlineExceededError``, and the response body is bounded by the call's deadline only.
        propagate: Send the remaining budget upstream in ``x-connectivity-timeout-ms``.
        clock: Time source.

    Per-request overrides (seconds, or ``None`` for no limit of this layer's own) go in
    ``request.extensions["connectivity.timeout"]`` for a total layer and ``["connectivity.per_try_timeout"]`` for
    a per-try layer.

    A total limit also covers reading the response body over a deadline-aware network transport (the connection
    bounds each read of the body by what is left, and running out raises ``DeadlineExceededError``); over any
    other transport it covers the call until the response head arrives.

    .. versionadded:: 0.1
    """

    __slots__ = ("_at_socket", "_clock", "_override", "_per_try", "_propagate", "_timeout")

    def __init__(
        self,
        inner: Inner,
        timeout: float | Timeout | None = None,
        *,
        per_try: bool = False,
        propagate: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(inner)
        if isinstance(timeout, Timeout):
            timeout = timeout.per_try if per_try else timeout.total
        self._timeout = optional_positive("TimeoutTransport.timeout", timeout)
        self._per_try = per_try
        self._override = "connectivity.per_try_timeout" if per_try else "connectivity.timeout"
        self._propagate = propagate
        self._clock = clock
        # Over a deadline-aware network transport the limit is enforced at the socket (see _network.py); over any
        # other transport an async call gets a cancel scope that fires at the limit.
        self._at_socket = deadline_aware(inner)
        if self._at_socket and not per_try and type(self)._handles_own_calls():
            fuse = getattr(inner, "_under_limit", None)
            handlers = None if fuse is None else fuse(self)
            if handlers is not None:
                # The retry layer does this layer's work in its own frame (see the module's docstring).
                self.handle_request, self.handle_async_request = handlers  # type: ignore[method-assign]

    @classmethod
    def _handles_own_calls(cls) -> bool:
        """Whether this class handles calls as ``TimeoutTransport`` does (a subclass may override them)."""
        return (
            cls.handle_request is TimeoutTransport.handle_request
            and cls.handle_async_request is TimeoutTransport.handle_async_request
        )

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer."""
        return {
            "timeout_s": self._timeout,
            "kind": "per-try" if self._per_try else "total",
            "propagate": self._propagate,
            "enforced_at_socket": self._at_socket,
        }

    def _open(self, request: httpx.Request) -> _Opened | None:
        """Work out the limit in force, clamp httpx's timeouts to it, announce it upstream and make it ambient.

        Returns the deadline in force, the seconds it allows (for the layer's cancel scope and error messages),
        what to restore in the request's timeouts and the context token to reset (see :meth:`_close`); ``None``
        when no limit applies. One method and a tuple on the hot path, not several calls and objects: each costs.
        """
        extensions = request.extensions
        own = extensions.get(self._override, self._timeout)
        ambient = _current.get()
        if ambient is None:
            if own is None:
                return None
            left = own
            clock = self._clock
            deadline = Deadline(clock.now() + own, clock, self._per_try)
            token: Token[Deadline | None] | None = _current.set(deadline)
        else:
            left = ambient.expires_at - ambient.clock.now()
            if own is not None and own < left:  # our own limit is tighter
                left = own
                clock = self._clock
                # A per-try limit narrows the call's deadline; the body, read later, is bounded by that.
                deadline = Deadline(clock.now() + own, clock, self._per_try, ambient if self._per_try else None)
                token = _current.set(deadline)
            elif left <= 0:
                emit(
                    events.DEADLINE_EXCEEDED,
                    {semconv.CONNECTIVITY_REASON: "deadline", semconv.CONNECTIVITY_DELAY: 0.0},
                )
                raise DeadlineExceededError("deadline exceeded before the request was sent", request=request)
            else:
                deadline = ambient
                token = None
        # Over a deadline-aware transport connect, read and write are bounded at the socket already; only the wait
        # for a pooled connection still needs clamping, and only when it could outlast the deadline.
        original = extensions.get("timeout")
        if not (self._at_socket and original and (pool := original.get("pool")) is not None and pool <= left):
            original = clamp_timeouts(request, left, pool_only=self._at_socket)
        else:
            original = _UNCHANGED
        if self._propagate:
            request.headers[DEADLINE_HEADER] = str(int(left * 1000))
        return deadline, left, original, token

    @staticmethod
    def _close(request: httpx.Request, original: object, token: Token[Deadline | None] | None) -> None:
        """Undo what :meth:`_open` did: the ambient deadline and the request's timeouts."""
        if token is not None:
            _current.reset(token)
        if original is not _UNCHANGED:
            _restore(request, original)

    def _settle(
        self, request: httpx.Request, deadline: Deadline, seconds: float, exc: httpx.TimeoutException
    ) -> httpx.TimeoutException:
        """The error to raise for ``exc``: this layer's own when it was the limit in force that ran out."""
        if not isinstance(exc, (DeadlineExceededError, PerTryTimeoutError)) and _spent(deadline):
            return self._error(request, deadline, seconds)
        return exc

    def _overran(
        self, request: httpx.Request, deadline: Deadline, seconds: float, response: httpx.Response
    ) -> None:
        """Refuse a sync answer that arrived after the limit from a transport that does not bound its own waits.

        A blocking call cannot be interrupted, and such a transport may ignore the clamped timeouts: do not hand
        out a late answer as if it were in time. A deadline-aware transport stops at the limit by itself.
        """
        if deadline.clock.now() >= deadline.expires_at:
            response.close()
            raise self._error(request, deadline, seconds)

    @staticmethod
    def _error(request: httpx.Request, deadline: Deadline, seconds: float) -> httpx.TimeoutException:
        emit(
            events.DEADLINE_EXCEEDED,
            {
                semconv.CONNECTIVITY_REASON: "per-try" if deadline.attempt_only else "deadline",
                semconv.CONNECTIVITY_DELAY: seconds,
            },
        )
        if deadline.attempt_only:
            return PerTryTimeoutError(
                f"attempt exceeded its per-try timeout of {seconds:g} s", request=request, timeout=seconds
            )
        return DeadlineExceededError(f"deadline of {seconds:g} s exceeded", request=request, timeout=seconds)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        opened = self._open(request)
        if opened is None:
            return inner.handle_request(request)
        deadline, seconds, original, token = opened
        try:
            response = inner.handle_request(request)
        except httpx.TimeoutException as exc:
            error = self._settle(request, deadline, seconds, exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._close(request, original, token)
        if not self._at_socket:
            self._overran(request, deadline, seconds, response)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        opened = self._open(request)
        if opened is None:
            return await inner.handle_async_request(request)
        deadline, seconds, original, token = opened
        try:
            if self._at_socket:
                response = await inner.handle_async_request(request)
            else:
                with self._clock.timeout_scope(seconds) as scope:
                    response = await inner.handle_async_request(request)
                if scope.cancelled_caught:
                    raise self._error(request, deadline, seconds)
        except httpx.TimeoutException as exc:
            error = self._settle(request, deadline, seconds, exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._close(request, original, token)
        return response
