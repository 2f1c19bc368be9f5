"""HTTPTransport's calls into httpcore: exactly what httpx's own transports send, raise and return.

The pool here is a recording stand-in at httpcore's interface, so the same request and the same failure can be
given to httpx's transport and to ours and the results compared field by field. The real pools, on real
sockets, are covered by the backend conformance suite and the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import connectivity as cx
from connectivity._http import httpcore, httpx
from connectivity.testing import FaultyUpstream
from connectivity.testing.server import serve
from connectivity.transports import HTTPTransport, _core_calls

_EXCEPTIONS = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
]


class _Body:
    """A response body at httpcore's interface: some chunks, then optionally a failure."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class _Pool:
    """httpcore's pool interface: records each request, answers or raises as told."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.error: Exception | None = None
        self.body_error: Exception | None = None
        self.bodies: list[_Body] = []

    def _answer(self, request: Any) -> Any:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        body = _Body([b"o", b"k"], self.body_error)
        self.bodies.append(body)
        return httpcore.Response(
            201, headers=[(b"x-answer", b"yes")], content=body, extensions={"http_version": b"HTTP/1.1"}
        )

    def handle_request(self, request: Any) -> Any:
        return self._answer(request)

    async def handle_async_request(self, request: Any) -> Any:
        return self._answer(request)


def _pair(is_async: bool) -> tuple[Any, Any, _Pool, _Pool]:
    """httpx's transport and ours, each over a recording pool of its own."""
    theirs_pool, ours_pool = _Pool(), _Pool()
    theirs: Any = httpx.AsyncHTTPTransport() if is_async else httpx.HTTPTransport()
    ours: Any = httpx.AsyncHTTPTransport() if is_async else httpx.HTTPTransport()
    theirs._pool, ours._pool = theirs_pool, ours_pool
    handler = _core_calls.async_handler(ours) if is_async else _core_calls.sync_handler(ours)
    return theirs.handle_async_request if is_async else theirs.handle_request, handler, theirs_pool, ours_pool


def _call(handler: Any, request: httpx.Request, is_async: bool) -> httpx.Response:
    if not is_async:
        response: httpx.Response = handler(request)
        response.read()
        return response

    async def main() -> httpx.Response:
        answer: httpx.Response = await handler(request)
        await answer.aread()
        return answer

    return anyio.run(main)


def _outcome(handler: Any, request: httpx.Request, is_async: bool) -> tuple[type[BaseException], str, Any]:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is what is compared
        _call(handler, request, is_async)
    return type(caught.value), str(caught.value), caught.value.__cause__


def _failing_in_both(is_async: bool, where: str, error: Exception) -> tuple[Any, Any, _Pool]:
    """Our outcome and httpx's when both pools fail the same way (``where``: "error" or "body_error")."""
    theirs, ours, theirs_pool, ours_pool = _pair(is_async)
    setattr(theirs_pool, where, type(error)(*error.args))
    setattr(ours_pool, where, error)
    theirs_outcome = _outcome(theirs, httpx.Request("GET", "http://example.test/"), is_async)
    ours_outcome = _outcome(ours, httpx.Request("GET", "http://example.test/"), is_async)
    return ours_outcome, theirs_outcome, ours_pool


def _fields(core_request: Any) -> dict[str, Any]:
    fields = dict(vars(core_request))
    fields["url"] = vars(fields["url"])
    return fields


def _requests() -> list[httpx.Request]:
    def chunks() -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    return [
        httpx.Request("GET", "http://example.test/"),
        httpx.Request("GET", "https://example.test:8443/a%20b/c?d=e&f&g=%C3%A9"),
        httpx.Request("POST", "http://[::1]:8080/orders", json={"id": 1}),
        httpx.Request("PUT", "http://127.0.0.1/x", content=chunks()),
        httpx.Request("HEAD", "http://EXAMPLE.test:80/", headers=[("x-twice", "1"), ("x-twice", "2")]),
        httpx.Request("DELETE", "http://xn--fiqs8s.test/", extensions={"timeout": {"read": 1.0}}),
        httpx.Request("OPTIONS", "http://example.test/*", headers={"authorization": "Bearer secret"}),
        httpx.Request("PATCH", "http://example.test/p", data={"a": "1"}),
    ]


def test_the_installed_httpcore_takes_the_fast_path() -> None:
    assert _core_calls.COMPATIBLE
    transport = HTTPTransport()
    transport.sync  # noqa: B018 - creates the pool
    assert transport.handle_request.__qualname__ == "sync_handler.<locals>.handle_request"
    transport.close()


