"""One conformance suite for every network backend: the semantics must not depend on which one serves.

Each test runs against real servers on 127.0.0.1 with ``backend`` = httpcore, aiohttp (when httpx-aiohttp is
installed; asyncio only) and auto, on asyncio and on trio. What a backend cannot do is asserted to fail clearly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import anyio
import pytest

import connectivity as cx
from connectivity._http import httpx
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import RunningServer, serve
from connectivity.transports import AiohttpTransport, AutoTransport, HTTPTransport, failure_kind
from connectivity.transports.aiohttp import aiohttp_limitation

from .conftest import Certificates, raw_server

pytestmark = pytest.mark.anyio

HAS_AIOHTTP = importlib.util.find_spec("httpx_aiohttp") is not None
BACKENDS = [
    "httpcore",
    pytest.param(
        "aiohttp", marks=pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed (fast extra)")
    ),
    "auto",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, anyio_backend: str) -> str:
    """The backend under test; aiohttp runs on asyncio only (its trio failure is asserted on its own)."""
    name = str(request.param)
    if name == "aiohttp" and anyio_backend != "asyncio":
        pytest.skip("aiohttp runs on asyncio only")
    return name


def network(backend: str, **options: Any) -> Any:
    """The network transport ``connectivity.transport(backend=...)`` builds."""
    return {"httpcore": HTTPTransport, "aiohttp": AiohttpTransport, "auto": AutoTransport}[backend](**options)


def stack(backend: str, **kwargs: Any) -> Any:
    """A connectivity stack over ``backend`` with the observability layers left out."""
    kwargs.setdefault("retry", False)
    return cx.transport(backend=backend, telemetry=False, request_id=False, **kwargs)  # type: ignore[arg-type]


def served_by(transport: Any, anyio_backend: str) -> str:
    """Which backend served calls on this event loop."""
    while isinstance(transport, cx.transports.Layer):
        transport = transport.inner
    if isinstance(transport, AutoTransport):
        return transport.selected[anyio_backend]
    return str(transport.backend)


class Lab:
    """An ASGI app with one route per behaviour the suite needs; it records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self._left = threading.Condition()

    def _client_left(self) -> None:
        with self._left:
            self.disconnects += 1
            self._left.notify_all()

    def wait_for_disconnects(self, count: int, *, timeout: float = 5.0) -> None:
        """Block until the app has seen ``count`` clients leave early (it notices on its own event loop)."""
        with self._left:
            if not self._left.wait_for(lambda: self.disconnects >= count, timeout):
                raise TimeoutError(f"{self.disconnects} early exit(s) seen after {timeout}s, expected {count}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        query = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part)
        if path == "/no-read":  # never reads the request body: the client's writes stall
            await anyio.sleep(1.0)
            await _respond(send, 200, b"late")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.requests.append(
            {
                "method": scope["method"],
                "target": scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b""),
                "headers": [(key.decode().lower(), value.decode()) for key, value in scope["headers"]],
                "body": bytes(body),
            }
        )
        if path == "/slow":  # answers after `delay` seconds, unless the client leaves first
            with anyio.move_on_after(float(query.get("delay", "1"))):
                while (await receive())["type"] != "http.disconnect":
                    pass
                self._client_left()
                return
            await _respond(send, 200, b"slow")
        elif path == "/chunks":  # a streamed response, `n` chunks `delay` seconds apart, until the client leaves
            await send({"type": "http.response.start", "status": 200, "headers": []})
            left = False
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal left
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    left = True
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                try:
                    for _ in range(int(query.get("n", "10"))):
                        await anyio.sleep(float(query.get("delay", "0")))
                        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
                except OSError:  # uvicorn's ClientDisconnected: a send after the client left, seen before receive
                    left = True
                tg.cancel_scope.cancel()  # finished: the client leaving now is no early exit
            if left:
                self._client_left()
                return
            await send({"type": "http.response.body", "body": b""})
        elif path == "/close-mid-body":  # promises 100 bytes, sends 50, closes the connection
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
            await send({"type": "http.response.body", "body": b"x" * 50, "more_body": True})
            await anyio.sleep(0.05)
            scope["extensions"]["connectivity.reset"]["reset"](False)
        elif path == "/headers":
            headers = [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"x-reply", b"yes")]
            await send({"type": "http.response.start", "status": 201, "headers": headers})
            await send({"type": "http.response.body", "body": b"created"})
        elif path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await _respond(send, 200, json.dumps({"bytes": len(body)}).encode())


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def lab() -> Iterator[RunningServer[Lab]]:
    with serve(Lab(), name="lab") as server:
        yield server


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def unanswered_url() -> Iterator[str]:
    """A loopback URL whose listen queue is full: connecting hangs until the connect timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def fetch(transport: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, timeout=kwargs.pop("timeout", 5.0)) as client:
        response = await client.request(method, url, **kwargs)
        await response.aread()
        return response


def causes(error: BaseException | None) -> str:
    """The messages of ``error`` and of every error it was raised from."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return " <- ".join(messages)


