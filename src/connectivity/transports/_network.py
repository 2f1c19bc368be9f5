"""Deadline-aware network I/O for httpx's connection pools.

Theory of operation: httpcore bounds every network operation (connect, TLS handshake, each read and write) by a
timeout of its own, implemented with a cancel scope it creates anyway. These wrappers lower each of those timeouts
to what is left of the deadline at the moment the operation starts. The deadline is then enforced at the socket,
exactly, without a cancel scope of ours per request: a response that trickles in over many reads still stops at
the deadline.

Which deadline: while a request is being sent and its response head received, the ambient one
(:func:`connectivity.current_deadline`). The response body is read later, after the transports have returned and
the ambient deadline is gone; so an HTTP/1.1 connection remembers, when a request is written on it, the deadline
of the *call* (for a per-try limit, the call's deadline it narrows) and bounds the body's reads by it. A read cut
short by that deadline raises :class:`~connectivity.DeadlineExceededError`. HTTP/1.1 carries one request at a time,
so the remembered deadline is always the current request's; an HTTP/2 connection multiplexes requests and
remembers nothing (its body reads are bounded by httpx's read timeout only).
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from typing import Any

from sniffio import current_async_library

from connectivity._http import httpcore
from connectivity.errors import DeadlineExceededError
from connectivity.policies.deadline import Deadline, _current
from connectivity.transports._sockets import SocketStream, connect_asyncio, plain_socket

__all__ = ["DeadlineAwareAsyncBackend", "DeadlineAwareBackend", "bounded"]


def bounded(timeout: float | None, deadline: Deadline | None = None) -> float | None:
    """``timeout`` lowered to the time left before ``deadline`` (default: the ambient one), never below 0."""
    if deadline is None:
        deadline = _current.get()
        if deadline is None:
            return timeout
    left = deadline.expires_at - deadline.clock.now()
    if left < 0:
        left = 0.0
    return left if timeout is None or timeout > left else timeout


def _multiplexed(stream: Any) -> bool:
    ssl_object = stream.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


def _expired(error: Exception, deadline: Deadline | None) -> Exception:
    """The error to raise for a read that timed out: a deadline error if the remembered deadline is spent."""
    if deadline is not None and deadline.expires_at - deadline.clock.now() <= 1e-3:
        exc = DeadlineExceededError("deadline exceeded while reading the response")
        exc.__cause__ = error
        return exc
    return error


class _Stream(httpcore.NetworkStream):
    # read and write run several times per request: no helper calls on the common path, and the calls that need
    # no deadline are the wrapped stream's own bound methods.
    def __init__(self, stream: httpcore.NetworkStream, *, remember: bool = True) -> None:
        self._stream = stream
        self._read = stream.read
        self._write = stream.write
        self._remember = remember
        self._call: Deadline | None = None  # the deadline of the request last written (HTTP/1.1 only)
        self.close = stream.close  # type: ignore[method-assign]
        self.get_extra_info = stream.get_extra_info  # type: ignore[method-assign]

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return  # h11 hands over b"" for an empty end of message: nothing to send, nothing to bound
        current = _current.get()
        if self._remember:
            self._call = current.parent if current is not None and current.attempt_only else current
        if current is None:
            self._write(buffer, timeout)
            return
        left = current.expires_at - current.clock.now()
        self._write(buffer, 0.0 if left < 0 else left if timeout is None or timeout > left else timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # The tighter of the ambient deadline (while the request is on its way) and the call's (for the body).
        deadline = self._call
        current = _current.get()
        if current is not None and (deadline is None or current.expires_at < deadline.expires_at):
            deadline = current
        if deadline is None:
            return self._read(max_bytes, timeout)
        left = deadline.expires_at - deadline.clock.now()
        try:
            return self._read(
                max_bytes, 0.0 if left < 0 else left if timeout is None or timeout > left else timeout
            )
        except httpcore.ReadTimeout as error:
            if deadline is current:
                raise  # the transport that set the deadline reports it (per-try or total)
            raise _expired(error, deadline) from error

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _Stream:
        stream = self._stream.start_tls(ssl_context, server_hostname, bounded(timeout))
        return _Stream(stream, remember=not _multiplexed(stream))


class DeadlineAwareBackend(httpcore.NetworkBackend):
    """Wraps a sync httpcore network backend so every operation respects the deadline.

    Args:
        backend: httpcore's backend.
        multiplexed: Plain-TCP connections carry HTTP/2 (prior knowledge): remember no per-request deadline.
    """

    def __init__(self, backend: httpcore.NetworkBackend, *, multiplexed: bool = False) -> None:
        self._backend = backend
        self._remember = not multiplexed
        # httpcore's own backend: its plain TCP streams are read and written on the socket (see _sockets).
        self._direct = type(backend).__name__ == "SyncBackend"

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, bounded(timeout), local_address, socket_options)
        sock = plain_socket(stream) if self._direct else None
        if sock is not None:
            stream = SocketStream(stream, sock)
        return _Stream(stream, remember=self._remember)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(path, bounded(timeout), socket_options)
        return _Stream(stream, remember=self._remember)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    # As _Stream. read and write are plain methods returning the wrapped stream's coroutine, so awaiting them
    # costs no coroutine of ours; only a body read under the remembered deadline needs one (to report it).
    def __init__(self, stream: httpcore.AsyncNetworkStream, *, remember: bool = True) -> None:
        self._stream = stream
        self._read = stream.read
        self._write = stream.write
        self._remember = remember
        self._call: Deadline | None = None
        self.aclose = stream.aclose  # type: ignore[method-assign]
        self.get_extra_info = stream.get_extra_info  # type: ignore[method-assign]

    def write(self, buffer: bytes, timeout: float | None = None) -> Coroutine[Any, Any, None]:
        if not buffer:
            return self._write(buffer, timeout)  # an empty end of message: httpcore sends nothing, bound nothing
        current = _current.get()
        if self._remember:
            self._call = current.parent if current is not None and current.attempt_only else current
        if current is None:
            return self._write(buffer, timeout)
        left = current.expires_at - current.clock.now()
        return self._write(buffer, 0.0 if left < 0 else left if timeout is None or timeout > left else timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> Coroutine[Any, Any, bytes]:
        # The tighter of the ambient deadline (while the request is on its way) and the call's (for the body).
        deadline = self._call
        current = _current.get()
        if current is not None and (deadline is None or current.expires_at < deadline.expires_at):
            deadline = current
        if deadline is None:
            return self._read(max_bytes, timeout)
        left = deadline.expires_at - deadline.clock.now()
        bounded_timeout = 0.0 if left < 0 else left if timeout is None or timeout > left else timeout
        if deadline is current:
            return self._read(max_bytes, bounded_timeout)  # the transport that set it reports a timeout
        return self._read_body(max_bytes, bounded_timeout, deadline)

    async def _read_body(self, max_bytes: int, timeout: float, deadline: Deadline) -> bytes:
        try:
            return await self._read(max_bytes, timeout)
        except httpcore.ReadTimeout as error:
            raise _expired(error, deadline) from error

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _AsyncStream:
        stream = await self._stream.start_tls(ssl_context, server_hostname, bounded(timeout))
        return _AsyncStream(stream, remember=not _multiplexed(stream))


class DeadlineAwareAsyncBackend(httpcore.AsyncNetworkBackend):
    """Wraps an async httpcore network backend so every operation respects the deadline (see the sync one)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, *, multiplexed: bool = False) -> None:
        self._backend = backend
        self._remember = not multiplexed
        # httpcore's own backend: on asyncio, connections are ours (see _sockets); on trio, its own.
        self._direct = type(backend).__name__ in ("AutoBackend", "AnyIOBackend")

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream: httpcore.AsyncNetworkStream
        if self._direct and current_async_library() == "asyncio":
            stream = await connect_asyncio(host, port, bounded(timeout), local_address, socket_options)
        else:
            stream = await self._backend.connect_tcp(host, port, bounded(timeout), local_address, socket_options)
        return _AsyncStream(stream, remember=self._remember)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(path, bounded(timeout), socket_options)
        return _AsyncStream(stream, remember=self._remember)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)
