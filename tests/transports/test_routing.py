"""RoutingTransport: route tables, splits, overrides and per-route policy, sync and async, on real servers too."""

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.errors import ConfigError, DeadlineExceededError, NoRouteError
from connectivity.routing import Route, RouteChoice, RouteTable, Sticky
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.testing.plugin import UpstreamFactory
from connectivity.transports import RetryTransport, TimeoutTransport
from connectivity.transports.routing import RoutingTransport

from .conftest import Sender


def replica(name: str) -> ScriptedTransport:
    """A target that answers 200 with its own name, forever."""
    return ScriptedTransport(default=lambda request: Step(200, content=name.encode()))


def orders_routes() -> list[Route]:
    return [
        Route("health", path="/health", target="ops"),
        Route(
            "orders",
            template="/orders/{id}",
            methods=["GET"],
            split={"orders-v1": 95, "orders-v2": 5},
            overrides=[{"header": "x-canary", "exact": "1", "target": "orders-v2"}],
        ),
        Route("orders-write", separated_prefix="/orders", target="orders-v1"),
    ]


def orders_transport(**kwargs: Any) -> tuple[RoutingTransport, dict[str, ScriptedTransport]]:
    targets = {name: replica(name) for name in ("ops", "orders-v1", "orders-v2")}
    return RoutingTransport(orders_routes(), targets=targets, **kwargs), targets


def test_routes_requests_and_records_the_choice(send: Sender) -> None:
    transport, targets = orders_transport(rng=random.Random(0))
    response = send(transport, "GET", "http://orders/health")
    assert response.content == b"ops"
    assert response.extensions["connectivity.route"] == RouteChoice("health", "ops", "route", {})

    transport, targets = orders_transport(rng=random.Random(0))
    response = send(transport, "POST", "http://orders/orders", json={"item": 1})
    assert response.content == b"orders-v1"
    assert response.extensions["connectivity.route"].route == "orders-write"
    assert targets["orders-v1"].requests[0].body == b'{"item":1}'


def test_header_override_forces_the_canary(send: Sender) -> None:
    transport, _ = orders_transport(rng=random.Random(0))
    response = send(transport, "GET", "http://orders/orders/7", headers={"x-canary": "1"})
    assert response.content == b"orders-v2"
    assert response.extensions["connectivity.route"] == RouteChoice("orders", "orders-v2", "override", {"id": "7"})


def test_weighted_split_uses_the_injected_rng(send: Sender) -> None:
    seed = 11
    expected_rng = random.Random(seed)
    table = RouteTable(orders_routes())
    expected = [table.select("GET", "/orders/1", {}, expected_rng.random) for _ in range(40)]
    assert {choice.target for choice in expected if choice} == {"orders-v1", "orders-v2"}  # seed shows both

    transport, targets = orders_transport(rng=random.Random(seed))

    def sync() -> list[RouteChoice]:
        with httpx.Client(transport=transport) as client:
            return [client.get("http://orders/orders/1").extensions["connectivity.route"] for _ in range(40)]

    async def async_() -> list[RouteChoice]:
        async with httpx.AsyncClient(transport=transport) as client:
            return [
                (await client.get("http://orders/orders/1")).extensions["connectivity.route"] for _ in range(40)
            ]

    assert send.run(sync, async_) == expected
    assert len(targets["orders-v2"].requests) == sum(choice.target == "orders-v2" for choice in expected if choice)


def test_sticky_split_keeps_each_user_on_one_target(send: Sender) -> None:
    route = Route("s", prefix="/", split={"a": 50, "b": 50}, sticky=Sticky(header="x-user"))
    transport = RoutingTransport([route], targets={"a": replica("a"), "b": replica("b")})

    def sync() -> dict[str, set[bytes]]:
        seen: dict[str, set[bytes]] = {}
        with httpx.Client(transport=transport) as client:
            for i in range(60):
                user = f"user-{i % 12}"
                seen.setdefault(user, set()).add(client.get("http://svc/", headers={"x-user": user}).content)
        return seen

    async def async_() -> dict[str, set[bytes]]:
        seen: dict[str, set[bytes]] = {}
        async with httpx.AsyncClient(transport=transport) as client:
            for i in range(60):
                user = f"user-{i % 12}"
                seen.setdefault(user, set()).add(
                    (await client.get("http://svc/", headers={"x-user": user})).content
                )
        return seen

    seen = send.run(sync, async_)
    assert all(len(sides) == 1 for sides in seen.values())
    assert set().union(*seen.values()) == {b"a", b"b"}


