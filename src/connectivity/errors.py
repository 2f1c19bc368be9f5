"""The connectivity error hierarchy.

Every error the library raises is a :class:`ConnectivityError`. Errors raised on the outbound path also subclass
:class:`httpx.TransportError` (timeouts subclass :class:`httpx.TimeoutException`), so code that already says
``except httpx.TransportError`` keeps working, and they carry the request that failed. When a policy gives up after
trying, the error chains the last underlying failure as its ``__cause__``.

Configuration errors are :class:`ValueError` subclasses raised at construction time; they name the field, the bad
value and the rule it broke.
"""

from __future__ import annotations

from typing import Any

from connectivity._http import httpx

__all__ = [
    "AuthenticationError",
    "BackendUnavailableError",
    "CertificateError",
    "CircuitOpenError",
    "ConcurrencyLimitError",
    "ConfigError",
    "ConnectivityError",
    "ConnectivityWarning",
    "CredentialError",
    "DeadlineExceededError",
    "InvalidSpiffeIdError",
    "KeyPolicyError",
    "MalformedHeaderError",
    "NoHealthyEndpointError",
    "NoRouteError",
    "PeerIdentityError",
    "PermissionDeniedError",
    "RateLimitedError",
    "OutboundError",
    "PerTryTimeoutError",
    "RetriesExhaustedError",
    "RetryBudgetExhaustedError",
]


class ConnectivityError(Exception):
    """Base class of every error raised by connectivity."""


class ConnectivityWarning(UserWarning):
    """A configuration that works but is probably not what was meant (e.g. retries at two layers)."""


class ConfigError(ConnectivityError, ValueError):
    """A configuration value is invalid.

    Attributes:
        field: Dotted name of the offending field, e.g. ``"Retry.attempts"``.
        value: The value that was rejected.
        rule: What the value must satisfy.
    """

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"{field}={value!r} is invalid: {rule}")


class BackendUnavailableError(ConfigError):
    """The chosen network backend cannot serve this client: it is not installed, or it lacks what is asked of it.

    For example ``backend="aiohttp"`` with ``http2=True`` (raised when the transport is built), or used by an
    :class:`httpx.Client` or on trio (raised by the first request, the first moment it can be known). Like every
    :class:`ConfigError` it is a :class:`ValueError`, not an :class:`httpx.TransportError`, so no retry layer,
    breaker or fallback takes it for a failing upstream.

    Attributes:
        backend: The backend's name, e.g. ``"aiohttp"``.
        reason: What it cannot do, and what to use instead.

    .. versionadded:: 0.1
    """

    def __init__(self, backend: str, reason: str, *, field: str = "transport.backend", value: Any = None) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(field, backend if value is None else value, reason)


class OutboundError(ConnectivityError, httpx.TransportError):
    """An outbound request failed because of a connectivity policy (base of the outbound errors)."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        # httpx.RequestError.__init__ takes the request keyword; keep it so `.request` works like httpx's own.
        super().__init__(message, request=request)


class DeadlineExceededError(ConnectivityError, httpx.TimeoutException):
    """The total time budget of a call (its deadline) ran out.

    Attributes:
        timeout: The budget the failing layer enforced, in seconds: its own total, or what was left of an
            ambient deadline when the call reached it (``None`` when unknown).
    """

    def __init__(
        self, message: str, *, request: httpx.Request | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(message, request=request)
        self.timeout = timeout


class PerTryTimeoutError(ConnectivityError, httpx.TimeoutException):
    """One attempt ran past its per-try timeout; the retry layer may try again within the total deadline."""

    def __init__(self, message: str, *, request: httpx.Request | None = None, timeout: float) -> None:
        super().__init__(message, request=request)
        self.timeout = timeout


class RetriesExhaustedError(OutboundError):
    """Every allowed attempt failed with an error; ``__cause__`` is the last underlying error.

    Attributes:
        attempts: How many attempts were made.
        reasons: Why each failed attempt was considered a failure, oldest first.
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        attempts: int,
        reasons: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, request=request)
        self.attempts = attempts
        self.reasons = reasons


class RetryBudgetExhaustedError(RetriesExhaustedError):
    """A retry was warranted but the retry budget had no room for it; ``__cause__`` is the last error."""


class CircuitOpenError(OutboundError):
    """A circuit breaker refused the call without sending it.

    Attributes:
        breaker: The breaker's name (and scope key, e.g. ``"orders/10.0.0.7:8080"``).
        state: ``"open"``, ``"half-open"`` (all probe permits taken) or ``"isolated"``.
        retry_after: Seconds until the breaker lets a probe through (``None`` when isolated by hand).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        breaker: str = "",
        state: str = "open",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request=request)
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after


class ConcurrencyLimitError(OutboundError):
    """A bulkhead or adaptive concurrency limit rejected the call without sending it.

    Attributes:
        limiter: The limiter's name.
        limit: The concurrency limit in force when the call was rejected.
        reason: ``"full"`` (no slot and no queue room) or ``"queue timeout"`` (waited too long for a slot).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        limiter: str = "",
        limit: int = 0,
        reason: str = "full",
    ) -> None:
        super().__init__(message, request=request)
        self.limiter = limiter
        self.limit = limit
        self.reason = reason