async def failure(transport: Any, method: str, url: str, **kwargs: Any) -> BaseException:
    with pytest.raises(httpx.TransportError) as caught:
        await fetch(transport, method, url, **kwargs)
    return caught.value


# -- requests and responses --------------------------------------------------------------------------------------


async def test_a_request_reaches_the_server_as_httpcore_sends_it(
    backend: str, anyio_backend: str, lab: RunningServer[Lab]
) -> None:
    """Method, target (as httpx encoded it), headers (duplicates too) and body arrive as httpcore sends them."""
    url = f"{lab.url}/echo/a%2Fb%7E?q=a%20b&x=1&x=2"
    headers = [("x-dup", "1"), ("x-dup", "2"), ("authorization", "Bearer t")]
    seen = []
    for name in ("httpcore", backend):
        async with network(name) as transport:
            for method, content in (("GET", None), ("POST", b'{"a": 1}'), ("DELETE", None), ("PUT", b"")):
                response = await fetch(transport, method, url, headers=headers, content=content)
                assert response.status_code == 200
        seen.append(lab.app.requests[-4:])
    assert seen[1] == seen[0]


async def test_responses_carry_the_same_status_headers_and_extensions(
    backend: str, lab: RunningServer[Lab]
) -> None:
    async with network(backend) as transport, httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{lab.url}/headers")
        assert response.status_code == 201
        assert response.reason_phrase == "Created"
        assert response.http_version == "HTTP/1.1"
        assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert response.content == b"created"
        stream = response.extensions["network_stream"]
        assert stream.get_extra_info("server_addr")[:2] == ("127.0.0.1", lab.port)
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None
        empty = await client.get(f"{lab.url}/empty")
        assert (empty.status_code, empty.content) == (204, b"")


async def test_a_streamed_request_body_arrives_whole(backend: str, lab: RunningServer[Lab]) -> None:
    async def body() -> AsyncIterator[bytes]:
        for n in range(64):
            yield bytes([n]) * 16384

    async with network(backend) as transport:
        response = await fetch(transport, "POST", f"{lab.url}/echo", content=body())
        big = await fetch(transport, "POST", f"{lab.url}/echo", content=b"y" * 300_000)
    assert response.json() == {"bytes": 64 * 16384}
    assert lab.app.requests[-2]["body"] == b"".join(bytes([n]) * 16384 for n in range(64))
    assert ("transfer-encoding", "chunked") in lab.app.requests[-2]["headers"]
    assert big.json() == {"bytes": 300_000}
    assert ("content-length", "300000") in lab.app.requests[-1]["headers"]


async def test_a_body_that_fails_raises_its_own_error(backend: str, lab: RunningServer[Lab]) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"start"
        raise ValueError("the caller's body broke")

    async with network(backend) as transport, httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ValueError, match="body broke"):
            await client.post(f"{lab.url}/echo", content=body())
        assert (await client.get(f"{lab.url}/echo")).status_code == 200


async def test_a_streamed_response_arrives_in_pieces_and_closes_early(
    backend: str, lab: RunningServer[Lab]
) -> None:
    async with network(backend) as transport, httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", f"{lab.url}/chunks?n=20") as response:
            received = b"".join([chunk async for chunk in response.aiter_raw()])
        assert len(received) == 20_000
        # Leaving before the end closes the connection instead of reusing it half read; the server notices.
        async with client.stream("GET", f"{lab.url}/chunks?n=1000&delay=0.01") as response:
            assert response.status_code == 200
        assert response.is_closed
        await anyio.to_thread.run_sync(lambda: lab.wait_for_connections(0))
        await anyio.to_thread.run_sync(lambda: lab.app.wait_for_disconnects(1))
        assert lab.app.disconnects == 1
        assert (await client.get(f"{lab.url}/echo")).status_code == 200


# -- failures ----------------------------------------------------------------------------------------------------


