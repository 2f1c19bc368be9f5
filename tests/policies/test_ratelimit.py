"""RateLimiter (GCRA) in virtual time: bursts, spacing, exact retry_after, several limits, keys, the limit grammar,
validation, and the exactness bound checked by brute force over random traffic (hypothesis).

The defects of connectivity.policies.ratelimit found while writing these tests (hold-offs forgotten after the
largest tolerance, peeks counted as refusals, peek taking any cost, a finite retry_after for a request above the
burst) were fixed meanwhile; their tests stay as regression tests.
"""

from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectivity.errors import ConfigError
from connectivity.policies.ratelimit import Decision, RateLimit, RateLimiter, parse_limits
from connectivity.testing import FakeClock

EPS = 1e-9


def limiter(*limits: RateLimit, clock: FakeClock, **kwargs: object) -> RateLimiter:
    return RateLimiter(list(limits), clock=clock, **kwargs)  # type: ignore[arg-type]


# -- one limit ----------------------------------------------------------------------------------------------------


def test_burst_from_idle_then_refused_with_the_exact_wait(fake_clock: FakeClock) -> None:
    limit = RateLimit(10, per=1.0, burst=5)
    rl = limiter(limit, clock=fake_clock)
    answers = [rl.try_acquire("k") for _ in range(6)]
    assert [d.allowed for d in answers] == [True] * 5 + [False]
    assert [d.remaining for d in answers[:5]] == [4, 3, 2, 1, 0]
    refused = answers[-1]
    assert refused.retry_after == pytest.approx(0.1, abs=EPS)  # one interval T = per / rate
    assert refused.remaining == 0
    assert refused.limit is limit
    assert refused.reset_after == pytest.approx(0.5, abs=EPS)  # the whole burst refills in 5 T
    assert answers[0].reset_after == pytest.approx(0.1, abs=EPS)
    assert (rl.allowed, rl.refused) == (5, 1)


def test_steady_state_admits_one_request_every_interval_exactly(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(4, per=1.0, burst=2), clock=fake_clock)  # T = 0.25
    assert all(rl.try_acquire().allowed for _ in range(2))
    for _ in range(20):
        fake_clock.advance(0.25 - 1e-6)
        assert not rl.try_acquire().allowed  # a microsecond early: refused, and that changes nothing
        fake_clock.advance(1e-6)
        assert rl.try_acquire().allowed
        assert not rl.try_acquire().allowed


def test_waiting_exactly_retry_after_is_enough_and_a_little_less_is_not(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(3, per=2.0, burst=3), clock=fake_clock)
    for _ in range(3):
        rl.try_acquire("k", cost=1)
    refused = rl.try_acquire("k", cost=2)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(2 * 2.0 / 3, abs=EPS)
    assert rl.wait_time("k", cost=2) == pytest.approx(refused.retry_after, abs=EPS)
    fake_clock.advance(refused.retry_after - 1e-6)
    assert not rl.try_acquire("k", cost=2).allowed
    fake_clock.advance(1e-6)
    assert rl.try_acquire("k", cost=2).allowed


def test_cost_above_one_takes_that_many_requests(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=5), clock=fake_clock)
    first = rl.try_acquire("k", cost=3)
    assert (first.allowed, first.remaining) == (True, 2)
    second = rl.try_acquire("k", cost=3)
    assert not second.allowed
    assert second.retry_after == pytest.approx(0.1, abs=EPS)  # one more interval frees the third
    assert rl.try_acquire("k", cost=2).allowed
    half = rl.try_acquire("j", cost=0.5)
    assert (half.allowed, half.remaining) == (True, 4)


def test_peek_answers_like_try_acquire_without_taking_anything(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=2), clock=fake_clock)
    for _ in range(5):
        assert rl.peek("k").allowed
    assert rl.try_acquire("k").remaining == 1
    assert rl.peek("k", cost=2).retry_after == pytest.approx(0.1, abs=EPS)
    assert rl.wait_time("k") == 0.0


def test_keys_are_independent(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(1, per=1.0, burst=1), clock=fake_clock)
    assert rl.try_acquire("a").allowed
    assert not rl.try_acquire("a").allowed
    assert rl.try_acquire("b").allowed
    assert sorted(rl.keys()) == ["a", "b"]


# -- several limits -----------------------------------------------------------------------------------------------


