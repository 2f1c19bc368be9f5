"""``connectivity.transport()``: the recommended stack, validated as a whole."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Iterable
from typing import Any, Literal, TypeAlias

from connectivity.balancing.base import Picker
from connectivity.balancing.health import HealthCheck
from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.resolver import Resolver
from connectivity.errors import ConfigError, ConnectivityWarning
from connectivity.policies.breaker import CircuitBreaker
from connectivity.policies.budget import RetryBudget
from connectivity.policies.bulkhead import Bulkhead
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.concurrency import AdaptiveConcurrency
from connectivity.policies.hedge import Hedge
from connectivity.policies.outlier import OutlierDetector
from connectivity.policies.ratelimit import RateLimiter
from connectivity.policies.retry import Retry
from connectivity.policies.timeout import Timeout
from connectivity.security.credentials import Credentials
from connectivity.security.tls import MTLS
from connectivity.telemetry.otel import Telemetry, track_budget
from connectivity.telemetry.redaction import redact_httpx_logs
from connectivity.transports._auto import AutoTransport
from connectivity.transports._base import Inner, Layer
from connectivity.transports._endpoint_pools import EndpointPools
from connectivity.transports.access_log import AccessLogTransport
from connectivity.transports.aiohttp import AiohttpTransport
from connectivity.transports.auth import AuthTransport
from connectivity.transports.balancing import LoadBalancingTransport
from connectivity.transports.breaker import CircuitBreakerTransport, Scope
from connectivity.transports.bulkhead import AdaptiveConcurrencyTransport, BulkheadTransport
from connectivity.transports.hedging import HedgingTransport
from connectivity.transports.http import HTTPTransport
from connectivity.transports.peer_identity import PeerIdentityTransport
from connectivity.transports.ratelimit import RateLimitTransport
from connectivity.transports.request_id import RequestIDTransport
from connectivity.transports.retry import RetryTransport
from connectivity.transports.timeout import TimeoutTransport
from connectivity.transports.tracing import TracingTransport

__all__ = ["BACKENDS", "NETWORK_OPTIONS", "Backend", "transport"]

Backend: TypeAlias = Literal["httpcore", "aiohttp", "auto"]
"""The network backends :func:`transport` can build the innermost transport on."""

BACKENDS: tuple[Backend, ...] = ("httpcore", "aiohttp", "auto")

NETWORK_OPTIONS = frozenset(
    (
        "verify",
        "cert",
        "trust_env",
        "http1",
        "http2",
        "limits",
        "proxy",
        "uds",
        "local_address",
        "retries",
        "socket_options",
    )
)
"""httpx's transport keyword arguments, which :func:`transport` passes to the network transport it builds."""