def test_per_route_policy_reaches_the_layers_inside(send: Sender) -> None:
    clock = FakeClock()
    flaky = ScriptedTransport(default=503, clock=clock)
    slow = ScriptedTransport(default=Step(200, delay=5.0), clock=clock)
    routes = [
        Route("two-tries", prefix="/flaky", target="flaky", retry=cx.Retry(attempts=2)),
        Route("fast", prefix="/slow", target="slow", timeout=1.0),
    ]
    targets = {
        "flaky": RetryTransport(flaky, cx.Retry(attempts=5), clock=clock),
        "slow": TimeoutTransport(slow, 30.0, clock=clock),
    }
    response = send(RoutingTransport(routes, targets=targets), "GET", "http://svc/flaky")
    assert response.status_code == 503
    assert len(flaky.requests) == 2  # the route's policy, not the layer's default of 5
    assert response.extensions["connectivity"].attempts == 2

    started = clock.now()
    with pytest.raises(DeadlineExceededError):
        send(RoutingTransport(routes, targets=targets), "GET", "http://svc/slow")
    assert clock.now() - started == pytest.approx(1.0)  # the route's 1 s, not the layer's 30 s


def test_the_callers_own_override_wins_over_the_routes(send: Sender) -> None:
    clock = FakeClock()
    flaky = ScriptedTransport(default=503, clock=clock)
    routes = [Route("r", prefix="/", target="flaky", retry=cx.Retry(attempts=2))]
    transport = RoutingTransport(routes, targets={"flaky": RetryTransport(flaky, clock=clock)})
    response = send(transport, "GET", "http://svc/", extensions={"connectivity.retry": cx.Retry(attempts=4)})
    assert response.status_code == 503
    assert len(flaky.requests) == 4


def test_base_url_targets_rewrite_the_url_and_host(send: Sender, faulty_upstream_factory: UpstreamFactory) -> None:
    v1 = faulty_upstream_factory("v1")
    v2 = faulty_upstream_factory("v2")
    routes = [
        Route("v2", prefix="/", headers={"x-version": "2"}, target="orders-v2"),
        Route("v1", prefix="/", target="orders-v1"),
    ]
    targets = {"orders-v1": v1.url, "orders-v2": f"{v2.url}/api/"}
    response = send(RoutingTransport(routes, targets=targets), "GET", "http://orders.internal/items/7?x=1")
    assert response.json()["replica"] == "v1"
    response = send(
        RoutingTransport(routes, targets=targets),
        "GET",
        "http://orders.internal/items/7?x=1",
        headers={"x-version": "2"},
    )
    assert response.json()["replica"] == "v2"
    (record,) = v2.app.stats.records
    assert record.path == "/api/items/7"
    assert record.header("host") == f"127.0.0.1:{v2.port}"
    assert v1.app.stats.records[0].path == "/items/7"


def test_no_route_raises_and_a_default_takes_what_no_route_matches(send: Sender) -> None:
    routes = [Route("only", path="/only", target="a")]
    with pytest.raises(NoRouteError) as caught:
        send(RoutingTransport(routes, targets={"a": replica("a")}), "GET", "http://svc/else")
    assert isinstance(caught.value, httpx.TransportError)
    assert (caught.value.method, caught.value.path) == ("GET", "/else")

    response = send(
        RoutingTransport(routes, targets={"a": replica("a")}, default=replica("d")), "GET", "http://svc/x"
    )
    assert response.content == b"d"
    assert response.extensions["connectivity.route"] == RouteChoice(None, "default", "default", {})
    named = RoutingTransport(routes, targets={"a": replica("a"), "b": replica("b")}, default="b")
    assert send(named, "GET", "http://svc/x").content == b"b"


def test_update_validates_first_and_keeps_the_last_good_table() -> None:
    transport, _ = orders_transport(rng=random.Random(0))
    before = transport.table
    bad_tables: list[tuple[list[dict[str, Any]], str]] = [
        ([{"name": "x", "regex": "^/(", "target": "ops"}], "Route['x'].regex"),
        ([{"name": "x", "prefix": "/", "target": "orders-v3"}], "Route['x'].target"),
        ([{"name": "x", "prefix": "/", "split": {"orders-v1": 90, "orders-v2": 20}}], "Route['x'].split"),
        (
            [{"name": "ok", "prefix": "/", "target": "ops"}, {"name": "ok", "prefix": "/", "target": "ops"}],
            "Route['ok'].name",
        ),
    ]
    with httpx.Client(transport=transport) as client:
        for bad, field in bad_tables:
            with pytest.raises(ConfigError) as caught:
                transport.update(bad)
            assert caught.value.field == field
            assert transport.table is before
            assert client.get("http://orders/health").content == b"ops"
        new = transport.update([Route("all", prefix="/", target="orders-v2")])
        assert transport.table is new
        assert client.get("http://orders/health").content == b"orders-v2"


