"""Routes and route tables: validation naming the route and the field, ordered matching, splits, stickiness."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import httpx
import pytest

import connectivity as cx
from connectivity.errors import ConfigError
from connectivity.routing import (
    Backend,
    HeaderMatch,
    Override,
    PathMatch,
    Route,
    RouteChoice,
    RouteTable,
    Sticky,
    stable_fraction,
)

TARGETS = {"orders-v1", "orders-v2", "users", "fallback"}


def table(*routes: Route | dict[str, Any]) -> RouteTable:
    return RouteTable(routes, targets=TARGETS)


def never() -> float:
    raise AssertionError("no random draw expected")


def test_first_matching_route_wins_in_order() -> None:
    routes = table(
        Route("health", path="/health", methods="GET", target="fallback"),
        Route("order", template="/orders/{id}", methods=["GET", "head"], target="orders-v1"),
        Route("orders-write", separated_prefix="/orders", methods=["POST"], target="orders-v2"),
        Route("tenant", prefix="/", headers={"x-tenant": "acme"}, target="users"),
        Route("rest", prefix="/", target="fallback"),
    )
    h = httpx.Headers()
    assert routes.select("GET", "/health", h, never) == RouteChoice("health", "fallback", "route", {})
    assert routes.select("HEAD", "/orders/7", h, never) == RouteChoice("order", "orders-v1", "route", {"id": "7"})
    assert routes.select("POST", "/orders", h, never) == RouteChoice("orders-write", "orders-v2", "route", {})
    tenant = httpx.Headers({"X-Tenant": "acme"})
    assert routes.select("DELETE", "/orders/7", tenant, never) == RouteChoice("tenant", "users", "route", {})
    assert routes.select("DELETE", "/orders/7", h, never) == RouteChoice("rest", "fallback", "route", {})
    assert RouteTable([Route("only", path="/x", target="users")]).select("GET", "/y", h, never) is None


def test_all_conditions_must_hold() -> None:
    route = Route(
        "r",
        methods="GET",
        regex=r"/v\d+/.*",
        headers=[HeaderMatch("x-a", present=True), {"name": "x-b", "regex": "[0-9]+"}],
        target="users",
    )
    assert route.matches("GET", "/v1/x", {"x-a": "", "x-b": "12"}) == {}
    assert route.matches("POST", "/v1/x", {"x-a": "", "x-b": "12"}) is None
    assert route.matches("GET", "/x", {"x-a": "", "x-b": "12"}) is None
    assert route.matches("GET", "/v1/x", {"x-b": "12"}) is None
    assert route.matches("GET", "/v1/x", {"x-a": "", "x-b": "x"}) is None


def test_weighted_split_follows_the_weights() -> None:
    route = Route("canary", prefix="/", split={"orders-v1": 95, "orders-v2": 5})
    rng = random.Random(7)
    counts = Counter(route.choose({}, rng.random)[0] for _ in range(20_000))
    assert counts["orders-v2"] / 20_000 == pytest.approx(0.05, abs=0.006)
    assert {route.choose({}, rng.random)[1] for _ in range(10)} == {"split"}


def test_blue_green_zero_weight_is_never_chosen() -> None:
    route = Route("bg", prefix="/", split=[Backend("orders-v1", 0), Backend("orders-v2", 100)])
    for u in (0.0, 0.5, 0.999999999, 1.0 - 2**-53):
        assert route.choose({}, lambda u=u: u) == ("orders-v2", "split")  # type: ignore[misc]
    flipped = Route("bg", prefix="/", split=[("orders-v1", 100), ("orders-v2", 0)])
    for u in (0.0, 0.5, 1.0 - 2**-53):
        assert flipped.choose({}, lambda u=u: u)[0] == "orders-v1"  # type: ignore[misc]


def test_boundaries_of_the_cumulative_table() -> None:
    route = Route("s", prefix="/", split={"orders-v1": 95, "orders-v2": 5})
    assert route.choose({}, lambda: 0.0)[0] == "orders-v1"
    assert route.choose({}, lambda: 0.9499999)[0] == "orders-v1"
    assert route.choose({}, lambda: 0.95)[0] == "orders-v2"
    assert route.choose({}, lambda: 0.9999999)[0] == "orders-v2"


def test_sticky_header_keeps_a_user_on_one_side() -> None:
    route = Route("s", prefix="/", split={"orders-v1": 50, "orders-v2": 50}, sticky=Sticky(header="X-User"))
    rng = random.Random(1)
    for user in (f"user-{i}" for i in range(200)):
        sides = {route.choose({"x-user": user}, rng.random) for _ in range(5)}
        assert len(sides) == 1
        ((target, reason),) = sides
        assert reason == "sticky"
        assert target == ("orders-v1" if stable_fraction(user) < 0.5 else "orders-v2")
    # Users spread over both sides; a request without the key is split at random.
    spread = Counter(route.choose({"x-user": f"u{i}"}, never)[0] for i in range(2000))
    assert 800 < spread["orders-v2"] < 1200
    assert route.choose({}, lambda: 0.9) == ("orders-v2", "split")


def test_sticky_cookie() -> None:
    route = Route("s", prefix="/", split={"orders-v1": 50, "orders-v2": 50}, sticky={"cookie": "uid"})
    target = "orders-v1" if stable_fraction("42") < 0.5 else "orders-v2"
    assert route.choose({"cookie": "a=1; uid=42; b=2"}, never) == (target, "sticky")
    assert route.choose({"cookie": "a=1"}, lambda: 0.0) == ("orders-v1", "split")
    assert route.choose({"cookie": "uid="}, lambda: 0.0) == ("orders-v1", "split")


def test_raising_the_canary_weight_keeps_canary_users_on_the_canary() -> None:
    users = [f"user-{i}" for i in range(3000)]

    def canary(weight: int) -> set[str]:
        route = Route(
            "c", prefix="/", split={"orders-v1": 100 - weight, "orders-v2": weight}, sticky=Sticky(header="x-user")
        )
        return {u for u in users if route.choose({"x-user": u}, never)[0] == "orders-v2"}

    five, ten = canary(5), canary(10)
    assert five <= ten
    assert len(ten) == pytest.approx(300, abs=60)


def test_header_override_forces_the_canary() -> None:
    route = Route(
        "c",
        prefix="/",
        split={"orders-v1": 100, "orders-v2": 0},
        sticky=Sticky(header="x-user"),
        overrides=[Override.header("x-canary", "1", target="orders-v2")],
    )
    assert route.choose({"x-canary": "1", "x-user": "u"}, never) == ("orders-v2", "override")
    assert route.choose({"x-canary": "0"}, lambda: 0.99) == ("orders-v1", "split")
    single = Route(
        "one",
        prefix="/",
        target="orders-v1",
        overrides=[{"header": "x-canary", "target": "orders-v2", "present": True}],
    )
    assert single.choose({"x-canary": "anything"}, never) == ("orders-v2", "override")
    assert single.choose({}, never) == ("orders-v1", "route")
    assert single.targets == {"orders-v1", "orders-v2"}


def test_policy_overrides_become_request_extensions() -> None:
    retry = cx.Retry(attempts=2)
    route = Route("p", prefix="/", target="users", timeout=2.5, per_try_timeout=0.5, retry=retry)
    assert route.policy == (
        ("connectivity.timeout", 2.5),
        ("connectivity.per_try_timeout", 0.5),
        ("connectivity.retry", retry),
    )
    assert Route("q", prefix="/", target="users").policy == ()
    from_dict = Route.from_dict({"name": "d", "target": "users", "retry": {"attempts": 4, "statuses": [503]}})
    assert from_dict.retry == cx.Retry(attempts=4, statuses=frozenset({503}))


def test_from_dict_builds_the_same_route() -> None:
    data = {
        "name": "orders",
        "methods": ["GET"],
        "template": "/orders/{id}",
        "headers": [{"name": "x-tenant", "exact": "acme"}],
        "split": [{"target": "orders-v1", "weight": 90}, {"target": "orders-v2", "weight": 10}],
        "sticky": {"header": "x-user"},
        "overrides": [{"header": "x-canary", "exact": "1", "target": "orders-v2"}],
        "timeout": 3,
    }
    built = Route(
        "orders",
        methods=["GET"],
        path=PathMatch.template("/orders/{id}"),
        headers=[HeaderMatch("x-tenant", exact="acme")],
        split=[Backend("orders-v1", 90), Backend("orders-v2", 10)],
        sticky=Sticky(header="x-user"),
        overrides=[Override(HeaderMatch("x-canary", exact="1"), "orders-v2")],
        timeout=3.0,
    )
    assert Route.from_dict(data) == built
    assert table(data).routes == (built,)


BAD_ROUTES: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "r", "regex": "^/(", "target": "users"}, "Route['r'].regex", "invalid regular expression"),
    ({"name": "r", "template": "/a/{id", "target": "users"}, "Route['r'].template", "whole segment"),
    ({"name": "r", "prefix": "a", "target": "users"}, "Route['r'].prefix", "starting with '/'"),
    ({"name": "r", "prefix": "/", "path": "/x", "target": "users"}, "Route['r']", "at most one"),
    (
        {"name": "r", "headers": [{"name": "x-a", "regex": "("}], "target": "users"},
        "Route['r'].headers[0].regex",
        "invalid regular expression",
    ),
    ({"name": "r", "headers": [{"name": "x-a"}], "target": "users"}, "Route['r'].headers[0]", "exactly one"),
    ({"name": "r", "headers": [{"nom": "x"}], "target": "users"}, "Route['r'].headers[0]", "keys are"),
    ({"name": "r", "split": {"orders-v1": 95, "orders-v2": 10}}, "Route['r'].split", "must sum to 100"),
    ({"name": "r", "split": {"orders-v1": 50, "orders-v2": 40}}, "Route['r'].split", "sum to 90"),
    ({"name": "r", "split": {"orders-v1": 0, "orders-v2": 0}}, "Route['r'].split", "must sum to 100"),
    (
        {"name": "r", "split": {"orders-v1": -5, "orders-v2": 105}},
        "Route['r'].split['orders-v1'].weight",
        "between",
    ),
    (
        {"name": "r", "split": {"orders-v1": "95", "orders-v2": 5}},
        "Route['r'].split['orders-v1'].weight",
        "number",
    ),
    ({"name": "r", "split": {}}, "Route['r'].split", "at least one"),
    ({"name": "r", "split": [("orders-v1", 50), ("orders-v1", 50)]}, "Route['r'].split", "listed twice"),
    ({"name": "r", "split": [1, 2]}, "Route['r'].split", "each entry"),
    ({"name": "r"}, "Route['r'].target", "exactly one of target and split"),
    ({"name": "r", "target": "users", "split": {"users": 100}}, "Route['r'].target", "exactly one"),
    ({"name": "r", "target": "users", "sticky": {"header": "x-u"}}, "Route['r'].sticky", "only a split"),
    (
        {"name": "r", "split": {"users": 100}, "sticky": {"header": "x-u", "cookie": "c"}},
        "Route['r'].sticky",
        "exactly one",
    ),
    (
        {"name": "r", "target": "users", "overrides": [{"header": "x-c", "exact": "1"}]},
        "Route['r'].overrides[0]",
        "target",
    ),
    ({"name": "r", "target": "users", "methods": ["GET", "G E T"]}, "Route['r'].methods", "method names"),
    ({"name": "r", "target": "users", "methods": []}, "Route['r'].methods", "must not be empty"),
    ({"name": "r", "target": "users", "timeout": 0}, "Route['r'].timeout", "seconds > 0"),
    ({"name": "r", "target": "users", "per_try_timeout": "1s"}, "Route['r'].per_try_timeout", "seconds > 0"),
    ({"name": "r", "target": "users", "retry": {"attempts": 0}}, "Route['r'].retry.attempts", "at least 1"),
    ({"name": "r", "target": "users", "retry": {"tries": 2}}, "Route['r'].retry", "not a Retry configuration"),
    ({"name": "r", "target": "users", "retry": 3}, "Route['r'].retry", "connectivity.Retry"),
    ({"name": "r", "target": "users", "colour": "red"}, "Route['r'].colour", "unknown field"),
    ({"target": "users"}, "Route.name", "non-empty"),
]


@pytest.mark.parametrize(("data", "field", "fragment"), BAD_ROUTES)
def test_invalid_routes_name_the_route_and_the_field(data: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Route.from_dict(data)
    assert caught.value.field == field
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("routes", "field", "value"),
    [
        ([{"name": "r", "target": "nope"}], "Route['r'].target", "nope"),
        ([{"name": "r", "split": {"users": 50, "ghost": 50}}], "Route['r'].split", "ghost"),
        (
            [{"name": "r", "target": "users", "overrides": [{"header": "x", "present": True, "target": "ghost"}]}],
            "Route['r'].overrides[0].target",
            "ghost",
        ),
        ([{"name": "r", "target": "users"}, {"name": "r", "target": "users"}], "Route['r'].name", "r"),
        (["not a route"], "RouteTable.routes[0]", "not a route"),
    ],
)
def test_table_checks_targets_and_names(routes: list[Any], field: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RouteTable(routes, targets=TARGETS)
    assert caught.value.field == field
    assert caught.value.value == value
    if "target" in field or "split" in field:
        assert "unknown target" in caught.value.rule
        assert "users" in caught.value.rule  # lists the known targets


def test_a_table_without_targets_skips_the_target_check() -> None:
    assert RouteTable([{"name": "r", "target": "anything"}]).routes[0].target == "anything"
    with pytest.raises(ConfigError):
        RouteTable({"name": "r", "target": "x"})  # type: ignore[dict-item]
