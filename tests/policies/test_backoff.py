import math
import random

import pytest
import tenacity

from connectivity import Backoff, ConfigError


def test_exponential_full_jitter_stays_under_the_growing_ceiling() -> None:
    backoff = Backoff.exponential(base=0.1, cap=1.0, rng=random.Random(1))
    for retry in range(1, 10):
        ceiling = min(1.0, 0.1 * 2 ** (retry - 1))
        delays = [backoff.delay(retry) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter covers the range, not a constant


def test_same_seed_same_delays() -> None:
    first = Backoff.exponential(rng=random.Random(42))
    second = Backoff.exponential(rng=random.Random(42))
    assert [first.delay(n) for n in range(1, 6)] == [second.delay(n) for n in range(1, 6)]


def test_decorrelated_jitter_is_bounded_by_base_and_cap() -> None:
    backoff = Backoff.decorrelated(base=0.05, cap=0.5, rng=random.Random(3))
    previous = 0.0
    for retry in range(1, 50):
        delay = backoff.delay(retry, previous)
        assert 0.05 <= delay <= 0.5
        assert delay <= max(0.05, previous * 3)
        previous = delay


def test_constant_with_and_without_jitter() -> None:
    assert Backoff.constant(0.2).delay(5) == 0.2
    jittered = Backoff.constant(1.0, jitter=0.5, rng=random.Random(0))
    delays = [jittered.delay(1) for _ in range(100)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert len(set(delays)) > 1


def test_none_retries_immediately() -> None:
    assert Backoff.none().delay(3) == 0


def test_tenacity_wait_strategies_adapt_and_are_capped() -> None:
    backoff = Backoff.from_tenacity(tenacity.wait_exponential(multiplier=1, min=0, max=100), cap=5.0)
    assert backoff.delay(1) == 1
    assert backoff.delay(2) == 2
    assert backoff.delay(10) == 5.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": -1.0}, "Backoff.base"),
        ({"base": math.nan}, "Backoff.base"),
        ({"cap": math.inf}, "Backoff.cap"),
        ({"base": 2.0, "cap": 1.0}, "Backoff.cap"),
        ({"multiplier": 0.5}, "Backoff.multiplier"),
        ({"base": "0.1"}, "Backoff.base"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
        Backoff.exponential(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_unknown_kind_and_bad_tenacity_wait_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"Backoff\.kind"):
        Backoff(kind="linear")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="from_tenacity"):
        Backoff.from_tenacity(3)  # type: ignore[arg-type]
