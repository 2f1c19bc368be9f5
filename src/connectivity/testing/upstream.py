"""FaultyUpstream: an ASGI upstream whose failures are turned up and down while it serves.

Theory of operation: a request first reads its whole body (tests check that a retried body arrives intact), then
draws its fate once, under a lock, from the current :class:`Faults` and the upstream's ``random.Random``: hang,
reset, error or success, plus a latency. Three uniform draws are taken per request whatever the knobs say, so with
a seeded generator the n-th request meets the same fate in every run. Waiting (latency or hang) races the sleep
against ``receive()``: if the client goes away first, the request is recorded as a disconnect and nothing is sent.
Counters and records sit behind a condition variable: the server runs in another thread than the test reading them.
ASGI cannot drop a connection without a response (uvicorn answers ``500`` for an app that raises or returns early),
so a reset uses the :data:`RESET_EXTENSION` that :func:`connectivity.testing.server.serve` provides.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

import anyio

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative, ratio

__all__ = [
    "RESET_EXTENSION",
    "Faults",
    "FaultyUpstream",
    "LatencySpec",
    "Outcome",
    "RequestRecord",
    "UpstreamStats",
]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

LatencySpec: TypeAlias = "float | tuple[str, float, float] | Callable[[], float] | None"
"""Added latency: seconds, ``("uniform", low, high)`` or a callable returning seconds (any distribution)."""

Outcome: TypeAlias = Literal["ok", "error", "reset", "disconnect", "cancelled"]
"""How a request ended: 200 sent, error status sent, connection reset, client gone first, server stopped."""

RESET_EXTENSION = "connectivity.reset"
"""Scope extension ``{"reset": Callable[[bool], None]}``: drops the connection (TCP RST if the argument is true,
else FIN); the app then returns without sending anything, and the server sends no response either."""

_ECHOED = ("idempotency-key", "traceparent", "x-connectivity-", "x-envoy-")


@dataclass(frozen=True, slots=True)
class Faults:
    """What a :class:`FaultyUpstream` does wrong; assign a new one to ``FaultyUpstream.faults`` at any time.

    Args:
        error_rate: Fraction of requests answered with ``error_status``.
        error_status: Status of error responses (400-599).
        retry_after: ``Retry-After`` value added to error responses (seconds or an HTTP-date); ``None``: none.
        latency: Added before every response, reset or error (see :data:`LatencySpec`).
        reset_rate: Fraction of requests whose connection is dropped without a response.
        reset_mode: ``"rst"`` aborts the connection (the client sees ``ECONNRESET``); ``"close"`` closes it
            cleanly (the client sees the server disconnect without a response).
        hang: Fraction of requests never answered until the client goes away (``True`` means all).

    Raises:
        ConfigError: A value is out of range.

    .. versionadded:: 0.1
    """

    error_rate: float = 0.0
    error_status: int = 503
    retry_after: str | None = None
    latency: LatencySpec = None
    reset_rate: float = 0.0
    reset_mode: Literal["rst", "close"] = "rst"
    hang: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_rate", ratio("Faults.error_rate", self.error_rate))
        object.__setattr__(self, "reset_rate", ratio("Faults.reset_rate", self.reset_rate))
        hang = float(self.hang) if isinstance(self.hang, bool) else self.hang
        object.__setattr__(self, "hang", ratio("Faults.hang", hang))
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ConfigError("Faults.error_status", status, "must be an int status between 400 and 599")
        value = self.retry_after
        if value is not None and (
            not isinstance(value, str) or not value.strip() or "\r" in value or "\n" in value
        ):
            raise ConfigError("Faults.retry_after", value, "must be a non-empty header value or None")
        if self.reset_mode not in ("rst", "close"):
            raise ConfigError("Faults.reset_mode", self.reset_mode, "must be 'rst' or 'close'")
        _check_latency(self.latency)


def _check_latency(spec: Any) -> None:
    where = "Faults.latency"
    if isinstance(spec, tuple):
        if len(spec) != 3 or spec[0] != "uniform":
            raise ConfigError(where, spec, "a tuple must be ('uniform', low, high)")
        if finite_non_negative(where, spec[1]) > finite_non_negative(where, spec[2]):
            raise ConfigError(where, spec, "uniform bounds must satisfy low <= high")
    elif spec is not None and not callable(spec):
        finite_non_negative(where, spec)


def _draw_latency(spec: LatencySpec, rng: random.Random) -> float:
    if spec is None:
        return 0.0
    if callable(spec):
        return finite_non_negative("Faults.latency()", spec())
    return rng.uniform(spec[1], spec[2]) if isinstance(spec, tuple) else float(spec)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the upstream saw it.

    Attributes:
        seq: Arrival number, from 1 over the upstream's life (``reset_stats`` does not restart it).
        method: Request method.
        path: Request path (no query string).
        headers: Every request header, lower-cased names, in arrival order.
        body: The complete request body received.
        outcome: How the request ended.
        status: Status sent, or ``None`` when no response was sent.
        started: ``time.monotonic()`` at arrival.
        duration: Seconds from arrival to the end of handling.
    """

    seq: int
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    outcome: Outcome
    status: int | None
    started: float
    duration: float

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """A consistent snapshot of an upstream's counters since the last ``reset_stats``.

    Attributes:
        requests: Requests that arrived.
        in_flight: Requests being handled now.
        max_in_flight: Highest ``in_flight`` seen.
        completed: Responses sent in full (``ok + errors``).
        ok: ``200`` responses sent.
        errors: Error responses sent.
        resets: Connections dropped on purpose.
        disconnects: Clients that went away before their response was sent.
        by_path: Requests per path.
        by_method: Requests per method.
        records: The most recent finished requests, oldest first.
    """

    requests: int
    in_flight: int
    max_in_flight: int
    completed: int
    ok: int
    errors: int
    resets: int
    disconnects: int
    by_path: Mapping[str, int]
    by_method: Mapping[str, int]
    records: tuple[RequestRecord, ...] = field(repr=False)