class RateLimitedError(OutboundError):
    """A client-side rate limit refused the call (or the wait for it would outlast the deadline); nothing was sent.

    Attributes:
        limiter: The limiter's name.
        limit: The limit that refused (e.g. ``"100/10s"``).
        retry_after: Seconds until the call would be allowed.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        limiter: str = "",
        limit: str = "",
        retry_after: float = 0.0,
    ) -> None:
        super().__init__(message, request=request)
        self.limiter = limiter
        self.limit = limit
        self.retry_after = retry_after


class InvalidSpiffeIdError(ConfigError):
    """A string is not a valid SPIFFE id (see :class:`connectivity.security.SpiffeId`).

    Attributes:
        field: Where the id came from, e.g. ``"MTLS.peer_id"`` or ``"certificate URI SAN"``.
        value: The rejected text.
        rule: The rule of the SPIFFE ID specification it breaks, e.g. ``"path cannot contain dot segments"``.

    .. versionadded:: 0.1
    """


class CertificateError(ConfigError):
    """TLS material is unusable: unreadable, expired, not yet valid, key and certificate do not match, or not an
    X509-SVID when one is required. The message names the file (or ``"<PEM string>"``) and the rule broken; it
    never contains key material.

    .. versionadded:: 0.1
    """


class KeyPolicyError(ConfigError):
    """A verification key breaks the key policy: too weak (RSA under 2048 bits, an HMAC key shorter than its hash),
    meant for another use (``use=enc``, ``key_ops`` without ``verify``) or of the wrong type for its algorithm.

    .. versionadded:: 0.1
    """


class PeerIdentityError(OutboundError):
    """The upstream completed the TLS handshake but is not who it was expected to be (its SPIFFE id or DNS name
    matches none of the expected ones). The connection is closed; nothing was sent.

    Attributes:
        expected: What was expected (SPIFFE ids, trust domains or DNS names), as text.
        presented: What the peer presented (its SPIFFE id or DNS names), as text.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        expected: tuple[str, ...] = (),
        presented: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, request=request)
        self.expected = expected
        self.presented = presented


class CredentialError(OutboundError):
    """Outbound credentials could not be obtained (e.g. the OAuth2 token endpoint failed or answered garbage).

    The message says what failed; it never contains a secret, a token or a client secret.

    .. versionadded:: 0.1
    """


class AuthenticationError(ConnectivityError):
    """An inbound credential was rejected; the middleware answers 401.

    Attributes:
        error: The OAuth 2.0 bearer error code for ``WWW-Authenticate`` (``"invalid_token"``,
            ``"invalid_request"``), or ``""`` for other schemes.
        reason: Why, for logs and the problem body; never contains the credential.

    .. versionadded:: 0.1
    """

    def __init__(self, reason: str, *, error: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class PermissionDeniedError(ConnectivityError):
    """An authenticated (or anonymous) caller is not allowed to do this; the middleware answers 403.

    Attributes:
        reason: Which policy denied, or that no ALLOW policy matched.

    .. versionadded:: 0.1
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedHeaderError(ConnectivityError, ValueError):
    """A client-certificate header breaks its grammar.

    Attributes:
        header: The header's name, e.g. ``"x-forwarded-client-cert"``.
        reason: The rule broken. The header's value is never repeated (it may be large, and it is the caller's).

    .. versionadded:: 0.1
    """

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.reason = reason


class NoHealthyEndpointError(OutboundError):
    """A load balancer had no endpoint to send the call to (discovery found none, or all are excluded); nothing
    was sent.

    Attributes:
        service: The logical service (e.g. ``"orders"``).
        reason: Why: ``"no endpoints"`` (discovery returned none), or what excluded them.

    .. versionadded:: 0.1
    """

    def __init__(
        self, message: str, *, request: httpx.Request | None = None, service: str = "", reason: str = ""
    ) -> None:
        super().__init__(message, request=request)
        self.service = service
        self.reason = reason


class NoRouteError(OutboundError):
    """No route matched the request and there is no default target; nothing was sent.

    Attributes:
        method: The request's method.
        path: The request's path (without the query string).

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, request: httpx.Request | None = None, method: str = "", path: str = ""):
        super().__init__(message, request=request)
        self.method = method
        self.path = path
