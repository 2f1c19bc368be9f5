"""Request-id propagation as a transport: every outbound call carries the id of the inbound request behind it."""

from __future__ import annotations

from connectivity._http import httpx
from connectivity.errors import ConfigError
from connectivity.telemetry.request_id import HEADER, _current
from connectivity.transports._base import Inner, Layer

__all__ = ["RequestIDTransport"]


class RequestIDTransport(Layer):
    """Copy the current request id (set by :class:`~connectivity.middleware.RequestIDMiddleware`) into a header.

    Args:
        inner: The transport to call.
        header: The header to set (default ``x-request-id``, as Envoy does). A request that already carries it
            keeps its own value.

    Outside an inbound request (no current id) requests go out unchanged.

    .. versionadded:: 0.1
    """

    __slots__ = ("_header",)

    def __init__(self, inner: Inner, *, header: str = HEADER) -> None:
        super().__init__(inner)
        if not isinstance(header, str) or not header or not header.isascii() or any(c in header for c in " :\r\n"):
            raise ConfigError("RequestIDTransport.header", header, "must be a non-empty ASCII header name")
        self._header = header.lower()

    def describe(self) -> dict[str, str]:
        """What the status app shows for this layer."""
        return {"header": self._header}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        value = _current.get()
        if value is not None and self._header not in request.headers:
            request.headers[self._header] = value
        return (self._sync or self._sync_inner()).handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        value = _current.get()
        if value is not None and self._header not in request.headers:
            request.headers[self._header] = value
        return await (self._async or self._async_inner()).handle_async_request(request)
