import threading

import httpx
import pytest

import connectivity as cx
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import HedgingTransport

from .conftest import Sender


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_async_hedge_returns_the_fast_answer_and_cancels_the_slow_attempt(mode: str) -> None:
    send = Sender(mode)
    clock = FakeClock()
    script = ScriptedTransport(
        [Step(200, delay=3.0, content=b"slow"), Step(200, delay=0.1, content=b"fast")], clock=clock
    )
    response = send(HedgingTransport(script, cx.Hedge(delay=0.5), clock=clock))
    assert response.content == b"fast"
    record = response.extensions["connectivity"]
    assert (record.hedges, record.winner) == (1, 1)
    assert clock.now() == pytest.approx(0.6)
    assert script.cancelled == 1
    assert script.in_flight == 0
    assert script.open_responses == 0


def test_sync_hedge_returns_the_fast_answer_and_closes_the_late_one() -> None:
    release = threading.Event()

    def slow(request: httpx.Request) -> Step:
        release.wait(10)
        return Step(200, content=b"slow")

    script = ScriptedTransport([slow, Step(200, content=b"fast")])
    transport = HedgingTransport(script, cx.Hedge(delay=0.01))
    client = httpx.Client(transport=transport)
    response = client.get("http://upstream/")
    assert response.content == b"fast"
    assert response.extensions["connectivity"].winner == 1
    # The losing attempt cannot be interrupted in a blocking client: let it finish, then check it was closed.
    pool = transport._executor
    assert pool is not None
    release.set()
    pool.shutdown(wait=True)
    assert script.responses == 2
    assert script.open_responses == 0
    client.close()


def test_no_hedge_when_the_first_answer_is_fast(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=0.1)], clock=clock)
    response = send(HedgingTransport(script, cx.Hedge(delay=0.5), clock=clock))
    assert response.status_code == 200
    assert len(script.requests) == 1
    assert response.extensions["connectivity"].hedges == 0


def test_a_failed_attempt_triggers_the_next_one_at_once(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, Step(200, content=b"second")], clock=clock)
    response = send(HedgingTransport(script, cx.Hedge(delay=5.0), clock=clock))
    assert response.content == b"second"
    assert script.open_responses == 0
    if send.is_async:
        assert clock.now() == 0


def test_when_every_attempt_fails_the_last_failure_is_returned(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 502], clock=clock)
    response = send(HedgingTransport(script, cx.Hedge(delay=0.1, max_extra=1), clock=clock))
    assert response.status_code == 502
    assert script.open_responses == 0


def test_post_and_streamed_bodies_are_not_hedged(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=1.0)], clock=clock)
    send(HedgingTransport(script, cx.Hedge(delay=0.1), clock=clock), "POST", content=b"x")
    assert len(script.requests) == 1


def test_hedges_respect_the_budget(send: Sender) -> None:
    clock = FakeClock()
    budget = cx.RetryBudget(ratio=0.0, min_per_second=0.0, ttl=10, clock=clock)
    script = ScriptedTransport([Step(200, delay=1.0)], clock=clock)
    response = send(HedgingTransport(script, cx.Hedge(delay=0.1, budget=budget), clock=clock))
    assert response.status_code == 200
    assert len(script.requests) == 1


def test_hedging_can_be_turned_off_per_request(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=1.0)], clock=clock)
    response = send(
        HedgingTransport(script, cx.Hedge(delay=0.1), clock=clock), extensions={"connectivity.hedge": False}
    )
    assert response.status_code == 200
    assert len(script.requests) == 1


def test_hedged_attempts_carry_their_attempt_number(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    send(HedgingTransport(script, cx.Hedge(delay=1.0), clock=clock))
    assert "x-connectivity-attempt" not in script.requests[0].headers
    assert script.requests[1].headers["x-connectivity-attempt"] == "2"
