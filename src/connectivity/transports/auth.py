"""Outbound credentials as a transport: a bearer token, an API key, an OAuth 2.0 token or a service JWT on each
request, for :class:`httpx.Client` and :class:`httpx.AsyncClient` alike.

Theory of operation: for each request the layer asks its :class:`~connectivity.security.credentials.Credentials`
for a header value and sets it. Providers that need a token from the network get a ``send`` function that sends
the token request through ``token_transport`` (default: this layer's inner transport), so it shares the stack's
connection pool, TLS settings, timeouts and, wired as :func:`connectivity.transport` does, its retries; under an
``AsyncClient`` the fetch is async (no blocking client inside an event loop). While a token request is sent, the
current call's observer is set aside: the token endpoint's own retries are not the call's attempts.

A request that already carries the header is sent as it is, unless ``overwrite=True`` (Envoy's credential
injector: ``overwrite`` defaults to false, so a per-request credential wins). The layer recognises its own header
on a request sent again (by a retry layer outside) and refreshes it.

When the upstream answers ``401`` to a fetched token (OAuth 2.0), the layer drops that token, fetches a new one
and sends the request once more, if its body can be replayed; a second ``401`` is returned as it is. Concurrent
401s for the same token cause one fetch: a token is dropped only if it is still the current one.

With ``hosts``, credentials go only to those hosts (exact names, or ``*.example.com`` for subdomains); other
requests pass through untouched, so a redirect to another host cannot carry a bearer token there.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectivity._http import httpx
from connectivity.errors import ConfigError
from connectivity.security.credentials import Credentials
from connectivity.telemetry.events import _CALL
from connectivity.transports._base import Inner, Layer
from connectivity.transports._body import is_replayable
from connectivity.transports._outcome import adiscard, discard

__all__ = ["AuthTransport"]

_APPLIED = "connectivity.auth"
"""Request extension: the header value this layer set, to tell it from a caller's own on a resend."""


