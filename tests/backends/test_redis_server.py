"""The throwaway redis-server helper: loopback only, restartable on the same port, pausable."""

from __future__ import annotations

import socket

import pytest

from connectivity.testing.redis import HOST, RedisServer, redis_server
from connectivity.testing.system import require_binary

pytestmark = pytest.mark.system


def ping(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def test_stop_and_start_on_the_same_port(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert ping(redis_server.port) == b"+PONG\r\n"
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.running
    with pytest.raises(ConnectionRefusedError):
        ping(port)
    redis_server.start()
    assert redis_server.port == port
    assert ping(port) == b"+PONG\r\n"


def test_pause_answers_nothing_until_resumed(redis_server: RedisServer) -> None:
    redis_server.pause()
    with socket.create_connection((HOST, redis_server.port), timeout=1.0) as sock:
        sock.settimeout(0.2)
        sock.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(64)
        redis_server.resume()
        sock.settimeout(5.0)
        assert sock.recv(64) == b"+PONG\r\n"


def test_password_and_cleanup() -> None:
    binary = require_binary("redis-server")
    with redis_server(binary=binary, password="pw") as server:
        assert server.url == f"redis://:pw@127.0.0.1:{server.port}/0"
        assert ping(server.port).startswith(b"-NOAUTH")
        port = server.port
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        ping(port)


def test_a_server_that_cannot_start_reports_its_log() -> None:
    binary = require_binary("redis-server")
    with (
        pytest.raises(RuntimeError, match="did not start"),
        redis_server(binary=binary, args=("--no-such-option", "1")),
    ):
        pass
