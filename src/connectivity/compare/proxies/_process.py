"""Sidecar proxy processes: start one in its own process group, wait until it listens, measure it, stop it.

Theory of operation: :meth:`Sidecar.start` launches the rendered command with ``start_new_session=True``, so the
proxy and every worker it forks share one process group whose id is the proxy's pid, and a terminal's Ctrl-C
reaches only this process (which then stops the group itself). Standard output and error go to files in the work
directory. Start-up polls a TCP connect to the listen address until it succeeds, the process exits or the timeout
passes. The process group is the unit of measurement and of cleanup: :meth:`Sidecar.cpu_ns` and
:meth:`Sidecar.rss_bytes` sum over every process whose ``/proc/<pid>/stat`` names the group, and
:meth:`Sidecar.stop` sends ``SIGTERM`` to the group, waits, then ``SIGKILL``-s what is left. Every running
sidecar is also stopped by an :mod:`atexit` handler, and by ``__exit__`` on any exception, Ctrl-C included.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectivity.compare.proxies import Rendered

__all__ = ["Sidecar", "SidecarError", "free_port", "group_pids", "process_cpu_ns", "process_rss_bytes"]

_POLL = 0.02
_TERM_GRACE = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (another process may take it before it is used: retry then).

    .. versionadded:: 0.1
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        return stat.read().rpartition(")")[2].split()


def group_pids(pgid: int) -> list[int]:
    """Processes alive (not zombies) in process group ``pgid``, from ``/proc``.

    .. versionadded:: 0.1
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except (OSError, ValueError):  # it ended meanwhile
            continue
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            found.append(int(entry))
    return found


def process_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid`` (``schedstat``), else ``utime + stime`` (``stat``, coarse).

    .. versionadded:: 0.1
    """
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError),  # the thread just ended
                open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as stats,
            ):
                total += int(stats.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        fields = _stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _TICKS


def process_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` now (``/proc/<pid>/statm``, resident pages).

    .. versionadded:: 0.1
    """
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE


class SidecarError(Exception):
    """Base of the start failures; :mod:`connectivity.compare.proxies` raises its typed subclass."""


_running: set[Sidecar] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        sidecars = list(_running)
    for sidecar in sidecars:
        sidecar.stop()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT back for the block (in the main thread), then deliver it as it would have been."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


