"""OutlierDetector in virtual time: Envoy's detectors, defaults, ejection cap, backoff, returns and events."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from connectivity.errors import ConfigError
from connectivity.policies import outlier as outlier_module
from connectivity.policies.outlier import (
    CANCELLED,
    CONSECUTIVE_5XX,
    CONSECUTIVE_GATEWAY_FAILURE,
    EJECT,
    FAILURE_PERCENTAGE,
    RETURN,
    SUCCESS_RATE,
    OutlierDetector,
    OutlierEvent,
)
from connectivity.testing import FakeClock

HOSTS = [f"10.0.0.{i}:80" for i in range(1, 11)]  # ten hosts: 10 % allows one ejection
A = HOSTS[0]


def _detector(clock: FakeClock, hosts: list[str] = HOSTS, **options: Any) -> OutlierDetector:
    detector = OutlierDetector(clock=clock, rng=random.Random(1), **options)
    detector.update(hosts)
    return detector


def _events(detector: OutlierDetector) -> list[OutlierEvent]:
    seen: list[OutlierEvent] = []
    detector.add_listener(seen.append)
    return seen


def _fail(detector: OutlierDetector, key: str, times: int = 5, status: int | str = 500) -> None:
    for _ in range(times):
        detector.record(key, status)


# -- consecutive errors -----------------------------------------------------------------------------------------


def test_defaults_are_envoys() -> None:
    detector = OutlierDetector()
    assert (detector.consecutive_5xx, detector.consecutive_gateway_failure) == (5, 5)
    assert (detector.interval, detector.base_ejection_time, detector.max_ejection_time) == (10.0, 30.0, 300.0)
    assert (detector.max_ejection_percent, detector.always_eject_one_host) == (10.0, False)
    assert (detector.enforcing_consecutive_5xx, detector.enforcing_consecutive_gateway_failure) == (100.0, 0.0)
    assert (detector.enforcing_success_rate, detector.enforcing_failure_percentage) == (100.0, 0.0)
    assert (detector.success_rate_minimum_hosts, detector.success_rate_request_volume) == (5, 100)
    assert detector.success_rate_stdev_factor == 1.9
    assert (detector.failure_percentage_threshold, detector.failure_percentage_minimum_hosts) == (85.0, 5)
    assert detector.failure_percentage_request_volume == 50
    assert OutlierDetector(base_ejection_time=600.0).max_ejection_time == 600.0  # max(300 s, base)


def test_five_consecutive_5xx_eject(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    events = _events(detector)
    _fail(detector, A, 4)
    assert not detector.is_ejected(A)
    detector.record(A, 503)
    assert detector.is_ejected(A)
    assert detector.ejected() == frozenset({A})
    assert events == [OutlierEvent("outlier", A, EJECT, CONSECUTIVE_5XX, 1, 30.0, 0.0)]


def test_a_success_resets_the_count(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    _fail(detector, A, 4)
    detector.record(A, 200)
    _fail(detector, A, 4)
    detector.record(A, 404)  # a 4xx is a success for outlier detection
    _fail(detector, A, 4)
    assert not detector.ejected()


def test_local_failures_count_as_gateway_errors_and_cancellations_not_at_all(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    for outcome in ("connect-failure", "reset", CANCELLED, "read-timeout", CANCELLED, "per-try-timeout"):
        detector.record(A, outcome)
    assert not detector.is_ejected(A)  # four failures; the cancellations neither count nor reset
    detector.record(A, "connect-failure")
    assert detector.is_ejected(A)


def test_gateway_failures_are_detected_but_not_enforced_by_default(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock, consecutive_5xx=10)
    _fail(detector, A, 5, status=502)
    assert not detector.is_ejected(A)
    counters = detector.status()["counters"]
    assert counters[f"{CONSECUTIVE_GATEWAY_FAILURE}.detected"] == 1  # type: ignore[index]
    assert counters[f"{CONSECUTIVE_GATEWAY_FAILURE}.enforced"] == 0  # type: ignore[index]


def test_gateway_failures_eject_when_enforced(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock, consecutive_5xx=10, enforcing_consecutive_gateway_failure=100)
    events = _events(detector)
    _fail(detector, A, 4, status=504)
    detector.record(A, 500)  # a non-gateway 5xx resets the gateway count
    _fail(detector, A, 4, status=503)
    assert not detector.is_ejected(A)
    detector.record(A, "read-timeout")
    assert detector.is_ejected(A)
    assert events[0].reason == CONSECUTIVE_GATEWAY_FAILURE


def test_enforcement_percentages_draw_from_the_rng(fake_clock: FakeClock) -> None:
    hosts = [f"h{i}:80" for i in range(1000)]
    detector = _detector(fake_clock, hosts, enforcing_consecutive_5xx=30, max_ejection_percent=100)
    for key in hosts:
        _fail(detector, key)
    counters = detector.status()["counters"]
    assert counters[f"{CONSECUTIVE_5XX}.detected"] == 1000  # type: ignore[index]
    assert 250 < len(detector.ejected()) < 350


# -- the ejection cap -------------------------------------------------------------------------------------------


def test_max_ejection_percent_caps_simultaneous_ejections(fake_clock: FakeClock) -> None:
    hosts = [f"h{i}:80" for i in range(20)]
    detector = _detector(fake_clock, hosts)  # 10 % of 20: two at once
    for key in hosts[:3]:
        _fail(detector, key)
    assert detector.ejected() == frozenset(hosts[:2])
    assert detector.status()["counters"]["overflow"] == 1  # type: ignore[index]
    fake_clock.advance(30.0)
    assert not detector.ejected()  # both returned
    _fail(detector, hosts[2])
    assert detector.ejected() == frozenset({hosts[2]})


def test_fewer_than_ten_hosts_see_no_ejection_at_ten_percent(fake_clock: FakeClock) -> None:
    """Envoy's exact rule: 100 * (ejected + 1) / hosts <= max_ejection_percent; 1 of 5 is 20 %."""
    detector = _detector(fake_clock, HOSTS[:5])
    _fail(detector, A)
    assert not detector.ejected()
    assert detector.status()["counters"]["overflow"] == 1  # type: ignore[index]


