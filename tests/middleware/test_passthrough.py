"""What every inbound middleware shares: the public surface, and non-HTTP scopes passing straight through."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import connectivity.middleware
from connectivity.middleware import AccessLogMiddleware, RequestIDMiddleware, TracingMiddleware
from connectivity.telemetry.request_id import current_request_id


def test_every_middleware_says_since_when() -> None:
    # The names themselves are pinned in tests/test_public_api.py.
    for name in connectivity.middleware.__all__:
        assert getattr(connectivity.middleware, name).__doc__.count(".. versionadded:: 0.1") == 1


SCOPES = {
    "lifespan": {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
    "websocket": {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"token=abc",
        "headers": [(b"host", b"testserver"), (b"x-request-id", b"req-ws"), (b"traceparent", b"00-x")],
        "client": ("10.0.0.1", 5555),
        "server": ("10.0.0.2", 8000),
        "subprotocols": [],
    },
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(SCOPES))
@pytest.mark.parametrize("layer", ["tracing", "request_id", "access_log"])
async def test_non_http_scopes_pass_straight_through(
    otel: Any, caplog: pytest.LogCaptureFixture, kind: str, layer: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="connectivity.access")
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope=scope, receive=receive, send=send, request_id=current_request_id())

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    middleware: Any = {
        "tracing": lambda: TracingMiddleware(app, telemetry=otel.telemetry()),
        "request_id": lambda: RequestIDMiddleware(app),
        "access_log": lambda: AccessLogMiddleware(app, telemetry=otel.telemetry()),
    }[layer]()
    scope = {**SCOPES[kind]}
    before = {key: (dict(value) if isinstance(value, dict) else value) for key, value in scope.items()}
    await middleware(scope, receive, send)

    assert seen["scope"] is scope
    assert seen["receive"] is receive
    assert seen["send"] is send
    assert scope == before  # nothing added (no state, no route lookups)
    assert seen["request_id"] is None
    assert otel.spans() == []
    assert otel.metrics() == {}
    assert [record for record in caplog.records if record.name == "connectivity.access"] == []
