import dataclasses
import enum
import gc
import json
import math
import threading
from collections.abc import Mapping

import httpx
import pytest

import connectivity as cx
from connectivity import admin
from connectivity.admin import Registry
from connectivity.transports import Layer

from .conftest import Broken, FakeBreaker, Slotted


def test_public_surface() -> None:
    assert admin.__all__ == sorted(admin.__all__)
    for name in admin.__all__:
        assert getattr(admin, name) is not None


def test_snapshot_has_the_well_known_kinds_even_when_empty(registry: Registry) -> None:
    assert registry.snapshot() == {"clients": {}, "breakers": {}, "limiters": {}, "endpoints": {}}


def test_snapshot_reads_sources_live(registry: Registry, breaker: FakeBreaker) -> None:
    assert registry.snapshot()["breakers"] == {"orders": {"state": "closed", "failures": 0}}
    breaker.state, breaker.failures = "open", 7
    assert registry.snapshot()["breakers"] == {"orders": {"state": "open", "failures": 7}}


def test_snapshot_of_some_kinds(registry: Registry, breaker: FakeBreaker) -> None:
    cache = FakeBreaker("warm")
    registry.register("caches", "jwks", cache)
    assert registry.snapshot("breakers") == {"breakers": {"orders": {"state": "closed", "failures": 0}}}
    assert registry.snapshot("limiters", "nothing") == {"limiters": {}, "nothing": {}}
    # other kinds appear in a full snapshot next to the well-known ones
    assert registry.snapshot()["caches"] == {"jwks": {"state": "warm", "failures": 0}}


def test_sources_are_held_weakly(registry: Registry) -> None:
    source = FakeBreaker()
    registry.register("breakers", "orders", source)
    assert "orders" in registry.snapshot()["breakers"]
    del source
    gc.collect()
    assert registry.snapshot()["breakers"] == {}
    assert repr(registry) == "<Registry empty>"  # the dead entry was dropped, not just hidden


def test_sources_that_cannot_be_weakly_referenced_are_held_strongly(registry: Registry) -> None:
    unregister = registry.register("endpoints", "a", Slotted())
    gc.collect()
    assert registry.snapshot()["endpoints"] == {"a": {"state": "up"}}
    unregister()
    assert registry.snapshot()["endpoints"] == {}


def test_a_failing_source_yields_an_error_entry_and_spares_the_others(registry: Registry) -> None:
    breaker = FakeBreaker()
    broken = Broken()
    registry.register("breakers", "orders", breaker)
    registry.register("breakers", "payments", broken)
    snapshot = registry.snapshot()
    assert snapshot["breakers"] == {
        "orders": {"state": "closed", "failures": 0},
        "payments": {"error": "RuntimeError"},
    }
    assert "secret" not in json.dumps(snapshot)


def test_a_source_returning_a_non_mapping_is_an_error(registry: Registry) -> None:
    class Wrong:
        def status(self) -> Mapping[str, object]:
            return ["not", "a", "mapping"]  # type: ignore[return-value]

    source = Wrong()
    registry.register("limiters", "x", source)
    assert registry.snapshot()["limiters"] == {"x": {"error": "TypeError"}}


class State(enum.Enum):
    OPEN = "open"
    HALF_OPEN = object()


@dataclasses.dataclass(frozen=True)
class Policy:
    failure_ratio: float
    open_for: float


def test_statuses_are_reduced_to_strict_json(registry: Registry) -> None:
    class Odd:
        def status(self) -> Mapping[str, object]:
            cyclic: dict[str, object] = {}
            cyclic["self"] = cyclic
            return {
                "state": State.OPEN,
                "other": State.HALF_OPEN,
                "policy": Policy(0.5, math.inf),
                "counts": {1: "one", 2: "two"},
                "tags": {"b", "a"},
                "nan": math.nan,
                "tuple": (1, 2.5),
                "object": _Opaque(),
                "cyclic": cyclic,
            }

    source = Odd()
    registry.register("breakers", "odd", source)
    status = registry.snapshot()["breakers"]["odd"]
    json.dumps(status, allow_nan=False, sort_keys=True)  # strict JSON, sortable keys
    assert isinstance(status, dict)
    assert status["state"] == "open"
    assert status["other"] == "HALF_OPEN"
    assert status["policy"] == {"failure_ratio": 0.5, "open_for": "inf"}
    assert status["counts"] == {"1": "one", "2": "two"}
    assert status["tags"] == ["a", "b"]
    assert status["nan"] == "nan"
    assert status["tuple"] == [1, 2.5]
    assert status["object"] == "opaque"


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


def test_registering_the_same_name_again_replaces_it(registry: Registry) -> None:
    first, second = FakeBreaker("closed"), FakeBreaker("open")
    unregister_first = registry.register("breakers", "orders", first)
    unregister_second = registry.register("breakers", "orders", second)
    assert registry.snapshot()["breakers"]["orders"] == {"state": "open", "failures": 0}
    unregister_first()  # stale: leaves the newer registration alone
    assert registry.snapshot()["breakers"]["orders"] == {"state": "open", "failures": 0}
    unregister_second()
    unregister_second()  # idempotent
    assert registry.snapshot()["breakers"] == {}


