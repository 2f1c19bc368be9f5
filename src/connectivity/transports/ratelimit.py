"""Client-side rate limiting as a transport: wait for (or refuse) what the limiter does not allow yet, and hold off
a host that says it is throttling us.

Theory of operation: every decision lives in the limiter (:class:`connectivity.RateLimiter`, or a shared one with
the same interface such as ``connectivity.backends.redis_ratelimit.RedisRateLimiter``); this layer picks the key,
asks, and acts on the answer.

**Keys.** ``scope="client"``: one key for the whole client; ``"host"``: one per ``host:port``; ``"route"``: one
per method and route, the route being ``request.extensions["connectivity.route"]`` (a path template such as
``"/users/{id}"``, so that every user shares one key) or else the request path.

**Waiting** (``mode="wait"``). A call the limiter refuses waits until it would be allowed, on the transport's
clock. Waiters of one key form a FIFO queue: only the head of the queue asks the limiter, and a newcomer that finds
others waiting queues behind them, even if a permit happens to be free at that instant, so nobody is overtaken.
Before joining, a call works out its wait from the limiter (the time until ``queued + 1`` calls would be allowed,
which GCRA answers exactly) and, if that is longer than ``max_wait`` or than what is left of the ambient deadline
(:func:`connectivity.deadline`), it is refused at once with :class:`~connectivity.RateLimitedError` instead of
waiting for nothing. A waiter that is cancelled leaves the queue having taken nothing (refused requests never
consume), and the next one takes its place at the head. Async waits sleep on ``clock.asleep`` (a
:class:`~connectivity.testing.FakeClock` drives them); sync waits on ``clock.sleep``, or, behind another thread,
on a :class:`threading.Event`. The queue belongs to this transport: two transports sharing a limiter are each
fair among their own callers.

**Refusing** (``mode="reject"``): a refused call raises :class:`~connectivity.RateLimitedError` with
``retry_after`` at once; there is no queue.

**Cooperative throttling** (``adapt=True``). An upstream is *held off* when it answers 429 or 503 with a valid
``Retry-After`` (delay-seconds or an HTTP-date), or when any response carries IETF fields
(draft-ietf-httpapi-ratelimit-headers-10) saying a quota is spent: a ``RateLimit`` item with ``r=0`` (for its
``t`` seconds, or the window ``w`` of its policy when ``t`` is missing), or a ``RateLimit-Policy`` item granting
``q=0`` (for its ``w``). No call to that ``host:port`` then leaves before the time is up, whatever the scope: the
transport keeps the hold-off itself, and also tells the limiter (``limiter.hold_off(host, seconds)``) so that a
limiter shared with other clients or processes holds off too. ``Retry-After`` takes precedence over
``RateLimit``, as the draft says; a hold-off is capped at ``max_hold_off`` (a server, or anyone in the middle,
must not be able to switch a client off for a day). Malformed fields are ignored, never raised.

Every wait emits :data:`~connectivity.telemetry.events.RATE_LIMIT_WAIT` and every refusal
:data:`~connectivity.telemetry.events.RATE_LIMIT_REFUSED` (reason: the limit's name, or ``"retry-after"`` for a
hold-off). The limiter is registered with the status app under ``"limiters"``.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread

from connectivity._http import httpx
from connectivity.errors import ConfigError, RateLimitedError
from connectivity.policies._validate import finite_non_negative, finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.deadline import current_deadline
from connectivity.policies.ratelimit import RateLimiter
from connectivity.telemetry import events, semconv
from connectivity.telemetry.redaction import DEFAULT_REDACTION
from connectivity.transports._base import Inner, Layer
from connectivity.transports._ratelimit_fields import THROTTLE_STATUSES, hold_off_seconds
from connectivity.transports._ratelimit_queue import Queues, Ticket
from connectivity.transports._waiters import AsyncWaiter, SyncWaiter

__all__ = ["EXTENSION", "HOLD_OFF", "ROUTE_EXTENSION", "THROTTLE_STATUSES", "RateLimitTransport"]

Scope = Literal["client", "host", "route"]
Mode = Literal["wait", "reject"]
_SCOPES = ("client", "host", "route")
_MODES = ("wait", "reject")

ROUTE_EXTENSION = "connectivity.route"
"""Request extension holding the route template (e.g. ``"/users/{id}"``) that ``scope="route"`` keys by."""
EXTENSION = "connectivity.rate_limit"
"""Per-request override: ``False`` skips the limiter for this call; a number > 0 is the call's cost."""
HOLD_OFF = "retry-after"
"""The reason reported (events, errors) when a call waits for or is refused by a host's hold-off."""

_MIN_SLEEP = 0.001  # a limiter that says "refused, retry in 0 s" must not make a waiter spin
_log = logging.getLogger("connectivity.ratelimit")