class Sidecar:
    """A running proxy process group; a context manager that stops it on exit, whatever the exit.

    Use :meth:`start`; the constructor is internal.

    Attributes:
        rendered: What was started.
        url: ``http://host:port`` of the proxy's listener.
        pid: The proxy's main process id, which is also its process group id.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_last_cpu", "_lock", "_process", "_stopped", "pid", "rendered", "url")

    def __init__(self, rendered: Rendered, process: subprocess.Popen[bytes], url: str) -> None:
        self.rendered = rendered
        self._process = process
        self.pid = process.pid
        self.url = url
        self._stopped = False
        self._last_cpu = 0
        self._lock = threading.Lock()
        with _running_lock:
            _running.add(self)

    @classmethod
    def start(cls, rendered: Rendered, *, timeout: float = 10.0) -> Sidecar:
        """Start the proxy ``rendered`` describes and wait until its listen address accepts connections.

        The port is the one :func:`~connectivity.compare.proxies.render` wrote: when it was taken meanwhile, the
        start fails; :func:`~connectivity.compare.proxies.launch` renders again on a new port then.

        Args:
            rendered: From :func:`connectivity.compare.proxies.render`, ideally validated.
            timeout: Seconds to wait for the listener.

        Returns:
            The running sidecar (stop it, or use it as a context manager).

        Raises:
            ProxyStartError: The proxy exited or did not listen in time (its output is in the error).

        .. versionadded:: 0.1
        """
        from connectivity.compare.proxies import ProxyStartError, environment

        host, port = rendered.listen
        if port <= 0:
            raise ProxyStartError(rendered.proxy, f"no listen port in {rendered!r}")
        out = rendered.workdir / f"{rendered.proxy}.stdout.log"
        err = rendered.workdir / f"{rendered.proxy}.stderr.log"
        # A Ctrl-C between the fork and the registration would leave a proxy nobody stops: it waits until then.
        with _interrupts_deferred(), open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(
                rendered.command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=rendered.workdir,
                env=environment(rendered.workdir),
                start_new_session=True,
            )
            sidecar = cls(rendered, process, f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        try:
            listening = _wait_listening(process, connect_host, port, time.monotonic() + timeout)
        except BaseException:
            sidecar.stop()
            raise
        if listening:
            return sidecar
        sidecar.stop()
        output = _tail(out, err, *sorted(rendered.workdir.glob("*error.log")))
        state = "exited" if process.returncode not in (None, -signal.SIGTERM, -signal.SIGKILL) else "timed out"
        raise ProxyStartError(rendered.proxy, f"{state} (status {process.returncode}) before listening:\n{output}")

    def cpu_ns(self) -> int:
        """On-CPU nanoseconds of the proxy's processes so far (main process and workers alive now).

        After :meth:`stop` this is the last value read. Time of workers that already exited is not counted.
        """
        with self._lock:
            if self._stopped:
                return self._last_cpu
            total = 0
            for pid in group_pids(self.pid):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += process_cpu_ns(pid)
            self._last_cpu = max(total, self._last_cpu)
            return self._last_cpu

    def rss_bytes(self) -> int:
        """Resident memory of the proxy's processes now (0 once stopped); shared pages count once per process."""
        total = 0
        for pid in group_pids(self.pid) if not self._stopped else ():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += process_rss_bytes(pid)
        return total

    def counters(self) -> dict[str, int]:
        """What the proxy reports it did so far (see :func:`connectivity.compare.proxies.counters`)."""
        from connectivity.compare.proxies import counters

        return counters(self.rendered)

    def pids(self) -> list[int]:
        """Processes of the proxy alive now."""
        return [] if self._stopped else group_pids(self.pid)

    @property
    def running(self) -> bool:
        """Whether the main process is still alive."""
        return not self._stopped and self._process.poll() is None

    def stop(self) -> None:
        """Stop every process of the group: ``SIGTERM``, a grace period, then ``SIGKILL``. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            with contextlib.suppress(OSError, ValueError, IndexError):
                self._last_cpu = max(self._last_cpu, sum(process_cpu_ns(pid) for pid in group_pids(self.pid)))
            self._stopped = True
        try:
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + _TERM_GRACE
            while time.monotonic() < deadline:
                self._process.poll()
                if not group_pids(self.pid):
                    break
                time.sleep(_POLL)
            _signal_group(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(_TERM_GRACE)
            deadline = time.monotonic() + _TERM_GRACE
            while group_pids(self.pid) and time.monotonic() < deadline:  # reparented workers being reaped
                time.sleep(_POLL)
        finally:
            with _running_lock:
                _running.discard(self)

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<Sidecar {self.rendered.proxy} pid={self.pid} {self.url} {state}>"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait_listening(process: subprocess.Popen[bytes], host: str, port: int, deadline: float) -> bool:
    """Wait until a process of the group listens on ``port``: a connect alone could reach another listener
    that holds the port (the proxy then fails to bind and exits), so ``/proc`` must show the socket is ours."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        owned = _owns_listener(process.pid, port)
        if owned is None:  # no /proc/net/tcp: fall back on a connect
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return True
            except OSError:
                pass
        elif owned:
            return True
        time.sleep(_POLL)
    return False


def _owns_listener(pgid: int, port: int) -> bool | None:
    """Whether a process of group ``pgid`` holds a TCP socket listening on ``port`` (``None``: cannot tell)."""
    rows = [line.split() for table in ("/proc/net/tcp", "/proc/net/tcp6") for line in _lines(table)[1:]]
    if not rows:
        return None
    # local_address is HEXIP:HEXPORT, st 0A is LISTEN, the inode is the tenth column.
    listening = {
        f"socket:[{parts[9]}]"
        for parts in rows
        if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rpartition(":")[2], 16) == port
    }
    if not listening:
        return False
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                        return True
    return False


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii") as lines:
            return list(lines)
    except OSError:
        return []


def _tail(*paths: Path, limit: int = 2000) -> str:
    text = ""
    for path in paths:
        with contextlib.suppress(OSError):
            text += path.read_text(encoding="utf-8", errors="replace")
    return text[-limit:]