def test_a_request_refused_by_one_limit_consumes_none_of_the_others(fake_clock: FakeClock) -> None:
    per_second = RateLimit(10, per=1.0, burst=10, name="10/s")
    slow = RateLimit(20, per=10.0, burst=4, name="20/10s")  # T = 0.5
    rl = limiter(per_second, slow, clock=fake_clock)
    assert all(rl.try_acquire("k").allowed for _ in range(4))
    refusals = [rl.try_acquire("k") for _ in range(100)]
    assert not any(d.allowed for d in refusals)
    assert {d.limit for d in refusals} == {slow}
    assert refusals[0].retry_after == pytest.approx(0.5, abs=EPS)
    # Had the 100 refused requests spent the per-second limit, it would refuse for another 10 s.
    fake_clock.advance(0.5)
    after = rl.try_acquire("k")
    assert after.allowed
    assert after.limit is slow  # the tightest: 0 left in the slow one, 9 in the per-second one


def test_the_refusing_limit_with_the_longest_wait_is_reported(fake_clock: FakeClock) -> None:
    fast = RateLimit(2, per=1.0, burst=1, name="fast")
    hourly = RateLimit(3, per=3600.0, burst=1, name="hourly")
    rl = limiter(fast, hourly, clock=fake_clock)
    assert rl.try_acquire().allowed
    refused = rl.try_acquire()
    assert refused.limit is hourly
    assert refused.retry_after == pytest.approx(1200.0, abs=1e-6)


def test_the_tightest_limit_decides_remaining_when_allowed(fake_clock: FakeClock) -> None:
    wide = RateLimit(100, per=1.0, burst=100)
    narrow = RateLimit(5, per=1.0, burst=3)
    decision = limiter(wide, narrow, clock=fake_clock).try_acquire()
    assert (decision.remaining, decision.limit) == (2, narrow)


# -- shadow mode, hold-off ----------------------------------------------------------------------------------------


def test_shadow_mode_allows_everything_counts_refusals_and_consumes_only_what_would_pass(
    fake_clock: FakeClock,
) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=2), clock=fake_clock, shadow=True)
    answers = [rl.try_acquire("k") for _ in range(5)]
    assert all(d.allowed for d in answers)
    assert (rl.allowed, rl.refused) == (2, 3)
    assert rl.status()["shadow"] is True
    fake_clock.advance(0.1)
    assert rl.try_acquire("k").allowed
    assert rl.allowed == 3  # the refused-but-shadowed requests took nothing


def test_hold_off_refuses_until_the_given_time_then_allows(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=10), clock=fake_clock)
    assert rl.try_acquire("k").allowed
    rl.hold_off("k", 0.5)
    refused = rl.try_acquire("k")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5, abs=EPS)
    assert rl.try_acquire("other").allowed  # only that key
    fake_clock.advance(0.5 - 1e-6)
    assert not rl.try_acquire("k").allowed
    fake_clock.advance(1e-6)
    assert rl.try_acquire("k").allowed


def test_hold_off_ignores_nonsense() -> None:
    clock = FakeClock()
    rl = limiter(RateLimit(1, per=1.0, burst=1), clock=clock)
    for seconds in (0.0, -1.0, math.nan, math.inf):
        rl.hold_off("k", seconds)
    assert rl.try_acquire("k").allowed


def test_hold_off_longer_than_the_largest_tolerance_is_kept(fake_clock: FakeClock) -> None:
    """Regression: hold-offs once lived in the GCRA state, whose TTL (the largest tolerance, here 1 s) ended a 5 s
    hold-off after 1 s."""
    rl = limiter(RateLimit(10, per=1.0, burst=10), clock=fake_clock)  # tolerance 1 s
    rl.hold_off("k", 5.0)
    assert not rl.try_acquire("k").allowed
    fake_clock.advance(1.0)
    decision = rl.try_acquire("k")
    assert not decision.allowed, "a 5 s hold-off was forgotten after 1 s"
    assert decision.retry_after == pytest.approx(4.0, abs=EPS)
    fake_clock.advance(4.0)
    # Over: the limits are where they were (untouched by the hold-off): the whole burst.
    assert [rl.try_acquire("k").allowed for _ in range(11)] == [True] * 10 + [False]


def test_a_hold_off_is_refused_in_shadow_mode_only_in_the_counters(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=10), clock=fake_clock, shadow=True)
    rl.hold_off("k", 1.0)
    decision = rl.try_acquire("k")
    assert (decision.allowed, decision.retry_after) == (True, 0.0)
    assert rl.refused == 1