async def test_a_refused_connection_is_a_connect_error(backend: str, refused_url: str) -> None:
    async with network(backend) as transport:
        error = await failure(transport, "POST", refused_url)
    assert type(error) is httpx.ConnectError
    assert failure_kind(error) == "connect-failure"


async def test_a_connect_that_hangs_is_a_connect_timeout(backend: str, unanswered_url: str) -> None:
    async with network(backend) as transport:
        began = time.monotonic()
        error = await failure(transport, "GET", unanswered_url, timeout=httpx.Timeout(5.0, connect=0.3))
    assert type(error) is httpx.ConnectTimeout
    assert 0.25 < time.monotonic() - began < 2.0


async def test_a_slow_response_is_a_read_timeout(backend: str, lab: RunningServer[Lab]) -> None:
    async with network(backend) as transport:
        error = await failure(transport, "GET", f"{lab.url}/slow?delay=1", timeout=httpx.Timeout(5.0, read=0.2))
    assert type(error) is httpx.ReadTimeout
    assert failure_kind(error) == "read-timeout"


class Endless(httpx.AsyncByteStream):
    """64 MiB in 64 KiB chunks (more than any socket buffer holds); an iterator object, not an async generator,
    so one abandoned by a failed write leaves nothing for the garbage collector to complain about."""

    def __init__(self) -> None:
        self.left = 1024

    def __aiter__(self) -> Endless:
        return self

    async def __anext__(self) -> bytes:
        if not self.left:
            raise StopAsyncIteration
        self.left -= 1
        return b"w" * 65536


async def test_a_body_the_server_does_not_read_is_a_write_timeout(backend: str, lab: RunningServer[Lab]) -> None:
    async with network(backend) as transport, httpx.AsyncClient(transport=transport) as client:
        began = time.monotonic()
        headers = {"host": f"127.0.0.1:{lab.port}", "transfer-encoding": "chunked"}
        request = httpx.Request("POST", f"{lab.url}/no-read", headers=headers, stream=Endless())
        request.extensions["timeout"] = httpx.Timeout(5.0, write=0.3).as_dict()
        with pytest.raises(httpx.WriteTimeout) as caught:
            await client.send(request)
    assert type(caught.value) is httpx.WriteTimeout
    assert failure_kind(caught.value) == "reset"
    assert time.monotonic() - began < 3.0


async def test_no_free_connection_is_a_pool_timeout(backend: str, lab: RunningServer[Lab]) -> None:
    limits = httpx.Limits(max_connections=1)
    transport = network(backend, limits=limits)
    async with transport, httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, f"{lab.url}/slow?delay=0.5")
        await anyio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout) as caught:
            await client.get(f"{lab.url}/echo", timeout=httpx.Timeout(5.0, pool=0.1))
    assert failure_kind(caught.value) is None  # local saturation, not the upstream's fault


@pytest.mark.parametrize(
    ("mode", "expected"), [("close", httpx.RemoteProtocolError), ("rst", httpx.ReadError)], ids=["fin", "rst"]
)
async def test_a_server_that_hangs_up_before_answering(
    backend: str, faulty_upstream: RunningServer[FaultyUpstream], mode: str, expected: type[Exception]
) -> None:
    faulty_upstream.app.faults = Faults(reset_rate=1.0, reset_mode=mode)  # type: ignore[arg-type]
    async with network(backend) as transport:
        error = await failure(transport, "GET", faulty_upstream.url)
    assert type(error) is expected
    assert failure_kind(error) == "reset"


async def test_a_server_that_hangs_up_mid_body_is_a_protocol_error(backend: str, lab: RunningServer[Lab]) -> None:
    async with network(backend) as transport:
        error = await failure(transport, "GET", f"{lab.url}/close-mid-body")
    assert type(error) is httpx.RemoteProtocolError
    assert failure_kind(error) == "reset"


@pytest.mark.parametrize(
    "reply",
    [b"garbage garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad header line\r\ncontent-length: 0\r\n\r\n"],
    ids=["status-line", "header"],
)
async def test_a_malformed_response_is_a_protocol_error(backend: str, reply: bytes) -> None:
    def answer(connection: socket.socket) -> None:
        connection.sendall(reply)
        time.sleep(0.1)

    with raw_server(answer) as url:
        async with network(backend) as transport:
            error = await failure(transport, "GET", url)
    assert type(error) is httpx.RemoteProtocolError


