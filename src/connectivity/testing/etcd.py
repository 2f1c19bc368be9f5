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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from connectivity._http import httpx
from connectivity.discovery.etcd import _prefix_end
from connectivity.testing._process import HOST, ManagedProcess, find_binary, free_port, serve

__all__ = ["HOST", "EtcdServer", "etcd_server"]

_free_port = free_port


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


class EtcdServer(ManagedProcess):
    """One ``etcd`` member on ``127.0.0.1`` (see :func:`etcd_server`).

    :meth:`stop` kills it (``SIGKILL``: a crash); its data stays for the next :meth:`start`.

    Attributes:
        port: The client port; it stays the same across :meth:`stop` and :meth:`start`.
        peer_port: The peer port.
        url: ``http://127.0.0.1:<port>``, for ``Etcd(endpoints=...)``.

    .. versionadded:: 0.1
    """

    program = "etcd"
    _poll_interval = 0.02
    _log_tail = 3000

    def __init__(
        self, binary: str, directory: Path, *, args: Sequence[str] = (), startup_timeout: float = 20.0
    ) -> None:
        super().__init__(binary, directory, startup_timeout=startup_timeout)
        self.port = _free_port()
        self.peer_port = _free_port()
        while self.peer_port == self.port:
            self.peer_port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._args = tuple(args)
        self._client = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)

    @property
    def address(self) -> str:
        return self.url

    def command(self) -> list[str]:
        """The ``etcd`` command line: one member, data in the temporary directory, loopback ports only."""
        peer = f"http://{HOST}:{self.peer_port}"
        return [
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

    def _ready(self) -> bool:
        try:
            response = self._client.get("/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def close(self) -> None:
        """Stop etcd and close the HTTP client."""
        super().close()
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
    path = find_binary("etcd", binary)

    def make(directory: Path) -> EtcdServer:
        shutil.rmtree(directory / "data", ignore_errors=True)  # not the data of a member that failed to start
        return EtcdServer(path, directory, args=args, startup_timeout=startup_timeout)

    with serve(make, prefix="connectivity-etcd-") as server:
        yield server
