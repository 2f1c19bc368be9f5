import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectivity import ConfigError, RetryBudget
from connectivity.testing import FakeClock


def test_sustained_failure_gets_ratio_plus_floor_and_no_more() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=10, ttl=10, clock=clock)
    granted = 0
    for _ in range(1000):  # 1000 requests in one second, each wanting two retries
        budget.deposit()
        granted += sum(budget.try_withdraw() for _ in range(2))
        clock.advance(0.001)
    assert granted == 0.2 * 1000 + 10 * 10


def test_quiet_client_still_gets_the_floor() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=2, ttl=5, clock=FakeClock())
    assert sum(budget.try_withdraw() for _ in range(50)) == 10


def test_old_traffic_is_forgotten_after_ttl() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_per_second=0, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert budget.balance() == 50
    while budget.try_withdraw():
        pass
    assert budget.balance() == 0
    clock.advance(10.5)
    assert budget.balance() == 0  # deposits expired too: nothing recent to retry against
    budget.deposit()
    budget.deposit()
    assert budget.balance() == 1


def test_sliding_window_expires_slot_by_slot() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    for second in range(10):
        clock.advance(1 if second else 0)
        for _ in range(10):
            budget.deposit()
    assert budget.balance() == 100
    clock.advance(1)  # the oldest second leaves the window
    assert budget.balance() == 90


def test_shared_between_threads_without_losing_counts() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, ttl=60, clock=FakeClock())
    granted = []

    def worker() -> None:
        mine = 0
        for _ in range(1000):
            budget.deposit()
            mine += budget.try_withdraw()
        granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 2000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": 1.5}, "RetryBudget.ratio"),
        ({"ratio": -0.1}, "RetryBudget.ratio"),
        ({"min_per_second": -1}, "RetryBudget.min_per_second"),
        ({"ttl": 0}, "RetryBudget.ttl"),
        ({"ttl": float("nan")}, "RetryBudget.ttl"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryBudget(**kwargs)
    assert info.value.field == field


@settings(max_examples=300, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 0.5, 1.0]),
    steps=st.lists(
        st.tuples(st.sampled_from(["deposit", "withdraw", "balance", "advance"]), st.integers(0, 24)), max_size=120
    ),
)
def test_budget_matches_a_reference_model_of_its_window(
    ratio: float, floor: float, steps: list[tuple[str, int]]
) -> None:
    # The model keeps the time of every deposit and retry and counts those whose slot (a tenth of ttl) is one of
    # the ten latest. Times are multiples of 1/4 s and slots 1 s wide, so both sides see the same boundaries.
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=floor, ttl=10, clock=clock)
    deposits: list[float] = []
    retries: list[float] = []

    def model_allowed() -> float:
        oldest = math.floor(clock.now()) - 9
        recent = sum(math.floor(t) >= oldest for t in deposits)
        taken = sum(math.floor(t) >= oldest for t in retries)
        return ratio * recent + floor * 10 - taken

    for action, amount in steps:
        if action == "deposit":
            budget.deposit()
            deposits.append(clock.now())
        elif action == "withdraw":
            expected = model_allowed() >= 1 - 1e-9  # one more retry fits

            assert budget.try_withdraw() == expected
            if expected:
                retries.append(clock.now())
        elif action == "balance":
            assert budget.balance() == pytest.approx(max(0.0, model_allowed()))
        else:
            clock.advance(amount / 4)
