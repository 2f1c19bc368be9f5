import warnings

import httpx
import pytest

import connectivity as cx
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import (
    AutoTransport,
    HedgingTransport,
    HTTPTransport,
    RequestIDTransport,
    RetryTransport,
    TimeoutTransport,
    TracingTransport,
)

from .conftest import Sender


def layers(transport: object) -> list[type]:
    found = []
    while isinstance(transport, cx.transports.Layer):
        found.append(type(transport))
        transport = transport.inner
    found.append(type(transport))
    return found


OBSERVABILITY = [TracingTransport, RequestIDTransport]
"""The layers every default stack starts with."""


def core(transport: object) -> object:
    """The stack under the observability layers."""
    while isinstance(transport, (TracingTransport, RequestIDTransport)):
        transport = transport.inner
    return transport


def test_recommended_order_outermost_first() -> None:
    transport = cx.transport(timeout=cx.Timeout(total=5.0, per_try=1.0), hedge=cx.Hedge(delay=0.1))
    assert layers(transport) == [
        *OBSERVABILITY,
        TimeoutTransport,
        RetryTransport,
        HedgingTransport,
        TimeoutTransport,
        HTTPTransport,
    ]


def test_defaults_retry_idempotent_requests_under_a_budget() -> None:
    transport = cx.transport()
    assert layers(transport) == [*OBSERVABILITY, TimeoutTransport, RetryTransport, HTTPTransport]
    retry = core(transport).inner  # type: ignore[attr-defined]
    assert isinstance(retry, RetryTransport)
    assert retry.retry.budget is not None
    assert retry.retry.attempts == 3


def test_retry_false_leaves_only_the_deadline_layer() -> None:
    assert layers(cx.transport(retry=False)) == [*OBSERVABILITY, TimeoutTransport, HTTPTransport]
    assert layers(cx.transport(retry=cx.Retry.disabled())) == [*OBSERVABILITY, TimeoutTransport, HTTPTransport]


def test_hedges_share_the_retry_budget() -> None:
    budget = cx.RetryBudget()
    transport = cx.transport(retry=cx.Retry(budget=budget), hedge=cx.Hedge(delay=0.1))
    hedging = core(transport).inner.inner  # type: ignore[attr-defined]
    assert isinstance(hedging, HedgingTransport)
    assert hedging.hedge.budget is budget


def test_one_stack_serves_sync_and_async_clients(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 200], clock=clock)
    response = send(cx.transport(script, timeout=5.0, clock=clock))
    assert response.status_code == 200
    assert response.extensions["connectivity"].attempts == 2


def test_per_try_timeout_set_twice_is_rejected() -> None:
    with pytest.raises(cx.ConfigError, match="set it once") as info:
        cx.transport(timeout=cx.Timeout(total=5, per_try=1), retry=cx.Retry(per_try_timeout=2))
    assert info.value.field == "Retry.per_try_timeout"


def test_retry_per_try_longer_than_total_is_rejected() -> None:
    with pytest.raises(cx.ConfigError, match=r"Timeout\.total"):
        cx.transport(timeout=1.0, retry=cx.Retry(per_try_timeout=2))


def test_hedging_that_cannot_fit_in_the_total_is_rejected() -> None:
    with pytest.raises(cx.ConfigError, match="does not fit") as info:
        cx.transport(timeout=cx.Timeout(total=1.0, per_try=0.8), hedge=cx.Hedge(delay=0.3, max_extra=1))
    assert info.value.field == "Hedge.delay"
    with pytest.raises(cx.ConfigError, match="does not fit"):
        cx.transport(timeout=1.0, hedge=cx.Hedge(delay=0.5, max_extra=2))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout": "10s"}, "transport.timeout"),
        ({"timeout": -1}, "Timeout.total"),
        ({"timeout": float("nan")}, "Timeout.total"),
        ({"retry": 3}, "transport.retry"),
        ({"hedge": 0.1}, "transport.hedge"),
        ({"backend": "curl"}, "transport.backend"),
        ({"backend": "auto", "inner": HTTPTransport()}, "transport.backend"),
        ({"backend": "httpcore", "inner": HTTPTransport()}, "transport.backend"),
        ({"http2": True, "inner": HTTPTransport()}, "transport.http2"),
        ({"htp2": True}, "transport.htp2"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(cx.ConfigError) as info:
        cx.transport(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_retries_at_two_layers_warn() -> None:
    inner = RetryTransport(ScriptedTransport([200]))
    with pytest.warns(cx.ConnectivityWarning, match="more than one layer"):
        cx.transport(inner)
    with pytest.warns(cx.ConnectivityWarning, match="retries=2"):
        cx.transport(httpx.HTTPTransport(retries=2))
    with pytest.warns(cx.ConnectivityWarning, match="retries=1"):
        cx.transport(HTTPTransport(retries=1))
    for backend in ("httpcore", "auto"):
        with pytest.warns(cx.ConnectivityWarning, match="retries=1"):
            cx.transport(backend=backend, retries=1)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cx.transport(httpx.HTTPTransport())
        cx.transport(inner, retry=False)


@pytest.mark.parametrize(
    ("backend", "network"),
    [(None, HTTPTransport), ("httpcore", HTTPTransport), ("auto", AutoTransport)],
)
def test_the_backend_names_the_network_transport(backend: str | None, network: type) -> None:
    transport = cx.transport(backend=backend, limits=httpx.Limits(max_connections=7))  # type: ignore[arg-type]
    built = layers(transport)[-1]
    assert built is network
    assert built.backend == (backend or "httpcore")  # type: ignore[attr-defined]


def test_network_options_reach_httpcore() -> None:
    transport = cx.transport(http2=True, limits=httpx.Limits(max_connections=7), retry=False)
    network = core(transport).inner  # type: ignore[attr-defined]
    assert isinstance(network, HTTPTransport)
    assert network.sync._pool._http2  # type: ignore[attr-defined]
    assert network.sync._pool._max_connections == 7  # type: ignore[attr-defined]
    network.close()


def test_http_transport_creates_each_pool_on_first_use() -> None:
    transport = HTTPTransport()
    assert transport._sync is None
    assert transport._async is None
    assert isinstance(transport.sync, httpx.HTTPTransport)
    assert transport._async is None
    transport.close()


def test_hedged_stack_end_to_end_on_fake_time() -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=2.0, content=b"slow"), Step(200, content=b"fast")], clock=clock)
    transport = cx.transport(script, timeout=cx.Timeout(total=3.0), hedge=cx.Hedge(delay=0.2), clock=clock)
    response = Sender("trio")(transport)
    assert response.content == b"fast"
    assert clock.now() == pytest.approx(0.2)


