"""``backend="auto"``: the fastest network backend that can serve the calls, chosen once per kind of event loop.

Theory of operation: an :class:`AutoTransport` holds an :class:`~connectivity.transports.HTTPTransport` (httpcore,
whose pools are only created on first use) and, when the options allow it, builds an
:class:`~connectivity.transports.AiohttpTransport` on the first call from asyncio. Each decision is made on the
first call of its kind and then *replaces the method* that made it, as ``HTTPTransport`` does: later calls go
straight to the chosen pool, with no check of ours per request.

* sync (:class:`httpx.Client`): httpcore's sync pool;
* async, first call on asyncio: aiohttp when ``httpx_aiohttp`` imports and no option needs httpcore (HTTP/2,
  connection retries, socket options, a Unix socket, a non-``http://`` proxy); otherwise httpcore;
* async, first call on trio (or anything else): httpcore.

The aiohttp pool hands any call it cannot serve (from trio, or from an asyncio loop other than the one it was
bound to) to the httpcore pool: that costs a failed ``asyncio.get_running_loop()`` per such call, paid only by a
process that runs both kinds of loop over one transport.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import sniffio

from connectivity._http import httpx
from connectivity.errors import BackendUnavailableError
from connectivity.transports.aiohttp import AiohttpTransport, aiohttp_limitation
from connectivity.transports.http import HTTPTransport

__all__ = ["AutoTransport"]


class AutoTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The fastest available network backend for each kind of caller: aiohttp on asyncio, httpcore elsewhere.

    Takes httpx's transport options (``verify``, ``cert``, ``http2``, ``limits``, ``proxy``, ...) and gives them
    to whichever backend serves the call; an option only httpcore supports (``http2=True``, ``retries``,
    ``socket_options``, ``uds``, a SOCKS or ``https://`` proxy) makes every call use httpcore. Without the
    ``fast`` extra, httpcore serves everything, silently. Either way the semantics are the same: the backends map
    errors and timeouts alike (see :class:`~connectivity.transports.AiohttpTransport`).

    Args:
        **options: httpx's transport keyword arguments.

    .. versionadded:: 0.1
    """

    connectivity_deadline_aware = True
    backend: ClassVar[str] = "auto"
    """The backend's name, as :func:`connectivity.transport` spells it."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._http = HTTPTransport(**options)
        self._aiohttp: AiohttpTransport | None = None
        limitation = aiohttp_limitation(options)
        self._why_not_aiohttp = None if limitation is None else f"{limitation[0]}: {limitation[2]}"
        self._lock = threading.Lock()
        self._selected: dict[str, str] = {}

    @property
    def selected(self) -> dict[str, str]:
        """The backend chosen for each kind of caller so far, e.g. ``{"asyncio": "aiohttp", "sync": "httpcore"}``
        (keys ``"sync"``, ``"asyncio"``, ``"trio"``; a kind appears once it has made a call)."""
        return dict(self._selected)

    @property
    def retries(self) -> int:
        """Connection retries httpx's pools make on their own (the ``retries`` option)."""
        return self._http.retries

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._http.sync  # noqa: B018 - creates the pool and rebinds the transport's handle_request to it
        self._selected["sync"] = "httpcore"
        self.handle_request = self._http.handle_request  # type: ignore[method-assign]
        return self.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        library = sniffio.current_async_library()
        with self._lock:
            chosen: httpx.AsyncBaseTransport = self._http
            if library == "asyncio" and self._why_not_aiohttp is None:
                if self._aiohttp is None:
                    try:
                        self._aiohttp = AiohttpTransport(**self._options)
                    except BackendUnavailableError as exc:
                        self._why_not_aiohttp = str(exc)
                    else:
                        self._aiohttp.use_fallback(self._http)
                if self._aiohttp is not None:
                    chosen = self._aiohttp
            self._selected[library] = "aiohttp" if chosen is self._aiohttp else "httpcore"
            if chosen is self._http:
                self._http.asynchronous  # noqa: B018 - creates the pool (rebinding handle_async_request)
            # From now on async calls go straight to the chosen pool.
            self.handle_async_request = chosen.handle_async_request  # type: ignore[method-assign]
        return await chosen.handle_async_request(request)

    def close(self) -> None:
        self._http.close()

    async def aclose(self) -> None:
        if self._aiohttp is not None:
            await self._aiohttp.aclose()
        await self._http.aclose()
