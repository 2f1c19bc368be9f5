"""Fake status sources and a direct ASGI caller for the admin tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import pytest

from connectivity.admin import ASGIApp, Registry
from connectivity.testing.server import RunningServer, serve


class FakeBreaker:
    """A breaker-like object whose state a test flips between requests."""

    def __init__(self, state: str = "closed") -> None:
        self.state = state
        self.failures = 0

    def status(self) -> Mapping[str, object]:
        return {"state": self.state, "failures": self.failures}


class Broken:
    """A source whose status() fails."""

    def status(self) -> Mapping[str, object]:
        raise RuntimeError("secret detail that must not leak")


class Slotted:
    """A source that cannot be weakly referenced (``__slots__`` without ``__weakref__``)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = "up"

    def status(self) -> Mapping[str, object]:
        return {"state": self.state}


class Response:
    """What the app sent for one HTTP request."""

    def __init__(self, messages: list[MutableMapping[str, Any]]) -> None:
        start, body = messages
        assert start["type"] == "http.response.start"
        assert body["type"] == "http.response.body"
        assert not body.get("more_body", False)
        self.status: int = start["status"]
        self.headers = {name.decode(): value.decode() for name, value in start["headers"]}
        self.body: bytes = body["body"]


async def call(
    app: ASGIApp,
    path: str = "/status",
    *,
    method: str = "GET",
    client: Any = ("127.0.0.1", 50000),
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
) -> Response:
    """Call the ASGI app directly with a hand-made HTTP scope."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers or [],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return Response(sent)


@pytest.fixture
def registry() -> Registry:
    """A registry of the test's own, so tests never see each other's sources."""
    return Registry()


@pytest.fixture
def breaker(registry: Registry) -> FakeBreaker:
    """A closed fake breaker registered as ``breakers/orders``."""
    source = FakeBreaker()
    registry.register("breakers", "orders", source)
    return source


@pytest.fixture
def served(registry: Registry) -> Iterator[RunningServer[ASGIApp]]:
    """The admin app over ``registry``, served standalone by a real uvicorn."""
    from connectivity import admin

    with serve(admin.app(registry=registry), name="admin") as server:
        yield server
