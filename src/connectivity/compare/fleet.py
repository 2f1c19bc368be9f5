"""The upstream fleet: :class:`~connectivity.testing.upstream.FaultyUpstream` replicas, each a uvicorn process.

Theory of operation: each replica is ``python -m connectivity.compare.fleet PORT NAME SEED [CERT KEY CA]``, a
child process that binds ``127.0.0.1:PORT`` itself (``0`` the first time: the kernel picks, and the child prints
the port it got on its first line of output, so no other process can take the port between a check and the
bind), then serves a :class:`FaultyUpstream` under uvicorn (over mutual TLS when given certificate files: a client
certificate chaining to ``CA`` is then required of every caller, the control client included). Two control paths
sit in front of it and are not counted as traffic:

* ``GET /_fleet/stats`` answers ``{"requests": N}``: requests that reached the replica since it started, so the
  runner counts upstream requests per client request (retry amplification) from the upstreams' side;
* ``PUT /_fleet/faults`` takes the JSON fields of a :class:`~connectivity.testing.upstream.Faults`.

The replica's own CPU is not the client's, and killing one is a real "connection refused": :meth:`Fleet.stop`
stops a replica and :meth:`Fleet.start` brings it back on the same port (``SO_REUSEADDR``). A child reads its
standard input until end of file in a thread and exits when it ends, so a replica never outlives the runner, even
one killed with ``SIGKILL``; :meth:`Fleet.close` terminates them all (then kills, after a grace period). Each
replica runs in a session of its own, so a terminal's Ctrl-C reaches only the runner, which stops them in order.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import asdict
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from connectivity.testing.upstream import Faults, FaultyUpstream

if TYPE_CHECKING:
    from connectivity.compare.pki import Material

__all__ = ["HOST", "Fleet", "FleetError"]

HOST = "127.0.0.1"
"""Every process of a comparison listens on the IPv4 loopback only."""

_CONTROL = "/_fleet/"
_STARTUP_TIMEOUT = 20.0
_JSON = [(b"content-type", b"application/json")]


class FleetError(RuntimeError):
    """A replica did not start, or did not answer its control path.

    .. versionadded:: 0.1
    """


# -- the child process ------------------------------------------------------------------------------------


class _Controlled:
    """The replica's ASGI app: the control paths, then the faulty upstream for everything else."""

    def __init__(self, upstream: FaultyUpstream) -> None:
        self.upstream = upstream

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_CONTROL):
            await self.upstream(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        status, answer = 404, dict[str, Any](error="unknown control path")
        if scope["path"] == _CONTROL + "stats":
            status, answer = 200, {"requests": self.upstream.stats.requests, "pid": os.getpid()}
        elif scope["path"] == _CONTROL + "faults" and scope["method"] == "PUT":
            fields = json.loads(body or b"{}")
            if isinstance(fields.get("latency"), list):
                fields["latency"] = tuple(fields["latency"])
            self.upstream.faults = Faults(**fields)
            status, answer = 200, {"faults": fields}
        content = json.dumps(answer).encode()
        headers = [*_JSON, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _serve(port: int, name: str, seed: int, tls: Sequence[str] = ()) -> None:
    """The child: bind, print the port, serve (over mutual TLS with ``tls``: cert, key and CA files) until
    terminated or until standard input closes."""
    import random

    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only then (see connectivity.testing.server).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(1024)
    app = _Controlled(FaultyUpstream(name=name, rng=random.Random(f"{seed}:{name}"), max_records=0))
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        interface="asgi3",
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=600,
        timeout_graceful_shutdown=1,
    )
    if tls:
        from connectivity.security.tls import MTLS

        cert, key, ca = tls
        config.load()  # then replace what uvicorn would build from file names with the mTLS context
        config.ssl = MTLS(cert=cert, key=key, ca=ca).server_context(require_client_cert=True)
    server = uvicorn.Server(config)

    def watch_parent() -> None:
        with contextlib.suppress(OSError):
            while sys.stdin.buffer.read(4096):
                pass
        server.should_exit = True

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


# -- the parent side --------------------------------------------------------------------------------------


class _Replica:
    __slots__ = ("errors", "name", "port", "process")

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.errors: IO[bytes] | None = None


class Fleet:
    """Replicas of a :class:`FaultyUpstream`, each in a uvicorn child process on ``127.0.0.1``.

    Use as a context manager: entering starts every replica, leaving stops them all.

    Args:
        size: Number of replicas.
        seed: Seed of the replicas' fault draws (each replica's generator is seeded with it and its name).
        tls: Serve mutual TLS with this certificate (:class:`~connectivity.compare.pki.Material`), requiring a
            client certificate from the same CA; ``control`` is then the control client's.
        control: The control client's certificate (needed with ``tls``).

    .. versionadded:: 0.1
    """

    def __init__(
        self, size: int, *, seed: int = 1, tls: Material | None = None, control: Material | None = None
    ) -> None:
        if (tls is None) != (control is None):
            raise FleetError("a TLS fleet needs both the replicas' certificate and the control client's")
        self.seed = seed
        self.tls = tls
        self._control_tls = control
        self._replicas = [_Replica(f"r{index}") for index in range(size)]
        self._control: Any = None

    @property
    def scheme(self) -> str:
        """``"https"`` for a TLS fleet, else ``"http"``."""
        return "http" if self.tls is None else "https"

    def __enter__(self) -> Fleet:
        from connectivity._http import httpx

        verify: Any = True if self._control_tls is None else self._control_tls.ssl_context()
        self._control = httpx.Client(trust_env=False, timeout=10.0, verify=verify)
        try:
            for index in range(len(self._replicas)):
                self.start(index)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every replica, running or stopped."""
        return [(HOST, replica.port) for replica in self._replicas]

    @property
    def pids(self) -> list[int]:
        """Process ids of the running replicas."""
        return [r.process.pid for r in self._replicas if r.process is not None and r.process.poll() is None]

    def running(self, index: int) -> bool:
        """Whether replica ``index`` is running."""
        process = self._replicas[index].process
        return process is not None and process.poll() is None

    def start(self, index: int) -> None:
        """Start replica ``index`` (on its previous port, if it ran before) and wait until it answers.

        Raises:
            FleetError: It did not start within the startup deadline.
        """
        replica = self._replicas[index]
        if self.running(index):
            return
        command = [sys.executable, "-m", "connectivity.compare.fleet", str(replica.port), replica.name]
        tls = [] if self.tls is None else [str(self.tls.cert), str(self.tls.key), str(self.tls.ca)]
        # A file, not a pipe: a chatty child must never block on a full pipe nobody reads.
        replica.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _halt, with the process
        # A session of its own: a terminal's Ctrl-C reaches the runner only, which then stops the replicas in
        # order, instead of racing them (a replica gone first would turn the interrupt into a connect error).
        process = subprocess.Popen(
            [*command, str(self.seed), *tls],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=replica.errors,
            start_new_session=True,
        )
        replica.process = process
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], _STARTUP_TIMEOUT)
        line = process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            failure = self._stderr(replica) if process.poll() is not None else "no port printed in time"
            self._halt(replica)
            raise FleetError(f"replica {replica.name} did not start: {failure}")
        replica.port = int(line)
        while time.monotonic() < deadline:
            try:
                self._control.get(self._url(index, "stats")).raise_for_status()
                return
            except Exception:  # noqa: PERF203 - not up yet; the deadline bounds the wait
                if process.poll() is not None:
                    break
                time.sleep(0.02)
        self._halt(replica)
        raise FleetError(f"replica {replica.name} did not answer on port {replica.port}")

    def stop(self, index: int) -> None:
        """Stop replica ``index``: connections to its port are refused until :meth:`start`."""
        self._halt(self._replicas[index])

    def set_faults(self, index: int, faults: Faults | None) -> None:
        """Give replica ``index`` these faults (``None``: none)."""
        fields = asdict(faults if faults is not None else Faults())
        if callable(fields["latency"]):
            raise FleetError("a callable latency cannot be sent to a replica process")
        self._control.put(self._url(index, "faults"), json=fields).raise_for_status()

    def requests(self) -> int:
        """Requests that reached the running replicas since they started (control requests excluded)."""
        total = 0
        for index in range(len(self._replicas)):
            if self.running(index):
                total += int(self._control.get(self._url(index, "stats")).json()["requests"])
        return total

    def requests_by_replica(self) -> list[int | None]:
        """Requests each replica received since it started (``None`` for a stopped one)."""
        return [
            int(self._control.get(self._url(index, "stats")).json()["requests"]) if self.running(index) else None
            for index in range(len(self._replicas))
        ]

    def close(self) -> None:
        """Stop every replica (terminate, then kill after a grace period) and the control client."""
        for replica in self._replicas:
            self._halt(replica)
        if self._control is not None:
            self._control.close()

    def _url(self, index: int, action: str) -> str:
        return f"{self.scheme}://{HOST}:{self._replicas[index].port}{_CONTROL}{action}"

    @staticmethod
    def _stderr(replica: _Replica) -> str:
        if replica.errors is None:
            return ""
        replica.errors.seek(0)
        return replica.errors.read().decode(errors="replace")[-2000:]

    @staticmethod
    def _halt(replica: _Replica) -> None:
        process, replica.process = replica.process, None
        errors, replica.errors = replica.errors, None
        if errors is not None:
            errors.close()
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        finally:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


@contextlib.contextmanager
def fleet(size: int, *, seed: int = 1, **tls: Any) -> Iterator[Fleet]:
    """A running :class:`Fleet` of ``size`` replicas for the duration of the block (``tls``: as :class:`Fleet`)."""
    with Fleet(size, seed=seed, **tls) as running:
        yield running


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m connectivity.compare.fleet PORT NAME SEED [CERT KEY CA]``: run one replica (see the module
    docstring)."""
    arguments = list(argv if argv is not None else sys.argv[1:])
    port, name, seed = arguments[:3]
    _serve(int(port), name, int(seed), arguments[3:6])


if __name__ == "__main__":
    main()
