"""The DNS resolver against a real dnsmasq: A/AAAA and SRV, priorities and weights, TTL-driven refresh, and every
failure (NXDOMAIN, timeouts, malformed records and messages) keeping the last good list."""

from __future__ import annotations

import struct
import sys
import threading
import time

import anyio
import pytest

from connectivity.discovery import DNS, DiscoveryError, Endpoint, Resolution
from connectivity.errors import BackendUnavailableError, ConfigError
from connectivity.testing import FakeClock
from connectivity.testing.dnsmasq import SRV
from connectivity.testing.plugin import DnsmasqFactory

from .conftest import keys, refresh_until, tcp_server, udp_server, wait_until

ORDERS = "_http._tcp.orders.test"


# -- configuration (no server) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "DNS.name"),
        ({"name": "bad name.test", "port": 80}, "DNS.name"),
        ({"name": "-x.test", "port": 80}, "DNS.name"),
        ({"name": "a.test", "kind": "MX", "port": 80}, "DNS.kind"),
        ({"name": "a.test"}, "DNS.port"),
        ({"name": "a.test", "port": 0}, "DNS.port"),
        ({"name": "a.test", "port": True}, "DNS.port"),
        ({"name": ORDERS, "port": 80}, "DNS.port"),
        ({"name": "a.test", "kind": "SRV", "port": 80}, "DNS.port"),
        ({"name": "a.test", "port": 80, "lookup_family": "v5"}, "DNS.lookup_family"),
        ({"name": "a.test", "port": 80, "timeout": 0}, "DNS.timeout"),
        ({"name": "a.test", "port": 80, "min_ttl": 10, "max_ttl": 5}, "DNS.max_ttl"),
        ({"name": "a.test", "port": 80, "nameservers": "127.0.0.1"}, "DNS.nameservers"),
        ({"name": "a.test", "port": 80, "nameservers": []}, "DNS.nameservers"),
        ({"name": "a.test", "port": 80, "nameservers": ["ns.example"]}, "DNS.nameservers[0]"),
        ({"name": "a.test", "port": 80, "nameservers": ["127.0.0.1:53", "1.2.3.4:x"]}, "DNS.nameservers[1]"),
        ({"name": "a.test", "port": 80, "retry_interval": -1}, "DNS.retry_interval"),
    ],
)
def test_invalid_options_raise_config_errors_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    options = {"nameservers": ["127.0.0.1"], **kwargs}
    with pytest.raises(ConfigError) as caught:
        DNS(**options)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_kind_auto_picks_srv_for_service_names() -> None:
    assert DNS(ORDERS, nameservers=["127.0.0.1"]).source == f"dns:SRV {ORDERS}"
    assert DNS("Orders.Test", port=80, nameservers=["[::1]:5353"]).source == "dns:orders.test"


def test_the_repr_shows_what_is_looked_up() -> None:
    assert repr(DNS("Orders.Internal", port=8080)) == "DNS('orders.internal', kind='auto', port=8080)"
    assert repr(DNS("orders.internal", kind="AAAA", port=80)) == "DNS('orders.internal', kind='AAAA', port=80)"
    assert repr(DNS("_http._tcp.orders.internal")) == "DNS('_http._tcp.orders.internal', kind='SRV')"


def test_without_dnspython_the_error_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    with pytest.raises(BackendUnavailableError, match=r"connectivity-sdk\[dns\]") as caught:
        DNS(ORDERS, nameservers=["127.0.0.1"])
    assert isinstance(caught.value, ConfigError)


# -- SRV --------------------------------------------------------------------------------------------------------