@pytest.mark.parametrize("bad", ["", "   ", 3, None])
def test_kind_and_name_must_be_non_empty_strings(registry: Registry, bad: object) -> None:
    with pytest.raises(cx.ConfigError, match="must be a non-empty string"):
        registry.register("breakers", bad, FakeBreaker())  # type: ignore[arg-type]
    with pytest.raises(cx.ConfigError):
        registry.register(bad, "orders", FakeBreaker())  # type: ignore[arg-type]
    with pytest.raises(cx.ConfigError):
        registry.register_client(bad, httpx.MockTransport(lambda request: httpx.Response(200)))  # type: ignore[arg-type]


def test_a_source_needs_a_status_method(registry: Registry) -> None:
    with pytest.raises(TypeError, match="status"):
        registry.register("breakers", "orders", object())  # type: ignore[arg-type]


def test_a_source_may_register_another_while_being_read(registry: Registry) -> None:
    class Registering:
        def __init__(self) -> None:
            self.child = FakeBreaker()

        def status(self) -> Mapping[str, object]:
            registry.register("breakers", "child", self.child)  # would deadlock if called under the lock
            return {"state": "closed"}

    source = Registering()
    registry.register("clients", "parent", source)
    registry.snapshot()
    assert "child" in registry.snapshot()["breakers"]


def test_concurrent_registration_and_snapshots(registry: Registry) -> None:
    keep = [FakeBreaker() for _ in range(200)]
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(offset, len(keep), 4):
                unregister = registry.register("breakers", f"b{i}", keep[i])
                if i % 3 == 0:
                    unregister()
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(200):
                registry.snapshot()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(registry.snapshot()["breakers"]) == sum(1 for i in range(200) if i % 3 != 0)


def test_module_functions_use_the_default_registry() -> None:
    source = FakeBreaker("half_open")
    unregister = admin.register("breakers", "test_registry-default", source)
    try:
        assert admin.snapshot()["breakers"]["test_registry-default"] == {"state": "half_open", "failures": 0}
        # Same names, same entry (other live breakers, left by earlier tests until collected, may report a
        # remaining open time that moves between two snapshots).
        by_module, by_registry = (
            admin.snapshot("breakers")["breakers"],
            admin.REGISTRY.snapshot("breakers")["breakers"],
        )
        assert by_module.keys() == by_registry.keys()
        assert by_module["test_registry-default"] == by_registry["test_registry-default"]
    finally:
        unregister()
    assert "test_registry-default" not in admin.snapshot()["breakers"]


def types(description: Mapping[str, object]) -> list[object]:
    layers = description["layers"]
    assert isinstance(layers, list)
    return [layer["type"] for layer in layers]


def test_describe_the_recommended_stack() -> None:
    transport = cx.transport(telemetry=False, request_id=False)
    assert types(admin.describe(transport)) == ["TimeoutTransport", "RetryTransport", "HTTPTransport"]


def test_describe_merges_what_layers_say_about_themselves() -> None:
    class Described(Layer):
        def describe(self) -> Mapping[str, object]:
            return {"policy": {"attempts": 3}, "type": "ignored"}

    class Failing(Layer):
        def describe(self) -> Mapping[str, object]:
            raise ValueError("nope")

    class NotAMapping(Layer):
        def describe(self) -> Mapping[str, object]:
            return "text"  # type: ignore[return-value]

    network = httpx.MockTransport(lambda request: httpx.Response(200))
    stack = Described(Failing(NotAMapping(network)))
    assert admin.describe(stack) == {
        "layers": [
            {"type": "Described", "policy": {"attempts": 3}},
            {"type": "Failing", "error": "ValueError"},
            {"type": "NotAMapping"},
            {"type": "MockTransport"},
        ]
    }


def test_describe_a_bare_transport() -> None:
    assert admin.describe(httpx.HTTPTransport()) == {"layers": [{"type": "HTTPTransport"}]}


def test_register_client_describes_the_stack_live_and_weakly(registry: Registry) -> None:
    class Switch(Layer):
        mode = "primary"

        def describe(self) -> Mapping[str, object]:
            return {"mode": self.mode}

    transport = Switch(cx.transport(telemetry=False, request_id=False))
    registry.register_client("orders", transport)
    client = registry.snapshot()["clients"]["orders"]
    assert isinstance(client, dict)
    assert types(client) == ["Switch", "TimeoutTransport", "RetryTransport", "HTTPTransport"]
    assert client["layers"][0] == {"type": "Switch", "mode": "primary"}
    transport.mode = "fallback"
    assert registry.snapshot()["clients"]["orders"]["layers"][0] == {"type": "Switch", "mode": "fallback"}  # type: ignore[index]
    del transport, client
    gc.collect()
    assert registry.snapshot()["clients"] == {}
