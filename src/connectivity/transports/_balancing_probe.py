"""The I/O side of active health checking: probe requests, and the loops that send them.

:class:`~connectivity.balancing.health.HealthChecker` decides who is due and what a result means; this module
sends the probes and runs the schedule, in one of two homes:

* :class:`AsyncHealthLoop`, a task in the load-balancing transport's task group (``async with client:``): one
  scheduler task, one short task per probe, all on the client's event loop and through its async transport;
* :class:`HealthThread`, for ``httpx.Client`` (and an ``AsyncClient`` used without ``async with``): one daemon
  scheduler thread and a small pool of probe threads using the transport's sync side, started on first use and
  joined by ``close()``.

A probe is ``<method> <scheme>://<endpoint><path>`` with the service's ``Host`` header (and TLS server name), the
check's timeout on every phase, the :data:`PROBE_EXTENSION` set, and the endpoint in the ``connectivity.endpoint``
extension as on an attempt (per-endpoint connection pools below serve it from the endpoint's own pool); its body
is drained (up to :data:`~connectivity.transports._outcome.DRAIN_LIMIT`) so the connection is reused, as Envoy
reuses its health check connections.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.lowlevel

from connectivity._http import httpx
from connectivity.balancing.health import NETWORK, HealthCheck, HealthChecker, Outcome
from connectivity.discovery.endpoint import Endpoint
from connectivity.policies.clock import Clock
from connectivity.transports._endpoint_pools import ENDPOINT_EXTENSION
from connectivity.transports._outcome import DRAIN_LIMIT, discard

__all__ = ["PROBE_EXTENSION", "USER_AGENT", "AsyncHealthLoop", "HealthThread", "aprobe", "probe", "probe_request"]

PROBE_EXTENSION = "connectivity.health_check"
"""Request extension set (to ``True``) on health-check probes, for layers below that want to tell them apart."""

USER_AGENT = "connectivity-health-check"

ProbeResult = tuple[Outcome, str]

_log = logging.getLogger("connectivity.balancing")

_PROBE_THREADS = 4
"""Probes a sync health checker runs at once (each bounded by the check's timeout)."""


def probe_request(check: HealthCheck, endpoint: Endpoint, host: str) -> httpx.Request:
    """The probe for ``endpoint``: the check's method and path, ``Host: host``, the timeout on every phase."""
    timeout = check.timeout
    extensions: dict[str, object] = {
        "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout},
        PROBE_EXTENSION: True,
        ENDPOINT_EXTENSION: endpoint,
    }
    if check.scheme == "https":
        extensions["sni_hostname"] = httpx.URL(f"https://{host}/").host
    headers = {"host": host, "user-agent": USER_AGENT, **check.headers}
    return httpx.Request(
        check.method, f"{check.scheme}://{endpoint.key}{check.path}", headers=headers, extensions=extensions
    )


def probe(transport: httpx.BaseTransport, check: HealthCheck, endpoint: Endpoint, host: str) -> ProbeResult:
    """Send one probe and classify it (blocking; bounded by the check's timeout through httpx's timeouts)."""
    request = probe_request(check, endpoint, host)
    try:
        response = transport.handle_request(request)
    except httpx.TransportError as exc:
        return NETWORK, type(exc).__name__
    except Exception as exc:  # a probe never breaks the checker: count it as a network failure
        _log.debug("health check of %s failed", endpoint.key, exc_info=True)
        return NETWORK, type(exc).__name__
    status = response.status_code
    discard(response)
    return check.outcome(status), f"status {status}"


async def _aclose_drained(response: httpx.Response) -> None:
    try:
        drained = 0
        async for chunk in response.aiter_raw():
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the connection is dropped instead of reused
    finally:
        with anyio.CancelScope(shield=True):  # a timed-out probe still closes its response
            await response.aclose()


async def aprobe(
    transport: httpx.AsyncBaseTransport, check: HealthCheck, endpoint: Endpoint, host: str, clock: Clock
) -> ProbeResult:
    """Async :func:`probe`, also bounded by a cancel scope of the check's timeout on ``clock``."""
    request = probe_request(check, endpoint, host)
    with clock.timeout_scope(check.timeout):
        try:
            response = await transport.handle_async_request(request)
        except httpx.TransportError as exc:
            return NETWORK, type(exc).__name__
        except Exception as exc:
            _log.debug("health check of %s failed", endpoint.key, exc_info=True)
            return NETWORK, type(exc).__name__
        status = response.status_code
        await _aclose_drained(response)
        return check.outcome(status), f"status {status}"
    return NETWORK, "timeout"


class AsyncHealthLoop:
    """Runs the checker's schedule in a task group: ``run()`` until cancelled.

    Args:
        checker: Who is due, and when the next check comes.
        check_one: Probes one endpoint key and records the result (must not raise).
        clock: Sleeps between checks.
    """

    __slots__ = ("_check_one", "_checker", "_clock", "_scope", "_thread", "_woken")

    def __init__(self, checker: HealthChecker, check_one: Callable[[str], Awaitable[None]], clock: Clock) -> None:
        self._checker = checker
        self._check_one = check_one
        self._clock = clock
        self._scope: anyio.CancelScope | None = None
        self._thread: int | None = None
        self._woken = False

    def wake(self) -> None:
        """Recompute the schedule now (an endpoint joined, or a probe finished).

        From another thread than the loop's, a cancel scope cannot be touched: the loop then sees the change at its
        next scheduled check."""
        self._woken = True
        scope = self._scope
        if scope is not None and threading.get_ident() == self._thread:
            scope.cancel()

    async def _one(self, key: str) -> None:
        try:
            await self._check_one(key)
        finally:
            self.wake()

    async def run(self) -> None:
        checker, clock = self._checker, self._clock
        self._thread = threading.get_ident()
        async with anyio.create_task_group() as group:
            while True:
                self._woken = False
                for key in checker.due():
                    group.start_soon(self._one, key)
                wait = checker.next_check() - clock.now()
                if self._woken or wait <= 0:
                    await anyio.lowlevel.checkpoint()
                    continue
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    if math.isinf(wait):
                        await anyio.sleep_forever()
                    else:
                        await clock.asleep(wait)
                self._scope = None


class HealthThread:
    """Runs the checker's schedule in a daemon thread, probing in a small thread pool, until :meth:`stop`.

    Args:
        checker: Who is due, and when the next check comes.
        check_one: Probes one endpoint key and records the result (called in a pool thread; must not raise).
        name: The scheduler thread's name (probe threads get it as a prefix).
    """

    __slots__ = ("_check_one", "_checker", "_cond", "_pool", "_stopped", "_thread", "_woken")

    def __init__(self, checker: HealthChecker, check_one: Callable[[str], None], *, name: str) -> None:
        self._checker = checker
        self._check_one = check_one
        self._cond = threading.Condition()
        self._stopped = False
        self._woken = False
        self._pool = ThreadPoolExecutor(max_workers=_PROBE_THREADS, thread_name_prefix=f"{name}-probe")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is running."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Recompute the schedule now (from any thread)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def _one(self, key: str) -> None:
        try:
            self._check_one(key)
        except Exception:
            _log.exception("health check of %s failed", key)
        finally:
            self.wake()

    def _begin_round(self) -> bool:
        with self._cond:
            self._woken = False
            return not self._stopped

    def _pause(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds, or until woken; ``False`` once stopped."""
        with self._cond:
            if not self._stopped and not self._woken and wait > 0:
                self._cond.wait(None if math.isinf(wait) else wait)
            return not self._stopped

    def _submit(self, keys: list[str]) -> bool:
        try:
            for key in keys:
                self._pool.submit(self._one, key)
        except RuntimeError:  # the pool shut down: we are stopping
            return False
        return True

    def _run(self) -> None:
        checker = self._checker
        clock = checker.clock
        while self._begin_round() and self._submit(checker.due()):
            if not self._pause(checker.next_check() - clock.now()):
                return

    def stop(self, timeout: float) -> None:
        """Stop scheduling, wait for the probes in flight (each bounded by the check's timeout) and the thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
