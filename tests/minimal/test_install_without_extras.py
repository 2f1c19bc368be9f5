"""The package installed without extras (``nox -s tests_minimal``): what must work, and what must fail clearly.

Skipped where httpx-aiohttp is installed (the main suite's environment), which tests the same paths with it.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import importlib.util
import logging
import threading
import warnings
from collections.abc import Iterator

import pytest

if importlib.util.find_spec("httpx_aiohttp") is not None:
    pytest.skip("httpx-aiohttp is installed: these tests check an install without it", allow_module_level=True)

import httpx

import connectivity as cx
from connectivity.transports import AutoTransport, Layer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: trio is a test dependency, not a runtime one."""
    return "asyncio"


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    """A standard-library HTTP server on 127.0.0.1 (uvicorn is an extra too)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


def test_the_package_imports_and_httpcore_has_sniffio() -> None:
    assert cx.transport is not None
    assert cx.transports.AiohttpTransport is not None  # the class imports; building one needs the extra
    importlib.import_module("sniffio")
    assert importlib.metadata.version("sniffio")


async def test_auto_serves_asyncio_with_httpcore_silently(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = cx.transport(backend="auto")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="connectivity"):
        warnings.simplefilter("always")
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(server_url)
    assert (response.status_code, response.text) == (200, "hello")
    network = transport
    while isinstance(network, Layer):
        network = network.inner
    assert isinstance(network, AutoTransport)
    assert network.selected == {"asyncio": "httpcore"}
    assert caught == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_aiohttp_fails_clearly_without_the_extra() -> None:
    with pytest.raises(cx.BackendUnavailableError, match=r"connectivity-sdk\[fast\]") as caught:
        cx.transport(backend="aiohttp")
    assert caught.value.field == "transport.backend"
    assert caught.value.backend == "aiohttp"