def test_always_eject_one_host_allows_exactly_one(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock, HOSTS[:5], always_eject_one_host=True)
    _fail(detector, HOSTS[0])
    _fail(detector, HOSTS[1])
    assert detector.ejected() == frozenset({HOSTS[0]})


def test_a_higher_percentage_allows_more(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock, HOSTS[:5], max_ejection_percent=40)
    for key in HOSTS[:3]:
        _fail(detector, key)
    assert detector.ejected() == frozenset(HOSTS[:2])


# -- ejection time, backoff and return --------------------------------------------------------------------------


def test_return_after_the_ejection_time(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    events = _events(detector)
    _fail(detector, A)
    fake_clock.advance(29.999)
    assert detector.is_ejected(A)
    fake_clock.advance(0.001)
    assert not detector.is_ejected(A)
    assert events[-1] == OutlierEvent("outlier", A, RETURN, "ejection time elapsed", 1, 30.0, 30.0)
    _fail(detector, A, 4)  # the consecutive count was cleared on return
    assert not detector.is_ejected(A)


def test_ejection_time_grows_with_each_ejection_up_to_the_cap(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    events = _events(detector)
    durations = []
    for _ in range(13):
        _fail(detector, A)  # fails again as soon as it is back, before any sweep can decay the backoff
        ejection = events[-1]
        assert ejection.action == EJECT
        durations.append(ejection.duration)
        fake_clock.advance(ejection.duration)
        assert not detector.is_ejected(A)
    assert durations == [30.0 * k for k in range(1, 11)] + [300.0] * 3
    assert events[-1].ejections == 13


def test_backoff_decays_while_the_host_stays_in_service(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    events = _events(detector)
    _fail(detector, A)
    fake_clock.advance(30.0)
    _fail(detector, A)
    assert events[-1].duration == 60.0  # backoff 2
    fake_clock.advance(60.0)  # back at t=90
    fake_clock.advance(10.0)  # the sweep at t=100 is 10 s after the return: backoff 1
    detector.sweep()
    _fail(detector, A)
    assert events[-1].duration == 60.0  # 1 + 1 = 2 again
    fake_clock.advance(60.0)  # back at t=160
    fake_clock.advance(40.0)  # sweeps at 170, 180, 190, 200: backoff 2 -> 0
    _fail(detector, A)
    assert events[-1].duration == 30.0


def test_custom_times_and_jitter(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock, base_ejection_time=10.0, max_ejection_time=25.0, max_ejection_time_jitter=2.0)
    events = _events(detector)
    for _ in range(4):
        _fail(detector, A)
        fake_clock.advance(events[-1].duration)
    durations = [event.duration for event in events if event.action == EJECT]
    bases = [10.0, 20.0, 25.0, 25.0]
    assert all(base <= duration <= base + 2.0 for base, duration in zip(bases, durations, strict=True))
    assert len(set(durations)) == 4


def test_uneject_by_hand(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    events = _events(detector)
    assert not detector.uneject(A)
    _fail(detector, A)
    fake_clock.advance(5.0)
    assert detector.uneject(A)
    assert not detector.is_ejected(A)
    assert events[-1] == OutlierEvent("outlier", A, RETURN, "returned by hand", 1, 5.0, 5.0)
    fake_clock.advance(60.0)
    assert not detector.ejected()  # the stale scheduled return does nothing


# -- success rate and failure percentage ------------------------------------------------------------------------


def _record_rate(detector: OutlierDetector, key: str, rate: float, calls: int) -> None:
    failures = round(calls * (100 - rate) / 100)
    for index in range(calls):
        # Never four failures in a row, so the consecutive detector stays out of it.
        detector.record(key, 503 if index % 2 == 0 and index // 2 < failures else 200)
    assert failures <= calls // 2


def test_success_rate_ejects_a_host_below_mean_minus_stdev_factor(fake_clock: FakeClock) -> None:
    """Envoy's worked example: rates 50, 100, 100, 100, 100: mean 90, stdev 20, threshold 52."""
    hosts = HOSTS[:5]
    detector = _detector(fake_clock, hosts, max_ejection_percent=20)
    events = _events(detector)
    for key in hosts:
        _record_rate(detector, key, 50 if key == A else 100, 100)
    assert not detector.ejected()  # success rates are judged at the sweep
    fake_clock.advance(10.0)
    assert detector.ejected() == frozenset({A})
    status = detector.status()
    assert status["success_rate_average"] == pytest.approx(90.0)
    assert status["success_rate_ejection_threshold"] == pytest.approx(52.0)
    assert status["hosts"][A]["success_rate"] == 50.0  # type: ignore[index]
    assert status["hosts"][HOSTS[1]]["success_rate"] == 100.0  # type: ignore[index]
    assert events[-1].reason == SUCCESS_RATE
    assert events[-1].at == 10.0
    assert events[-1].detail == "success rate 50% < 52% (mean 90%, stdev 20)"
    for key in hosts:  # the next interval: an ejected host is not rated
        _record_rate(detector, key, 100, 100)
    fake_clock.advance(10.0)
    assert detector.status()["hosts"][A]["success_rate"] is None  # type: ignore[index]


def test_success_rate_needs_enough_hosts_with_enough_volume(fake_clock: FakeClock) -> None:
    hosts = HOSTS[:5]
    detector = _detector(fake_clock, hosts, max_ejection_percent=100)
    for key in hosts:
        _record_rate(detector, key, 50 if key == A else 100, 100 if key != HOSTS[4] else 99)
    fake_clock.advance(10.0)
    assert not detector.ejected()  # only four hosts reached 100 calls
    assert detector.status()["success_rate_average"] is None


def test_success_rate_looks_at_one_interval_only(fake_clock: FakeClock) -> None:
    hosts = HOSTS[:5]
    detector = _detector(fake_clock, hosts, max_ejection_percent=100)
    for key in hosts:
        _record_rate(detector, key, 50 if key == A else 100, 60)
    fake_clock.advance(10.0)
    for key in hosts:
        _record_rate(detector, key, 50 if key == A else 100, 60)
    fake_clock.advance(10.0)
    assert not detector.ejected()  # 120 calls over two intervals, 60 in each: never enough volume


def test_a_lower_stdev_factor_ejects_more(fake_clock: FakeClock) -> None:
    hosts = HOSTS[:6]
    rates = dict(zip(hosts, [80, 90, 100, 100, 100, 100], strict=True))
    strict = _detector(fake_clock, hosts, max_ejection_percent=100)
    lenient = _detector(fake_clock, hosts, max_ejection_percent=100, success_rate_stdev_factor=0.5)
    for detector in (strict, lenient):
        for key in hosts:
            _record_rate(detector, key, rates[key], 100)
    fake_clock.advance(10.0)
    # mean 95, stdev 7.64: 1.9 gives a threshold of 80.5 (80 is out), 0.5 one of 91.2 (80 and 90 are out).
    assert strict.ejected() == frozenset({hosts[0]})
    assert lenient.ejected() == frozenset(hosts[:2])


def test_failure_percentage_is_detected_but_not_enforced_by_default(fake_clock: FakeClock) -> None:
    hosts = HOSTS[:5]
    detector = _detector(fake_clock, hosts, max_ejection_percent=100, enforcing_success_rate=0)
    for key in hosts:
        for index in range(50):
            detector.record(key, 500 if key == A and index % 10 and index % 4 else 200)
    fake_clock.advance(10.0)
    assert not detector.ejected()
    assert detector.status()["counters"][f"{FAILURE_PERCENTAGE}.detected"] == 0  # type: ignore[index]


def test_failure_percentage_ejects_when_enforced(fake_clock: FakeClock) -> None:
    hosts = HOSTS[:5]
    detector = _detector(
        fake_clock,
        hosts,
        max_ejection_percent=100,
        consecutive_5xx=1000,
        enforcing_success_rate=0,
        enforcing_failure_percentage=100,
    )
    events = _events(detector)
    for key in hosts:
        for index in range(50):
            detector.record(key, 500 if (key == A and index % 10) or (key == HOSTS[1] and index % 2) else 200)
    fake_clock.advance(10.0)
    assert detector.ejected() == frozenset({A})  # 90 % failed >= 85 %; the 50 % one stays
    assert events[-1].reason == FAILURE_PERCENTAGE


# -- membership, sweeps, listeners ------------------------------------------------------------------------------


def test_keys_join_on_first_record_until_update_fixes_the_membership(fake_clock: FakeClock) -> None:
    detector = OutlierDetector(clock=fake_clock, always_eject_one_host=True)
    _fail(detector, "new:1")
    assert detector.ejected() == frozenset({"new:1"})
    detector.update(["a:1", "b:1"])
    _fail(detector, "late:1")
    assert "late:1" not in detector.status()["hosts"]  # type: ignore[operator]


def test_removing_an_ejected_host_frees_its_place(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    events = _events(detector)
    _fail(detector, A)
    detector.update([*HOSTS[1:], "10.0.0.99:80"])
    assert events[-1].action == RETURN
    assert events[-1].reason == "removed"
    _fail(detector, HOSTS[1])
    assert detector.ejected() == frozenset({HOSTS[1]})


def test_missed_sweeps_run_in_order_and_idle_time_is_skipped(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = _detector(fake_clock)
    sweeps: list[float] = []
    original = OutlierDetector._sweep

    def counting(self: OutlierDetector, at: float, events: list[OutlierEvent]) -> None:
        sweeps.append(at)
        original(self, at, events)

    monkeypatch.setattr(OutlierDetector, "_sweep", counting)
    fake_clock.advance(35.0)
    detector.sweep()
    assert sweeps == [10.0]  # nothing happened: the sweeps at 20 and 30 were skipped
    _fail(detector, A)  # ejected at 35 until 65
    fake_clock.advance(40.0)
    detector.sweep()
    assert sweeps == [10.0, 40.0, 50.0, 60.0, 70.0]  # the return at 65 happened between them, in order
    fake_clock.advance(86_400.0)  # a quiet day: one sweep decays the backoff, the rest would do nothing
    detector.record(A, 200)
    assert len(sweeps) == 6
    _fail(detector, A)
    ejection = detector.status()["hosts"][A]  # type: ignore[index]
    assert ejection["ejected_until"] == fake_clock.now() + 30.0  # backoff decayed back to 1


def test_listeners_cannot_break_a_call(fake_clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    detector = _detector(fake_clock)

    def broken(event: OutlierEvent) -> None:
        raise RuntimeError("listener bug")

    seen: list[OutlierEvent] = []
    detector.add_listener(broken)
    remove = detector.add_listener(seen.append)
    detector.add_listener(seen.append)  # the same hook twice is called once
    with caplog.at_level(logging.ERROR, logger="connectivity.outlier"):
        _fail(detector, A)
    assert len(seen) == 1
    assert "listener" in caplog.text
    remove()
    fake_clock.advance(30.0)
    detector.sweep()
    assert len(seen) == 1


def test_record_rejects_unknown_outcomes(fake_clock: FakeClock) -> None:
    detector = _detector(fake_clock)
    for outcome in ("boom", 99, 600, True, 1.5):
        with pytest.raises(ValueError, match="outcome"):
            detector.record(A, outcome)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"consecutive_5xx": 0}, "consecutive_5xx"),
        ({"consecutive_gateway_failure": 1.5}, "consecutive_gateway_failure"),
        ({"interval": 0}, "interval"),
        ({"base_ejection_time": -1}, "base_ejection_time"),
        ({"max_ejection_time": 10.0}, "max_ejection_time"),  # below base_ejection_time
        ({"max_ejection_time_jitter": -1}, "max_ejection_time_jitter"),
        ({"max_ejection_percent": 101}, "max_ejection_percent"),
        ({"enforcing_consecutive_5xx": -1}, "enforcing_consecutive_5xx"),
        ({"enforcing_success_rate": "100"}, "enforcing_success_rate"),
        ({"enforcing_failure_percentage": 150}, "enforcing_failure_percentage"),
        ({"failure_percentage_threshold": 101}, "failure_percentage_threshold"),
        ({"success_rate_minimum_hosts": 0}, "success_rate_minimum_hosts"),
        ({"success_rate_request_volume": True}, "success_rate_request_volume"),
        ({"failure_percentage_request_volume": 0}, "failure_percentage_request_volume"),
        ({"success_rate_stdev_factor": -0.1}, "success_rate_stdev_factor"),
        ({"always_eject_one_host": 1}, "always_eject_one_host"),
        ({"name": ""}, "name"),
        ({"rng": 42}, "rng"),
    ],
)
def test_invalid_configuration_names_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        OutlierDetector(**options)
    assert raised.value.field == f"OutlierDetector.{field}"


def test_module_surface() -> None:
    assert set(outlier_module.__all__) >= {"OutlierDetector", "OutlierEvent", "CANCELLED", "LOCAL_ORIGIN_STATUS"}
