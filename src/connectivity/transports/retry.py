"""Retries as a transport.

The loop lives here; every decision lives in :class:`connectivity.Retry` and its :class:`RetryState`. On the
success path the transport pays for one dictionary lookup, one budget deposit (if a budget is set) and one set
lookup on the status; the retry state is created only when an attempt fails.

Errors and the final outcome:

* a retryable response that is not retried (attempts or budget exhausted, non-idempotent method, deadline too
  close) is returned as it is, like Envoy returns the upstream's 503; its :class:`CallRecord` says why;
* an error that is not retryable propagates unchanged;
* when retries were made and the last attempt still failed with an error, :class:`RetriesExhaustedError` (or
  :class:`RetryBudgetExhaustedError`) is raised from that error; if no retry was made the error propagates as is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from connectivity._http import httpx
from connectivity.errors import RetriesExhaustedError, RetryBudgetExhaustedError
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.deadline import _current
from connectivity.policies.retry import CONNECT_FAILURE, Retry, RetryDecision, RetryState
from connectivity.telemetry import events, semconv
from connectivity.telemetry.events import _CALL, emit
from connectivity.telemetry.redaction import DEFAULT_REDACTION
from connectivity.transports._base import Inner, Layer
from connectivity.transports._body import is_replayable, make_replayable
from connectivity.transports._observe import CallTrace
from connectivity.transports._outcome import (
    EXTENSION,
    FIRST_TRY,
    adiscard,
    discard,
    failure_kind,
    next_attempt,
    set_record,
)
from connectivity.transports.timeout import TimeoutTransport, clamp_timeouts

__all__ = ["ATTEMPT_HEADER", "RetryTransport"]

_OVERRIDE = "connectivity.retry"
_BYTES = httpx.ByteStream
"""A body held in memory: replayable as it is."""
ATTEMPT_HEADER = "x-connectivity-attempt"
"""Sent on retries (absent on the first attempt), like Envoy's ``x-envoy-attempt-count``."""
_SyncCall = Callable[[httpx.Request], httpx.Response]
_AsyncCall = Callable[[httpx.Request], Awaitable[httpx.Response]]


