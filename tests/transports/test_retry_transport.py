from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

import connectivity as cx
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import RetryTransport

from .conftest import Sender


def stack(script: ScriptedTransport, clock: FakeClock, **retry: object) -> RetryTransport:
    return RetryTransport(script, cx.Retry(**retry), clock=clock)  # type: ignore[arg-type]


def test_503_then_200_succeeds_in_two_attempts(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(stack(script, clock))
    assert response.status_code == 200
    record = response.extensions["connectivity"]
    assert record.attempts == 2
    assert record.reasons == ("status 503",)
    assert len(script.requests) == 2
    assert script.open_responses == 0  # the discarded 503 was closed, the 200 read and closed


def test_success_path_reports_one_attempt(send: Sender) -> None:
    clock = FakeClock()
    response = send(stack(ScriptedTransport([200], clock=clock), clock))
    assert response.extensions["connectivity"].attempts == 1
    assert clock.sleeps == []


def test_post_is_not_resent_after_a_503_or_a_reset(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503], clock=clock)
    response = send(stack(script, clock), "POST", content=b"order")
    assert response.status_code == 503
    assert len(script.requests) == 1
    assert response.extensions["connectivity"].gave_up == "method is not idempotent"

    script = ScriptedTransport([httpx.RemoteProtocolError], clock=clock)
    with pytest.raises(httpx.RemoteProtocolError):
        send(stack(script, clock), "POST", content=b"order")
    assert len(script.requests) == 1


def test_post_with_idempotency_key_is_resent(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(stack(script, clock), "POST", content=b"order", headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 200
    assert [r.body for r in script.requests] == [b"order", b"order"]


def test_post_is_resent_after_a_connect_error(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([httpx.ConnectError, 200], clock=clock)
    response = send(stack(script, clock), "POST", content=b"order")
    assert response.status_code == 200
    assert response.extensions["connectivity"].reasons == ("connect-failure",)
    assert len(script.requests) == 2


def test_retry_after_two_seconds_waits_two_virtual_seconds(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(503, headers={"Retry-After": "2"}), 200], clock=clock)
    response = send(stack(script, clock, backoff=cx.Backoff.constant(0.01)))
    assert response.status_code == 200
    assert clock.sleeps == [2.0]
    assert clock.now() == 2.0


def test_retry_after_over_the_cap_is_capped(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(429, headers={"Retry-After": "3600"}), 200], clock=clock)
    response = send(stack(script, clock, retry_after_cap=5.0))
    assert response.status_code == 200
    assert clock.sleeps == [5.0]


def test_garbage_retry_after_falls_back_to_backoff(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(503, headers={"Retry-After": "tomorrow-ish"}), 200], clock=clock)
    response = send(stack(script, clock, backoff=cx.Backoff.constant(0.25)))
    assert response.status_code == 200
    assert clock.sleeps == [0.25]


