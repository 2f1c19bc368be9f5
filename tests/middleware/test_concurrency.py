"""ConcurrencyLimitMiddleware: shed with 503 + Retry-After + problem JSON over the limit, bypass, adaptive."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from connectivity.admin.registry import snapshot
from connectivity.errors import ConfigError
from connectivity.middleware.concurrency import ConcurrencyLimitMiddleware
from connectivity.policies.bulkhead import Bulkhead
from connectivity.policies.concurrency import AIMD, AdaptiveConcurrency
from connectivity.telemetry import events
from connectivity.testing import FakeClock

Call = Callable[..., Awaitable[list[dict[str, Any]]]]

PROBLEM = {
    "type": "about:blank",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "concurrency limit reached",
}


class Held:
    """An ASGI app whose ``/slow`` requests wait until released; every other path answers at once."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.entered = 0
        self.released: anyio.Event | None = None
        self.inside: anyio.Event | None = None
        self.seen: list[str] = []

    def arm(self) -> None:
        self.released = anyio.Event()
        self.inside = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(scope["type"] if scope["type"] != "http" else scope["path"])
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            assert self.released is not None
            assert self.inside is not None
            self.entered += 1
            self.inside.set()
            await self.released.wait()
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _response(messages: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
    start = messages[0]
    assert start["type"] == "http.response.start"
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in start["headers"]}
    body = b"".join(message.get("body", b"") for message in messages[1:])
    return start["status"], headers, body


async def _while_full(
    middleware: Any, app: Held, asgi_call: Call, http_scope: Callable[..., dict[str, Any]], *paths: str
) -> dict[str, list[dict[str, Any]]]:
    """Hold one ``/slow`` request inside the app, send ``paths`` meanwhile, then let it finish."""
    app.arm()
    assert app.inside is not None
    assert app.released is not None
    results: dict[str, list[dict[str, Any]]] = {}

    async def slow() -> None:
        results["/slow#held"] = await asgi_call(middleware, http_scope(path="/slow", raw_path=b"/slow"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow)
        await app.inside.wait()
        for path in paths:
            results[path] = await asgi_call(middleware, http_scope(path=path, raw_path=path.encode()))
        app.released.set()
    return results


@pytest.fixture
def rejections() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def listener(name: str, attributes: Any) -> None:
        if name == events.CONCURRENCY_REJECTED:
            seen.append(dict(attributes))

    unsubscribe = events.subscribe(listener)
    yield seen
    unsubscribe()


# -- shedding ---------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_over_the_limit_answers_503_with_retry_after_and_a_problem_body(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]], rejections: list[dict[str, Any]]
) -> None:
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=1, name="test-inbound")
    results = await _while_full(middleware, app, asgi_call, http_scope, "/slow")
    status, headers, body = _response(results["/slow"])
    assert status == 503
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == PROBLEM
    assert app.entered == 1  # the shed request never reached the app
    assert _response(results["/slow#held"])[0] == 200
    assert rejections == [{"connectivity.reason": "test-inbound: full"}]
    assert middleware.limiter.in_flight == 0


@pytest.mark.anyio
async def test_requests_under_the_limit_all_pass(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=2)
    results = await _while_full(middleware, app, asgi_call, http_scope, "/a", "/b")
    assert [_response(results[path])[0] for path in ("/a", "/b")] == [200, 200]  # one held + one at a time


@pytest.mark.parametrize(("retry_after", "header"), [(0, "1"), (0.2, "1"), (1.0, "1"), (2.5, "3"), (30, "30")])
@pytest.mark.anyio
async def test_retry_after_is_whole_seconds_and_at_least_one(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]], retry_after: float, header: str
) -> None:
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=1, retry_after=retry_after)
    results = await _while_full(middleware, app, asgi_call, http_scope, "/x")
    assert _response(results["/x"])[1]["retry-after"] == header


@pytest.mark.anyio
async def test_default_excluded_paths_bypass_the_limit_exactly(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=1)
    paths = ("/health", "/healthz", "/ready", "/metrics", "/health/deep", "/readyz", "/")
    results = await _while_full(middleware, app, asgi_call, http_scope, *paths)
    statuses = {path: _response(results[path])[0] for path in paths}
    assert statuses == {
        "/health": 200,
        "/healthz": 200,
        "/ready": 200,
        "/metrics": 200,
        "/health/deep": 503,  # exact match only: "/health" does not end with "/"
        "/readyz": 503,
        "/": 503,
    }


