"""Request mirroring (shadowing) as a transport: a copy of some requests goes to a shadow service, fire-and-forget.

Theory of operation: for a sampled request (``percent`` of them, drawn from an injected random number generator)
this transport sends the request to its inner transport as usual and, once the caller is done with the primary's
response (when it is closed, which httpx does as soon as the body is read) or at once if the primary failed,
launches a copy to the ``shadow`` transport *without waiting for it*. Nothing the shadow does reaches the caller:
its responses are drained and closed, its errors and timeouts are counted and logged at debug level, never
raised. The primary's response and its latency are the inner transport's alone. Launching after the primary's
body, not with its head, keeps the mirror's own work (building, connecting, sending: about what one more client
request costs, in the same process and, for async clients, on the same event loop) out of the primary's exchange;
it is paid later, by whatever runs next. A response the caller never closes never launches its mirror.

* **Bounded.** At most ``max_concurrent`` mirrors are in flight; a mirror that would exceed the bound is dropped
  and counted (``stats().dropped``), never queued, so a slow or hung shadow costs a bounded amount of memory and
  sockets. The bound is checked before the primary is sent (a drop then costs the primary next to nothing) and
  again at launch. Each mirror is bounded in time by ``timeout``.
* **Async** (``httpx.AsyncClient``): mirrors run as tasks in a task group owned by the transport's lifetime. It is
  opened when the transport is entered (``async with client:`` enters it; so does ``async with transport:``) and
  cancelled when it is left or closed, so no mirror outlives the client, on asyncio and trio alike. anyio (like
  trio) cannot start a task that outlives the caller without such a scope, so a transport used without being
  entered sends no mirrors: they are counted as ``not_running`` and a warning is logged once.
* **Sync** (``httpx.Client``): mirrors run in a small thread pool (``max_concurrent`` threads, created on first
  use) that ``close()`` shuts down, waiting for the mirrors in flight (each bounded by ``timeout``).
* **Replayable bodies only.** A bytes body (``content=``, ``json=``, ``data=``) up to ``max_body_bytes`` is
  mirrored as is. A streamed body is copied while the primary sends it, up to ``max_body_bytes``; if it was larger,
  or not fully sent, the mirror is skipped (``stats().skipped``). The primary streams exactly as it would without
  mirroring: nothing is read ahead.
* **Marked like Envoy's shadows.** The ``Host`` header gets ``-shadow`` appended to its host part
  (``orders:8080`` -> ``orders-shadow:8080``) so the shadow's logs tell mirrored traffic apart;
  ``host_suffix=None`` keeps it unchanged. With ``url``, the copy is sent to that base URL (scheme, host and port
  replaced) through ``shadow``; the ``Host`` header still names the primary (suffixed).
* **Detached.** The copy carries no deadline, retry policy or trace of the primary's: it runs in a context of its
  own and is bounded by ``timeout`` only.

Place it outside any retry layer to mirror each call once (Envoy mirrors at the router, once per request), and
give it a shadow transport of its own (it is closed with this transport).
"""

from __future__ import annotations

import logging
import random as _random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Final

import anyio
from anyio.abc import TaskGroup

from connectivity._http import httpx
from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.deadline import _current
from connectivity.routing.mirror import BODY, FULL, NOT_RUNNING, STARTED, MirrorSlots, MirrorStats, shadow_host
from connectivity.telemetry import semconv
from connectivity.telemetry.events import _CALL, MIRROR_DROPPED, emit
from connectivity.transports._base import Inner, Layer
from connectivity.transports._outcome import DRAIN_LIMIT
from connectivity.transports.routing import parse_base_url, rebase_url

__all__ = ["MIRROR_EXTENSION", "MirrorStats", "MirrorTransport"]

MIRROR_EXTENSION: Final = "connectivity.mirror"
"""Request extension: ``False`` never mirrors this request, ``True`` always does. Response extension: what
became of the mirror (``"pending"`` until the response is closed, then ``"started"``, ``"dropped"``,
``"skipped"`` or ``"not-running"``); absent when the request was not sampled."""

_OUTCOMES: Final = {STARTED: "started", FULL: "dropped", BODY: "skipped", NOT_RUNNING: "not-running"}
_log = logging.getLogger("connectivity.mirror")


