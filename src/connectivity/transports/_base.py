"""The shape every connectivity transport shares: one object, both httpx transport ABCs, an inner transport."""

from __future__ import annotations

from types import TracebackType
from typing import TypeAlias

from connectivity._http import httpx

__all__ = ["Inner", "Layer"]

Inner: TypeAlias = "httpx.BaseTransport | httpx.AsyncBaseTransport"


class Layer(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """A transport that wraps another one.

    It implements both ``handle_request`` (for :class:`httpx.Client`) and ``handle_async_request`` (for
    :class:`httpx.AsyncClient`) over the same policy objects; which one is used depends on the client. Closing and
    context management are delegated to the inner transport.
    """

    __slots__ = ("_async", "_inner", "_sync")

    def __init__(self, inner: Inner) -> None:
        if not isinstance(inner, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            raise TypeError(
                f"{type(self).__name__} needs an httpx transport as its inner transport, "
                f"got {type(inner).__name__}"
            )
        self._inner = inner
        # Resolved once: the hot path then pays an attribute read, not an isinstance check.
        self._sync = inner if isinstance(inner, httpx.BaseTransport) else None
        self._async = inner if isinstance(inner, httpx.AsyncBaseTransport) else None

    @property
    def inner(self) -> Inner:
        """The wrapped transport."""
        return self._inner

    def _sync_inner(self) -> httpx.BaseTransport:
        if self._sync is not None:
            return self._sync
        if not isinstance(self._inner, httpx.BaseTransport):
            raise TypeError(
                f"{type(self).__name__} wraps {type(self._inner).__name__}, an async-only transport: "
                "use httpx.AsyncClient, or give it an httpx.HTTPTransport"
            )
        return self._inner

    def _async_inner(self) -> httpx.AsyncBaseTransport:
        if self._async is not None:
            return self._async
        if not isinstance(self._inner, httpx.AsyncBaseTransport):
            raise TypeError(
                f"{type(self).__name__} wraps {type(self._inner).__name__}, a sync-only transport: "
                "use httpx.Client, or give it an httpx.AsyncHTTPTransport"
            )
        return self._inner

    def close(self) -> None:
        if isinstance(self._inner, httpx.BaseTransport):
            self._inner.close()

    async def aclose(self) -> None:
        if isinstance(self._inner, httpx.AsyncBaseTransport):
            await self._inner.aclose()

    def __enter__(self) -> Layer:
        if isinstance(self._inner, httpx.BaseTransport):
            self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if isinstance(self._inner, httpx.BaseTransport):
            self._inner.__exit__(exc_type, exc_value, traceback)

    async def __aenter__(self) -> Layer:
        if isinstance(self._inner, httpx.AsyncBaseTransport):
            await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if isinstance(self._inner, httpx.AsyncBaseTransport):
            await self._inner.__aexit__(exc_type, exc_value, traceback)
