"""One connection pool per endpoint: a network transport for each endpoint the load balancer sends to.

Theory of operation: Envoy keeps a connection pool per upstream host, so hosts do not contend for one pool and a
host that leaves takes its connections with it. An :class:`EndpointPools` stands where the network transport would,
below the load-balancing layer (and the per-try timeout and peer-identity layers between them). Every attempt
carries its :class:`~connectivity.discovery.Endpoint` in ``request.extensions["connectivity.endpoint"]`` (the
load balancer sets it, and so do its health-check probes) and goes to that endpoint's transport, built by the
factory on first use: the same backend and options for each, so ``limits`` apply per endpoint, as Envoy's per-host
pools and limits do. A request that names no endpoint goes to the fallback transport, shared (today's behaviour).

Lifetime: the load balancer tells the pools which endpoints are members (:meth:`EndpointPools.retain`) whenever
discovery changes the set. A pool whose endpoint left is *retired*: no new attempt goes to it, and it is closed
once nothing uses it. Each attempt is counted from the moment it is sent until its response is closed (the body
read to the end, or the response dropped), so a response still streaming when its endpoint leaves finishes
normally and the pool closes right after it. Whoever finishes last closes the pool: the response itself (an
``aclose()`` for an async client), or :meth:`~EndpointPools.retain` when the pool was idle already. A pool an async
client used needs an ``await`` to close; one retired while idle from a sync context is closed by the next async
call through the pools, by the load balancer's background task group when it has one, or by ``aclose()``.
``close()``/``aclose()`` close every pool. Straggling attempts for an endpoint that already left (picked from the
previous snapshot, or a probe) get a pool of their own, retired from birth: nothing leaks over churn.

The count is lock-free on the way in and out (a set of per-attempt tokens: ``add`` and ``discard`` are atomic
under the GIL); the decision to close, rare, is taken under a lock after the retirement flag is set, so an attempt
racing a retirement either is seen by the closer, or sees the flag and checks under the lock whether its pool is
still open (and takes a fresh one if not).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import anyio

from connectivity._http import httpx
from connectivity.errors import ConfigError
from connectivity.transports._base import Inner, Layer

__all__ = ["ENDPOINT_EXTENSION", "EndpointPools", "find_pools"]

ENDPOINT_EXTENSION = "connectivity.endpoint"
"""Request and response extension: the :class:`~connectivity.discovery.Endpoint` the attempt went to."""

_new = object.__new__


class _Pool:
    """One endpoint's transport and the attempts using it."""

    __slots__ = ("active", "asynchronous", "closed", "key", "owner", "retired", "transport")

    def __init__(self, owner: EndpointPools, key: str, transport: Inner, *, retired: bool) -> None:
        self.owner = owner
        self.key = key
        self.transport: Any = transport
        self.active: set[object] = set()  # the tokens of the attempts in flight (response bodies included)
        self.retired = retired
        self.closed = False
        self.asynchronous = False  # an async client used it: closing it takes an await


class _Attempt:
    """An attempt's token; it becomes the response's stream, so closing the response ends the attempt."""

    __slots__ = ("_pool", "_stream")

    _pool: _Pool
    _stream: Any


class _SyncAttempt(_Attempt, httpx.SyncByteStream):
    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)  # no frame of ours per chunk

    def close(self) -> None:
        pool = self._pool
        try:
            if self._stream is not None:  # None when the attempt failed
                self._stream.close()
        finally:
            pool.active.discard(self)
            if pool.retired and pool.owner._last_out(pool):
                pool.owner._shut(pool)


class _AsyncAttempt(_Attempt, httpx.AsyncByteStream):
    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        pool = self._pool
        try:
            if self._stream is not None:
                await self._stream.aclose()
        finally:
            pool.active.discard(self)
            if pool.retired and pool.owner._last_out(pool):
                await _aclose(pool.transport)


