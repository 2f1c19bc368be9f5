"""FaultyUpstream under a real uvicorn server: every knob does what it says, seen from a real httpx client."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import httpx
import pytest

from connectivity.errors import ConfigError
from connectivity.testing.plugin import UpstreamFactory
from connectivity.testing.server import RunningServer, serve
from connectivity.testing.system import REQUIRE_ENV, require_binary
from connectivity.testing.upstream import RESET_EXTENSION, Faults, FaultyUpstream, UpstreamStats

Upstream = RunningServer[FaultyUpstream]


def disconnected(count: int = 1) -> Any:
    return lambda stats: stats.disconnects >= count


def no_uvicorn_errors(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.ERROR]


# -- success path and recording -------------------------------------------------------------------------------


def test_ok_response_names_the_replica_and_echoes_the_attempt(faulty_upstream: Upstream) -> None:
    with httpx.Client(base_url=faulty_upstream.url) as client:
        response = client.get("/orders", headers={"x-connectivity-attempt": "2", "idempotency-key": "k1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["replica"] == "upstream"
    assert body["attempt"] == "2"
    assert body["headers"] == {"x-connectivity-attempt": "2", "idempotency-key": "k1"}
    stats = faulty_upstream.app.stats
    assert (stats.requests, stats.ok, stats.completed, stats.in_flight) == (1, 1, 1, 0)
    assert stats.by_path == {"/orders": 1}
    assert stats.by_method == {"GET": 1}
    [record] = stats.records
    assert (record.method, record.path, record.outcome, record.status) == ("GET", "/orders", "ok", 200)
    assert record.header("Idempotency-Key") == "k1"


def test_body_bytes_are_recorded_exactly(faulty_upstream: Upstream) -> None:
    payload = bytes(range(256)) * 300  # 76.8 kB: arrives in several ASGI body messages

    def chunks() -> Iterator[bytes]:
        yield payload[:1000]
        yield payload[1000:]

    with httpx.Client(base_url=faulty_upstream.url) as client:
        first = client.post("/pay", content=payload)
        second = client.post("/pay", content=chunks())  # chunked transfer encoding
    assert first.json()["body_bytes"] == second.json()["body_bytes"] == len(payload)
    assert [r.body for r in faulty_upstream.app.stats.records] == [payload, payload]


def test_reset_stats_zeroes_counters(faulty_upstream: Upstream) -> None:
    with httpx.Client(base_url=faulty_upstream.url) as client:
        client.get("/")
        faulty_upstream.app.wait_for(lambda s: s.in_flight == 0)  # the record lands just after the response
        faulty_upstream.app.reset_stats()
        client.put("/x")
    stats = faulty_upstream.app.stats
    assert (stats.requests, stats.ok, stats.by_method) == (1, 1, {"PUT": 1})
    assert [r.seq for r in stats.records] == [2]  # arrival numbers keep counting


# -- errors ------------------------------------------------------------------------------------------------------


def test_error_rate_one_answers_the_error_status_with_retry_after(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(error_rate=1.0, error_status=502, retry_after="2")
    with httpx.Client(base_url=faulty_upstream.url) as client:
        responses = [client.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [502] * 3
    assert all(r.headers["retry-after"] == "2" for r in responses)
    assert responses[0].json()["replica"] == "upstream"
    stats = faulty_upstream.app.stats
    assert (stats.errors, stats.ok, stats.completed) == (3, 0, 3)


def test_error_without_retry_after_has_no_header(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(error_rate=1.0)
    with httpx.Client(base_url=faulty_upstream.url) as client:
        response = client.get("/")
    assert response.status_code == 503
    assert "retry-after" not in response.headers


def test_seeded_error_rate_is_repeatable(faulty_upstream_factory: UpstreamFactory) -> None:
    faults = Faults(error_rate=0.5)
    a = faulty_upstream_factory("a", faults=faults, seed=7)
    b = faulty_upstream_factory("b", faults=faults, seed=7)
    statuses = []
    for server in (a, b):
        with httpx.Client(base_url=server.url) as client:
            statuses.append([client.get("/").status_code for _ in range(40)])
    assert statuses[0] == statuses[1]
    assert {200, 503} == set(statuses[0])


# -- latency and disconnects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("latency", [0.2, ("uniform", 0.2, 0.3), lambda: 0.2])
def test_latency_delays_the_response(faulty_upstream: Upstream, latency: Any) -> None:
    faulty_upstream.app.faults = Faults(latency=latency)
    with httpx.Client(base_url=faulty_upstream.url) as client:
        began = time.monotonic()
        response = client.get("/")
        elapsed = time.monotonic() - began
    assert response.status_code == 200
    assert elapsed >= 0.2
    assert faulty_upstream.app.stats.records[0].duration >= 0.2


def test_client_timing_out_during_latency_is_a_disconnect(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(latency=0.3)
    with httpx.Client(base_url=faulty_upstream.url, timeout=0.05) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/slow")
    stats = faulty_upstream.app.wait_for(disconnected())
    [record] = stats.records
    assert (record.outcome, record.status) == ("disconnect", None)
    assert record.duration < 0.3  # noticed while waiting, not after the latency ran out
    assert (stats.completed, stats.in_flight) == (0, 0)


def test_hang_until_the_client_gives_up(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(hang=True)
    with httpx.Client(base_url=faulty_upstream.url, timeout=0.1) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/")
    stats = faulty_upstream.app.wait_for(disconnected())
    assert stats.records[0].outcome == "disconnect"
    faulty_upstream.wait_for_connections(0)


@pytest.mark.anyio
async def test_async_client_timeout_during_latency_is_a_disconnect(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(latency=3.0)
    async with httpx.AsyncClient(base_url=faulty_upstream.url, timeout=0.05) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/")
    stats = await faulty_upstream.app.await_for(disconnected())
    # The upstream noticed the client leaving during the latency, not when it was over (with room for a loaded
    # 2-core CI machine: the client left after 0.05 s, the latency lasts 3 s).
    assert stats.records[0].duration < 1.5


@pytest.mark.anyio
async def test_cancelled_hanging_requests_are_in_flight_then_disconnects(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(hang=True)
    async with (
        httpx.AsyncClient(base_url=faulty_upstream.url, timeout=None) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(3):
            tg.start_soon(client.get, "/")
        stats = await faulty_upstream.app.await_for(lambda s: s.in_flight == 3)
        assert stats.max_in_flight == 3
        tg.cancel_scope.cancel()
    stats = await faulty_upstream.app.await_for(disconnected(3))
    assert (stats.in_flight, stats.completed) == (0, 0)


# -- resets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "error"), [("rst", httpx.ReadError), ("close", httpx.RemoteProtocolError)])
def test_reset_drops_the_connection_without_a_response(
    faulty_upstream: Upstream, mode: Any, error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    faulty_upstream.app.faults = Faults(reset_rate=1.0, reset_mode=mode)
    with httpx.Client(base_url=faulty_upstream.url) as client:
        with pytest.raises(error):
            client.post("/", content=b"payload")
        faulty_upstream.app.faults = Faults()
        assert client.get("/").status_code == 200  # a fresh connection works
    stats = faulty_upstream.app.stats
    assert (stats.resets, stats.ok) == (1, 1)
    [reset, _] = stats.records
    assert (reset.outcome, reset.status, reset.body) == ("reset", None, b"payload")
    faulty_upstream.wait_for_connections(0)
    assert no_uvicorn_errors(caplog)  # uvicorn did not try to answer 500


@pytest.mark.anyio
async def test_async_reset_is_a_read_error(faulty_upstream: Upstream) -> None:
    faulty_upstream.app.faults = Faults(reset_rate=1.0)
    async with httpx.AsyncClient(base_url=faulty_upstream.url) as client:
        with pytest.raises(httpx.ReadError):
            await client.get("/")
    assert faulty_upstream.app.stats.resets == 1


def test_reset_needs_the_server_extension() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def call() -> None:
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        app = FaultyUpstream(faults=Faults(reset_rate=1.0))
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        with pytest.raises(RuntimeError, match=RESET_EXTENSION):
            await app(scope, receive, send)

    anyio.run(call)
    assert sent == []


# -- connections and the server --------------------------------------------------------------------------------


def test_open_connections_return_to_zero_after_the_client_closes(faulty_upstream: Upstream) -> None:
    with httpx.Client(base_url=faulty_upstream.url) as client:
        for _ in range(3):
            client.get("/")
        assert faulty_upstream.open_connections == 1  # one keep-alive connection, reused
    faulty_upstream.wait_for_connections(0)
    assert faulty_upstream.open_connections == 0
    assert faulty_upstream.connections_opened == 1
    assert faulty_upstream.active_tasks == 0


def test_wait_for_connections_times_out_while_a_client_holds_one(faulty_upstream: Upstream) -> None:
    with httpx.Client(base_url=faulty_upstream.url) as client:
        client.get("/")
        with pytest.raises(TimeoutError, match="1 connection"):
            faulty_upstream.wait_for_connections(0, timeout=0.05)


def test_wait_for_reports_the_last_counters_on_timeout(faulty_upstream: Upstream) -> None:
    with pytest.raises(TimeoutError, match=r"requests=0"):
        faulty_upstream.app.wait_for(lambda s: s.requests > 0, timeout=0.01)


def test_serve_runs_any_asgi_app_on_loopback() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve(app, name="plain") as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url).status_code == 204
    assert RESET_EXTENSION in seen[0]["extensions"]
    assert seen[0]["server"][0] == "127.0.0.1"


# -- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"error_rate": 1.5}, "Faults.error_rate"),
        ({"reset_rate": -0.1}, "Faults.reset_rate"),
        ({"hang": "yes"}, "Faults.hang"),
        ({"error_status": 200}, "Faults.error_status"),
        ({"retry_after": "1\r\nx: y"}, "Faults.retry_after"),
        ({"latency": -1}, "Faults.latency"),
        ({"latency": ("uniform", 0.3, 0.1)}, "Faults.latency"),
        ({"latency": ("normal", 1.0)}, "Faults.latency"),
        ({"reset_mode": "drop"}, "Faults.reset_mode"),
    ],
)
def test_faults_are_validated(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Faults(**kwargs)
    assert info.value.field == field


def test_hang_true_means_every_request() -> None:
    assert Faults(hang=True).hang == 1.0


def test_stats_snapshot_is_immutable() -> None:
    stats = FaultyUpstream(rng=random.Random(0)).stats
    assert isinstance(stats, UpstreamStats)
    assert stats.requests == 0
    with pytest.raises(AttributeError):
        stats.requests = 1  # type: ignore[misc]


# -- plugin and system helpers -----------------------------------------------------------------------------------


def test_factory_starts_named_replicas(faulty_upstream_factory: UpstreamFactory) -> None:
    servers = [faulty_upstream_factory(name) for name in ("a", "b", "c")]
    assert len({s.port for s in servers}) == 3
    names = [json.loads(httpx.get(s.url).content)["replica"] for s in servers]
    assert names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="already running"):
        faulty_upstream_factory("a")


def test_fake_clock_fixture(fake_clock: Any) -> None:
    from connectivity.testing.clock import FakeClock

    assert isinstance(fake_clock, FakeClock)


def test_system_marker_is_registered(pytestconfig: pytest.Config) -> None:
    assert any(str(line).startswith("system:") for line in pytestconfig.getini("markers"))


def test_require_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require_binary("sh").endswith("sh")
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        require_binary("connectivity-no-such-binary")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        require_binary("connectivity-no-such-binary")
