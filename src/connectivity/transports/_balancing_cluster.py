"""The load balancer's view of one service: its endpoint set, kept current from discovery and health.

Theory of operation: a :class:`Cluster` (Envoy's word for an upstream service with its endpoints, load-balancing
and health state) holds the current :class:`~connectivity.balancing.EndpointSet` snapshot, which requests read
without a lock, and replaces it, under a lock, whenever something that changes the choice changes:

* the resolver's :class:`~connectivity.discovery.Resolution` has a new ``version`` (:meth:`Cluster.apply`): the
  first list becomes a fresh, established set; later ones go through ``EndpointSet.update`` (survivors keep
  their stats, newcomers start slow start and, with health checks, wait for a passed check); the outlier
  detector's and the health checker's memberships follow;
* the outlier detector ejects or returns an endpoint (its listener, :meth:`Cluster.on_outlier`);
* a health check changes an endpoint's state (:meth:`Cluster.health_result`), which also returns an ejected
  endpoint that passes (Envoy's ``successful_active_health_check_uneject_host``).

The unhealthy keys of a snapshot are the ejected ones plus those failing health checks. Refreshes run inline, one
at a time (:meth:`Cluster.refresh`, :meth:`Cluster.arefresh`): a request waits for one only while nothing was ever
resolved. Each change is also reported as a policy event (``connectivity.endpoint.ejected`` / ``.restored``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable

import anyio

from connectivity._http import httpx
from connectivity.balancing.base import Picker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.health import SUCCESS, HealthChecker, Outcome
from connectivity.discovery.resolver import Resolution, Resolver, Static
from connectivity.errors import NoHealthyEndpointError
from connectivity.policies.clock import Clock
from connectivity.policies.outlier import EJECT, OutlierDetector, OutlierEvent
from connectivity.telemetry import events, semconv

__all__ = ["Cluster"]


def _listener(cluster: weakref.ReferenceType[Cluster]) -> Callable[[OutlierEvent], None]:
    """The detector's listener: holds the cluster weakly (a detector outliving its client keeps nothing alive)."""

    def on_event(event: OutlierEvent) -> None:
        alive = cluster()
        if alive is not None:
            alive.on_outlier(event)

    return on_event