# -- counters and inputs ------------------------------------------------------------------------------------------


def test_peek_and_wait_time_do_not_count_refusals(fake_clock: FakeClock) -> None:
    """Regression: peek() and wait_time() once counted a refusal each time they looked."""
    rl = limiter(RateLimit(1, per=1.0, burst=1), clock=fake_clock)
    assert rl.try_acquire("k").allowed
    assert not rl.peek("k").allowed
    assert rl.wait_time("k") == pytest.approx(1.0)
    rl.hold_off("k", 5.0)
    assert rl.wait_time("k") == pytest.approx(5.0)
    assert rl.status()["refused"] == 0


def test_peek_validates_cost_like_try_acquire(fake_clock: FakeClock) -> None:
    """Regression: peek (and so wait_time) once took any cost, and answered peek(cost=-5) with 7 remaining of a
    burst of 2 and a negative reset_after."""
    rl = limiter(RateLimit(1, per=1.0, burst=2), clock=fake_clock)
    for cost in (-5.0, 0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="cost"):
            rl.peek("k", cost)


def test_a_cost_above_the_burst_is_refused_forever_and_peek_says_when_it_would_trickle_through(
    fake_clock: FakeClock,
) -> None:
    """Regression: the retry_after of a single request above the burst was once finite, and a client that waited
    it was refused again, forever."""
    rl = limiter(RateLimit(1, per=1.0, burst=2), clock=fake_clock)
    refused = rl.try_acquire("k", cost=3)
    assert not refused.allowed
    assert math.isinf(refused.retry_after)
    assert rl.peek("k", cost=3).retry_after == pytest.approx(1.0, abs=EPS)
    assert rl.try_acquire("k", cost=2).allowed  # nothing was taken by the refusal


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf, True])
def test_try_acquire_rejects_a_bad_cost(cost: float) -> None:
    rl = RateLimiter("10/s", clock=FakeClock())
    with pytest.raises(ValueError, match="cost"):
        rl.try_acquire("k", cost)


# -- bounded state ------------------------------------------------------------------------------------------------


def test_idle_keys_expire_once_their_state_equals_a_new_keys(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=10), RateLimit(60, per=60.0, burst=5), clock=fake_clock)
    for index in range(50):
        rl.try_acquire(f"k{index}")
    assert len(list(rl.keys())) == 50
    assert rl.status()["keys"] == 50
    fake_clock.advance(1.0 - 1e-3)  # one request's worth of the slower limit (T = 1 s) is still owed
    assert len(list(rl.keys())) == 50
    fake_clock.advance(2e-3)
    assert list(rl.keys()) == []
    assert rl.status()["keys"] == 0
    # An expired key is exactly a new key: the full burst again.
    assert [rl.try_acquire("k0").allowed for _ in range(6)] == [True] * 5 + [False]


def test_max_keys_forgets_the_least_recently_used_key(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(1, per=60.0, burst=1), clock=fake_clock, max_keys=3)
    for key in ("a", "b", "c"):
        assert rl.try_acquire(key).allowed
    assert not rl.try_acquire("a").allowed  # touches "a": now "b" is the least recently used
    assert rl.try_acquire("d").allowed
    assert sorted(rl.keys()) == ["a", "c", "d"]
    assert rl.try_acquire("b").allowed  # forgotten: it starts afresh (documented)
    assert len(list(rl.keys())) == 3


def test_a_table_full_of_live_keys_is_cut_by_a_sixteenth_at_once(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(1, per=60.0, burst=1), clock=fake_clock, max_keys=32)
    for index in range(32):
        rl.try_acquire(f"k{index}")
    assert len(list(rl.keys())) == 32
    rl.try_acquire("k32")  # one too many: the 3 least recently used go, so the next 2 new keys scan nothing
    assert sorted(rl.keys(), key=lambda key: int(key[1:])) == [f"k{index}" for index in range(3, 33)]
    rl.try_acquire("k33")
    rl.try_acquire("k34")
    assert len(list(rl.keys())) == 32


def test_an_integer_cost_takes_the_same_path_as_a_float(fake_clock: FakeClock) -> None:
    rl = limiter(RateLimit(10, per=1.0, burst=4), clock=fake_clock)
    assert [rl.try_acquire("k", 2).allowed for _ in range(3)] == [True, True, False]
    assert rl.try_acquire("k", 1).retry_after == pytest.approx(0.1)
    assert (rl.allowed, rl.refused) == (2, 2)


