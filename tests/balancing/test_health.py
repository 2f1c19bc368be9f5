"""HealthCheck and HealthChecker: Envoy's thresholds, first-check rule, intervals and jitter, in virtual time."""

from __future__ import annotations

import math
import random

import pytest

from connectivity.balancing.health import (
    FAILURE,
    NETWORK,
    SUCCESS,
    HealthCheck,
    HealthChecker,
    HealthTransition,
)
from connectivity.errors import ConfigError
from connectivity.testing import FakeClock


def checker(clock: FakeClock, keys: tuple[str, ...] = ("a:1",), *, healthy: bool = True, **options: object):
    settings: dict[str, object] = {"no_traffic_interval": None}
    settings.update(options)
    check = HealthChecker(HealthCheck(**settings), clock=clock)  # type: ignore[arg-type]
    check.update(keys, healthy=healthy)
    return check


def settle(check: HealthChecker, key: str = "a:1") -> None:
    """Pass the first check, so the first-check rule no longer applies."""
    assert check.due() == [key]
    check.record(key, SUCCESS)


# -- configuration ------------------------------------------------------------------------------------------------


def test_defaults_follow_envoy_where_it_has_them_and_document_ours() -> None:
    check = HealthCheck()
    assert (check.path, check.method, check.scheme) == ("/healthz", "GET", "http")
    assert (check.interval, check.timeout, check.unhealthy_threshold, check.healthy_threshold) == (5.0, 1.0, 3, 2)
    assert check.expected_statuses == frozenset({200})  # Envoy: 200 only
    assert check.retriable_statuses == frozenset()
    assert check.no_traffic_interval == 60.0  # Envoy's default
    assert check.uneject_outliers is True  # Envoy's successful_active_health_check_uneject_host default
    assert (check.interval_jitter, check.interval_jitter_percent, check.initial_jitter) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path", "healthz"),
        ("path", "/a b"),
        ("interval", 0),
        ("timeout", -1),
        ("timeout", math.inf),
        ("unhealthy_threshold", 0),
        ("healthy_threshold", True),
        ("unhealthy_interval", 0),
        ("unhealthy_edge_interval", -1.0),
        ("healthy_edge_interval", math.nan),
        ("no_traffic_interval", 0),
        ("interval_jitter", -0.1),
        ("interval_jitter_percent", 101),
        ("initial_jitter", math.inf),
        ("expected_statuses", [200, 600]),
        ("expected_statuses", "200"),
        ("expected_statuses", []),
        ("retriable_statuses", [True]),
        ("method", "GE T"),
        ("headers", {"bad name": "x"}),
        ("headers", {"x-a": "line\nbreak"}),
        ("host", ""),
        ("host", "orders/x"),
        ("scheme", "ftp"),
        ("uneject_outliers", 1),
        ("rng", 3),
    ],
)
def test_invalid_options_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        HealthCheck(**{field: value})  # type: ignore[arg-type]
    assert raised.value.field == f"HealthCheck.{field}"


def test_statuses_accept_ranges_and_methods_are_upper_cased() -> None:
    check = HealthCheck(expected_statuses=range(200, 300), retriable_statuses={429, 503}, method="head")
    assert 204 in check.expected_statuses
    assert 300 not in check.expected_statuses
    assert check.method == "HEAD"
    with pytest.raises(TypeError):
        HealthChecker("not a check")  # type: ignore[arg-type]


def test_outcomes_expected_wins_over_retriable_and_the_rest_fail_at_once() -> None:
    check = HealthCheck(expected_statuses={200, 204}, retriable_statuses={204, 503})
    assert check.outcome(200) == SUCCESS
    assert check.outcome(204) == SUCCESS  # in both: expected takes precedence, as in Envoy
    assert check.outcome(503) == NETWORK  # counts towards unhealthy_threshold
    assert check.outcome(500) == FAILURE  # immediately unhealthy
    assert check.outcome(404) == FAILURE


# -- the state machine ------------------------------------------------------------------------------------------


def test_the_first_check_decides_in_either_direction() -> None:
    clock = FakeClock()
    established = checker(clock, ("a:1", "b:1"), healthy=True, unhealthy_threshold=3)
    assert established.unhealthy() == frozenset()
    assert sorted(established.due()) == ["a:1", "b:1"]  # first checks are due at once
    moved = established.record("a:1", NETWORK, "ConnectError")
    assert moved == HealthTransition("a:1", False, "ConnectError", 0.0)  # no need for 3 in a row the first time
    assert established.record("b:1", SUCCESS) is None
    joined = checker(clock, ("c:1",), healthy=False, healthy_threshold=5)
    assert joined.unhealthy() == {"c:1"}  # a newcomer waits for its first check, like Envoy's FAILED_ACTIVE_HC
    assert joined.due() == ["c:1"]
    back = joined.record("c:1", SUCCESS)
    assert back is not None
    assert back.healthy
    assert back.reason == "first check passed"
    assert joined.unhealthy() == frozenset()


def test_network_failures_need_the_threshold_in_a_row() -> None:
    clock = FakeClock()
    check = checker(clock, unhealthy_threshold=3)
    settle(check)
    for _ in range(2):
        clock.advance(5.0)
        assert check.due() == ["a:1"]
        assert check.record("a:1", NETWORK) is None
    clock.advance(5.0)
    check.due()
    assert check.record("a:1", SUCCESS) is None  # a success resets the count
    for _ in range(2):
        clock.advance(5.0)
        check.due()
        assert check.record("a:1", NETWORK) is None
    assert check.is_healthy("a:1")
    clock.advance(5.0)
    check.due()
    transition = check.record("a:1", NETWORK, "ReadTimeout")
    assert transition is not None
    assert not transition.healthy
    assert transition.reason == "ReadTimeout"
    assert check.unhealthy() == {"a:1"}
    assert not check.is_healthy("a:1")


