"""RateLimitTransport: waiting (FIFO, bounded by max_wait and the deadline), refusing, cooperative hold-offs.

Every timing runs on a FakeClock (a wait of a second costs nothing); async tests run on asyncio and trio, arrival
order is set with virtual sleeps, and the one sync queueing test waits on conditions, never on sleeps.
"""

from __future__ import annotations

import email.utils
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.admin.registry import snapshot
from connectivity.errors import ConfigError, RateLimitedError
from connectivity.policies.ratelimit import RateLimit, RateLimiter
from connectivity.telemetry import events
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import ratelimit as ratelimit_module
from connectivity.transports._ratelimit_fields import hold_off_seconds, parse_sf_list
from connectivity.transports.ratelimit import RateLimitTransport

from .conftest import Sender

BACKENDS = ["asyncio", "trio"]


class Upstream:
    """A scripted upstream that records, per request, the virtual time it was sent at."""

    def __init__(self, clock: FakeClock, script: list[Any] | None = None) -> None:
        self.clock = clock
        self.sent: list[tuple[str, float]] = []
        self._script = list(script or [])

        def step(request: httpx.Request) -> Any:
            self.sent.append((f"{request.url.host}{request.url.path}", clock.now()))
            return self._script.pop(0) if self._script else 200

        self.transport = ScriptedTransport(default=step, clock=clock)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.sent]


def one_per_second(clock: FakeClock, name: str = "outbound") -> RateLimiter:
    return RateLimiter(RateLimit(1, 1.0, burst=1, name="1/s"), name=name, clock=clock)


@pytest.fixture
def decisions() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    def listener(name: str, attributes: Any) -> None:
        if name in (events.RATE_LIMIT_WAIT, events.RATE_LIMIT_REFUSED):
            seen.append((name, dict(attributes)))

    unsubscribe = events.subscribe(listener)
    yield seen
    unsubscribe()


# -- every client kind: sync, asyncio, trio -----------------------------------------------------------------------
def test_wait_mode_spaces_calls_to_the_configured_rate(
    send: Sender, decisions: list[tuple[str, dict[str, Any]]]
) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    limiter = RateLimiter(RateLimit(2, 1.0, burst=1, name="2/s"), clock=clock)
    transport = RateLimitTransport(upstream.transport, limiter, max_wait=5.0, clock=clock)
    for _ in range(4):
        assert send(transport).status_code == 200
    assert [at for _, at in upstream.sent] == [0.0, 0.5, 1.0, 1.5]
    assert (
        decisions
        == [
            (events.RATE_LIMIT_WAIT, {"connectivity.reason": "2/s", "connectivity.delay": 0.5}),
        ]
        * 3
    )


def test_a_wait_longer_than_the_deadline_is_refused_at_once(
    send: Sender, decisions: list[tuple[str, dict[str, Any]]]
) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    transport = RateLimitTransport(upstream.transport, one_per_second(clock), max_wait=5.0, clock=clock)
    send(transport)
    with cx.deadline(0.5), pytest.raises(RateLimitedError, match="the deadline") as caught:
        send(transport)
    assert (caught.value.limit, caught.value.limiter, caught.value.retry_after) == ("1/s", "outbound", 1.0)
    assert clock.now() == 0.0  # refused without waiting for nothing
    assert upstream.paths == ["upstream/"]  # nothing sent
    assert decisions[-1] == (events.RATE_LIMIT_REFUSED, {"connectivity.reason": "1/s", "connectivity.delay": 1.0})
    with cx.deadline(5.0):  # a deadline the wait fits in
        send(transport)
    assert upstream.sent[-1] == ("upstream/", 1.0)