def transport(
    inner: Inner | None = None,
    *,
    timeout: Timeout | float | None = None,
    retry: Retry | Literal[False] | None = None,
    hedge: Hedge | None = None,
    breaker: CircuitBreaker | None = None,
    breaker_scope: Scope = "host",
    breaker_backend: Any = None,
    bulkhead: Bulkhead | AdaptiveConcurrency | None = None,
    rate_limit: RateLimiter | Any = None,
    rate_limit_mode: Literal["wait", "reject"] = "wait",
    discovery: Resolver | Iterable[Endpoint | str] | None = None,
    balancer: Picker | None = None,
    outlier: OutlierDetector | None = None,
    health_check: HealthCheck | None = None,
    service: str | None = None,
    tls: MTLS | None = None,
    auth: Credentials | None = None,
    auth_hosts: Iterable[str] | None = None,
    telemetry: Telemetry | Literal[False] | None = None,
    access_log: bool | logging.Logger = False,
    request_id: bool = True,
    name: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
    backend: Backend | None = None,
    **options: Any,
) -> Layer:
    """Build the recommended outbound stack, outermost first.

    ``tracing -> access log -> request id -> total timeout / ambient deadline -> retry (+ budget) -> auth ->
    rate limit -> circuit breaker -> bulkhead / adaptive concurrency -> hedging -> load balancing -> per-try
    timeout -> peer identity -> network``

    Every argument is optional. The result works with both ``httpx.Client`` and ``httpx.AsyncClient``.

    Args:
        inner: The network transport (default: the one ``backend`` names, built with ``options``).
        timeout: Total and per-try limits; a number means ``Timeout(total=number)``.
        retry: The retry policy. ``None`` (default) means ``Retry(budget=RetryBudget())``: 3 attempts of
            idempotent requests under a 20 % budget. ``False`` disables retries.
        hedge: Hedging policy, off by default. Hedges draw from the retry budget unless given their own.
        breaker: Circuit breaking, off by default. It sits inside the retry layer, so each attempt is one call
            to the breaker and a rejection (:class:`~connectivity.CircuitOpenError`) is not retried.
        breaker_scope: One circuit per ``"host"`` (default: per ``host:port``), per ``"client"`` or per
            ``"endpoint"``.
        breaker_backend: Shared breaker state for many processes, e.g.
            ``connectivity.backends.RedisBreakerBackend("redis://...")``.
        bulkhead: A :class:`~connectivity.Bulkhead` (fixed limit, bounded queue) or an
            :class:`~connectivity.AdaptiveConcurrency` limit on calls in flight, off by default. It sits inside the
            breaker, so a slot covers one attempt, not the backoff between attempts; a rejection
            (:class:`~connectivity.ConcurrencyLimitError`) is not retried.
        rate_limit: A client-side :class:`~connectivity.RateLimiter` (or a Redis-backed one), off by default.
            Each attempt takes a permit; a host that answered 429 with ``Retry-After`` is held off.
        rate_limit_mode: ``"wait"`` (default: wait for a permit, within the deadline and 1 s) or ``"reject"``
            (raise :class:`~connectivity.RateLimitedError` at once).
        discovery: Where the service's endpoints come from (a :class:`~connectivity.discovery.Resolver` such as
            ``connectivity.discovery.DNS("_http._tcp.orders.internal")``, or a list of ``"host:port"``): each
            attempt then goes to one endpoint (:class:`~connectivity.transports.LoadBalancingTransport`, inside
            the retry and hedging layers, so a retry picks again and prefers another endpoint). Off by default.
            Without ``inner``, each endpoint gets its own network transport (``backend`` and options alike, so
            ``limits`` apply per endpoint, as Envoy's per-host pools), created on first use and closed once its
            endpoint has left and its last response is closed (:class:`EndpointPools`).
        balancer: The picker (default :class:`~connectivity.balancing.EWMA`). Needs ``discovery``.
        outlier: Passive outlier detection (:class:`~connectivity.policies.outlier.OutlierDetector`), off by
            default as in Envoy. Needs ``discovery``.
        health_check: Active health checks (:class:`~connectivity.balancing.HealthCheck`), off by default. Needs
            ``discovery``.
        service: The logical service's name, for errors, events and the health checks' ``Host`` header (default:
            ``name``, else ``"upstream"``).
        tls: Mutual TLS (:class:`~connectivity.security.MTLS`): the network transport is built with its client
            context, which presents this service's certificate and checks the upstream's SPIFFE id (or DNS name)
            during the handshake, before any byte of the request is sent; a mismatch raises
            :class:`~connectivity.PeerIdentityError` (not retried). Not with ``inner``, ``verify`` or ``cert``.
        auth: Outbound credentials (:class:`~connectivity.security.Credentials`: ``BearerToken``, ``APIKey``,
            ``ClientCredentials``, ``ServiceJWT``), set on every attempt. OAuth2 tokens are fetched through the
            same stack below this layer (pool, TLS, per-try timeout, breaker) with the same retry policy, and a
            401 gets one refresh and resend.
        auth_hosts: Only these hosts get the credentials (default: every host the client calls).
        telemetry: Tracing and metrics (:class:`~connectivity.transports.TracingTransport`). ``None`` (default)
            uses the global OpenTelemetry providers, which costs next to nothing until an SDK is installed;
            ``False`` leaves the layer out.
        access_log: ``True`` logs one record per call to the ``connectivity.access`` logger; a logger logs there.
        request_id: Copy the current inbound request id into ``x-request-id`` (default on, as in Envoy).
        name: The client's name: registers the stack with the status app (:mod:`connectivity.admin`, under
            ``/clients``) and labels its retry budget in ``connectivity.retry_budget.remaining``.
        clock: Time source for every layer (inject a ``FakeClock`` in tests).
        backend: The network transport to build: ``"httpcore"`` (the default: httpx's own pools,
            :class:`~connectivity.transports.HTTPTransport`; sync, asyncio and trio, HTTP/1.1 and HTTP/2),
            ``"aiohttp"`` (:class:`~connectivity.transports.AiohttpTransport`: asyncio only, HTTP/1.1; the ``fast``
            extra) or ``"auto"`` (:class:`~connectivity.transports.AutoTransport`: aiohttp where it can serve the
            call, httpcore for sync clients, trio, HTTP/2 or without the extra). The semantics (errors, timeouts,
            deadlines, streaming, TLS) are the same whichever serves. Not with ``inner``.
        **options: httpx's transport options for the network transport built (``verify``, ``cert``,
            ``trust_env``, ``http1``, ``http2``, ``limits``, ``proxy``, ``uds``, ``local_address``, ``retries``,
            ``socket_options``). Not with ``inner``.

    Returns:
        The outermost transport, to pass as ``httpx.AsyncClient(transport=...)``.

    Raises:
        ConfigError: The combination is inconsistent (per-try timeout longer than the total, a hedge schedule that
            cannot fit in the total, per-try timeout set in two places, ``backend`` or options with ``inner``, an
            unknown backend or option).
        BackendUnavailableError: The backend is not installed or cannot do what the options ask (a
            :class:`ConfigError` too). One that shows only on the first request (aiohttp with a sync client or on
            trio) is raised by that request.

    .. versionadded:: 0.1
    """
    limits = _timeout(timeout)
    policy = _retry(retry, clock)
    redact_httpx_logs()  # httpx logs every request's full URL, credentials and tokens included
    per_try = limits.per_try
    if policy is not None and policy.per_try_timeout is not None:
        if per_try is not None:
            raise ConfigError(
                "Retry.per_try_timeout",
                policy.per_try_timeout,
                "per-try timeout is set in both Timeout.per_try and Retry.per_try_timeout; set it once",
            )
        per_try = policy.per_try_timeout
        if limits.total is not None and per_try > limits.total:
            raise ConfigError("Retry.per_try_timeout", per_try, f"must not exceed Timeout.total ({limits.total})")
        policy = dataclasses.replace(policy, per_try_timeout=None)
    if hedge is not None:
        hedge = _hedge(hedge, policy, limits.total, per_try)

    if tls is not None:
        options = _with_tls(tls, inner, options)
    base = _network(inner, backend, options)
    _warn_nested_retries(base, policy)
    if discovery is not None and inner is None:
        base = _endpoint_pools(base, backend, options)
    stack: Inner = base if tls is None else PeerIdentityTransport(base, tls=tls)
    if per_try is not None:
        stack = TimeoutTransport(stack, per_try, per_try=True, propagate=limits.propagate, clock=clock)
    if discovery is not None and breaker is not None and breaker_scope == "endpoint":
        # The breaker sits above the balancer, which picks the endpoint after it: per-endpoint circuits would be
        # keyed by the previous attempt's endpoint. Envoy leaves per-host health to outlier detection too.
        raise ConfigError(
            "transport.breaker_scope",
            breaker_scope,
            "cannot be 'endpoint' with discovery: per-endpoint health is outlier detection's job "
            "(outlier=OutlierDetector(...)); a breaker here guards the whole service (scope 'host' or 'client')",
        )
    stack = _balancing(stack, discovery, balancer, outlier, health_check, service or name, clock)
    if hedge is not None:
        stack = HedgingTransport(stack, hedge, retry=policy, clock=clock)
    if isinstance(bulkhead, Bulkhead):
        stack = BulkheadTransport(stack, bulkhead, clock=clock)
    elif isinstance(bulkhead, AdaptiveConcurrency):
        stack = AdaptiveConcurrencyTransport(stack, bulkhead, clock=clock)
    elif bulkhead is not None:
        raise ConfigError(
            "transport.bulkhead",
            bulkhead,
            "must be a connectivity.Bulkhead, a connectivity.AdaptiveConcurrency or None",
        )
    if breaker is not None:
        if not isinstance(breaker, CircuitBreaker):
            raise ConfigError("transport.breaker", breaker, "must be a connectivity.CircuitBreaker or None")
        stack = CircuitBreakerTransport(stack, breaker, scope=breaker_scope, backend=breaker_backend)
    elif breaker_backend is not None:
        raise ConfigError("transport.breaker_backend", breaker_backend, "needs a breaker")
    if rate_limit is not None:
        if not isinstance(rate_limit, RateLimiter) and not getattr(rate_limit, "remote", False):
            raise ConfigError("transport.rate_limit", rate_limit, "must be a connectivity.RateLimiter or None")
        stack = RateLimitTransport(stack, rate_limit, mode=rate_limit_mode, clock=clock)
    if auth is not None:
        stack = _auth(stack, auth, auth_hosts, policy, clock)
    elif auth_hosts is not None:
        raise ConfigError("transport.auth_hosts", auth_hosts, "needs auth")
    if policy is not None:
        stack = RetryTransport(stack, policy, clock=clock)
    # Always present, even without a total: an ambient `connectivity.deadline()` is then enforced too.
    outer: Layer = TimeoutTransport(
        stack, limits.total, propagate=limits.propagate and per_try is None, clock=clock
    )
    if request_id:
        outer = RequestIDTransport(outer)
    if access_log is not False:
        outer = AccessLogTransport(outer, logger=access_log if isinstance(access_log, logging.Logger) else None)
    if telemetry is not False:
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise ConfigError(
                "transport.telemetry", telemetry, "must be a connectivity.telemetry.Telemetry, False or None"
            )
        outer = TracingTransport(outer, telemetry=telemetry)
    if name is not None:
        if not isinstance(name, str) or not name:
            raise ConfigError("transport.name", name, "must be a non-empty string")
        if policy is not None and policy.budget is not None:
            track_budget(policy.budget, name)
        from connectivity.admin.registry import register_client

        register_client(name, outer)
    return outer


