"""The resolver contract: where endpoint lists come from, and how a load balancer keeps up with them.

Theory of operation: a resolver owns the *last good* endpoint list of one service. The load-balancing transport
asks it, without I/O, for that list (:meth:`Resolver.current`) on every request, and lets it refresh when
:meth:`Resolver.due` says so: synchronously (:meth:`Resolver.refresh`) for an ``httpx.Client``, asynchronously
(:meth:`Resolver.arefresh`) for an ``httpx.AsyncClient``. A resolver that can be told about changes (a registry
watch, a file watcher) also implements :meth:`Resolver.watch`, which the transport runs in its own task group for
as long as it lives.

A failed refresh never loses the last good list: it is kept, with the error (as text and as the exception
object) in :class:`Resolution`, and the next refresh is due after ``retry_interval``. Resolvers report a source
that cannot be read (a name that does not exist, a registry that is down, a malformed answer) as a
:class:`DiscoveryError` and an answer with an invalid endpoint in it as a
:class:`~connectivity.errors.ConfigError` naming the entry; either way the whole answer is rejected, as Envoy
rejects (NACKs) an invalid endpoint update, and the previous list stays in force. An empty list is a valid answer
(the balancer raises :class:`~connectivity.errors.NoHealthyEndpointError` for it), never a crash.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from connectivity.discovery.endpoint import Endpoint
from connectivity.errors import ConfigError, ConnectivityError
from connectivity.policies._validate import finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["DiscoveryError", "Resolution", "Resolver", "Static", "UpdateCallback"]


class DiscoveryError(ConnectivityError):
    """A resolver could not get an endpoint list from its source; the last good list stays in force.

    It is never raised to a caller of :meth:`Resolver.refresh`: it lands in :attr:`Resolution.exception`
    (and, as text, in :attr:`Resolution.error`).

    Attributes:
        source: What was being resolved (``"dns:_http._tcp.orders.internal"``, ``"file:/etc/orders.json"``).
        kind: ``"not-found"`` (NXDOMAIN, a missing file), ``"no-data"`` (the name exists but has no record of
            the type asked), ``"timeout"``, ``"unavailable"`` (no server answered, connection refused, a server
            error) or ``"malformed"`` (an answer that could not be parsed or holds an invalid record).
        reason: What happened, for people.

    .. versionadded:: 0.1
    """

    def __init__(self, source: str, kind: str, reason: str) -> None:
        self.source = source
        self.kind = kind
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True, slots=True)
class Resolution:
    """One resolver's state: the last good endpoints and what happened since.

    Attributes:
        endpoints: The last good endpoint list (empty before the first success).
        version: Increases whenever ``endpoints`` changes (0: never resolved).
        resolved_at: Clock time of the last successful refresh (``None``: never).
        error: Why the last refresh failed (``None`` when it succeeded); the endpoints are then the older ones.
        source: What was resolved, for messages and the status app (e.g. ``"dns:_http._tcp.orders.internal"``).
        exception: The exception behind ``error`` (a :class:`DiscoveryError`, a
            :class:`~connectivity.errors.ConfigError` naming the bad entry, ...), without its traceback; ``None``
            when the last refresh succeeded. Not part of equality.

    .. versionadded:: 0.1
    """

    endpoints: tuple[Endpoint, ...] = ()
    version: int = 0
    resolved_at: float | None = None
    error: str | None = None
    source: str = ""
    exception: Exception | None = field(default=None, compare=False, repr=False)


UpdateCallback = Callable[[Resolution], None]
"""Called by :meth:`Resolver.watch` with each new resolution (it must not block)."""


class Resolver(ABC):
    """Produces the endpoint list of one service and keeps the last good one.

    Subclasses implement :meth:`_fetch` and :meth:`_afetch` (one lookup, raising on failure) and inherit the
    bookkeeping; those that can watch for changes override :meth:`watch`.

    Args:
        source: What is resolved, for messages.
        refresh_interval: Seconds between refreshes when the source gives no TTL of its own.
        retry_interval: Seconds before retrying after a failed refresh.
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).

    .. versionadded:: 0.1
    """

    __slots__ = ("_due_at", "_lock", "_resolution", "clock", "refresh_interval", "retry_interval", "source")

    def __init__(
        self,
        source: str,
        *,
        refresh_interval: float = 30.0,
        retry_interval: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.source = source
        self.refresh_interval = finite_positive(f"{type(self).__name__}.refresh_interval", refresh_interval)
        self.retry_interval = finite_positive(f"{type(self).__name__}.retry_interval", retry_interval)
        self.clock = clock
        self._lock = threading.Lock()
        self._resolution = Resolution(source=source)
        self._due_at = float("-inf")  # resolve on first use

    def current(self) -> Resolution:
        """The last resolution, without I/O."""
        return self._resolution

    def due(self) -> bool:
        """Whether a refresh is due now (first use, TTL or interval elapsed, or retry after a failure)."""
        return self.clock.now() >= self._due_at

    def refresh(self) -> Resolution:
        """Look the endpoints up now (blocking I/O); keep the last good list on failure."""
        try:
            endpoints, ttl = self._fetch()
        except Exception as error:
            return self._failed(error)
        return self._succeeded(endpoints, ttl)

    async def arefresh(self) -> Resolution:
        """Async :meth:`refresh`."""
        try:
            endpoints, ttl = await self._afetch()
        except Exception as error:
            return self._failed(error)
        return self._succeeded(endpoints, ttl)

    async def watch(self, on_update: UpdateCallback) -> None:
        """Follow the source until cancelled, calling ``on_update`` with each new resolution.

        The default polls: it refreshes whenever :meth:`due` and sleeps on the injected clock in between.
        Registries with change notifications (etcd watch, Consul blocking queries, file watchers) override it.
        """
        version = self._resolution.version
        while True:
            if self.due():
                resolution = await self.arefresh()
                if resolution.version != version:
                    version = resolution.version
                    on_update(resolution)
            await self.clock.asleep(max(self._due_at - self.clock.now(), 0.0))

    @abstractmethod
    def _fetch(self) -> tuple[Iterable[Endpoint], float | None]:
        """One lookup: the endpoints and their TTL in seconds (``None``: use ``refresh_interval``)."""

    async def _afetch(self) -> tuple[Iterable[Endpoint], float | None]:
        """Async :meth:`_fetch`; the default runs the sync lookup (override with real async I/O)."""
        return self._fetch()

    def _succeeded(self, endpoints: Iterable[Endpoint], ttl: float | None) -> Resolution:
        found = tuple(endpoints)
        now = self.clock.now()
        with self._lock:
            previous = self._resolution
            changed = found != previous.endpoints or previous.version == 0
            self._resolution = Resolution(
                found, previous.version + 1 if changed else previous.version, now, None, self.source
            )
            self._due_at = now + (self.refresh_interval if ttl is None else max(ttl, 0.0))
            return self._resolution

    def _failed(self, error: Exception) -> Resolution:
        now = self.clock.now()
        message = f"{type(error).__name__}: {error}"
        _drop_tracebacks(error)
        with self._lock:
            previous = self._resolution
            self._resolution = Resolution(
                previous.endpoints, previous.version, previous.resolved_at, message, self.source, error
            )
            self._due_at = now + self.retry_interval
            return self._resolution

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


def _drop_tracebacks(error: BaseException) -> None:
    """Clear the tracebacks of an error and its causes: kept in a :class:`Resolution`, they would keep the failed
    lookup's frames (sockets, buffers) alive until the next refresh."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


class Static(Resolver):
    """A fixed endpoint list (``"host:port"`` strings or :class:`Endpoint` objects).

    Raises:
        ConfigError: An entry is neither an :class:`Endpoint` nor a valid ``"host:port"``.

    .. versionadded:: 0.1
    """

    __slots__ = ("_endpoints",)

    def __init__(self, endpoints: Iterable[Endpoint | str], *, clock: Clock = SYSTEM_CLOCK) -> None:
        if isinstance(endpoints, (str, bytes)):
            raise ConfigError("Static.endpoints", endpoints, "must be a list of endpoints, not one string")
        parsed = []
        for index, entry in enumerate(endpoints):
            if isinstance(entry, Endpoint):
                parsed.append(entry)
            elif isinstance(entry, str):
                parsed.append(Endpoint.parse(entry))
            else:
                raise ConfigError(f"Static.endpoints[{index}]", entry, "must be an Endpoint or 'host:port'")
        self._endpoints = tuple(parsed)
        super().__init__("static", refresh_interval=3600.0, clock=clock)
        self._succeeded(self._endpoints, float("inf"))

    def _fetch(self) -> tuple[Iterable[Endpoint], float | None]:
        return self._endpoints, float("inf")