def test_a_wait_longer_than_max_wait_is_refused_at_once(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    transport = RateLimitTransport(upstream.transport, one_per_second(clock), max_wait=0.2, clock=clock)
    send(transport)
    with pytest.raises(RateLimitedError, match="max_wait") as caught:
        send(transport)
    assert caught.value.retry_after == 1.0
    assert isinstance(caught.value, httpx.TransportError)
    assert clock.now() == 0.0
    assert len(upstream.sent) == 1


def test_reject_mode_raises_with_retry_after(send: Sender, decisions: list[tuple[str, dict[str, Any]]]) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    limiter = RateLimiter(RateLimit(2, 1.0, burst=1, name="2/s"), name="orders-out", clock=clock)
    transport = RateLimitTransport(upstream.transport, limiter, mode="reject", clock=clock)
    send(transport, url="http://upstream/a")
    with pytest.raises(RateLimitedError) as caught:
        send(transport, url="http://upstream/b?token=secret")
    error = caught.value
    assert (error.limiter, error.limit, error.retry_after) == ("orders-out", "2/s", 0.5)
    assert error.request.url.path == "/b"
    assert "secret" not in str(error)  # the URL in the message is redacted
    assert "nothing was sent" in str(error)
    assert upstream.paths == ["upstream/a"]
    assert decisions == [(events.RATE_LIMIT_REFUSED, {"connectivity.reason": "2/s", "connectivity.delay": 0.5})]
    clock.advance(0.5)
    send(transport, url="http://upstream/c")
    assert upstream.paths == ["upstream/a", "upstream/c"]


def test_a_429_with_retry_after_holds_off_that_host(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "1"})])
    limiter = RateLimiter("100/s", clock=clock)
    transport = RateLimitTransport(upstream.transport, limiter, max_wait=5.0, clock=clock)
    assert send(transport, url="http://upstream/first").status_code == 429
    assert limiter.wait_time("upstream") == pytest.approx(1.0)  # the limiter was told (shared limiters hold off)
    send(transport, url="http://other/")  # another host is not held off
    send(transport, url="http://upstream/second")  # waits out the hold-off
    send(transport, url="http://upstream/third")  # then calls flow again
    assert upstream.sent == [
        ("upstream/first", 0.0),
        ("other/", 0.0),
        ("upstream/second", 1.0),
        ("upstream/third", 1.0),
    ]
    assert transport.describe()["held_off"] == {}


def test_a_hold_off_longer_than_the_limiters_memory_still_holds(send: Sender) -> None:
    # "100/s" forgets an idle key after 1 s; the transport keeps the 5 s hold-off itself.
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "5"})])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), max_wait=10.0, clock=clock
    )
    send(transport)
    send(transport)
    assert [at for _, at in upstream.sent] == [0.0, 5.0]


def test_a_held_off_host_is_refused_in_reject_mode(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "1"})])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), mode="reject", clock=clock
    )
    send(transport)
    assert transport.describe()["held_off"] == {"upstream": 1.0}
    with pytest.raises(RateLimitedError) as caught:
        send(transport)
    assert (caught.value.limit, caught.value.retry_after) == ("retry-after", 1.0)
    clock.advance(1.0)
    assert send(transport).status_code == 200


def test_an_http_date_retry_after_on_503_holds_off(send: Sender) -> None:
    clock = FakeClock()
    date = email.utils.formatdate(clock.time() + 2, usegmt=True)
    upstream = Upstream(clock, [Step(503, headers={"Retry-After": date})])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), max_wait=5.0, clock=clock
    )
    send(transport)
    send(transport)
    assert [at for _, at in upstream.sent] == [0.0, 2.0]


@pytest.mark.parametrize(
    ("headers", "hold"),
    [
        ({"RateLimit": '"default";r=0;t=3'}, 3.0),
        ({"RateLimit": '"burst";r=4;t=1, "daily";r=0;t=2'}, 2.0),
        ({"RateLimit": '"daily";r=0', "RateLimit-Policy": '"daily";q=100;w=4'}, 4.0),
        ({"RateLimit-Policy": '"closed";q=0;w=2'}, 2.0),
        ({"RateLimit": '"p";r=0;t=3;pk=:cHsdsRa894==:;acme-x="y"'}, 3.0),
    ],
)
def test_exhausted_ietf_ratelimit_fields_hold_off(send: Sender, headers: dict[str, str], hold: float) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(200, headers=headers)])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), max_wait=5.0, clock=clock
    )
    send(transport)
    send(transport)
    assert [at for _, at in upstream.sent] == [0.0, hold]


