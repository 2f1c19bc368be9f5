"""Inbound middleware: pure ASGI layers for the requests a service receives.

Each concern is one class, usable with any ASGI framework (Starlette, FastAPI, ...). None of them is built on
Starlette's base HTTP middleware class: they wrap ``send`` to observe the response, so context variables and
background tasks keep working. Non-HTTP scopes (lifespan, websocket) pass straight through.

A typical stack, outermost first::

    app = RequestIDMiddleware(TracingMiddleware(AccessLogMiddleware(app, telemetry=t), telemetry=t))

The request id is then current for the span and the log record, and the log record carries the span's ids.

Security sits inside them, outermost first: ``PeerIdentityMiddleware`` (who the calling workload is),
``JWTAuthMiddleware`` / ``APIKeyAuthMiddleware`` (who the caller is), ``AuthorizationMiddleware`` (whether they
may), then rate limits keyed by that identity.
"""

from __future__ import annotations

from connectivity.middleware.access_log import AccessLogMiddleware
from connectivity.middleware.api_key import APIKeyAuthMiddleware
from connectivity.middleware.auth_dependencies import require_groups, require_peer, require_scopes
from connectivity.middleware.authorization import AuthorizationMiddleware
from connectivity.middleware.concurrency import ConcurrencyLimitMiddleware
from connectivity.middleware.jwt_auth import JWTAuthMiddleware
from connectivity.middleware.peer_identity import PeerIdentityMiddleware
from connectivity.middleware.ratelimit import RateLimitMiddleware, rate_limit
from connectivity.middleware.request_id import RequestIDMiddleware
from connectivity.middleware.tracing import TracingMiddleware

__all__ = [
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
]
