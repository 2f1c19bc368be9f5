"""An outbound access log as a transport: one structured record per call, with what the policies did."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from opentelemetry import trace as trace_api

from connectivity._http import httpx
from connectivity.errors import RetriesExhaustedError
from connectivity.telemetry import semconv
from connectivity.telemetry.events import _CALL
from connectivity.telemetry.redaction import DEFAULT_REDACTION, Redaction
from connectivity.telemetry.request_id import _current as _request_id
from connectivity.transports._base import Inner, Layer
from connectivity.transports._observe import CallTrace
from connectivity.transports._outcome import record_of

__all__ = ["AccessLogTransport"]

_LOGGER = logging.getLogger("connectivity.access")


class AccessLogTransport(Layer):
    """Log one record per outbound call when its response head arrives (or it fails).

    Args:
        inner: The transport to call (put it under the tracing layer, if any, to get trace ids and events).
        logger: Where records go (default: the ``connectivity.access`` logger).
        level: Their level (default ``INFO``); nothing is built when the logger would drop it.
        redaction: What is never recorded (default: :data:`~connectivity.telemetry.DEFAULT_REDACTION`).

    The record is in ``record.access`` (a JSON-ready dict): ``direction`` (``outbound``), ``method``, ``url``
    (redacted), ``status``, ``error`` (exception type), ``duration_s``, ``attempts``, ``retry_reasons``,
    ``gave_up``, ``hedges``, ``winner``, ``endpoint``, ``events`` (policy event names, in order), ``request_id``,
    ``trace_id`` and ``span_id``. The message is a one-line summary of the same.

    .. versionadded:: 0.1
    """

    __slots__ = ("_level", "_logger", "_redaction")

    def __init__(
        self,
        inner: Inner,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        redaction: Redaction = DEFAULT_REDACTION,
    ) -> None:
        super().__init__(inner)
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, got {type(logger).__name__}")
        if not isinstance(redaction, Redaction):
            raise TypeError(
                f"redaction must be a connectivity.telemetry.Redaction, got {type(redaction).__name__}"
            )
        self._logger = logger if logger is not None else _LOGGER
        self._level = level
        self._redaction = redaction

    def describe(self) -> dict[str, Any]:
        """What the status app shows for this layer."""
        return {"logger": self._logger.name, "level": logging.getLevelName(self._level)}

    def _log(
        self, request: httpx.Request, started: float, response: httpx.Response | None, error: BaseException | None
    ) -> None:
        record: dict[str, Any] = {
            "direction": "outbound",
            "method": request.method,
            "url": self._redaction.url(str(request.url)),
            "status": None,
            "error": None,
            "duration_s": round(perf_counter() - started, 6),
            "attempts": 1,
            "retry_reasons": [],
            "gave_up": None,
            "hedges": 0,
            "winner": 0,
            "endpoint": None,
            "events": [],
            "request_id": _request_id.get(),
            "trace_id": None,
            "span_id": None,
        }
        if response is not None:
            outcome = record_of(response)
            record.update(
                status=response.status_code,
                attempts=outcome.attempts,
                retry_reasons=list(outcome.reasons),
                gave_up=outcome.gave_up,
                hedges=outcome.hedges,
                winner=outcome.winner,
                endpoint=response.extensions.get("connectivity.endpoint"),
            )
        if error is not None:
            record["error"] = semconv.error_type(error)
            if isinstance(error, RetriesExhaustedError):
                record.update(attempts=error.attempts, retry_reasons=list(error.reasons))
        call = _CALL.get()
        if isinstance(call, CallTrace):
            record["events"] = [name for name, _ in call.events]
            span = call.span
        else:
            span = trace_api.get_current_span()
        context = span.get_span_context() if span is not None else None
        if context is not None and context.is_valid:
            record["trace_id"] = format(context.trace_id, "032x")
            record["span_id"] = format(context.span_id, "016x")
        outcome_text = str(record["status"]) if error is None else f"error {record['error']}"
        self._logger.log(
            self._level,
            "%s %s %s %.1fms attempts=%d",
            record["method"],
            record["url"],
            outcome_text,
            record["duration_s"] * 1000,
            record["attempts"],
            extra={"access": record},
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        if not self._logger.isEnabledFor(self._level):
            return inner.handle_request(request)
        started = perf_counter()
        try:
            response = inner.handle_request(request)
        except BaseException as exc:
            self._log(request, started, None, exc)
            raise
        self._log(request, started, response, None)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        if not self._logger.isEnabledFor(self._level):
            return await inner.handle_async_request(request)
        started = perf_counter()
        try:
            response = await inner.handle_async_request(request)
        except BaseException as exc:
            self._log(request, started, None, exc)
            raise
        self._log(request, started, response, None)
        return response
