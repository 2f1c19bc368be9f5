"""Adaptive concurrency: the AIMD, Gradient2 and Vegas estimators, and the limiter that clamps and admits."""

from __future__ import annotations

import json
import math
import threading
import weakref

import pytest

from connectivity.errors import ConfigError
from connectivity.policies.concurrency import AIMD, AdaptiveConcurrency, Gradient2, Vegas

WORK = 0.010  # a normal round trip, seconds


# -- AIMD -----------------------------------------------------------------------------------------------------
def test_aimd_increases_by_one_when_a_good_sample_uses_the_limit() -> None:
    estimator = AIMD().start()
    assert estimator.update(10, WORK, 10, False) == 11
    assert estimator.update(10, WORK, 5, False) == 11  # half the limit in use counts as using it


def test_aimd_holds_when_app_limited() -> None:
    assert AIMD().start().update(10, WORK, 4, False) == 10


def test_aimd_increase_is_configurable() -> None:
    assert AIMD(increase=3).start().update(10, WORK, 10, False) == 13


def test_aimd_multiplies_by_the_backoff_ratio_on_a_drop() -> None:
    estimator = AIMD(backoff_ratio=0.5).start()
    assert estimator.update(100, WORK, 100, True) == 50
    assert estimator.update(100, WORK, 1, True) == 50  # a drop shrinks whatever the usage


def test_aimd_always_shrinks_by_at_least_one_and_never_below_one() -> None:
    estimator = AIMD(backoff_ratio=0.9).start()
    assert estimator.update(5, WORK, 5, True) == 4  # int(5 * 0.9) == 4
    assert estimator.update(2, WORK, 2, True) == 1  # int(2 * 0.9) == 1
    assert estimator.update(1, WORK, 1, True) == 1


def test_aimd_treats_a_sample_slower_than_timeout_as_a_drop() -> None:
    estimator = AIMD(backoff_ratio=0.5, timeout=1.0).start()
    assert estimator.update(20, 1.5, 20, False) == 10
    assert estimator.update(20, 0.9, 20, False) == 21


def test_aimd_limiter_climbs_under_load_and_backs_off_on_drops() -> None:
    limiter = AdaptiveConcurrency(AIMD(backoff_ratio=0.5), initial_limit=10, max_limit=1000)
    for _ in range(5):
        limiter.on_sample(WORK, limiter.limit, False)
    assert limiter.limit == 15
    limiter.on_sample(WORK, limiter.limit, True)
    assert limiter.limit == 7


# -- Gradient2 ------------------------------------------------------------------------------------------------
def _feed(limiter: AdaptiveConcurrency, rtt: float, samples: int) -> list[int]:
    """Samples taken with the limit fully used (the algorithms ignore app-limited samples)."""
    return [limiter.on_sample(rtt, limiter.limit, False) for _ in range(samples)]


def test_gradient2_grows_while_latency_is_steady() -> None:
    limiter = AdaptiveConcurrency(Gradient2(), initial_limit=20, max_limit=1000)
    limits = _feed(limiter, WORK, 50)
    assert limits == sorted(limits)
    assert limits[-1] > 20


def test_gradient2_shrinks_when_short_term_rtt_rises_over_the_long_term_and_recovers_when_it_falls() -> None:
    limiter = AdaptiveConcurrency(Gradient2(), initial_limit=50, max_limit=1000)
    _feed(limiter, WORK, 100)  # a long-term baseline of 10 ms
    before = limiter.limit
    slow = _feed(limiter, 4 * WORK, 20)  # 4x the baseline: beyond the 1.5x tolerance
    assert slow[-1] < before
    assert slow == sorted(slow, reverse=True)
    low = slow[-1]
    recovered = _feed(limiter, WORK, 60)
    assert recovered[-1] > low
    assert recovered == sorted(recovered)


