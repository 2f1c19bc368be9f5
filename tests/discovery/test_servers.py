"""The throwaway dnsmasq and etcd servers the discovery tests run on: ports, restarts, bind races, teardown."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from connectivity.discovery import DNS
from connectivity.testing import dnsmasq as dnsmasq_module
from connectivity.testing import etcd as etcd_module
from connectivity.testing.dnsmasq import SRV, dnsmasq_server
from connectivity.testing.etcd import etcd_server
from connectivity.testing.system import require_binary

from .conftest import keys, refresh_until

pytestmark = pytest.mark.system


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held busy (TCP and UDP) for the test."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    yield port
    tcp.close()
    udp.close()


def test_dnsmasq_restarts_on_the_same_port_and_is_killed_at_exit() -> None:
    binary = require_binary("dnsmasq")
    with dnsmasq_server(
        binary=binary, srv=[SRV("_x._tcp.test", "a.test", 80)], hosts={"a.test": ["127.0.0.5"]}
    ) as s:
        resolver = DNS("_x._tcp.test", nameservers=[s.nameserver])
        assert keys(resolver.refresh()) == ["127.0.0.5:80"]
        port = s.port
        s.restart(srv=[SRV("_x._tcp.test", "a.test", 81)])
        assert s.port == port
        assert keys(resolver.refresh()) == ["127.0.0.5:81"]
        assert s._process is not None
        pid = s._process.pid
    assert not s.running
    assert not alive(pid)


def test_dnsmasq_serves_new_hosts_files_at_run_time() -> None:
    with dnsmasq_server(binary=require_binary("dnsmasq"), hosts={"a.test": ["127.0.0.5"]}) as server:
        resolver = DNS("a.test", port=80, nameservers=[server.nameserver])
        assert keys(resolver.refresh()) == ["127.0.0.5:80"]
        server.set_hosts({"a.test": ["127.0.0.6"]})
        refresh_until(resolver, lambda r: keys(r) == ["127.0.0.6:80"], what="the new hosts file")
        server.reload()  # SIGHUP rereads the same file
        assert keys(resolver.refresh()) == ["127.0.0.6:80"]


def test_a_port_taken_between_probe_and_bind_is_retried(monkeypatch: pytest.MonkeyPatch, taken_port: int) -> None:
    ports = iter([taken_port])
    free = dnsmasq_module._free_port
    monkeypatch.setattr(dnsmasq_module, "_free_port", lambda: next(ports, None) or free())
    with dnsmasq_server(binary=require_binary("dnsmasq"), hosts={"a.test": ["127.0.0.5"]}) as server:
        assert server.port != taken_port
        assert keys(DNS("a.test", port=80, nameservers=[server.nameserver]).refresh()) == ["127.0.0.5:80"]


def test_etcd_keeps_its_data_across_a_crash_and_is_killed_at_exit(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    ports = iter([taken_port])
    free = etcd_module._free_port
    monkeypatch.setattr(etcd_module, "_free_port", lambda: next(ports, None) or free())
    with etcd_server(binary=require_binary("etcd")) as server:
        assert taken_port not in (server.port, server.peer_port)  # the first try lost the race
        server.put("/k", {"address": "10.0.0.1", "port": 80})
        server.stop()
        assert not server.running
        server.start()
        assert server.call("kv/range", {"key": "L2s="})["count"] == "1"
        assert server._process is not None
        pid = server._process.pid
    assert not alive(pid)
