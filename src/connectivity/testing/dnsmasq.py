"""A real, throwaway ``dnsmasq`` on a free loopback port, serving SRV, A/AAAA and TXT records to DNS tests.

Theory of operation: :func:`dnsmasq_server` picks a port that is free for both UDP and TCP on 127.0.0.1 and runs
``dnsmasq --no-daemon --no-resolv --no-hosts --conf-file=/dev/null`` there, bound to that address only, with no
upstream servers: it answers from its own records, ``--local=/<zone>/`` makes unknown names in the zone NXDOMAIN
(without it dnsmasq answers REFUSED), and every record it serves carries ``--local-ttl`` (a ``--host-record`` may
set its own). It waits, bounded by a deadline, until a raw DNS query gets an answer, and kills the process when the
context exits. Startup is retried on a fresh port when the chosen one was taken meanwhile.

How records change at run time (checked against dnsmasq 2.90):

* Addresses: :meth:`DnsmasqServer.set_hosts` rewrites a hosts file in a ``--hostsdir`` directory (written
  beside it and renamed in); dnsmasq notices through inotify and serves the new addresses within moments. It
  also sends ``SIGHUP`` (:meth:`DnsmasqServer.reload`), which rereads hosts files and clears the cache, for
  systems without inotify. Either way the change lands asynchronously: poll for it.
* SRV and TXT records and ``--host-record`` come from the command line, which ``SIGHUP`` does *not* reread (nor
  does it reread a ``--conf-file``): :meth:`DnsmasqServer.restart` runs a new dnsmasq on the same port with the new
  records.

:meth:`DnsmasqServer.pause` and :meth:`DnsmasqServer.resume` freeze and thaw the process (``SIGSTOP``,
``SIGCONT``): a server that never answers, the case DNS timeouts exist for. The module needs no DNS client
library.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from connectivity.testing._process import HOST, ManagedProcess, find_binary, free_port, serve

__all__ = ["HOST", "SRV", "DnsmasqServer", "dnsmasq_server"]


@dataclass(frozen=True, slots=True)
class SRV:
    """One SRV record for :class:`DnsmasqServer` (``--srv-host=name,target,port,priority,weight``).

    .. versionadded:: 0.1
    """

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0

    def option(self) -> str:
        """The dnsmasq option that serves this record."""
        return f"--srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


HostRecord = tuple[str, Sequence[str], int | None]
"""``(name, addresses, ttl)`` for ``--host-record`` (``ttl`` ``None``: the server's TTL)."""


def _free_port() -> int:
    """A port free for TCP and UDP on :data:`HOST` (dnsmasq binds both)."""
    return free_port(udp=True)


class DnsmasqServer(ManagedProcess):
    """One ``dnsmasq`` process on ``127.0.0.1:port`` (see :func:`dnsmasq_server`).

    :meth:`stop` kills it: queries then go unanswered (ICMP port unreachable). :meth:`pause` freezes it
    (``SIGSTOP``): queries are never answered, so clients time out, until :meth:`resume`.

    Attributes:
        port: The UDP and TCP port; it stays the same across :meth:`stop`, :meth:`start` and :meth:`restart`.
        nameserver: ``"127.0.0.1:<port>"``, for ``DNS(nameservers=[...])``.
        zone: Names under it that have no record are NXDOMAIN.
        ttl: The TTL of every record without one of its own (``--local-ttl``).

    .. versionadded:: 0.1
    """

    program = "dnsmasq"

    def __init__(
        self,
        binary: str,
        directory: Path,
        *,
        zone: str = "test",
        ttl: int = 1,
        srv: Iterable[SRV] = (),
        hosts: Mapping[str, Sequence[str]] | None = None,
        host_records: Iterable[HostRecord] = (),
        txt: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(binary, directory, startup_timeout=startup_timeout)
        self.port = _free_port() if port is None else port
        self.nameserver = f"{HOST}:{self.port}"
        self.zone = zone
        self.ttl = ttl
        self.srv = tuple(srv)
        self.host_records = tuple(host_records)
        self.txt = dict(txt or {})
        self._args = tuple(args)
        self._hostsdir = directory / "hosts.d"
        self._hostsdir.mkdir(exist_ok=True)
        self.set_hosts(hosts or {})

    @property
    def address(self) -> str:
        return self.nameserver

    def command(self) -> list[str]:
        """The dnsmasq command line for the current records."""
        command = [
            self.binary,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            f"--listen-address={HOST}",
            "--bind-interfaces",
            f"--port={self.port}",
            "--pid-file=",  # empty: no pid file
            "--log-facility=-",  # stderr, which goes to the log file
            f"--local-ttl={self.ttl}",
            f"--local=/{self.zone}/",
            f"--hostsdir={self._hostsdir}",
        ]
        if os.geteuid() == 0:
            # As root dnsmasq would switch to "nobody", who cannot read the private temporary directory.
            command += ["--user=root", "--group=root"]
        command += [record.option() for record in self.srv]
        for name, addresses, ttl in self.host_records:
            command.append(f"--host-record={','.join([name, *addresses])}" + ("" if ttl is None else f",{ttl}"))
        command += [f"--txt-record={name},{text}" for name, text in self.txt.items()]
        return command + list(self._args)

    def restart(
        self,
        *,
        srv: Iterable[SRV] | None = None,
        host_records: Iterable[HostRecord] | None = None,
        txt: Mapping[str, str] | None = None,
    ) -> None:
        """Run a new dnsmasq on the same port with new command-line records (``SIGHUP`` does not reread them)."""
        if srv is not None:
            self.srv = tuple(srv)
        if host_records is not None:
            self.host_records = tuple(host_records)
        if txt is not None:
            self.txt = dict(txt)
        self.stop()
        self.start()

    def set_hosts(self, hosts: Mapping[str, Sequence[str]]) -> None:
        """Replace the hosts-file addresses (``{name: [address, ...]}``); dnsmasq picks them up via inotify."""
        lines = [f"{address} {name}\n" for name, addresses in hosts.items() for address in addresses]
        staging = self._directory / "hosts.tmp"
        staging.write_text("".join(lines))
        os.replace(staging, self._hostsdir / "hosts")  # one rename: dnsmasq never reads half a file
        self.reload()  # inotify would do; the signal covers kernels or sandboxes without it

    def reload(self) -> None:
        """Send ``SIGHUP``: reread the hosts files and clear the cache (command-line records stay as they are)."""
        self._signal(signal.SIGHUP)

    def _ready(self) -> bool:
        ident = random.getrandbits(16)
        labels = f"connectivity-probe.{self.zone}".split(".")
        question = b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\0"
        query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            try:
                sock.connect((HOST, self.port))  # connected: "port unreachable" fails recv at once
                sock.send(query)
                reply = sock.recv(512)
            except OSError:
                return False
        return reply[:2] == query[:2]


@contextlib.contextmanager
def dnsmasq_server(
    *,
    binary: str | None = None,
    zone: str = "test",
    ttl: int = 1,
    srv: Iterable[SRV] = (),
    hosts: Mapping[str, Sequence[str]] | None = None,
    host_records: Iterable[HostRecord] = (),
    txt: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    startup_timeout: float = 10.0,
) -> Iterator[DnsmasqServer]:
    """Run a throwaway ``dnsmasq`` on a free loopback port for the duration of the block.

    Args:
        binary: Path of ``dnsmasq`` (default: found on ``PATH`` or at ``/usr/sbin/dnsmasq``).
        zone: Unknown names under it answer NXDOMAIN.
        ttl: TTL of the records, seconds (``--local-ttl``; dnsmasq's own default is 0).
        srv: SRV records.
        hosts: ``{name: [address, ...]}`` served from a hosts file that :meth:`DnsmasqServer.set_hosts` changes
            at run time.
        host_records: ``(name, addresses, ttl)`` served with ``--host-record`` (their own TTL, if given).
        txt: ``{name: text}`` TXT records.
        args: More dnsmasq options, e.g. ``("--log-queries",)``.
        startup_timeout: Seconds to wait for the first answer.

    Yields:
        The running :class:`DnsmasqServer`; it is killed when the block exits.

    Raises:
        FileNotFoundError: dnsmasq is not installed (tests: call
            :func:`connectivity.testing.system.require_binary` first, to skip instead).
        RuntimeError: The server did not start.

    .. versionadded:: 0.1
    """
    path = find_binary("dnsmasq", binary, also="/usr/sbin:/sbin")

    def make(directory: Path) -> DnsmasqServer:
        return DnsmasqServer(
            path,
            directory,
            zone=zone,
            ttl=ttl,
            srv=srv,
            hosts=hosts,
            host_records=host_records,
            txt=txt,
            args=args,
            startup_timeout=startup_timeout,
        )

    with serve(make, prefix="connectivity-dnsmasq-") as server:
        yield server