@pytest.mark.system
def test_srv_uses_the_lowest_priority_group_with_weights_and_resolved_targets(
    dnsmasq_factory: DnsmasqFactory,
) -> None:
    server = dnsmasq_factory(
        ttl=7,
        srv=[
            SRV(ORDERS, "a.test", 8080, priority=10, weight=5),
            SRV(ORDERS, "b.test", 8081, priority=10, weight=3),
            SRV(ORDERS, "c.test", 8082, priority=20, weight=1),  # a fallback, not used
        ],
        hosts={"a.test": ["127.0.0.5"], "c.test": ["127.0.0.7"]},
        host_records=[("b.test", ["127.0.0.6", "::6"], 3)],  # its own TTL: 3 s
    )
    clock = FakeClock()
    resolver = DNS(ORDERS, nameservers=[server.nameserver], min_ttl=1, clock=clock)
    resolution = resolver.refresh()
    assert resolution.error is None
    assert [(e.key, e.weight) for e in resolution.endpoints] == [
        ("127.0.0.5:8080", 5),
        ("127.0.0.6:8081", 1.5),  # b's weight 3, split between its two addresses
        ("[::6]:8081", 1.5),
    ]
    assert dict(resolution.endpoints[0].metadata) == {"target": "a.test", "priority": 10}
    # The smallest TTL of the records used (b.test's 3 s) drives the next refresh.
    clock.advance(2.9)
    assert not resolver.due()
    clock.advance(0.1)
    assert resolver.due()


@pytest.mark.system
def test_a_priority_group_whose_targets_have_no_address_falls_back_to_the_next(
    dnsmasq_factory: DnsmasqFactory,
) -> None:
    server = dnsmasq_factory(
        srv=[SRV(ORDERS, "gone.test", 8080, priority=1), SRV(ORDERS, "b.test", 9090, priority=2)],
        hosts={"b.test": ["127.0.0.6"]},
    )
    resolution = DNS(ORDERS, nameservers=[server.nameserver]).refresh()
    assert keys(resolution) == ["127.0.0.6:9090"]


@pytest.mark.system
def test_srv_weight_zero(dnsmasq_factory: DnsmasqFactory) -> None:
    mixed = "_mixed._tcp.test"
    zeros = "_zeros._tcp.test"
    server = dnsmasq_factory(
        srv=[
            SRV(mixed, "a.test", 1, weight=4),
            SRV(mixed, "b.test", 2, weight=0),
            SRV(zeros, "a.test", 3),
            SRV(zeros, "b.test", 4),
        ],
        hosts={"a.test": ["127.0.0.5"], "b.test": ["127.0.0.6"]},
    )
    weights = [e.weight for e in DNS(mixed, nameservers=[server.nameserver]).refresh().endpoints]
    assert weights == [4, 0.01]  # RFC 2782: weight 0 has "a very small chance" next to positive weights
    weights = [e.weight for e in DNS(zeros, nameservers=[server.nameserver]).refresh().endpoints]
    assert weights == [1, 1]  # all zero: equal


