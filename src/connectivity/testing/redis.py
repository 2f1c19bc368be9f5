"""A real, throwaway ``redis-server`` on a free loopback port, for tests of the Redis backends.

Theory of operation: :func:`redis_server` picks a free port on 127.0.0.1, starts ``redis-server`` there with no
persistence (``--save '' --appendonly no``, working directory in a temporary directory) and waits until it answers
``PING`` on a raw socket, bounded by a deadline; it kills the server when the context exits. The yielded
:class:`RedisServer` can be stopped and started again *on the same port* (an outage and a recovery, with the data
gone as after a real crash) and paused and resumed with ``SIGSTOP``/``SIGCONT`` (a server that accepts connections
but never answers: the case timeouts exist for). It needs no Redis client library.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["HOST", "RedisServer", "redis_server"]

HOST = "127.0.0.1"
"""The server listens on the IPv4 loopback only."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` (see :func:`redis_server`).

    Attributes:
        port: The TCP port; it stays the same across :meth:`stop` and :meth:`start`.
        url: ``redis://[:password@]127.0.0.1:<port>/0``.
        password: The ``requirepass`` password, if any.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        binary: str,
        directory: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.port = _free_port() if port is None else port
        self.password = password
        auth = "" if password is None else f":{password}@"
        self.url = f"redis://{auth}{HOST}:{self.port}/0"
        self._directory = directory
        self._args = tuple(args)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis.log"

    def __repr__(self) -> str:
        return f"<RedisServer {HOST}:{self.port} running={self.running}>"

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused server is running)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again) on :attr:`port` and wait until it answers ``PING``.

        Raises:
            RuntimeError: It exited or did not answer within ``startup_timeout`` seconds (the log is attached).
        """
        if self.running:
            return
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._directory),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        command += self._args
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True
            )
        deadline = time.monotonic() + self._startup_timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self._log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on {HOST}:{self.port} did not start:\n{tail}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        """Kill the server (``SIGKILL``: a crash, not a shutdown) and wait for it to exit. Its data is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10.0)

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): connections still open, nothing is ever answered."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (``SIGCONT``)."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)


@contextlib.contextmanager
def redis_server(
    *,
    binary: str | None = None,
    password: str | None = None,
    args: Sequence[str] = (),
    startup_timeout: float = 10.0,
) -> Iterator[RedisServer]:
    """Run a throwaway ``redis-server`` on a free loopback port for the duration of the block.

    Args:
        binary: Path of ``redis-server`` (default: found on ``PATH``).
        password: Start it with ``--requirepass`` (the URL then carries the password).
        args: More ``redis-server`` arguments, e.g. ``("--maxmemory", "10mb")``.
        startup_timeout: Seconds to wait for the first ``PING`` answer.

    Yields:
        The running :class:`RedisServer`; it is killed when the block exits.

    Raises:
        FileNotFoundError: ``redis-server`` is not on ``PATH`` (tests: call
            :func:`connectivity.testing.system.require_binary` first, to skip instead).
        RuntimeError: The server did not start.

    .. versionadded:: 0.1
    """
    path = binary or shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError("redis-server not found on PATH")
    with tempfile.TemporaryDirectory(prefix="connectivity-redis-") as directory:
        server: RedisServer | None = None
        for attempt in range(5):  # the free port can be taken between probing it and the server binding it
            server = RedisServer(
                path, Path(directory), password=password, args=args, startup_timeout=startup_timeout
            )
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        assert server is not None
        try:
            yield server
        finally:
            server.resume()
            server.stop()