async def test_a_reset_mid_body_is_a_read_error(backend: str) -> None:
    def answer(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 50)
        time.sleep(0.1)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with raw_server(answer) as url:
        async with network(backend) as transport:
            error = await failure(transport, "GET", url)
    assert type(error) is httpx.ReadError


async def test_retries_see_the_same_failures_and_count_the_same_attempts(
    backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    """A hang-up is retried for GET and not for POST, and no backend resends behind the retry layer's back."""
    retry = cx.Retry(attempts=3, backoff=cx.Backoff.none())
    transport = stack(backend, retry=retry)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(faulty_upstream.url)).status_code == 200  # a keep-alive connection to reuse
        faulty_upstream.app.faults = Faults(reset_rate=1.0, reset_mode="close")
        faulty_upstream.app.reset_stats()
        with pytest.raises(cx.RetriesExhaustedError) as caught:
            await client.get(faulty_upstream.url)
        assert caught.value.attempts == 3
        assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
        assert (await faulty_upstream.app.await_for(lambda stats: stats.resets == 3)).requests == 3
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(faulty_upstream.url, content=b"once")
        assert (await faulty_upstream.app.await_for(lambda stats: stats.resets == 4)).requests == 4


# -- per-try and total deadlines ----------------------------------------------------------------------------------


async def test_a_per_try_timeout_is_a_per_try_timeout_error(backend: str, lab: RunningServer[Lab]) -> None:
    transport = stack(backend, timeout=cx.Timeout(total=5.0, per_try=0.2))
    began = time.monotonic()
    with pytest.raises(cx.PerTryTimeoutError):
        await fetch(transport, "GET", f"{lab.url}/slow?delay=2")
    assert time.monotonic() - began < 1.5


async def test_a_total_timeout_is_a_deadline_error(backend: str, lab: RunningServer[Lab]) -> None:
    transport = stack(backend, timeout=cx.Timeout(total=0.3))
    began = time.monotonic()
    with pytest.raises(cx.DeadlineExceededError):
        await fetch(transport, "POST", f"{lab.url}/slow?delay=2", content=b"x" * 200_000)
    assert time.monotonic() - began < 1.5


async def test_the_total_deadline_bounds_the_response_body(backend: str, lab: RunningServer[Lab]) -> None:
    transport = stack(backend, timeout=cx.Timeout(total=0.5))
    began = time.monotonic()
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("GET", f"{lab.url}/chunks?n=50&delay=0.05") as response,
    ):
        assert response.status_code == 200
        with pytest.raises(cx.DeadlineExceededError):
            await response.aread()
    assert 0.4 < time.monotonic() - began < 1.5


async def test_a_per_try_timeout_does_not_cut_the_body_short(backend: str, lab: RunningServer[Lab]) -> None:
    """The head must come within the per-try limit; the body has until the call's deadline."""
    transport = stack(backend, timeout=cx.Timeout(total=5.0, per_try=0.3))
    response = await fetch(transport, "GET", f"{lab.url}/chunks?n=10&delay=0.06")
    assert len(response.content) == 10_000


async def test_an_ambient_deadline_bounds_the_call(backend: str, lab: RunningServer[Lab]) -> None:
    transport = stack(backend)
    with cx.deadline(0.3), pytest.raises(cx.DeadlineExceededError):
        await fetch(transport, "GET", f"{lab.url}/slow?delay=2")


# -- TLS ----------------------------------------------------------------------------------------------------------


async def test_tls_verifies_the_server_and_shows_its_certificate(backend: str, certificates: Certificates) -> None:
    with serve(Lab(), name="tls", ssl_context=certificates.server_context()) as server:
        transport = network(backend, verify=certificates.client_context())
        async with transport, httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"{server.url}/echo")
            assert response.status_code == 200
            ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
            assert ssl_object is not None
            assert ("URI", certificates.server_id) in ssl_object.getpeercert()["subjectAltName"]
            assert ssl_object.getpeercert(binary_form=True)

        async with network(backend) as transport:  # the system's CAs do not know the test CA
            error = await failure(transport, "GET", f"{server.url}/echo")
        assert type(error) is httpx.ConnectError
        assert "CERTIFICATE_VERIFY_FAILED" in causes(error)


