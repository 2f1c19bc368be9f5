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
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

from connectivity.testing._process import HOST, ManagedProcess, find_binary, free_port, serve

__all__ = ["HOST", "RedisServer", "redis_server"]

_free_port = free_port


class RedisServer(ManagedProcess):
    """One ``redis-server`` process on ``127.0.0.1:port`` (see :func:`redis_server`).

    :meth:`stop` kills it (``SIGKILL``: a crash, not a shutdown); its data is gone. :meth:`pause` freezes it
    (``SIGSTOP``): connections still open, nothing is ever answered, until :meth:`resume`.

    Attributes:
        port: The TCP port; it stays the same across :meth:`stop` and :meth:`start`.
        url: ``redis://[:password@]127.0.0.1:<port>/0``.
        password: The ``requirepass`` password, if any.

    .. versionadded:: 0.1
    """

    program = "redis-server"

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
        super().__init__(binary, directory, startup_timeout=startup_timeout)
        self.port = _free_port() if port is None else port
        self.password = password
        auth = "" if password is None else f":{password}@"
        self.url = f"redis://{auth}{HOST}:{self.port}/0"
        self._args = tuple(args)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        """The ``redis-server`` command line: no persistence, in the temporary directory, logging to stdout."""
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
        return command + list(self._args)

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))


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
    path = find_binary("redis-server", binary)
    with serve(
        lambda directory: RedisServer(
            path, directory, password=password, args=args, startup_timeout=startup_timeout
        ),
        prefix="connectivity-redis-",
    ) as server:
        yield server