def test_attempt_numbers_are_unique_across_retries_and_hedges(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport([503, 503, 200], clock=clock)
    transport = cx.transport(
        script, retry=cx.Retry(backoff=cx.Backoff.none()), hedge=cx.Hedge(delay=1.0), clock=clock
    )
    response = send(transport)
    assert response.status_code == 200
    assert [r.headers.get("x-connectivity-attempt") for r in script.requests] == [None, "2", "3"]
    record = response.extensions["connectivity"]
    assert record.attempts == 2  # the retry layer's count: the first hedged group, then one retry


def test_a_named_stack_shows_in_the_status_registry_live() -> None:
    from connectivity import admin

    budget = cx.RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10.0)
    transport = cx.transport(ScriptedTransport([503, 200]), retry=cx.Retry(budget=budget), name="builder-orders")
    layers_shown = admin.snapshot("clients")["clients"]["builder-orders"]["layers"]  # type: ignore[index]
    assert [layer["type"] for layer in layers_shown] == [
        "TracingTransport",
        "RequestIDTransport",
        "TimeoutTransport",
        "RetryTransport",
        "ScriptedTransport",
    ]
    assert layers_shown[3]["budget"]["remaining"] == 1.0
    with httpx.Client(transport=transport) as client:
        assert client.get("http://upstream/").status_code == 200  # one retry, withdrawn from the budget
    retry_shown = admin.snapshot("clients")["clients"]["builder-orders"]["layers"][3]  # type: ignore[index]
    assert retry_shown["budget"]["remaining"] == 0.0


def test_bad_names_and_telemetry_are_config_errors() -> None:
    with pytest.raises(cx.ConfigError, match=r"transport\.name"):
        cx.transport(name="")
    with pytest.raises(cx.ConfigError, match=r"transport\.telemetry"):
        cx.transport(telemetry="yes")  # type: ignore[arg-type]


def test_bulkhead_and_adaptive_limits_sit_inside_the_breaker() -> None:
    from connectivity.transports import AdaptiveConcurrencyTransport, BulkheadTransport, CircuitBreakerTransport

    stack = cx.transport(breaker=cx.CircuitBreaker(), bulkhead=cx.Bulkhead(max_concurrent=8))
    assert layers(core(stack))[:4] == [
        TimeoutTransport,
        RetryTransport,
        CircuitBreakerTransport,
        BulkheadTransport,
    ]
    adaptive = cx.transport(retry=False, bulkhead=cx.AdaptiveConcurrency(algorithm=cx.AIMD()))
    assert layers(core(adaptive))[:2] == [TimeoutTransport, AdaptiveConcurrencyTransport]


def test_bad_bulkheads_and_a_backend_without_a_breaker_are_config_errors() -> None:
    with pytest.raises(cx.ConfigError, match=r"transport\.bulkhead"):
        cx.transport(bulkhead=64)  # type: ignore[arg-type]
    with pytest.raises(cx.ConfigError, match=r"transport\.breaker_backend"):
        cx.transport(breaker_backend=object())


def test_the_rate_limit_sits_inside_retry_and_outside_the_breaker() -> None:
    from connectivity.transports import CircuitBreakerTransport, RateLimitTransport

    stack = cx.transport(breaker=cx.CircuitBreaker(), rate_limit=cx.RateLimiter("10/s"))
    assert layers(core(stack))[:4] == [
        TimeoutTransport,
        RetryTransport,
        RateLimitTransport,
        CircuitBreakerTransport,
    ]
    with pytest.raises(cx.ConfigError, match=r"transport\.rate_limit"):
        cx.transport(rate_limit="10/s")
