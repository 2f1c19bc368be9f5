"""BulkheadTransport and AdaptiveConcurrencyTransport: admission, queueing, timeouts, cancellation, no leaks.

Async tests run on a FakeClock (virtual time: a queue timeout of 0.5 s costs nothing); sync tests use threads held
inside a gate transport, and wait on conditions, never on sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from connectivity.admin.registry import snapshot
from connectivity.errors import ConcurrencyLimitError
from connectivity.policies.bulkhead import Bulkhead
from connectivity.policies.concurrency import AIMD, AdaptiveConcurrency
from connectivity.telemetry import events
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import bulkhead as bulkhead_module
from connectivity.transports.bulkhead import AdaptiveConcurrencyTransport, BulkheadTransport

from .conftest import Sender

BACKENDS = ["asyncio", "trio"]


class Gate(httpx.BaseTransport):
    """A sync inner transport that holds every call until opened, and counts the calls inside it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.inside = 0
        self.order: list[str] = []
        self.opened = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.cond:
            self.inside += 1
            self.order.append(request.url.path)
            self.cond.notify_all()
        try:
            if not self.opened.wait(10):
                raise AssertionError("the gate was never opened")
            return httpx.Response(200)
        finally:
            with self.cond:
                self.inside -= 1
                self.cond.notify_all()

    def wait_inside(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.inside >= count, 5), f"{self.inside} inside, wanted {count}"