# -- the limit grammar --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/10s", [(100.0, 10.0, 100)]),
        ("10/second; 1000/hour", [(10.0, 1.0, 10), (1000.0, 3600.0, 1000)]),
        ("5 per minute burst 10", [(5.0, 60.0, 10)]),
        ("1.5/s", [(1.5, 1.0, 2)]),
        ("  7 / 2 Minutes , 3/D  ", [(7.0, 120.0, 7), (3.0, 86400.0, 3)]),
        ("100/10s burst 20", [(100.0, 10.0, 20)]),
        ("2/m;2/h;2/d", [(2.0, 60.0, 2), (2.0, 3600.0, 2), (2.0, 86400.0, 2)]),
        ("4 per 30 sec", [(4.0, 30.0, 4)]),
    ],
)
def test_parse_limits_grammar(text: str, expected: list[tuple[float, float, int]]) -> None:
    limits = parse_limits(text)
    assert [(limit.rate, limit.per, limit.burst) for limit in limits] == expected
    parts = text.replace(",", ";").split(";")
    assert [limit.name for limit in limits] == [part.strip() for part in parts]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "10",
        "10/",
        "/s",
        "10/parsec",
        "10/s;",
        "10/s burst",
        "10/s burst 0",
        "10/s burst -1",
        "0/s",
        "10/0s",
        "-1/s",
        "1e3/s",
        "10/ms",
        "10/s burst 1.5",
        None,
        5,
    ],
)
def test_parse_limits_rejects_bad_text_with_config_error(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_limits(text)  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf, -math.inf, True, "10", None])
def test_bad_rate_is_a_config_error(rate: object) -> None:
    with pytest.raises(ConfigError, match=r"RateLimit\.rate"):
        RateLimit(rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("per", [0, -1.0, math.nan, math.inf, False])
def test_bad_period_is_a_config_error(per: object) -> None:
    with pytest.raises(ConfigError, match=r"RateLimit\.per"):
        RateLimit(10, per=per)  # type: ignore[arg-type]


@pytest.mark.parametrize("burst", [0, -1, 1.5, True, "3"])
def test_bad_burst_is_a_config_error(burst: object) -> None:
    with pytest.raises(ConfigError, match=r"RateLimit\.burst"):
        RateLimit(10, burst=burst)  # type: ignore[arg-type]


def test_defaults_and_names() -> None:
    limit = RateLimit(2.5, per=10)
    assert (limit.burst, limit.interval, limit.tolerance, limit.name) == (3, 4.0, 12.0, "2.5/10s")
    with pytest.raises(ConfigError, match=r"RateLimit\.name"):
        RateLimit(1, name=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limits": []},
        {"limits": ["10/s"]},
        {"limits": "nonsense"},
        {"limits": "10/s", "max_keys": 0},
        {"limits": "10/s", "max_keys": True},
        {"limits": "10/s", "name": ""},
        {"limits": "10/s", "name": "  "},
    ],
)
def test_bad_limiter_arguments_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_status_is_json_ready() -> None:
    import json

    rl = RateLimiter("10/s; 100/h", name="api", clock=FakeClock())
    rl.try_acquire("k")
    status = rl.status()
    assert json.loads(json.dumps(status)) == status
    assert status["limits"] == [
        {"name": "10/s", "rate": 10.0, "per_s": 1.0, "burst": 10},
        {"name": "100/h", "rate": 100.0, "per_s": 3600.0, "burst": 100},
    ]
    assert (status["name"], status["kind"], status["allowed"], status["refused"]) == ("api", "rate-limit", 1, 0)


# -- the exactness bound, by brute force --------------------------------------------------------------------------

_traffic = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.5, allow_nan=False),  # time since the previous request
        st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0, 3.0]),  # cost
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(
    traffic=_traffic,
    rate=st.sampled_from([1.0, 3.0, 10.0, 50.0]),
    per=st.sampled_from([0.5, 1.0, 7.0]),
    burst=st.integers(min_value=1, max_value=8),
)
def test_admitted_cost_in_any_window_never_exceeds_burst_plus_window_over_interval(
    traffic: list[tuple[float, float]], rate: float, per: float, burst: int
) -> None:
    clock = FakeClock(start=1000.0)
    limit = RateLimit(rate, per=per, burst=burst)
    rl = RateLimiter(limit, clock=clock)
    admitted: list[tuple[float, float]] = []
    for gap, cost in traffic:
        clock.advance(gap)
        decision = rl.try_acquire("k", cost)
        if decision.allowed:
            admitted.append((clock.now(), cost))
        else:
            assert decision.retry_after > 0
    # Every window [t_i, t_j] between two admissions (the tightest windows there are).
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= burst + (end - start) / limit.interval + 1e-6, (start, end, total)


