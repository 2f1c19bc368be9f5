"""A real, throwaway single-member ``etcd`` on free loopback ports, for tests of etcd discovery.

Theory of operation: :func:`etcd_server` picks two free ports on 127.0.0.1 (clients and peers), starts ``etcd``
with a data directory in a temporary directory, listening and advertising on those ports only, and waits, bounded
by a deadline, until ``/health`` says ``true`` (the member elected itself). The yielded :class:`EtcdServer` writes
keys through etcd's v3 JSON gateway (``/v3/kv/put``, ``/v3/kv/deleterange``; etcd 3.4 serves ``/v3/...``, 3.3
only ``/v3beta/...``), and can be killed (:meth:`EtcdServer.stop`, ``SIGKILL``: an outage) and started again on
the same ports with its data (:meth:`EtcdServer.start`: a recovery). The process is killed when the context
exits. Startup is retried on fresh ports when a chosen one was taken meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["HOST", "EtcdServer", "etcd_server"]

HOST = "127.0.0.1"
"""The server listens on the IPv4 loopback only."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


class EtcdServer:
    """One ``etcd`` member on ``127.0.0.1`` (see :func:`etcd_server`).

    Attributes:
        port: The client port; it stays the same across :meth:`stop` and :meth:`start`.
        peer_port: The peer port.
        url: ``http://127.0.0.1:<port>``, for ``Etcd(endpoints=...)``.

    .. versionadded:: 0.1
    """

    def __init__(
        self, binary: str, directory: Path, *, args: Sequence[str] = (), startup_timeout: float = 20.0
    ) -> None:
        self.binary = binary
        self.port = _free_port()
        self.peer_port = _free_port()
        while self.peer_port == self.port:
            self.peer_port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._directory = directory
        self._args = tuple(args)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "etcd.log"
        self._client = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)

    def __repr__(self) -> str:
        return f"<EtcdServer {self.url} running={self.running}>"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start etcd (again, with the data it had) and wait until it is healthy.

        Raises:
            RuntimeError: It exited or was not healthy within ``startup_timeout`` seconds (the log is attached).
        """
        if self.running:
            return
        peer = f"http://{HOST}:{self.peer_port}"
        command = [
            self.binary,
            "--name", "connectivity",
            "--data-dir", str(self._directory / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"connectivity={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
            # One member on loopback: elect at once, and again at once after a restart (defaults: 100/1000 ms).
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            *self._args,
        ]  # fmt: skip
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True
            )
        deadline = time.monotonic() + self._startup_timeout
        while not self._healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd on {self.url} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def _healthy(self) -> bool:
        try:
            response = self._client.get("/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def stop(self) -> None:
        """Kill etcd (``SIGKILL``: a crash) and wait for it to exit. Its data stays for the next :meth:`start`."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10.0)

    def close(self) -> None:
        """Stop etcd and close the HTTP client."""
        self.stop()
        self._client.close()

    def call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<method>`` (e.g. ``"kv/range"``) and return the JSON answer."""
        response = self._client.post(f"/v3/{method}", json=dict(body))
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def put(self, key: str, value: str | bytes | Mapping[str, Any]) -> int:
        """Set ``key`` (a mapping is stored as JSON); returns the new revision."""
        data = json.dumps(value) if isinstance(value, Mapping) else value
        return int(self.call("kv/put", {"key": _b64(key), "value": _b64(data)})["header"]["revision"])

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (with ``prefix``: every key starting with it); returns the number deleted."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(_prefix_end(key.encode()))
        return int(self.call("kv/deleterange", body).get("deleted", 0))

    def replace(self, prefix: str, values: Mapping[str, str | bytes | Mapping[str, Any]]) -> int:
        """Make ``values`` (``{key suffix: value}``) the only keys under ``prefix``, in one transaction (so a
        watcher sees one revision).

        Returns:
            The revision of the change.
        """
        end = _b64(_prefix_end(prefix.encode()))
        existing = self.call("kv/range", {"key": _b64(prefix), "range_end": end, "keys_only": True})
        keep = {prefix + suffix for suffix in values}
        # One delete per key that goes: etcd refuses a txn that puts a key inside a range it deletes.
        success: list[dict[str, Any]] = [
            {"request_delete_range": {"key": kv["key"]}}
            for kv in existing.get("kvs", ())
            if base64.b64decode(kv["key"]).decode() not in keep
        ]
        for suffix, value in values.items():
            data = json.dumps(value) if isinstance(value, Mapping) else value
            success.append({"request_put": {"key": _b64(prefix + suffix), "value": _b64(data)}})
        return int(self.call("kv/txn", {"success": success})["header"]["revision"])

    def log(self) -> str:
        """What etcd logged so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for a prefix: the prefix with its last byte below 0xff incremented."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@contextlib.contextmanager
def etcd_server(
    *, binary: str | None = None, args: Sequence[str] = (), startup_timeout: float = 20.0
) -> Iterator[EtcdServer]:
    """Run a throwaway single-member ``etcd`` on free loopback ports for the duration of the block.

    Args:
        binary: Path of ``etcd`` (default: found on ``PATH``).
        args: More etcd flags.
        startup_timeout: Seconds to wait for the member to be healthy.

    Yields:
        The running :class:`EtcdServer`; it is killed when the block exits.

    Raises:
        FileNotFoundError: etcd is not installed (tests: call
            :func:`connectivity.testing.system.require_binary` first, to skip instead).
        RuntimeError: The server did not start.

    .. versionadded:: 0.1
    """
    path = binary or shutil.which("etcd")
    if path is None:
        raise FileNotFoundError("etcd not found on PATH")
    with tempfile.TemporaryDirectory(prefix="connectivity-etcd-") as directory:
        server: EtcdServer | None = None
        for attempt in range(5):  # a free port can be taken between probing it and etcd binding it
            server = EtcdServer(path, Path(directory), args=args, startup_timeout=startup_timeout)
            try:
                server.start()
                break
            except RuntimeError:
                server.close()
                if attempt == 4:
                    raise
                shutil.rmtree(Path(directory) / "data", ignore_errors=True)
        assert server is not None
        try:
            yield server
        finally:
            server.close()
