"""OAuth 2.0 client credentials (RFC 6749 section 4.4): tokens fetched through the caller's own transport.

See :mod:`connectivity.security.credentials` for the theory of operation (fresh, refreshing and expired tokens,
single flight, remembered failures).
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Literal
from urllib.parse import quote_plus, urlencode
from weakref import WeakKeyDictionary

import anyio
import anyio.lowlevel

from connectivity._http import httpx
from connectivity.errors import ConfigError, CredentialError, DeadlineExceededError
from connectivity.policies._validate import at_least_int, finite_non_negative, finite_positive, ratio
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.security.credentials import (
    _HEADER_SAFE,
    _SAFE_WORD,
    _SCOPE_TOKEN,
    AsyncSend,
    Credentials,
    Send,
    _log,
    _skew,
    _Token,
)
from connectivity.telemetry import semconv
from connectivity.telemetry.events import TOKEN_FAILED, TOKEN_FETCHED, emit
from connectivity.telemetry.redaction import DEFAULT_REDACTION

__all__ = ["ClientCredentials"]


_ASYNC_LOCKS: anyio.lowlevel.RunVar[WeakKeyDictionary[ClientCredentials, anyio.Lock]] = anyio.lowlevel.RunVar(
    "connectivity.credentials.locks"
)


class ClientCredentials(Credentials):
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4): a bearer token fetched from a token endpoint.

    Args:
        token_url: The token endpoint (``https://``; ``http://`` only for loopback or with ``allow_http``).
        client_id: The client identifier (not a secret, RFC 6749 §2.2; shown by ``repr``).
        client_secret: The client secret (never shown, logged or raised).
        auth_method: ``"client_secret_basic"`` (default, RFC 6749 §2.3.1: HTTP Basic with the form-encoded id
            and secret) or ``"client_secret_post"`` (both in the form body).
        scopes: Scopes to ask for (sent space-separated as ``scope``).
        audience: An ``audience`` parameter (Auth0, Okta and others).
        resource: A ``resource`` indicator (RFC 8707): the absolute URI of the target service.
        refresh_before: Refresh this many seconds before expiry...
        refresh_ratio: ...or this share of the token's lifetime, whichever is more (capped at half the lifetime).
        default_expires_in: Lifetime assumed when the response has no ``expires_in`` (it is only RECOMMENDED).
        retry_interval: Seconds a failed fetch is remembered: callers get the same error without a new fetch
            (Envoy's ``token_fetch_retry_interval``). ``0`` retries at once.
        max_response_bytes: Larger token responses are refused.
        allow_http: Allow a plain ``http://`` token endpoint that is not on loopback (the secret travels in clear).
        clock: Time source for expiry.

    Raises:
        ConfigError: An option is invalid.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "__weakref__",
        "_authorization",
        "_clock",
        "_default_expires_in",
        "_failure",
        "_fetches",
        "_form",
        "_lock",
        "_ratio",
        "_refresh_before",
        "_retry_interval",
        "_token",
        "_where",
        "auth_method",
        "client_id",
        "max_response_bytes",
        "scopes",
        "token_url",
    )

    refreshable = True

    def __init__(
        self,
        token_url: str | httpx.URL,
        client_id: str,
        client_secret: str,
        *,
        auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic",
        scopes: Iterable[str] = (),
        audience: str | None = None,
        resource: str | None = None,
        refresh_before: float = 30.0,
        refresh_ratio: float = 0.1,
        default_expires_in: float = 300.0,
        retry_interval: float = 2.0,
        max_response_bytes: int = 64 * 1024,
        allow_http: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.token_url = _endpoint(token_url, allow_http=allow_http)
        self._where = f"OAuth2 token endpoint {DEFAULT_REDACTION.url(str(self.token_url))}"
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError("ClientCredentials.client_id", client_id, "must be a non-empty string")
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigError("ClientCredentials.client_secret", "<secret>", "must be a non-empty string")
        if auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ConfigError(
                "ClientCredentials.auth_method",
                auth_method,
                "must be 'client_secret_basic' or 'client_secret_post'",
            )
        if isinstance(scopes, str):
            raise ConfigError("ClientCredentials.scopes", scopes, "must be a collection of scopes, not one string")
        self.scopes = tuple(scopes)
        for scope in self.scopes:
            if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
                raise ConfigError("ClientCredentials.scopes", scope, "each scope must be an RFC 6749 scope-token")
        form = [("grant_type", "client_credentials")]
        if self.scopes:
            form.append(("scope", " ".join(self.scopes)))
        if audience is not None:
            if not isinstance(audience, str) or not audience:
                raise ConfigError("ClientCredentials.audience", audience, "must be a non-empty string or None")
            form.append(("audience", audience))
        if resource is not None:
            target = httpx.URL(resource) if isinstance(resource, str) else None
            if target is None or not target.is_absolute_url or target.fragment:
                raise ConfigError(
                    "ClientCredentials.resource", resource, "must be an absolute URI without fragment"
                )
            form.append(("resource", resource))
        self.auth_method = auth_method
        self.client_id = client_id
        self._authorization: str | None = None
        if auth_method == "client_secret_basic":
            pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form += [("client_id", client_id), ("client_secret", client_secret)]
        self._form = urlencode(form).encode("ascii")
        self._refresh_before = finite_non_negative("ClientCredentials.refresh_before", refresh_before)
        self._ratio = ratio("ClientCredentials.refresh_ratio", refresh_ratio)
        self._default_expires_in = finite_positive("ClientCredentials.default_expires_in", default_expires_in)
        self._retry_interval = finite_non_negative("ClientCredentials.retry_interval", retry_interval)
        self.max_response_bytes = at_least_int("ClientCredentials.max_response_bytes", max_response_bytes, 1024)
        self._clock = clock
        self._token: _Token | None = None
        self._failure: tuple[float, str] | None = None  # (retry at, message)
        self._fetches = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ClientCredentials(token_url={DEFAULT_REDACTION.url(str(self.token_url))!r}, "
            f"client_id={self.client_id!r}, auth_method={self.auth_method!r}, scopes={self.scopes!r})"
        )

    def describe(self) -> dict[str, object]:
        token, now = self._token, self._clock.now()
        state = "none" if token is None else "fresh" if now < token.refresh_at else "refreshing"
        if token is not None and now >= token.expires_at:
            state = "expired"
        return {
            **super().describe(),
            "token_url": DEFAULT_REDACTION.url(str(self.token_url)),
            "client_id": self.client_id,
            "scopes": list(self.scopes),
            "token": state,
            "expires_in_s": None if token is None else round(token.expires_at - now, 3),
            "fetches": self._fetches,
            "failing": self._failure is not None and now < self._failure[0],
        }

    # -- the token request and its answer: pure ------------------------------------------------------------------

    def token_request(self, request: httpx.Request | None = None) -> httpx.Request:
        """The token request to send; it carries the timeouts of ``request`` (the call that needs a token)."""
        headers = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
        if self._authorization is not None:
            headers["authorization"] = self._authorization
        extensions = {}
        if request is not None and "timeout" in request.extensions:
            extensions["timeout"] = request.extensions["timeout"]
        return httpx.Request("POST", self.token_url, headers=headers, content=self._form, extensions=extensions)

    def _parse(self, status: int, body: bytes) -> tuple[str, float]:
        """The header value and lifetime (seconds) in a token response (RFC 6749 §5.1 and §5.2)."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # a decoder error quotes the body (maybe a token): never chained
            data = None
        if not 200 <= status < 300:
            code = data.get("error") if isinstance(data, dict) else None
            detail = f" ({code})" if isinstance(code, str) and _SAFE_WORD.fullmatch(code) else ""
            raise _Rejected(f"{self._where} answered {status}{detail}", f"status {status}")
        if not isinstance(data, dict):
            what = "not JSON" if data is None else "not a JSON object"
            raise _Rejected(f"{self._where} answered {status} with a body that is {what}", what)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise _Rejected(f"{self._where} answered {status} without an access_token", "no access_token")
        if not _HEADER_SAFE.fullmatch(token):
            raise _Rejected(f"{self._where} answered an access_token unfit for a header", "bad access_token")
        kind = data.get("token_type", "Bearer")  # REQUIRED by RFC 6749, yet left out by some servers
        if not isinstance(kind, str) or kind.lower() != "bearer":
            shown = repr(kind) if isinstance(kind, str) and _SAFE_WORD.fullmatch(kind) else "(unsupported)"
            raise _Rejected(f"{self._where} answered token_type {shown}, not Bearer", "token_type not Bearer")
        return "Bearer " + token, self._lifetime(data.get("expires_in"))

    def _lifetime(self, expires_in: object) -> float:
        if expires_in is None:
            return self._default_expires_in
        if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
            expires_in = int(expires_in)  # some servers send a string ("3599")
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or not 0 < expires_in < math.inf
        ):
            raise _Rejected(
                f"{self._where} answered an invalid expires_in (must be a positive number of seconds)",
                "bad expires_in",
            )
        return float(expires_in)

    # -- state ---------------------------------------------------------------------------------------------------

    def _decide(self, now: float) -> tuple[str | None, bool]:
        """The value usable now (or None) and whether to fetch; raises a remembered failure."""
        token = self._token
        if token is not None and now < token.refresh_at:
            return token.value, False
        valid = token.value if token is not None and now < token.expires_at else None
        failure = self._failure
        if failure is not None and now < failure[0]:
            if valid is not None:
                return valid, False
            raise CredentialError(f"{failure[1]}; not retried for {failure[0] - now:.3g}s")
        return valid, True

    def _settle(
        self, reason: str, fallback: str | None, outcome: tuple[str, float] | _Rejected, cause: Exception | None
    ) -> str:
        """Store a fetched token, or remember a failure and raise it (or fall back on a still valid token)."""
        now = self._clock.now()
        if isinstance(outcome, _Rejected):
            self._failure = (now + self._retry_interval, str(outcome)) if self._retry_interval > 0 else None
            emit(TOKEN_FAILED, {semconv.CONNECTIVITY_REASON: outcome.reason})
            if fallback is None:
                raise CredentialError(str(outcome)) from cause
            _log.warning("%s; using the current token until it expires", outcome)
            return fallback
        value, lifetime = outcome
        skew = _skew(lifetime, self._refresh_before, self._ratio)
        self._token = _Token(value, now + lifetime - skew, now + lifetime)
        self._failure = None
        self._fetches += 1
        emit(TOKEN_FETCHED, {semconv.CONNECTIVITY_REASON: reason, semconv.CONNECTIVITY_DELAY: lifetime})
        return value

    def _reason(self, now: float) -> str:
        token = self._token
        if token is None:
            return "rejected" if self._fetches else "initial"
        return "refresh ahead" if now < token.expires_at else "expired"

    def _transport_failure(self, exc: httpx.TransportError) -> _Rejected:
        return _Rejected(f"{self._where} failed: {type(exc).__name__}: {exc}", type(exc).__name__)

    def invalidate(self, value: str) -> bool:
        if self._token is not None and self._token.value == value:
            self._token = None  # a concurrent caller may have replaced it already: then the new one stays
        return True

    # -- the flows: sync and async, one fetch at a time ----------------------------------------------------------

    def value(self, request: httpx.Request, send: Send) -> str:
        value, fetch = self._decide(self._clock.now())
        if not fetch:
            return value  # type: ignore[return-value]  # _decide never answers (None, False)
        if value is not None:  # refreshing: one caller fetches, the others keep the valid token
            if not self._lock.acquire(blocking=False):
                return value
            try:
                return self._fetch(request, send)
            finally:
                self._lock.release()
        with self._lock:
            return self._fetch(request, send)

    def _fetch(self, request: httpx.Request, send: Send) -> str:
        now = self._clock.now()
        fallback, fetch = self._decide(now)  # another caller may have fetched while this one waited
        if not fetch:
            return fallback  # type: ignore[return-value]
        reason = self._reason(now)
        try:
            response = send(self.token_request(request))
            try:
                body = _read(response.iter_bytes(), self.max_response_bytes, self._where)
            finally:
                response.close()
            outcome: tuple[str, float] | _Rejected = self._parse(response.status_code, body)
        except DeadlineExceededError:
            raise  # the caller's own deadline ran out: not the endpoint's failure
        except _Rejected as rejected:
            return self._settle(reason, fallback, rejected, None)
        except httpx.TransportError as exc:
            return self._settle(reason, fallback, self._transport_failure(exc), exc)
        return self._settle(reason, fallback, outcome, None)

    def _async_lock(self) -> anyio.Lock:
        locks = _ASYNC_LOCKS.get(None)
        if locks is None:
            locks = WeakKeyDictionary()
            _ASYNC_LOCKS.set(locks)
        lock = locks.get(self)
        if lock is None:
            lock = locks[self] = anyio.Lock()
        return lock

    async def avalue(self, request: httpx.Request, send: AsyncSend) -> str:
        value, fetch = self._decide(self._clock.now())
        if not fetch:
            return value  # type: ignore[return-value]
        lock = self._async_lock()
        if value is not None:
            try:
                lock.acquire_nowait()
            except anyio.WouldBlock:
                return value
            try:
                return await self._afetch(request, send)
            finally:
                lock.release()
        async with lock:
            return await self._afetch(request, send)

    async def _afetch(self, request: httpx.Request, send: AsyncSend) -> str:
        now = self._clock.now()
        fallback, fetch = self._decide(now)
        if not fetch:
            return fallback  # type: ignore[return-value]
        reason = self._reason(now)
        try:
            response = await send(self.token_request(request))
            try:
                body = await _aread(response.aiter_bytes(), self.max_response_bytes, self._where)
            finally:
                await response.aclose()
            outcome: tuple[str, float] | _Rejected = self._parse(response.status_code, body)
        except DeadlineExceededError:
            raise
        except _Rejected as rejected:
            return self._settle(reason, fallback, rejected, None)
        except httpx.TransportError as exc:
            return self._settle(reason, fallback, self._transport_failure(exc), exc)
        return self._settle(reason, fallback, outcome, None)