class RetryTransport(Layer):
    """Retry failed attempts according to a :class:`connectivity.Retry` policy.

    Args:
        inner: The transport to call.
        retry: The policy (default: ``Retry()``: 3 attempts, idempotent methods, connect failures, resets, read
            timeouts, 502/503/504 and 429 with ``Retry-After``).
        clock: Time source for backoff waits and ``Retry-After`` dates.

    A per-request override goes in ``request.extensions["connectivity.retry"]`` (a ``Retry``). The outcome is in
    ``response.extensions["connectivity"]`` (a :class:`CallRecord`).

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_per_try", "_retry")

    def __init__(self, inner: Inner, retry: Retry | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(inner)
        self._retry = retry if retry is not None else Retry()
        if not isinstance(self._retry, Retry):
            raise TypeError(f"retry must be a connectivity.Retry, got {type(self._retry).__name__}")
        self._clock = clock
        # A per-try timeout configured on the policy is enforced by an inner TimeoutTransport of our own.
        self._per_try: dict[float, TimeoutTransport] = {}
        if type(self)._handles_own_calls():
            # A call goes straight to _send: no frame of handle_request's in between.
            self.handle_request = partial(RetryTransport._send, self, None)  # type: ignore[method-assign]
            self.handle_async_request = partial(RetryTransport._asend, self, None)  # type: ignore[method-assign]

    @property
    def retry(self) -> Retry:
        """The default policy."""
        return self._retry

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer: the policy, and the budget's balance right now."""
        policy = self._retry
        described: dict[str, object] = {
            "attempts": policy.attempts,
            "retry_on": sorted(policy.retry_on),
            "statuses": sorted(policy.statuses),
            "methods": sorted(policy.methods),
            "per_try_timeout_s": policy.per_try_timeout,
            "retry_after_cap_s": policy.retry_after_cap,
        }
        if policy.budget is not None:
            described["budget"] = {
                "ratio": policy.budget.ratio,
                "min_per_second": policy.budget.min_per_second,
                "ttl_s": policy.budget.ttl,
                "remaining": round(policy.budget.balance(), 3),
            }
        return described

    def _per_try_layer(self, policy: Retry) -> TimeoutTransport:
        assert policy.per_try_timeout is not None
        layer = self._per_try.get(policy.per_try_timeout)
        if layer is None:
            layer = self._per_try[policy.per_try_timeout] = TimeoutTransport(
                self._inner, policy.per_try_timeout, per_try=True, clock=self._clock
            )
        return layer

    def _observer(self) -> CallTrace | None:
        """The tracing layer's record of this call, when that layer asked this one to report every attempt."""
        call = _CALL.get()
        return call if isinstance(call, CallTrace) and call.owner is self else None

    def _decide(
        self,
        policy: Retry,
        state: RetryState,
        request: httpx.Request,
        reason: str,
        *,
        sent: bool,
        retry_after: str | None = None,
    ) -> RetryDecision:
        ambient = _current.get()
        decision = state.decide(
            reason,
            method_ok=policy.method_allows(
                request.method,
                has_idempotency_key=policy.idempotency_header in request.headers,
                sent=sent,
            ),
            replayable=is_replayable(request),
            retry_after=retry_after,
            remaining=None if ambient is None else ambient.remaining(),
            wall_now=self._clock.time(),
        )
        if decision.retry:
            if ambient is not None:
                # The first attempt was clamped by the deadline's layer; a retry has less time left than that.
                clamp_timeouts(request, max(ambient.remaining() - decision.delay, 0.0))
            number = next_attempt(request)
            request.headers[ATTEMPT_HEADER] = str(number)
            if policy.prefer_other_endpoint:
                request.extensions["connectivity.prefer_other_endpoint"] = True
            emit(
                events.RETRY_SCHEDULED,
                {
                    semconv.CONNECTIVITY_REASON: reason,
                    semconv.CONNECTIVITY_DELAY: decision.delay,
                    semconv.CONNECTIVITY_ATTEMPT: number,
                },
            )
        else:
            gave_up: dict[str, events.AttributeValue] = {
                semconv.CONNECTIVITY_REASON: decision.give_up or "not retryable",
                semconv.CONNECTIVITY_ATTEMPT: state.attempts,
            }
            emit(events.RETRY_GAVE_UP, gave_up)
            if decision.give_up == "retry budget exhausted":
                emit(events.BUDGET_EXHAUSTED, {semconv.CONNECTIVITY_ATTEMPT: state.attempts})
        return decision

    @staticmethod
    def _finish(response: httpx.Response, state: RetryState | None, gave_up: str | None) -> httpx.Response:
        if state is None:
            if EXTENSION not in response.extensions:
                response.extensions[EXTENSION] = FIRST_TRY
        else:
            set_record(
                response,
                attempts=state.attempts,
                reasons=tuple(state.reasons),
                waits=tuple(state.waits),
                gave_up=gave_up,
            )
        return response

    @staticmethod
    def _exhausted(
        request: httpx.Request, state: RetryState, decision: RetryDecision, exc: Exception
    ) -> Exception:
        if state.attempts == 1 and decision.give_up != "retry budget exhausted":
            return exc
        ambient = _current.get()
        if ambient is not None and ambient.expired:
            return exc  # the deadline's layer reports this as DeadlineExceededError, chaining exc
        kind = RetryBudgetExhaustedError if decision.give_up == "retry budget exhausted" else RetriesExhaustedError
        error: Exception = kind(
            f"{request.method} {DEFAULT_REDACTION.url(str(request.url))} failed after {state.attempts} attempt(s) "
            f"({decision.give_up}); last error: {type(exc).__name__}: {exc}",
            request=request,
            attempts=state.attempts,
            reasons=tuple(state.reasons),
        )
        return error

    def _on_error(
        self, policy: Retry, state: RetryState | None, request: httpx.Request, exc: httpx.TransportError
    ) -> tuple[RetryState, RetryDecision]:
        """After an attempt raised: the decision to retry, or the error to raise (raised from here)."""
        kind = failure_kind(exc)
        reason = None if kind is None else policy.error_reason(kind)
        if reason is None:
            raise exc
        state = state or policy.start()
        decision = self._decide(policy, state, request, reason, sent=kind != CONNECT_FAILURE)
        if not decision.retry:
            error = self._exhausted(request, state, decision, exc)
            if error is exc:
                raise exc
            raise error from exc
        return state, decision

    def _on_response(
        self, policy: Retry, state: RetryState | None, request: httpx.Request, response: httpx.Response
    ) -> tuple[RetryState | None, RetryDecision | None]:
        """After an attempt answered with one of the policy's statuses: retry (a decision), or return it (None)."""
        retry_after = response.headers.get("retry-after")
        reason = policy.status_reason(response.status_code, retry_after)
        if reason is None:
            self._finish(response, state, None)
            return state, None
        state = state or policy.start()
        decision = self._decide(policy, state, request, reason, sent=True, retry_after=retry_after)
        if not decision.retry:
            self._finish(response, state, decision.give_up)
            return state, None
        return state, decision

    def _under_limit(self, limit: TimeoutTransport) -> tuple[_SyncCall, _AsyncCall] | None:
        """The calls of ``limit`` (a total-timeout layer directly outside), done by this layer in its own frame.

        ``None`` when a subclass handles calls its own way: then ``limit`` calls it as any other inner transport.
        """
        if not type(self)._handles_own_calls():
            return None
        return partial(RetryTransport._send, self, limit), partial(RetryTransport._asend, self, limit)

    @classmethod
    def _handles_own_calls(cls) -> bool:
        return (
            cls.handle_request is RetryTransport.handle_request
            and cls.handle_async_request is RetryTransport.handle_async_request
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Not called once __init__ has bound the call to _send (unless a subclass overrides this method).
        return self._send(None, request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._asend(None, request)

    def _send(self, limit: TimeoutTransport | None, request: httpx.Request) -> httpx.Response:
        """Send ``request``, retrying as the policy allows; first, when ``limit`` is given, open its limit.

        ``limit`` is the total-timeout layer directly outside this one, whose work this call then does (see
        :class:`~connectivity.transports.TimeoutTransport`): it opens the limit before the first attempt, maps a
        timeout that was the limit running out to the limit's error and closes the limit after the last attempt.
        (The limit hands its calls over only when the transports inside bound their own waits by it, so no answer
        can come later than the limit.)
        """
        opened = None if limit is None else limit._open(request)
        try:
            policy: Retry = request.extensions.get(_OVERRIDE) or self._retry
            # Before the first attempt (inline: this runs on every call): a budget deposit, and a streamed body
            # made replayable when it may be sent again.
            budget = policy.budget
            if budget is not None:
                budget.deposit()
            if type(request.stream) is not _BYTES and policy.attempts > 1:
                make_replayable(request, policy.max_replay_bytes)
            target = (
                (self._sync or self._sync_inner())
                if policy.per_try_timeout is None
                else self._per_try_layer(policy)
            )
            state: RetryState | None = None
            observed = None if _CALL.get() is None else self._observer()
            while True:
                try:
                    response = (
                        target.handle_request(request) if observed is None else observed.send(target, request)
                    )
                except httpx.TransportError as exc:
                    state, decision = self._on_error(policy, state, request, exc)
                    self._clock.sleep(decision.delay)
                    continue
                if response.status_code not in policy.statuses:
                    if state is None:  # the success path, inline: most calls end here
                        if EXTENSION not in response.extensions:
                            response.extensions[EXTENSION] = FIRST_TRY
                    else:
                        self._finish(response, state, None)
                    break
                state, retrying = self._on_response(policy, state, request, response)
                if retrying is None:
                    break
                discard(response)
                self._clock.sleep(retrying.delay)
        except httpx.TimeoutException as exc:
            if (
                opened is None
                or limit is None
                or (error := limit._settle(request, opened[0], opened[1], exc)) is exc
            ):
                raise
            raise error from exc
        finally:
            if opened is not None and limit is not None:
                limit._close(request, opened[2], opened[3])
        return response

    async def _asend(self, limit: TimeoutTransport | None, request: httpx.Request) -> httpx.Response:
        """:meth:`_send` for ``httpx.AsyncClient``."""
        opened = None if limit is None else limit._open(request)
        try:
            policy: Retry = request.extensions.get(_OVERRIDE) or self._retry
            budget = policy.budget
            if budget is not None:
                budget.deposit()
            if type(request.stream) is not _BYTES and policy.attempts > 1:
                make_replayable(request, policy.max_replay_bytes)
            target = (
                (self._async or self._async_inner())
                if policy.per_try_timeout is None
                else self._per_try_layer(policy)
            )
            state: RetryState | None = None
            observed = None if _CALL.get() is None else self._observer()
            while True:
                try:
                    if observed is None:
                        response = await target.handle_async_request(request)
                    else:
                        response = await observed.asend(target, request)
                except httpx.TransportError as exc:
                    state, decision = self._on_error(policy, state, request, exc)
                    await self._clock.asleep(decision.delay)
                    continue
                if response.status_code not in policy.statuses:
                    if state is None:  # the success path, inline: most calls end here
                        if EXTENSION not in response.extensions:
                            response.extensions[EXTENSION] = FIRST_TRY
                    else:
                        self._finish(response, state, None)
                    break
                state, retrying = self._on_response(policy, state, request, response)
                if retrying is None:
                    break
                await adiscard(response)
                await self._clock.asleep(retrying.delay)
        except httpx.TimeoutException as exc:
            if (
                opened is None
                or limit is None
                or (error := limit._settle(request, opened[0], opened[1], exc)) is exc
            ):
                raise
            raise error from exc
        finally:
            if opened is not None and limit is not None:
                limit._close(request, opened[2], opened[3])
        return response