def test_gradient2_tolerates_latency_within_tolerance() -> None:
    limiter = AdaptiveConcurrency(Gradient2(tolerance=2.0), initial_limit=50, max_limit=1000)
    _feed(limiter, WORK, 100)
    before = limiter.limit
    assert _feed(limiter, 1.8 * WORK, 5)[-1] >= before  # 1.8x < 2.0x tolerance: no sign of queueing


def test_gradient2_step_follows_the_reference_formula() -> None:
    limiter = AdaptiveConcurrency(Gradient2(smoothing=0.5, queue_size=4), initial_limit=100, max_limit=1000)
    limiter.on_sample(0.010, 100, False)  # long = short = 10 ms: gradient 1, limit 100 * 0.5 + 104 * 0.5
    assert limiter.limit == 102
    estimator = limiter.status()["estimator"]
    assert isinstance(estimator, dict)
    assert estimator["long_rtt_s"] == pytest.approx(0.010)


def test_gradient2_shrinks_by_at_most_half_per_step_before_smoothing() -> None:
    limiter = AdaptiveConcurrency(Gradient2(smoothing=1.0, queue_size=0), initial_limit=100, max_limit=1000)
    _feed(limiter, 0.010, 20)  # past the warm-up: the long-term average now moves by 2 / 601 per sample
    assert limiter.limit == 100
    limiter.on_sample(10.0, 100, False)  # 1000x slower: the gradient is floored at 0.5
    assert limiter.limit == 50


def test_gradient2_ignores_app_limited_samples() -> None:
    limiter = AdaptiveConcurrency(Gradient2(), initial_limit=40, max_limit=1000)
    for _ in range(20):
        limiter.on_sample(10 * WORK, 5, False)  # 5 in flight < 40 / 2
    assert limiter.limit == 40


# -- Vegas ----------------------------------------------------------------------------------------------------
def test_vegas_grows_fast_without_queueing_and_shrinks_when_the_queue_builds() -> None:
    limiter = AdaptiveConcurrency(Vegas(probe_multiplier=1000), initial_limit=20, max_limit=1000)
    limiter.on_sample(WORK, 20, False)  # the first sample is the no-load RTT
    assert limiter.limit == 20
    limiter.on_sample(WORK, 20, False)  # queue 0 <= threshold: grow by beta * log10(20) = 6
    assert limiter.limit == 26
    limiter.on_sample(2 * WORK, 26, False)  # queue = ceil(26 * 0.5) = 13 > beta: shrink by 1
    assert limiter.limit == 25


def test_vegas_shrinks_on_a_drop() -> None:
    limiter = AdaptiveConcurrency(Vegas(probe_multiplier=1000), initial_limit=20, max_limit=1000)
    limiter.on_sample(WORK, 20, False)
    limiter.on_sample(WORK, 20, True)
    assert limiter.limit == 19


# -- the limiter ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", [AIMD(), Gradient2(), Vegas()], ids=["aimd", "gradient2", "vegas"])
def test_limits_are_clamped_to_min_and_max(algorithm: AIMD | Gradient2 | Vegas) -> None:
    limiter = AdaptiveConcurrency(algorithm, min_limit=5, max_limit=30, initial_limit=10)
    for _ in range(300):
        limiter.on_sample(WORK, limiter.limit, False)
    assert limiter.limit == 30
    for _ in range(60):
        limiter.on_sample(1000 * WORK, limiter.limit, True)  # every sample a drop, and very slow
    assert limiter.limit == 5


def test_admission_follows_the_current_limit() -> None:
    limiter = AdaptiveConcurrency(AIMD(backoff_ratio=0.5), initial_limit=4)
    assert [limiter.try_acquire() for _ in range(5)] == [True, True, True, True, False]
    assert (limiter.in_flight, limiter.rejected) == (4, 1)
    limiter.on_sample(WORK, 4, True)  # the limit halves to 2: no admission until two calls leave
    for _ in range(2):
        limiter.release()
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()
    assert limiter.in_flight == 2