class Cluster:
    """The endpoint set of one service and what keeps it current (see the module docstring).

    Attributes:
        endpoints: The current snapshot (read it without a lock; it is replaced, never changed).
        version: The resolution version the snapshot was built from (0: nothing resolved yet).
        ejected: Keys the outlier detector ejected, with the time (on its clock) their ejection ends.
        next_return: The earliest of those times (``inf`` when none is ejected).
        panic: Whether too few members are healthy for the picker's panic threshold.
        watching: Whether a resolver watch keeps the list current (then no refresh is due inline).
        polling: Whether requests need to check :meth:`stale` at all: ``False`` for a
            :class:`~connectivity.discovery.Static` list, which never changes (the per-request check is skipped).
        on_change: Called after discovery changed the set (the health checker's wake-up).
    """

    __slots__ = (
        "__weakref__",
        "_arefreshing",
        "_clock",
        "_decay",
        "_lock",
        "_penalty",
        "_refreshing",
        "checker",
        "ejected",
        "endpoints",
        "next_return",
        "on_change",
        "outlier",
        "panic",
        "picker",
        "polling",
        "resolver",
        "service",
        "version",
        "watching",
    )

    def __init__(
        self,
        service: str,
        resolver: Resolver,
        picker: Picker,
        *,
        outlier: OutlierDetector | None,
        checker: HealthChecker | None,
        clock: Clock,
        decay: float,
        penalty: float,
    ) -> None:
        self.service = service
        self.resolver = resolver
        self.picker = picker
        self.outlier = outlier
        self.checker = checker
        self._clock = clock
        self._decay, self._penalty = decay, penalty
        self.endpoints = EndpointSet(clock=clock, decay=decay, penalty=penalty)  # validates decay and penalty
        self._lock = threading.RLock()
        self._refreshing = threading.Lock()
        self._arefreshing: anyio.Event | None = None
        self.version = 0
        self.ejected: dict[str, float] = {}
        self.next_return = math.inf
        self.panic = False
        self.watching = False
        self.polling = type(resolver) is not Static  # exactly Static: resolved once, at construction
        self.on_change: Callable[[], None] = lambda: None
        if outlier is not None:
            hosts = outlier.status()["hosts"]
            assert isinstance(hosts, dict)
            for key, host in hosts.items():  # a detector that already ejected some: start from its state
                if host["ejected_until"] is not None:
                    self.ejected[key] = host["ejected_until"]
            self.next_return = min(self.ejected.values(), default=math.inf)
            outlier.add_listener(_listener(weakref.ref(self)))
        if resolver.current().version:
            self.apply(resolver.current())  # a static list needs no I/O: ready at once

    # -- health ---------------------------------------------------------------------------------------------------

    def unhealthy(self) -> set[str]:
        """The keys not to pick: ejected, or failing health checks."""
        keys = set(self.ejected)
        if self.checker is not None:
            keys |= self.checker.unhealthy()
        return keys

    def rebuild(self) -> None:
        """Replace the snapshot with one that has the current unhealthy keys (health changed)."""
        with self._lock:
            current = self.endpoints
            unhealthy = {key for key in self.unhealthy() if key in current}
            if unhealthy != current.unhealthy:
                current = self.endpoints = current.with_unhealthy(unhealthy)
            threshold = self.picker.healthy_panic_threshold
            self.panic = bool(current.unhealthy) and len(current.healthy) * 100.0 < threshold * len(current)

    def on_outlier(self, event: OutlierEvent) -> None:
        """The outlier detector's listener: an ejection or a return."""
        with self._lock:
            if event.action == EJECT:
                self.ejected[event.key] = event.at + event.duration
            else:
                self.ejected.pop(event.key, None)
            self.next_return = min(self.ejected.values(), default=math.inf)
            self.rebuild()
        if event.action == EJECT:
            events.emit(
                events.ENDPOINT_EJECTED,
                {
                    semconv.CONNECTIVITY_ENDPOINT: event.key,
                    semconv.CONNECTIVITY_REASON: event.reason,
                    semconv.CONNECTIVITY_DELAY: event.duration,
                },
            )
        else:
            events.emit(events.ENDPOINT_RESTORED, {semconv.CONNECTIVITY_ENDPOINT: event.key})

    def health_result(self, key: str, outcome: Outcome, detail: str) -> None:
        """Record a health check's outcome; rebuild on a transition; return a passing ejected endpoint."""
        checker = self.checker
        assert checker is not None
        transition = checker.record(key, outcome, detail)
        if transition is not None:
            self.rebuild()
            if transition.healthy:
                events.emit(events.ENDPOINT_RESTORED, {semconv.CONNECTIVITY_ENDPOINT: key})
            else:
                reason = f"health check: {transition.reason}"
                events.emit(
                    events.ENDPOINT_EJECTED,
                    {semconv.CONNECTIVITY_ENDPOINT: key, semconv.CONNECTIVITY_REASON: reason},
                )
        outlier = self.outlier
        if (
            outcome == SUCCESS
            and outlier is not None
            and checker.check.uneject_outliers
            and key in self.ejected
            and checker.is_healthy(key)
        ):
            outlier.uneject(key)  # Envoy: a passing active check returns an ejected host (and clears its counters)

    # -- discovery ------------------------------------------------------------------------------------------------

    def apply(self, resolution: Resolution) -> None:
        """Rebuild the snapshot from a resolution whose version is new (discovery changed)."""
        with self._lock:
            if resolution.version == self.version:
                return
            first = self.version == 0
            if first:  # the first list is taken as established (no slow start, healthy until checked)
                fresh = EndpointSet(
                    resolution.endpoints, clock=self._clock, decay=self._decay, penalty=self._penalty
                )
            else:
                fresh = self.endpoints.update(resolution.endpoints)
            keys = [stats.key for stats in fresh.members]
            checker = self.checker
            unhealthy = self.unhealthy()
            if checker is not None and not first:
                unhealthy.update(key for key in keys if key not in checker)  # joiners wait for a passed check
            # Published before the checker learns the new keys, so a probe never finds its endpoint missing.
            self.endpoints = fresh.with_unhealthy(unhealthy)
            if checker is not None:
                checker.update(keys, healthy=first)
            self.version = resolution.version
            self.rebuild()
        if self.outlier is not None:
            self.outlier.update(keys)  # may return removed ejected hosts: on_outlier, outside our lock
        self.on_change()

    def stale(self) -> bool:
        """Whether the resolver has a newer list, or a refresh is due (cheap: a few attribute reads)."""
        resolver = self.resolver
        return resolver.current().version != self.version or (
            (not self.watching or self.version == 0) and resolver.due()
        )

    def refresh(self) -> None:
        """Sync refresh, one thread at a time; the others go on with the last list unless there is none yet."""
        resolver = self.resolver
        if self._refreshing.acquire(blocking=self.version == 0):
            try:
                if resolver.due():
                    resolver.refresh()
            finally:
                self._refreshing.release()
        self.apply(resolver.current())

    async def arefresh(self) -> None:
        """Async refresh, one task at a time; the others go on with the last list unless there is none yet."""
        resolver = self.resolver
        running = self._arefreshing
        if running is not None:
            if self.version == 0:
                await running.wait()
        else:
            done = self._arefreshing = anyio.Event()
            try:
                if resolver.due():
                    await resolver.arefresh()
            finally:
                self._arefreshing = None
                done.set()
        self.apply(resolver.current())

    # -- reporting ------------------------------------------------------------------------------------------------

    def no_endpoint(self, request: httpx.Request, endpoints: EndpointSet) -> NoHealthyEndpointError:
        """The error for a pick that found no candidate in ``endpoints``."""
        if not endpoints.members:
            error = self.resolver.current().error
            reason = "no endpoints" + (f" (the last resolution failed: {error})" if error else "")
        else:
            failing = len(self.checker.unhealthy()) if self.checker is not None else 0
            reason = (
                f"all {len(endpoints)} endpoints are unhealthy ({len(self.ejected)} ejected, {failing} failing "
                "health checks) and panic routing is off"
            )
        return NoHealthyEndpointError(
            f"{self.service}: no endpoint for {request.method}: {reason}; nothing was sent",
            request=request,
            service=self.service,
            reason=reason,
        )

    def describe(self) -> dict[str, object]:
        """What the status app shows: the resolution, the endpoints, their health and the panic state."""
        resolution = self.resolver.current()
        described: dict[str, object] = {
            "service": self.service,
            "picker": type(self.picker).__name__,
            "resolver": repr(self.resolver),
            "resolution": {"version": resolution.version, "error": resolution.error},
            "panic": self.panic,
            "endpoints": self.endpoints.status(),
            "ejected": sorted(self.ejected),
        }
        if self.checker is not None:
            described["health"] = self.checker.status()
        return described