@pytest.mark.anyio
async def test_a_path_ending_with_a_slash_excludes_everything_under_it(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=1, exclude_paths=["/internal/", "/status"])
    paths = ("/internal/", "/internal/jobs/7", "/internal", "/status", "/status/x", "/health")
    results = await _while_full(middleware, app, asgi_call, http_scope, *paths)
    statuses = {path: _response(results[path])[0] for path in paths}
    assert statuses == {
        "/internal/": 200,
        "/internal/jobs/7": 200,
        "/internal": 503,
        "/status": 200,
        "/status/x": 503,
        "/health": 503,  # the defaults were replaced
    }


@pytest.mark.anyio
async def test_non_http_scopes_pass_through_even_when_full(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=1)
    app.arm()
    assert app.inside is not None
    assert app.released is not None

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent for these scopes")

    async with anyio.create_task_group() as tg:
        tg.start_soon(asgi_call, middleware, http_scope(path="/slow", raw_path=b"/slow"))
        await app.inside.wait()
        await middleware({"type": "lifespan"}, receive, send)
        await middleware({"type": "websocket", "path": "/ws"}, receive, send)
        app.released.set()
    assert app.seen == ["/slow", "lifespan", "websocket"]


@pytest.mark.anyio
async def test_the_slot_is_freed_when_the_app_raises_or_is_cancelled(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    middleware = ConcurrencyLimitMiddleware(failing, limit=1)
    with pytest.raises(RuntimeError):
        await asgi_call(middleware, http_scope())
    assert middleware.limiter.in_flight == 0

    app = Held()
    app.arm()
    middleware = ConcurrencyLimitMiddleware(app, limit=1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await asgi_call(middleware, http_scope(path="/slow", raw_path=b"/slow"))
    assert app.entered == 1  # cancelled inside the app, holding the slot
    assert middleware.limiter.in_flight == 0


@pytest.mark.anyio
async def test_a_shared_bulkhead_limits_several_apps_together(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    shared = Bulkhead(max_concurrent=1, name="test-shared-inbound")
    app = Held()
    first = ConcurrencyLimitMiddleware(app, limit=shared)
    second = ConcurrencyLimitMiddleware(Held(), limit=shared)
    app.arm()
    assert app.inside is not None
    assert app.released is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(asgi_call, first, http_scope(path="/slow", raw_path=b"/slow"))
        await app.inside.wait()
        assert _response(await asgi_call(second, http_scope()))[0] == 503
        app.released.set()
    assert shared.in_flight == 0


@pytest.mark.anyio
async def test_shadow_mode_counts_but_never_sheds(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    shadow = Bulkhead(max_concurrent=1, shadow=True, name="test-shadow-inbound")
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=shadow)
    results = await _while_full(middleware, app, asgi_call, http_scope, "/x")
    assert _response(results["/x"])[0] == 200
    assert shadow.rejected == 1


# -- adaptive ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "limit_after"), [(200, 3), (404, 3), (500, 1), (503, 1)])
@pytest.mark.anyio
async def test_adaptive_limit_samples_each_request(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]], status: int, limit_after: int
) -> None:
    clock = FakeClock()
    limiter = AdaptiveConcurrency(AIMD(backoff_ratio=0.5), initial_limit=2, max_limit=10)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.25)  # the app's work, on the virtual clock
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ConcurrencyLimitMiddleware(app, limit=limiter, clock=clock)
    assert _response(await asgi_call(middleware, http_scope()))[0] == status
    state = limiter.status()
    # one request in flight out of 2 uses the limit: a success adds 1, a 5xx (a drop) halves it
    assert (state["samples"], state["drops"], state["in_flight"]) == (1, int(status >= 500), 0)
    assert limiter.limit == limit_after


