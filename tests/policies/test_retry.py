import json
import math
from pathlib import Path

import pytest

from connectivity import Backoff, ConfigError, Retry, RetryBudget
from connectivity.policies import CONNECT_FAILURE, IDEMPOTENT_METHODS, PER_TRY_TIMEOUT, READ_TIMEOUT, RESET
from connectivity.testing import FakeClock

REGISTRY = json.loads((Path(__file__).parents[1] / "vectors" / "rfc9110-registries.json").read_text("utf-8"))


def test_default_methods_are_exactly_rfc9110_idempotent_methods() -> None:
    registered = {
        row["Method"]
        for row in REGISTRY["method.registration"]
        if row["Idempotent"] == "yes" and row["Method"] != "*"
    }
    assert Retry().methods == registered == IDEMPOTENT_METHODS


@pytest.mark.parametrize(
    ("status", "retry_after", "retried"),
    [
        (502, None, True),
        (503, None, True),
        (504, None, True),
        (500, None, False),
        (200, None, False),
        (404, None, False),
        (429, None, False),
        (429, "2", True),
        (429, "garbage", False),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", True),
    ],
)
def test_default_status_classification(status: int, retry_after: str | None, retried: bool) -> None:
    assert (Retry().status_reason(status, retry_after) is not None) is retried


@pytest.mark.parametrize("kind", [CONNECT_FAILURE, RESET, READ_TIMEOUT, PER_TRY_TIMEOUT])
def test_default_error_classification(kind: str) -> None:
    assert Retry().error_reason(kind) == kind
    assert Retry(retry_on={CONNECT_FAILURE}).error_reason(kind) == (kind if kind == CONNECT_FAILURE else None)


def test_post_is_retried_only_with_an_idempotency_key_or_when_not_sent() -> None:
    policy = Retry()
    assert not policy.method_allows("POST", has_idempotency_key=False, sent=True)
    assert policy.method_allows("POST", has_idempotency_key=True, sent=True)
    assert policy.method_allows("POST", has_idempotency_key=False, sent=False)
    assert policy.method_allows("PUT", has_idempotency_key=False, sent=True)


def test_decisions_stop_at_the_attempt_limit() -> None:
    state = Retry(attempts=3, backoff=Backoff.none()).start()
    assert state.decide("status 503", method_ok=True, replayable=True).retry
    assert state.decide("status 503", method_ok=True, replayable=True).retry
    final = state.decide("status 503", method_ok=True, replayable=True)
    assert not final.retry
    assert final.give_up == "attempts exhausted"
    assert state.attempts == 3
    assert state.reasons == ["status 503"] * 3


def test_retry_after_is_honoured_and_capped_and_garbage_falls_back_to_backoff() -> None:
    policy = Retry(attempts=5, backoff=Backoff.constant(0.3), retry_after_cap=10)
    state = policy.start()
    assert state.decide("status 503", method_ok=True, replayable=True, retry_after="2").delay == 2
    assert state.decide("status 503", method_ok=True, replayable=True, retry_after="120").delay == 10
    assert state.decide("status 503", method_ok=True, replayable=True, retry_after="soon").delay == 0.3
    epoch = 1_700_000_000
    date = "Tue, 14 Nov 2023 22:13:25 GMT"  # epoch + 5 s
    assert state.decide("status 503", method_ok=True, replayable=True, retry_after=date, wall_now=epoch).delay == 5


def test_no_retry_for_unsafe_method_or_unreplayable_body() -> None:
    state = Retry().start()
    decision = state.decide("status 503", method_ok=False, replayable=True)
    assert (decision.retry, decision.give_up) == (False, "method is not idempotent")
    decision = Retry().start().decide("reset", method_ok=True, replayable=False)
    assert (decision.retry, decision.give_up) == (False, "request body is not replayable")


def test_no_retry_when_the_wait_would_outlive_the_deadline() -> None:
    state = Retry(backoff=Backoff.constant(1.0)).start()
    decision = state.decide("status 503", method_ok=True, replayable=True, remaining=0.5)
    assert (decision.retry, decision.give_up) == (False, "deadline too close for another attempt")


def test_budget_is_consulted_only_for_real_retries() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10, clock=FakeClock())  # exactly one retry
    policy = Retry(attempts=5, backoff=Backoff.none(), budget=budget)
    state = policy.start()
    assert state.decide("reset", method_ok=False, replayable=True).give_up == "method is not idempotent"
    assert state.decide("reset", method_ok=True, replayable=True).retry
    decision = state.decide("reset", method_ok=True, replayable=True)
    assert (decision.retry, decision.give_up) == (False, "retry budget exhausted")


def test_configuration_is_normalised() -> None:
    policy = Retry(methods=["get", "post"], statuses=[503], idempotency_header="X-Request-Key")
    assert policy.methods == frozenset({"GET", "POST"})
    assert policy.statuses == frozenset({503})
    assert policy.idempotency_header == "x-request-key"
    hash(policy)  # frozen and hashable: safe to share


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "Retry.attempts"),
        ({"attempts": 2.5}, "Retry.attempts"),
        ({"attempts": True}, "Retry.attempts"),
        ({"backoff": 0.1}, "Retry.backoff"),
        ({"budget": 0.2}, "Retry.budget"),
        ({"retry_on": {"timeouts"}}, "Retry.retry_on"),
        ({"retry_on": "reset"}, "Retry.retry_on"),
        ({"statuses": {700}}, "Retry.statuses"),
        ({"statuses": {"503"}}, "Retry.statuses"),
        ({"statuses_requiring_retry_after": {42}}, "Retry.statuses_requiring_retry_after"),
        ({"methods": {"GET /"}}, "Retry.methods"),
        ({"idempotency_header": ""}, "Retry.idempotency_header"),
        ({"retry_after_cap": -1}, "Retry.retry_after_cap"),
        ({"retry_after_cap": math.nan}, "Retry.retry_after_cap"),
        ({"per_try_timeout": 0}, "Retry.per_try_timeout"),
        ({"per_try_timeout": -1.0}, "Retry.per_try_timeout"),
        ({"per_try_timeout": math.nan}, "Retry.per_try_timeout"),
        ({"max_replay_bytes": -1}, "Retry.max_replay_bytes"),
        ({"prefer_other_endpoint": "yes"}, "Retry.prefer_other_endpoint"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Retry(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)
