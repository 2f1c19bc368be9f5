"""The real network transport, for both client kinds at once."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import httpx

__all__ = ["HTTPTransport"]


class HTTPTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """httpx's own network transports behind one object, so one stack serves ``Client`` and ``AsyncClient``.

    The sync pool (:class:`httpx.HTTPTransport`) and the async pool (:class:`httpx.AsyncHTTPTransport`) are
    created on first use with the same keyword arguments (``verify``, ``cert``, ``http2``, ``limits``, ...).

    .. versionadded:: 0.1
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._sync: httpx.HTTPTransport | None = None
        self._async: httpx.AsyncHTTPTransport | None = None
        self._lock = threading.Lock()

    @property
    def sync(self) -> httpx.HTTPTransport:
        """The sync pool (created on first use)."""
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = httpx.HTTPTransport(**self._kwargs)
        return self._sync

    @property
    def asynchronous(self) -> httpx.AsyncHTTPTransport:
        """The async pool (created on first use)."""
        if self._async is None:
            with self._lock:
                if self._async is None:
                    self._async = httpx.AsyncHTTPTransport(**self._kwargs)
        return self._async

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return (self._sync or self.sync).handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await (self._async or self.asynchronous).handle_async_request(request)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()

    def __enter__(self) -> HTTPTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> HTTPTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
