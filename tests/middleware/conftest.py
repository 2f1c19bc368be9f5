"""Real servers for the inbound middleware, and apps to put behind them.

Spans end (and the duration is recorded) when the app returns, which is after the client already has the response.
Tests therefore wait for the *request to finish on the server*: every app is served behind :class:`Finished`, an
outermost ASGI wrapper that counts requests as their app call returns, behind a condition variable. Waiting on it
is bounded and never sleeps.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from connectivity.telemetry.request_id import current_request_id
from connectivity.testing.server import serve

App = Callable[..., Awaitable[None]]

SECRET = "s3cr3t-value"


class Failures:
    """Namespace, so the exception's qualified name differs from its name."""

    class Boom(Exception):
        """What the failing endpoints raise."""


class Finished:
    """Outermost wrapper: counts HTTP requests whose app call has returned (or raised)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.count = 0
        self.cond = threading.Condition()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                with self.cond:
                    self.count += 1
                    self.cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 5.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= count, timeout):
                raise AssertionError(f"{self.count} request(s) finished on the server, expected {count}")


@dataclass
class Served:
    url: str
    port: int
    finished: Finished

    def wait(self, count: int = 1) -> None:
        """Block until ``count`` requests have finished on the server (span ended, metrics recorded)."""
        self.finished.wait(count)


@pytest.fixture
def server() -> Iterator[Callable[[App], Served]]:
    """Start an app on a real uvicorn server (as many as the test needs); all stop when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(app: App) -> Served:
            finished = Finished(app)
            running = stack.enter_context(serve(finished, name="middleware"))
            return Served(url=running.url, port=running.port, finished=finished)

        yield start


@pytest.fixture
def secret() -> str:
    """A value sent in query strings and headers that must never appear in a span, metric or log record."""
    return SECRET


# -- apps -----------------------------------------------------------------------------------------------------
@pytest.fixture
def fastapi_app() -> FastAPI:
    """``GET /items/{item_id}`` (echoes the id and the current request id) and ``GET /boom`` (raises
    ``Failures.Boom``)."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: str, request: Request) -> dict[str, Any]:
        return {
            "item_id": item_id,
            "request_id": current_request_id(),
            "state_request_id": getattr(request.state, "request_id", None),
        }

    @app.get("/boom")
    async def boom() -> None:
        raise Failures.Boom("kaput")

    return app


async def _hello(request: Request) -> Response:
    return PlainTextResponse(f"hello {request.path_params['name']}")


async def _deep(request: Request) -> Response:
    return PlainTextResponse(f"deep {request.path_params['z']}")


async def _boom(request: Request) -> Response:
    raise Failures.Boom("kaput")


async def _stream(request: Request) -> Response:
    async def chunks() -> Any:
        for chunk in (b"ab", b"cde", b"fghi"):
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain")


async def _whoami(request: Request) -> Response:
    return JSONResponse({"request_id": current_request_id()})


@pytest.fixture
def starlette_app() -> Starlette:
    """A plain Starlette app: routes, a nested mount, a failing route (``Failures.Boom``) and a streaming one."""
    return Starlette(
        routes=[
            Route("/hello/{name}", _hello),
            Route("/boom", _boom),
            Route("/stream", _stream),
            Route("/whoami", _whoami),
            Mount("/m", routes=[Route("/deep/{z}", _deep)]),
        ]
    )


# -- direct ASGI calls (for what a real server cannot send, and for pass-through identity) ---------------------
def _http_scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("10.0.0.1", 5555),
        "server": ("10.0.0.2", 8000),
    }
    scope.update(overrides)
    return scope


@pytest.fixture
def http_scope() -> Callable[..., dict[str, Any]]:
    """Build an HTTP scope as uvicorn would (keyword arguments override keys)."""
    return _http_scope


async def _asgi_call(app: App, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.fixture
def asgi_call() -> Callable[[App, dict[str, Any]], Awaitable[list[dict[str, Any]]]]:
    """Call an ASGI app in-process with an empty request body; returns the messages it sent."""
    return _asgi_call
