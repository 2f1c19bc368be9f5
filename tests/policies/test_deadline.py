import pytest

from connectivity import ConfigError, Deadline, current_deadline, deadline
from connectivity.policies import DEADLINE_HEADER, parse_timeout_header
from connectivity.testing import FakeClock


def test_remaining_and_expiry_follow_the_clock() -> None:
    clock = FakeClock()
    budget = Deadline.after(2.0, clock)
    clock.advance(0.5)
    assert budget.remaining() == 1.5
    assert not budget.expired
    clock.advance(1.5)
    assert budget.expired


def test_nested_scopes_can_shorten_but_never_extend() -> None:
    clock = FakeClock()
    assert current_deadline() is None
    with deadline(5.0, clock) as outer:
        with deadline(10.0, clock) as inner:
            assert inner is outer
        with deadline(1.0, clock) as inner:
            assert inner.remaining() == 1.0
            assert current_deadline() is inner
        assert current_deadline() is outer
    assert current_deadline() is None


def test_header_round_trip_rounds_down() -> None:
    clock = FakeClock()
    budget = Deadline.after(1.2345, clock)
    assert budget.to_header() == "1234"
    received = Deadline.from_headers({DEADLINE_HEADER: budget.to_header()}, clock)
    assert received is not None
    assert received.remaining() == pytest.approx(1.234)


@pytest.mark.parametrize(
    ("name", "value", "seconds"),
    [
        ("x-connectivity-timeout-ms", "1500", 1.5),
        ("x-envoy-expected-rq-timeout-ms", "250", 0.25),
        ("grpc-timeout", "2S", 2.0),
        ("grpc-timeout", "100m", 0.1),
        ("grpc-timeout", "1H", 3600.0),
        ("grpc-timeout", "5M", 300.0),
        ("grpc-timeout", "10u", 1e-5),
        ("grpc-timeout", "123456789S", None),  # more than 8 digits
        ("grpc-timeout", "5s", None),  # units are case-sensitive
        ("grpc-timeout", "S", None),
        ("x-connectivity-timeout-ms", "-5", None),
        ("x-connectivity-timeout-ms", "1.5", None),
        ("x-connectivity-timeout-ms", "", None),
        ("x-connectivity-timeout-ms", "١٢", None),
    ],
)
def test_timeout_headers(name: str, value: str, seconds: float | None) -> None:
    got = parse_timeout_header(name, value)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def test_tightest_valid_header_wins_and_invalid_ones_are_ignored() -> None:
    clock = FakeClock()
    headers = {"grpc-timeout": "3S", "x-envoy-expected-rq-timeout-ms": "bogus", DEADLINE_HEADER: "2000"}
    received = Deadline.from_headers(headers, clock)
    assert received is not None
    assert received.remaining() == 2.0
    assert Deadline.from_headers({"grpc-timeout": "nope"}, clock) is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1"])
def test_invalid_deadline_seconds(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"Deadline\.seconds"):
        Deadline.after(bad)  # type: ignore[arg-type]