class QueueWatch:
    """Counts sync callers that have joined a bulkhead's queue and started waiting (by observing their event)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.waiting = 0

    def wait_for(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.waiting >= count, 5), f"{self.waiting} queued, wanted {count}"


@pytest.fixture
def queue_watch(monkeypatch: pytest.MonkeyPatch) -> QueueWatch:
    watch = QueueWatch()

    class ObservedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            with watch.cond:
                watch.waiting += 1
                watch.cond.notify_all()
            return super().wait(timeout)

    class ObservedWaiter(bulkhead_module.SyncWaiter):
        def __init__(self) -> None:
            self.event = ObservedEvent()

    monkeypatch.setattr(bulkhead_module, "SyncWaiter", ObservedWaiter)
    return watch


@pytest.fixture
def rejections() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def listener(name: str, attributes: Any) -> None:
        if name == events.CONCURRENCY_REJECTED:
            seen.append(dict(attributes))

    unsubscribe = events.subscribe(listener)
    yield seen
    unsubscribe()


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


# -- every client kind ----------------------------------------------------------------------------------------
def test_a_full_bulkhead_rejects_at_once_and_sends_nothing(send: Sender, rejections: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=200, clock=clock)
    bulkhead = Bulkhead(max_concurrent=2, name="orders")
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    with pytest.raises(ConcurrencyLimitError) as info:
        send(BulkheadTransport(script, bulkhead, clock=clock), url="http://upstream/x?token=secret")
    error = info.value
    assert (error.limiter, error.limit, error.reason) == ("orders", 2, "full")
    assert isinstance(error, httpx.TransportError)
    assert error.request.url.path == "/x"
    assert "secret" not in str(error)
    assert script.requests == []
    assert clock.now() == 0.0  # immediately
    assert rejections == [{"connectivity.reason": "orders: full"}]
    assert bulkhead.status()["rejected_full"] == 1


def test_a_queued_call_is_rejected_after_queue_timeout(send: Sender) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=200, clock=clock)
    # sync waits in real time: keep it short; async waits on the virtual clock
    timeout = 0.05 if not send.is_async else 0.5
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=timeout)
    assert bulkhead.try_acquire()
    with pytest.raises(ConcurrencyLimitError) as info:
        send(BulkheadTransport(script, bulkhead, clock=clock))
    assert info.value.reason == "queue timeout"
    if send.is_async:
        assert clock.now() == 0.5
    status = bulkhead.status()
    assert (status["queued"], status["in_flight"], status["rejected_queue_timeout"]) == (0, 1, 1)
    assert script.requests == []


@pytest.mark.parametrize("outcome", [200, 503, httpx.ConnectError, httpx.ReadTimeout, RuntimeError], ids=str)
def test_the_slot_is_returned_whatever_the_outcome(send: Sender, outcome: object) -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(max_concurrent=1)
    transport = BulkheadTransport(ScriptedTransport([outcome], clock=clock), bulkhead, clock=clock)
    if isinstance(outcome, int):
        assert send(transport).status_code == outcome
    else:
        with pytest.raises(outcome):  # type: ignore[call-overload]
            send(transport)
    assert bulkhead.in_flight == 0


def test_the_slot_is_held_until_the_response_head_not_while_the_body_streams(send: Sender) -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    script = ScriptedTransport([Step(200, content=b"body")])
    transport = BulkheadTransport(script, bulkhead)

    def sync() -> int:
        with httpx.Client(transport=transport) as client, client.stream("GET", "http://upstream/") as response:
            held = bulkhead.in_flight  # head received, body not read yet
            response.read()
            return held

    async def async_() -> int:
        async with (
            httpx.AsyncClient(transport=transport) as client,
            client.stream("GET", "http://upstream/") as response,
        ):
            held = bulkhead.in_flight
            await response.aread()
            return held

    assert send.run(sync, async_) == 0


# -- async: concurrency on asyncio and trio ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_async_calls_above_the_limit_are_rejected_immediately(backend: str) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=Step(200, delay=1.0), clock=clock)
    bulkhead = Bulkhead(max_concurrent=2)
    transport = BulkheadTransport(script, bulkhead, clock=clock)
    outcomes: list[tuple[str, float]] = []

    async def call(client: httpx.AsyncClient) -> None:
        try:
            await client.get("http://upstream/")
            outcomes.append(("ok", clock.now()))
        except ConcurrencyLimitError as exc:
            outcomes.append((exc.reason, clock.now()))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call, client)

    anyio.run(main, backend=backend)
    assert sorted(outcomes) == [("full", 0.0)] * 3 + [("ok", 1.0)] * 2
    assert bulkhead.in_flight == 0
    assert len(script.requests) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_queued_calls_get_slots_in_arrival_order(backend: str) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=Step(200, delay=1.0), clock=clock)
    bulkhead = Bulkhead(max_concurrent=1, max_queued=3, queue_timeout=10.0)
    transport = BulkheadTransport(script, bulkhead, clock=clock)
    finished: dict[int, float] = {}

    async def call(client: httpx.AsyncClient, number: int) -> None:
        await clock.asleep(number * 0.125)  # arrive in order: 0, 0.125, 0.25, 0.375
        await client.get(f"http://upstream/{number}")
        finished[number] = clock.now()

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            for number in (3, 1, 0, 2):  # started out of order: arrival time decides
                tg.start_soon(call, client, number)

    anyio.run(main, backend=backend)
    assert [httpx.URL(request.url).path for request in script.requests] == ["/0", "/1", "/2", "/3"]
    assert finished == {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_a_cancelled_queued_call_frees_its_queue_place(backend: str) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=Step(200, delay=1.0), clock=clock)
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=10.0)
    transport = BulkheadTransport(script, bulkhead, clock=clock)
    log: list[tuple[str, float]] = []

    async def holder(client: httpx.AsyncClient) -> None:
        await client.get("http://upstream/holder")
        log.append(("holder done", clock.now()))

    async def cancelled(client: httpx.AsyncClient) -> None:
        await clock.asleep(0.25)
        with clock.timeout_scope(0.25):  # the caller gives up at 0.5, while still queued
            await client.get("http://upstream/cancelled")
        log.append(("cancelled left", clock.now()))
        log.append(("queued after cancel", float(bulkhead.queued)))

    async def latecomer(client: httpx.AsyncClient) -> None:
        await clock.asleep(0.75)  # the queue has room again: queued, not rejected as full
        await client.get("http://upstream/latecomer")
        log.append(("latecomer done", clock.now()))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            tg.start_soon(holder, client)
            tg.start_soon(cancelled, client)
            tg.start_soon(latecomer, client)

    anyio.run(main, backend=backend)
    assert log == [
        ("cancelled left", 0.5),
        ("queued after cancel", 0.0),
        ("holder done", 1.0),
        ("latecomer done", 2.0),
    ]
    assert [httpx.URL(request.url).path for request in script.requests] == ["/holder", "/latecomer"]
    assert bulkhead.rejected == 0  # a cancellation is not a rejection
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_a_call_cancelled_as_its_slot_is_handed_over_passes_the_slot_on(backend: str) -> None:
    clock = FakeClock()
    script = ScriptedTransport([Step(200, delay=1.0)], default=Step(200), clock=clock)
    bulkhead = Bulkhead(max_concurrent=1, max_queued=2, queue_timeout=10.0)
    transport = BulkheadTransport(script, bulkhead, clock=clock)
    scopes: list[anyio.CancelScope] = []
    third_done: list[float] = []

    async def holder() -> None:
        await transport.handle_async_request(httpx.Request("GET", "http://upstream/holder"))
        # The slot was just handed to the waiter, which has not run yet: cancel it now.
        scopes[0].cancel()

    async def waiter() -> None:
        with scopes[0]:
            response = await transport.handle_async_request(httpx.Request("GET", "http://upstream/waiter"))
            await response.aclose()

    async def third() -> None:
        await clock.asleep(0.5)
        response = await transport.handle_async_request(httpx.Request("GET", "http://upstream/third"))
        await response.aclose()
        third_done.append(clock.now())

    async def main() -> None:
        scopes.append(anyio.CancelScope())
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await clock.asleep(0.125)
            tg.start_soon(waiter)
            tg.start_soon(third)

    anyio.run(main, backend=backend)
    assert third_done == [1.0]  # got the slot the cancelled waiter gave up (or used and returned at once)
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_cancellation_mid_call_returns_the_slot(backend: str) -> None:
    clock = FakeClock()
    script = ScriptedTransport(default=Step(200, delay=5.0), clock=clock)
    bulkhead = Bulkhead(max_concurrent=1)
    transport = BulkheadTransport(script, bulkhead, clock=clock)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with clock.timeout_scope(1.0):
                await client.get("http://upstream/")

    anyio.run(main, backend=backend)
    assert script.cancelled == 1
    assert bulkhead.in_flight == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_waiter_is_woken_by_a_release_on_another_thread(backend: str) -> None:
    clock = FakeClock(autojump=False)  # time stands still: only the release can end the wait
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=1.0)
    transport = BulkheadTransport(ScriptedTransport([204], clock=clock), bulkhead, clock=clock)
    assert bulkhead.try_acquire()  # held by a sync client on some other thread
    statuses: list[int] = []

    def release_elsewhere() -> None:
        ticket = bulkhead.release()
        assert ticket is not None
        ticket.waiter.wake()

    async def call() -> None:
        response = await transport.handle_async_request(httpx.Request("GET", "http://upstream/"))
        statuses.append(response.status_code)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert bulkhead.queued == 1
            await anyio.to_thread.run_sync(release_elsewhere)

    anyio.run(main, backend=backend)
    assert statuses == [204]
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


# -- sync: concurrency with threads ------------------------------------------------------------------------------
def test_threads_above_the_limit_are_rejected_immediately() -> None:
    gate = Gate()
    bulkhead = Bulkhead(max_concurrent=2)
    client = httpx.Client(transport=BulkheadTransport(gate, bulkhead))
    holders = [_in_thread(lambda: client.get("http://upstream/held")) for _ in range(2)]
    gate.wait_inside(2)
    with pytest.raises(ConcurrencyLimitError) as info:
        client.get("http://upstream/extra")  # the gate is closed: returning at all means it did not wait
    assert info.value.reason == "full"
    gate.opened.set()
    for thread, results in holders:
        thread.join(5)
        assert isinstance(results[0], httpx.Response)
        assert results[0].status_code == 200
    assert gate.order == ["/held", "/held"]
    assert bulkhead.in_flight == 0
    client.close()


def test_threads_wait_in_the_queue_and_get_slots_in_order(queue_watch: QueueWatch) -> None:
    gate = Gate()
    bulkhead = Bulkhead(max_concurrent=1, max_queued=3, queue_timeout=10.0)
    client = httpx.Client(transport=BulkheadTransport(gate, bulkhead))
    callers = [_in_thread(lambda: client.get("http://upstream/first"))]
    gate.wait_inside(1)
    for number in range(3):
        callers.append(_in_thread(lambda number=number: client.get(f"http://upstream/queued-{number}")))  # type: ignore[misc]
        queue_watch.wait_for(number + 1)
    assert bulkhead.queued == 3
    with pytest.raises(ConcurrencyLimitError, match="full"):
        client.get("http://upstream/overflow")
    gate.opened.set()
    for thread, results in callers:
        thread.join(5)
        assert isinstance(results[0], httpx.Response)
    assert gate.order == ["/first", "/queued-0", "/queued-1", "/queued-2"]
    assert (bulkhead.in_flight, bulkhead.queued, bulkhead.rejected) == (0, 0, 1)
    client.close()


def test_thread_queue_timeout_rejects_and_leaves_the_queue(queue_watch: QueueWatch) -> None:
    gate = Gate()
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=0.05)
    client = httpx.Client(transport=BulkheadTransport(gate, bulkhead))
    holder = _in_thread(lambda: client.get("http://upstream/held"))
    gate.wait_inside(1)
    with pytest.raises(ConcurrencyLimitError) as info:
        client.get("http://upstream/queued")
    assert info.value.reason == "queue timeout"
    assert bulkhead.queued == 0
    gate.opened.set()
    holder[0].join(5)
    assert bulkhead.in_flight == 0
    assert gate.order == ["/held"]
    client.close()


# -- observability ----------------------------------------------------------------------------------------------
def test_registered_with_the_status_app_and_described() -> None:
    bulkhead = Bulkhead(max_concurrent=3, max_queued=1, name="test-bulkhead-registry")
    transport = BulkheadTransport(ScriptedTransport([200]), bulkhead)
    assert snapshot("limiters")["limiters"]["test-bulkhead-registry"]["limit"] == 3
    described = transport.describe()
    assert json.loads(json.dumps(described)) == described
    assert (described["name"], described["limit"], described["max_queued"]) == ("test-bulkhead-registry", 3, 1)


def test_registration_does_not_keep_the_policy_alive() -> None:
    bulkhead = Bulkhead(name="test-bulkhead-weak")
    BulkheadTransport(ScriptedTransport([200]), bulkhead)
    del bulkhead
    assert "test-bulkhead-weak" not in snapshot("limiters")["limiters"]


def test_constructor_rejects_what_is_not_a_bulkhead() -> None:
    with pytest.raises(TypeError, match="Bulkhead"):
        BulkheadTransport(ScriptedTransport(), 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AdaptiveConcurrency"):
        AdaptiveConcurrencyTransport(ScriptedTransport(), Bulkhead())  # type: ignore[arg-type]


# -- adaptive ---------------------------------------------------------------------------------------------------
def test_adaptive_rejects_at_once_over_the_current_limit(send: Sender, rejections: list[dict[str, Any]]) -> None:
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=1, name="adaptive-orders")
    assert limiter.try_acquire()
    script = ScriptedTransport(default=200)
    with pytest.raises(ConcurrencyLimitError) as info:
        send(AdaptiveConcurrencyTransport(script, limiter))
    assert (info.value.limiter, info.value.limit, info.value.reason) == ("adaptive-orders", 1, "full")
    assert script.requests == []
    assert rejections == [{"connectivity.reason": "adaptive-orders: full"}]


@pytest.mark.parametrize(
    ("outcome", "dropped"),
    [
        (200, False),
        (404, False),
        (500, False),
        (429, True),
        (503, True),
        (504, True),
        (httpx.ConnectError, True),
        (httpx.ReadTimeout, True),
    ],
    ids=str,
)
def test_adaptive_samples_rtt_and_drops(send: Sender, outcome: object, dropped: bool) -> None:
    clock = FakeClock()
    # AIMD at its limit: a good sample adds 1, a drop halves
    limiter = AdaptiveConcurrency(AIMD(backoff_ratio=0.5), initial_limit=1, max_limit=10)
    transport = AdaptiveConcurrencyTransport(
        ScriptedTransport([Step(outcome, delay=0.25)], clock=clock), limiter, clock=clock
    )  # type: ignore[arg-type]
    if isinstance(outcome, int):
        assert send(transport).status_code == outcome
    else:
        with pytest.raises(outcome):  # type: ignore[call-overload]
            send(transport)
    status = limiter.status()
    assert (status["samples"], status["drops"], status["in_flight"]) == (1, int(dropped), 0)
    assert limiter.limit == (1 if dropped else 2)


def test_adaptive_measures_rtt_on_the_clock(send: Sender) -> None:
    clock = FakeClock()
    limiter = AdaptiveConcurrency(AIMD(timeout=0.5), initial_limit=10, max_limit=100)
    script = ScriptedTransport([Step(200, delay=0.75)], clock=clock)
    assert send(AdaptiveConcurrencyTransport(script, limiter, clock=clock)).status_code == 200
    assert limiter.limit == 9  # 0.75 s > the 0.5 s AIMD timeout: a drop, although the answer was 200


def test_adaptive_a_non_transport_error_releases_without_a_sample(send: Sender) -> None:
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=4)
    with pytest.raises(RuntimeError):
        send(AdaptiveConcurrencyTransport(ScriptedTransport([RuntimeError]), limiter))
    assert (limiter.in_flight, limiter.status()["samples"]) == (0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_cancellation_is_never_a_sample(backend: str) -> None:
    clock = FakeClock()
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=4)
    script = ScriptedTransport(default=Step(200, delay=5.0), clock=clock)
    transport = AdaptiveConcurrencyTransport(script, limiter, clock=clock)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with clock.timeout_scope(1.0):
                await client.get("http://upstream/")

    anyio.run(main, backend=backend)
    assert script.cancelled == 1
    assert (limiter.in_flight, limiter.status()["samples"], limiter.limit) == (0, 0, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_concurrent_calls_above_the_limit_are_rejected(backend: str) -> None:
    clock = FakeClock()
    limiter = AdaptiveConcurrency(AIMD(), initial_limit=3, max_limit=3)
    script = ScriptedTransport(default=Step(200, delay=1.0), clock=clock)
    transport = AdaptiveConcurrencyTransport(script, limiter, clock=clock)
    outcomes: list[tuple[str, float]] = []

    async def call(client: httpx.AsyncClient) -> None:
        try:
            await client.get("http://upstream/")
            outcomes.append(("ok", clock.now()))
        except ConcurrencyLimitError as exc:
            outcomes.append((exc.reason, clock.now()))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
            for _ in range(7):
                tg.start_soon(call, client)

    anyio.run(main, backend=backend)
    assert sorted(outcomes) == [("full", 0.0)] * 4 + [("ok", 1.0)] * 3
    assert limiter.in_flight == 0


def test_adaptive_registered_and_described() -> None:
    limiter = AdaptiveConcurrency(name="test-adaptive-registry")
    transport = AdaptiveConcurrencyTransport(ScriptedTransport([200]), limiter)
    assert snapshot("limiters")["limiters"]["test-adaptive-registry"]["algorithm"] == "Gradient2"
    described = transport.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["limit"] == 20
