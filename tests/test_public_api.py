"""The public surface is pinned: adding or removing a name is a deliberate change made here too."""

import connectivity
import connectivity.admin
import connectivity.backends
import connectivity.balancing
import connectivity.compare
import connectivity.discovery
import connectivity.middleware
import connectivity.policies
import connectivity.routing
import connectivity.security
import connectivity.telemetry
import connectivity.testing
import connectivity.transports

PUBLIC = [
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


def test_all_is_the_sorted_set_of_public_names() -> None:
    assert connectivity.__all__ == sorted(set(connectivity.__all__))
    assert connectivity.__all__ == PUBLIC


SUBPACKAGES = {
    connectivity.transports: [
        "AccessLogTransport",
        "AdaptiveConcurrencyTransport",
        "AiohttpTransport",
        "AuthTransport",
        "AutoTransport",
        "BulkheadTransport",
        "CallRecord",
        "CircuitBreakerTransport",
        "EXTENSION",
        "EndpointPools",
        "FaultInjectionTransport",
        "HTTPTransport",
        "HedgingTransport",
        "Inner",
        "Layer",
        "LoadBalancingTransport",
        "MirrorTransport",
        "PeerIdentityTransport",
        "RateLimitTransport",
        "RequestIDTransport",
        "RetryTransport",
        "RoutingTransport",
        "TimeoutTransport",
        "TracingTransport",
        "failure_kind",
    ],
    connectivity.middleware: [
        "APIKeyAuthMiddleware",
        "AccessLogMiddleware",
        "AuthorizationMiddleware",
        "ConcurrencyLimitMiddleware",
        "JWTAuthMiddleware",
        "PeerIdentityMiddleware",
        "RateLimitMiddleware",
        "RequestIDMiddleware",
        "TracingMiddleware",
        "rate_limit",
        "require_groups",
        "require_peer",
        "require_scopes",
    ],
    connectivity.security: [
        "JWKS",
        "MTLS",
        "APIKey",
        "Authorizer",
        "BearerToken",
        "CertificateAuthority",
        "CertificateStatus",
        "ClientCredentials",
        "Condition",
        "Consumer",
        "Credentials",
        "Decision",
        "IssuedCertificate",
        "JWTVerifier",
        "KeyRing",
        "Operation",
        "Peer",
        "PeerHandshake",
        "PeerVerificationError",
        "Policy",
        "Principal",
        "RequestFacts",
        "RotationEvent",
        "Rule",
        "ServiceJWT",
        "SkippedKey",
        "Source",
        "SpiffeId",
        "TLSContext",
        "VerificationKey",
        "XfccElement",
        "create_ca",
        "generate_key",
        "hash_key",
        "issue",
        "load_ca",
        "parse_client_cert",
        "parse_client_cert_chain",
        "parse_xfcc",
        "peer_of",
        "principal_of",
    ],
    connectivity.balancing: [
        "DEFAULT_DECAY",
        "DEFAULT_PENALTY",
        "EWMA",
        "EndpointSet",
        "EndpointStats",
        "HealthCheck",
        "HealthChecker",
        "HealthTransition",
        "LeastRequest",
        "Maglev",
        "Picker",
        "Random",
        "RingHash",
        "RoundRobin",
        "SlowStart",
        "Weighted",
        "ZoneAwarePicker",
    ],
    connectivity.discovery: [
        "DNS",
        "DiscoveryError",
        "Endpoint",
        "Etcd",
        "File",
        "Resolution",
        "Resolver",
        "Static",
        "UpdateCallback",
        "parse_endpoints",
    ],
    connectivity.routing: [
        "Abort",
        "Backend",
        "Delay",
        "FaultDecision",
        "FaultInjection",
        "FaultStats",
        "HeaderMatch",
        "MirrorSlots",
        "MirrorStats",
        "Override",
        "PathMatch",
        "Route",
        "RouteChoice",
        "RouteTable",
        "Sticky",
        "shadow_host",
        "stable_fraction",
    ],
    connectivity.compare: [
        "CPU_RATIO",
        "FULL",
        "QUICK",
        "SCENARIOS",
        "Balancing",
        "Fleet",
        "FleetError",
        "Policy",
        "Scenario",
        "Settings",
        "run",
        "verdicts",
    ],
    connectivity.backends: ["RedisBreakerBackend", "RedisCircuit", "RedisRateLimiter"],
    connectivity.telemetry: [
        "DEFAULT_REDACTION",
        "REDACTED",
        "RedactingFilter",
        "Redaction",
        "SCOPE",
        "Telemetry",
        "current_request_id",
        "emit",
        "events",
        "redact_httpx_logs",
        "semconv",
        "subscribe",
        "track_breaker",
        "track_budget",
    ],
    connectivity.admin: [
        "ASGIApp",
        "KINDS",
        "REGISTRY",
        "Registry",
        "StatusSource",
        "app",
        "describe",
        "register",
        "register_client",
        "snapshot",
    ],
}


def test_subpackages_export_exactly_their_pinned_names() -> None:
    for module, names in SUBPACKAGES.items():
        assert sorted(module.__all__) == sorted(names), module.__name__


def test_every_exported_name_exists() -> None:
    for module in (
        connectivity,
        connectivity.policies,
        connectivity.transports,
        connectivity.testing,
        *SUBPACKAGES,
    ):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_outbound_errors_are_httpx_transport_errors() -> None:
    import httpx

    for error in (
        connectivity.DeadlineExceededError,
        connectivity.PerTryTimeoutError,
        connectivity.RetriesExhaustedError,
        connectivity.RetryBudgetExhaustedError,
        connectivity.OutboundError,
        connectivity.PeerIdentityError,
        connectivity.CredentialError,
        connectivity.NoHealthyEndpointError,
        connectivity.NoRouteError,
    ):
        assert issubclass(error, connectivity.ConnectivityError)
        assert issubclass(error, httpx.TransportError)
    assert issubclass(connectivity.DeadlineExceededError, httpx.TimeoutException)
    assert issubclass(connectivity.ConfigError, ValueError)
    for config in (connectivity.CertificateError, connectivity.KeyPolicyError, connectivity.InvalidSpiffeIdError):
        assert issubclass(config, connectivity.ConfigError)
    for inbound in (connectivity.AuthenticationError, connectivity.PermissionDeniedError):
        assert not issubclass(inbound, httpx.TransportError)


def test_policy_core_imports_no_io_and_nothing_above_it() -> None:
    """policies/ is sans-IO: no httpx, sockets or asyncio, and no project module other than errors."""
    import ast
    from pathlib import Path

    forbidden = {"httpx", "httpcore", "asyncio", "socket", "ssl", "trio"}
    for path in Path(connectivity.policies.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
                if name.startswith("connectivity"):
                    assert name.startswith(("connectivity.policies", "connectivity.errors")), (
                        f"{path.name}: {name}"
                    )
