"""Client-side load balancing as a transport: discovery, a picker, outlier detection and active health checks.

Theory of operation: requests go to a *logical* URL (``http://orders/...``). For every attempt the transport

1. keeps its :class:`~connectivity.balancing.EndpointSet` current: when the resolver's
   :class:`~connectivity.discovery.Resolution` has a new ``version`` the set is rebuilt (survivors keep their load
   history, newcomers start slow start), and whenever outlier detection ejects or returns an endpoint, or a health
   check changes one's state, a snapshot with the new unhealthy keys replaces it (O(n), rare). A resolver is
   refreshed inline when :meth:`~connectivity.discovery.Resolver.due` (one refresh at a time; a request waits only
   while nothing was ever resolved), or followed by its ``watch()`` in the transport's task group;
2. asks the picker for an endpoint (O(1)); an empty set, or one whose members are all unhealthy with panic
   routing off, raises :class:`~connectivity.errors.NoHealthyEndpointError` and sends nothing. A retry or hedge
   that carries ``request.extensions["connectivity.prefer_other_endpoint"]`` excludes the endpoints this request
   already tried (falling back to one of them when nothing else is left, as Envoy's ``previous_hosts`` predicate
   does after its selection attempts);
3. rewrites the URL's host and port to the endpoint's, keeping the ``Host`` header and, over TLS, the server name
   (httpx's ``sni_hostname`` extension) of the logical service, so certificates and SPIFFE identities are checked
   against the service; puts the :class:`~connectivity.discovery.Endpoint` in
   ``request.extensions["connectivity.endpoint"]`` (a per-endpoint breaker below keys on it, and
   :class:`~connectivity.transports.EndpointPools` below sends the attempt to the endpoint's own connection pool,
   whose membership the transport keeps in step with the set) and, on the answer, in
   ``response.extensions["connectivity.endpoint"]``; the request's URL is logical again once the attempt ends;
4. counts the attempt on the endpoint's :class:`~connectivity.balancing.EndpointStats` (in flight until the
   response head; latency to the head, fed to the peak EWMA; connect failures, resets and cancellations feed no
   latency) and reports the status, or the kind of local failure, to the
   :class:`~connectivity.policies.outlier.OutlierDetector` (cancellations are not counted).

Active health checks (:class:`~connectivity.balancing.HealthCheck`) run in the background for the transport's
lifetime: in its task group for an ``httpx.AsyncClient`` entered with ``async with`` (started there, cancelled and
awaited when it exits), otherwise in a daemon thread with a small probe pool started by the first request (or
``with client:``) and joined by ``close()``/``aclose()`` (see ``_balancing_background``). Nothing outlives the
client. Unhealthy endpoints are excluded like ejected ones, and an ejected endpoint that passes its checks returns
at once (Envoy's ``successful_active_health_check_uneject_host``, default true).

The per-request path pays for what it uses only: a static endpoint list is never checked for staleness, a hash
key is computed for hash pickers only, and the URL rewrite sets the TLS server name in the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType

from connectivity._http import httpx
from connectivity.balancing.base import Picker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.health import HealthCheck, HealthChecker
from connectivity.balancing.maglev import Maglev
from connectivity.balancing.p2c import EWMA
from connectivity.balancing.ring import RingHash
from connectivity.balancing.stats import DEFAULT_DECAY, DEFAULT_PENALTY, EndpointStats
from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.resolver import Resolver, Static
from connectivity.errors import ConfigError
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.policies.outlier import LOCAL_ORIGIN_STATUS, OutlierDetector
from connectivity.policies.retry import PER_TRY_TIMEOUT, READ_TIMEOUT
from connectivity.telemetry import events, semconv
from connectivity.transports._balancing_background import Background
from connectivity.transports._balancing_cluster import Cluster
from connectivity.transports._balancing_url import rewrite
from connectivity.transports._base import Inner, Layer
from connectivity.transports._endpoint_pools import ENDPOINT_EXTENSION, find_pools
from connectivity.transports._outcome import failure_kind

__all__ = [
    "ENDPOINT_EXTENSION",
    "HASH_KEY_EXTENSION",
    "PREFER_OTHER_EXTENSION",
    "LoadBalancingTransport",
]

PREFER_OTHER_EXTENSION = "connectivity.prefer_other_endpoint"
"""Request extension set by the retry and hedging layers: avoid the endpoints this request already tried."""
HASH_KEY_EXTENSION = "connectivity.hash_key"
"""Request extension: the hash key for :class:`~connectivity.balancing.RingHash` and
:class:`~connectivity.balancing.Maglev` (overrides the transport's ``hash_key`` function)."""
_TRIED = "connectivity.endpoints_tried"
_LOGICAL = "connectivity.logical_url"

_OBSERVED_FAILURES = frozenset({READ_TIMEOUT, PER_TRY_TIMEOUT})  # slow, not fast: their latency is evidence
_NO_KEYS: frozenset[str] = frozenset()


def _service(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in " /\r\n"):
        raise ConfigError(
            "LoadBalancingTransport.service", value, "must be the logical service name, e.g. 'orders'"
        )
    return value


def _resolver(value: object, clock: Clock) -> Resolver:
    if isinstance(value, Resolver):
        return value
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return Static(value, clock=clock)  # Static validates the items
    raise ConfigError(
        "LoadBalancingTransport.resolver", value, "must be a Resolver or a list of endpoints ('host:port')"
    )


class LoadBalancingTransport(Layer):
    """Send each attempt to one endpoint of a service, chosen by a picker among the healthy ones.

    Args:
        inner: The transport to call (the network transport, or a per-endpoint layer above it).
        service: The logical service: requests go to ``http://<service>/...``; names the service in errors,
            events, and health checks' ``Host`` header.
        resolver: Where the endpoints come from: a :class:`~connectivity.discovery.Resolver`, or a list of
            endpoints (``"host:port"`` strings or :class:`~connectivity.discovery.Endpoint` objects).
        picker: How to choose (default :class:`~connectivity.balancing.EWMA`: P2C on peak-EWMA latency).
        outlier: Passive outlier detection (default ``None``: off, as in Envoy). The transport keeps its
            membership in step with discovery; give each transport its own detector.
        health_check: Active health checking (default ``None``: off). See the module docstring for where it runs.
        health_check_transport: The transport probes go through (default ``inner``). Probes bypass the layers
            above this one and carry their endpoint like attempts do (per-endpoint pools below serve them from the
            endpoint's pool); a sync-capable transport is needed unless the async client is entered with
            ``async with``.
        hash_key: For the hash pickers: a function of the request returning its key (``str``/``bytes``/``None``),
            e.g. ``lambda r: r.headers.get("x-user")``. ``request.extensions["connectivity.hash_key"]`` wins.
        clock: Time source for latency, slow start and health checks (inject a ``FakeClock`` in tests).
        decay: Peak-EWMA decay time in seconds (see :class:`~connectivity.balancing.EndpointSet`).
        penalty: Latency assumed for an endpoint with a request out and no sample yet.

    Raises:
        ConfigError: An option is invalid.
        NoHealthyEndpointError: (from a call) No endpoint to send to; nothing was sent.

    .. versionadded:: 0.1
    """

    __slots__ = ("_background", "_cluster", "_hash_key", "_hashing", "_pools", "_traffic")

    def __init__(
        self,
        inner: Inner,
        *,
        service: str,
        resolver: Resolver | Iterable[Endpoint | str],
        picker: Picker | None = None,
        outlier: OutlierDetector | None = None,
        health_check: HealthCheck | None = None,
        health_check_transport: Inner | None = None,
        hash_key: Callable[[httpx.Request], str | bytes | None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        decay: float = DEFAULT_DECAY,
        penalty: float = DEFAULT_PENALTY,
    ) -> None:
        super().__init__(inner)
        name = "LoadBalancingTransport."
        found = _resolver(resolver, clock)
        chosen = picker if picker is not None else EWMA()
        if not isinstance(chosen, Picker):
            raise ConfigError(name + "picker", picker, "must be a connectivity.balancing picker (EWMA(), ...)")
        if outlier is not None and not isinstance(outlier, OutlierDetector):
            raise ConfigError(name + "outlier", outlier, "must be an OutlierDetector or None")
        if health_check is not None and not isinstance(health_check, HealthCheck):
            raise ConfigError(name + "health_check", health_check, "must be a HealthCheck or None")
        probes = health_check_transport if health_check_transport is not None else inner
        if not isinstance(probes, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            raise ConfigError(name + "health_check_transport", probes, "must be an httpx transport or None")
        if hash_key is not None and not callable(hash_key):
            raise ConfigError(name + "hash_key", hash_key, "must be a function of the request, or None")
        self._hash_key = hash_key
        self._hashing = hash_key is not None or isinstance(chosen, (RingHash, Maglev))
        checker = HealthChecker(health_check, clock=clock) if health_check is not None else None
        self._traffic = False
        self._cluster = Cluster(
            _service(service),
            found,
            chosen,
            outlier=outlier,
            checker=checker,
            clock=clock,
            decay=decay,
            penalty=penalty,
        )
        watchable = type(found).watch is not Resolver.watch
        self._background = Background(self._cluster, probes, clock, watchable=watchable)
        self._pools = find_pools(inner)  # connection pools per endpoint below: they follow the membership
        if self._pools is not None:
            self._pools.attach(self)
        self._cluster.on_change = self._changed
        if self._cluster.version:
            self._changed()
        from connectivity.admin.registry import register

        # The status app's /endpoints: the service's endpoints, their load, health and ejections, read live.
        register("endpoints", self._cluster.service, self)

    # -- reading ------------------------------------------------------------------------------------------------

    @property
    def service(self) -> str:
        """The logical service."""
        return self._cluster.service

    @property
    def endpoints(self) -> EndpointSet:
        """The current endpoint snapshot (members, health, live stats)."""
        return self._cluster.endpoints

    @property
    def resolver(self) -> Resolver:
        """Where the endpoints come from."""
        return self._cluster.resolver

    @property
    def picker(self) -> Picker:
        """How an endpoint is chosen."""
        return self._cluster.picker

    @property
    def outlier(self) -> OutlierDetector | None:
        """The outlier detector, if any."""
        return self._cluster.outlier

    @property
    def health(self) -> HealthChecker | None:
        """The health checker's state, if active health checking is on."""
        return self._cluster.checker

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer: the service, the picker, the endpoints and their health."""
        return self._cluster.describe()

    def status(self) -> dict[str, object]:
        """The same, for the status app's ``/endpoints`` (the transport registers itself under its service)."""
        return self._cluster.describe()

    # -- one attempt --------------------------------------------------------------------------------------------

    def _route(self, request: httpx.Request) -> tuple[EndpointStats, httpx.URL]:
        """Pick the attempt's endpoint and point the request at it; returns the stats and the logical URL."""
        extensions = request.extensions
        previous = extensions.get(ENDPOINT_EXTENSION)
        exclude: frozenset[str] = _NO_KEYS
        if previous is None:  # a first attempt
            logical = request.url
            extensions[_LOGICAL] = logical
        else:  # a retry, or a hedge copied from an attempt in flight
            logical = extensions.get(_LOGICAL) or request.url
            tried: frozenset[str] = extensions.get(_TRIED) or _NO_KEYS
            tried = extensions[_TRIED] = tried | {getattr(previous, "key", str(previous))}
            if extensions.get(PREFER_OTHER_EXTENSION):
                exclude = tried
        key = None
        if self._hashing:
            key = extensions.get(HASH_KEY_EXTENSION)
            if key is None and self._hash_key is not None:
                key = self._hash_key(request)
        cluster = self._cluster
        outlier = cluster.outlier
        if cluster.ejected and outlier is not None and outlier.clock.now() >= cluster.next_return:
            outlier.sweep()  # an ejection ended: return it now, not at the next recorded call
        endpoints = cluster.endpoints
        stats = cluster.picker.pick_stats(endpoints, key=key, exclude=exclude)
        if stats is None:
            raise cluster.no_endpoint(request, endpoints)
        endpoint = stats.endpoint
        if exclude or cluster.panic:
            reason = "panic: every member is a candidate" if cluster.panic else "retry: other endpoint preferred"
            if stats.key in exclude:
                reason = "retry: no untried endpoint left"
            events.emit(
                events.ENDPOINT_PICKED,
                {semconv.CONNECTIVITY_ENDPOINT: stats.key, semconv.CONNECTIVITY_REASON: reason},
            )
        extensions[ENDPOINT_EXTENSION] = endpoint
        request.url = rewrite(logical, endpoint, extensions)  # over TLS, the service stays the server name
        return stats, logical

    def _answered(self, stats: EndpointStats, started: float, response: httpx.Response) -> httpx.Response:
        stats.finish(started)
        outlier = self._cluster.outlier
        if outlier is not None:
            outlier.record(stats.key, response.status_code)
        response.extensions[ENDPOINT_EXTENSION] = stats.endpoint
        if not self._traffic:
            self._first_traffic()
        return response

    def _failed(self, stats: EndpointStats, started: float, exc: Exception) -> None:
        kind = failure_kind(exc)
        stats.finish(started, observe=kind in _OBSERVED_FAILURES)
        outlier = self._cluster.outlier
        if outlier is not None and kind in LOCAL_ORIGIN_STATUS:
            outlier.record(stats.key, kind)

    def _first_traffic(self) -> None:
        self._traffic = True
        if self._cluster.checker is not None:
            self._cluster.checker.traffic()
            self._background.wake()

    def _changed(self) -> None:
        """Discovery changed the set: wake the health checks, keep the per-endpoint pools in step."""
        self._background.wake()
        pools = self._pools
        if pools is not None:
            pools.retain([stats.key for stats in self._cluster.endpoints.members])
            self._background.soon(pools.drain)  # an idle async pool that left closes now, not at the next call

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        cluster = self._cluster
        if cluster.polling and cluster.stale():
            cluster.refresh()
        if self._background.pending:
            self._background.start_thread()
        stats, logical = self._route(request)
        started = stats.start()
        try:
            response = inner.handle_request(request)
        except Exception as exc:
            request.url = logical
            self._failed(stats, started, exc)
            raise
        except BaseException:
            request.url = logical
            stats.finish(started, observe=False)
            raise
        request.url = logical
        return self._answered(stats, started, response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        cluster = self._cluster
        if cluster.polling and cluster.stale():
            await cluster.arefresh()
        if self._background.pending:
            self._background.start_thread()
        stats, logical = self._route(request)
        started = stats.start()
        try:
            response = await inner.handle_async_request(request)
        except Exception as exc:
            request.url = logical
            self._failed(stats, started, exc)
            raise
        except BaseException:  # cancelled: no latency, no outlier outcome
            request.url = logical
            stats.finish(started, observe=False)
            raise
        request.url = logical
        return self._answered(stats, started, response)

    # -- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._background.close()
        super().close()

    async def aclose(self) -> None:
        await self._background.aclose()
        await super().aclose()

    def __enter__(self) -> LoadBalancingTransport:
        super().__enter__()
        self._background.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._background.stop_thread()
        super().__exit__(exc_type, exc_value, traceback)

    async def __aenter__(self) -> LoadBalancingTransport:
        await super().__aenter__()
        await self._background.aenter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        try:
            await self._background.aexit()
        finally:
            await super().__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        cluster = self._cluster
        return (
            f"LoadBalancingTransport({cluster.service!r}, {type(cluster.picker).__name__}, {cluster.endpoints!r})"
        )
