"""LoadBalancingTransport: routing, discovery, outlier ejection, panic, slow start, retries, health checks,
lifetime.

Unit tests over a scripted transport that answers per endpoint (the rewritten URL's host and port) on a virtual
clock; the real-server scenario is in ``tests/integration/test_balancing_replicas.py``.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import httpx
import pytest

import connectivity as cx
from connectivity.balancing import EWMA, RingHash, RoundRobin, SlowStart
from connectivity.balancing.health import HealthCheck
from connectivity.discovery import Endpoint, Resolver, UpdateCallback
from connectivity.errors import ConfigError, NoHealthyEndpointError
from connectivity.policies.outlier import OutlierDetector
from connectivity.telemetry import events, semconv
from connectivity.testing import FakeClock, ScriptedTransport, Step
from connectivity.transports import CircuitBreakerTransport, RetryTransport
from connectivity.transports.balancing import ENDPOINT_EXTENSION, HASH_KEY_EXTENSION, LoadBalancingTransport

from .conftest import Sender

A, B, C, D = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.4:8080"


class Replicas:
    """Answers each request by the endpoint it was sent to: ``answers[key]`` (a step, or a function of the
    request) for traffic, ``health[key]`` for probes (default 200); counts both."""

    def __init__(self, answers: Mapping[str, Any] | None = None, health: Mapping[str, Any] | None = None) -> None:
        self.answers = dict(answers or {})
        self.health = dict(health or {})
        self.hits: Counter[str] = Counter()
        self.probes: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> Any:
        key = f"{request.url.host}:{request.url.port}"
        probe = request.extensions.get("connectivity.health_check", False)
        with self.lock:
            (self.probes if probe else self.hits)[key] += 1
        answer = (self.health if probe else self.answers).get(key, 200)
        return answer(request) if callable(answer) and not isinstance(answer, type) else answer


class Listed(Resolver):
    """A resolver over a list the test changes; counts lookups; an async lookup takes ``delay`` on the clock."""

    def __init__(self, endpoints: Iterable[str], *, clock: FakeClock, delay: float = 0.0) -> None:
        self.listed = list(endpoints)
        self.lookups = 0
        self.delay = delay
        self.error: Exception | None = None
        super().__init__("listed", refresh_interval=10.0, retry_interval=1.0, clock=clock)

    def _fetch(self) -> tuple[list[Endpoint], float | None]:
        self.lookups += 1
        if self.error is not None:
            raise self.error
        return [Endpoint.parse(text) for text in self.listed], None

    async def _afetch(self) -> tuple[list[Endpoint], float | None]:
        if self.delay:
            await self.clock.asleep(self.delay)
        return self._fetch()


class Pushed(Listed):
    """A resolver that pushes changes: ``watch()`` publishes ``listed`` whenever the test calls :meth:`push`."""

    def __init__(self, endpoints: Iterable[str], *, clock: FakeClock) -> None:
        super().__init__(endpoints, clock=clock)
        self.watchers = 0
        self.pushes = 0

    def push(self, endpoints: Iterable[str]) -> None:
        self.listed = list(endpoints)
        self.pushes += 1

    async def watch(self, on_update: UpdateCallback) -> None:
        self.watchers += 1
        seen = 0
        try:
            if self.current().version == 0:
                on_update(await self.arefresh())
            while True:
                await self.clock.asleep(0.5)
                if self.pushes != seen:
                    seen = self.pushes
                    on_update(self._succeeded([Endpoint.parse(text) for text in self.listed], None))
        finally:
            self.watchers -= 1


def balancer(
    replicas: Replicas,
    endpoints: Iterable[str] | Resolver = (A, B, C),
    *,
    clock: FakeClock | None = None,
    **options: Any,
) -> LoadBalancingTransport:
    clock = clock or FakeClock()
    options.setdefault("picker", RoundRobin(rng=random.Random(1)))
    return LoadBalancingTransport(
        ScriptedTransport(default=replicas, clock=clock),
        service="orders",
        resolver=endpoints,
        clock=clock,
        **options,
    )


def ejector(clock: FakeClock, **options: Any) -> OutlierDetector:
    settings: dict[str, Any] = {
        "consecutive_5xx": 1,
        "max_ejection_percent": 100,
        "base_ejection_time": 30.0,
        "interval": 1000.0,
        "clock": clock,
    }
    settings.update(options)
    return OutlierDetector(**settings)


@pytest.fixture
def recorded() -> Iterable[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = events.subscribe(lambda name, attributes: seen.append((name, dict(attributes))))
    yield seen
    unsubscribe()


def hits_of(
    send: Sender, transport: LoadBalancingTransport, count: int, url: str = "http://orders/x"
) -> Counter[str]:
    """Send ``count`` requests through one client; count the endpoints they went to."""
    found: Counter[str] = Counter()

    def sync() -> Counter[str]:
        with httpx.Client(transport=transport) as client:
            for _ in range(count):
                found[str(client.get(url).extensions[ENDPOINT_EXTENSION])] += 1
        return found

    async def async_() -> Counter[str]:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(count):
                found[str((await client.get(url)).extensions[ENDPOINT_EXTENSION])] += 1
        return found

    return send.run(sync, async_)


# -- routing ------------------------------------------------------------------------------------------------------


def test_each_attempt_goes_to_an_endpoint_with_the_logical_host_kept(send: Sender) -> None:
    replicas = Replicas()
    transport = balancer(replicas, (A, B))
    script = transport.inner
    assert isinstance(script, ScriptedTransport)
    responses = [send(transport, url="http://orders/items?page=2") for _ in range(4)]
    assert [str(r.extensions[ENDPOINT_EXTENSION]) for r in responses] in ([A, B, A, B], [B, A, B, A])
    for seen in script.requests:
        assert seen.url in ("http://10.0.0.1:8080/items?page=2", "http://10.0.0.2:8080/items?page=2")
        assert seen.headers["host"] == "orders"  # the service identity, not the address
        assert isinstance(seen.extensions[ENDPOINT_EXTENSION], Endpoint)  # set before the inner call
        assert "sni_hostname" not in seen.extensions  # plain HTTP
    assert str(responses[0].request.url) == "http://orders/items?page=2"  # logical again once the attempt ended
    assert transport.endpoints.in_flight == 0


def test_over_tls_the_server_name_is_the_service_unless_the_caller_set_one(send: Sender) -> None:
    replicas = Replicas()
    transport = balancer(replicas, ("[::1]:8443",))
    send(transport, url="https://orders:8443/")
    send(transport, url="https://orders/", extensions={"sni_hostname": "orders.internal"})
    first, second = transport.inner.requests  # type: ignore[attr-defined]
    assert first.url == "https://[::1]:8443/"
    assert first.extensions["sni_hostname"] == "orders"
    assert first.headers["host"] == "orders:8443"
    assert second.url == "https://[::1]:8443/"
    assert second.extensions["sni_hostname"] == "orders.internal"


def test_a_default_port_endpoint_rewrites_like_httpx_would(send: Sender) -> None:
    transport = balancer(Replicas(), ("orders-1.internal:80",))
    response = send(transport, url="http://user:pw@orders:9000/p?q#f")
    seen = transport.inner.requests[0]  # type: ignore[attr-defined]
    assert seen.url == str(
        httpx.URL("http://user:pw@orders:9000/p?q#f").copy_with(host="orders-1.internal", port=80)
    )
    assert response.request.url == httpx.URL("http://user:pw@orders:9000/p?q#f")


def test_ewma_is_the_default_picker_and_a_list_of_strings_is_a_static_resolver() -> None:
    transport = LoadBalancingTransport(
        ScriptedTransport(default=200), service="orders", resolver=[A, Endpoint.parse(B)]
    )
    assert isinstance(transport.picker, EWMA)
    assert isinstance(transport.resolver, cx.discovery.Static)
    assert transport.endpoints.endpoints == (Endpoint.parse(A), Endpoint.parse(B))
    assert transport.service == "orders"
    assert transport.outlier is None
    assert transport.health is None
    assert "LoadBalancingTransport('orders', EWMA" in repr(transport)


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("service", "", "LoadBalancingTransport.service"),
        ("service", "orders/x", "LoadBalancingTransport.service"),
        ("resolver", "10.0.0.1:80", "LoadBalancingTransport.resolver"),
        ("resolver", 3, "LoadBalancingTransport.resolver"),
        ("picker", "ewma", "LoadBalancingTransport.picker"),
        ("outlier", object(), "LoadBalancingTransport.outlier"),
        ("health_check", {"path": "/"}, "LoadBalancingTransport.health_check"),
        ("health_check_transport", "x", "LoadBalancingTransport.health_check_transport"),
        ("hash_key", "x-user", "LoadBalancingTransport.hash_key"),
        ("decay", 0, "EndpointSet.decay"),
    ],
)
def test_invalid_options_raise_config_error(option: str, value: object, field: str) -> None:
    options: dict[str, Any] = {"service": "orders", "resolver": [A], option: value}
    with pytest.raises(ConfigError) as raised:
        LoadBalancingTransport(ScriptedTransport(), **options)
    assert raised.value.field == field
    with pytest.raises(TypeError):
        LoadBalancingTransport("not a transport", service="orders", resolver=[A])  # type: ignore[arg-type]


def test_hash_pickers_keep_a_key_on_one_endpoint(send: Sender) -> None:
    transport = balancer(
        Replicas(), (A, B, C, D), picker=RingHash(), hash_key=lambda request: request.headers.get("x-user")
    )

    def endpoint(user: str, **kwargs: Any) -> str:
        return str(send(transport, headers={"x-user": user}, **kwargs).extensions[ENDPOINT_EXTENSION])

    for user in ("ann", "bob"):
        assert len({endpoint(user) for _ in range(5)}) == 1
    assert len({endpoint(f"user-{n}") for n in range(40)}) > 1
    pinned = endpoint("ann")
    assert {endpoint(f"u{n}", extensions={HASH_KEY_EXTENSION: "ann"}) for n in range(5)} == {pinned}


# -- discovery ----------------------------------------------------------------------------------------------------


def test_an_empty_set_raises_a_typed_error_and_sends_nothing(send: Sender) -> None:
    replicas = Replicas()
    transport = balancer(replicas, ())
    with pytest.raises(NoHealthyEndpointError) as raised:
        send(transport)
    error = raised.value
    assert isinstance(error, httpx.TransportError)
    assert (error.service, error.reason) == ("orders", "no endpoints")
    assert "nothing was sent" in str(error)
    assert not replicas.hits
    assert not transport.inner.requests


def test_a_failed_first_resolution_is_named_in_the_error(send: Sender) -> None:
    clock = FakeClock()
    resolver = Listed([A], clock=clock)
    resolver.error = OSError("registry down")
    transport = balancer(Replicas(), resolver, clock=clock)
    with pytest.raises(NoHealthyEndpointError, match=r"the last resolution failed: OSError: registry down"):
        send(transport)
    resolver.error = None
    clock.advance(1.0)  # the retry interval
    assert str(send(transport).extensions[ENDPOINT_EXTENSION]) == A


def test_a_new_resolution_version_rebuilds_the_set_keeping_stats(send: Sender) -> None:
    clock = FakeClock()
    resolver = Listed([A, B], clock=clock)
    detector = ejector(clock)
    transport = balancer(Replicas(), resolver, clock=clock, outlier=detector)
    assert resolver.lookups == 0  # nothing resolved until the first request
    assert set(hits_of(send, transport, 4)) == {A, B}
    assert resolver.lookups == 1
    kept = transport.endpoints.stats(B)
    resolver.listed = [B, C]
    assert set(hits_of(send, transport, 4)) == {A, B}  # not due yet: the last list stays
    clock.advance(10.0)
    assert set(hits_of(send, transport, 4)) == {B, C}
    assert resolver.lookups == 2
    assert transport.endpoints.stats(B) is kept  # survivors keep their load history
    assert set(detector.status()["hosts"]) == {B, C}  # type: ignore[arg-type]  # membership follows discovery


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_refresh_is_single_flight(backend: str) -> None:
    clock = FakeClock()
    resolver = Listed([A, B], clock=clock, delay=1.0)
    transport = balancer(Replicas(), resolver, clock=clock)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:

            async def one() -> None:
                assert (await client.get("/")).status_code == 200

            async with anyio.create_task_group() as group:  # all wait for the first resolution
                for _ in range(10):
                    group.start_soon(one)
            assert resolver.lookups == 1
            clock.advance(10.0)
            async with anyio.create_task_group() as group:  # one refreshes, the others go on
                for _ in range(10):
                    group.start_soon(one)
            assert resolver.lookups == 2

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_watching_resolver_runs_in_the_task_group_and_stops_with_the_client(backend: str) -> None:
    clock = FakeClock()
    resolver = Pushed([A], clock=clock)
    transport = balancer(Replicas(), resolver, clock=clock)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            await clock.asleep(0.1)
            assert resolver.watchers == 1
            assert str((await client.get("/")).extensions[ENDPOINT_EXTENSION]) == A
            resolver.push([B])
            await clock.asleep(1.0)
            assert transport.endpoints.endpoints == (Endpoint.parse(B),)  # pushed, not polled
            assert str((await client.get("/")).extensions[ENDPOINT_EXTENSION]) == B
            assert resolver.lookups == 1
        assert resolver.watchers == 0

    anyio.run(main, backend=backend)


# -- outlier detection, panic, ejection cap, slow start -----------------------------------------------------------


def test_ejected_endpoints_get_no_traffic_and_return_after_the_ejection_time(
    send: Sender, recorded: list[tuple[str, dict[str, Any]]]
) -> None:
    clock = FakeClock()
    replicas = Replicas({B: 503})
    transport = balancer(replicas, clock=clock, outlier=ejector(clock, consecutive_5xx=2))
    hits_of(send, transport, 6)  # B fails twice: ejected
    assert transport.endpoints.unhealthy == {B}
    replicas.hits.clear()
    assert set(hits_of(send, transport, 10)) == {A, C}
    clock.advance(30.0)  # base_ejection_time: back without any call recorded in between
    assert set(hits_of(send, transport, 6)) == {A, B, C}
    ejected = [attributes for name, attributes in recorded if name == events.ENDPOINT_EJECTED]
    assert ejected[0] == {
        semconv.CONNECTIVITY_ENDPOINT: B,
        semconv.CONNECTIVITY_REASON: "consecutive_5xx",
        semconv.CONNECTIVITY_DELAY: 30.0,
    }
    assert (events.ENDPOINT_RESTORED, {semconv.CONNECTIVITY_ENDPOINT: B}) in recorded


def test_local_failures_count_as_envoy_maps_them_and_feed_no_fast_latency(send: Sender) -> None:
    clock = FakeClock()
    replicas = Replicas({B: httpx.ConnectError})
    transport = balancer(replicas, clock=clock, outlier=ejector(clock))
    for _ in range(3):
        with contextlib.suppress(httpx.ConnectError):
            send(transport)
    assert transport.endpoints.unhealthy == {B}  # connect-failure counts as a 503
    stats = transport.endpoints.stats(B)
    assert stats.latency() is None
    assert stats.in_flight == 0


def test_panic_routes_to_every_member_when_too_few_are_healthy(send: Sender) -> None:
    clock = FakeClock()
    replicas = Replicas({A: 500, B: 500, C: 500})
    transport = balancer(replicas, (A, B, C, D), clock=clock, outlier=ejector(clock))
    hits_of(send, transport, 4)
    assert transport.endpoints.unhealthy == {A, B, C}  # 25 % healthy < the 50 % threshold: panic
    assert set(hits_of(send, transport, 8)) == {A, B, C, D}
    assert transport.describe()["panic"] is True


def test_without_panic_only_healthy_members_serve_and_none_left_raises(send: Sender) -> None:
    clock = FakeClock()
    replicas = Replicas({A: 500, B: 500, C: 500})
    picker = RoundRobin(healthy_panic_threshold=0, rng=random.Random(2))
    transport = balancer(replicas, (A, B, C, D), clock=clock, outlier=ejector(clock), picker=picker)
    hits_of(send, transport, 4)
    assert set(hits_of(send, transport, 8)) == {D}
    replicas.answers[D] = 500
    hits_of(send, transport, 1)
    sent = len(transport.inner.requests)  # type: ignore[attr-defined]
    with pytest.raises(NoHealthyEndpointError) as raised:
        send(transport)
    assert raised.value.reason == (
        "all 4 endpoints are unhealthy (4 ejected, 0 failing health checks) and panic routing is off"
    )
    assert len(transport.inner.requests) == sent  # type: ignore[attr-defined]


def test_max_ejection_percent_caps_ejections_through_the_transport(send: Sender) -> None:
    clock = FakeClock()
    keys = [f"10.0.1.{n}:8080" for n in range(1, 11)]
    replicas = Replicas(dict.fromkeys(keys[:5], 500))
    detector = ejector(clock, max_ejection_percent=20)
    transport = balancer(replicas, keys, clock=clock, outlier=detector)
    hits_of(send, transport, 30)
    assert len(transport.endpoints.unhealthy) == 2  # 5 failing, 20 % of 10 ejected
    assert detector.status()["counters"]["overflow"] >= 3  # type: ignore[index]


def test_slow_start_ramps_a_new_endpoint_through_the_transport(send: Sender) -> None:
    clock = FakeClock()
    resolver = Listed([A, B, C], clock=clock)
    picker = RoundRobin(slow_start=SlowStart(window=100.0), rng=random.Random(5))
    transport = balancer(Replicas(), resolver, clock=clock, picker=picker)
    hits_of(send, transport, 3)
    resolver.listed = [A, B, C, D]
    clock.advance(10.0)  # due: D joins now and starts at 10 % of its weight
    ramping = hits_of(send, transport, 400)
    assert 0 < ramping[D] < 0.1 * 400  # a full share would be 25 %
    clock.advance(100.0)
    settled = hits_of(send, transport, 400)
    assert settled[D] == 100


# -- retries, breakers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefer_other", [True, False])
def test_a_retry_goes_to_another_endpoint_when_asked(send: Sender, prefer_other: bool) -> None:
    clock = FakeClock()

    def first_attempt_fails(request: httpx.Request) -> int:
        return 503 if "x-connectivity-attempt" not in request.headers else 200

    replicas = Replicas(dict.fromkeys((A, B, C, D), first_attempt_fails))
    lb = balancer(replicas, (A, B, C, D), clock=clock, picker=RingHash(), hash_key=lambda request: "same-key")
    retry = cx.Retry(attempts=3, prefer_other_endpoint=prefer_other)
    response = send(RetryTransport(lb, retry, clock=clock))
    assert response.status_code == 200
    first, second = lb.inner.requests  # type: ignore[attr-defined]
    went = first.extensions[ENDPOINT_EXTENSION], second.extensions[ENDPOINT_EXTENSION]
    assert (went[0] != went[1]) is prefer_other  # a hash picker would otherwise repeat its choice
    assert second.extensions["connectivity.endpoints_tried"] == frozenset({went[0].key})
    assert response.extensions[ENDPOINT_EXTENSION] == went[1]
    assert str(response.request.url) == "http://upstream/"


def test_retries_exclude_every_endpoint_tried_then_fall_back(
    send: Sender, recorded: list[tuple[str, dict[str, Any]]]
) -> None:
    clock = FakeClock()
    replicas = Replicas({A: 503, B: 503})
    lb = balancer(replicas, (A, B), clock=clock, picker=EWMA(rng=random.Random(3)))
    response = send(RetryTransport(lb, cx.Retry(attempts=3), clock=clock))
    assert response.status_code == 503
    tried = [request.extensions[ENDPOINT_EXTENSION].key for request in lb.inner.requests]  # type: ignore[attr-defined]
    assert sorted(tried[:2]) == [A, B]  # the second attempt took the other one
    picked = [
        attributes[semconv.CONNECTIVITY_REASON] for name, attributes in recorded if name == events.ENDPOINT_PICKED
    ]
    assert picked == ["retry: other endpoint preferred", "retry: no untried endpoint left"]


def test_a_per_endpoint_breaker_below_keys_on_the_chosen_endpoint(send: Sender) -> None:
    clock = FakeClock()
    replicas = Replicas({A: 500})
    breaker = cx.CircuitBreaker(consecutive_failures=2, failure_ratio=None, open_for=60.0, clock=clock)
    below = CircuitBreakerTransport(ScriptedTransport(default=replicas, clock=clock), breaker, scope="endpoint")
    lb = LoadBalancingTransport(
        below, service="orders", resolver=[A, B], picker=RoundRobin(rng=random.Random(1)), clock=clock
    )
    statuses = []
    for _ in range(6):
        try:
            statuses.append(send(lb).status_code)
        except cx.CircuitOpenError as error:
            statuses.append(error.breaker)
    assert breaker.circuit(A).state == "open"
    assert breaker.circuit(B).state == "closed"
    assert statuses.count(f"{breaker.name}/{A}") == 1  # the circuit of A's endpoint, by its key
    assert replicas.hits[A] == 2  # A's third turn was rejected before leaving


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_hedge_goes_to_another_endpoint_with_the_logical_url(backend: str) -> None:
    clock = FakeClock()
    replicas = Replicas()
    lb = balancer(replicas, (A, B), clock=clock, picker=RingHash(), hash_key=lambda request: "pinned")
    hedging = cx.transports.HedgingTransport(lb, cx.Hedge(delay=0.1), clock=clock)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=hedging) as client:
            return await client.get("http://orders/x")

    first = lb.picker.pick(lb.endpoints, key="pinned")
    assert first is not None
    replicas.answers = {first.key: Step(200, delay=1.0)}  # the first attempt is slow: a hedge starts at 0.1 s
    response = anyio.run(main, backend=backend)
    sent = lb.inner.requests  # type: ignore[attr-defined]
    assert sent[0].extensions[ENDPOINT_EXTENSION] == first
    hedged = sent[1].extensions[ENDPOINT_EXTENSION]
    assert hedged != first  # the hedge copied the attempt in flight, yet moved on
    assert sent[1].url == f"http://{hedged.key}/x"  # rewritten from the logical URL, not the first endpoint's
    assert response.extensions[ENDPOINT_EXTENSION] == sent[1].extensions[ENDPOINT_EXTENSION]
    assert str(response.request.url) == "http://orders/x"


def test_the_fast_url_rewrite_is_used_and_matches_httpx() -> None:
    from connectivity.transports import _balancing_url as urls

    assert urls.rewrite is urls._fast_rewrite  # this httpx passed the import-time check
    for text in ("http://orders/", "https://u:p@orders:1/a%20b?q=1&r=%2F#frag", "http://orders:80/x"):
        for endpoint in (Endpoint("10.1.2.3", 80), Endpoint("fe80::1", 443), Endpoint("a-b.internal", 9)):
            url = httpx.URL(text)
            assert urls._fast_rewrite(url, endpoint) == urls._slow_rewrite(url, endpoint)


# -- cancellation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_cancelled_attempt_counts_nothing(backend: str) -> None:
    clock = FakeClock()
    replicas = Replicas({A: Step(200, delay=10.0)})
    detector = ejector(clock)
    transport = balancer(replicas, (A,), clock=clock, outlier=detector)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with clock.timeout_scope(1.0):
                await client.get("http://orders/")

    anyio.run(main, backend=backend)
    stats = transport.endpoints.stats(A)
    assert stats.in_flight == 0
    assert stats.latency() is None
    assert not detector.is_ejected(A)


# -- active health checks ---------------------------------------------------------------------------------------


def probe_step(status: int, delay: float = 0.0) -> Step:
    return Step(status, delay=delay)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_health_checks_exclude_and_return_endpoints(
    backend: str, recorded: list[tuple[str, dict[str, Any]]]
) -> None:
    clock = FakeClock()
    replicas = Replicas(health={B: 503})
    check = HealthCheck(interval=1.0, no_traffic_interval=None, healthy_threshold=2)
    transport = balancer(replicas, clock=clock, health_check=check)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            await clock.asleep(0.5)
            assert transport.endpoints.unhealthy == {B}  # 503 is not expected: unhealthy at once
            found = {str((await client.get("/")).extensions[ENDPOINT_EXTENSION]) for _ in range(6)}
            assert found == {A, C}
            replicas.health[B] = 200
            await clock.asleep(1.0)
            assert transport.endpoints.unhealthy == {B}  # one pass of the two needed
            await clock.asleep(1.0)
            assert transport.endpoints.unhealthy == frozenset()

    anyio.run(main, backend=backend)
    probes = [request for request in transport.inner.requests if request.url.endswith("/healthz")]  # type: ignore[attr-defined]
    assert probes[0].headers["host"] == "orders"
    assert probes[0].headers["user-agent"] == "connectivity-health-check"
    assert probes[0].extensions["timeout"] == {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}
    names = [name for name, attributes in recorded if attributes.get(semconv.CONNECTIVITY_ENDPOINT) == B]
    assert names == [events.ENDPOINT_EJECTED, events.ENDPOINT_RESTORED]
    assert (
        events.ENDPOINT_EJECTED,
        {semconv.CONNECTIVITY_ENDPOINT: B, semconv.CONNECTIVITY_REASON: "health check: status 503"},
    ) in recorded


@pytest.mark.parametrize("uneject", [True, False])
def test_a_passing_health_check_returns_an_ejected_endpoint_as_envoy_does(uneject: bool) -> None:
    clock = FakeClock()
    replicas = Replicas({B: 500})
    detector = ejector(clock, base_ejection_time=300.0)
    check = HealthCheck(interval=1.0, no_traffic_interval=None, uneject_outliers=uneject)
    transport = balancer(replicas, clock=clock, health_check=check, outlier=detector)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            for _ in range(3):
                await client.get("/")
            assert detector.is_ejected(B)
            replicas.answers[B] = 200
            await clock.asleep(1.5)  # the next check of B passes
            assert detector.is_ejected(B) is not uneject
            assert (B in transport.endpoints.unhealthy) is not uneject

    anyio.run(main, backend="asyncio")


def test_checks_are_rare_until_the_first_request_as_with_envoys_no_traffic_interval() -> None:
    clock = FakeClock()
    replicas = Replicas()
    transport = balancer(replicas, (A, B), clock=clock, health_check=HealthCheck(interval=1.0))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            await clock.asleep(30.0)
            assert replicas.probes == {A: 1, B: 1}  # the first round at once, the next after 60 s
            await client.get("/")  # traffic: checks every second from now on
            await clock.asleep(2.5)
            assert replicas.probes == {A: 3, B: 3}

    anyio.run(main, backend="asyncio")


def test_a_joining_endpoint_waits_for_its_first_check() -> None:
    clock = FakeClock()
    resolver = Listed([A, B], clock=clock)
    replicas = Replicas(health={C: probe_step(200, delay=0.5)})
    transport = balancer(replicas, resolver, clock=clock, health_check=HealthCheck(interval=1.0))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            await client.get("/")  # the first resolution: taken as established, healthy until checked
            assert transport.endpoints.unhealthy == frozenset()
            await clock.asleep(1.5)
            resolver.listed = [A, B, C]
            clock.advance(10.0)
            await client.get("/")
            assert C in transport.endpoints.unhealthy  # until its first check passes (Envoy's FAILED_ACTIVE_HC)
            found = {str((await client.get("/")).extensions[ENDPOINT_EXTENSION]) for _ in range(4)}
            assert C not in found
            await clock.asleep(1.0)
            assert transport.endpoints.unhealthy == frozenset()
            assert replicas.probes[C] == 1

    anyio.run(main, backend="asyncio")


def health_threads() -> list[str]:
    """The health checker's scheduler thread and probe threads that are alive."""
    return [
        thread.name for thread in threading.enumerate() if thread.name.startswith("connectivity-health-orders")
    ]


