"""Observability: OpenTelemetry tracing and metrics, policy events, redaction and request ids.

Depends on ``opentelemetry-api`` only; the SDK (and any exporter) is the application's choice. With no SDK
installed every layer skips its telemetry work.
"""

from __future__ import annotations

from connectivity.telemetry import events, semconv
from connectivity.telemetry.events import emit, subscribe
from connectivity.telemetry.otel import SCOPE, Telemetry, track_breaker, track_budget
from connectivity.telemetry.redaction import (
    DEFAULT_REDACTION,
    REDACTED,
    RedactingFilter,
    Redaction,
    redact_httpx_logs,
)
from connectivity.telemetry.request_id import current_request_id

__all__ = [
    "DEFAULT_REDACTION",
    "REDACTED",
    "SCOPE",
    "RedactingFilter",
    "Redaction",
    "Telemetry",
    "current_request_id",
    "emit",
    "events",
    "redact_httpx_logs",
    "semconv",
    "subscribe",
    "track_breaker",
    "track_budget",
]
