"""Hedged requests as a transport.

The schedule and the budget live in :class:`connectivity.Hedge`; which outcomes are acceptable is the retry
policy's classification (a retryable status or error is not acceptable, anything else is final).

Async (``httpx.AsyncClient``): attempts run as tasks in one task group. The first acceptable outcome wins, the
task group is cancelled, which aborts the other attempts mid-flight (their connections are dropped, so the
upstream sees the client go away), and any response that still arrived is closed.

Sync (``httpx.Client``): extra attempts run in worker threads, timed with real time. A blocking read cannot be
interrupted, so a losing attempt runs to completion in the background and its response is closed as soon as it
arrives.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import anyio

from connectivity._http import httpx
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.hedge import Hedge
from connectivity.policies.retry import Retry
from connectivity.telemetry import events, semconv
from connectivity.telemetry.events import _CALL, emit
from connectivity.transports._base import Inner, Layer
from connectivity.transports._observe import CallTrace
from connectivity.transports._outcome import (
    DRAIN_LIMIT,
    EXTENSION,
    FIRST_TRY,
    adiscard,
    discard,
    failure_kind,
    next_attempt,
    set_record,
)
from connectivity.transports.retry import ATTEMPT_HEADER

__all__ = ["HedgingTransport"]

_OVERRIDE = "connectivity.hedge"
Outcome = httpx.Response | Exception


class HedgingTransport(Layer):
    """Send a backup attempt when the first is slow; return the first acceptable answer.

    Args:
        inner: The transport to call.
        hedge: The hedging policy (default ``Hedge()``: one extra attempt after 50 ms).
        retry: The policy whose classification decides which outcomes are failures (default ``Retry()``).
        clock: Time source for the async hedge delay.

    A per-request override goes in ``request.extensions["connectivity.hedge"]`` (a ``Hedge``, or ``False`` to
    send this request once). An override's hedges draw from its own ``budget`` only. The response's
    :class:`CallRecord` tells how many hedges were started and which attempt won.

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_executor", "_executor_lock", "_hedge", "_retry")

    def __init__(
        self,
        inner: Inner,
        hedge: Hedge | None = None,
        *,
        retry: Retry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(inner)
        self._hedge = hedge if hedge is not None else Hedge()
        if not isinstance(self._hedge, Hedge):
            raise TypeError(f"hedge must be a connectivity.Hedge, got {type(self._hedge).__name__}")
        self._retry = retry if retry is not None else Retry()
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    @property
    def hedge(self) -> Hedge:
        """The default policy."""
        return self._hedge

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer."""
        return {
            "delay_s": self._hedge.delay,
            "max_extra": self._hedge.max_extra,
            "methods": sorted(self._hedge.methods),
        }

    def _policy(self, request: httpx.Request) -> Hedge | None:
        hedge: Hedge | None = request.extensions.get(_OVERRIDE, self._hedge)
        if not hedge:  # `False` or `None` turns hedging off for this request
            return None
        eligible = isinstance(request.stream, httpx.ByteStream) and hedge.may_hedge(
            request.method, has_idempotency_key=hedge.idempotency_header in request.headers
        )
        return hedge if eligible else None

    def _acceptable(self, outcome: Outcome) -> bool:
        if isinstance(outcome, httpx.Response):
            status = outcome.status_code
            return status not in self._retry.statuses or (
                self._retry.status_reason(status, outcome.headers.get("retry-after")) is None
            )
        kind = failure_kind(outcome)
        return kind is None or self._retry.error_reason(kind) is None

    @staticmethod
    def _allowed(hedge: Hedge, started: int) -> bool:
        """Whether the next hedge may start (the caller checked the count): a refusal is the budget's."""
        if hedge.allow_extra(started):
            return True
        emit(events.BUDGET_EXHAUSTED, {semconv.CONNECTIVITY_ATTEMPT: started + 1})
        return False

    @staticmethod
    def _attempt(request: httpx.Request, index: int, delay: float = 0.0) -> httpx.Request:
        if index == 0:
            return request
        # Numbered from the call's shared counter, so retries of hedged attempts never repeat a number.
        number = next_attempt(request)
        emit(events.HEDGE_LAUNCHED, {semconv.CONNECTIVITY_ATTEMPT: number, semconv.CONNECTIVITY_DELAY: delay})
        extensions = dict(request.extensions)
        extensions["connectivity.prefer_other_endpoint"] = True
        hedged = httpx.Request(
            request.method, request.url, headers=request.headers, stream=request.stream, extensions=extensions
        )
        hedged.headers[ATTEMPT_HEADER] = str(number)
        return hedged

    @staticmethod
    def _result(outcome: Outcome, index: int, started: int) -> httpx.Response:
        if isinstance(outcome, Exception):
            raise outcome
        if started > 1:
            set_record(outcome, hedges=started - 1, winner=index)
        elif EXTENSION not in outcome.extensions:  # a first attempt that won alone shares the first-try record
            outcome.extensions[EXTENSION] = FIRST_TRY
        return outcome

    # -- async ----------------------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        hedge = self._policy(request)
        call = _CALL.get()
        observed = call if isinstance(call, CallTrace) and call.owner is self else None
        if hedge is None:
            if observed is not None:
                return await observed.asend(inner, request)
            return await inner.handle_async_request(request)
        send, receive = anyio.create_memory_object_stream[tuple[int, Outcome]](hedge.max_extra + 1)
        started = finished = 0
        chosen: tuple[int, Outcome] | None = None
        more = True

        async def run(index: int, attempt: httpx.Request) -> None:
            try:
                outcome: Outcome = (
                    await inner.handle_async_request(attempt)
                    if observed is None
                    else await observed.asend(inner, attempt)
                )
            except Exception as exc:
                outcome = exc
            send.send_nowait((index, outcome))

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(run, 0, request)
                started = 1
                while finished < started:
                    if more and started <= hedge.max_extra:
                        with self._clock.timeout_scope(hedge.delay) as timer:
                            index, outcome = await receive.receive()
                        if timer.cancelled_caught:
                            if self._allowed(hedge, started):
                                group.start_soon(run, started, self._attempt(request, started, hedge.delay))
                                started += 1
                            else:
                                more = False
                            continue
                    else:
                        index, outcome = await receive.receive()
                    finished += 1
                    if chosen is not None:
                        await _aclose(chosen[1])
                    chosen = (index, outcome)
                    if self._acceptable(outcome):
                        group.cancel_scope.cancel()
                        break
                    if isinstance(outcome, httpx.Response) and _small(outcome):
                        # Kept in case every attempt fails; read now so its connection serves the next attempt.
                        try:
                            await outcome.aread()
                        except httpx.HTTPError as exc:
                            chosen = (index, exc)
                    if more and started <= hedge.max_extra and self._allowed(hedge, started):
                        group.start_soon(run, started, self._attempt(request, started))
                        started += 1
            assert chosen is not None
            result = self._result(chosen[1], chosen[0], started)
            chosen = None  # handed over: not ours to close any more
            return result
        finally:
            # However we leave (answer, error, cancellation), close what arrived too late, what we held, and the
            # channel itself.
            send.close()
            with receive:
                while True:
                    try:
                        _, late = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    await _aclose_shielded(late)
            if chosen is not None:
                await _aclose_shielded(chosen[1])

    # -- sync -----------------------------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(thread_name_prefix="connectivity-hedge")
            return self._executor

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        hedge = self._policy(request)
        call = _CALL.get()
        observed = call if isinstance(call, CallTrace) and call.owner is self else None
        if hedge is None:
            return inner.handle_request(request) if observed is None else observed.send(inner, request)
        pool = self._pool()
        # Worker threads do not inherit context variables: carry the ambient deadline over explicitly.
        context = contextvars.copy_context()

        def send(attempt: httpx.Request) -> httpx.Response:
            return inner.handle_request(attempt) if observed is None else observed.send(inner, attempt)

        futures: dict[Future[httpx.Response], int] = {pool.submit(context.copy().run, send, request): 0}
        started = 1
        more = True
        chosen: tuple[int, Outcome] | None = None
        pending = set(futures)
        while pending:
            hedge_now = more and started <= hedge.max_extra
            done, pending = wait(pending, timeout=hedge.delay if hedge_now else None, return_when=FIRST_COMPLETED)
            if not done:
                if self._allowed(hedge, started):
                    future = pool.submit(context.copy().run, send, self._attempt(request, started, hedge.delay))
                    futures[future] = started
                    pending.add(future)
                    started += 1
                else:
                    more = False
                continue
            for future in done:
                error = future.exception()
                outcome: Outcome = future.result() if error is None else _as_exception(error)
                if chosen is not None:
                    _close(chosen[1])
                chosen = (futures[future], outcome)
                if self._acceptable(outcome):
                    for loser in pending:
                        loser.add_done_callback(_close_future)
                    return self._result(outcome, futures[future], started)
                if isinstance(outcome, httpx.Response) and _small(outcome):
                    try:
                        outcome.read()
                    except httpx.HTTPError as exc:
                        chosen = (futures[future], exc)
            if more and started <= hedge.max_extra and self._allowed(hedge, started):
                future = pool.submit(context.copy().run, send, self._attempt(request, started))
                futures[future] = started
                pending.add(future)
                started += 1
        assert chosen is not None
        return self._result(chosen[1], chosen[0], started)

    def close(self) -> None:
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        super().close()


def _as_exception(error: BaseException) -> Exception:
    if isinstance(error, Exception):
        return error
    raise error


def _small(response: httpx.Response) -> bool:
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= DRAIN_LIMIT


def _close(outcome: Outcome) -> None:
    if isinstance(outcome, httpx.Response):
        discard(outcome)


async def _aclose_shielded(outcome: Outcome) -> None:
    with anyio.CancelScope(shield=True):
        await _aclose(outcome)


async def _aclose(outcome: Outcome) -> None:
    if isinstance(outcome, httpx.Response):
        await adiscard(outcome)


def _close_future(future: Future[httpx.Response]) -> None:
    if future.exception() is None:
        discard(future.result())