def test_429_without_retry_after_is_returned_not_retried(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([429], clock=clock)
    assert send(stack(script, clock)).status_code == 429
    assert len(script.requests) == 1


def test_http_date_retry_after_uses_the_clock_wall_time(send: Sender) -> None:
    clock = FakeClock(epoch=1_700_000_000)  # 2023-11-14 22:13:20 GMT
    script = ScriptedTransport(
        [Step(503, headers={"Retry-After": "Tue, 14 Nov 2023 22:13:23 GMT"}), 200], clock=clock
    )
    assert send(stack(script, clock)).status_code == 200
    assert clock.sleeps == [3.0]


def test_exhausted_errors_raise_retries_exhausted_chaining_the_last_cause(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([httpx.ConnectError] * 3, clock=clock)
    with pytest.raises(cx.RetriesExhaustedError) as info:
        send(stack(script, clock))
    error = info.value
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert error.attempts == 3
    assert error.reasons == ("connect-failure",) * 3
    assert error.request.url == "http://upstream/"


def test_exhausted_responses_return_the_last_response(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 502, 504], clock=clock)
    response = send(stack(script, clock))
    assert response.status_code == 504
    record = response.extensions["connectivity"]
    assert (record.attempts, record.gave_up) == (3, "attempts exhausted")
    assert script.open_responses == 0


def test_errors_no_policy_retries_propagate_unchanged(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([httpx.UnsupportedProtocol], clock=clock)
    with pytest.raises(httpx.UnsupportedProtocol):
        send(stack(script, clock))
    assert len(script.requests) == 1


def test_backoff_waits_between_attempts(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 503, 200], clock=clock)
    send(stack(script, clock, backoff=cx.Backoff.constant(0.5)))
    assert clock.sleeps == [0.5, 0.5]


def test_per_request_override(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(stack(script, clock), extensions={"connectivity.retry": cx.Retry.disabled()})
    assert response.status_code == 503
    assert len(script.requests) == 1


def test_retries_mark_the_attempt_for_the_load_balancer(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    send(stack(script, clock))
    second = script.requests[1].extensions
    assert second["connectivity.attempt"] == 2
    assert second["connectivity.prefer_other_endpoint"] is True


def test_budget_stops_retries_at_ratio_plus_floor_under_sustained_failure(send: Sender) -> None:
    clock = FakeClock()
    budget = cx.RetryBudget(ratio=0.2, min_per_second=10, ttl=10, clock=clock)
    script = ScriptedTransport(default=503, clock=clock)
    transport = RetryTransport(script, cx.Retry(attempts=3, backoff=cx.Backoff.none(), budget=budget), clock=clock)
    requests = 500

    def sync() -> list[httpx.Response]:
        with httpx.Client(transport=transport) as client:
            return [client.get("http://upstream/") for _ in range(requests)]

    async def async_() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport) as client:
            return [await client.get("http://upstream/") for _ in range(requests)]

    responses = send.run(sync, async_)
    retries = len(script.requests) - requests
    assert retries == 0.2 * requests + 10 * 10
    assert all(r.status_code == 503 for r in responses)
    gave_up = [r.extensions["connectivity"].gave_up for r in responses]
    assert gave_up.count("retry budget exhausted") > 0
    assert script.open_responses == 0


def test_budget_exhaustion_on_errors_raises_the_budget_error(send: Sender) -> None:
    clock = FakeClock()
    budget = cx.RetryBudget(ratio=0.0, min_per_second=0.0, ttl=10, clock=clock)
    script = ScriptedTransport([httpx.ConnectError], clock=clock)
    with pytest.raises(cx.RetryBudgetExhaustedError) as info:
        send(RetryTransport(script, cx.Retry(budget=budget), clock=clock))
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def sync_chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 1024):
        yield b"x" * 1024


async def async_chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 1024):
        yield b"x" * 1024


def body(send: Sender, size: int) -> Iterator[bytes] | AsyncIterator[bytes]:
    return async_chunks(size) if send.is_async else sync_chunks(size)


def test_a_generator_body_beyond_the_replay_buffer_is_not_retried(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(stack(script, clock), "PUT", content=body(send, 128 * 1024))
    assert response.status_code == 503
    assert len(script.requests) == 1
    assert response.extensions["connectivity"].gave_up == "request body is not replayable"


def test_a_generator_body_is_never_retried_without_a_replay_buffer(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(stack(script, clock, max_replay_bytes=0), "PUT", content=body(send, 4096))
    assert response.status_code == 503
    assert len(script.requests) == 1


def test_a_small_generator_body_is_replayed_byte_for_byte(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(stack(script, clock), "PUT", content=body(send, 8 * 1024))
    assert response.status_code == 200
    assert [len(r.body) for r in script.requests] == [8192, 8192]
    assert script.requests[0].body == script.requests[1].body


def test_sync_client_over_async_only_inner_is_a_clear_type_error() -> None:
    transport = RetryTransport(httpx.AsyncHTTPTransport())
    with httpx.Client(transport=transport) as client, pytest.raises(TypeError, match="async-only"):
        client.get("http://127.0.0.1:9/")


def test_inner_must_be_a_transport() -> None:
    with pytest.raises(TypeError, match="inner transport"):
        RetryTransport("http://upstream")  # type: ignore[arg-type]
