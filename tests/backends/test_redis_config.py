"""Bad arguments fail at construction with a ConfigError naming the field, and never show a password."""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis
import redis.asyncio

import connectivity.backends
from connectivity.backends.redis import RedisBreakerBackend, RedisCircuit
from connectivity.errors import ConfigError
from connectivity.policies.breaker import CircuitBreaker


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "http://127.0.0.1:6379"}, "RedisBreakerBackend.url"),
        ({"url": "redis://127.0.0.1:notaport/0"}, "RedisBreakerBackend.url"),
        ({"url": "redis://127.0.0.1:6379/notadb"}, "RedisBreakerBackend.url"),
        ({"url": "redis://127.0.0.1:6379/0?no_such_option=1"}, "RedisBreakerBackend.url"),
        ({"url": b"redis://127.0.0.1"}, "RedisBreakerBackend.url"),
        ({"prefix": ""}, "RedisBreakerBackend.prefix"),
        ({"prefix": "x{y}:"}, "RedisBreakerBackend.prefix"),
        ({"prefix": 3}, "RedisBreakerBackend.prefix"),
        ({"timeout": 0}, "RedisBreakerBackend.timeout"),
        ({"timeout": -1.0}, "RedisBreakerBackend.timeout"),
        ({"timeout": math.nan}, "RedisBreakerBackend.timeout"),
        ({"timeout": math.inf}, "RedisBreakerBackend.timeout"),
        ({"timeout": True}, "RedisBreakerBackend.timeout"),
        ({"timeout": "0.05"}, "RedisBreakerBackend.timeout"),
        ({"retry_redis_after": -0.1}, "RedisBreakerBackend.retry_redis_after"),
        ({"retry_redis_after": math.inf}, "RedisBreakerBackend.retry_redis_after"),
        ({"idle_ttl": 0}, "RedisBreakerBackend.idle_ttl"),
        ({"probe_lease": -5}, "RedisBreakerBackend.probe_lease"),
        ({"client": object()}, "RedisBreakerBackend.client"),
        ({"client": redis.Redis(socket_timeout=None)}, "RedisBreakerBackend.client"),  # could hang
        ({"async_client": redis.Redis(socket_timeout=1)}, "RedisBreakerBackend.async_client"),
        ({"async_client": redis.asyncio.Redis(socket_timeout=None)}, "RedisBreakerBackend.async_client"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisBreakerBackend(**kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@127.0.0.1:6379/0",
        "redis://:hunter2@127.0.0.1:bad/0",
        "redis://:hunter2@127.0.0.1:6379/0?no_such_option=1",
        "unix:///tmp/redis.sock?password=hunter2&bogus=1",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisBreakerBackend(url)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_good_arguments_and_redacted_repr() -> None:
    backend = RedisBreakerBackend("redis://app:hunter2@127.0.0.1:6379/2?password=hunter2", timeout=0.2)
    assert "hunter2" not in repr(backend)
    assert backend.url == "redis://app:***@127.0.0.1:6379/2?password=***"
    client = redis.Redis(socket_timeout=0.5)
    mine = RedisBreakerBackend(client=client, async_client=redis.asyncio.Redis(socket_timeout=0.5))
    assert mine.circuit(CircuitBreaker(name="x"))._backend is mine
    mine.close()  # not ours to close: the client stays usable
    client.close()
    backend.close()


def test_circuit_arguments_are_checked() -> None:
    backend = RedisBreakerBackend()
    with pytest.raises(ConfigError) as caught:
        backend.circuit("orders")  # type: ignore[arg-type]
    assert caught.value.field == "RedisBreakerBackend.circuit.breaker"
    with pytest.raises(ConfigError) as caught:
        backend.circuit(CircuitBreaker(), key=3)  # type: ignore[arg-type]
    assert caught.value.field == "RedisBreakerBackend.circuit.key"
    backend.close()


def test_the_lazy_exports_are_the_real_classes() -> None:
    # The names themselves are pinned in tests/test_public_api.py.
    assert connectivity.backends.RedisBreakerBackend is RedisBreakerBackend
    assert connectivity.backends.RedisCircuit is RedisCircuit
    with pytest.raises(AttributeError):
        connectivity.backends.Nope  # noqa: B018
    local_names = {"name", "state", "admit", "record", "isolate", "reset", "status"}
    assert local_names | {"remote", "aadmit", "arecord"} <= set(dir(RedisCircuit))