def test_sync_health_checks_run_in_a_thread_that_close_joins(recorded: list[tuple[str, dict[str, Any]]]) -> None:
    replicas = Replicas(health={B: httpx.ConnectError})
    ejected = threading.Event()
    unsubscribe = events.subscribe(
        lambda name, attributes: ejected.set() if name == events.ENDPOINT_EJECTED else None
    )
    check = HealthCheck(interval=0.02, timeout=0.5, no_traffic_interval=None)
    transport = LoadBalancingTransport(
        ScriptedTransport(default=replicas), service="orders", resolver=[A, B], health_check=check
    )
    try:
        assert health_threads() == []
        with httpx.Client(transport=transport, base_url="http://orders") as client:
            assert "connectivity-health-orders" in health_threads()  # started by `with`
            assert client.get("/").status_code == 200
            assert ejected.wait(5.0)  # the first check failed on the network: unhealthy at once
            assert transport.endpoints.unhealthy == {B}
            assert {str(client.get("/").extensions[ENDPOINT_EXTENSION]) for _ in range(4)} == {A}
        assert health_threads() == []  # the scheduler and the probe pool are gone
    finally:
        unsubscribe()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_async_client_without_async_with_checks_from_a_thread_until_aclose(backend: str) -> None:
    replicas = Replicas()
    check = HealthCheck(interval=0.02, timeout=0.5, no_traffic_interval=None)
    transport = LoadBalancingTransport(
        ScriptedTransport(default=replicas), service="orders", resolver=[A, B], health_check=check
    )

    async def main() -> None:
        client = httpx.AsyncClient(transport=transport, base_url="http://orders")
        assert (await client.get("/")).status_code == 200  # first use starts the checks
        assert "connectivity-health-orders" in health_threads()
        await anyio.to_thread.run_sync(lambda: replicas_probed(replicas, 4))
        await client.aclose()
        assert health_threads() == []

    anyio.run(main, backend=backend)