def _balancing(
    stack: Inner,
    discovery: Resolver | Iterable[Endpoint | str] | None,
    balancer: Picker | None,
    outlier: OutlierDetector | None,
    health_check: HealthCheck | None,
    service: str | None,
    clock: Clock,
) -> Inner:
    """The load-balancing layer when ``discovery`` is given; its options without it are a mistake."""
    if discovery is None:
        for field, value in (("balancer", balancer), ("outlier", outlier), ("health_check", health_check)):
            if value is not None:
                raise ConfigError(f"transport.{field}", value, "needs discovery (where the endpoints come from)")
        return stack
    if balancer is not None and not isinstance(balancer, Picker):
        raise ConfigError("transport.balancer", balancer, "must be a connectivity.balancing picker, e.g. EWMA()")
    return LoadBalancingTransport(
        stack,
        service=service or "upstream",
        resolver=discovery,
        picker=balancer,
        outlier=outlier,
        health_check=health_check,
        clock=clock,
    )


def _endpoint_pools(fallback: Inner, backend: Backend | None, options: dict[str, Any]) -> EndpointPools:
    """A network transport per endpoint, each built as ``fallback`` was (Envoy's per-host connection pools)."""
    return EndpointPools(lambda: _network(None, backend, options), fallback=fallback)