def test_shadow_mode_adapts_and_counts_but_admits_everything() -> None:
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=2, shadow=True)
    assert all(limiter.try_acquire() for _ in range(5))
    assert (limiter.in_flight, limiter.rejected) == (5, 3)
    limiter.on_sample(WORK, 5, False)
    assert limiter.limit == 3


def test_status_is_json_ready() -> None:
    limiter = AdaptiveConcurrency(Gradient2(), name="orders")
    limiter.try_acquire()
    limiter.on_sample(WORK, 1, False)
    status = limiter.status()
    assert json.loads(json.dumps(status)) == status
    assert status["name"] == "orders"
    assert status["algorithm"] == "Gradient2"
    assert (status["limit"], status["in_flight"], status["samples"], status["rejected"]) == (20, 1, 1, 0)


def test_weakly_referenceable_for_the_status_registry() -> None:
    limiter = AdaptiveConcurrency()
    assert weakref.ref(limiter)() is limiter


@pytest.mark.parametrize("rtt", [-0.1, math.nan, math.inf])
def test_a_bad_sample_is_refused(rtt: float) -> None:
    with pytest.raises(ValueError, match="rtt"):
        AdaptiveConcurrency().on_sample(rtt, 1, False)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: AIMD(backoff_ratio=0), "AIMD.backoff_ratio"),
        (lambda: AIMD(backoff_ratio=1), "AIMD.backoff_ratio"),
        (lambda: AIMD(backoff_ratio=1.5), "AIMD.backoff_ratio"),
        (lambda: AIMD(backoff_ratio=-0.1), "AIMD.backoff_ratio"),
        (lambda: AIMD(increase=0), "AIMD.increase"),
        (lambda: AIMD(timeout=0), "AIMD.timeout"),
        (lambda: Gradient2(smoothing=0), "Gradient2.smoothing"),
        (lambda: Gradient2(smoothing=1.2), "Gradient2.smoothing"),
        (lambda: Gradient2(tolerance=0.5), "Gradient2.tolerance"),
        (lambda: Gradient2(long_window=0), "Gradient2.long_window"),
        (lambda: Gradient2(queue_size=-1), "Gradient2.queue_size"),
        (lambda: Vegas(beta=1, alpha=3), "Vegas.beta"),
        (lambda: Vegas(smoothing=0), "Vegas.smoothing"),
        (lambda: AdaptiveConcurrency(algorithm="aimd"), "AdaptiveConcurrency.algorithm"),  # type: ignore[arg-type]
        (lambda: AdaptiveConcurrency(min_limit=0), "AdaptiveConcurrency.min_limit"),
        (lambda: AdaptiveConcurrency(min_limit=-3), "AdaptiveConcurrency.min_limit"),
        (lambda: AdaptiveConcurrency(min_limit=10, max_limit=5), "AdaptiveConcurrency.max_limit"),
        (lambda: AdaptiveConcurrency(min_limit=10, initial_limit=5), "AdaptiveConcurrency.initial_limit"),
        (lambda: AdaptiveConcurrency(max_limit=10, initial_limit=20), "AdaptiveConcurrency.initial_limit"),
        (lambda: AdaptiveConcurrency(name=""), "AdaptiveConcurrency.name"),
        (lambda: AdaptiveConcurrency(shadow=1), "AdaptiveConcurrency.shadow"),  # type: ignore[arg-type]
    ],
)
def test_bad_configuration_names_the_field(build: object, field: str) -> None:
    assert callable(build)
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.field == field


def test_shared_between_threads_admission_never_exceeds_the_limit() -> None:
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=8, min_limit=8, max_limit=8)
    peak = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        nonlocal peak
        barrier.wait()
        for _ in range(2000):
            if limiter.try_acquire():
                with lock:
                    peak = max(peak, limiter.in_flight)
                limiter.release()
                limiter.on_sample(WORK, 8, False)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= peak <= 8
    assert limiter.in_flight == 0
    assert limiter.status()["samples"] == limiter.status()["admitted"]
