"""Where a load balancer's background work runs: active health checks, a resolver's watch, closing retired pools.

Theory of operation: a :class:`Background` belongs to one
:class:`~connectivity.transports.LoadBalancingTransport` and runs its background work for the transport's
lifetime, in one of two homes:

* the transport's task group, for an ``httpx.AsyncClient`` entered with ``async with`` (:meth:`Background.aenter`
  starts it, :meth:`Background.aexit` cancels and awaits it): an :class:`~._balancing_probe.AsyncHealthLoop`, the
  resolver's ``watch()`` (inline refreshes stop while it runs), and short tasks that close the connection pools
  of endpoints that left (:meth:`Background.soon`);
* otherwise a :class:`~._balancing_probe.HealthThread` (daemon scheduler, small probe pool), started by the first
  request or ``with client:`` and joined by ``close()``/``aclose()``.

Nothing outlives the client. Probes go through the probe transport with the endpoint in the request's
``connectivity.endpoint`` extension, so per-endpoint pools below serve them from the endpoint's own pool.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from connectivity._http import httpx
from connectivity.balancing.health import NETWORK
from connectivity.policies.clock import Clock
from connectivity.transports._balancing_cluster import Cluster
from connectivity.transports._balancing_probe import AsyncHealthLoop, HealthThread, aprobe, probe
from connectivity.transports._base import Inner

__all__ = ["Background"]

_log = logging.getLogger("connectivity.balancing")
_STOP_TIMEOUT = 30.0


class Background:
    """A load balancer's health checks, resolver watch and pool closing (see the module docstring).

    Args:
        cluster: The service's endpoint set and what keeps it current.
        probes: The transport health-check probes go through.
        clock: Time source for the probes' timeouts and the health loop's sleeps.
        watchable: Whether the resolver implements ``watch()`` (then it runs in the task group).

    Attributes:
        pending: Health checks are configured and not running yet (the first request starts them).
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_cluster",
        "_group",
        "_health_loop",
        "_health_thread",
        "_lock",
        "_loop_thread",
        "_probes",
        "_scope",
        "_tasks",
        "_watchable",
        "pending",
    )

    def __init__(self, cluster: Cluster, probes: Inner, clock: Clock, *, watchable: bool) -> None:
        self._cluster = cluster
        self._probes = probes
        self._clock = clock
        self._watchable = watchable
        self._lock = threading.Lock()
        self._closed = False
        self._group: Any = None  # the anyio task group entered by `async with`
        self._scope: anyio.CancelScope | None = None
        self._tasks: Any = None  # the task group the background tasks run in, while it runs
        self._loop_thread: int | None = None
        self._health_loop: AsyncHealthLoop | None = None
        self._health_thread: HealthThread | None = None
        self.pending = cluster.checker is not None

    # -- health checks --------------------------------------------------------------------------------------------

    def _host(self) -> str:
        checker = self._cluster.checker
        assert checker is not None
        return checker.check.host or self._cluster.service

    def _check_one(self, key: str) -> None:
        """Probe one endpoint from a pool thread (sync transport side)."""
        cluster = self._cluster
        stats = cluster.endpoints.get(key)
        transport = self._probes
        if stats is None or cluster.checker is None or not isinstance(transport, httpx.BaseTransport):
            cluster.health_result(key, NETWORK, "not a member")
            return
        outcome, detail = probe(transport, cluster.checker.check, stats.endpoint, self._host())
        cluster.health_result(key, outcome, detail)

    async def _acheck_one(self, key: str) -> None:
        """Probe one endpoint from the task group (async transport side)."""
        cluster = self._cluster
        try:
            stats = cluster.endpoints.get(key)
            transport = self._probes
            if stats is None or cluster.checker is None or not isinstance(transport, httpx.AsyncBaseTransport):
                cluster.health_result(key, NETWORK, "not a member")
                return
            check = cluster.checker.check
            outcome, detail = await aprobe(transport, check, stats.endpoint, self._host(), self._clock)
            cluster.health_result(key, outcome, detail)
        except Exception:
            _log.exception("health check of %s failed", key)
            cluster.health_result(key, NETWORK, "error")

    def wake(self) -> None:
        """Recompute the health-check schedule now (the set changed, or traffic began)."""
        loop, thread = self._health_loop, self._health_thread
        if loop is not None:
            loop.wake()
        if thread is not None:
            thread.wake()

    def start_thread(self) -> None:
        """Start health checking in a thread (first use without a running task group)."""
        with self._lock:
            if not self.pending or self._closed or self._group is not None:
                return
            if not isinstance(self._probes, httpx.BaseTransport):
                raise RuntimeError(
                    f"{self._cluster.service}: active health checks over an async-only transport run in the "
                    "client's task group: use `async with httpx.AsyncClient(...)`, or pass a sync-capable "
                    "health_check_transport (e.g. connectivity.transports.HTTPTransport())"
                )
            checker = self._cluster.checker
            assert checker is not None
            thread = HealthThread(checker, self._check_one, name=f"connectivity-health-{self._cluster.service}")
            self._health_thread = thread
            self.pending = False
            thread.start()

    def stop_thread(self) -> None:
        thread, self._health_thread = self._health_thread, None
        if thread is not None:
            thread.stop(_STOP_TIMEOUT)

    # -- the task group -------------------------------------------------------------------------------------------

    def soon(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` in the task group now, when called from its event loop's thread while it runs."""
        tasks = self._tasks
        if tasks is not None and threading.get_ident() == self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the group is finishing: done on the next call or at close
                tasks.start_soon(task)

    async def _run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            try:
                async with anyio.create_task_group() as group:
                    self._tasks, self._loop_thread = group, threading.get_ident()
                    checker = self._cluster.checker
                    if self.pending and checker is not None:
                        self.pending = False
                        loop = self._health_loop = AsyncHealthLoop(checker, self._acheck_one, self._clock)
                        group.start_soon(loop.run)
                    if self._watchable:
                        self._cluster.watching = True
                        group.start_soon(self._watch)
            except Exception:  # never disturb the client's own block; requests keep working without these
                _log.exception("%s: background load-balancing tasks failed", self._cluster.service)
            finally:
                self._tasks = None
                self._cluster.watching = False
                self._health_loop = None

    async def _watch(self) -> None:
        cluster = self._cluster
        try:
            await cluster.resolver.watch(cluster.apply)
        except Exception:
            _log.exception("%s: watching %r failed; refreshing inline instead", cluster.service, cluster.resolver)
        finally:
            cluster.watching = False

    # -- lifetime -------------------------------------------------------------------------------------------------

    def enter(self) -> None:
        if self.pending:
            self.start_thread()

    def close(self) -> None:
        self._closed = True
        self.stop_thread()

    async def aclose(self) -> None:
        self._closed = True
        scope = self._scope
        if scope is not None:
            scope.cancel()  # the task group itself is left by aexit(), in the task that entered it
        if self._health_thread is not None:
            await anyio.to_thread.run_sync(self.stop_thread)

    async def aenter(self) -> None:
        if (self.pending or self._watchable) and self._group is None and not self._closed:
            group = anyio.create_task_group()
            await group.__aenter__()
            try:
                self._scope = await group.start(self._run)
            except BaseException:
                await group.__aexit__(None, None, None)
                raise
            self._group = group

    async def aexit(self) -> None:
        group, self._group = self._group, None
        scope, self._scope = self._scope, None
        if group is not None:
            assert scope is not None
            # Only our own scope is cancelled: the client's block (the group's host) is never disturbed.
            scope.cancel()
            await group.__aexit__(None, None, None)
        if self._health_thread is not None:
            await anyio.to_thread.run_sync(self.stop_thread)
