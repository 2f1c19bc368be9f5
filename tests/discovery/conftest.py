"""Helpers for the resolver tests: bounded polling, and tiny UDP servers that misbehave on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

from connectivity.discovery import Resolution, Resolver


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


def refresh_until(
    resolver: Resolver, predicate: Callable[[Resolution], bool], timeout: float = 5.0, what: str = "resolution"
) -> Resolution:
    """Refresh ``resolver`` until its resolution satisfies ``predicate``, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        resolution = resolver.refresh()
        if predicate(resolution):
            return resolution
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s; last: {resolution}"
        time.sleep(0.02)


def keys(resolution: Resolution) -> list[str]:
    return [endpoint.key for endpoint in resolution.endpoints]


@contextlib.contextmanager
def udp_server(answer: Callable[[bytes], bytes | None]) -> Iterator[str]:
    """A UDP server on 127.0.0.1 that replies ``answer(query)`` to each datagram (``None``: no reply), in a
    thread joined on exit. Yields ``"127.0.0.1:<port>"``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            reply = answer(query)
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=run, name="udp-server", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5.0)
        sock.close()


@contextlib.contextmanager
def tcp_server(answer: Callable[[bytes], bytes]) -> Iterator[str]:
    """A DNS-over-TCP server on 127.0.0.1 (two-byte length prefixes) replying ``answer(query)`` to each query,
    one connection at a time, in a thread joined on exit. Yields ``"127.0.0.1:<port>"``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with connection:
                connection.settimeout(1.0)
                try:
                    size = int.from_bytes(connection.recv(2), "big")
                    query = b""
                    while len(query) < size:
                        chunk = connection.recv(size - len(query))
                        if not chunk:
                            break
                        query += chunk
                    reply = answer(query)
                    connection.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    continue

    thread = threading.Thread(target=run, name="tcp-server", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5.0)
        listener.close()