async def test_mutual_tls_presents_the_client_certificate(backend: str, certificates: Certificates) -> None:
    context = certificates.server_context(require_client_cert=True)
    with serve(Lab(), name="mtls", ssl_context=context) as server:
        transport = network(backend, verify=certificates.client_context(with_cert=True))
        async with transport, httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"{server.url}/empty")
            assert response.status_code == 204
            peer = response.extensions["network_stream"].get_extra_info("ssl_object").getpeercert()
            assert ("URI", certificates.server_id) in peer["subjectAltName"]

        async with network(backend, verify=certificates.client_context()) as transport:
            with pytest.raises(httpx.TransportError) as caught:
                await fetch(transport, "GET", f"{server.url}/empty")
        # TLS 1.3 finishes the client's handshake before the server checks the certificate: the refusal arrives
        # as the connection breaks while the response is awaited (seen as RemoteProtocolError by every backend;
        # a reset that overtakes the close would be a ReadError, retried alike).
        assert type(caught.value) in (httpx.RemoteProtocolError, httpx.ReadError)
        assert failure_kind(caught.value) == "reset"


async def test_the_client_refuses_a_server_with_another_name(backend: str, certificates: Certificates) -> None:
    with serve(Lab(), name="tls-name", ssl_context=certificates.server_context()) as server:
        async with network(backend, verify=certificates.client_context()) as transport:
            error = await failure(
                transport, "GET", f"{server.url}/echo", extensions={"sni_hostname": "other.example.test"}
            )
    assert type(error) is httpx.ConnectError


# -- proxies ------------------------------------------------------------------------------------------------------


async def test_an_http_proxy_receives_the_request_in_absolute_form(
    backend: str, lab: RunningServer[Lab], refused_url: str
) -> None:
    """The proxy (the lab) answers itself: it sees the absolute target and the proxy credentials."""
    proxy = httpx.Proxy(lab.url.replace("http://", "http://user:secret@"))
    async with network(backend, proxy=proxy) as transport:
        response = await fetch(transport, "GET", f"{refused_url}via-proxy?x=1")
    assert response.status_code == 200
    seen = lab.app.requests[-1]
    assert seen["target"] == f"{refused_url}via-proxy?x=1".encode()
    assert ("proxy-authorization", "Basic dXNlcjpzZWNyZXQ=") in seen["headers"]


@pytest.mark.parametrize("url", ["socks5://127.0.0.1:1080", "https://127.0.0.1:3128"])
def test_aiohttp_refuses_proxies_it_cannot_use(url: str) -> None:
    assert aiohttp_limitation({"proxy": url}) is not None
    with pytest.raises(cx.BackendUnavailableError, match=r"transport\.proxy.*aiohttp backend"):
        AiohttpTransport(proxy=url)


# -- connection limits and keep-alive -----------------------------------------------------------------------------


async def test_max_connections_limits_requests_in_flight(
    backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    faulty_upstream.app.faults = Faults(latency=0.2)
    limits = httpx.Limits(max_connections=2)
    transport = network(backend, limits=limits)
    async with transport, httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(client.get, faulty_upstream.url)
    stats = await faulty_upstream.app.await_for(lambda stats: stats.ok == 6)
    assert stats.max_in_flight == 2
    assert faulty_upstream.connections_opened == 2


async def test_keep_alive_reuses_one_connection(backend: str, lab: RunningServer[Lab]) -> None:
    async with network(backend) as transport, httpx.AsyncClient(transport=transport) as client:
        for _ in range(5):
            assert (await client.get(f"{lab.url}/echo")).status_code == 200
    assert lab.connections_opened == 1


async def test_keepalive_expiry_retires_idle_connections(backend: str, lab: RunningServer[Lab]) -> None:
    limits = httpx.Limits(keepalive_expiry=0.2)
    async with network(backend, limits=limits) as transport, httpx.AsyncClient(transport=transport) as client:
        await client.get(f"{lab.url}/echo")
        await client.get(f"{lab.url}/echo")
        await anyio.sleep(0.5)
        await client.get(f"{lab.url}/echo")
    assert lab.connections_opened == 2


async def test_no_keep_alive_connections_means_one_connection_per_request(
    backend: str, lab: RunningServer[Lab]
) -> None:
    limits = httpx.Limits(max_keepalive_connections=0)
    async with network(backend, limits=limits) as transport, httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            await client.get(f"{lab.url}/echo")
    assert lab.connections_opened == 3


async def test_idle_connections_beyond_max_keepalive_are_closed(
    backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    faulty_upstream.app.faults = Faults(latency=0.2)
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=1)
    async with network(backend, limits=limits) as transport, httpx.AsyncClient(transport=transport) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.get, faulty_upstream.url)
        assert faulty_upstream.connections_opened == 3
        await anyio.to_thread.run_sync(lambda: faulty_upstream.wait_for_connections(1))
        assert faulty_upstream.open_connections == 1


