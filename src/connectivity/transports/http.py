"""The real network transport, for both client kinds at once."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from connectivity._http import httpx
from connectivity.transports._core_calls import async_handler, sync_handler
from connectivity.transports._network import DeadlineAwareAsyncBackend, DeadlineAwareBackend

__all__ = ["HTTPTransport"]


class HTTPTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """httpx's own network transports behind one object, so one stack serves ``Client`` and ``AsyncClient``.

    The sync pool (:class:`httpx.HTTPTransport`) and the async pool (:class:`httpx.AsyncHTTPTransport`) are
    created on first use with the same keyword arguments (``verify``, ``cert``, ``http2``, ``limits``, ...).

    Requests go to the pools as httpx's transports send them, minus the second validation of what httpx has
    already validated (see ``_core_calls``): the same pool, the same requests, the same exceptions, less CPU.

    Their network I/O is deadline-aware: every connect, read and write is bounded by what is left of the ambient
    deadline, so a :class:`~connectivity.transports.TimeoutTransport` above needs no cancel scope of its own.

    .. versionadded:: 0.1
    """

    connectivity_deadline_aware = True
    backend: ClassVar[str] = "httpcore"
    """The backend's name, as :func:`connectivity.transport` spells it."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        # HTTP/2 over plain TCP (prior knowledge) multiplexes requests on one connection.
        self._h2c = bool(kwargs.get("http2")) and not kwargs.get("http1", True)
        self._sync: httpx.HTTPTransport | None = None
        self._async: httpx.AsyncHTTPTransport | None = None
        self._lock = threading.Lock()

    @property
    def retries(self) -> int:
        """Connection retries httpx's pools make on their own (the ``retries`` argument)."""
        return int(self._kwargs.get("retries", 0))

    @property
    def sync(self) -> httpx.HTTPTransport:
        """The sync pool (created on first use)."""
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    sync = httpx.HTTPTransport(**self._kwargs)
                    pool = sync._pool
                    pool._network_backend = DeadlineAwareBackend(pool._network_backend, multiplexed=self._h2c)
                    self._sync = sync
                    # From now on a call goes straight to the pool, with no frame of ours in between.
                    self.handle_request = sync_handler(sync)  # type: ignore[method-assign,assignment]
        return self._sync

    @property
    def asynchronous(self) -> httpx.AsyncHTTPTransport:
        """The async pool (created on first use)."""
        if self._async is None:
            with self._lock:
                if self._async is None:
                    transport = httpx.AsyncHTTPTransport(**self._kwargs)
                    pool = transport._pool
                    pool._network_backend = DeadlineAwareAsyncBackend(pool._network_backend, multiplexed=self._h2c)
                    self._async = transport
                    self.handle_async_request = async_handler(transport)  # type: ignore[method-assign,assignment]
        return self._async

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sync  # noqa: B018 - first call only: creating the pool rebinds this method
        return self.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.asynchronous  # noqa: B018 - first call only, as above
        return await self.handle_async_request(request)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