def test_retry_after_takes_precedence_over_ratelimit(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "1", "RateLimit": '"d";r=0;t=4'})])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), max_wait=5.0, clock=clock
    )
    send(transport)
    send(transport)
    assert [at for _, at in upstream.sent] == [0.0, 1.0]


MALFORMED = [
    (429, {"Retry-After": "soon"}),
    (429, {"Retry-After": "-1"}),
    (429, {"Retry-After": "1.5"}),
    (429, {"Retry-After": "Fri, 31 Feb 2024 10:00:00 GMT"}),
    (200, {"Retry-After": "5"}),  # Retry-After counts on 429 and 503 only
    (200, {"RateLimit": "default;r=0;t=5"}),  # a token, not a string
    (200, {"RateLimit": '"default";r=0;t=abc'}),
    (200, {"RateLimit": '"default";r=-1;t=5'}),
    (200, {"RateLimit": '"default";r=0;t=5,'}),
    (200, {"RateLimit": '"default";t=5'}),  # r is required
    (200, {"RateLimit": '"default";r=0;t=1000000000000000'}),  # 16 digits: not an sf-integer
    (200, {"RateLimit": '"default";r=0;t=2.5'}),  # not an integer
    (200, {"RateLimit": '"unterminated;r=0;t=5'}),
    (200, {"RateLimit": '"a";r=0;t=5 "b";r=0;t=5'}),  # no comma between members
    (200, {"RateLimit": '"default";r=?1;t=5'}),
    (200, {"RateLimit-Policy": '"p";q=0;w=0'}),  # a window of 0 s is invalid
    (200, {"RateLimit-Policy": '"p";w=10'}),  # q is required
    (200, {"RateLimit": '"default";r=3;t=5'}),  # valid, and not exhausted
    (200, {"RateLimit": '("a" "b");r=0;t=5'}),  # an inner list is not a String item
]


@pytest.mark.parametrize(("status", "headers"), MALFORMED)
def test_malformed_or_irrelevant_fields_are_ignored(send: Sender, status: int, headers: dict[str, str]) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(status, headers=headers)])
    limiter = RateLimiter("100/s", clock=clock)
    transport = RateLimitTransport(upstream.transport, limiter, mode="reject", clock=clock)
    assert send(transport).status_code == status
    assert send(transport).status_code == 200  # not held off, and no exception
    assert limiter.wait_time("upstream") == 0.0


def test_a_huge_hold_off_is_capped(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "99999999"})])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), mode="reject", max_hold_off=30.0, clock=clock
    )
    send(transport)
    with pytest.raises(RateLimitedError) as caught:
        send(transport)
    assert caught.value.retry_after == 30.0


def test_adapt_false_ignores_retry_after(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "5"})])
    transport = RateLimitTransport(
        upstream.transport, RateLimiter("100/s", clock=clock), mode="reject", adapt=False, clock=clock
    )
    send(transport)
    assert send(transport).status_code == 200