def test_a_request_is_routed_by_one_table_while_tables_are_swapped() -> None:
    a = RouteTable([Route("a", prefix="/", target="one")])
    b = RouteTable([Route("b", prefix="/", target="two")])
    transport = RoutingTransport(a, targets={"one": replica("one"), "two": replica("two")})
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            transport.update(b)
            transport.update(a)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        with httpx.Client(transport=transport) as client:
            choices = {
                (choice.route, choice.target)
                for choice in (client.get("http://svc/").extensions["connectivity.route"] for _ in range(500))
            }
    finally:
        stop.set()
        swapper.join()
    assert choices <= {("a", "one"), ("b", "two")}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"routes": [{"name": "r", "target": "nope"}]}, "Route['r'].target"),
        ({"routes": [], "default": "nope"}, "RoutingTransport.default"),
        ({"routes": [], "targets": {"a": "ftp://host"}}, "RoutingTransport.targets['a']"),
        ({"routes": [], "targets": {"a": "http://host/?q=1"}}, "RoutingTransport.targets['a']"),
        ({"routes": [], "targets": {"a": 42}}, "RoutingTransport.targets['a']"),
        ({"routes": [], "targets": {}}, "RoutingTransport.targets"),
        (
            {"routes": [], "targets": {"default": "http://h"}, "default": ScriptedTransport()},
            "RoutingTransport.default",
        ),
        ({"routes": [], "transport": "http"}, "RoutingTransport.transport"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], field: str) -> None:
    kwargs.setdefault("targets", {"a": ScriptedTransport()})
    with pytest.raises(ConfigError) as caught:
        RoutingTransport(**kwargs)
    assert caught.value.field == field


class Tracked(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Counts lifetime calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    def close(self) -> None:
        self.calls.append("close")

    async def aclose(self) -> None:
        self.calls.append("aclose")

    def __enter__(self) -> Tracked:
        self.calls.append("enter")
        return self

    def __exit__(self, *args: object) -> None:
        self.calls.append("exit")

    async def __aenter__(self) -> Tracked:
        self.calls.append("aenter")
        return self

    async def __aexit__(self, *args: object) -> None:
        self.calls.append("aexit")


def test_lifetime_is_passed_to_each_distinct_transport_once(send: Sender) -> None:
    shared, other = Tracked(), Tracked()
    transport = RoutingTransport([], targets={"a": shared, "b": shared, "c": other}, default="a")
    send(transport, "GET", "http://svc/")
    expected = ["enter", "exit"] if send.mode == "sync" else ["aenter", "aexit"]
    assert shared.calls == expected
    assert other.calls == expected

    plain = RoutingTransport([], targets={"a": shared}, default="a")
    shared.calls.clear()
    plain.close()
    anyio.run(plain.aclose)
    assert shared.calls == ["close", "aclose"]


def test_a_target_that_cannot_serve_the_client_kind_raises_type_error(send: Sender) -> None:
    target: httpx.BaseTransport | httpx.AsyncBaseTransport
    target = httpx.MockTransport(lambda r: httpx.Response(200))
    if send.is_async:
        sync_only = type(
            "SyncOnly", (httpx.BaseTransport,), {"handle_request": lambda self, r: httpx.Response(200)}
        )
        target = sync_only()
    else:
        async_only = type(
            "AsyncOnly", (httpx.AsyncBaseTransport,), {"handle_async_request": lambda self, r: httpx.Response(200)}
        )
        target = async_only()
    with pytest.raises(TypeError, match="target 'a'"):
        send(RoutingTransport([], targets={"a": target}, default="a"), "GET", "http://svc/")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_mirroring_target_runs_within_the_routing_transports_lifetime(backend: str) -> None:
    from connectivity.transports.mirror import MirrorTransport

    shadow = ScriptedTransport(default=Step(200, delay=60.0))
    mirrored = MirrorTransport(replica("v2"), shadow)
    transport = RoutingTransport(
        [Route("shadowed", prefix="/orders", target="v2")], targets={"v2": mirrored}, default=replica("v1")
    )

    async def main() -> None:
        with anyio.fail_after(10):
            async with httpx.AsyncClient(transport=transport) as client:  # enters every target, the mirror too
                response = await client.get("http://svc/orders/1")
                assert (response.content, response.extensions["connectivity.mirror"]) == (b"v2", "started")
                assert (await client.get("http://svc/other")).content == b"v1"
                while shadow.in_flight < 1:
                    await anyio.lowlevel.checkpoint()
            assert shadow.cancelled == 1  # leaving the client stopped the hung mirror

    anyio.run(main, backend=backend)
    assert mirrored.stats().in_flight == 0