@settings(max_examples=200, deadline=None)
@given(
    traffic=_traffic,
    rate=st.sampled_from([1.0, 3.0, 10.0]),
    burst=st.integers(min_value=1, max_value=6),
    hold=st.sampled_from([0.0, 0.0, 0.7]),
)
def test_the_single_limit_fast_path_answers_exactly_like_the_general_path(
    traffic: list[tuple[float, float]], rate: float, burst: int, hold: float
) -> None:
    # A second limit that never binds sends every decision of `general` through the general path.
    clock = FakeClock(start=1000.0)
    limit = RateLimit(rate, per=1.0, burst=burst)
    fast = RateLimiter(limit, clock=clock)
    general = RateLimiter([limit, RateLimit(1e9, per=1.0)], clock=clock)
    for step, (gap, cost) in enumerate(traffic):
        clock.advance(gap)
        if hold and step == 2:
            fast.hold_off("k", hold)
            general.hold_off("k", hold)
        key = "k" if step % 3 else "other"
        mine, reference = fast.try_acquire(key, cost), general.try_acquire(key, cost)
        assert mine == reference, (step, mine, reference)
    assert (fast.allowed, fast.refused) == (general.allowed, general.refused)
    assert sorted(fast.keys()) == sorted(general.keys())


@settings(max_examples=200, deadline=None)
@given(
    traffic=_traffic,
    burst=st.integers(min_value=3, max_value=6),
    hourly=st.integers(min_value=1, max_value=30),
)
def test_several_limits_each_keep_their_bound_and_retry_after_is_exact(
    traffic: list[tuple[float, float]], burst: int, hourly: int
) -> None:
    clock = FakeClock()
    fast, slow = RateLimit(10, per=1.0, burst=burst), RateLimit(hourly, per=3600.0, burst=hourly)
    rl = RateLimiter([fast, slow], clock=clock)
    admitted: list[tuple[float, float]] = []
    for gap, cost in traffic:
        clock.advance(gap)
        decision = rl.try_acquire("k", cost)
        if decision.allowed:
            admitted.append((clock.now(), cost))
            continue
        if cost <= burst and cost <= hourly:
            # Waiting retry_after is exactly enough (peek changes nothing, so the check is free).
            probe_clock = FakeClock(clock.now())
            probe = RateLimiter([fast, slow], clock=probe_clock)
            probe._state["k"] = list(rl._state["k"])
            assert isinstance(probe.peek("k", cost), Decision)
            probe_clock.advance(decision.retry_after)
            assert probe.peek("k", cost).allowed
    for limit in (fast, slow):
        for i, (start, _) in enumerate(admitted):
            total = 0.0
            for end, cost in admitted[i:]:
                total += cost
                assert total <= limit.burst + (end - start) / limit.interval + 1e-6  # type: ignore[operator]


# -- LimitsAdapter: any `limits` strategy behind the same interface -----------------------------------------------


@pytest.fixture
def limits_lib() -> object:
    return pytest.importorskip("limits")


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_limits_adapter_answers_with_decisions(limits_lib: object, strategy: str) -> None:
    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    adapter = LimitsAdapter(strategy, "memory://", "3/second")
    answers = [adapter.try_acquire("k") for _ in range(4)]
    assert all(isinstance(d, Decision) for d in answers)
    assert [d.allowed for d in answers] == [True, True, True, False]
    assert [d.remaining for d in answers] == [2, 1, 0, 0]
    refused = answers[-1]
    assert 0 < refused.retry_after <= 1.0
    assert refused.limit == RateLimit(3, per=1.0, burst=3, name="3 per 1 second")
    assert adapter.try_acquire("other").allowed
    assert (adapter.allowed, adapter.refused) == (4, 1)
    assert adapter.wait_time("k") == pytest.approx(refused.retry_after, abs=0.05)


