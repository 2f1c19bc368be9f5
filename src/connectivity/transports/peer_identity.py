"""The upstream's identity as a typed error: ``PeerIdentityError`` instead of a bare ``httpx.ConnectError``.

Theory of operation: the check itself happens in the TLS handshake. A
:class:`~connectivity.security.tls.TLSContext` (``MTLS.client_context()``, given to the network transport as
``verify=``) verifies the upstream's SPIFFE id or DNS name as soon as the handshake completes and fails the
handshake if it is not one of the expected ones, so the connection is closed before any request byte is written.
The network layer then reports an ``httpx.ConnectError`` whose cause chain (through httpcore, anyio or trio, or
aiohttp) holds the :class:`~connectivity.security.tls.PeerVerificationError`. This layer finds it and raises
:class:`~connectivity.errors.PeerIdentityError` with what was expected and what was presented. Any other error
passes through untouched.

Put it directly around the network transport, inside any retry layer: a ``PeerIdentityError`` is not a connect
failure, so retry policies do not retry it (the same upstream would present the same certificate).
"""

from __future__ import annotations

from connectivity._http import httpx
from connectivity.errors import ConfigError, PeerIdentityError
from connectivity.security.tls import MTLS, PeerVerificationError
from connectivity.transports._base import Inner, Layer

__all__ = ["PeerIdentityTransport", "find_peer_verification_error"]


def find_peer_verification_error(error: BaseException) -> PeerVerificationError | None:
    """The :class:`~connectivity.security.tls.PeerVerificationError` behind ``error``: itself, or anywhere in its
    ``__cause__``/``__context__`` chain, however many layers (httpx, httpcore, trio, aiohttp) wrapped it.

    .. versionadded:: 0.1
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, PeerVerificationError):
            return current
        pending += [link for link in (current.__context__, current.__cause__) if link is not None]
    return None


def _identity_error(mismatch: PeerVerificationError, request: httpx.Request) -> PeerIdentityError:
    return PeerIdentityError(
        f"{request.url.scheme}://{request.url.netloc.decode('ascii')}: {mismatch}",
        request=request,
        expected=mismatch.expected,
        presented=mismatch.presented,
    )


class PeerIdentityTransport(Layer):
    """Turn a failed peer identity check in the TLS handshake into :class:`~connectivity.errors.PeerIdentityError`.

    Args:
        inner: The network transport, built with ``verify=mtls.client_context()``.
        tls: The configuration the context came from, for the status app (:meth:`describe`); optional.

    Works with :class:`httpx.Client` and :class:`httpx.AsyncClient` (asyncio and trio), over httpcore or aiohttp.

    .. versionadded:: 0.1
    """

    __slots__ = ("_tls",)

    def __init__(self, inner: Inner, *, tls: MTLS | None = None) -> None:
        super().__init__(inner)
        if tls is not None and not isinstance(tls, MTLS):
            raise ConfigError("PeerIdentityTransport.tls", tls, "must be a connectivity.security.MTLS or None")
        self._tls = tls

    @property
    def tls(self) -> MTLS | None:
        """The TLS configuration given, if any."""
        return self._tls

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer: the expected peer and the certificate's status."""
        return {} if self._tls is None else self._tls.describe()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return (self._sync or self._sync_inner()).handle_request(request)
        except httpx.TransportError as error:
            mismatch = find_peer_verification_error(error)
            if mismatch is None:
                raise
            raise _identity_error(mismatch, request) from mismatch

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await (self._async or self._async_inner()).handle_async_request(request)
        except httpx.TransportError as error:
            mismatch = find_peer_verification_error(error)
            if mismatch is None:
                raise
            raise _identity_error(mismatch, request) from mismatch