class AuthTransport(Layer):
    """Add outbound credentials to each request.

    Args:
        inner: The transport to call.
        credentials: A :class:`~connectivity.security.BearerToken`, :class:`~connectivity.security.APIKey`,
            :class:`~connectivity.security.ClientCredentials`, :class:`~connectivity.security.ServiceJWT` or
            any :class:`~connectivity.security.Credentials`.
        token_transport: Where token requests go (default: ``inner``). :func:`connectivity.transport` passes a
            retry layer over ``inner``, so token requests are retried by the stack's policy.
        overwrite: Replace a header the request already has (default: leave it, and send the request as is).
        refresh_on_401: Fetch a new token and resend once when the upstream answers 401 (fetched tokens only).
        hosts: Only these hosts get credentials (``"api.example.com"``, ``"*.example.com"``); default: all.

    Raises:
        ConfigError: An option is invalid.

    .. versionadded:: 0.1
    """

    __slots__ = ("_credentials", "_hosts", "_overwrite", "_refresh_on_401", "_suffixes", "_token_inner")

    def __init__(
        self,
        inner: Inner,
        credentials: Credentials,
        *,
        token_transport: Inner | None = None,
        overwrite: bool = False,
        refresh_on_401: bool = True,
        hosts: Iterable[str] | None = None,
    ) -> None:
        super().__init__(inner)
        if not isinstance(credentials, Credentials):
            raise ConfigError(
                "AuthTransport.credentials",
                type(credentials).__name__,
                "must be a connectivity.security.Credentials",
            )
        if token_transport is not None and not isinstance(
            token_transport, (httpx.BaseTransport, httpx.AsyncBaseTransport)
        ):
            raise ConfigError(
                "AuthTransport.token_transport",
                type(token_transport).__name__,
                "must be an httpx transport or None",
            )
        self._credentials = credentials
        self._token_inner: Inner = inner if token_transport is None else token_transport
        self._overwrite = bool(overwrite)
        self._refresh_on_401 = bool(refresh_on_401)
        self._hosts, self._suffixes = _host_patterns(hosts)

    @property
    def credentials(self) -> Credentials:
        """The credential provider."""
        return self._credentials

    def __repr__(self) -> str:
        return f"AuthTransport({self._credentials!r}, inner={type(self._inner).__name__})"

    def describe(self) -> dict[str, object]:
        """What the status app shows: the provider's state (never a secret) and the options."""
        hosts = None if self._hosts is None else sorted(self._hosts) + [f"*{s}" for s in self._suffixes]
        return {
            "credentials": self._credentials.describe(),
            "overwrite": self._overwrite,
            "refresh_on_401": self._refresh_on_401,
            "hosts": hosts,
        }

    def _applies(self, request: httpx.Request) -> bool:
        if self._hosts is not None:
            host = request.url.host.lower()
            if host not in self._hosts and not host.endswith(self._suffixes):
                return False
        if self._overwrite:
            return True
        present = request.headers.get(self._credentials.header)
        return present is None or present == request.extensions.get(_APPLIED)

    def _set(self, request: httpx.Request, value: str) -> None:
        request.headers[self._credentials.header] = value
        request.extensions[_APPLIED] = value

    def _resend(self, request: httpx.Request, response: httpx.Response, value: str) -> bool:
        """Whether to fetch a new credential and send again after ``response``."""
        return (
            response.status_code == 401
            and self._refresh_on_401
            and self._credentials.refreshable
            and is_replayable(request)
            and self._credentials.invalidate(value)
        )

    def _send(self, token_request: httpx.Request) -> httpx.Response:
        target = self._token_inner
        if not isinstance(target, httpx.BaseTransport):
            raise TypeError(
                f"AuthTransport sends token requests through {type(target).__name__}, an async-only transport: "
                "use httpx.AsyncClient, or give it a sync token_transport"
            )
        reset = _CALL.set(None)
        try:
            return target.handle_request(token_request)
        finally:
            _CALL.reset(reset)

    async def _asend(self, token_request: httpx.Request) -> httpx.Response:
        target = self._token_inner
        if not isinstance(target, httpx.AsyncBaseTransport):
            raise TypeError(
                f"AuthTransport sends token requests through {type(target).__name__}, a sync-only transport: "
                "use httpx.Client, or give it an async token_transport"
            )
        reset = _CALL.set(None)
        try:
            return await target.handle_async_request(token_request)
        finally:
            _CALL.reset(reset)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        if not self._applies(request):
            return inner.handle_request(request)
        value = self._credentials.value(request, self._send)
        self._set(request, value)
        response = inner.handle_request(request)
        if not self._resend(request, response, value):
            return response
        discard(response)  # first: the token request may need its connection
        self._set(request, self._credentials.value(request, self._send))
        return inner.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        if not self._applies(request):
            return await inner.handle_async_request(request)
        value = await self._credentials.avalue(request, self._asend)
        self._set(request, value)
        response = await inner.handle_async_request(request)
        if not self._resend(request, response, value):
            return response
        await adiscard(response)
        self._set(request, await self._credentials.avalue(request, self._asend))
        return await inner.handle_async_request(request)


def _host_patterns(hosts: Iterable[str] | None) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    if hosts is None:
        return None, ()
    if isinstance(hosts, str):
        raise ConfigError("AuthTransport.hosts", hosts, "must be a collection of host names, not one string")
    exact, suffixes = set(), []
    for given in hosts:
        if not isinstance(given, str) or not given.strip(". *") or " " in given:
            raise ConfigError("AuthTransport.hosts", given, "each must be a host name or '*.' and a domain")
        host = given.lower()
        if host.startswith("*."):
            suffixes.append(host[1:])
        elif "*" in host:
            raise ConfigError("AuthTransport.hosts", given, "a wildcard is allowed only as the first label ('*.')")
        else:
            exact.add(host)
    return frozenset(exact), tuple(suffixes)
