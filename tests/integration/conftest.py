"""Real servers, real sockets: each test runs with httpx.Client, and with httpx.AsyncClient on asyncio and trio."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import httpx
import pytest

from connectivity.testing import FaultyUpstream, UpstreamStats
from connectivity.testing.server import RunningServer
from connectivity.transports import Layer


class AttemptRouter(Layer):
    """Sends attempt *n* to ``urls[n - 1]`` (the last URL for later attempts): a stand-in for a load balancer
    honouring the retry and hedging layers' ``connectivity.attempt`` hint."""

    def __init__(self, inner: httpx.BaseTransport | httpx.AsyncBaseTransport, urls: Sequence[str]) -> None:
        super().__init__(inner)
        self._urls = [httpx.URL(url) for url in urls]

    def _route(self, request: httpx.Request) -> None:
        attempt = int(request.extensions.get("connectivity.attempt", 1))
        target = self._urls[min(attempt, len(self._urls)) - 1]
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
        request.headers["host"] = target.netloc.decode("ascii")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._route(request)
        return self._sync_inner().handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._route(request)
        return await self._async_inner().handle_async_request(request)


def settled(server: RunningServer[FaultyUpstream]) -> UpstreamStats:
    """The upstream's stats once no request is in flight: it records a request after sending its response, so a
    client can see the response a moment before the record lands."""
    return server.app.wait_for(lambda stats: stats.in_flight == 0, timeout=5.0)


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens: connecting fails before any byte is sent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(params=["sync", "asyncio", "trio"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)
