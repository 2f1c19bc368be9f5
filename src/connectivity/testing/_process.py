"""The lifecycle shared by the throwaway servers of :mod:`connectivity.testing` (redis, etcd, dnsmasq).

Theory of operation: a :class:`ManagedProcess` is one server process on the loopback interface, its output
appended to a log file in a private directory. :meth:`~ManagedProcess.start` runs :meth:`~ManagedProcess.command`
and polls :meth:`~ManagedProcess._ready` until the server answers, bounded by a deadline; a server that exits or
misses the deadline is killed and reported with the tail of its log. :meth:`~ManagedProcess.stop` is ``SIGKILL``
(a crash, not a shutdown), so a test can start the server again on the same port. :func:`serve` runs one in a
fresh temporary directory for the duration of a block, retrying startup on fresh ports: a free port can be taken
between probing it and the server binding it.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, TypeVar

__all__ = ["HOST", "ManagedProcess", "find_binary", "free_port", "serve"]

HOST = "127.0.0.1"
"""The server listens on the IPv4 loopback only."""

_ATTEMPTS = 5


def free_port(*, udp: bool = False) -> int:
    """A TCP port free on :data:`HOST` (with ``udp``: free for UDP too, for a server that binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                try:
                    other.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def find_binary(name: str, binary: str | None = None, *, also: str | None = None) -> str:
    """``binary``, else the path of ``name`` on ``PATH`` (else in the ``also`` directories).

    Raises:
        FileNotFoundError: It is nowhere.
    """
    path = binary or shutil.which(name) or (shutil.which(name, path=also) if also else None)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH")
    return path


class ManagedProcess(abc.ABC):
    """One server process, its output in a log file (see the module docstring).

    Subclasses name the program (:attr:`program`), build :meth:`command`, say how to tell it is ready
    (:meth:`_ready`) and where it listens (:attr:`address`). :meth:`pause` and :meth:`resume` freeze and thaw the
    process (``SIGSTOP``, ``SIGCONT``): a server that accepts connections but never answers.
    """

    program: ClassVar[str]
    """The program's name, for errors."""
    _poll_interval: ClassVar[float] = 0.01
    _log_tail: ClassVar[int] = 2000

    def __init__(self, binary: str, directory: Path, *, startup_timeout: float) -> None:
        self.binary = binary
        self._directory = directory
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / f"{self.program}.log"

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where the server listens, as shown in its ``repr`` and errors."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} running={self.running}>"

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused one is)."""
        return self._process is not None and self._process.poll() is None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line that starts the server."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Whether the started server answers."""

    def start(self) -> None:
        """Start the server (again) and wait until it answers.

        Raises:
            RuntimeError: It exited or did not answer within ``startup_timeout`` seconds (the log is attached).
        """
        if self.running:
            return
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True
            )
        deadline = time.monotonic() + self._startup_timeout
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log()[-self._log_tail :]
                raise RuntimeError(f"{self.program} on {self.address} did not start:\n{tail}")
            time.sleep(self._poll_interval)

    def stop(self) -> None:
        """Kill the server (``SIGKILL``: a crash, not a shutdown) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10.0)

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): connections stay open, nothing is answered, so clients time out."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (``SIGCONT``)."""
        self._signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server, paused or not (:func:`serve` calls it when the block exits)."""
        self.resume()
        self.stop()

    def log(self) -> str:
        """What the server logged so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signum)


P = TypeVar("P", bound=ManagedProcess)


@contextlib.contextmanager
def serve(make: Callable[[Path], P], *, prefix: str) -> Iterator[P]:
    """Start the server ``make(directory)`` builds in a fresh temporary directory; close it when the block exits.

    Startup is tried up to five times, each on a server ``make`` builds afresh (with fresh ports).

    Raises:
        RuntimeError: The last try did not start.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        server: P | None = None
        for attempt in range(_ATTEMPTS):
            server = make(Path(directory))
            try:
                server.start()
                break
            except RuntimeError:
                server.close()
                if attempt == _ATTEMPTS - 1:
                    raise
        assert server is not None
        try:
            yield server
        finally:
            server.close()
