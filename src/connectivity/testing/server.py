"""Run an ASGI app under a real uvicorn server on 127.0.0.1, in a background thread.

Theory of operation: :func:`serve` binds a listening socket to ``127.0.0.1:0`` itself (so the port is known before
the server starts), hands it to a :class:`uvicorn.Server` running in a daemon thread with its own asyncio loop,
and waits on a :class:`threading.Event` that the server sets when its startup finishes (or fails). Leaving the
context sets ``should_exit``; uvicorn's main loop notices within 0.1 s, closes idle keep-alive connections and
stops; the thread is joined with a bounded timeout.

The server speaks HTTP/1.1 through a subclass of uvicorn's h11 protocol that does two things per connection:

* it counts connections as they open and close, behind a condition variable, so a test can wait until "no
  connection is left open" instead of sleeping;
* it offers the app a real connection reset as the ASGI scope extension
  :data:`~connectivity.testing.upstream.RESET_EXTENSION`. ASGI has no way to drop a connection (an app that raises
  or returns without responding gets uvicorn's ``500``), but the protocol holds the asyncio transport. An abortive
  reset sets ``SO_LINGER`` to (on, 0 s) on the socket and aborts the transport: closing a socket with a zero linger
  time makes the kernel discard pending data and send RST, so the client sees ``ECONNRESET``
  (``httpx.ReadError``). A plain reset just aborts the transport, sending FIN: the client sees the server
  disconnect without a response (``httpx.RemoteProtocolError``). After the app returns, the wrapper waits for
  uvicorn to register the lost connection, which it would otherwise answer with a ``500`` on a dead socket.

uvicorn (the ``demo`` extra) is imported by this module only, never by the ASGI apps, so
:mod:`connectivity.testing.upstream` stays importable without it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import anyio
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from connectivity.testing.upstream import RESET_EXTENSION

__all__ = ["HOST", "RunningServer", "serve"]

HOST = "127.0.0.1"
"""Every test server listens on the IPv4 loopback only."""

AppT = TypeVar("AppT", bound=Callable[..., Awaitable[None]])


class _Connections:
    """Open-connection bookkeeping shared between the server thread and the tests."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.open = 0
        self.opened = 0

    def made(self) -> None:
        with self.cond:
            self.open += 1
            self.opened += 1
            self.cond.notify_all()

    def lost(self) -> None:
        with self.cond:
            self.open -= 1
            self.cond.notify_all()


