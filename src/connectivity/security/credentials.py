"""Outbound credentials: what :class:`~connectivity.transports.AuthTransport` puts on each request.

Theory of operation: a provider answers one question, "which header value goes on this request?", through
:meth:`Credentials.value` (sync) or :meth:`Credentials.avalue` (async). Static credentials answer at once. A
:class:`ServiceJWT` mints a short-lived token per audience and caches it. :class:`ClientCredentials` (OAuth 2.0,
RFC 6749 §4.4) needs the network, but does no I/O of its own: the caller passes a ``send`` function, which the
transport implements with its inner transport, so a token request gets the same TLS, timeouts and retries as any
other call, and is async under an async client.

A fetched token moves through three states on the injected clock: *fresh* until its refresh time (``expires_in``
minus the skew), then *refreshing* until it expires, then *expired*. While fresh it is used as is. While
refreshing, the first caller to find the fetch lock free fetches a new one and every other caller keeps using the
old, still valid token, so nobody waits. Once expired, every caller waits for the one fetch in flight (one lock per
provider for threads, one per provider and event loop for tasks: single flight). A failed fetch is remembered for
``retry_interval`` seconds (Envoy's ``token_fetch_retry_interval``): callers in that window get the same
:class:`~connectivity.errors.CredentialError` without a new fetch, so a down token endpoint is not hammered.

Secrets (client secret, tokens, private keys) never appear in a ``repr``, an exception message, a log record or an
event. :meth:`Credentials.describe` says what the status app may show.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from connectivity._http import httpx
from connectivity.errors import ConfigError

__all__ = [
    "APIKey",
    "AsyncSend",
    "BearerToken",
    "Credentials",
    "Send",
]

Send = Callable[[httpx.Request], httpx.Response]
"""Sends a token request through the transport stack and returns the response (the provider reads and closes
it)."""
AsyncSend = Callable[[httpx.Request], Awaitable[httpx.Response]]
"""Async :data:`Send`."""


_log = logging.getLogger("connectivity.security")

# RFC 9110 field value without whitespace: what a token may be made of and still be one header value.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # OAuth error codes and token types fit to quote


def _header_value(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _HEADER_SAFE.fullmatch(value):
        # The value is a secret: the error names its type, never its text.
        raise ConfigError(field, f"<{type(value).__name__}>", "must be a non-empty string of visible ASCII")
    return value


class Credentials(ABC):
    """What :class:`~connectivity.transports.AuthTransport` asks for the header value of each request.

    Subclass it for a credential of your own: set :attr:`header`, implement :meth:`value` and :meth:`avalue`.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    header: str = "authorization"
    """The (lower-case) header the credential goes in."""
    refreshable: bool = False
    """Whether a 401 can be cured by dropping the value and getting a new one (fetched tokens)."""

    @abstractmethod
    def value(self, request: httpx.Request, send: Send) -> str:
        """The header value for ``request``; ``send`` sends a token request, if one is needed.

        Raises:
            CredentialError: No value could be obtained.
        """

    @abstractmethod
    async def avalue(self, request: httpx.Request, send: AsyncSend) -> str:
        """Async :meth:`value`."""

    def invalidate(self, value: str) -> bool:
        """Forget ``value`` (the upstream rejected it) if it is still current; whether a new one can be had."""
        return False

    def describe(self) -> dict[str, object]:
        """What the status app shows (never a secret)."""
        return {"kind": type(self).__name__, "header": self.header}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(header={self.header!r})"


class _Static(Credentials):
    __slots__ = ("_value", "header")

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        self._value = value

    def value(self, request: httpx.Request, send: Send) -> str:
        return self._value

    async def avalue(self, request: httpx.Request, send: AsyncSend) -> str:
        return self._value


class BearerToken(_Static):
    """A static bearer token, sent as ``Authorization: Bearer <token>`` (RFC 6750).

    Args:
        token: The token (visible ASCII, no spaces).

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, token: str) -> None:
        super().__init__("authorization", "Bearer " + _header_value("BearerToken.token", token))


class APIKey(_Static):
    """A static API key, sent in a header of its own.

    Args:
        key: The key (visible ASCII, no spaces).
        header: The header name: ``"x-api-key"`` (default; AWS API Gateway and most SaaS APIs), ``"apikey"``
            (Kong's key-auth default), ``"authorization"``, ...
        scheme: A prefix for the value, e.g. ``"Token"`` gives ``Token <key>``.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, key: str, *, header: str = "x-api-key", scheme: str | None = None) -> None:
        if not isinstance(header, str) or not _FIELD_NAME.fullmatch(header):
            raise ConfigError("APIKey.header", header, "must be an HTTP header name (RFC 9110 token)")
        if scheme is not None and (not isinstance(scheme, str) or not _FIELD_NAME.fullmatch(scheme)):
            raise ConfigError("APIKey.scheme", scheme, "must be an authentication scheme name or None")
        value = _header_value("APIKey.key", key)
        super().__init__(header.lower(), value if scheme is None else f"{scheme} {value}")


def _skew(lifetime: float, before: float, share: float) -> float:
    """How long before expiry to refresh: the larger of the two rules, but never more than half the lifetime."""
    return min(max(before, share * lifetime), lifetime / 2)


class _Token:
    """A fetched header value and its timeline (monotonic seconds). The repr leaves the value out."""

    __slots__ = ("expires_at", "refresh_at", "value")

    def __init__(self, value: str, refresh_at: float, expires_at: float) -> None:
        self.value = value
        self.refresh_at = refresh_at
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"_Token(refresh_at={self.refresh_at:g}, expires_at={self.expires_at:g})"
