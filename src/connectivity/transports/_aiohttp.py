"""The pool behind :class:`~connectivity.transports.AiohttpTransport`: aiohttp's client, with httpcore's semantics.

Imported only when an ``AiohttpTransport`` is built: it imports ``httpx_aiohttp`` and ``aiohttp``. It also imports
``asyncio``, which the library otherwise never does: aiohttp is asyncio-only, its sessions belong to the loop they
were created on (``asyncio.get_running_loop()`` tells whether this call runs there, without asking sniffio on every
request), and on Python 3.10 its timeouts raise ``asyncio.TimeoutError``, which is not the builtin one.

Theory of operation: :class:`Pool` keeps ``httpx_aiohttp.AiohttpTransport``'s configuration (the SSL context made
by :func:`httpx.create_ssl_context`, limits, proxy, local address) and replaces its request path, where
httpx-aiohttp 0.2 and httpcore part ways:

* Errors. httpx-aiohttp maps a refused connection and a server that hangs up to ``httpx.ConnectTimeout`` (a retry
  layer would resend any method after it), an incomplete body to ``ReadError``, and lets a malformed response
  escape as aiohttp's own error. :func:`_error` maps each aiohttp failure to the class httpcore raises for it,
  checked against both on real sockets (``tests/transports/test_backend_conformance.py``).
* Timeouts. aiohttp's ``connect`` timeout covers the wait for a free connection *and* the connect, and it has no
  write timeout. Here the pool timeout is ours (a semaphore of ``max_connections`` slots, taken per request and
  given back when the response closes: the connections in use, as httpcore counts them); ``connect`` and ``read``
  are aiohttp's ``sock_connect`` and ``sock_read``; a large or streamed body goes out through :class:`_Upload`,
  which gives each chunk ``write`` seconds to leave, under a cancel scope it moves as the chunks go.
* Deadlines. Like the deadline-aware httpcore backend (:mod:`connectivity.transports._network`), the call's
  deadline bounds the response body too: it becomes aiohttp's ``total`` timer, which covers the body's reads. A
  per-try deadline, tighter than the call's, bounds the request and the response head only, with a cancel scope.
* HTTP. No cookie jar, no automatic headers, no hidden retry of idempotent requests on a broken keep-alive
  connection (the retry layer counts attempts), the request target sent as httpx encoded it, the response's real
  HTTP version, httpcore's header size limits, ``max_keepalive_connections`` enforced by :class:`_Connector`.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, ClassVar

import aiohttp
import anyio
import httpx_aiohttp
import sniffio
import yarl

from connectivity._http import httpx
from connectivity.errors import BackendUnavailableError, DeadlineExceededError
from connectivity.policies.deadline import Deadline, _current
from connectivity.transports._network import bounded

__all__ = ["Pool"]

_CHUNK = 64 * 1024
"""Bytes handed to aiohttp at a time; a bytes body up to this size goes out in one write that never waits."""
_HEAD_LIMIT = 100 * 1024  # httpcore lets h11 buffer this much of a response head
_NO_TIMEOUTS: dict[str, float | None] = {}
_NEVER = float("inf")
_KEEPALIVE_FOREVER = 365 * 24 * 3600.0  # httpx's keepalive_expiry=None: older aiohttp versions cannot take None
_VERSIONS = {aiohttp.HttpVersion11: b"HTTP/1.1", aiohttp.HttpVersion10: b"HTTP/1.0"}
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_SESSION_LIMITS: dict[str, Any] = {
    name: value
    for name, value in (("max_line_size", _HEAD_LIMIT), ("max_field_size", _HEAD_LIMIT), ("max_headers", 10_000))
    if name in inspect.signature(aiohttp.ClientSession).parameters
}
_UNSUPPORTED_URL = tuple(
    cls for cls in (aiohttp.InvalidURL, getattr(aiohttp, "NonHttpUrlClientError", None)) if cls is not None
)

# The transport (socket) of the connection the current request got, set by _Connector.connect in the request's own
# task: aiohttp gives a response's connection back to the pool as soon as its body is complete, so an empty
# response no longer knows it when the head arrives, and the peer certificate must still be there to check.
_transport: contextvars.ContextVar[Any] = contextvars.ContextVar("connectivity.aiohttp.transport", default=None)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's TCP connector with httpx's ``max_keepalive_connections``: idle ones beyond it are closed."""

    def __init__(self, *, max_idle: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 - aiohttp's signature
        connection = await super().connect(req, traces, timeout)
        _transport.set(connection.transport)
        return connection

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        if not should_close and self._max_idle is not None:
            idle = sum(len(conns) for conns in self._conns.values())
            should_close = idle >= self._max_idle
        super()._release(key, protocol, should_close=should_close)


class _Request(aiohttp.ClientRequest):
    """aiohttp's request without the ``Content-Length: 0`` it adds to a bodiless DELETE (or POST), as httpcore."""

    def update_body_from_data(self, body: Any, *args: Any, **kwargs: Any) -> None:
        had_length = "Content-Length" in self.headers
        super().update_body_from_data(body, *args, **kwargs)
        if body is None and not had_length:
            self.headers.popall("Content-Length", None)


class _NetworkStream:
    """The ``network_stream`` response extension, as httpcore offers it: ``get_extra_info`` on the connection."""

    __slots__ = ("_transport",)

    _NAMES: ClassVar[dict[str, str]] = {"client_addr": "sockname", "server_addr": "peername"}

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def get_extra_info(self, info: str) -> Any:
        """``"ssl_object"``, ``"client_addr"``, ``"server_addr"`` or ``"socket"``, as httpcore's streams answer."""
        if self._transport is None:
            return None
        return self._transport.get_extra_info(self._NAMES.get(info, info))


class _Upload:
    """A request body handed to aiohttp chunk by chunk, each chunk given ``write`` seconds to leave.

    aiohttp asks for the next chunk once the previous one is written (or buffered below its limit), so the time
    between handing a chunk over and being asked for the next is the time the write took. The cancel scope around
    the request gets a deadline of ``write`` seconds (or the head's deadline, if sooner) while a chunk is being
    written, and only the head's deadline while the caller's own iterator produces the next one.
    """

    __slots__ = ("_chunks", "_loop", "_write", "error", "head", "scope", "writing")

    def __init__(self, chunks: AsyncIterable[Any], write: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._write = write
        self._loop = loop
        self.scope: anyio.CancelScope | None = None
        self.head = _NEVER
        self.writing = False
        self.error: Exception | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._send()

    async def _send(self) -> AsyncIterator[Any]:
        scope, write, head, time = self.scope, self._write, self.head, self._loop.time
        assert scope is not None
        try:
            async for chunk in self._chunks:
                if not chunk:
                    continue
                if write is not None:
                    scope.deadline = min(time() + write, head)
                self.writing = True
                yield chunk
                self.writing = False
                scope.deadline = head
        except Exception as exc:  # the caller's own body failed: raise that, not aiohttp's wrapper of it
            self.error = exc
            raise


async def _bytes_chunks(content: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(content)  # aiohttp writes memoryviews as they are: no copies
    for start in range(0, len(view), _CHUNK):
        yield view[start : start + _CHUNK]


class _Body(httpx.AsyncByteStream):
    """The response body: aiohttp's reads with errors mapped, the connection slot given back on close."""

    __slots__ = ("_call", "_closed", "_request", "_response", "_slots")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        slots: anyio.Semaphore | None,
        call: Deadline | None,
    ) -> None:
        self._response = response
        self._request = request
        self._slots = slots
        self._call = call
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._response.content.readany
        try:
            while chunk := await read():
                yield chunk
        except Exception as exc:
            raise _error(exc, self._request, body=True, call=self._call) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Back to the pool when the body was read to its end; otherwise aiohttp closes the connection.
        self._response.release()
        if self._slots is not None:
            self._slots.release()


def _version(version: aiohttp.HttpVersion | None) -> bytes:
    if version is None:
        return b"HTTP/1.1"
    known = _VERSIONS.get(version)
    return known if known is not None else f"HTTP/{version.major}.{version.minor}".encode()


def _reset(exc: aiohttp.ClientPayloadError) -> bool:
    """Whether an incomplete body was cut by a connection reset (httpcore: ``ReadError``) rather than a close."""
    return "ConnectionResetError" in str(exc) or isinstance(exc.__cause__, ConnectionResetError)


def _error(
    exc: Exception,
    request: httpx.Request,
    *,
    body: bool = False,
    call: Deadline | None = None,
    upload: _Upload | None = None,
) -> Exception:
    """The httpx exception httpcore raises for the failure aiohttp reported as ``exc``."""
    if upload is not None and upload.error is not None:
        return upload.error
    cls: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ClientError):
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            cls = httpx.ProxyError  # the proxy refused the tunnel
        elif isinstance(exc, aiohttp.ClientConnectorError):
            cls = httpx.ConnectError  # refused, unreachable, DNS, TLS handshake or verification
        elif isinstance(exc, aiohttp.ConnectionTimeoutError):
            cls = httpx.ConnectTimeout
        elif isinstance(exc, aiohttp.ServerTimeoutError):
            cls = httpx.ReadTimeout
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            cls = httpx.RemoteProtocolError  # closed before a (complete) response head
        elif isinstance(exc, aiohttp.ClientPayloadError):
            cls = httpx.ReadError if _reset(exc) else httpx.RemoteProtocolError
        elif isinstance(exc, aiohttp.ClientResponseError):
            cls = httpx.RemoteProtocolError  # a malformed status line or header
        elif isinstance(exc, (aiohttp.ClientOSError, aiohttp.ClientConnectionError)):
            cls = httpx.ReadError  # reset or lost; httpcore reads after a failed write, and reports the read
        elif isinstance(exc, _UNSUPPORTED_URL):
            cls = httpx.UnsupportedProtocol
        else:
            cls = httpx.TransportError
        return cls(str(exc) or type(exc).__name__, request=request)
    if isinstance(exc, asyncio.TimeoutError):
        # aiohttp's total timer, which is the call's deadline: spent while reading the body, that is the deadline's
        # error (as over httpcore); before the head, a timeout the TimeoutTransport that set the deadline reports.
        if body and call is not None and call.expires_at - call.clock.now() <= 1e-3:
            error = DeadlineExceededError("deadline exceeded while reading the response", request=request)
            error.__cause__ = exc
            return error
        return httpx.ReadTimeout("timed out waiting for the response", request=request)
    return exc


class Pool(httpx_aiohttp.AiohttpTransport):
    """httpx-aiohttp's transport with httpcore's semantics (see the module's theory of operation).

    Args:
        verify: As in httpx.
        cert: As in httpx.
        trust_env: As in httpx.
        limits: As in httpx.
        proxy: An ``http://`` proxy, or ``None``.
        local_address: Local address to connect from.
    """

    def __init__(
        self,
        *,
        verify: Any,
        cert: Any,
        trust_env: bool,
        limits: httpx.Limits,
        proxy: httpx.Proxy | None,
        local_address: str | None,
    ) -> None:
        super().__init__(
            verify=verify, cert=cert, trust_env=trust_env, limits=limits, proxy=proxy, local_address=local_address
        )
        self.fallback: httpx.AsyncBaseTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: anyio.Semaphore | None = None
        self._lock = threading.Lock()
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._proxy: dict[str, Any] = {}
        self._forward_headers: list[tuple[str, str]] = []
        if proxy is not None:
            # aiohttp sends proxy_headers with a CONNECT (https:// targets) only; a request forwarded in the clear
            # carries them itself, as httpcore sends them. Credentials go in Proxy-Authorization, as httpcore does.
            forward = proxy.headers.multi_items()
            if proxy.raw_auth is not None:
                credentials = base64.b64encode(b":".join(proxy.raw_auth)).decode("ascii")
                forward.append(("Proxy-Authorization", f"Basic {credentials}"))
            self._proxy = {"proxy": str(proxy.url), "proxy_headers": dict(forward) or None}
            self._forward_headers = forward

    def get_client(self) -> aiohttp.ClientSession:
        """A new session on the running loop, configured to behave as httpcore does."""
        limits = self.limits
        keepalive = limits.keepalive_expiry
        max_idle = limits.max_keepalive_connections
        expiry = (
            {} if max_idle == 0 else {"keepalive_timeout": _KEEPALIVE_FOREVER if keepalive is None else keepalive}
        )
        connector = _Connector(
            max_idle=max_idle,
            ssl=self.ssl_context,
            local_addr=(self.local_address, 0) if self.local_address else None,
            limit=0,  # the pool's own slots limit connections in use, with httpx's pool timeout
            use_dns_cache=False,  # httpcore resolves on every new connection
            force_close=max_idle == 0,
            **expiry,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            request_class=_Request,
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies are the client's business, not the transport's
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,  # as httpx's transports: environment proxies are the client's business
            read_bufsize=_CHUNK,
            **_SESSION_LIMITS,
        )
        if hasattr(session, "_retry_connection"):
            # aiohttp resends an idempotent request once when a reused connection breaks, unseen by the retry
            # layer, which counts attempts and budgets retries: httpcore does not, and neither do we.
            session._retry_connection = False
        return session

    def _adopt(self, loop: asyncio.AbstractEventLoop | None) -> httpx.AsyncBaseTransport | None:
        """Bind to ``loop`` on first use; a transport to use instead (the fallback), or ``None`` to go on."""
        if loop is None:
            if self.fallback is not None:
                return self.fallback
            try:
                library = sniffio.current_async_library()
            except sniffio.AsyncLibraryNotFoundError:
                library = "an unknown event loop"
            raise BackendUnavailableError(
                "aiohttp",
                f"aiohttp runs on asyncio only, and this call runs on {library}; "
                "use backend='httpcore', or 'auto' (which picks httpcore there)",
            )
        with self._lock:
            if self._loop is None:
                self._session = self.client = self.get_client()
                limit = self.limits.max_connections
                self._slots = anyio.Semaphore(limit, fast_acquire=True) if limit is not None else None
                self._loop = loop
                return None
            if self._loop is loop:
                return None
        if self.fallback is not None:
            return self.fallback
        raise BackendUnavailableError(
            "aiohttp",
            "this transport's aiohttp session belongs to the event loop it was first used on and was not closed; "
            "close it (aclose) before using it on another loop, or use one transport per loop",
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop or loop is None:
            other = self._adopt(loop)
            if other is not None:
                return await other.handle_async_request(request)
        timeouts = request.extensions.get("timeout") or _NO_TIMEOUTS
        slots = self._slots
        if slots is not None:
            try:
                slots.acquire_nowait()
            except anyio.WouldBlock:
                with anyio.move_on_after(bounded(timeouts.get("pool"))) as waited:
                    await slots.acquire()
                if waited.cancelled_caught:
                    raise httpx.PoolTimeout(  # noqa: B904 - the cancellation was ours, nothing to chain
                        "timed out waiting for a connection from the pool", request=request
                    )
        try:
            return await self._send(request, timeouts, slots)
        except BaseException:
            if slots is not None:
                slots.release()
            raise

    async def _send(
        self, request: httpx.Request, timeouts: dict[str, float | None], slots: anyio.Semaphore | None
    ) -> httpx.Response:
        session, loop = self._session, self._loop
        assert session is not None
        assert loop is not None
        current = _current.get()
        # The call's deadline bounds everything, the body included; a tighter per-try one the head only.
        call = current.parent if current is not None and current.attempt_only else current
        head = _NEVER
        if current is not None and current is not call:
            head = loop.time() + max(current.expires_at - current.clock.now(), 0.0)
        timeout = self._timeout(timeouts.get("connect"), timeouts.get("read"), call)

        headers = request.headers.multi_items()
        upload: _Upload | None = None
        data: Any = None
        try:
            content = request.content
        except httpx.RequestNotRead:
            # Streamed: aiohttp frames it itself (chunked unless there is a Content-Length).
            headers = [(key, value) for key, value in headers if key.lower() != "transfer-encoding"]
            upload = _Upload(request.stream, timeouts.get("write"), loop)  # type: ignore[arg-type]
        else:
            if len(content) > _CHUNK:
                upload = _Upload(_bytes_chunks(content), timeouts.get("write"), loop)
            elif content:
                data = content
        if upload is not None:
            data = upload

        url = yarl.URL(str(request.url), encoded=True)
        if self._forward_headers and url.scheme == "http":
            headers = [*headers, *self._forward_headers]
        sni = request.extensions.get("sni_hostname")
        _transport.set(None)  # a failed connect must not leave the previous request's connection here
        try:
            send = functools.partial(
                session.request,
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=timeout,
                server_hostname=sni,
                **self._proxy,
            )
            if upload is None and head == _NEVER:
                response = await send()
            else:
                with anyio.CancelScope(deadline=head) as scope:
                    if upload is not None:
                        upload.scope, upload.head = scope, head
                    response = await send()
                if scope.cancelled_caught:
                    # aiohttp closed the connection gracefully, which waits for unsent data to leave: drop it.
                    transport = _transport.get()
                    if transport is not None:
                        transport.abort()
                    if upload is not None and upload.writing:
                        raise httpx.WriteTimeout("timed out writing the request body", request=request)
                    raise httpx.ReadTimeout("timed out waiting for the response", request=request)
        except Exception as exc:
            error = _error(exc, request, call=call, upload=upload)
            if error is exc:
                raise
            raise error from exc

        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response, request, slots, call),
            extensions={
                "http_version": _version(response.version),
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
                "network_stream": _NetworkStream(_transport.get()),
            },
        )

    def _timeout(self, connect: float | None, read: float | None, call: Deadline | None) -> aiohttp.ClientTimeout:
        # ceil_threshold: aiohttp rounds timeouts above it up to a whole second of loop time; httpcore does not.
        if call is None:
            key = (connect, read)
            cached = self._timeouts.get(key)
            if cached is None:
                if len(self._timeouts) > 64:
                    self._timeouts.clear()
                cached = self._timeouts[key] = aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=connect, sock_read=read, ceil_threshold=_NEVER
                )
            return cached
        # aiohttp reads a total of 0 as "no limit": a spent deadline gets the shortest one instead.
        total = max(call.expires_at - call.clock.now(), 1e-6)
        return aiohttp.ClientTimeout(
            total=total, connect=None, sock_connect=connect, sock_read=read, ceil_threshold=_NEVER
        )

    async def aclose(self) -> None:
        session = self._session
        with self._lock:
            self._session = self.client = None
            self._loop = None
            self._slots = None
        if session is not None:
            await session.close()