def replicas_probed(replicas: Replicas, count: int) -> None:
    done = threading.Event()
    for _ in range(500):  # bounded: 5 s
        if sum(replicas.probes.values()) >= count:
            done.set()
            break
        done.wait(0.01)
    assert done.is_set()


class AsyncOnly(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)


def test_async_only_probes_need_async_with() -> None:
    transport = LoadBalancingTransport(AsyncOnly(), service="orders", resolver=[A], health_check=HealthCheck())

    async def without() -> None:
        client = httpx.AsyncClient(transport=transport)
        with pytest.raises(RuntimeError, match="async with"):
            await client.get("http://orders/")
        await client.aclose()

    async def with_() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get("http://orders/")).status_code == 200

    anyio.run(without)
    transport = LoadBalancingTransport(AsyncOnly(), service="orders", resolver=[A], health_check=HealthCheck())
    anyio.run(with_)


# -- lifetime -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_no_background_task_outlives_the_client(backend: str) -> None:
    clock = FakeClock()
    resolver = Pushed([A, B], clock=clock)
    replicas = Replicas(health={B: probe_step(200, delay=0.3)})
    check = HealthCheck(interval=0.2, no_traffic_interval=None)
    transport = balancer(replicas, resolver, clock=clock, health_check=check)

    async def main() -> None:
        before = len(anyio.get_running_tasks())
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            await client.get("/")
            await clock.asleep(0.35)  # a probe of B is in flight now
            assert len(anyio.get_running_tasks()) >= before + 3  # background, health loop, watcher, probes
            assert resolver.watchers == 1
        assert len(anyio.get_running_tasks()) == before
        assert resolver.watchers == 0
        probes = sum(replicas.probes.values())
        await clock.asleep(5.0)
        assert sum(replicas.probes.values()) == probes  # nothing checks any more

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_aclose_inside_async_with_stops_the_checks_without_cancelling_the_block(backend: str) -> None:
    clock = FakeClock()
    transport = balancer(Replicas(), clock=clock, health_check=HealthCheck(interval=0.5, no_traffic_interval=None))
    reached = []

    async def main() -> None:
        before = len(anyio.get_running_tasks())
        async with httpx.AsyncClient(transport=transport) as client:
            await client.aclose()
            await clock.asleep(1.0)  # the block itself carries on
            reached.append(True)
        assert len(anyio.get_running_tasks()) == before

    anyio.run(main, backend=backend)
    assert reached == [True]


def test_describe_shows_the_endpoints_and_their_health() -> None:
    clock = FakeClock()
    transport = balancer(Replicas(), (A, B), clock=clock, health_check=HealthCheck(), outlier=ejector(clock))
    described = transport.describe()
    assert described["service"] == "orders"
    assert described["picker"] == "RoundRobin"
    assert described["resolution"] == {"version": 1, "error": None}
    assert described["endpoints"]["members"] == 2  # type: ignore[index]
    assert set(described["health"]["endpoints"]) == {A, B}  # type: ignore[index]
    assert described["ejected"] == []
    assert described["panic"] is False
    assert transport.health is not None
    assert transport.outlier is not None


def test_a_detector_that_already_ejected_is_honoured() -> None:
    clock = FakeClock()
    detector = ejector(clock)
    detector.update([A, B])
    detector.record(A, 500)
    transport = balancer(Replicas(), (A, B), clock=clock, outlier=detector)
    assert transport.endpoints.unhealthy == {A}
