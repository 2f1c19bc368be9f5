import httpx
import pytest

import connectivity as cx
from connectivity.policies import DEADLINE_HEADER
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import RetryTransport, TimeoutTransport

from .conftest import Sender


def test_a_one_second_deadline_fails_at_one_second_against_a_three_second_upstream(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=3.0)], clock=clock)
    with pytest.raises(cx.DeadlineExceededError) as info:
        send(TimeoutTransport(script, 1.0, clock=clock))
    assert clock.now() == 1.0  # failed at the deadline, not when the upstream answered
    assert script.in_flight == 0  # no attempt outlives it
    assert isinstance(info.value, httpx.TimeoutException)
    assert info.value.timeout == 1.0


def test_no_backoff_wait_is_started_that_the_deadline_cannot_cover(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=Step(503, delay=0.4), clock=clock)
    retry = cx.Retry(attempts=10, backoff=cx.Backoff.constant(0.7))
    response = send(cx.transport(script, timeout=cx.Timeout(total=1.0), retry=retry, clock=clock))
    # after the first attempt 0.6 s are left, less than the 0.7 s wait: return the 503 now instead of waiting
    assert response.status_code == 503
    assert response.extensions["connectivity"].gave_up == "deadline too close for another attempt"
    assert clock.now() == 0.4
    assert len(script.requests) == 1


def test_deadline_during_a_retry_is_final_and_not_retried(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=Step(503, delay=0.4), clock=clock)
    retry = cx.Retry(attempts=10, backoff=cx.Backoff.constant(0.3))
    with pytest.raises(cx.DeadlineExceededError):
        send(cx.transport(script, timeout=cx.Timeout(total=1.0), retry=retry, clock=clock))
    assert clock.now() == 1.0  # 0.4 + 0.3 + (cut at 1.0)
    assert len(script.requests) == 2
    assert script.in_flight == 0


def test_per_try_timeout_is_retried_within_the_total(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=5.0, content=b"slow"), Step(200, content=b"fast")], clock=clock)
    transport = cx.transport(
        script, timeout=cx.Timeout(total=10.0, per_try=1.0), retry=cx.Retry(backoff=cx.Backoff.none()), clock=clock
    )
    response = send(transport)
    assert response.content == b"fast"
    assert response.extensions["connectivity"].reasons == ("per-try-timeout",)
    assert clock.now() == 1.0
    assert script.in_flight == 0


def test_retry_per_try_timeout_works_without_the_builder(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=5.0), Step(204)], clock=clock)
    transport = RetryTransport(script, cx.Retry(per_try_timeout=0.5, backoff=cx.Backoff.none()), clock=clock)
    assert send(transport).status_code == 204
    assert clock.now() == 0.5


def test_per_try_timeout_alone_raises_per_try_timeout_error(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=5.0)], clock=clock)
    with pytest.raises(cx.PerTryTimeoutError):
        send(TimeoutTransport(script, 0.5, per_try=True, clock=clock))


def test_ambient_deadline_is_enforced_without_a_configured_total(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=3.0)], clock=clock)
    transport = cx.transport(script, clock=clock)
    with cx.deadline(0.5, clock), pytest.raises(cx.DeadlineExceededError):
        send(transport)
    assert clock.now() == 0.5


def test_expired_deadline_sends_nothing(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([200], clock=clock)
    with cx.deadline(0.5, clock):
        clock.advance(1.0)
        with pytest.raises(cx.DeadlineExceededError, match="before the request was sent"):
            send(cx.transport(script, clock=clock))
    assert script.requests == []


def test_remaining_budget_is_propagated_and_httpx_timeouts_are_clamped(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([200], clock=clock)
    send(cx.transport(script, timeout=cx.Timeout(total=2.5, propagate=True), clock=clock))
    seen = script.requests[0]
    assert seen.headers[DEADLINE_HEADER] == "2500"
    # httpx's default is 5 s per operation: clamped to what the deadline leaves
    assert seen.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


def test_per_try_budget_is_what_the_upstream_hears(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([200], clock=clock)
    send(cx.transport(script, timeout=cx.Timeout(total=5.0, per_try=0.75, propagate=True), clock=clock))
    assert script.requests[0].headers[DEADLINE_HEADER] == "750"


def test_propagation_is_off_by_default(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([200, 200], clock=clock)
    send(cx.transport(script, timeout=cx.Timeout(total=5.0), clock=clock))
    send(TimeoutTransport(script, 3.0, clock=clock))
    assert DEADLINE_HEADER not in script.requests[0].headers
    assert DEADLINE_HEADER not in script.requests[1].headers


def test_per_request_timeout_override(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=2.0)], clock=clock)
    transport = cx.transport(script, timeout=10.0, clock=clock)
    with pytest.raises(cx.DeadlineExceededError):
        send(transport, extensions={"connectivity.timeout": 0.25})
    assert clock.now() == 0.25


def test_per_try_override_has_its_own_key(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=1.5), Step(204)], clock=clock)
    transport = cx.transport(
        script, timeout=cx.Timeout(total=10.0, per_try=2.0), retry=cx.Retry(backoff=cx.Backoff.none()), clock=clock
    )
    response = send(transport, extensions={"connectivity.per_try_timeout": 1.0})
    assert response.status_code == 204
    assert clock.now() == 1.0


def test_hand_composed_timeout_layer_propagates_when_asked(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([200], clock=clock)
    send(TimeoutTransport(script, 3.0, propagate=True, clock=clock))
    assert script.requests[0].headers[DEADLINE_HEADER] == "3000"


class _IgnoresTimeouts(ScriptedTransport):
    """A blocking transport that neither bounds its waits by the deadline nor honours httpx's timeouts."""

    @staticmethod
    def _read_timeout(request: httpx.Request) -> float | None:
        return None


def test_a_late_sync_answer_from_a_transport_that_ignores_timeouts_is_refused() -> None:
    clock = FakeClock()
    script = _IgnoresTimeouts([Step(200, delay=3.0)], clock=clock)
    with (
        httpx.Client(transport=TimeoutTransport(script, 1.0, clock=clock)) as client,
        pytest.raises(cx.DeadlineExceededError),
    ):
        client.get("http://upstream/")
    assert clock.now() == 3.0  # nothing could interrupt the call; its answer came too late to hand out
    assert script.closed == 1  # and was closed, not leaked


class _TrustedToStop(_IgnoresTimeouts):
    connectivity_deadline_aware = True


def test_a_transport_that_bounds_its_own_waits_is_not_second_guessed() -> None:
    clock = FakeClock()
    script = _TrustedToStop([Step(200, delay=3.0)], clock=clock)
    with httpx.Client(transport=TimeoutTransport(script, 1.0, clock=clock)) as client:
        assert client.get("http://upstream/").status_code == 200
