"""The aiohttp network backend (the ``fast`` extra): aiohttp's connection pool behind httpx's transport interface.

Theory of operation: this module only validates and delegates, so ``import connectivity`` works without aiohttp.
:class:`AiohttpTransport` checks its options against what the backend can do when it is built and fails there,
naming the option; then it imports :mod:`connectivity.transports._aiohttp` (which imports ``httpx_aiohttp`` and
``aiohttp``) and hands every async call straight to the pool found there, with no frame of its own in between.
What can only be known on the first request (an :class:`httpx.Client`, or an event loop other than asyncio) fails
there, with the same :class:`~connectivity.BackendUnavailableError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

from connectivity._http import ENVIRONMENT_VARIABLE, LIBRARY, httpx
from connectivity.errors import BackendUnavailableError

__all__ = ["AiohttpTransport", "aiohttp_limitation"]

_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own default
_INSTALL = "install the 'fast' extra (pip install 'connectivity-sdk[fast]') or use backend='httpcore'"


def _httpx_is_ours() -> bool:
    """Whether ``import httpx`` (what httpx-aiohttp does) gives the library connectivity runs on."""
    try:
        return importlib.import_module("httpx") is httpx
    except ImportError:
        return False


def aiohttp_limitation(options: Mapping[str, Any]) -> tuple[str, object, str] | None:
    """The first network option the aiohttp backend cannot honour, as ``(name, value, why)``; ``None`` if none.

    Args:
        options: Keyword arguments meant for the network transport (``http2``, ``proxy``, ``retries``, ...).
    """
    if options.get("http2"):
        return (
            "http2",
            options["http2"],
            "the aiohttp backend speaks HTTP/1.1 only; HTTP/2 needs backend='httpcore'",
        )
    if not options.get("http1", True):
        return (
            "http1",
            options["http1"],
            "the aiohttp backend speaks HTTP/1.1 only; HTTP/2 needs backend='httpcore'",
        )
    if options.get("retries"):
        return (
            "retries",
            options["retries"],
            "the aiohttp backend does not retry connections; use connectivity.Retry (it retries connect failures "
            "of any method) or backend='httpcore'",
        )
    if options.get("socket_options"):
        return "socket_options", options["socket_options"], "the aiohttp backend cannot set socket options"
    if options.get("uds") is not None:
        return "uds", options["uds"], "the aiohttp backend does not connect to Unix sockets here"
    proxy = options.get("proxy")
    if proxy is not None:
        parsed = proxy if isinstance(proxy, httpx.Proxy) else httpx.Proxy(url=proxy)
        if parsed.url.scheme != "http":
            return (
                "proxy",
                proxy,
                f"the aiohttp backend supports http:// proxies only, not {parsed.url.scheme}://; "
                "use backend='httpcore'",
            )
    return None


class AiohttpTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An aiohttp connection pool as an httpx transport: asyncio only, HTTP/1.1 only.

    Takes httpx's transport options and gives them httpx's meaning: ``verify`` and ``cert`` (through
    :func:`httpx.create_ssl_context`), ``trust_env``, ``limits`` (``max_connections`` with httpx's pool timeout,
    ``max_keepalive_connections``, ``keepalive_expiry``), ``proxy`` (``http://`` proxies) and ``local_address``.
    Requests and responses are streamed both ways; errors are httpx's own classes, mapped to what httpcore raises
    for the same failure, so retry decisions do not depend on the backend; the connect, read, write and pool
    timeouts of ``request.extensions["timeout"]`` apply as they do in httpcore, and so does the ambient deadline
    (:func:`connectivity.deadline`, per-try and total timeouts): it bounds the call, the response body included,
    without a cancel scope of :class:`~connectivity.transports.TimeoutTransport`. Responses carry the
    ``network_stream`` extension, whose ``get_extra_info("ssl_object")`` gives the peer certificate.

    The first request binds the transport to its event loop (aiohttp's sessions belong to one); after
    :meth:`aclose` the next request binds it again.

    Args:
        verify: Server certificate verification, as in httpx (``True``, ``False`` or an :class:`ssl.SSLContext`).
        cert: Client certificate, as in httpx (an ``SSLContext`` in ``verify`` with ``load_cert_chain`` is
            preferred).
        trust_env: Read ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, as in httpx.
        http1: Must stay ``True``.
        http2: Must stay ``False``: the backend speaks HTTP/1.1 only.
        limits: Connection limits, as in httpx.
        proxy: An ``http://`` proxy (URL or :class:`httpx.Proxy`, with auth and headers).
        uds: Not supported (must be ``None``).
        local_address: Local address to connect from.
        retries: Not supported (must be 0): connection retries belong to :class:`connectivity.Retry`.
        socket_options: Not supported (must be empty).

    Raises:
        BackendUnavailableError: aiohttp (the ``fast`` extra) is not installed, or an option asks for something the
            backend cannot do. Later, on the first request: used by an :class:`httpx.Client`, on an event loop
            other than asyncio, or on a second event loop without :meth:`aclose` in between.

    .. versionadded:: 0.1
    """

    connectivity_deadline_aware = True
    backend: ClassVar[str] = "aiohttp"
    """The backend's name, as :func:`connectivity.transport` spells it."""

    def __init__(
        self,
        *,
        verify: Any = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        proxy: httpx.Proxy | httpx.URL | str | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Any = None,
    ) -> None:
        options = {
            "http1": http1,
            "http2": http2,
            "proxy": proxy,
            "uds": uds,
            "retries": retries,
            "socket_options": socket_options,
        }
        limitation = aiohttp_limitation(options)
        if limitation is not None:
            name, value, why = limitation
            raise BackendUnavailableError("aiohttp", why, field=f"transport.{name}", value=value)
        if LIBRARY != "httpx" and not _httpx_is_ours():
            raise BackendUnavailableError(
                "aiohttp",
                f"httpx-aiohttp is built on httpx, and connectivity runs on {LIBRARY} here; use "
                f"backend='httpcore' (or {ENVIRONMENT_VARIABLE}=httpx with httpx clients)",
            )
        try:
            from connectivity.transports._aiohttp import Pool
        except ImportError as exc:
            raise BackendUnavailableError(
                "aiohttp", f"httpx-aiohttp / aiohttp is not installed: {_INSTALL}"
            ) from exc
        self._pool = Pool(
            verify=verify,
            cert=cert,
            trust_env=trust_env,
            limits=limits,
            proxy=httpx.Proxy(url=proxy) if isinstance(proxy, (str, httpx.URL)) else proxy,
            local_address=local_address,
        )
        # Every async call goes straight to the pool, with no frame of ours in between.
        self.handle_async_request = self._pool.handle_async_request  # type: ignore[method-assign]

    def use_fallback(self, transport: httpx.AsyncBaseTransport) -> None:
        """Hand calls this backend cannot serve (another event loop than asyncio's) to ``transport`` instead of
        raising :class:`~connectivity.BackendUnavailableError`; what ``backend="auto"`` does."""
        self._pool.fallback = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise BackendUnavailableError(
            "aiohttp",
            "aiohttp is async only and this is a sync httpx.Client; use httpx.AsyncClient on asyncio, "
            "or backend='httpcore' (or 'auto', which picks it for sync clients)",
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool.handle_async_request(request)  # not reached: __init__ rebinds this method

    def close(self) -> None:
        """Nothing to do: the pool is async, closed by :meth:`aclose`."""

    async def aclose(self) -> None:
        await self._pool.aclose()
