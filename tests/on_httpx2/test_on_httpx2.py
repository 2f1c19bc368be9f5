"""connectivity on httpx2 instead of httpx (``nox -s tests_httpx2``): the same stack, httpx2's classes.

Runs where httpx2 is installed and httpx is not (the session uninstalls it); the main suite's environment has
httpx, so the module skips there. The backend conformance suite runs in the same session on httpx2 too.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("httpx") is not None or importlib.util.find_spec("httpx2") is None:
    pytest.skip("checks an environment with httpx2 installed instead of httpx", allow_module_level=True)

import httpx2

import connectivity as cx
from connectivity import _http
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.plugin import UpstreamFactory
from connectivity.testing.server import RunningServer
from connectivity.transports import AutoTransport, Layer

pytestmark = pytest.mark.anyio


def network(transport: object) -> object:
    while isinstance(transport, Layer):
        transport = transport.inner
    return transport


def test_the_package_is_built_on_httpx2() -> None:
    assert _http.LIBRARY == "httpx2"
    assert _http.httpx is httpx2
    assert _http.httpcore.__name__ == "httpcore2"
    transport = cx.transport()
    assert isinstance(transport, httpx2.AsyncBaseTransport)
    assert isinstance(transport, httpx2.BaseTransport)
    assert issubclass(cx.CircuitOpenError, httpx2.TransportError)
    assert issubclass(cx.DeadlineExceededError, httpx2.TimeoutException)


async def test_the_full_stack_serves_an_httpx2_async_client(faulty_upstream_factory: UpstreamFactory) -> None:
    good = faulty_upstream_factory("good")
    bad = faulty_upstream_factory("bad")
    bad.app.faults = Faults(error_rate=1.0, error_status=503)
    transport = cx.transport(
        discovery=[good.url.removeprefix("http://"), bad.url.removeprefix("http://")],
        balancer=cx.balancing.RoundRobin(),
        retry=cx.Retry(attempts=3),
        breaker=cx.CircuitBreaker(),
        timeout=cx.Timeout(total=10.0),
    )
    async with httpx2.AsyncClient(transport=transport, base_url="http://orders") as client:
        responses = [await client.get(f"/items/{index}") for index in range(10)]
    assert [(type(response), response.status_code) for response in responses] == [(httpx2.Response, 200)] * 10
    assert good.app.stats.requests == 10
    assert bad.app.stats.requests >= 1  # round robin sent first attempts there; the retries went to "good"


def test_the_full_stack_serves_an_httpx2_sync_client(faulty_upstream: RunningServer[FaultyUpstream]) -> None:
    faulty_upstream.app.faults = Faults(error_rate=1.0, error_status=503)
    with httpx2.Client(transport=cx.transport(retry=cx.Retry(attempts=3)), base_url=faulty_upstream.url) as client:
        response = client.get("/")
    assert (type(response), response.status_code) == (httpx2.Response, 503)
    assert faulty_upstream.app.stats.requests == 3  # every attempt retried, the last answer returned


async def test_a_total_deadline_raises_httpx2s_timeout(faulty_upstream: RunningServer[FaultyUpstream]) -> None:
    faulty_upstream.app.faults = Faults(hang=True)
    async with httpx2.AsyncClient(transport=cx.transport(timeout=0.2), base_url=faulty_upstream.url) as client:
        with pytest.raises(httpx2.TimeoutException) as caught:
            await client.get("/")
    assert isinstance(caught.value, cx.DeadlineExceededError)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_auto_serves_asyncio_with_httpcore2(faulty_upstream: RunningServer[FaultyUpstream]) -> None:
    transport = cx.transport(backend="auto")
    async with httpx2.AsyncClient(transport=transport, base_url=faulty_upstream.url) as client:
        response = await client.get("/")
    assert response.status_code == 200
    chosen = network(transport)
    assert isinstance(chosen, AutoTransport)
    assert chosen.selected == {"asyncio": "httpcore"}


def test_the_aiohttp_backend_says_why_it_cannot_serve() -> None:
    with pytest.raises(cx.BackendUnavailableError, match="httpx-aiohttp") as caught:
        cx.transport(backend="aiohttp")
    assert caught.value.backend == "aiohttp"