def _with_reset(app: Callable[..., Awaitable[None]], transport: Any) -> Callable[..., Awaitable[None]]:
    """Wrap ``app`` for one connection so its HTTP scopes carry the reset extension for ``transport``."""

    async def app_with_reset(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        was_reset = False

        def reset(abortive: bool) -> None:
            nonlocal was_reset
            sock = transport.get_extra_info("socket")
            if abortive and sock is not None:
                # Linger on, 0 s: closing sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            was_reset = True

        extensions = {**(scope.get("extensions") or {}), RESET_EXTENSION: {"reset": reset}}
        await app({**scope, "extensions": extensions}, receive, send)
        if was_reset:
            # uvicorn learns of the loss a loop iteration later; returning before that, it would answer 500.
            with anyio.move_on_after(5.0):
                while (await receive())["type"] != "http.disconnect":
                    pass

    return app_with_reset


def _protocol_class(connections: _Connections, base: type[H11Protocol] = H11Protocol) -> type[H11Protocol]:
    class _Protocol(base):  # type: ignore[valid-type,misc]  # a subclass of whichever protocol was asked for
        app: Any

        # transport is an asyncio.Transport; typed loosely so this module need not import asyncio.
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.app = _with_reset(self.app, transport)
            connections.made()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            connections.lost()

    return _Protocol


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self._started_event.set()


class RunningServer(Generic[AppT]):
    """A live server started by :func:`serve`.

    Attributes:
        name: The name given to :func:`serve`.
        app: The ASGI app being served.
        host: Always ``"127.0.0.1"``.
        port: The ephemeral port the server listens on.
        url: ``"http://127.0.0.1:<port>"`` (``https://`` when served over TLS).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        name: str,
        app: AppT,
        port: int,
        server: uvicorn.Server,
        connections: _Connections,
        scheme: str = "http",
    ) -> None:
        self.name = name
        self.app = app
        self.host = HOST
        self.port = port
        self.url = f"{scheme}://{HOST}:{port}"
        self._server = server
        self._connections = connections

    def __repr__(self) -> str:
        return f"<RunningServer {self.name!r} {self.url}>"

    @property
    def open_connections(self) -> int:
        """Client connections currently open on the server side."""
        with self._connections.cond:
            return self._connections.open

    @property
    def connections_opened(self) -> int:
        """Connections accepted since the server started (a reused keep-alive connection counts once)."""
        with self._connections.cond:
            return self._connections.opened

    @property
    def active_tasks(self) -> int:
        """Request handlers uvicorn is running now."""
        return len(self._server.server_state.tasks)

    def wait_for_connections(self, count: int = 0, *, timeout: float = 5.0) -> None:
        """Block until at most ``count`` connections are open (by default: until none is).

        Raises:
            TimeoutError: More than ``count`` were still open after ``timeout`` seconds.
        """
        with self._connections.cond:
            if not self._connections.cond.wait_for(lambda: self._connections.open <= count, timeout):
                raise TimeoutError(
                    f"{self.name}: {self._connections.open} connection(s) still open after {timeout}s"
                )


@contextlib.contextmanager
def serve(
    app: AppT,
    *,
    name: str = "upstream",
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    http_protocol: type[H11Protocol] = H11Protocol,
) -> Iterator[RunningServer[AppT]]:
    """Serve ``app`` with uvicorn (h11, asyncio) on ``127.0.0.1`` and an ephemeral port until the block ends.

    Args:
        app: Any ASGI 3 application.
        name: Names the server thread and appears in error messages.
        startup_timeout: Seconds to wait for the server to start.
        shutdown_timeout: Seconds to wait for it to stop (twice: gracefully, then forced).
        ssl_context: Serve HTTPS with this server-side context (its certificate chain, and for mutual TLS its
            ``verify_mode`` and CA); the URL then starts with ``https://``.
        http_protocol: The uvicorn protocol class to serve with: uvicorn's h11 protocol or a subclass of it, such
            as :class:`connectivity.security.uvicorn.TLSH11Protocol` (the ASGI TLS extension). Connection counts
            and the reset extension work with any of them.

    Yields:
        The running server: its URL and port, the app, and connection counts.

    Raises:
        RuntimeError: The server failed to start or stop in time.

    .. versionadded:: 0.1
    """
    connections = _Connections()
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http=_protocol_class(connections, http_protocol),
        interface="asgi3",
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=1,
    )
    if ssl_context is not None:
        config.load()  # then replace what uvicorn would build from file names with the context given
        config.ssl = ssl_context
    started = threading.Event()
    server = _Server(config, started)
    failure: list[BaseException] = []
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
    # every response waits ~40 ms for a delayed ACK (Nagle), headers and body being separate writes.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported by serve(), not by the thread's excepthook
                failure.append(exc)
            finally:
                started.set()

        thread = threading.Thread(target=run, name=f"connectivity-serve-{name}", daemon=True)
        thread.start()
        try:
            if not started.wait(startup_timeout) or not server.started:
                cause = failure[0] if failure else None
                raise RuntimeError(f"{name}: server did not start within {startup_timeout}s") from cause
            yield RunningServer(
                name=name,
                app=app,
                port=port,
                server=server,
                connections=connections,
                scheme="http" if ssl_context is None else "https",
            )
        finally:
            _stop(name, server, thread, shutdown_timeout)
    finally:
        sock.close()


def _stop(name: str, server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    began = time.monotonic()
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout)
    if thread.is_alive():
        raise RuntimeError(f"{name}: server did not stop within {time.monotonic() - began:.1f}s")