def _close(transport: object) -> None:
    """Close a transport's sync side (all there is to close from sync code)."""
    if isinstance(transport, httpx.BaseTransport):
        transport.close()


async def _aclose(transport: object) -> None:
    """Close both sides of a transport from async code, whatever cancellation is under way."""
    with anyio.CancelScope(shield=True):
        _close(transport)
        if isinstance(transport, httpx.AsyncBaseTransport):
            await transport.aclose()


class EndpointPools(Layer):
    """A network transport per endpoint, created on first use and closed when its endpoint leaves.

    Put it where the network transport goes, below a
    :class:`~connectivity.transports.LoadBalancingTransport` (which finds it and tells it the members);
    :func:`connectivity.transport` does when it builds the network transport itself with ``discovery``. Give each
    load balancer its own.

    Args:
        factory: Builds one endpoint's transport (called once per endpoint, on its first attempt), e.g.
            ``lambda: HTTPTransport(limits=httpx.Limits(max_connections=10))``.
        fallback: The transport for requests that name no endpoint (default: one more from ``factory``).

    Raises:
        ConfigError: ``factory`` is not callable; or (when a second load balancer is built over it) it already
            serves a load balancer: each keeps the pools of its own endpoints and retires the others', so two
            would close each other's pools.

    .. versionadded:: 0.1
    """

    __slots__ = ("_balancer", "_doomed", "_factory", "_live", "_lock", "_pools", "_unclosed")

    def __init__(self, factory: Callable[[], Inner], *, fallback: Inner | None = None) -> None:
        if not callable(factory):
            raise ConfigError("EndpointPools.factory", factory, "must be a function returning an httpx transport")
        super().__init__(fallback if fallback is not None else factory())
        self._factory = factory
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}  # the members' pools (a pool per key at most)
        self._unclosed: set[_Pool] = set()  # every pool not closed yet: members', retired and stragglers'
        self._live: frozenset[str] | None = None  # None until the balancer names the members
        self._doomed: list[Any] = []  # retired while idle, used by an async client: an await will close them
        self._balancer: weakref.ref[object] | None = None  # the load balancer that names the members

    def attach(self, balancer: object) -> None:
        """Serve ``balancer`` (called by a load balancer built over these pools); one balancer at a time.

        Raises:
            ConfigError: Another load balancer, still alive, is attached.
        """
        with self._lock:
            current = None if self._balancer is None else self._balancer()
            if current is not None and current is not balancer:
                raise ConfigError(
                    "LoadBalancingTransport.inner",
                    self,
                    f"already serves {current!r}: each load balancer keeps the pools of its own endpoints and "
                    "retires the rest, so two over one EndpointPools would close each other's pools; give each "
                    "balancer its own EndpointPools",
                )
            self._balancer = weakref.ref(balancer)

    # -- reading --------------------------------------------------------------------------------------------------

    @property
    def pools(self) -> dict[str, Inner]:
        """The members' transports by endpoint key (``"host:port"``), as created so far."""
        return {key: pool.transport for key, pool in self._pools.items()}

    @property
    def open(self) -> int:
        """Transports not closed yet, retired ones still finishing included (the fallback excepted)."""
        return len(self._unclosed) + len(self._doomed)

    def in_flight(self, key: str) -> int:
        """Attempts using the endpoint's pool (sent, or with a response not closed yet)."""
        return sum(len(pool.active) for pool in list(self._unclosed) if pool.key == key)

    def describe(self) -> dict[str, object]:
        """What the status app shows: the pools, their attempts in flight, and the retired ones still open."""
        return {
            "pools": {key: {"in_flight": len(pool.active)} for key, pool in sorted(self._pools.items())},
            "retired_open": self.open - len(self._pools),
        }

    # -- membership -----------------------------------------------------------------------------------------------

    def retain(self, keys: Iterable[str]) -> None:
        """Keep the pools of these endpoint keys; retire the others (closed once their last attempt ends)."""
        live = frozenset(keys)
        idle = []
        with self._lock:
            self._live = live
            for key in [key for key in self._pools if key not in live]:
                pool = self._pools.pop(key)
                pool.retired = True
                if not pool.active and not pool.closed:
                    pool.closed = True
                    self._unclosed.discard(pool)
                    idle.append(pool)
        for pool in idle:
            self._shut(pool)

    async def drain(self) -> None:
        """Close the retired pools an async client used that were left for an ``await`` (see the module)."""
        while self._doomed:
            with self._lock:
                doomed, self._doomed = self._doomed, []
            for transport in doomed:
                await _aclose(transport)

    def _open(self, key: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.closed:
                live = self._live
                pool = _Pool(self, key, self._factory(), retired=live is not None and key not in live)
                self._unclosed.add(pool)
                if not pool.retired:
                    self._pools[key] = pool
            return pool

    def _rejoin(self, token: _Attempt) -> None:
        """The token's pool was retired as the attempt began: keep it if still open, else take a fresh one."""
        pool = token._pool
        with self._lock:
            if not pool.closed:
                return
        pool.active.discard(token)
        fresh = self._open(pool.key)
        fresh.asynchronous = pool.asynchronous
        token._pool = fresh
        fresh.active.add(token)

    def _last_out(self, pool: _Pool) -> bool:
        """Whether ``pool`` (retired) is idle and still open; if so it is marked closed: the caller closes it."""
        with self._lock:
            if pool.active or pool.closed:
                return False
            pool.closed = True
            self._unclosed.discard(pool)
            return True

    def _shut(self, pool: _Pool) -> None:
        """Close a retired pool from sync code; its async side, if used, is left for an ``await``."""
        _close(pool.transport)
        if pool.asynchronous:
            with self._lock:
                self._doomed.append(pool.transport)

    # -- one attempt ----------------------------------------------------------------------------------------------

    def _begin(self, key: str, token: _Attempt) -> _Pool:
        pool = self._pools.get(key) or self._open(key)
        token._pool = pool
        pool.active.add(token)
        if pool.retired:
            self._rejoin(token)
            pool = token._pool
        return pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = request.extensions.get(ENDPOINT_EXTENSION)
        if endpoint is None:
            return (self._sync or self._sync_inner()).handle_request(request)
        token = _new(_SyncAttempt)
        token._stream = None
        pool = self._begin(endpoint.key, token)
        try:
            response = pool.transport.handle_request(request)
        except BaseException:
            token.close()
            raise
        token._stream = response.stream
        response.stream = token
        return response  # type: ignore[no-any-return]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._doomed:
            await self.drain()
        endpoint = request.extensions.get(ENDPOINT_EXTENSION)
        if endpoint is None:
            return await (self._async or self._async_inner()).handle_async_request(request)
        token = _new(_AsyncAttempt)
        token._stream = None
        pool = self._begin(endpoint.key, token)
        pool.asynchronous = True
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            await token.aclose()
            raise
        token._stream = response.stream
        response.stream = token
        return response  # type: ignore[no-any-return]

    # -- lifetime -------------------------------------------------------------------------------------------------

    def _take_all(self) -> list[Any]:
        with self._lock:
            pools = list(self._unclosed)
            self._unclosed.clear()
            self._pools.clear()
            doomed, self._doomed = self._doomed, []
            for pool in pools:
                pool.closed = pool.retired = True
        return [pool.transport for pool in pools] + doomed

    def close(self) -> None:
        for transport in self._take_all():
            _close(transport)
        super().close()

    async def aclose(self) -> None:
        for transport in self._take_all():
            await _aclose(transport)
        await super().aclose()

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"EndpointPools(pools={sorted(self._pools)}, open={self.open})"


def find_pools(transport: object) -> EndpointPools | None:
    """The :class:`EndpointPools` in ``transport``'s stack (walking ``inner``), if any."""
    while isinstance(transport, Layer):
        if isinstance(transport, EndpointPools):
            return transport
        transport = transport.inner
    return None
