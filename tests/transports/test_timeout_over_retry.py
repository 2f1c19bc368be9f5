"""A total timeout directly over a retry layer: the retry layer does the timeout layer's work in its own frame.

Each scenario runs through that stack and through the same stack with fusion turned off (a ``RetryTransport``
subclass that handles calls itself, which the timeout layer must then call like any other transport), and the
two must agree on everything an application can see: the answer or the error (its type, message and cause), the
time it took on the virtual clock, the attempts the upstream saw with their headers, the call's record, and the
request's timeouts afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

import connectivity as cx
from connectivity.policies import DEADLINE_HEADER
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import RetryTransport, TimeoutTransport

from .conftest import Sender


class SocketBoundScript(ScriptedTransport):
    """A scripted upstream that bounds its waits by the ambient deadline, as the network transport's sockets do."""

    connectivity_deadline_aware = True

    @staticmethod
    def _read_timeout(request: httpx.Request) -> float | None:
        timeout = ScriptedTransport._read_timeout(request)
        ambient = cx.current_deadline()
        if ambient is None:
            return timeout
        left = max(ambient.remaining(), 0.0)
        return left if timeout is None else min(timeout, left)


class SeparateRetry(RetryTransport):
    """A retry layer that handles its calls itself: the timeout layer above it keeps a frame of its own."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return super().handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await super().handle_async_request(request)


@dataclass
class Scenario:
    steps: list[Step]
    timeout: float = 1.0
    retry: cx.Retry | None = None
    propagate: bool = False
    ambient: float | None = None
    override: float | None = None


SCENARIOS = {
    "success": Scenario([Step(200, content=b"ok")]),
    "a 503 retried, then success": Scenario(
        [Step(503, delay=0.1), Step(200, delay=0.1)], retry=cx.Retry(backoff=cx.Backoff.constant(0.2))
    ),
    "slower than the deadline": Scenario([Step(200, delay=3.0)]),
    "retries until the deadline": Scenario(
        [], retry=cx.Retry(attempts=10, backoff=cx.Backoff.constant(0.3)), timeout=1.0
    ),
    "a backoff the deadline cannot cover": Scenario(
        [Step(503, delay=0.4)], retry=cx.Retry(attempts=10, backoff=cx.Backoff.constant(0.7))
    ),
    "connect errors until retries run out": Scenario(
        [Step(httpx.ConnectError)] * 3, retry=cx.Retry(backoff=cx.Backoff.constant(0.1))
    ),
    "a non-retryable error": Scenario([Step(httpx.UnsupportedProtocol)]),
    "the deadline announced upstream": Scenario([Step(200)], propagate=True),
    "a tighter ambient deadline": Scenario([Step(200, delay=2.0)], timeout=5.0, ambient=0.5),
    "an ambient deadline already spent": Scenario([Step(200)], ambient=0.0),
    "a per-request override": Scenario([Step(200, delay=0.8)], override=0.5),
}


def _stack(
    scenario: Scenario, clock: FakeClock, retry_class: type[RetryTransport]
) -> tuple[Any, ScriptedTransport]:
    default = Step(503, delay=0.4) if not scenario.steps else None
    script = SocketBoundScript(list(scenario.steps), default=default, clock=clock)
    retry = retry_class(script, scenario.retry or cx.Retry(backoff=cx.Backoff.none()), clock=clock)
    return TimeoutTransport(retry, scenario.timeout, propagate=scenario.propagate, clock=clock), script


def _outcome(send: Sender, scenario: Scenario, retry_class: type[RetryTransport]) -> dict[str, Any]:
    clock = FakeClock()
    transport, script = _stack(scenario, clock, retry_class)
    extensions: dict[str, Any] = {"timeout": {"connect": 9.0, "read": 9.0, "write": 9.0, "pool": 9.0}}
    if scenario.override is not None:
        extensions["connectivity.timeout"] = scenario.override
    outcome: dict[str, Any]
    try:
        if scenario.ambient is not None:
            with cx.deadline(scenario.ambient, clock):
                response = send(transport, extensions=extensions)
        else:
            response = send(transport, extensions=extensions)
    except Exception as exc:
        cause = exc.__cause__
        outcome = {"error": type(exc), "message": str(exc), "cause": None if cause is None else type(cause)}
    else:
        record = response.extensions["connectivity"]
        outcome = {
            "status": response.status_code,
            "content": response.content,
            "record": (record.attempts, record.reasons, record.waits, record.gave_up),
        }
    outcome["elapsed"] = clock.now()
    outcome["attempts"] = [
        (request.headers.get("x-connectivity-attempt"), request.headers.get(DEADLINE_HEADER))
        for request in script.requests
    ]
    outcome["timeouts seen upstream"] = [request.extensions.get("timeout") for request in script.requests]
    outcome["in flight"] = script.in_flight
    return outcome


def test_the_timeout_layer_hands_its_calls_to_the_retry_layer_directly_inside() -> None:
    fused, _ = _stack(SCENARIOS["success"], FakeClock(), RetryTransport)
    separate, _ = _stack(SCENARIOS["success"], FakeClock(), SeparateRetry)
    assert isinstance(fused.handle_request, partial)
    assert isinstance(fused.handle_async_request, partial)
    assert fused.handle_request.args == (fused.inner, fused)
    assert fused.handle_async_request.args == (fused.inner, fused)
    # A retry subclass that handles calls its own way is called as any inner transport.
    assert not isinstance(separate.handle_request, partial)
    assert not isinstance(separate.handle_async_request, partial)


def test_no_handover_where_the_timeout_layer_must_cancel_or_is_per_try() -> None:
    clock = FakeClock()
    # Over a transport that does not bound its own waits, an async call needs the layer's cancel scope.
    not_at_socket = TimeoutTransport(RetryTransport(ScriptedTransport(clock=clock)), 1.0, clock=clock)
    per_try = TimeoutTransport(RetryTransport(SocketBoundScript(clock=clock)), 1.0, per_try=True, clock=clock)

    class OwnCalls(TimeoutTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return super().handle_request(request)

    own = OwnCalls(RetryTransport(SocketBoundScript(clock=clock)), 1.0, clock=clock)
    for transport in (not_at_socket, per_try, own):
        assert not isinstance(transport.handle_request, partial)
        assert not isinstance(transport.handle_async_request, partial)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_handover_changes_nothing_an_application_sees(send: Sender, name: str) -> None:
    scenario = SCENARIOS[name]
    fused = _outcome(send, scenario, RetryTransport)
    separate = _outcome(send, scenario, SeparateRetry)
    assert fused == separate
    assert fused["in flight"] == 0


def test_scenarios_cover_answers_deadlines_and_errors(send: Sender) -> None:
    # The comparison above means something only if the scenarios reach each way a call can end.
    outcomes = {name: _outcome(send, scenario, RetryTransport) for name, scenario in SCENARIOS.items()}
    assert outcomes["success"]["status"] == 200
    assert outcomes["a 503 retried, then success"]["record"][0] == 2
    assert outcomes["slower than the deadline"]["error"] is cx.DeadlineExceededError
    assert outcomes["slower than the deadline"]["elapsed"] == 1.0
    assert outcomes["retries until the deadline"]["error"] is cx.DeadlineExceededError
    assert outcomes["a backoff the deadline cannot cover"]["status"] == 503
    assert outcomes["connect errors until retries run out"]["error"] is cx.RetriesExhaustedError
    assert outcomes["a non-retryable error"]["error"] is httpx.UnsupportedProtocol
    assert outcomes["the deadline announced upstream"]["attempts"] == [(None, "1000")]
    assert outcomes["a tighter ambient deadline"]["elapsed"] == 0.5
    assert outcomes["an ambient deadline already spent"]["attempts"] == []
    assert outcomes["a per-request override"]["elapsed"] == 0.5
    # The request's own timeouts: only the pool wait is clamped (the sockets bound the rest).
    assert outcomes["success"]["timeouts seen upstream"] == [
        {"connect": 9.0, "read": 9.0, "write": 9.0, "pool": 1.0}
    ]
