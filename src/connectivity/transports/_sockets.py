"""Plain TCP connections read and written on the socket, for httpx's pools: the same bytes in fewer system calls.

Theory of operation: httpcore's network streams put a socket's timeout on it before every read and write (an
``ioctl`` each time in CPython) and let CPython ``poll`` before every ``send`` and ``recv``; on asyncio they go
through anyio, which opens a cancel scope per operation, yields to the event loop at every read and write, and adds
and removes the socket from the loop's selector at every read. Per keep-alive request that is eight system calls
on a sync client and some forty on an async one, for one ``send`` and one ``recv``.

These streams do the same job with what it needs:

* sync (:class:`SocketStream`): the socket stays non-blocking; a write is tried at once (a socket's send buffer is
  almost always free) and waits only if it is full; a read waits with ``poll`` (one object per connection,
  registered once), then receives. A keep-alive request is a ``send``, a ``poll`` and a ``recv``, and the pool's
  two idle checks (``is_readable``) are one ``poll`` each.
* asyncio (:class:`AsyncSocketStream`): an :class:`asyncio.Protocol` that keeps reading on (paused only when
  more than :data:`HIGH_WATER` bytes wait to be read, as :class:`asyncio.StreamReader` does), so a read finds
  its bytes already there or waits on one future, bounded by a timer handle instead of a cancel scope. TLS
  (``start_tls``) goes through :meth:`asyncio.loop.start_tls` on the same protocol.

Both raise httpcore's exceptions exactly where httpcore's own streams do (``ReadTimeout``, ``WriteError``, ...), so
the pool and httpx above see no difference. Trio, Unix sockets and TLS on the sync path keep httpcore's streams.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio

from connectivity._http import httpcore

__all__ = ["HIGH_WATER", "AsyncSocketStream", "SocketStream", "connect_asyncio", "plain_socket"]

HIGH_WATER = 256 * 1024
"""Bytes an async connection buffers before it stops reading from the socket (it resumes below a quarter)."""

# select.poll is missing on Windows, and where gevent or eventlet have patched the select module.
_READABLE = getattr(select, "POLLIN", 0) | getattr(select, "POLLPRI", 0) | getattr(select, "POLLERR", 0)
_READABLE |= getattr(select, "POLLHUP", 0)
_WRITABLE = getattr(select, "POLLOUT", 0) | getattr(select, "POLLERR", 0) | getattr(select, "POLLHUP", 0)


def plain_socket(stream: object) -> socket.socket | None:
    """The plain TCP socket under one of httpcore's sync streams; ``None`` for TLS, a Unix socket, any other, and
    where there is no ``select.poll`` (then httpcore's stream serves)."""
    if type(stream).__name__ != "SyncStream" or getattr(select, "poll", None) is None:
        return None
    sock = getattr(stream, "_sock", None)
    if type(sock) is not socket.socket or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def _milliseconds(timeout: float | None) -> float | None:
    """A timeout in seconds as ``poll`` takes it (``None``: wait for ever; a negative one would mean that too)."""
    return None if timeout is None else timeout * 1000.0 if timeout > 0 else 0


class SocketStream(httpcore.NetworkStream):
    """One of httpcore's sync TCP streams, read and written on its non-blocking socket.

    Args:
        stream: httpcore's stream (kept for ``start_tls`` and the information it gives).
        sock: Its socket (:func:`plain_socket`).
    """

    def __init__(self, stream: httpcore.NetworkStream, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._stream = stream
        self._sock = sock
        self._send = sock.send
        self._recv = sock.recv
        self._readable = select.poll()
        self._readable.register(sock, _READABLE)
        self._wait_readable = self._readable.poll
        self._writable: Any = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._wait_readable(None if timeout is None else timeout * 1000.0 if timeout > 0 else 0):
            if self._sock.fileno() < 0:
                raise httpcore.ReadError("the connection is closed")
            raise httpcore.ReadTimeout("timed out")
        try:
            return self._recv(max_bytes)
        except BlockingIOError:
            return self._read_slowly(max_bytes, timeout)
        except OSError as error:
            raise httpcore.ReadError(error) from error

    def _read_slowly(self, max_bytes: int, timeout: float | None) -> bytes:
        """A read after a wakeup that found nothing to receive: wait again for what is left of the timeout."""
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if until is None else max(until - time.monotonic(), 0.0)
            if not self._wait_readable(_milliseconds(left)):
                raise httpcore.ReadTimeout("timed out")
            try:
                return self._recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as error:
                raise httpcore.ReadError(error) from error

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            sent = self._send(buffer)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise httpcore.WriteError(error) from error
        if sent < len(buffer):
            self._write_slowly(memoryview(buffer)[sent:], timeout)

    def _write_slowly(self, rest: memoryview, timeout: float | None) -> None:
        """The rest of a write the socket's send buffer had no room for: wait for room, within the timeout."""
        if self._writable is None:
            self._writable = select.poll()
            self._writable.register(self._sock, _WRITABLE)
        until = None if timeout is None else time.monotonic() + timeout
        while rest:
            left = None if until is None else max(until - time.monotonic(), 0.0)
            if not self._writable.poll(_milliseconds(left)):
                raise httpcore.WriteTimeout("timed out")
            try:
                rest = rest[self._send(rest) :]
            except BlockingIOError:
                continue
            except OSError as error:
                raise httpcore.WriteError(error) from error

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return self._stream.start_tls(ssl_context, server_hostname, timeout)  # it sets the socket's own timeout

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # As httpcore: a closed socket counts as readable (its next read would return the end of the stream).
            return self._sock.fileno() < 0 or bool(self._wait_readable(0))
        return self._stream.get_extra_info(info)


# -- asyncio --------------------------------------------------------------------------------------------------


class _Protocol(asyncio.Protocol):
    """Collects what arrives on a connection for an :class:`AsyncSocketStream`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: Any = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False  # reading paused: too much waits to be read
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None  # a read waiting for bytes
        self.drained: asyncio.Future[None] | None = None  # a write waiting for the send buffer to drain
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the transport: the peer may only have half-closed (the pool closes it, as anyio's)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _time_out(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AsyncSocketStream(httpcore.AsyncNetworkStream):
    """A TCP connection on asyncio, read and written through an :class:`asyncio.Protocol` of ours.

    Built by :func:`connect_asyncio`.
    """

    def __init__(self, protocol: _Protocol, *, tls: bool = False) -> None:
        self._protocol = protocol
        self._tls = tls
        self._loop = protocol.loop
        self._sock: socket.socket | None = protocol.transport.get_extra_info("socket")
        self._poll: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        if not chunks:
            if protocol.eof:
                if protocol.error is not None:
                    raise httpcore.ReadError(protocol.error)
                return b""
            await self._wait(timeout, httpcore.ReadTimeout, writing=False)
            if not chunks:
                if protocol.error is not None:
                    raise httpcore.ReadError(protocol.error)
                return b""  # the peer closed the connection
        chunk = chunks.popleft()
        if len(chunk) > max_bytes:
            chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        protocol.buffered -= len(chunk)
        if protocol.paused and protocol.buffered <= HIGH_WATER // 4:
            protocol.paused = False
            protocol.transport.resume_reading()
        return chunk

    async def _wait(self, timeout: float | None, timed_out: type[Exception], *, writing: bool) -> None:
        """Wait until the protocol wakes this stream, or raise ``timed_out`` after ``timeout`` seconds."""
        protocol = self._protocol
        future: asyncio.Future[None] = self._loop.create_future()
        if writing:
            protocol.drained = future
        else:
            protocol.waiter = future
        timer = None if timeout is None else self._loop.call_later(timeout, _time_out, future)
        try:
            await future
        except TimeoutError:
            raise timed_out("timed out") from None
        finally:
            if timer is not None:
                timer.cancel()
            if writing:
                protocol.drained = None
            else:
                protocol.waiter = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        transport = protocol.transport
        if protocol.error is not None:
            raise httpcore.WriteError(protocol.error)
        if transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        transport.write(buffer)
        if protocol.writing_paused:
            await self._wait(timeout, httpcore.WriteTimeout, writing=True)
            if protocol.error is not None:
                raise httpcore.WriteError(protocol.error)
            if protocol.writing_paused:
                raise httpcore.WriteError("the connection was lost while writing")

    async def aclose(self) -> None:
        transport = self._protocol.transport
        if transport.get_write_buffer_size() or self._tls:
            # Bytes the peer never took (a write that timed out): nothing will flush them. TLS: asyncio's close()
            # waits up to 30 s for the peer's close_notify before it closes the socket, longer than the event loop
            # may live; httpcore's own streams send no close_notify either (anyio's standard_compatible=False).
            transport.abort()
        elif not transport.is_closing():
            transport.close()
        await asyncio.sleep(0)  # the loop closes the socket in a callback: let it run before the loop may end

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        protocol = self._protocol
        try:
            with anyio.fail_after(timeout):
                transport = await self._loop.start_tls(
                    protocol.transport, protocol, ssl_context, server_hostname=server_hostname
                )
        except (TimeoutError, asyncio.TimeoutError) as error:  # asyncio's own handshake timeout before 3.11
            protocol.transport.abort()
            raise httpcore.ConnectTimeout("timed out") from error
        except (OSError, ssl.SSLError) as error:
            protocol.transport.abort()
            raise httpcore.ConnectError(error) from error
        if transport is None:  # pragma: no cover - the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        protocol.transport = transport
        return AsyncSocketStream(protocol, tls=True)

    def get_extra_info(self, info: str) -> Any:
        transport = self._protocol.transport
        if info == "is_readable":
            sock = self._sock
            if sock is None or sock.fileno() < 0 or self._protocol.chunks or self._protocol.eof:
                return True
            if self._poll is None:
                if getattr(select, "poll", None) is None:
                    return bool(select.select([sock], [], [], 0)[0])
                self._poll = select.poll()
                self._poll.register(sock, _READABLE)
            return bool(self._poll.poll(0))
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            local = transport.get_extra_info("sockname")
            return None if local is None else tuple(local[:2])
        if info == "server_addr":
            peer = transport.get_extra_info("peername")
            return None if peer is None else tuple(peer[:2])  # as anyio gives it (IPv6 without flow and scope)
        if info == "socket":
            return self._sock
        return None


async def connect_asyncio(
    host: str,
    port: int,
    timeout: float | None = None,
    local_address: str | None = None,
    socket_options: Iterable[Any] | None = None,
) -> AsyncSocketStream:
    """Open a TCP connection on the running asyncio loop (TCP_NODELAY, as asyncio and anyio set it).

    Raises:
        httpcore.ConnectTimeout: Not connected within ``timeout`` seconds.
        httpcore.ConnectError: The connection failed (refused, unreachable, a name that does not resolve).
    """
    loop = asyncio.get_running_loop()
    try:
        # A cancel scope, not asyncio.wait_for: the connection is made in this task, so a cancellation that lands
        # as it completes cannot lose the open connection.
        with anyio.fail_after(timeout):
            _, protocol = await loop.create_connection(
                lambda: _Protocol(loop),
                host,
                port,
                local_addr=None if local_address is None else (local_address, 0),
                happy_eyeballs_delay=0.25,
            )
    except TimeoutError as error:
        raise httpcore.ConnectTimeout("timed out") from error
    except OSError as error:
        raise httpcore.ConnectError(error) from error
    stream = AsyncSocketStream(protocol)
    if socket_options and stream._sock is not None:
        try:
            for option in socket_options:
                stream._sock.setsockopt(*option)
        except OSError as error:
            protocol.transport.abort()
            raise httpcore.ConnectError(error) from error
    return stream
