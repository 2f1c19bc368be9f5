"""Deadline-aware network I/O for httpx's connection pools.

Theory of operation: httpcore bounds every network operation (connect, TLS handshake, each read and write) by a
timeout of its own, implemented with a cancel scope it creates anyway. These wrappers lower each of those timeouts
to what is left of the ambient deadline (:func:`connectivity.current_deadline`) at the moment the operation
starts. The deadline is then enforced at the socket, exactly, without a cancel scope of ours per request: a
response that trickles in over many reads still stops at the deadline. Outside a deadline they add one context
variable lookup per operation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore

from connectivity.policies.deadline import _current

__all__ = ["DeadlineAwareAsyncBackend", "DeadlineAwareBackend", "bounded"]


def bounded(timeout: float | None) -> float | None:
    """``timeout`` lowered to the time left before the ambient deadline (never below 0)."""
    deadline = _current.get()
    if deadline is None:
        return timeout
    left = deadline.remaining()
    if left < 0:
        left = 0.0
    return left if timeout is None or timeout > left else timeout


class _Stream(httpcore.NetworkStream):
    # read and write are on every request's path: they test the context variable inline instead of calling
    # bounded(), and the calls that need no deadline are the wrapped stream's own bound methods.
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self._read = stream.read
        self._write = stream.write
        self.close = stream.close  # type: ignore[method-assign]
        self.get_extra_info = stream.get_extra_info  # type: ignore[method-assign]

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if _current.get() is None:
            return self._read(max_bytes, timeout)
        return self._read(max_bytes, bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if _current.get() is None:
            self._write(buffer, timeout)
        else:
            self._write(buffer, bounded(timeout))

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _Stream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineAwareBackend(httpcore.NetworkBackend):
    """Wraps a sync httpcore network backend so every operation respects the ambient deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_tcp(host, port, bounded(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_unix_socket(path, bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    # As _Stream; async methods cannot be replaced by bound methods of the wrapped stream without changing what
    # they return, so read and write keep one extra frame.
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._read = stream.read
        self._write = stream.write
        self.get_extra_info = stream.get_extra_info  # type: ignore[method-assign]

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if _current.get() is None:
            return await self._read(max_bytes, timeout)
        return await self._read(max_bytes, bounded(timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if _current.get() is None:
            await self._write(buffer, timeout)
        else:
            await self._write(buffer, bounded(timeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _AsyncStream:
        return _AsyncStream(await self._stream.start_tls(ssl_context, server_hostname, bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineAwareAsyncBackend(httpcore.AsyncNetworkBackend):
    """Wraps an async httpcore network backend so every operation respects the ambient deadline."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, bounded(timeout), local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._backend.connect_unix_socket(path, bounded(timeout), socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)