def test_scope_host_keys_per_authority(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    limiter = one_per_second(clock)
    transport = RateLimitTransport(upstream.transport, limiter, scope="host", mode="reject", clock=clock)
    send(transport, url="http://a/")
    send(transport, url="http://b:8080/")
    with pytest.raises(RateLimitedError):
        send(transport, url="http://a/other")
    assert sorted(limiter.keys()) == ["a", "b:8080"]


def test_scope_route_keys_per_method_and_template(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    limiter = one_per_second(clock)
    transport = RateLimitTransport(upstream.transport, limiter, scope="route", mode="reject", clock=clock)
    users = {"connectivity.route": "/users/{id}"}
    send(transport, url="http://api/users/1", extensions=users)
    with pytest.raises(RateLimitedError):
        send(transport, url="http://api/users/2", extensions=users)  # the same route: the same key
    send(transport, "POST", url="http://api/users/2", extensions=users)  # another method
    send(transport, url="http://api/orders/7")  # no template: the path
    assert sorted(limiter.keys()) == ["GET /orders/7", "GET /users/{id}", "POST /users/{id}"]


def test_per_request_cost_and_bypass(send: Sender) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    limiter = RateLimiter(RateLimit(2, 1.0, burst=2, name="2/s"), clock=clock)
    transport = RateLimitTransport(upstream.transport, limiter, mode="reject", clock=clock)
    send(transport, extensions={"connectivity.rate_limit": 2})  # the whole burst at once
    with pytest.raises(RateLimitedError):
        send(transport)
    send(transport, extensions={"connectivity.rate_limit": False})  # not limited
    assert len(upstream.sent) == 2


# -- async: queueing on asyncio and trio --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_async_waiters_are_served_in_arrival_order(backend: str) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    transport = RateLimitTransport(upstream.transport, one_per_second(clock), max_wait=10.0, clock=clock)

    async def call(client: httpx.AsyncClient, number: int, arrival: float) -> None:
        await clock.asleep(arrival)
        await client.get(f"http://upstream/{number}")

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            # Started out of order: arrival time decides. /4 arrives exactly when a permit frees up at 1.0; /1,
            # the head of the queue, is owed it, so /4 queues behind /3 instead of taking it (as /5 at 2.0).
            for number, arrival in ((3, 0.375), (1, 0.125), (4, 1.0), (0, 0.0), (5, 2.0), (2, 0.25)):
                tg.start_soon(call, client, number, arrival)

    anyio.run(main, backend=backend)
    assert upstream.sent == [
        ("upstream/0", 0.0),
        ("upstream/1", 1.0),
        ("upstream/2", 2.0),
        ("upstream/3", 3.0),
        ("upstream/4", 4.0),
        ("upstream/5", 5.0),
    ]
    assert transport.describe()["waiting"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_queue_estimate_counts_the_callers_ahead(backend: str) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    transport = RateLimitTransport(upstream.transport, one_per_second(clock), max_wait=1.5, clock=clock)
    outcomes: dict[str, tuple[str, float]] = {}

    async def call(client: httpx.AsyncClient, name: str, arrival: float) -> None:
        await clock.asleep(arrival)
        try:
            await client.get(f"http://upstream/{name}")
            outcomes[name] = ("sent", clock.now())
        except RateLimitedError as error:
            outcomes[name] = (f"refused, retry after {error.retry_after:g}", clock.now())

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            tg.start_soon(call, client, "first", 0.0)
            tg.start_soon(call, client, "second", 0.125)  # waits 0.875 s
            tg.start_soon(call, client, "third", 0.25)  # alone: 0.75 s; behind the second: 1.75 s > 1.5 s

    anyio.run(main, backend=backend)
    assert outcomes == {
        "first": ("sent", 0.0),
        "second": ("sent", 1.0),
        "third": ("refused, retry after 1.75", 0.25),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_cancellation_while_waiting_takes_nothing(backend: str) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    limiter = one_per_second(clock)
    transport = RateLimitTransport(upstream.transport, limiter, max_wait=10.0, clock=clock)
    log: list[tuple[str, float]] = []

    async def call(client: httpx.AsyncClient, name: str, arrival: float, give_up_after: float = 60.0) -> None:
        await clock.asleep(arrival)
        with clock.timeout_scope(give_up_after):
            await client.get(f"http://upstream/{name}")
            log.append((f"{name} sent", clock.now()))
            return
        log.append((f"{name} cancelled", clock.now()))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            tg.start_soon(call, client, "first", 0.0)
            tg.start_soon(call, client, "head", 0.1, 0.4)  # head of the queue, gives up at 0.5
            tg.start_soon(call, client, "behind", 0.2, 0.2)  # behind it, gives up at 0.4
            tg.start_soon(call, client, "next", 0.3)  # moves up to the head when the others leave
            tg.start_soon(call, client, "late", 0.75)  # arrives after the cancellations

    anyio.run(main, backend=backend)
    # Neither cancelled caller took a permit: "next" goes at 1.0, "late" at 2.0.
    assert log == [
        ("first sent", 0.0),
        ("behind cancelled", 0.4),
        ("head cancelled", 0.5),
        ("next sent", 1.0),
        ("late sent", 2.0),
    ]
    assert upstream.paths == ["upstream/first", "upstream/next", "upstream/late"]
    assert transport.describe()["waiting"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("async_hold_off", [True, False])
def test_async_remote_limiter_is_awaited(backend: str, async_hold_off: bool) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, [Step(429, headers={"Retry-After": "1"})])
    loop_thread: list[int] = []

    class Remote:
        """A shared limiter's interface: sync methods, async twins, ``remote = True``."""

        remote = True
        name = "remote-limiter"

        def __init__(self) -> None:
            self.local = RateLimiter(RateLimit(1, 1.0, burst=1, name="1/s"), clock=clock)
            self.calls: list[str] = []

        def try_acquire(self, key: str = "", cost: float = 1.0) -> Any:
            raise AssertionError("the sync method was called from async code")

        peek = try_acquire

        def hold_off(self, key: str, seconds: float) -> None:  # a blocking round trip: never on the loop
            where = "loop" if threading.get_ident() in loop_thread else "worker thread"
            self.calls.append(f"hold_off {key} {seconds:g} in a {where}")

        async def atry_acquire(self, key: str = "", cost: float = 1.0) -> Any:
            self.calls.append("atry_acquire")
            return self.local.try_acquire(key, cost)

        async def apeek(self, key: str = "", cost: float = 1.0) -> Any:
            self.calls.append("apeek")
            return self.local.peek(key, cost)

        def status(self) -> dict[str, object]:
            return {"name": self.name}

    class RemoteWithAsyncHoldOff(Remote):
        async def ahold_off(self, key: str, seconds: float) -> None:
            self.calls.append(f"ahold_off {key} {seconds:g}")

    remote = RemoteWithAsyncHoldOff() if async_hold_off else Remote()
    transport = RateLimitTransport(upstream.transport, remote, max_wait=5.0, clock=clock)

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://upstream/")
            await client.get("http://upstream/")

    anyio.run(main, backend=backend)
    assert [at for _, at in upstream.sent] == [0.0, 1.0]
    held = "ahold_off upstream 1" if async_hold_off else "hold_off upstream 1 in a worker thread"
    assert remote.calls[:2] == ["atry_acquire", held]
    assert "atry_acquire" in remote.calls[2:]


# -- sync: a thread queues behind another -------------------------------------------------------------------------
class GateClock(FakeClock):
    """A FakeClock whose first sync sleep blocks until the test opens the gate (then advances as usual)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.sleeping = threading.Event()
        self._first = True

    def sleep(self, seconds: float) -> None:
        if self._first:
            self._first = False
            self.sleeping.set()
            assert self.gate.wait(5), "the gate was never opened"
        super().sleep(seconds)


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when a sync caller starts waiting behind another in a rate-limit queue."""
    started = threading.Event()

    class ObservedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            started.set()
            return super().wait(timeout)

    class ObservedWaiter(ratelimit_module.SyncWaiter):
        def __init__(self) -> None:
            self.event = ObservedEvent()

    monkeypatch.setattr(ratelimit_module, "SyncWaiter", ObservedWaiter)
    return started


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    results: list[object] = []

    def run() -> None:
        try:
            results.append(target())
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def test_threads_queue_in_arrival_order(queued: threading.Event) -> None:
    clock = GateClock()
    upstream = Upstream(clock)
    transport = RateLimitTransport(upstream.transport, one_per_second(clock), max_wait=10.0, clock=clock)
    with httpx.Client(transport=transport) as client:
        client.get("http://upstream/first")
        head, head_result = _in_thread(lambda: client.get("http://upstream/head"))
        assert clock.sleeping.wait(5)  # the head waits for its permit on the clock
        behind, behind_result = _in_thread(lambda: client.get("http://upstream/behind"))
        assert queued.wait(5)  # the second thread waits behind it
        assert transport.describe()["waiting"] == 2
        clock.gate.set()
        head.join(5)
        behind.join(5)
    assert [type(result) for result in head_result + behind_result] == [httpx.Response, httpx.Response]
    assert upstream.sent == [("upstream/first", 0.0), ("upstream/head", 1.0), ("upstream/behind", 2.0)]
    assert transport.describe()["waiting"] == 0


# -- configuration and observability ------------------------------------------------------------------------------
def test_registered_with_the_status_app_and_described() -> None:
    limiter = RateLimiter("10/s", name="test-ratelimit-transport-registry")
    transport = RateLimitTransport(ScriptedTransport([200]), limiter, scope="host", mode="reject", max_wait=2.0)
    assert snapshot("limiters")["limiters"]["test-ratelimit-transport-registry"]["kind"] == "rate-limit"
    described = transport.describe()
    assert json.loads(json.dumps(described)) == described
    assert described == {
        "limiter": "test-ratelimit-transport-registry",
        "scope": "host",
        "mode": "reject",
        "max_wait": 2.0,
        "adapt": True,
        "waiting": 0,
        "held_off": {},
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scope": "endpoint"}, "RateLimitTransport.scope"),
        ({"mode": "queue"}, "RateLimitTransport.mode"),
        ({"max_wait": -1}, "RateLimitTransport.max_wait"),
        ({"max_wait": float("inf")}, "RateLimitTransport.max_wait"),
        ({"max_hold_off": 0}, "RateLimitTransport.max_hold_off"),
        ({"adapt": "yes"}, "RateLimitTransport.adapt"),
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimitTransport(ScriptedTransport(), RateLimiter("1/s"), **kwargs)
    assert caught.value.field == field


def test_constructor_rejects_what_is_not_a_limiter() -> None:
    with pytest.raises(TypeError, match="RateLimiter"):
        RateLimitTransport(ScriptedTransport(), object())


# -- the field parsers, directly ----------------------------------------------------------------------------------
def test_structured_field_list_parser() -> None:
    assert parse_sf_list('"a";q=1;w=60, "b";r=0;t=5;pk=:aGk=:;x, tok;y=?0') == [
        ("a", {"q": 1, "w": 60}),
        ("b", {"r": 0, "t": 5, "pk": b"hi", "x": True}),
        ("tok", {"y": False}),
    ]
    assert parse_sf_list('"esc\\"aped\\\\"') == [('esc"aped\\', {})]
    assert parse_sf_list("1.5, -3") == [(1.5, {}), (-3, {})]
    for bad in ['"a",', '"a" "b"', '"a";Q=1', ":not base64!:", '"\\x"', "?2", "1.2345"]:
        assert parse_sf_list(bad) is None, bad


def test_hold_off_seconds_reads_each_field_strictly() -> None:
    now = 1_700_000_000.0
    assert hold_off_seconds(429, httpx.Headers({"retry-after": "7"}), now=now) == 7.0
    assert hold_off_seconds(200, httpx.Headers({"retry-after": "7"}), now=now) is None
    assert (
        hold_off_seconds(200, httpx.Headers([("ratelimit", '"a";r=0;t=2'), ("ratelimit", '"b";r=0;t=5')]), now=now)
        == 5.0
    )
    assert hold_off_seconds(200, httpx.Headers({"ratelimit": '"a";r=0'}), now=now) is None  # no t, no window