def _register(limiter: Any) -> None:
    name = getattr(limiter, "name", None)
    if not isinstance(name, str) or not name.strip() or not callable(getattr(limiter, "status", None)):
        return  # a duck-typed limiter without a name or a status has nothing to show
    # Imported here: the admin registry imports this package (for Layer), so a top-level import would be a cycle.
    from connectivity.admin.registry import register

    register("limiters", name, limiter)


def _host(request: httpx.Request) -> str:
    return request.url.netloc.decode("ascii")


class RateLimitTransport(Layer):
    """Keep outbound calls within a rate limit: wait for a permit (FIFO, bounded) or refuse, and back off a host
    that answers 429/503 with ``Retry-After`` or says its quota is exhausted.

    Args:
        inner: The transport to call.
        limiter: The policy: a :class:`connectivity.RateLimiter`, or any object with the same interface
            (``try_acquire``, ``peek``, ``hold_off``, ``name``); one with ``remote = True`` is awaited through
            its ``atry_acquire`` / ``apeek`` in async code (and ``ahold_off`` if it has one, else ``hold_off`` in a
            worker thread).
        scope: ``"client"`` (one key), ``"host"`` (one per ``host:port``) or ``"route"`` (one per method and route
            template from ``request.extensions["connectivity.route"]``, else per path).
        mode: ``"wait"`` until permitted, or ``"reject"`` at once with :class:`~connectivity.RateLimitedError`.
        max_wait: The longest a call may wait for a permit, in seconds (``mode="wait"``); the ambient deadline
            may shorten it.
        clock: Time source for waits and hold-offs (inject :class:`~connectivity.testing.FakeClock` in tests).
        adapt: Hold off a host that asks for it (``Retry-After`` on 429/503, exhausted ``RateLimit`` fields).
        max_hold_off: The longest hold-off a response can impose, in seconds.

    Raises:
        ConfigError: An argument is out of range.
        RateLimitedError: (from a call) The limiter refused (``mode="reject"``), or the wait for a permit would
            outlast ``max_wait`` or the deadline; nothing was sent. ``retry_after`` says when it would pass.

    A call's cost is 1, or ``request.extensions["connectivity.rate_limit"]`` when that is a number > 0;
    ``False`` there lets the call through without asking the limiter (hold-offs still apply to later calls).

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_adapt",
        "_clock",
        "_holds",
        "_limiter",
        "_lock",
        "_max_hold_off",
        "_max_wait",
        "_mode",
        "_queues",
        "_remote",
        "_scope",
    )

    def __init__(
        self,
        inner: Inner,
        limiter: RateLimiter | Any,
        *,
        scope: Scope = "client",
        mode: Mode = "wait",
        max_wait: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        adapt: bool = True,
        max_hold_off: float = 600.0,
    ) -> None:
        super().__init__(inner)
        if not all(callable(getattr(limiter, method, None)) for method in ("try_acquire", "peek", "hold_off")):
            raise TypeError(
                "limiter must be a connectivity.RateLimiter (or have try_acquire, peek and hold_off), "
                f"got {type(limiter).__name__}"
            )
        if scope not in _SCOPES:
            raise ConfigError("RateLimitTransport.scope", scope, f"must be one of {', '.join(_SCOPES)}")
        if mode not in _MODES:
            raise ConfigError("RateLimitTransport.mode", mode, f"must be one of {', '.join(_MODES)}")
        if not isinstance(adapt, bool):
            raise ConfigError("RateLimitTransport.adapt", adapt, "must be True or False")
        self._limiter: Any = limiter
        self._scope = scope
        self._mode = mode
        self._max_wait = finite_non_negative("RateLimitTransport.max_wait", max_wait)
        self._max_hold_off = finite_positive("RateLimitTransport.max_hold_off", max_hold_off)
        self._clock = clock
        self._adapt = adapt
        self._remote = bool(getattr(limiter, "remote", False))
        self._lock = threading.Lock()
        self._queues = Queues()
        self._holds: dict[str, float] = {}  # host:port -> clock time until which nothing is sent there
        _register(limiter)

    @property
    def limiter(self) -> RateLimiter | Any:
        """The policy."""
        return self._limiter

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer: configuration, callers waiting, hosts held off."""
        now = self._clock.now()
        waiting = self._queues.waiting()
        with self._lock:
            held = {host: round(until - now, 3) for host, until in self._holds.items() if until > now}
        return {
            "limiter": getattr(self._limiter, "name", type(self._limiter).__name__),
            "scope": self._scope,
            "mode": self._mode,
            "max_wait": self._max_wait,
            "adapt": self._adapt,
            "waiting": waiting,
            "held_off": held,
        }

    # -- keys, budgets, refusals -------------------------------------------------------------------------------
    def _key(self, request: httpx.Request) -> str:
        if self._scope == "client":
            return ""
        if self._scope == "host":
            return _host(request)
        route = request.extensions.get(ROUTE_EXTENSION)
        return f"{request.method} {route if isinstance(route, str) and route else request.url.path}"

    @staticmethod
    def _cost(request: httpx.Request) -> float | None:
        value = request.extensions.get(EXTENSION, 1.0)
        if value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            return 1.0
        return float(value)

    def _held(self, host: str) -> float:
        """Seconds ``host`` is still held off (0 when it is not)."""
        if not self._holds:  # the common case, without the lock
            return 0.0
        now = self._clock.now()
        with self._lock:
            until = self._holds.get(host)
            if until is None:
                return 0.0
            if until <= now:
                del self._holds[host]
                return 0.0
            return until - now

    def _budget(self) -> tuple[float, str]:
        """How long a call may wait here, and what sets that limit."""
        budget, bound = self._max_wait, "max_wait"
        deadline = current_deadline()
        if deadline is not None:
            left = max(0.0, deadline.remaining())
            if left < budget:
                budget, bound = left, "the deadline"
        return budget, bound

    def _refused(self, request: httpx.Request, limit: str, retry_after: float, why: str) -> RateLimitedError:
        events.emit(
            events.RATE_LIMIT_REFUSED,
            {semconv.CONNECTIVITY_REASON: limit, semconv.CONNECTIVITY_DELAY: retry_after},
        )
        name = str(getattr(self._limiter, "name", ""))
        url = DEFAULT_REDACTION.url(str(request.url))
        return RateLimitedError(
            f"rate limit {limit!r} of {name!r} refused {request.method} {url}: {why}; nothing was sent",
            request=request,
            limiter=name,
            limit=limit,
            retry_after=retry_after,
        )

    def _too_long(
        self, request: httpx.Request, limit: str, wait: float, budget: float, bound: str
    ) -> RateLimitedError:
        return self._refused(
            request, limit, wait, f"it would pass in {wait:.3g} s, longer than {bound} allows ({budget:.3g} s)"
        )

    def _still_queued(self, request: httpx.Request, limit: str, estimate: float, bound: str) -> RateLimitedError:
        # The wait was expected to fit; the queue moved slower (a hold-off, another user of a shared limiter).
        return self._refused(request, limit, estimate, f"still queued behind other calls when {bound} ran out")

    # -- cooperative throttling --------------------------------------------------------------------------------
    def _hold_for(self, response: httpx.Response) -> float | None:
        try:
            seconds = hold_off_seconds(response.status_code, response.headers, now=self._clock.time())
        except Exception:  # a parser bug must not turn a good response into an error
            _log.exception("could not read the rate-limit fields of a response")
            return None
        if seconds is None or seconds <= 0:
            return None
        return min(seconds, self._max_hold_off)

    def _record_hold(self, host: str, seconds: float) -> None:
        now = self._clock.now()
        with self._lock:
            until = now + seconds
            if until > self._holds.get(host, -math.inf):
                self._holds[host] = until
            for other in [other for other, until in self._holds.items() if until <= now]:
                del self._holds[other]

    def _observe(self, request: httpx.Request, response: httpx.Response) -> None:
        seconds = self._hold_for(response)
        if seconds is None:
            return
        host = _host(request)
        self._record_hold(host, seconds)
        try:
            self._limiter.hold_off(host, seconds)
        except Exception:  # a shared limiter that is unreachable: the local hold-off still applies
            _log.warning(
                "limiter %r could not record a hold-off", getattr(self._limiter, "name", ""), exc_info=True
            )

    async def _aobserve(self, request: httpx.Request, response: httpx.Response) -> None:
        seconds = self._hold_for(response)
        if seconds is None:
            return
        host = _host(request)
        self._record_hold(host, seconds)
        try:
            if not self._remote:
                self._limiter.hold_off(host, seconds)
            elif callable(ahold_off := getattr(self._limiter, "ahold_off", None)):
                await ahold_off(host, seconds)
            else:  # a shared store's round trip must not block the event loop
                await anyio.to_thread.run_sync(self._limiter.hold_off, host, seconds)
        except Exception:
            _log.warning(
                "limiter %r could not record a hold-off", getattr(self._limiter, "name", ""), exc_info=True
            )

    # -- admission ---------------------------------------------------------------------------------------------
    def _admit(self, request: httpx.Request) -> None:
        """Return when the call may go (sync), or raise the refusal."""
        cost = self._cost(request)
        if cost is None:
            return
        limiter, key, host = self._limiter, self._key(request), _host(request)
        hold = self._held(host)
        if self._mode == "reject":
            if hold > 0:
                raise self._refused(request, HOLD_OFF, hold, f"the host is held off for {hold:.3g} s")
            decision = limiter.try_acquire(key, cost)
            if not decision.allowed:
                raise self._refused(
                    request, decision.limit.name, decision.retry_after, f"retry in {decision.retry_after:.3g} s"
                )
            return
        ahead = self._queues.ahead(key)
        if not ahead and hold <= 0:
            decision = limiter.try_acquire(key, cost)
            if decision.allowed:
                return
        else:
            decision = limiter.peek(key, ahead + cost)
        wait, limit = (
            (hold, HOLD_OFF) if hold > decision.retry_after else (decision.retry_after, decision.limit.name)
        )
        budget, bound = self._budget()
        if wait > budget:
            raise self._too_long(request, limit, wait, budget, bound)
        events.emit(events.RATE_LIMIT_WAIT, {semconv.CONNECTIVITY_REASON: limit, semconv.CONNECTIVITY_DELAY: wait})
        clock = self._clock
        give_up_at = clock.now() + budget
        waiter = SyncWaiter()
        ticket = Ticket(waiter, cost)
        self._queues.enqueue(key, ticket)
        try:
            while True:
                if not ticket.at_front():
                    waiter.event.wait(max(0.0, give_up_at - clock.now()))
                    if not ticket.at_front():
                        estimate = max(limiter.peek(key, self._queues.ahead(key)).retry_after, self._held(host))
                        raise self._still_queued(request, limit, estimate, bound)
                    continue
                hold = self._held(host)
                if hold > 0:
                    delay, limit = hold, HOLD_OFF
                else:
                    decision = limiter.try_acquire(key, cost)
                    if decision.allowed:
                        return
                    delay, limit = decision.retry_after, decision.limit.name
                if clock.now() + delay > give_up_at + 1e-9:
                    raise self._too_long(request, limit, delay, budget, bound)
                clock.sleep(max(delay, _MIN_SLEEP))
        finally:
            self._queues.dequeue(key, ticket)

    async def _try(self, key: str, cost: float) -> Any:
        if self._remote:
            return await self._limiter.atry_acquire(key, cost)
        return self._limiter.try_acquire(key, cost)

    async def _peek(self, key: str, cost: float) -> Any:
        if self._remote:
            return await self._limiter.apeek(key, cost)
        return self._limiter.peek(key, cost)

    async def _aadmit(self, request: httpx.Request) -> None:
        """Return when the call may go (async), or raise the refusal."""
        cost = self._cost(request)
        if cost is None:
            return
        key, host = self._key(request), _host(request)
        hold = self._held(host)
        if self._mode == "reject":
            if hold > 0:
                raise self._refused(request, HOLD_OFF, hold, f"the host is held off for {hold:.3g} s")
            decision = await self._try(key, cost)
            if not decision.allowed:
                raise self._refused(
                    request, decision.limit.name, decision.retry_after, f"retry in {decision.retry_after:.3g} s"
                )
            return
        ahead = self._queues.ahead(key)
        if not ahead and hold <= 0:
            decision = await self._try(key, cost)
            if decision.allowed:
                return
        else:
            decision = await self._peek(key, ahead + cost)
        wait, limit = (
            (hold, HOLD_OFF) if hold > decision.retry_after else (decision.retry_after, decision.limit.name)
        )
        budget, bound = self._budget()
        if wait > budget:
            raise self._too_long(request, limit, wait, budget, bound)
        events.emit(events.RATE_LIMIT_WAIT, {semconv.CONNECTIVITY_REASON: limit, semconv.CONNECTIVITY_DELAY: wait})
        clock = self._clock
        give_up_at = clock.now() + budget
        waiter = AsyncWaiter()
        ticket = Ticket(waiter, cost)
        self._queues.enqueue(key, ticket)
        try:
            while True:
                if not ticket.at_front():
                    with waiter.scope:
                        await clock.asleep(max(0.0, give_up_at - clock.now()))
                    if not ticket.at_front():
                        estimate = max(
                            (await self._peek(key, self._queues.ahead(key))).retry_after, self._held(host)
                        )
                        raise self._still_queued(request, limit, estimate, bound)
                    continue
                hold = self._held(host)
                if hold > 0:
                    delay, limit = hold, HOLD_OFF
                else:
                    decision = await self._try(key, cost)
                    if decision.allowed:
                        return
                    delay, limit = decision.retry_after, decision.limit.name
                if clock.now() + delay > give_up_at + 1e-9:
                    raise self._too_long(request, limit, delay, budget, bound)
                await clock.asleep(max(delay, _MIN_SLEEP))
        finally:
            self._queues.dequeue(key, ticket)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        self._admit(request)
        response = inner.handle_request(request)
        if self._adapt:
            self._observe(request, response)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        await self._aadmit(request)
        response = await inner.handle_async_request(request)
        if self._adapt:
            await self._aobserve(request, response)
        return response