def _with_tls(tls: MTLS, inner: Inner | None, options: dict[str, Any]) -> dict[str, Any]:
    """The network options with ``tls``'s client context as ``verify``."""
    if not isinstance(tls, MTLS):
        raise ConfigError(
            "transport.tls", f"<{type(tls).__name__}>", "must be a connectivity.security.MTLS or None"
        )
    if inner is not None:
        raise ConfigError(
            "transport.tls",
            tls,
            "cannot be combined with an explicit inner transport: build it with verify=tls.client_context() and "
            "wrap it in connectivity.transports.PeerIdentityTransport",
        )
    for name in ("verify", "cert"):
        if name in options:
            raise ConfigError(f"transport.{name}", "<given>", "is set by tls=; give one or the other")
    return {**options, "verify": tls.client_context()}


def _auth(
    stack: Inner, auth: Credentials, hosts: Iterable[str] | None, retry: Retry | None, clock: Clock
) -> Inner:
    """The credentials layer; token requests go through the stack below it, retried like any call (POST too:
    asking for another token is harmless)."""
    if not isinstance(auth, Credentials):
        # The value may be a secret (a token passed as a string): name its type only.
        raise ConfigError(
            "transport.auth", f"<{type(auth).__name__}>", "must be a connectivity.security.Credentials or None"
        )
    tokens = (
        None
        if retry is None
        else RetryTransport(stack, dataclasses.replace(retry, methods=retry.methods | {"POST"}), clock=clock)
    )
    return AuthTransport(stack, auth, token_transport=tokens, hosts=hosts)


