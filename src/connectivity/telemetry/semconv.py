"""Attribute and metric names: the stable OpenTelemetry HTTP semantic conventions, and connectivity's own.

The stable names are spelled out here rather than imported from ``opentelemetry-semantic-conventions`` (a beta
package we do not depend on at run time); a test checks every one against that package.

Names under ``connectivity.*`` are ours, documented in the observability guide.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLIENT_ADDRESS",
    "CONNECTIVITY_ATTEMPTS",
    "CONNECTIVITY_ATTEMPT",
    "CONNECTIVITY_BREAKER",
    "CONNECTIVITY_DELAY",
    "CONNECTIVITY_ENDPOINT",
    "CONNECTIVITY_REASON",
    "CONNECTIVITY_REQUEST_ID",
    "CONNECTIVITY_STATE_FROM",
    "CONNECTIVITY_STATE_TO",
    "ERROR_TYPE",
    "HTTP_REQUEST_METHOD",
    "HTTP_REQUEST_METHOD_ORIGINAL",
    "HTTP_REQUEST_RESEND_COUNT",
    "HTTP_RESPONSE_STATUS_CODE",
    "HTTP_ROUTE",
    "METRIC_BREAKER_STATE",
    "METRIC_BREAKER_TRANSITIONS",
    "METRIC_BUDGET_REMAINING",
    "METRIC_CALL_DURATION",
    "METRIC_CLIENT_ACTIVE",
    "METRIC_CLIENT_DURATION",
    "METRIC_CONCURRENCY_REJECTIONS",
    "METRIC_DEADLINE_EXCEEDED",
    "METRIC_ENDPOINT_EJECTIONS",
    "METRIC_ENDPOINT_PICKS",
    "METRIC_GAVE_UP",
    "METRIC_HEDGES",
    "METRIC_RATE_LIMIT_DECISIONS",
    "METRIC_RETRIES",
    "METRIC_SERVER_ACTIVE",
    "METRIC_SERVER_DURATION",
    "NETWORK_PROTOCOL_VERSION",
    "OTHER_METHOD",
    "KNOWN_METHODS",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "URL_FULL",
    "URL_PATH",
    "URL_QUERY",
    "URL_SCHEME",
    "USER_AGENT_ORIGINAL",
    "DURATION_BUCKETS",
    "CANCELLED",
    "error_type",
    "is_cancellation",
]

# -- stable HTTP semantic conventions -------------------------------------------------------------------------
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL: Final = "http.request.method_original"
HTTP_REQUEST_RESEND_COUNT: Final = "http.request.resend_count"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
HTTP_ROUTE: Final = "http.route"
URL_FULL: Final = "url.full"
URL_PATH: Final = "url.path"
URL_QUERY: Final = "url.query"
URL_SCHEME: Final = "url.scheme"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
USER_AGENT_ORIGINAL: Final = "user_agent.original"
ERROR_TYPE: Final = "error.type"

METRIC_CLIENT_DURATION: Final = "http.client.request.duration"
METRIC_SERVER_DURATION: Final = "http.server.request.duration"
# Development status in the conventions, but the names every backend already charts.
METRIC_CLIENT_ACTIVE: Final = "http.client.active_requests"
METRIC_SERVER_ACTIVE: Final = "http.server.active_requests"

KNOWN_METHODS: Final = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
"""Methods recorded as they are; any other is recorded as ``_OTHER`` (with the original in
``http.request.method_original``), so a client cannot blow up metric cardinality."""
OTHER_METHOD: Final = "_OTHER"

DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""The explicit bucket boundaries the conventions recommend for ``*.request.duration`` (seconds)."""

# -- connectivity's own ---------------------------------------------------------------------------------------
CONNECTIVITY_ATTEMPTS: Final = "connectivity.attempts"
CONNECTIVITY_ATTEMPT: Final = "connectivity.attempt"
CONNECTIVITY_REASON: Final = "connectivity.reason"
CONNECTIVITY_DELAY: Final = "connectivity.delay"
CONNECTIVITY_ENDPOINT: Final = "connectivity.endpoint"
CONNECTIVITY_BREAKER: Final = "connectivity.breaker"
CONNECTIVITY_STATE_FROM: Final = "connectivity.state.from"
CONNECTIVITY_STATE_TO: Final = "connectivity.state.to"
CONNECTIVITY_REQUEST_ID: Final = "connectivity.request_id"

METRIC_CALL_DURATION: Final = "connectivity.client.call.duration"
METRIC_RETRIES: Final = "connectivity.client.retries"
METRIC_GAVE_UP: Final = "connectivity.client.retries_refused"
METRIC_HEDGES: Final = "connectivity.client.hedges"
METRIC_DEADLINE_EXCEEDED: Final = "connectivity.client.deadline_exceeded"
METRIC_BUDGET_REMAINING: Final = "connectivity.retry_budget.remaining"
METRIC_BREAKER_STATE: Final = "connectivity.breaker.state"
METRIC_BREAKER_TRANSITIONS: Final = "connectivity.breaker.transitions"
METRIC_RATE_LIMIT_DECISIONS: Final = "connectivity.rate_limit.decisions"
METRIC_CONCURRENCY_REJECTIONS: Final = "connectivity.concurrency.rejections"
METRIC_ENDPOINT_PICKS: Final = "connectivity.endpoint.picks"
METRIC_ENDPOINT_EJECTIONS: Final = "connectivity.endpoint.ejections"


CANCELLED: Final = "cancelled"
"""``error.type`` of a call or request cancelled by its own side (a hedge that lost, a client that went away)."""


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the event loop cancelling the work (asyncio or trio): never a failure of the peer."""
    return type(exc).__qualname__ in ("CancelledError", "Cancelled")


def error_type(exc: BaseException) -> str:
    """The low-cardinality ``error.type`` of an exception: its class name, or :data:`CANCELLED`."""
    return CANCELLED if is_cancellation(exc) else type(exc).__qualname__