def test_an_unexpected_status_is_unhealthy_at_once_whatever_the_threshold() -> None:
    clock = FakeClock()
    check = checker(clock, unhealthy_threshold=10)
    settle(check)
    clock.advance(5.0)
    check.due()
    transition = check.record("a:1", FAILURE, "status 500")
    assert transition is not None
    assert transition.reason == "status 500"


def test_recovery_needs_healthy_threshold_successes_in_a_row() -> None:
    clock = FakeClock()
    check = checker(clock, healthy_threshold=3)
    check.due()
    check.record("a:1", FAILURE)  # first check: unhealthy now
    results = []
    for outcome in (SUCCESS, SUCCESS, NETWORK, SUCCESS, SUCCESS, SUCCESS):
        clock.advance(10.0)
        assert check.due() == ["a:1"]
        results.append(check.record("a:1", outcome))
    assert results[:5] == [None] * 5  # the failure reset the two successes
    assert results[5] is not None
    assert results[5].healthy
    assert results[5].reason == "3 checks passed"


def test_intervals_follow_envoys_edges() -> None:
    clock = FakeClock()
    check = checker(
        clock,
        interval=5.0,
        unhealthy_interval=20.0,
        unhealthy_edge_interval=1.0,
        healthy_edge_interval=2.0,
        unhealthy_threshold=2,
        healthy_threshold=2,
    )
    settle(check)  # healthy, success: interval
    assert check.next_check() == 5.0
    clock.advance(5.0)
    check.due()
    check.record("a:1", NETWORK)  # healthy, one failure of two: the unhealthy edge
    assert check.next_check() == 6.0
    clock.advance(1.0)
    check.due()
    check.record("a:1", NETWORK)  # now unhealthy: unhealthy_interval
    assert check.next_check() == 26.0
    clock.advance(20.0)
    check.due()
    check.record("a:1", SUCCESS)  # unhealthy, one success of two: the healthy edge
    assert check.next_check() == 28.0
    clock.advance(2.0)
    check.due()
    check.record("a:1", SUCCESS)  # healthy again: interval
    assert check.next_check() == 33.0


def test_edge_intervals_default_to_the_steady_ones() -> None:
    clock = FakeClock()
    check = checker(clock, interval=4.0, unhealthy_interval=9.0, unhealthy_threshold=2)
    settle(check)
    clock.advance(4.0)
    check.due()
    check.record("a:1", NETWORK)  # pending: unhealthy_edge_interval defaults to unhealthy_interval
    assert check.next_check() == 4.0 + 9.0


def test_no_traffic_interval_until_the_first_request_then_pulled_in() -> None:
    clock = FakeClock()
    check = checker(clock, no_traffic_interval=60.0, interval=5.0)
    settle(check)
    assert check.next_check() == 60.0  # nothing was ever sent: check rarely (Envoy)
    clock.advance(1.0)
    check.traffic()
    assert check.next_check() == 6.0  # the first request pulls the next check in to `interval`
    check.traffic()  # idempotent
    clock.advance(5.0)
    check.due()
    check.record("a:1", SUCCESS)
    assert check.next_check() == 11.0


def test_jitter_is_bounded_and_reproducible() -> None:
    def schedule(seed: int) -> list[float]:
        clock = FakeClock()
        check = checker(
            clock,
            ("a:1", "b:1", "c:1"),
            interval=10.0,
            interval_jitter=1.0,
            interval_jitter_percent=10,
            initial_jitter=3.0,
            rng=random.Random(seed),
        )
        firsts = sorted(check.status()["endpoints"][key]["next_at"] for key in ("a:1", "b:1", "c:1"))  # type: ignore[index]
        assert all(0.0 <= first <= 3.0 for first in firsts)
        waits = []
        clock.advance(3.0)
        for key in check.due():
            check.record(key, SUCCESS)
            waits.append(check.status()["endpoints"][key]["next_at"] - clock.now())  # type: ignore[index]
        assert all(10.0 <= wait <= 10.0 + 1.0 + 1.0 for wait in waits)
        return firsts + waits

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_scheduling_marks_checks_in_flight_and_membership_follows_updates() -> None:
    clock = FakeClock()
    check = checker(clock, ("a:1", "b:1"))
    assert sorted(check.due()) == ["a:1", "b:1"]
    assert check.due() == []  # both are being checked
    assert check.next_check() == math.inf
    check.update(["b:1", "c:1"], healthy=False)  # a:1 left, c:1 joined (unhealthy until checked)
    assert "a:1" not in check
    assert "c:1" in check
    assert len(check) == 2
    assert check.record("a:1", SUCCESS) is None  # a late answer from a removed endpoint is ignored
    assert check.due() == ["c:1"]
    assert check.unhealthy() == {"c:1"}
    with pytest.raises(ValueError, match="outcome"):
        check.record("b:1", "maybe")  # type: ignore[arg-type]


def test_status_and_repr_show_every_endpoint() -> None:
    clock = FakeClock()
    check = checker(clock, ("a:1",))
    check.due()
    check.record("a:1", FAILURE, "status 503")
    status = check.status()
    assert status["traffic"] is True
    assert status["endpoints"] == {"a:1": {"healthy": False, "checks": 1, "last": "status 503", "next_at": 5.0}}
    assert repr(check) == "HealthChecker('/healthz', endpoints=1, unhealthy=1)"
