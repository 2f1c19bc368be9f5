"""AccessLogMiddleware: one redacted, structured record per request, over real uvicorn servers."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind

from connectivity.errors import ConfigError
from connectivity.middleware import AccessLogMiddleware, RequestIDMiddleware, TracingMiddleware

ACCESS = "connectivity.access"
KEYS = {
    "direction",
    "method",
    "target",
    "route",
    "status",
    "duration_s",
    "bytes_sent",
    "request_id",
    "trace_id",
    "span_id",
    "client_address",
    "user_agent",
    "error",
}


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


def records(caplog: pytest.LogCaptureFixture, name: str = ACCESS) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == name]


def the_record(caplog: pytest.LogCaptureFixture, name: str = ACCESS) -> logging.LogRecord:
    found = records(caplog, name)
    assert len(found) == 1, [record.getMessage() for record in found]
    return found[0]


def test_one_record_with_the_request_and_its_outcome(
    access: pytest.LogCaptureFixture, server: Any, fastapi_app: Any, secret: str
) -> None:
    srv = server(AccessLogMiddleware(fastapi_app))
    response = httpx.get(
        f"{srv.url}/items/42?q=1&token={secret}",
        headers={
            "user-agent": "probe/1.0",
            "authorization": f"Bearer {secret}",
            "cookie": f"session={secret}",
            "x-api-key": secret,
        },
    )
    assert response.status_code == 200
    srv.wait()

    record = the_record(access)
    assert re.fullmatch(r"GET /items/42\?q=1&token=REDACTED 200 \d+\.\dms", record.getMessage())
    assert record.levelno == logging.INFO
    entry = record.access  # type: ignore[attr-defined]
    assert set(entry) == KEYS
    duration = entry.pop("duration_s")
    assert isinstance(duration, float)
    assert 0 < duration < 5
    assert entry == {
        "direction": "inbound",
        "method": "GET",
        "target": "/items/42?q=1&token=REDACTED",
        "route": "/items/{item_id}",
        "status": 200,
        "bytes_sent": len(response.content),
        "request_id": None,
        "trace_id": None,
        "span_id": None,
        "client_address": "127.0.0.1",
        "user_agent": "probe/1.0",
        "error": None,
    }
    json.dumps(record.access)  # type: ignore[attr-defined]
    # Neither the query secret nor any credential header value is anywhere in the record.
    assert secret not in record.getMessage()
    assert secret not in repr(vars(record))


@pytest.mark.parametrize("log_outside_tracing", [False, True], ids=["log-inside", "log-outside"])
def test_the_record_carries_the_request_id_and_the_server_span(
    access: pytest.LogCaptureFixture, otel: Any, server: Any, starlette_app: Any, log_outside_tracing: bool
) -> None:
    telemetry = otel.telemetry()
    if log_outside_tracing:
        inner = AccessLogMiddleware(TracingMiddleware(starlette_app, telemetry=telemetry), telemetry=telemetry)
    else:
        inner = TracingMiddleware(AccessLogMiddleware(starlette_app, telemetry=telemetry), telemetry=telemetry)
    srv = server(RequestIDMiddleware(inner))
    response = httpx.get(f"{srv.url}/hello/ann", headers={"x-request-id": "req-77"})
    srv.wait()
    (span,) = [span for span in otel.spans() if span.kind is SpanKind.SERVER]
    entry = the_record(access).access  # type: ignore[attr-defined]
    assert entry["request_id"] == response.headers["x-request-id"] == "req-77"
    assert entry["trace_id"] == format(span.context.trace_id, "032x")
    assert entry["span_id"] == format(span.context.span_id, "016x")
    assert entry["route"] == "/hello/{name}"


def test_an_exception_inside_error_handling_is_logged_once_as_a_500_and_reraised(
    access: pytest.LogCaptureFixture, server: Any, starlette_app: Any
) -> None:
    starlette_app.add_middleware(AccessLogMiddleware)
    srv = server(starlette_app)
    assert httpx.get(f"{srv.url}/boom").status_code == 500  # Starlette's error middleware got the exception
    srv.wait()
    record = the_record(access)
    assert re.fullmatch(r"GET /boom 500 \d+\.\dms", record.getMessage())
    assert record.access["status"] == 500  # type: ignore[attr-defined]
    assert record.access["error"] == "Failures.Boom"  # type: ignore[attr-defined]
    assert record.access["route"] == "/boom"  # type: ignore[attr-defined]


def test_an_exception_outside_error_handling_is_logged_once_as_the_500_sent(
    access: pytest.LogCaptureFixture, server: Any, starlette_app: Any
) -> None:
    """Starlette's error middleware sends the 500, then re-raises: the response completed first, so that is what
    the record says, and the exception passing through afterwards adds no second record."""
    srv = server(AccessLogMiddleware(starlette_app))
    assert httpx.get(f"{srv.url}/boom").status_code == 500
    srv.wait()
    record = the_record(access)
    assert record.access["status"] == 500  # type: ignore[attr-defined]
    assert record.access["error"] is None  # type: ignore[attr-defined]


def test_a_streamed_response_is_logged_once_with_every_body_byte(
    access: pytest.LogCaptureFixture, server: Any, starlette_app: Any
) -> None:
    srv = server(AccessLogMiddleware(starlette_app))
    response = httpx.get(f"{srv.url}/stream")
    assert response.content == b"abcdefghi"
    srv.wait()
    assert the_record(access).access["bytes_sent"] == 9  # type: ignore[attr-defined]


def test_not_found_has_no_route(access: pytest.LogCaptureFixture, server: Any, fastapi_app: Any) -> None:
    srv = server(AccessLogMiddleware(fastapi_app))
    assert httpx.get(f"{srv.url}/missing?token=abc").status_code == 404
    srv.wait()
    record = the_record(access)
    assert record.access["route"] is None  # type: ignore[attr-defined]
    assert record.access["status"] == 404  # type: ignore[attr-defined]
    assert record.access["target"] == "/missing?token=REDACTED"  # type: ignore[attr-defined]


def test_the_target_is_the_path_as_received(
    access: pytest.LogCaptureFixture, server: Any, starlette_app: Any
) -> None:
    """A percent-encoded line break stays encoded: a client cannot forge a second log line."""
    srv = server(AccessLogMiddleware(starlette_app))
    httpx.get(f"{srv.url}/hello/a%0Ab")
    srv.wait()
    record = the_record(access)
    assert record.access["target"] == "/hello/a%0Ab"  # type: ignore[attr-defined]
    assert "\n" not in record.getMessage()


def test_a_custom_logger_and_level(caplog: pytest.LogCaptureFixture, server: Any, starlette_app: Any) -> None:
    caplog.set_level(logging.WARNING, logger="test.inbound")
    srv = server(
        AccessLogMiddleware(starlette_app, logger=logging.getLogger("test.inbound"), level=logging.WARNING)
    )
    httpx.get(f"{srv.url}/hello/ann")
    srv.wait()
    assert the_record(caplog, "test.inbound").levelno == logging.WARNING
    assert records(caplog, ACCESS) == []


def test_nothing_is_logged_below_the_loggers_level(
    caplog: pytest.LogCaptureFixture, server: Any, starlette_app: Any
) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS)
    srv = server(AccessLogMiddleware(starlette_app))
    httpx.get(f"{srv.url}/hello/ann")
    srv.wait()
    assert records(caplog) == []


@pytest.mark.anyio
async def test_a_disabled_logger_gets_the_servers_own_callables(
    caplog: pytest.LogCaptureFixture, http_scope: Any
) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS)
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(receive=receive, send=send)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    await AccessLogMiddleware(app)(http_scope(), receive, send)
    assert seen == {"receive": receive, "send": send}


@pytest.mark.anyio
async def test_an_app_that_never_responds_is_still_logged_once(
    access: pytest.LogCaptureFixture, http_scope: Any, asgi_call: Any
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None  # the server answers 500 for it

    await asgi_call(AccessLogMiddleware(app), http_scope(path="/silent", raw_path=b"/silent"))
    entry = the_record(access).access  # type: ignore[attr-defined]
    assert (entry["target"], entry["status"], entry["error"]) == ("/silent", 500, None)
    assert entry["client_address"] == "10.0.0.1"


def test_constructor_checks_its_arguments() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(ConfigError) as caught:
        AccessLogMiddleware(app, level="INFO")  # type: ignore[arg-type]
    assert caught.value.field == "AccessLogMiddleware.level"
    with pytest.raises(TypeError, match="logger"):
        AccessLogMiddleware(app, logger="connectivity.access")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="telemetry"):
        AccessLogMiddleware(app, telemetry=object())  # type: ignore[arg-type]