@pytest.mark.parametrize("request_", _requests(), ids=lambda request: f"{request.method} {request.url}")
def test_the_pool_gets_the_request_httpx_would_give_it(request_: httpx.Request) -> None:
    theirs, ours, theirs_pool, ours_pool = _pair(is_async=False)
    _call(theirs, request_, is_async=False)
    _call(ours, request_, is_async=False)
    built, reference = ours_pool.requests[0], theirs_pool.requests[0]
    assert type(built) is httpcore.Request
    assert type(built.url) is httpcore.URL
    assert _fields(built) == _fields(reference)
    assert built.extensions is request_.extensions  # the same dict: layers below write into it


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_responses_are_the_same(is_async: bool) -> None:
    theirs, ours, theirs_pool, ours_pool = _pair(is_async)
    expected = _call(theirs, httpx.Request("GET", "http://example.test/x"), is_async)
    got = _call(ours, httpx.Request("GET", "http://example.test/x"), is_async)
    assert (got.status_code, got.headers.raw, got.content, got.extensions) == (
        expected.status_code,
        expected.headers.raw,
        expected.content,
        expected.extensions,
    )
    assert _fields(ours_pool.requests[0]) | {"stream": None} == _fields(theirs_pool.requests[0]) | {"stream": None}
    assert ours_pool.bodies[0].closed  # read to the end: both closed
    assert theirs_pool.bodies[0].closed


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("raised", "expected"), _EXCEPTIONS, ids=lambda value: getattr(value, "__name__", ""))
def test_httpcore_errors_map_to_the_same_httpx_errors(
    raised: type[Exception], expected: type[Exception], is_async: bool
) -> None:
    ours_outcome, theirs_outcome, ours_pool = _failing_in_both(is_async, "error", raised("the upstream said no"))
    assert ours_outcome[:2] == theirs_outcome[:2] == (expected, "the upstream said no")
    assert ours_outcome[2] is ours_pool.error


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_error_that_is_not_httpcore_s_passes_unchanged(is_async: bool) -> None:
    _, ours, _, ours_pool = _pair(is_async)
    ours_pool.error = KeyError("not a network error")
    with pytest.raises(KeyError) as caught:
        _call(ours, httpx.Request("GET", "http://example.test/"), is_async)
    assert caught.value is ours_pool.error


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("raised", "expected"),
    [(httpcore.ReadError, httpx.ReadError), (httpcore.RemoteProtocolError, httpx.RemoteProtocolError)],
    ids=["read-error", "protocol-error"],
)
def test_a_body_that_fails_midway_maps_the_same(
    raised: type[Exception], expected: type[Exception], is_async: bool
) -> None:
    ours_outcome, theirs_outcome, ours_pool = _failing_in_both(is_async, "body_error", raised("connection lost"))
    assert ours_outcome[:2] == theirs_outcome[:2] == (expected, "connection lost")
    assert ours_outcome[2] is ours_pool.body_error


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "request_",
    [
        httpx.Request("PURGE", "http://example.test/cache"),
        httpx.Request("GET", "http://example.test/", extensions={"target": b"/other?x=1"}),
    ],
    ids=["unknown-method", "target-extension"],
)
def test_unusual_requests_go_through_httpx_itself(request_: httpx.Request, is_async: bool) -> None:
    theirs, ours, theirs_pool, ours_pool = _pair(is_async)
    _call(theirs, request_, is_async)
    _call(ours, request_, is_async)
    assert _fields(ours_pool.requests[0]) == _fields(theirs_pool.requests[0])


# -- on a real socket --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(FaultyUpstream()) as server:
        yield server.url


def _refused_url() -> str:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_a_sync_client_talks_to_a_real_server(upstream: str) -> None:
    def body() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    with httpx.Client(transport=cx.transports.HTTPTransport()) as client:
        assert client.get(upstream).status_code == 200
        assert client.head(upstream).content == b""
        assert client.post(upstream, content=body()).status_code == 200
        with client.stream("GET", upstream) as streamed:
            assert "replica" in json.loads(b"".join(streamed.iter_raw()))
    with httpx.Client(transport=cx.transports.HTTPTransport()) as client, pytest.raises(httpx.ConnectError):
        client.get(_refused_url())


@pytest.mark.anyio
async def test_an_async_client_talks_to_a_real_server(upstream: str) -> None:
    async with httpx.AsyncClient(transport=cx.transports.HTTPTransport()) as client:
        assert (await client.get(upstream)).status_code == 200
        assert (await client.post(upstream, json={"a": 1})).status_code == 200
    async with httpx.AsyncClient(transport=cx.transports.HTTPTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(_refused_url())