def _network(inner: Inner | None, backend: Backend | None, options: dict[str, Any]) -> Inner:
    """The innermost transport: ``inner`` as given, or the one ``backend`` names, built with ``options``."""
    if inner is not None:
        if backend is not None:
            raise ConfigError(
                "transport.backend",
                backend,
                "cannot be combined with an explicit inner transport: configure that transport instead",
            )
        if options:
            name = sorted(options)[0]
            raise ConfigError(
                f"transport.{name}",
                options[name],
                "network options configure the transport built for you; with an explicit inner transport, "
                "configure that one instead",
            )
        return inner
    if backend is None:
        backend = "httpcore"
    if backend not in BACKENDS:
        raise ConfigError("transport.backend", backend, "must be 'httpcore', 'aiohttp' or 'auto'")
    for name in sorted(options):
        if name not in NETWORK_OPTIONS:
            raise ConfigError(
                f"transport.{name}",
                options[name],
                "is neither an argument of connectivity.transport() nor a network option "
                f"({', '.join(sorted(NETWORK_OPTIONS))})",
            )
    if backend == "aiohttp":
        return AiohttpTransport(**options)
    if backend == "auto":
        return AutoTransport(**options)
    return HTTPTransport(**options)


def _timeout(timeout: Timeout | float | None) -> Timeout:
    if timeout is None:
        return Timeout()
    if isinstance(timeout, Timeout):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return Timeout(total=timeout)
    raise ConfigError("transport.timeout", timeout, "must be a connectivity.Timeout, a number of seconds or None")


def _retry(retry: Retry | Literal[False] | None, clock: Clock) -> Retry | None:
    if retry is False:
        return None
    if retry is None:
        return Retry(budget=RetryBudget(clock=clock))
    if not isinstance(retry, Retry):
        raise ConfigError("transport.retry", retry, "must be a connectivity.Retry, False or None")
    return retry if retry.attempts > 1 or retry.per_try_timeout is not None else None


def _hedge(hedge: Hedge, retry: Retry | None, total: float | None, per_try: float | None) -> Hedge:
    if not isinstance(hedge, Hedge):
        raise ConfigError("transport.hedge", hedge, "must be a connectivity.Hedge or None")
    if total is not None:
        schedule = hedge.delay * hedge.max_extra
        worst = schedule + (per_try or 0.0)
        if schedule >= total or (per_try is not None and worst > total):
            raise ConfigError(
                "Hedge.delay",
                hedge.delay,
                f"the hedging schedule ({hedge.max_extra} x {hedge.delay:g} s"
                + (f" + per-try {per_try:g} s" if per_try is not None else "")
                + f" = {worst:g} s) does not fit in Timeout.total ({total:g} s)",
            )
    if hedge.budget is None and retry is not None and retry.budget is not None:
        hedge = dataclasses.replace(hedge, budget=retry.budget)
    return hedge


def _warn_nested_retries(inner: Inner, retry: Retry | None) -> None:
    if retry is None:
        return
    layer: object = inner
    while isinstance(layer, Layer):
        if isinstance(layer, RetryTransport):
            warnings.warn(
                "retries are configured at more than one layer: the inner transport already retries, so "
                f"attempts multiply (up to {retry.attempts} x {layer.retry.attempts})",
                ConnectivityWarning,
                stacklevel=3,
            )
            return
        layer = layer.inner
    pool_retries = (
        layer.retries
        if isinstance(layer, (HTTPTransport, AutoTransport))
        else getattr(getattr(layer, "_pool", None), "_retries", 0)
    )
    if pool_retries:
        warnings.warn(
            f"the inner httpx transport also retries connections (retries={pool_retries}); "
            "connect failures will be retried at two layers",
            ConnectivityWarning,
            stacklevel=3,
        )
