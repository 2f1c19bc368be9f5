import math

import pytest

from connectivity import ConfigError, Hedge, RetryBudget, Timeout
from connectivity.testing import FakeClock


def test_hedge_allows_max_extra_attempts_then_stops() -> None:
    hedge = Hedge(delay=0.1, max_extra=2)
    assert hedge.allow_extra(1)
    assert hedge.allow_extra(2)
    assert not hedge.allow_extra(3)


def test_hedges_draw_from_the_retry_budget() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10, clock=FakeClock())  # one token
    hedge = Hedge(delay=0.1, max_extra=3, budget=budget)
    assert hedge.allow_extra(1)
    assert not hedge.allow_extra(2)


def test_only_idempotent_or_keyed_requests_are_hedged() -> None:
    hedge = Hedge()
    assert hedge.may_hedge("GET", has_idempotency_key=False)
    assert not hedge.may_hedge("POST", has_idempotency_key=False)
    assert hedge.may_hedge("POST", has_idempotency_key=True)


def test_worst_case() -> None:
    assert Hedge(delay=0.2, max_extra=2).worst_case(1.0) == pytest.approx(1.4)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delay": -0.1}, "Hedge.delay"),
        ({"delay": math.nan}, "Hedge.delay"),
        ({"max_extra": 0}, "Hedge.max_extra"),
        ({"budget": 3}, "Hedge.budget"),
        ({"methods": "GET"}, "Hedge.methods"),
    ],
)
def test_invalid_hedge_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Hedge(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"total": -1.0}, "Timeout.total"),
        ({"total": math.nan}, "Timeout.total"),
        ({"total": 0}, "Timeout.total"),
        ({"per_try": math.nan}, "Timeout.per_try"),
        ({"per_try": -0.5}, "Timeout.per_try"),
        ({"total": 1.0, "per_try": 2.0}, "Timeout.per_try"),
        ({"propagate": 1}, "Timeout.propagate"),
    ],
)
def test_negative_or_nan_timeouts_are_rejected_at_construction(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Timeout(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
