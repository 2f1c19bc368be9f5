"""connectivity: what a service mesh sidecar and an API gateway do, inside the service process.

Outbound, a stack of composable httpx transports (:func:`transport`, :mod:`connectivity.transports`); underneath,
pure policy primitives (:mod:`connectivity.policies`) that tests can import; and a testing kit
(:mod:`connectivity.testing`).

Example::

    import httpx
    import connectivity as cx

    transport = cx.transport(
        timeout=cx.Timeout(total=10.0, per_try=2.0),
        retry=cx.Retry(attempts=3, budget=cx.RetryBudget(ratio=0.2, min_per_second=10)),
    )
    client = httpx.AsyncClient(transport=transport, base_url="http://orders")
"""

from connectivity import balancing, discovery, policies, routing, security, transports
from connectivity._builder import transport
from connectivity._version import __version__
from connectivity.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CertificateError,
    CircuitOpenError,
    ConcurrencyLimitError,
    ConfigError,
    ConnectivityError,
    ConnectivityWarning,
    CredentialError,
    DeadlineExceededError,
    InvalidSpiffeIdError,
    KeyPolicyError,
    MalformedHeaderError,
    NoHealthyEndpointError,
    NoRouteError,
    OutboundError,
    PeerIdentityError,
    PermissionDeniedError,
    PerTryTimeoutError,
    RateLimitedError,
    RetriesExhaustedError,
    RetryBudgetExhaustedError,
)
from connectivity.policies import (
    AIMD,
    AdaptiveConcurrency,
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Clock,
    Deadline,
    Gradient2,
    Hedge,
    RateLimit,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    Vegas,
    current_deadline,
    deadline,
)
from connectivity.transports import CallRecord

__all__ = [
    "AIMD",
    "AdaptiveConcurrency",
    "AuthenticationError",
    "BackendUnavailableError",
    "Backoff",
    "Bulkhead",
    "CallRecord",
    "CertificateError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConcurrencyLimitError",
    "ConfigError",
    "ConnectivityError",
    "ConnectivityWarning",
    "CredentialError",
    "Deadline",
    "DeadlineExceededError",
    "Gradient2",
    "Hedge",
    "InvalidSpiffeIdError",
    "KeyPolicyError",
    "MalformedHeaderError",
    "NoHealthyEndpointError",
    "NoRouteError",
    "OutboundError",
    "PeerIdentityError",
    "PerTryTimeoutError",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitedError",
    "RateLimiter",
    "RetriesExhaustedError",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "Timeout",
    "Vegas",
    "__version__",
    "balancing",
    "current_deadline",
    "deadline",
    "discovery",
    "policies",
    "routing",
    "security",
    "transport",
    "transports",
]