class _Capture(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Pass a streamed request body through to the primary, keeping a copy of up to ``cap`` bytes."""

    __slots__ = ("_cap", "_chunks", "_size", "complete", "source")

    def __init__(self, source: httpx.SyncByteStream | httpx.AsyncByteStream, cap: int) -> None:
        self.source = source
        self._cap = cap
        self._chunks: list[bytes] = []
        self._size = 0
        self.complete = False

    def _keep(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._cap:
            self._chunks.append(chunk)
        elif self._chunks:
            self._chunks = []

    def _restart(self) -> None:
        self._chunks, self._size, self.complete = [], 0, False

    def __iter__(self) -> Iterator[bytes]:
        if not isinstance(self.source, httpx.SyncByteStream):
            raise TypeError("an async request body cannot be sent with a sync client")
        self._restart()
        for chunk in self.source:
            self._keep(chunk)
            yield chunk
        self.complete = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not isinstance(self.source, httpx.AsyncByteStream):
            raise TypeError("a sync request body cannot be sent with an async client")
        self._restart()
        async for chunk in self.source:
            self._keep(chunk)
            yield chunk
        self.complete = True

    def body(self) -> bytes | None:
        """The whole body if it was sent in full and fits the cap, else ``None``."""
        return b"".join(self._chunks) if self.complete and self._size <= self._cap else None

    def close(self) -> None:
        if isinstance(self.source, httpx.SyncByteStream):
            self.source.close()

    async def aclose(self) -> None:
        if isinstance(self.source, httpx.AsyncByteStream):
            await self.source.aclose()


_Copy = tuple[str, httpx.URL, httpx.Headers, bytes]


class _ThenMirror(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The primary's response body, unchanged; closing it launches the mirror (once)."""

    __slots__ = ("_launch", "_stream")

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, launch: Callable[[], None]) -> None:
        self._stream = stream
        self._launch: Callable[[], None] | None = launch

    def __iter__(self) -> Iterator[bytes]:
        if not isinstance(self._stream, httpx.SyncByteStream):
            raise TypeError("an async response body cannot be read with a sync client")
        yield from self._stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not isinstance(self._stream, httpx.AsyncByteStream):
            raise TypeError("a sync response body cannot be read with an async client")
        async for chunk in self._stream:
            yield chunk

    def _fire(self) -> None:
        launch, self._launch = self._launch, None
        if launch is not None:
            launch()

    def close(self) -> None:
        try:
            if isinstance(self._stream, httpx.SyncByteStream):
                self._stream.close()
        finally:
            self._fire()

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, httpx.AsyncByteStream):
                await self._stream.aclose()
        finally:
            self._fire()


def _after_close(
    response: httpx.Response, copy: _Copy | None, launch: Callable[[_Copy | None], str]
) -> httpx.Response:
    """Launch the mirror when the caller is done with the primary's response, recording the outcome on it."""

    def settle() -> None:
        response.extensions[MIRROR_EXTENSION] = launch(copy)

    response.extensions[MIRROR_EXTENSION] = "pending"
    response.stream = _ThenMirror(response.stream, settle)
    return response


