"""The streams that read and write plain TCP connections on the socket (``transports._sockets``).

Every test uses a real TCP connection on 127.0.0.1: the far end is a socket the test holds and drives itself
(or, for the HTTP-level tests, a one-thread server), so what the stream does with the kernel is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from connectivity._http import httpcore, httpx
from connectivity.transports import HTTPTransport
from connectivity.transports._network import DeadlineAwareAsyncBackend, DeadlineAwareBackend
from connectivity.transports._sockets import HIGH_WATER, AsyncSocketStream, SocketStream

from .conftest import Certificates, raw_server

SMALL_BUFFER = 16 * 1024


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    with server:
        yield server


def accept(server: socket.socket) -> socket.socket:
    server.settimeout(5.0)
    peer, _ = server.accept()
    peer.settimeout(5.0)
    return peer


def reset(peer: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def receive_all(peer: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size and (chunk := peer.recv(65536)):
        data += chunk
    return bytes(data)


# -- sync ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sync_pair() -> Iterator[tuple[SocketStream, socket.socket]]:
    with listener() as server:
        wrapped = DeadlineAwareBackend(httpcore.SyncBackend()).connect_tcp("127.0.0.1", server.getsockname()[1])
        stream = wrapped._stream  # type: ignore[attr-defined]
        assert type(stream) is SocketStream
        peer = accept(server)
        try:
            yield stream, peer
        finally:
            stream.close()
            peer.close()


def test_a_plain_connection_is_read_and_written_on_its_non_blocking_socket() -> None:
    with sync_pair() as (stream, peer):
        stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=1.0)
        assert receive_all(peer, 18) == b"GET / HTTP/1.1\r\n\r\n"
        peer.sendall(b"HTTP/1.1 200 OK\r\n")
        assert stream.read(65536, timeout=1.0) == b"HTTP/1.1 200 OK\r\n"
        assert stream._sock.gettimeout() == 0.0  # never switched back and forth per operation


def test_a_read_longer_than_its_timeout_is_a_read_timeout() -> None:
    with sync_pair() as (stream, peer):
        with pytest.raises(httpcore.ReadTimeout):
            stream.read(1024, timeout=0.05)
        peer.sendall(b"late")
        assert stream.read(1024, timeout=1.0) == b"late"  # the connection is still usable


def test_a_read_with_no_time_left_times_out_at_once() -> None:
    with sync_pair() as (stream, _), pytest.raises(httpcore.ReadTimeout):
        stream.read(1024, timeout=0.0)


def test_a_peer_that_hangs_up_ends_the_stream_and_makes_it_readable() -> None:
    with sync_pair() as (stream, peer):
        assert stream.get_extra_info("is_readable") is False  # idle, nothing pending
        peer.close()
        assert stream.read(1024, timeout=1.0) == b""
        assert stream.get_extra_info("is_readable") is True


def test_a_reset_is_a_read_error() -> None:
    with sync_pair() as (stream, peer):
        reset(peer)
        with pytest.raises(httpcore.ReadError):
            stream.read(1024, timeout=1.0)


def test_a_closed_stream_counts_as_readable() -> None:
    with sync_pair() as (stream, _):
        stream.close()
        assert stream.get_extra_info("is_readable") is True


def test_a_write_larger_than_the_send_buffer_arrives_whole() -> None:
    with sync_pair() as (stream, peer):
        stream._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        payload = bytes(range(256)) * 4096  # 1 MiB, far more than both buffers hold
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(receive_all(peer, len(payload))))
        reader.start()
        stream.write(payload, timeout=5.0)
        reader.join(10.0)
        assert received == [payload]


def test_a_write_the_peer_does_not_take_is_a_write_timeout() -> None:
    with sync_pair() as (stream, peer):
        stream._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        with pytest.raises(httpcore.WriteTimeout):
            stream.write(b"x" * (4 * 1024 * 1024), timeout=0.1)


def test_a_write_on_a_reset_connection_is_a_write_error() -> None:
    with sync_pair() as (stream, peer):
        reset(peer)
        with pytest.raises(httpcore.WriteError):
            stream.write(b"x" * 1024, timeout=1.0)  # on loopback the RST has arrived when close() returns


def test_without_select_poll_httpcores_stream_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(select, "poll")  # as on Windows, or under gevent's monkey-patching
    with listener() as server:
        wrapped = DeadlineAwareBackend(httpcore.SyncBackend()).connect_tcp("127.0.0.1", server.getsockname()[1])
        assert type(wrapped._stream).__name__ == "SyncStream"  # type: ignore[attr-defined]
        wrapped.close()


def test_other_information_comes_from_httpcores_stream() -> None:
    with sync_pair() as (stream, peer):
        assert stream.get_extra_info("server_addr") == peer.getsockname()
        assert stream.get_extra_info("ssl_object") is None


# -- asyncio ---------------------------------------------------------------------------------------------------


async def async_pair(server: socket.socket) -> tuple[AsyncSocketStream, socket.socket]:
    backend = DeadlineAwareAsyncBackend(httpcore.AnyIOBackend())
    wrapped = await backend.connect_tcp("127.0.0.1", server.getsockname()[1])
    stream = wrapped._stream  # type: ignore[attr-defined]
    assert type(stream) is AsyncSocketStream
    return stream, accept(server)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_connection_reads_and_writes_through_its_protocol() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            await stream.write(b"ping", timeout=1.0)
            assert receive_all(peer, 4) == b"ping"
            peer.sendall(b"pong")
            assert await stream.read(65536, timeout=1.0) == b"pong"
            peer.sendall(b"abcdef")
            assert await stream.read(4, timeout=1.0) == b"abcd"  # a chunk larger than asked for is split
            assert await stream.read(4, timeout=1.0) == b"ef"
            await stream.aclose()
            assert stream._sock is not None
            assert stream._sock.fileno() == -1  # closed when aclose returns, not at some later loop iteration


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_read_times_out_and_the_connection_stays_usable() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(1024, timeout=0.05)
            assert stream._protocol.waiter is None
            peer.sendall(b"late")
            assert await stream.read(1024, timeout=1.0) == b"late"
            await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_asyncio_read_leaves_the_connection_usable() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            with anyio.CancelScope() as scope:
                asyncio.get_running_loop().call_soon(scope.cancel)
                await stream.read(1024, timeout=None)
            assert scope.cancelled_caught
            assert stream._protocol.waiter is None
            peer.sendall(b"after")
            assert await stream.read(1024, timeout=1.0) == b"after"
            await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_peer_that_hangs_up_or_resets() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        assert stream.get_extra_info("is_readable") is False
        peer.close()
        assert await stream.read(1024, timeout=1.0) == b""
        assert stream.get_extra_info("is_readable") is True
        await stream.aclose()

        stream, peer = await async_pair(server)
        reset(peer)
        with pytest.raises(httpcore.ReadError):
            await stream.read(1024, timeout=1.0)
        await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_idle_check_without_select_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(select, "poll")
    with listener() as server:
        stream, peer = await async_pair(server)
        assert stream.get_extra_info("is_readable") is False
        peer.close()
        assert stream.get_extra_info("is_readable") is True  # select.select saw the FIN
        await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_connection_stops_reading_above_the_high_water_mark() -> None:
    payload = bytes(range(256)) * (3 * HIGH_WATER // 256)
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            sender = threading.Thread(target=peer.sendall, args=(payload,))
            sender.start()
            protocol = stream._protocol
            with anyio.fail_after(5.0):
                while not protocol.paused:  # noqa: ASYNC110 - the loop must run for the bytes to arrive
                    await anyio.sleep(0.001)
            assert HIGH_WATER < protocol.buffered < 2 * HIGH_WATER  # it stopped, and did not take it all
            received = bytearray()
            while len(received) < len(payload):
                received += await stream.read(65536, timeout=5.0)
            sender.join(5.0)
            assert bytes(received) == payload
            assert not protocol.paused
            await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_write_the_peer_does_not_take_times_out_and_closing_aborts() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            with pytest.raises(httpcore.WriteTimeout):
                # More than asyncio's write buffer holds before it pauses the protocol: the write must wait.
                await stream.write(b"x" * (4 * 1024 * 1024), timeout=0.1)
            transport = stream._protocol.transport
            await stream.aclose()
            assert transport.is_closing()
            await anyio.lowlevel.checkpoint()  # the loop runs the abort's callbacks
            assert stream._protocol.transport.get_extra_info("socket").fileno() == -1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_write_larger_than_the_buffers_waits_for_room_and_arrives_whole() -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB: asyncio pauses the protocol until the peer has read some
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            received: list[bytes] = []
            reader = threading.Thread(target=lambda: received.append(receive_all(peer, len(payload))))
            reader.start()
            await stream.write(payload, timeout=5.0)
            await anyio.to_thread.run_sync(reader.join, 10.0)
            assert received == [payload]
            assert not stream._protocol.writing_paused
            await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_after_an_asyncio_reset_reads_and_writes_fail() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        reset(peer)
        protocol = stream._protocol
        with anyio.fail_after(5.0):
            while not protocol.eof:  # noqa: ASYNC110 - the loop must run to see the reset
                await anyio.sleep(0.001)
        with pytest.raises(httpcore.ReadError):
            await stream.read(1024, timeout=1.0)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x", timeout=1.0)
        await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_write_after_close_is_a_write_error() -> None:
    with listener() as server:
        stream, peer = await async_pair(server)
        with peer:
            await stream.aclose()
            with pytest.raises(httpcore.WriteError):
                await stream.write(b"x", timeout=1.0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_tls_handshake_nobody_answers_is_a_connect_timeout() -> None:
    with listener() as server:  # accepts TCP (the kernel does), never speaks TLS
        stream, peer = await async_pair(server)
        with peer:
            with pytest.raises(httpcore.ConnectTimeout):
                await stream.start_tls(ssl.create_default_context(), "localhost", timeout=0.1)
            assert stream._protocol.transport.is_closing()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_closing_a_tls_connection_closes_its_socket_at_once(certificates: Certificates) -> None:
    # A peer that completes the handshake and then neither reads nor answers a close_notify: asyncio's own TLS
    # close would keep the socket open for its 30 s shutdown timeout, past the end of a short-lived event loop.
    done = threading.Event()
    with listener() as server:
        stream, peer = await async_pair(server)

        def serve_tls() -> None:
            with certificates.server_context().wrap_socket(peer, server_side=True) as tls:
                tls.do_handshake()
                done.wait(10.0)

        thread = threading.Thread(target=serve_tls)
        thread.start()
        try:
            secure = await stream.start_tls(certificates.client_context(), "127.0.0.1", timeout=5.0)
            assert secure.get_extra_info("ssl_object") is not None
            sock = secure.get_extra_info("socket")
            await secure.aclose()
            assert sock.fileno() == -1
        finally:
            done.set()
            await anyio.to_thread.run_sync(thread.join, 10.0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_socket_option_the_kernel_refuses_is_a_connect_error() -> None:
    with listener() as server:
        backend = DeadlineAwareAsyncBackend(httpcore.AnyIOBackend())
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp(
                "127.0.0.1", server.getsockname()[1], socket_options=[(socket.SOL_SOCKET, 9999, 1)]
            )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_connect_errors_are_httpcores() -> None:
    with listener() as server:
        port = server.getsockname()[1]
    with pytest.raises(httpcore.ConnectError):
        await DeadlineAwareAsyncBackend(httpcore.AnyIOBackend()).connect_tcp("127.0.0.1", port)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_socket_options_are_applied() -> None:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    with listener() as server:
        backend = DeadlineAwareAsyncBackend(httpcore.AnyIOBackend())
        stream = await backend.connect_tcp("127.0.0.1", server.getsockname()[1], socket_options=options)
        sock = stream.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_keeps_httpcores_own_streams() -> None:
    with listener() as server:
        stream = await DeadlineAwareAsyncBackend(httpcore.AnyIOBackend()).connect_tcp(
            "127.0.0.1", server.getsockname()[1]
        )
        assert not isinstance(stream._stream, AsyncSocketStream)  # type: ignore[attr-defined]
        await stream.aclose()


# -- HTTP over them ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_answer_per_connection() -> Iterator[tuple[str, list[int], threading.Event]]:
    """A server that answers one keep-alive request per connection, then hangs up (and sets the event)."""
    connections: list[int] = []
    hung_up = threading.Event()

    def answer(connection: socket.socket) -> None:
        connections.append(len(connections) + 1)
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        connection.shutdown(socket.SHUT_RDWR)  # the FIN is on its way before the event is set
        hung_up.set()

    with raw_server(answer) as url:
        yield url, connections, hung_up


@pytest.mark.parametrize("mode", ["sync", "asyncio", "trio"])
def test_a_keep_alive_connection_the_server_closed_is_replaced_before_the_next_request(mode: str) -> None:
    with one_answer_per_connection() as (url, connections, closed):
        if mode == "sync":
            with httpx.Client(transport=HTTPTransport()) as client:
                assert client.get(url).text == "ok"
                assert closed.wait(5.0)
                closed.clear()
                assert client.get(url).text == "ok"
        else:

            async def main() -> None:
                async with httpx.AsyncClient(transport=HTTPTransport()) as client:
                    assert (await client.get(url)).text == "ok"
                    await anyio.to_thread.run_sync(closed.wait, 5.0)
                    closed.clear()
                    assert (await client.get(url)).text == "ok"

            anyio.run(main, backend=mode)
    assert connections == [1, 2]
