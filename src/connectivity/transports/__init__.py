"""httpx transports, one concern each; every one takes the transport it wraps first.

Each works with both :class:`httpx.Client` and :class:`httpx.AsyncClient`. Compose them yourself, or let
:func:`connectivity.transport` build the recommended order. The innermost, network transport is one of
:class:`HTTPTransport` (httpcore, httpx's default), :class:`AiohttpTransport` (aiohttp: asyncio only, the ``fast``
extra) and :class:`AutoTransport` (the fastest of the two that can serve each call).
"""

from connectivity.transports._auto import AutoTransport
from connectivity.transports._base import Inner, Layer
from connectivity.transports._endpoint_pools import EndpointPools
from connectivity.transports._outcome import EXTENSION, CallRecord, failure_kind
from connectivity.transports.access_log import AccessLogTransport
from connectivity.transports.aiohttp import AiohttpTransport
from connectivity.transports.auth import AuthTransport
from connectivity.transports.balancing import LoadBalancingTransport
from connectivity.transports.breaker import CircuitBreakerTransport
from connectivity.transports.bulkhead import AdaptiveConcurrencyTransport, BulkheadTransport
from connectivity.transports.fault import FaultInjectionTransport
from connectivity.transports.hedging import HedgingTransport
from connectivity.transports.http import HTTPTransport
from connectivity.transports.mirror import MirrorTransport
from connectivity.transports.peer_identity import PeerIdentityTransport
from connectivity.transports.ratelimit import RateLimitTransport
from connectivity.transports.request_id import RequestIDTransport
from connectivity.transports.retry import RetryTransport
from connectivity.transports.routing import RoutingTransport
from connectivity.transports.timeout import TimeoutTransport
from connectivity.transports.tracing import TracingTransport

__all__ = [
    "EXTENSION",
    "AccessLogTransport",
    "AdaptiveConcurrencyTransport",
    "AiohttpTransport",
    "AuthTransport",
    "AutoTransport",
    "BulkheadTransport",
    "CallRecord",
    "CircuitBreakerTransport",
    "EndpointPools",
    "FaultInjectionTransport",
    "HTTPTransport",
    "HedgingTransport",
    "Inner",
    "Layer",
    "MirrorTransport",
    "LoadBalancingTransport",
    "PeerIdentityTransport",
    "RateLimitTransport",
    "RequestIDTransport",
    "RetryTransport",
    "RoutingTransport",
    "TimeoutTransport",
    "TracingTransport",
    "failure_kind",
]