# -- what a backend cannot do fails clearly -----------------------------------------------------------------------


@pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed (fast extra)")
@pytest.mark.parametrize(
    ("option", "value"),
    [("http2", True), ("http1", False), ("retries", 2), ("socket_options", [(6, 1, 1)]), ("uds", "/tmp/x.sock")],
)
def test_aiohttp_refuses_what_it_cannot_do_when_built(option: str, value: object) -> None:
    with pytest.raises(cx.BackendUnavailableError) as caught:
        cx.transport(backend="aiohttp", **{option: value})
    assert caught.value.field == f"transport.{option}"
    assert caught.value.backend == "aiohttp"
    assert "aiohttp backend" in str(caught.value)


@pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed (fast extra)")
def test_aiohttp_with_a_sync_client_fails_at_the_first_request(refused_url: str) -> None:
    transport = cx.transport(backend="aiohttp")
    with httpx.Client(transport=transport) as client, pytest.raises(cx.BackendUnavailableError) as caught:
        client.get(refused_url)
    assert "sync httpx.Client" in caught.value.reason
    assert isinstance(caught.value, cx.ConfigError)
    assert not isinstance(
        caught.value, httpx.TransportError
    )  # no retry, breaker or fallback takes it for an outage


@pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed (fast extra)")
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_aiohttp_on_trio_fails_at_the_first_request(
    anyio_backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    transport = cx.transport(backend="aiohttp", retry=cx.Retry(attempts=3))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(cx.BackendUnavailableError, match=r"asyncio only.*runs on trio") as caught:
            await client.get(faulty_upstream.url)
    assert caught.value.field == "transport.backend"
    assert faulty_upstream.app.stats.requests == 0


@pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed (fast extra)")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_aiohttp_transport_belongs_to_one_loop_until_closed(
    anyio_backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    transport = AiohttpTransport()
    assert (await fetch(transport, "GET", faulty_upstream.url)).status_code == 200  # the client closes it
    response = await anyio.to_thread.run_sync(lambda: anyio.run(fetch, transport, "GET", faulty_upstream.url))
    assert response.status_code == 200  # closed in between: bound again to the new loop
    await transport.aclose()


# -- auto ---------------------------------------------------------------------------------------------------------


async def test_auto_picks_aiohttp_on_asyncio_and_httpcore_elsewhere(
    anyio_backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    transport = stack("auto")
    assert (await fetch(transport, "GET", faulty_upstream.url)).status_code == 200
    expected = "aiohttp" if anyio_backend == "asyncio" and HAS_AIOHTTP else "httpcore"
    assert served_by(transport, anyio_backend) == expected


async def test_auto_picks_httpcore_for_what_only_httpcore_does(
    anyio_backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    transport = stack("auto", retries=1)
    assert (await fetch(transport, "GET", faulty_upstream.url)).status_code == 200
    assert served_by(transport, anyio_backend) == "httpcore"


def test_auto_serves_a_sync_client_with_httpcore(faulty_upstream: RunningServer[FaultyUpstream]) -> None:
    transport = stack("auto")
    with httpx.Client(transport=transport) as client:
        assert client.get(faulty_upstream.url).status_code == 200
        assert client.get(faulty_upstream.url).status_code == 200
    assert served_by(transport, "sync") == "httpcore"


@pytest.mark.skipif(not HAS_AIOHTTP, reason="httpx-aiohttp is not installed (fast extra)")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_auto_hands_a_trio_call_to_httpcore_after_choosing_aiohttp(
    anyio_backend: str, faulty_upstream: RunningServer[FaultyUpstream]
) -> None:
    # No keep-alive: the connection made from trio must not outlive that loop.
    transport = AutoTransport(limits=httpx.Limits(max_keepalive_connections=0))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(faulty_upstream.url)).status_code == 200
        assert transport.selected == {"asyncio": "aiohttp"}

        async def from_trio() -> int:
            request = httpx.Request("GET", faulty_upstream.url, extensions={"timeout": {}})
            response = await transport.handle_async_request(request)
            await response.aread()
            await response.aclose()
            return response.status_code

        status = await anyio.to_thread.run_sync(lambda: anyio.run(from_trio, backend="trio"))
        assert status == 200