def test_limits_adapter_several_limits_cost_and_peek(limits_lib: object) -> None:
    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    adapter = LimitsAdapter("moving-window", "memory://", "5/second; 2/minute", name="api")
    for _ in range(3):
        assert adapter.peek("k").allowed  # looking takes nothing
    assert adapter.try_acquire("k").allowed
    assert adapter.try_acquire("k").allowed
    refusals = [adapter.try_acquire("k") for _ in range(10)]
    assert not any(d.allowed for d in refusals)
    assert {d.limit.name for d in refusals} == {"2 per 1 minute"}
    assert 50 < refusals[0].retry_after <= 60
    # Tested before hit: the refused requests took nothing from the per-second limit.
    second, _ = adapter.items
    assert adapter.strategy.get_window_stats(second, "api", "k").remaining == 3

    costly = LimitsAdapter("fixed-window", "memory://", "5/minute")
    assert (costly.try_acquire("k", cost=3).remaining, costly.try_acquire("k", cost=3).allowed) == (2, False)
    assert costly.try_acquire("k", cost=2.0).allowed
    for cost in (0, 1.5, -1, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="whole number"):
            costly.try_acquire("k", cost)


def test_limits_adapter_takes_classes_instances_and_items(limits_lib: object) -> None:
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    by_class = LimitsAdapter(MovingWindowRateLimiter, MemoryStorage(), parse("1/minute"))
    assert [by_class.try_acquire().allowed for _ in range(2)] == [True, False]
    by_instance = LimitsAdapter(FixedWindowRateLimiter(MemoryStorage()), None, [parse("2/minute")])
    assert [by_instance.try_acquire().allowed for _ in range(3)] == [True, True, False]
    status = by_instance.status()
    assert (status["kind"], status["strategy"], status["storage"]) == (
        "rate-limit",
        "FixedWindowRateLimiter",
        "MemoryStorage",
    )
    import json

    assert json.loads(json.dumps(status)) == status


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("nope", "memory://", "1/second"), "LimitsAdapter.strategy"),
        ((int, "memory://", "1/second"), "LimitsAdapter.strategy"),
        (("moving-window", "nope://", "1/second"), "LimitsAdapter.storage"),
        (("moving-window", 5, "1/second"), "LimitsAdapter.storage"),
        (("moving-window", "memory://", "1/s"), "LimitsAdapter.limits"),
        (("moving-window", "memory://", ""), "LimitsAdapter.limits"),
        (("moving-window", "memory://", []), "LimitsAdapter.limits"),
        (("moving-window", "memory://", ["1/second"]), "LimitsAdapter.limits"),
    ],
)
def test_limits_adapter_bad_arguments_are_config_errors(
    limits_lib: object, args: tuple[object, object, object], field: str
) -> None:
    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    with pytest.raises(ConfigError) as error:
        LimitsAdapter(*args)  # type: ignore[arg-type]
    assert error.value.field == field


def test_limits_adapter_sync_and_async_do_not_mix(limits_lib: object) -> None:
    from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    with pytest.raises(ConfigError, match="async"):
        LimitsAdapter(MovingWindowRateLimiter, "async+memory://", "1/second")
    with pytest.raises(ConfigError, match="sync"):
        LimitsAdapter(AsyncMovingWindow, MemoryStorage(), "1/second")
    with pytest.raises(ConfigError, match="None"):
        LimitsAdapter(MovingWindowRateLimiter(MemoryStorage()), "memory://", "1/second")
    with pytest.raises(ConfigError, match="name"):
        LimitsAdapter("moving-window", "memory://", "1/second", name="")
    sync_adapter = LimitsAdapter("moving-window", "memory://", "1/second")
    assert not sync_adapter.is_async
    with pytest.raises(TypeError, match="try_acquire"):
        anyio.run(sync_adapter.atry_acquire, "k")
    async_adapter = LimitsAdapter("moving-window", "async+memory://", "1/second")
    assert async_adapter.is_async
    with pytest.raises(TypeError, match="atry_acquire"):
        async_adapter.try_acquire("k")


@pytest.mark.anyio
async def test_limits_adapter_async_runs_on_asyncio_only(limits_lib: object, anyio_backend: str) -> None:
    from connectivity.policies.ratelimit_adapters import LimitsAdapter

    adapter = LimitsAdapter("fixed-window", "async+memory://", "2/minute; 10/hour")
    if anyio_backend != "asyncio":
        with pytest.raises(RuntimeError, match="asyncio"):
            await adapter.atry_acquire("k")
        return
    assert (await adapter.apeek("k")).allowed
    answers = [await adapter.atry_acquire("k") for _ in range(3)]
    assert [d.allowed for d in answers] == [True, True, False]
    assert answers[-1].limit.name == "2 per 1 minute"
    assert not (await adapter.apeek("k")).allowed