class _Rejected(Exception):
    """A failed fetch, before it becomes a CredentialError: its message and a short reason for events."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _read(chunks: Iterable[bytes], cap: int, where: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise _Rejected(f"{where} answered a body larger than {cap} bytes", "response too large")
    return bytes(body)


async def _aread(chunks: AsyncIterator[bytes], cap: int, where: str) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise _Rejected(f"{where} answered a body larger than {cap} bytes", "response too large")
    return bytes(body)


def _endpoint(url: str | httpx.URL, *, allow_http: bool) -> httpx.URL:
    field = "ClientCredentials.token_url"
    try:
        parsed = httpx.URL(url)
    except (TypeError, httpx.InvalidURL):
        raise ConfigError(field, type(url).__name__, "must be an absolute http(s) URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(field, DEFAULT_REDACTION.url(str(url)), "must be an absolute http(s) URL")
    if parsed.userinfo:
        raise ConfigError(field, DEFAULT_REDACTION.url(str(url)), "must not carry credentials: use client_secret")
    loopback = parsed.host in ("localhost", "::1") or parsed.host.startswith("127.")
    if parsed.scheme == "http" and not allow_http and not loopback:
        raise ConfigError(
            field, DEFAULT_REDACTION.url(str(url)), "must be https (RFC 6749 §3.2), unless allow_http=True"
        )
    return parsed.copy_with(fragment=None)
