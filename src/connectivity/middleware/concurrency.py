"""Load shedding for inbound requests as pure ASGI middleware: a cap on requests in progress.

A request over the limit is answered at once with ``503 Service Unavailable``, a ``Retry-After`` header and a
JSON problem body (RFC 9457), before the app sees it: shedding early costs the server almost nothing, while
queueing would only turn overload into latency for everyone. The limit is either fixed (an ``int``, or a
:class:`connectivity.Bulkhead` without a queue, to share one limit between several apps) or adaptive (a
:class:`connectivity.AdaptiveConcurrency`, fed one sample per request: the app's time to finish, and whether it
failed, i.e. answered 5xx or raised). A request the client abandoned (cancellation) frees its slot and is not a
sample.

A request holds its slot until the app returns, streaming included: on the server side the slot stands for the
work in progress, which a streamed body still is. Health, readiness and metrics endpoints bypass the limit, so an
overloaded instance still answers its orchestrator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import ASGIApp, Message, Receive, Scope, Send, require_app
from connectivity.policies._validate import at_least_int, finite_non_negative
from connectivity.policies.bulkhead import FULL, Bulkhead
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.concurrency import AdaptiveConcurrency
from connectivity.telemetry import events, semconv

__all__ = ["DEFAULT_EXCLUDED_PATHS", "ConcurrencyLimitMiddleware"]

DEFAULT_EXCLUDED_PATHS: tuple[str, ...] = ("/health", "/healthz", "/ready", "/metrics")
"""Paths that bypass the limit unless told otherwise: probes and scrapes must work under overload."""

_PROBLEM = json.dumps(
    {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "concurrency limit reached"},
    separators=(",", ":"),
).encode("ascii")


class ConcurrencyLimitMiddleware:
    """Shed inbound HTTP requests over a concurrency limit with an immediate 503.

    Args:
        app: The ASGI application to wrap.
        limit: Requests allowed in progress at once: an ``int``, a :class:`~connectivity.Bulkhead` with
            ``max_queued=0`` (a limit shared by several apps, or tried in shadow mode first), or an
            :class:`~connectivity.AdaptiveConcurrency` that adapts to the app's latency and failures.
        exclude_paths: Paths that bypass the limit: an exact path, or a prefix when it ends with ``/``
            (``"/internal/"`` covers everything under it).
        retry_after: Seconds a shed client should wait, sent as ``Retry-After`` (whole seconds, at least 1).
        name: Names the limit in events and the status app when ``limit`` is an ``int`` (a policy object has its
            own name).
        clock: Time source for the adaptive limiter's samples.

    Raises:
        ConfigError: ``limit`` is not an integer >= 1 or a queue-less limit policy, a path is not a string
            starting with ``/``, or ``retry_after`` is not a finite number >= 0.

    Put it outside the app's own middleware (authentication, tracing, ...) so shed requests cost nothing, but
    inside :class:`RequestIDMiddleware` if the 503 should carry a request id.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_adaptive",
        "_bulkhead",
        "_exact",
        "_headers",
        "_prefixes",
        "app",
        "clock",
        "exclude_paths",
        "limiter",
        "retry_after",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int | Bulkhead | AdaptiveConcurrency = 100,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDED_PATHS,
        retry_after: float = 1.0,
        name: str = "inbound",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = require_app("ConcurrencyLimitMiddleware", app)
        self.limiter = _limiter(limit, name)
        self._adaptive = self.limiter if isinstance(self.limiter, AdaptiveConcurrency) else None
        self._bulkhead = self.limiter if isinstance(self.limiter, Bulkhead) else None
        self.exclude_paths = _paths(exclude_paths)
        self._exact = frozenset(path for path in self.exclude_paths if not path.endswith("/"))
        self._prefixes = tuple(path for path in self.exclude_paths if path.endswith("/"))
        self.retry_after = finite_non_negative("ConcurrencyLimitMiddleware.retry_after", retry_after)
        self.clock = clock
        self._headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(_PROBLEM)).encode("ascii")),
            (b"retry-after", str(max(1, math.ceil(self.retry_after))).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        from connectivity.admin.registry import register  # lazy: the registry imports the transports package

        register("limiters", self.limiter.name, self.limiter)

    def _excluded(self, path: str) -> bool:
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    async def _shed(self, send: Send) -> None:
        events.emit(events.CONCURRENCY_REJECTED, {semconv.CONNECTIVITY_REASON: f"{self.limiter.name}: {FULL}"})
        await send({"type": "http.response.start", "status": 503, "headers": self._headers})
        await send({"type": "http.response.body", "body": _PROBLEM})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        if self._adaptive is not None:
            await self._call_adaptive(self._adaptive, scope, receive, send)
            return
        bulkhead = self._bulkhead
        assert bulkhead is not None
        if not bulkhead.try_acquire():
            await self._shed(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            bulkhead.release()  # never a ticket to hand over: the bulkhead has no queue

    async def _call_adaptive(
        self, limiter: AdaptiveConcurrency, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not limiter.try_acquire():
            await self._shed(send)
            return
        in_flight = limiter.in_flight
        started = self.clock.now()
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            limiter.release()
            limiter.on_sample(self.clock.now() - started, in_flight, True)
            raise
        except BaseException:  # the client went away (cancellation): free the slot, no sample
            limiter.release()
            raise
        limiter.release()
        limiter.on_sample(self.clock.now() - started, in_flight, status >= 500 or status == 0)


def _limiter(limit: object, name: str) -> Bulkhead | AdaptiveConcurrency:
    if isinstance(limit, AdaptiveConcurrency):
        return limit
    if isinstance(limit, Bulkhead):
        if limit.max_queued:
            raise ConfigError(
                "ConcurrencyLimitMiddleware.limit", limit, "must not queue (max_queued=0): shed, never wait"
            )
        return limit
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ConfigError(
            "ConcurrencyLimitMiddleware.limit", limit, "must be an integer, a Bulkhead or an AdaptiveConcurrency"
        )
    at_least_int("ConcurrencyLimitMiddleware.limit", limit, 1)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("ConcurrencyLimitMiddleware.name", name, "must be a non-empty string")
    return Bulkhead(max_concurrent=limit, max_queued=0, name=name)


def _paths(paths: object) -> tuple[str, ...]:
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise ConfigError(
            "ConcurrencyLimitMiddleware.exclude_paths", paths, "must be a collection of paths (not one string)"
        )
    result = tuple(paths)
    for path in result:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError("ConcurrencyLimitMiddleware.exclude_paths", path, "must be a path starting with '/'")
    return result