@pytest.mark.anyio
async def test_adaptive_an_exception_is_a_drop_and_a_cancellation_is_no_sample(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    limiter = AdaptiveConcurrency(AIMD(backoff_ratio=0.5), initial_limit=4)

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await asgi_call(ConcurrencyLimitMiddleware(failing, limit=limiter), http_scope())
    assert (limiter.limit, limiter.status()["drops"], limiter.in_flight) == (2, 1, 0)

    app = Held()
    app.arm()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await asgi_call(
            ConcurrencyLimitMiddleware(app, limit=limiter), http_scope(path="/slow", raw_path=b"/slow")
        )
    assert app.entered == 1
    assert (limiter.status()["samples"], limiter.in_flight) == (1, 0)


@pytest.mark.anyio
async def test_adaptive_sheds_over_its_current_limit(
    asgi_call: Call, http_scope: Callable[..., dict[str, Any]]
) -> None:
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=1, max_limit=1)
    app = Held()
    middleware = ConcurrencyLimitMiddleware(app, limit=limiter)
    results = await _while_full(middleware, app, asgi_call, http_scope, "/x")
    status, headers, body = _response(results["/x"])
    assert (status, headers["retry-after"], json.loads(body)) == (503, "1", PROBLEM)


# -- configuration ----------------------------------------------------------------------------------------------
async def _noop(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "ConcurrencyLimitMiddleware.limit"),
        ({"limit": -5}, "ConcurrencyLimitMiddleware.limit"),
        ({"limit": True}, "ConcurrencyLimitMiddleware.limit"),
        ({"limit": 2.5}, "ConcurrencyLimitMiddleware.limit"),
        ({"limit": "100"}, "ConcurrencyLimitMiddleware.limit"),
        ({"limit": Bulkhead(max_queued=5)}, "ConcurrencyLimitMiddleware.limit"),
        ({"exclude_paths": "/health"}, "ConcurrencyLimitMiddleware.exclude_paths"),
        ({"exclude_paths": ["health"]}, "ConcurrencyLimitMiddleware.exclude_paths"),
        ({"exclude_paths": [None]}, "ConcurrencyLimitMiddleware.exclude_paths"),
        ({"exclude_paths": 5}, "ConcurrencyLimitMiddleware.exclude_paths"),
        ({"retry_after": -1}, "ConcurrencyLimitMiddleware.retry_after"),
        ({"retry_after": math.nan}, "ConcurrencyLimitMiddleware.retry_after"),
        ({"retry_after": math.inf}, "ConcurrencyLimitMiddleware.retry_after"),
        ({"name": ""}, "ConcurrencyLimitMiddleware.name"),
    ],
)
def test_bad_configuration_is_refused_eagerly(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConcurrencyLimitMiddleware(_noop, **kwargs)
    assert info.value.field == field


def test_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="ConcurrencyLimitMiddleware"):
        ConcurrencyLimitMiddleware(None)  # type: ignore[arg-type]


def test_the_limit_is_shown_by_the_status_app() -> None:
    middleware = ConcurrencyLimitMiddleware(_noop, limit=7, name="test-inbound-status")
    status = snapshot("limiters")["limiters"]["test-inbound-status"]
    assert (status["limit"], status["in_flight"], status["kind"]) == (7, 0, "bulkhead")
    assert middleware.limiter.max_concurrent == 7


# -- a real server ----------------------------------------------------------------------------------------------
class Blocking:
    """A real-server app: ``/slow`` waits (in a worker thread) until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.cond = threading.Condition()
        self.inside = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            with self.cond:
                self.inside += 1
                self.cond.notify_all()
            await anyio.to_thread.run_sync(self.gate.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"done"})

    def wait_inside(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.inside >= count, 5), f"{self.inside} inside, wanted {count}"


def test_real_server_sheds_over_the_limit_and_keeps_health_reachable(server: Any) -> None:
    app = Blocking()
    srv = server(ConcurrencyLimitMiddleware(app, limit=2, retry_after=2))
    answers: list[httpx.Response] = []

    def hold() -> None:
        answers.append(httpx.get(f"{srv.url}/slow", timeout=10))

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    try:
        app.wait_inside(2)
        shed = httpx.get(f"{srv.url}/slow")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "2"
        assert shed.headers["content-type"] == "application/problem+json"
        assert shed.json() == PROBLEM
        health = httpx.get(f"{srv.url}/health")  # overloaded, yet the probe gets through
        assert (health.status_code, health.text) == (200, "done")
    finally:
        app.gate.set()
        for thread in holders:
            thread.join(10)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert app.inside == 2  # the shed request never reached the app