@pytest.mark.system
def test_targets_can_be_kept_as_names(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(srv=[SRV(ORDERS, "a.test", 8080, weight=2), SRV(ORDERS, "unknown.test", 8081)])
    resolution = DNS(ORDERS, nameservers=[server.nameserver], resolve_targets=False).refresh()
    assert [(e.address, e.port, e.weight) for e in resolution.endpoints] == [
        ("a.test", 8080, 2),
        ("unknown.test", 8081, 0.01),
    ]


@pytest.mark.system
def test_a_lone_dot_target_means_no_service_an_empty_list_not_an_error(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(args=["--srv-host=_none._tcp.test"])  # dnsmasq serves "0 0 1 ."
    resolution = DNS("_none._tcp.test", nameservers=[server.nameserver]).refresh()
    assert (resolution.endpoints, resolution.error, resolution.version) == ((), None, 1)


@pytest.mark.system
def test_target_addresses_come_from_the_additional_section_and_a_ttl_cache(
    dnsmasq_factory: DnsmasqFactory,
) -> None:
    server = dnsmasq_factory(
        ttl=30, srv=[SRV(ORDERS, "a.test", 8080)], hosts={"a.test": ["127.0.0.5"]}, args=["--log-queries"]
    )
    clock = FakeClock()
    resolver = DNS(ORDERS, nameservers=[server.nameserver], min_ttl=5, clock=clock)

    def queries(kind: str, name: str = "a.test") -> int:
        return server.log().count(f"query[{kind}] {name} ")

    assert keys(resolver.refresh()) == ["127.0.0.5:8080"]
    wait_until(lambda: queries("SRV", ORDERS) == 1 and queries("AAAA") == 1, what="the first queries logged")
    # a.test's A record came with the SRV answer; it has no AAAA, which is asked once and remembered as
    # missing for min_ttl. A second refresh within that time asks for the SRV records only.
    assert queries("A") == 0
    clock.advance(4)
    assert keys(resolver.refresh()) == ["127.0.0.5:8080"]
    wait_until(lambda: queries("SRV", ORDERS) == 2, what="the second SRV query logged")
    assert (queries("A"), queries("AAAA")) == (0, 1)
    clock.advance(1)  # the negative entry expired
    resolver.refresh()
    wait_until(lambda: queries("AAAA") == 2, what="AAAA asked again")


# -- A / AAAA ---------------------------------------------------------------------------------------------------


@pytest.mark.system
def test_address_lookups_by_kind_and_family(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(hosts={"web.test": ["127.0.0.9", "127.0.0.8", "::9"], "v4.test": ["127.0.0.4"]})
    ns = [server.nameserver]
    assert keys(DNS("web.test", port=80, nameservers=ns).refresh()) == ["127.0.0.8:80", "127.0.0.9:80", "[::9]:80"]
    assert keys(DNS("web.test", kind="A", port=80, nameservers=ns).refresh()) == ["127.0.0.8:80", "127.0.0.9:80"]
    assert keys(DNS("web.test", kind="AAAA", port=80, nameservers=ns).refresh()) == ["[::9]:80"]
    v6_only = DNS("web.test", port=80, nameservers=ns, lookup_family="v6_only").refresh()
    assert keys(v6_only) == ["[::9]:80"]
    # A name with A records only: the missing AAAA is no error in "all" mode, but is for kind="AAAA".
    assert keys(DNS("v4.test", port=80, nameservers=ns).refresh()) == ["127.0.0.4:80"]
    only_aaaa = DNS("v4.test", kind="AAAA", port=80, nameservers=ns).refresh()
    assert isinstance(only_aaaa.exception, DiscoveryError)
    assert only_aaaa.exception.kind == "no-data"


@pytest.mark.system
def test_ttl_floor_and_cap(dnsmasq_factory: DnsmasqFactory) -> None:
    zero = dnsmasq_factory(ttl=0, hosts={"web.test": ["127.0.0.9"]})  # dnsmasq's default TTL for local records
    clock = FakeClock()
    resolver = DNS("web.test", port=80, nameservers=[zero.nameserver], min_ttl=5, clock=clock)
    resolver.refresh()
    clock.advance(4.9)
    assert not resolver.due()
    clock.advance(0.1)
    assert resolver.due()

    long = dnsmasq_factory(ttl=86400, hosts={"web.test": ["127.0.0.9"]})
    resolver = DNS("web.test", port=80, nameservers=[long.nameserver], max_ttl=60, clock=clock)
    resolver.refresh()
    clock.advance(59.9)
    assert not resolver.due()
    clock.advance(0.1)
    assert resolver.due()


# -- failures keep the last good list ---------------------------------------------------------------------------


def _kind(resolution: Resolution) -> str:
    assert isinstance(resolution.exception, DiscoveryError), resolution
    return resolution.exception.kind


@pytest.mark.system
def test_nxdomain_keeps_the_last_good_list(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(hosts={"web.test": ["127.0.0.9"]})
    resolver = DNS("web.test", port=80, nameservers=[server.nameserver], retry_interval=0.5)
    good = resolver.refresh()
    server.set_hosts({})  # dnsmasq rereads the hosts directory: web.test is gone
    failed = refresh_until(resolver, lambda r: r.error is not None, what="NXDOMAIN")
    assert _kind(failed) == "not-found"
    assert "web.test A: no such name (NXDOMAIN)" in str(failed.error)
    assert str(failed.error).startswith("DiscoveryError: dns:web.test")
    assert (failed.endpoints, failed.version, failed.resolved_at) == (good.endpoints, 1, good.resolved_at)
    server.set_hosts({"web.test": ["127.0.0.10"]})
    recovered = refresh_until(resolver, lambda r: r.error is None, what="recovery")
    assert (keys(recovered), recovered.version) == (["127.0.0.10:80"], 2)


@pytest.mark.system
def test_a_server_that_stops_answering_is_a_timeout(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(srv=[SRV(ORDERS, "a.test", 8080)], hosts={"a.test": ["127.0.0.5"]})
    clock = FakeClock()
    resolver = DNS(ORDERS, nameservers=[server.nameserver], timeout=0.3, retry_interval=2, clock=clock)
    good = resolver.refresh()
    server.pause()
    started = time.monotonic()
    failed = resolver.refresh()
    assert time.monotonic() - started < 2.0
    assert _kind(failed) == "timeout"
    assert failed.endpoints == good.endpoints
    assert not resolver.due()
    clock.advance(2)
    assert resolver.due()  # retried after retry_interval
    server.resume()
    server.stop()  # nothing listens: dnspython's unconnected UDP socket never hears the ICMP error either
    failed = resolver.refresh()
    assert _kind(failed) == "timeout"
    assert failed.endpoints == good.endpoints


@pytest.mark.system
def test_a_refusing_server_is_unavailable(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory()  # no upstream: names outside its zone are REFUSED
    resolution = DNS("web.elsewhere", port=80, nameservers=[server.nameserver]).refresh()
    assert _kind(resolution) == "unavailable"
    assert "REFUSED" in str(resolution.error)


@pytest.mark.system
def test_malformed_srv_records_keep_the_last_good_list(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(srv=[SRV(ORDERS, "a.test", 8080)], hosts={"a.test": ["127.0.0.5"]})
    resolver = DNS(ORDERS, nameservers=[server.nameserver], min_ttl=1)
    good = resolver.refresh()
    for bad, complaint in [
        (SRV(ORDERS, "a.test", 0), "Endpoint.port=0"),
        (SRV(ORDERS, "-bad_.test", 8080), "Endpoint.address='-bad_.test'"),
    ]:
        server.restart(srv=[SRV(ORDERS, "a.test", 8081), bad])  # one bad record rejects the whole answer
        failed = resolver.refresh()
        assert _kind(failed) == "malformed"
        assert "SRV record" in str(failed.error)
        assert complaint in str(failed.error)
        assert (failed.endpoints, failed.version) == (good.endpoints, 1)


def _srv_reply_with_truncated_rdata(query: bytes) -> bytes:
    """A NOERROR reply whose one SRV record has 3 bytes of rdata (an SRV needs at least 7)."""
    question = query[12:]
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, 5, 3) + b"xyz"
    return header + question + record


def test_a_message_that_does_not_parse_is_a_malformed_answer_over_tcp() -> None:
    with tcp_server(_srv_reply_with_truncated_rdata) as nameserver:
        resolution = DNS(ORDERS, nameservers=[nameserver], tcp=True, timeout=1).refresh()
    assert _kind(resolution) == "malformed"
    assert resolution.endpoints == ()


def test_over_udp_an_unparsable_datagram_is_ignored_like_a_spoofed_one() -> None:
    # dnspython drops UDP replies it cannot parse and keeps waiting for a real one: a timeout, never a crash.
    with udp_server(_srv_reply_with_truncated_rdata) as nameserver:
        resolution = DNS(ORDERS, nameservers=[nameserver], timeout=0.3).refresh()
    assert _kind(resolution) == "timeout"


def test_a_silent_server_times_out_within_the_timeout() -> None:
    with udp_server(lambda query: None) as nameserver:
        started = time.monotonic()
        resolution = DNS("web.test", port=80, nameservers=[nameserver], timeout=0.2).refresh()
        elapsed = time.monotonic() - started
    assert _kind(resolution) == "timeout"
    assert "no answer within 0.2 s" in str(resolution.error)
    assert elapsed < 1.0


# -- async, and changes served at run time ---------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.anyio
async def test_async_refresh(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(srv=[SRV(ORDERS, "a.test", 8080, weight=2)], hosts={"a.test": ["127.0.0.5", "::5"]})
    resolver = DNS(ORDERS, nameservers=[server.nameserver])
    resolution = await resolver.arefresh()
    assert [(e.key, e.weight) for e in resolution.endpoints] == [("127.0.0.5:8080", 1), ("[::5]:8080", 1)]
    server.pause()
    failed = await DNS(ORDERS, nameservers=[server.nameserver], timeout=0.2).arefresh()
    server.resume()
    assert _kind(failed) == "timeout"


@pytest.mark.system
def test_one_resolver_serves_asyncio_then_trio_in_one_process(dnsmasq_factory: DnsmasqFactory) -> None:
    # dnspython's default async backend is the first loop it saw; the resolver picks one per call instead.
    server = dnsmasq_factory(hosts={"web.test": ["127.0.0.9"]})
    resolver = DNS("web.test", port=80, nameservers=[server.nameserver])
    for backend in ("asyncio", "trio", "asyncio"):
        resolution = anyio.run(resolver.arefresh, backend=backend)
        assert (keys(resolution), resolution.error) == (["127.0.0.9:80"], None)


@pytest.mark.system
def test_srv_changes_served_by_a_real_dnsmasq_are_picked_up_after_the_ttl(
    dnsmasq_factory: DnsmasqFactory,
) -> None:
    server = dnsmasq_factory(
        ttl=1, srv=[SRV(ORDERS, "a.test", 8080)], hosts={"a.test": ["127.0.0.5"], "b.test": ["127.0.0.6"]}
    )
    resolver = DNS(ORDERS, nameservers=[server.nameserver], min_ttl=0.1)  # the real clock
    asked = time.monotonic()
    first = resolver.refresh()
    assert keys(first) == ["127.0.0.5:8080"]
    server.restart(srv=[SRV(ORDERS, "b.test", 9090, weight=3)])  # SIGHUP does not reread SRV records
    wait_until(resolver.due, timeout=3.0, what="the TTL to run out")
    assert first.resolved_at is not None
    # Not before the TTL, which runs from when each answer arrived: after `asked`, a little before `resolved_at`.
    assert time.monotonic() - asked >= 1.0
    changed = resolver.refresh()
    assert [(e.key, e.weight) for e in changed.endpoints] == [("127.0.0.6:9090", 3)]
    assert changed.version == 2


@pytest.mark.system
@pytest.mark.anyio
async def test_the_polling_watch_follows_address_changes(dnsmasq_factory: DnsmasqFactory) -> None:
    server = dnsmasq_factory(ttl=1, hosts={"web.test": ["127.0.0.9"]})
    resolver = DNS("web.test", port=80, nameservers=[server.nameserver], min_ttl=0.1)
    updates: list[Resolution] = []
    first, changed = anyio.Event(), anyio.Event()
    threads = threading.active_count()

    def on_update(resolution: Resolution) -> None:
        updates.append(resolution)
        first.set()
        if keys(resolution) == ["127.0.0.10:80"]:
            changed.set()

    async with anyio.create_task_group() as group:
        group.start_soon(resolver.watch, on_update)
        with anyio.fail_after(3):
            await first.wait()
        server.set_hosts({"web.test": ["127.0.0.10"]})
        with anyio.fail_after(5):  # the hosts file is reread at once; the TTL (1 s) bounds the rest
            await changed.wait()
        group.cancel_scope.cancel()
    assert [keys(update) for update in updates] == [["127.0.0.9:80"], ["127.0.0.10:80"]]
    assert threading.active_count() == threads


def test_endpoints_are_sorted_so_record_order_makes_no_new_version() -> None:
    # dnsmasq rotates records between answers; the list is sorted: IPv4 first, then IPv6, then names.
    from connectivity.discovery.dns import _order

    endpoints = [Endpoint("b.test", 1), Endpoint("::1", 1), Endpoint("127.0.0.10", 1), Endpoint("127.0.0.9", 1)]
    assert [e.key for e in sorted(endpoints, key=_order)] == ["127.0.0.9:1", "127.0.0.10:1", "[::1]:1", "b.test:1"]