class MirrorTransport(Layer):
    """Send a copy of a share of the requests to a shadow service, never waiting for it or reporting its errors.

    Args:
        inner: The primary transport; its answers are the caller's.
        shadow: The transport mirrors go through (its own; closed with this transport).
        percent: Share of the requests mirrored, 0-100.
        url: Base URL to send mirrors to (``"http://orders-shadow:8080"``); ``None``: the request's own URL.
        host_suffix: Appended to the ``Host`` header's host part (Envoy's ``-shadow``); ``None``: unchanged.
        max_concurrent: Mirrors in flight at most; more are dropped and counted.
        max_body_bytes: Largest body mirrored; larger ones are skipped and counted.
        timeout: Seconds a mirror may take in all (also its connect, read, write and pool timeouts).
        rng: Random number generator for sampling (seed it in tests).
        clock: Time source for the async mirror's time limit.

    See the module docstring for lifetimes (async mirrors need the transport entered: ``async with client:``).

    Raises:
        ConfigError: An invalid option.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_base",
        "_clock",
        "_executor",
        "_group",
        "_idle",
        "_max_body",
        "_percent",
        "_pool_lock",
        "_random",
        "_shadow",
        "_slots",
        "_suffix",
        "_timeout",
        "_warned",
    )

    def __init__(
        self,
        inner: Inner,
        shadow: Inner,
        *,
        percent: float = 100.0,
        url: str | httpx.URL | None = None,
        host_suffix: str | None = "-shadow",
        max_concurrent: int = 16,
        max_body_bytes: int = 64 * 1024,
        timeout: float = 5.0,
        rng: _random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(inner)
        if not isinstance(shadow, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            raise ConfigError("MirrorTransport.shadow", shadow, "must be an httpx transport")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
            raise ConfigError("MirrorTransport.percent", percent, "must be a percentage between 0 and 100")
        if host_suffix is not None and (not isinstance(host_suffix, str) or not host_suffix.isascii()):
            raise ConfigError("MirrorTransport.host_suffix", host_suffix, "must be None or an ASCII string")
        self._shadow = shadow
        self._percent = float(percent)
        self._base = None if url is None else parse_base_url("MirrorTransport.url", url)
        self._suffix = host_suffix or None
        self._slots = MirrorSlots(at_least_int("MirrorTransport.max_concurrent", max_concurrent, 1))
        self._max_body = at_least_int("MirrorTransport.max_body_bytes", max_body_bytes, 0)
        self._timeout = finite_positive("MirrorTransport.timeout", timeout)
        self._random = (rng if rng is not None else _random.Random()).random
        self._clock = clock
        self._pool_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._group: TaskGroup | None = None
        self._idle: anyio.Event | None = None
        self._warned = False

    @property
    def shadow(self) -> Inner:
        """The shadow transport."""
        return self._shadow

    def stats(self) -> MirrorStats:
        """The counters now."""
        return self._slots.stats()

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer."""
        return {
            "percent": self._percent,
            "url": None if self._base is None else str(self._base),
            "max_concurrent": self._slots.max_concurrent,
            "max_body_bytes": self._max_body,
            "timeout_s": self._timeout,
            **self.stats()._asdict(),
        }

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no mirror is in flight (sync clients); ``False`` if ``timeout`` seconds passed first."""
        return self._slots.wait_idle(timeout)

    async def await_idle(self) -> None:
        """Wait until no mirror is in flight (async clients; bound it with :func:`anyio.fail_after`), e.g. to let
        mirrors finish before leaving the client, which cancels them."""
        while self._slots.in_flight:
            if self._idle is None:  # created and set on this event loop only
                self._idle = anyio.Event()
            await self._idle.wait()

    # -- the primary's path: sample, refuse early, keep the body, launch when the response is closed --------

    def _sampled(self, request: httpx.Request) -> bool:
        forced = request.extensions.get(MIRROR_EXTENSION)
        if forced is not None:
            return bool(forced)
        percent = self._percent
        return percent >= 100.0 or (percent > 0.0 and self._random() * 100.0 < percent)

    def _prepare(self, request: httpx.Request) -> _Capture | bytes | None:
        """Before the primary: the body if it is bytes already, a capture of a streamed one, ``None``: too big."""
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):
            body = b"".join(stream)
            return body if len(body) <= self._max_body else None
        capture = _Capture(stream, self._max_body)
        request.stream = capture
        return capture

    def _copy(self, request: httpx.Request, prepared: _Capture | bytes | None) -> _Copy | None:
        """After the primary: what the mirror sends, or ``None`` when the body cannot be replayed."""
        if isinstance(prepared, _Capture):
            request.stream = prepared.source  # an outer layer resending the request sees its own stream
            prepared = prepared.body()
        if prepared is None:
            return None
        headers = request.headers.copy()
        host = headers.get("host")
        if host and self._suffix is not None:
            headers["host"] = shadow_host(host, self._suffix)
        return request.method, request.url, headers, prepared

    def _refused(self, reason: str) -> str:
        """Report a refusal (already counted); the response extension's value."""
        emit(MIRROR_DROPPED, {semconv.CONNECTIVITY_REASON: reason})
        if reason == NOT_RUNNING and not self._warned and not self._slots.closed:
            self._warned = True
            _log.warning(
                "MirrorTransport is not running, so no mirror is sent: enter the client (`async with client:`) "
                "or the transport to start it"
            )
        return _OUTCOMES[reason]

    def _build(self, copy: _Copy) -> httpx.Request:
        method, url, headers, body = copy
        if self._base is not None:
            url = rebase_url(url, self._base)
        timeout = self._timeout
        extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
        return httpx.Request(method, url, headers=headers, stream=httpx.ByteStream(body), extensions=extensions)

    def _failed(self, failed: BaseException | None) -> bool:
        if failed is not None:
            _log.debug("mirror failed (not reported to the caller): %s: %s", type(failed).__name__, failed)
        return self._slots.done(failed=failed is not None)

    # -- sync: a bounded thread pool, shut down by close() -----------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._slots.max_concurrent, thread_name_prefix="connectivity-mirror"
                )
            return self._executor

    def _mirror(self, copy: _Copy) -> None:
        # A worker thread starts with an empty context: no deadline or trace of the primary's comes along.
        failed: BaseException | None = None
        try:
            shadow = self._shadow
            if not isinstance(shadow, httpx.BaseTransport):
                raise TypeError(f"the shadow transport {type(shadow).__name__} cannot serve httpx.Client")
            response = shadow.handle_request(self._build(copy))
            try:
                drained = 0
                for chunk in response.iter_raw():
                    drained += len(chunk)
                    if drained > DRAIN_LIMIT:
                        break
            finally:
                response.close()
        except Exception as exc:
            failed = exc
        finally:
            self._failed(failed)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        if not self._sampled(request):
            return inner.handle_request(request)
        refused = self._slots.refusal(running=True)
        if refused is not None:
            response = inner.handle_request(request)
            response.extensions[MIRROR_EXTENSION] = self._refused(refused)
            return response
        prepared = self._prepare(request)
        try:
            response = inner.handle_request(request)
        except Exception:
            self._launch(self._copy(request, prepared))
            raise
        return _after_close(response, self._copy(request, prepared), self._launch)

    def _launch(self, copy: _Copy | None) -> str:
        taken = self._slots.take(running=True, replayable=copy is not None)
        if taken != STARTED:
            return self._refused(taken)
        assert copy is not None
        try:
            self._pool().submit(self._mirror, copy)
        except RuntimeError:  # shut down by a concurrent close()
            return self._refused(self._slots.give_back())
        return _OUTCOMES[STARTED]

    def close(self) -> None:
        self._slots.closed = True
        with self._pool_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)  # each mirror is bounded by `timeout`
        if self._shadow is not self._inner and isinstance(self._shadow, httpx.BaseTransport):
            self._shadow.close()
        super().close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    # -- async: a task group owned by the transport's lifetime -------------------------------------------

    async def _amirror(self, copy: _Copy) -> None:
        # The task runs in a copy of the primary's context: drop its deadline and its trace.
        _current.set(None)
        _CALL.set(None)
        failed: BaseException | None = None
        try:
            shadow = self._shadow
            if not isinstance(shadow, httpx.AsyncBaseTransport):
                raise TypeError(f"the shadow transport {type(shadow).__name__} cannot serve httpx.AsyncClient")
            with self._clock.timeout_scope(self._timeout) as scope:
                response = await shadow.handle_async_request(self._build(copy))
                try:
                    drained = 0
                    async for chunk in response.aiter_raw():
                        drained += len(chunk)
                        if drained > DRAIN_LIMIT:
                            break
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            if scope.cancelled_caught:
                failed = TimeoutError(f"mirror took longer than {self._timeout:g} s")
        except anyio.get_cancelled_exc_class() as exc:  # the transport is being left: counted as failed
            failed = exc
            raise
        except Exception as exc:
            failed = exc
        finally:
            if self._failed(failed) and self._idle is not None:
                self._idle.set()
                self._idle = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        if not self._sampled(request):
            return await inner.handle_async_request(request)
        refused = self._slots.refusal(running=self._group is not None)
        if refused is not None:
            response = await inner.handle_async_request(request)
            response.extensions[MIRROR_EXTENSION] = self._refused(refused)
            return response
        prepared = self._prepare(request)
        try:
            response = await inner.handle_async_request(request)
        except Exception:
            self._alaunch(self._copy(request, prepared))
            raise
        return _after_close(response, self._copy(request, prepared), self._alaunch)

    def _alaunch(self, copy: _Copy | None) -> str:
        group = self._group
        taken = self._slots.take(running=group is not None, replayable=copy is not None)
        if taken != STARTED:
            return self._refused(taken)
        assert group is not None
        assert copy is not None
        try:
            group.start_soon(self._amirror, copy)
        except RuntimeError:  # the group is no longer active: the transport is being left
            return self._refused(self._slots.give_back())
        return _OUTCOMES[STARTED]

    async def __aenter__(self) -> MirrorTransport:
        await super().__aenter__()
        if self._shadow is not self._inner and isinstance(self._shadow, httpx.AsyncBaseTransport):
            await self._shadow.__aenter__()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        self._slots.closed = False
        return self

    async def aclose(self) -> None:
        self._slots.closed = True
        if self._group is not None:
            self._group.cancel_scope.cancel()  # the task that entered the group leaves it in __aexit__
        if self._shadow is not self._inner and isinstance(self._shadow, httpx.AsyncBaseTransport):
            await self._shadow.aclose()
        await super().aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._slots.closed = True
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        if self._shadow is not self._inner and isinstance(self._shadow, httpx.AsyncBaseTransport):
            await self._shadow.__aexit__(exc_type, exc_value, traceback)
        await super().__aexit__(exc_type, exc_value, traceback)