class _Plan(NamedTuple):
    seq: int
    started: float
    delay: float
    hang: bool
    reset: bool
    error: bool
    faults: Faults


class FaultyUpstream:
    """A pure ASGI app answering ``200`` with JSON naming the replica, or failing as its :class:`Faults` say.

    Thread-safe: knobs may be changed and statistics read from any thread while a server runs the app. Only
    ``http`` scopes are served; others (``lifespan``, ``websocket``) are ignored.

    Args:
        name: Replica name, echoed in every response body.
        faults: Initial faults (default: none).
        rng: Source of every random decision; pass a seeded ``random.Random`` for repeatable runs.
        max_records: How many recent :class:`RequestRecord` objects to keep.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        name: str = "upstream",
        faults: Faults | None = None,
        rng: random.Random | None = None,
        max_records: int = 1000,
    ) -> None:
        at_least_int("FaultyUpstream.max_records", max_records, 0)
        self.name = name
        self._faults = faults if faults is not None else Faults()
        self._rng = rng if rng is not None else random.Random()
        self._cond = threading.Condition()
        self._seq = self._in_flight = self._max_in_flight = 0
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._counts: Counter[str] = Counter()
        self._by_path: Counter[str] = Counter()
        self._by_method: Counter[str] = Counter()

    @property
    def faults(self) -> Faults:
        """The current faults; assign a new :class:`Faults` to change them all at once."""
        with self._cond:
            return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._cond:
            self._faults = faults

    @property
    def stats(self) -> UpstreamStats:
        """A snapshot of the counters and recent records."""
        with self._cond:
            return self._snapshot()

    def reset_stats(self) -> None:
        """Zero the counters and forget the records (requests in flight stay counted as in flight)."""
        with self._cond:
            for counter in (self._counts, self._by_path, self._by_method):
                counter.clear()
            self._records.clear()
            self._max_in_flight = self._in_flight
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[UpstreamStats], bool], *, timeout: float = 5.0) -> UpstreamStats:
        """Block until ``predicate(stats)`` holds, re-checking on every change; return the matching snapshot.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the message shows the last snapshot).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(snapshot := self._snapshot()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: condition not met within {timeout}s; {snapshot}")
                self._cond.wait(remaining)
            return snapshot

    async def await_for(
        self,
        predicate: Callable[[UpstreamStats], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - bounds the worker thread, which a cancel scope cannot stop
    ) -> UpstreamStats:
        """:meth:`wait_for` from async code: waits in a worker thread so the event loop keeps running."""
        return await anyio.to_thread.run_sync(
            lambda: self.wait_for(predicate, timeout=timeout), abandon_on_cancel=True
        )

    def _snapshot(self) -> UpstreamStats:
        counts = self._counts
        return UpstreamStats(
            requests=counts["requests"],
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            completed=counts["ok"] + counts["error"],
            ok=counts["ok"],
            errors=counts["error"],
            resets=counts["reset"],
            disconnects=counts["disconnect"],
            by_path=dict(self._by_path),
            by_method=dict(self._by_method),
            records=tuple(self._records),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI ``http`` scope."""
        if scope["type"] != "http":
            return
        plan = self._begin(scope)
        outcome: Outcome = "cancelled"
        status: int | None = None
        body = bytearray()
        recorded = False
        try:
            if not await _read_body(receive, body) or await _wait_or_disconnect(receive, plan.delay, plan.hang):
                outcome = "disconnect"
            elif plan.reset:
                # Recorded before the client can notice, so a test that saw the reset also sees it counted.
                recorded = self._finish(plan, scope, bytes(body), "reset", None)
                _reset(scope, abortive=plan.faults.reset_mode == "rst")
            else:
                status, headers, content = self._response(scope, plan, len(body))
                headers.append((b"content-length", str(len(content)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                # Recorded before the last message: a client holding the response can trust the stats.
                recorded = self._finish(plan, scope, bytes(body), "error" if plan.error else "ok", status)
                await send({"type": "http.response.body", "body": content})
        finally:
            if not recorded:
                self._finish(plan, scope, bytes(body), outcome, status)

    def _begin(self, scope: Scope) -> _Plan:
        with self._cond:
            self._seq += 1
            self._counts["requests"] += 1
            self._by_path[scope["path"]] += 1
            self._by_method[scope["method"]] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            faults, rng = self._faults, self._rng
            # Always three draws, so turning one knob does not shift the fates drawn for the others.
            hang_draw, reset_draw, error_draw = rng.random(), rng.random(), rng.random()
            hang = hang_draw < faults.hang
            reset = not hang and reset_draw < faults.reset_rate
            error = not (hang or reset) and error_draw < faults.error_rate
            delay = 0.0 if hang else _draw_latency(faults.latency, rng)
            plan = _Plan(self._seq, time.monotonic(), delay, hang, reset, error, faults)
            self._cond.notify_all()
            return plan

    def _finish(self, plan: _Plan, scope: Scope, body: bytes, outcome: Outcome, status: int | None) -> bool:
        record = RequestRecord(
            seq=plan.seq,
            method=scope["method"],
            path=scope["path"],
            headers=_headers(scope),
            body=body,
            outcome=outcome,
            status=status,
            started=plan.started,
            duration=time.monotonic() - plan.started,
        )
        with self._cond:
            self._in_flight -= 1
            self._counts[outcome] += 1
            self._records.append(record)
            self._cond.notify_all()
        return True

    def _response(self, scope: Scope, plan: _Plan, size: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if plan.error:
            headers = [(b"content-type", b"application/problem+json")]
            if plan.faults.retry_after is not None:
                headers.append((b"retry-after", plan.faults.retry_after.encode("latin-1")))
            problem = {"status": plan.faults.error_status, "replica": self.name, "seq": plan.seq}
            return plan.faults.error_status, headers, json.dumps(problem).encode()
        echoed = {key: value for key, value in _headers(scope) if key.startswith(_ECHOED)}
        attempt = echoed.get("x-connectivity-attempt", echoed.get("x-envoy-attempt-count"))
        payload = {
            "replica": self.name,
            "seq": plan.seq,
            "attempt": attempt,
            "body_bytes": size,
            "headers": echoed,
        }
        return 200, [(b"content-type", b"application/json")], json.dumps(payload).encode()


def _headers(scope: Scope) -> tuple[tuple[str, str], ...]:
    return tuple((key.decode("latin-1").lower(), value.decode("latin-1")) for key, value in scope["headers"])


async def _read_body(receive: Receive, body: bytearray) -> bool:
    """Append the whole request body to ``body``; ``False`` when the client disconnected first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return True


async def _wait_or_disconnect(receive: Receive, seconds: float, forever: bool) -> bool:
    """Wait ``seconds`` (or ``forever``); return ``True`` as soon as the client disconnects instead."""
    if seconds <= 0 and not forever:
        return False
    disconnected = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal disconnected
            # With the body read, receive() only returns once the connection is gone.
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        if forever:
            await anyio.sleep_forever()
        else:
            await anyio.sleep(seconds)
        tg.cancel_scope.cancel()
    return disconnected


def _reset(scope: Scope, *, abortive: bool) -> None:
    extension = scope.get("extensions", {}).get(RESET_EXTENSION)
    if extension is None:
        raise RuntimeError(
            f"reset_rate needs a server offering {RESET_EXTENSION!r}: use connectivity.testing.server.serve"
        )
    extension["reset"](abortive)
