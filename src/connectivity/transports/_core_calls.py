"""httpx's network transports, called the way httpx calls them, for less CPU per request.

Theory of operation: :class:`httpx.HTTPTransport` turns an :class:`httpx.Request` into an ``httpcore.Request``
and the pool's answer into an :class:`httpx.Response`. On the way it validates again what httpx has already
validated (every header name and value, the method, each part of the URL, one function call each) and enters a
generator-based context manager twice per request, once for the call and once for the response body, to map
httpcore's exceptions to httpx's. Together that is 6-8 µs of a 500 µs loopback request, more than the retry,
deadline and budget layers above it cost.

The handlers built here do the same work without the repeats: they fill an ``httpcore.Request`` with the values
httpx's transport would pass (already bytes, already checked), call the same pool, and map an exception with
httpx's own mapping, entered only when there is one. Anything unusual (an unknown method, a ``target``
extension) goes to httpx's transport itself. Whether the installed httpcore builds its requests as this module
expects is checked once, by building one request both ways; if not, the handlers are not used at all.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from connectivity._http import httpcore, httpx

__all__ = ["async_handler", "sync_handler"]

try:  # httpx's own exception mapping and response streams (httpx and httpx2 both keep them here)
    _default: Any = importlib.import_module(f"{httpx.__name__}._transports.default")
    _map_exceptions: Any = _default.map_httpcore_exceptions
    _SyncResponseStream: Any = _default.ResponseStream
    _AsyncResponseStream: Any = _default.AsyncResponseStream
except (ImportError, AttributeError):  # pragma: no cover - a layout this module does not know: no fast path
    _map_exceptions = None
    _SyncResponseStream = httpx.SyncByteStream
    _AsyncResponseStream = httpx.AsyncByteStream

_METHODS = {
    method: method.encode("ascii")
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
}
_CoreRequest = httpcore.Request
_CoreURL = httpcore.URL
_new = object.__new__


def _core_request(request: httpx.Request, method: bytes) -> Any:
    """The ``httpcore.Request`` httpx's transport builds for ``request``, without validating it again."""
    url = request.url
    core_url = _new(_CoreURL)
    core_url.scheme = url.raw_scheme
    core_url.host = url.raw_host
    core_url.port = url.port
    core_url.target = url.raw_path
    core = _new(_CoreRequest)
    core.method = method
    core.url = core_url
    core.headers = request.headers.raw
    core.stream = request.stream
    core.extensions = request.extensions
    return core


def _reference_request(request: httpx.Request) -> Any:
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )


def _same(built: Any, reference: Any) -> bool:
    if type(built) is not type(reference) or type(built.url) is not type(reference.url):
        return False
    ours, theirs = dict(vars(built)), dict(vars(reference))
    return vars(ours.pop("url")) == vars(theirs.pop("url")) and ours == theirs


def _compatible() -> bool:
    """Whether the installed httpx/httpcore build requests exactly as :func:`_core_request` does."""
    if _map_exceptions is None:
        return False
    try:
        sample = httpx.Request(
            "POST",
            "http://[::1]:8080/a%20b/c?d=e&f",
            headers={"x-one": "1", "X-Two": "two"},
            content=b"body",
            extensions={"timeout": {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}},
        )
        return _same(_core_request(sample, b"POST"), _reference_request(sample))
    except Exception:  # pragma: no cover - any surprise disables the fast path
        return False


COMPATIBLE = _compatible()
"""The fast handlers are in use (httpcore builds its requests as this module expects)."""


class _SyncStream(_SyncResponseStream):  # type: ignore[misc]
    """httpx's response stream, mapping an exception only when one is raised."""

    def __iter__(self) -> Iterator[bytes]:
        try:
            # Not `yield from`: closing this generator must not close httpcore's (httpx does not either).
            for part in self._httpcore_stream:  # noqa: UP028
                yield part
        except Exception:
            with _map_exceptions():
                raise


class _AsyncStream(_AsyncResponseStream):  # type: ignore[misc]
    """httpx's async response stream, mapping an exception only when one is raised."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._httpcore_stream:
                yield part
        except Exception:
            with _map_exceptions():
                raise


def sync_handler(transport: httpx.HTTPTransport) -> Callable[[httpx.Request], httpx.Response]:
    """``transport.handle_request``, or a cheaper function that does exactly what it does."""
    if not COMPATIBLE:
        return transport.handle_request
    pool_call = transport._pool.handle_request
    fallback = transport.handle_request
    methods = _METHODS
    response_class = httpx.Response

    def handle_request(request: httpx.Request) -> httpx.Response:
        method = methods.get(request.method)
        if method is None or "target" in request.extensions:
            return fallback(request)
        try:
            response = pool_call(_core_request(request, method))
        except Exception:
            with _map_exceptions():
                raise
        return response_class(
            status_code=response.status,
            headers=response.headers,
            stream=_SyncStream(response.stream),
            extensions=response.extensions,
        )

    return handle_request


def async_handler(
    transport: httpx.AsyncHTTPTransport,
) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    """``transport.handle_async_request``, or a cheaper coroutine function that does exactly what it does."""
    if not COMPATIBLE:
        return transport.handle_async_request
    pool_call = transport._pool.handle_async_request
    fallback = transport.handle_async_request
    methods = _METHODS
    response_class = httpx.Response

    async def handle_async_request(request: httpx.Request) -> httpx.Response:
        method = methods.get(request.method)
        if method is None or "target" in request.extensions:
            return await fallback(request)
        try:
            response = await pool_call(_core_request(request, method))
        except Exception:
            with _map_exceptions():
                raise
        return response_class(
            status_code=response.status,
            headers=response.headers,
            stream=_AsyncStream(response.stream),
            extensions=response.extensions,
        )

    return handle_async_request
