"""Rate limits shared by many processes through Redis: GCRA, one Lua script per decision.

Theory of operation: :class:`RedisRateLimiter` answers like :class:`~connectivity.policies.ratelimit.RateLimiter`
(``try_acquire(key, cost) -> Decision``, ``peek``, ``wait_time``, ``hold_off``, ``status``), but the theoretical
arrival times live in Redis, one hash per key: a decision is one script (one round trip, atomic across processes,
server time only, every limit of the key consumed together or not at all; see
:mod:`connectivity.backends._ratelimit_scripts`). So N processes enforce *one* limit: over any E seconds they admit
at most ``burst + E / T`` requests together. The answers are the local limiter's (tested side by side), including a
hold-off (``hold_off``: shared by every process, kept apart from the arrival times) and an infinite ``retry_after``
for a single request of more than a whole burst.

Redis unreachable: any Redis error or timeout (``timeout`` bounds the connect and handshake of a new connection and
every read; the clients built here never retry) makes that call decide without Redis and never raises. A decision
on an open connection costs at most one ``timeout``; one that must open a connection to a server that accepts but
never answers, at most two. ``failure_mode="open"`` decides with a local :class:`RateLimiter` whose limits are the
configured ones divided by ``expected_replicas`` (rate ``/ n``, burst ``ceil(burst / n)``), so the replicas
together stay near the limit; ``failure_mode="closed"`` refuses (``retry_after = retry_redis_after``). One
warning per outage (no password in it), and Redis stays out of the path for ``retry_redis_after`` seconds, after
which one caller tries it again: an outage costs one timeout per ``retry_redis_after``, never one per call.

Batched mode (``sync_interval``, Kong's ``sync_rate``): each process decides hot keys on its own and reconciles
with Redis every ``sync_interval`` seconds, all keys in one round trip (a pipeline of the same script). A process
keeps, per key, a *view*: the shared arrival times as of its last sync, plus its own admissions since, counted
``expected_replicas`` times (it assumes the other replicas do what it does), and the real cost it admitted since,
which the next sync adds to the shared state unconditionally. A key whose view is missing or older than twice the
interval is decided in Redis (one round trip, which also refreshes the view), so a key used less often than every
``sync_interval`` is exact. A limit whose burst is smaller than ``expected_replicas * cost`` is always decided in
Redis.

Accuracy of batched mode: a process is blind, for at most about two intervals, to what the other replicas admitted
meanwhile. Over any window of ``E`` seconds the replicas together admit at most about
``burst + E / T + expected_replicas * rate * sync_interval`` requests (``rate`` in requests per second; the tests
check it with replicas hammering together and bursting in turn onto views that have not seen each other), and any
excess is debt: the shared arrival time runs ahead and later requests wait for it. It errs the other way by
about ``expected_replicas`` requests: at saturation each replica keeps its own ``n * T`` of headroom in reserve;
on a loaded machine, where syncs run late, by up to about ``expected_replicas * rate * sync_interval`` more. A
replica alone gets the full rate once its burst is spent (its view is corrected at every sync), but takes a burst
from idle over a few intervals (``1 / n`` of what is left per interval). More replicas than ``expected_replicas``
admit more.

Hot path: for a plain (non-Cluster) client, a decision is one EVALSHA frame, mostly built in advance, written to an
idle connection of the client's pool and read back, skipping redis-py's per-command layers (most of a decision's
CPU); a Cluster client goes through ``register_script``.

Async: :meth:`RedisRateLimiter.atry_acquire` and :meth:`RedisRateLimiter.apeek` use ``redis.asyncio`` on asyncio
(one client per event loop). redis-py has no trio client, so under trio they run the sync twins in a worker thread
(:func:`anyio.to_thread.run_sync`) whenever Redis must be asked; batched local decisions need no thread.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import redis
import redis.asyncio
import redis.exceptions
import sniffio
from cachetools import TTLCache
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectivity.backends import _ratelimit_scripts as lua
from connectivity.backends.redis import (
    _escape,
    _Health,
    _loop_key,
    _pool,
    _redact,
    _require_socket_timeout,
    _secrets,
)
from connectivity.errors import ConfigError
from connectivity.policies._validate import finite_non_negative, finite_positive
from connectivity.policies.ratelimit import Decision, RateLimit, RateLimiter, parse_limits

__all__ = ["FAILURE_MODES", "RedisRateLimiter"]

FAILURE_MODES: Final = ("open", "closed")
"""What a decision does while Redis is unreachable: ``open`` decides locally, ``closed`` refuses."""

_log = logging.getLogger("connectivity.backends.redis_ratelimit")
_SyncClient = redis.Redis | redis.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster
_BATCH_MAX: Final = 10_000  # keys per sync round trip; the rest wait for the next one
_SHA: Final = hashlib.sha1(lua.DECIDE.encode(), usedforsecurity=False).hexdigest().encode()


class _View:
    """Batched mode: one key's shared arrival times as this process last saw them, plus its own admissions since.

    ``tats`` and ``held`` (the end of a hold-off) are on this process's monotonic clock; ``pending`` is real cost
    admitted here and not yet sent, ``sent`` the part of it a round trip in flight is adding to Redis.
    """

    __slots__ = ("held", "pending", "sent", "synced_at", "tats")

    def __init__(self, tats: list[float], synced_at: float) -> None:
        self.tats = tats
        self.synced_at = synced_at
        self.held = 0.0
        self.pending = 0.0
        self.sent = 0.0


@dataclass(slots=True)
class _Call:
    """One script call being made: where, with what, and the pending cost it carries (batched mode)."""

    key: str
    redis_key: str
    args: tuple[str, ...]
    started: float
    view: _View | None = None
    carried: float = 0.0
    frame: bytes = b""


class _Batch:
    """One sync's calls; ``done`` once merged or put back (whichever comes first, exactly once)."""

    __slots__ = ("calls", "done")

    def __init__(self, calls: list[_Call]) -> None:
        self.calls = calls
        self.done = False


async def _read(conn: Any, timeout: float) -> Any:  # noqa: ASYNC109 (redis-py's own per-read timeout)
    """A reply read within ``timeout``: redis-py answers ``None`` when a read given a timeout runs out of it (the
    script and ``SCRIPT LOAD`` never reply nil), leaving the late reply on the wire; raising makes the caller drop
    the connection."""
    reply = await conn.read_response(timeout=timeout)
    if reply is None:
        raise redis.exceptions.TimeoutError(f"no reply within {timeout:g} s")
    return reply


def _bulk(*parts: bytes) -> bytes:
    """RESP bulk strings (the body of a command frame)."""
    return b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in parts)


class _Scripts:
    """A client and the script registered on it; for a plain (non-Cluster) client, its connections used directly.

    A decision is one EVALSHA frame, built mostly in advance, written to an idle connection of the client's pool
    and read back: none of the client's per-command layers (pool lock, observability hooks, retries, argument
    encoding) run on the hot path, which is most of a decision's CPU. ``SCRIPT LOAD`` once when the server does not
    know the script (first use, or a Redis restarted empty). A Cluster client goes through ``register_script``.
    """

    __slots__ = ("client", "decide", "direct", "idle", "owned")

    def __init__(self, client: Any, *, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self.decide: Any = client.register_script(lua.DECIDE)
        self.direct = isinstance(client, (redis.Redis, redis.asyncio.Redis))
        self.idle: list[Any] = []  # list.pop/append are atomic: threads share it without a lock

    def call(self, call: _Call) -> Any:
        if not self.direct:
            return self.decide(keys=(call.redis_key,), args=call.args)
        try:
            conn = self.idle.pop()
        except IndexError:
            conn = self.client.connection_pool.make_connection()
        try:
            conn.send_packed_command((call.frame,), check_health=False)
            try:
                reply = conn.read_response()
            except redis.exceptions.NoScriptError:
                conn.send_command("SCRIPT", "LOAD", lua.DECIDE, check_health=False)
                conn.read_response()
                conn.send_packed_command((call.frame,), check_health=False)
                reply = conn.read_response()
        except redis.exceptions.ResponseError:
            self.idle.append(conn)  # an error reply leaves the connection in step
            raise
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse this connection
            raise
        self.idle.append(conn)
        return reply

    async def acall(self, call: _Call, timeout: float) -> Any:  # noqa: ASYNC109 (a per-read timeout, below)
        """One decision, bounded by ``timeout``: a connection's connect and handshake (once) and then its read.

        The connections are made without a socket timeout: redis-py then writes without wrapping the write in a
        task of its own, and the read takes ``timeout`` as an argument (a timer, not a task). A write of one small
        frame never waits. A fresh connection to a server that accepts and never answers costs at most two
        ``timeout``: one for the handshake, then this read (the Cluster path is bounded as a whole by the caller).
        """
        if not self.direct:
            with anyio.fail_after(timeout):
                return await self.decide(keys=(call.redis_key,), args=call.args)
        try:
            conn = self.idle.pop()
        except IndexError:
            pool = self.client.connection_pool
            kwargs = {**pool.connection_kwargs, "socket_timeout": None, "socket_connect_timeout": timeout}
            conn = pool.connection_class(**kwargs)
        try:
            if not conn.is_connected:
                with anyio.fail_after(timeout):
                    await conn.connect()
            await conn.send_packed_command((call.frame,), check_health=False)
            try:
                reply = await _read(conn, timeout)
            except redis.exceptions.NoScriptError:
                await conn.send_command("SCRIPT", "LOAD", lua.DECIDE, check_health=False)
                await _read(conn, timeout)
                await conn.send_packed_command((call.frame,), check_health=False)
                reply = await _read(conn, timeout)
        except redis.exceptions.ResponseError:
            self.idle.append(conn)
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            raise
        self.idle.append(conn)
        return reply

    def close(self) -> None:
        while self.idle:
            self.idle.pop().disconnect()
        if self.owned:
            self.client.close()

    async def aclose(self) -> None:
        while self.idle:
            await self.idle.pop().disconnect()
        if self.owned:
            await self.client.aclose()


def _check(key: str, cost: float) -> None:
    if not isinstance(key, str):
        raise TypeError(f"key must be a string, got {type(key).__name__}")
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not (0 < cost < math.inf):
        raise ValueError(f"cost must be a finite number > 0, got {cost!r}")


def _divided(limit: RateLimit, replicas: int) -> RateLimit:
    burst = limit.burst or 1
    return RateLimit(limit.rate / replicas, limit.per, math.ceil(burst / replicas), limit.name)


class RedisRateLimiter:
    """A :class:`~connectivity.policies.ratelimit.RateLimiter` whose state is shared through Redis.

    Thread-safe; shared by threads, tasks and processes (see the module docstring for the theory).

    Args:
        limits: The limits (``RateLimit`` objects, or one string for
            :func:`~connectivity.policies.ratelimit.parse_limits`), enforced for all processes together.
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (a password in it is never logged nor shown).
        prefix: Prefix of every key (no ``{`` or ``}``: the hash tag ``{<name>/<key>}`` follows it).
        timeout: Seconds a connect (with its handshake) and each reply may take; a call that exceeds it decides
            without Redis (see the module docstring for the bound).
        failure_mode: ``"open"``: while Redis is unreachable, decide with :attr:`local` (the limits divided by
            ``expected_replicas``); ``"closed"``: refuse.
        expected_replicas: How many processes share the limits; divides them for the local fallback and scales a
            process's own admissions in batched mode.
        retry_redis_after: After a Redis failure, seconds during which every call decides without Redis before
            one caller tries it again (``0``: every call tries, paying the timeout each time).
        name: Names the limiter in keys, events, metrics and the status app (part of every Redis key: processes
            that share a limit use the same name).
        sync_interval: ``None`` (default): every decision is one round trip. Seconds: batched mode (decide hot
            keys locally, reconcile every ``sync_interval`` seconds; see the accuracy bound above).
        max_keys: Keys kept at most locally (fallback limiter, batched views).
        shadow: Decide and count, but always allow.
        client: Your own ``redis.Redis`` (or ``RedisCluster``) for the sync calls, instead of one built from
            ``url``; it must have a ``socket_timeout``. You close it.
        async_client: Your own ``redis.asyncio.Redis`` (or ``RedisCluster``) for the async calls on asyncio,
            bound to one event loop. You close it.

    Attributes:
        remote: Always ``True``: decisions are shared (a local ``RateLimiter`` says ``False``).
        local: The local fallback limiter (limits divided by ``expected_replicas``).
        allowed: Decisions that allowed (this process).
        refused: Decisions that refused, or would have in shadow mode (this process).
        degraded_decisions: Decisions made without Redis because it was unreachable (this process).

    Raises:
        ConfigError: An argument is invalid (the field is named; a password in the URL is masked).

    .. versionadded:: 0.1
    """

    remote: Final = True

    __slots__ = (
        "_async_by_loop",
        "_async_kwargs",
        "_async_user",
        "_by_local",
        "_dirty",
        "_fresh",
        "_head",
        "_health",
        "_limit_args",
        "_lock",
        "_next_sync",
        "_scale",
        "_sync",
        "_syncing",
        "_tag",
        "_tail",
        "_tail_args",
        "_url",
        "_views",
        "allowed",
        "degraded_decisions",
        "expected_replicas",
        "failure_mode",
        "limits",
        "local",
        "max_keys",
        "name",
        "prefix",
        "refused",
        "retry_redis_after",
        "shadow",
        "sync_interval",
        "timeout",
        "url",
    )

    def __init__(
        self,
        limits: Sequence[RateLimit] | RateLimit | str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "connectivity:ratelimit:",
        timeout: float = 0.05,
        failure_mode: Literal["open", "closed"] = "open",
        expected_replicas: int = 1,
        retry_redis_after: float = 1.0,
        name: str = "rate-limit",
        sync_interval: float | None = None,
        max_keys: int = 100_000,
        shadow: bool = False,
        client: _SyncClient | None = None,
        async_client: _AsyncClient | None = None,
    ) -> None:
        if isinstance(limits, str):
            limits = parse_limits(limits)
        elif isinstance(limits, RateLimit):
            limits = [limits]
        if not isinstance(limits, Iterable):
            raise ConfigError("RedisRateLimiter.limits", limits, "must be one or more connectivity.RateLimit")
        limits = list(limits)
        if not limits or not all(isinstance(limit, RateLimit) for limit in limits):
            raise ConfigError("RedisRateLimiter.limits", limits, "must be one or more connectivity.RateLimit")
        if not isinstance(url, str):
            raise ConfigError("RedisRateLimiter.url", f"<{type(url).__name__}>", "must be a string")
        self.url = _redact(url)
        self._url = url
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError("RedisRateLimiter.prefix", prefix, "must be a non-empty string without { or }")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("RedisRateLimiter.name", name, "must be a non-empty string")
        if failure_mode not in FAILURE_MODES:
            raise ConfigError("RedisRateLimiter.failure_mode", failure_mode, "must be 'open' or 'closed'")
        if isinstance(expected_replicas, bool) or not isinstance(expected_replicas, int) or expected_replicas < 1:
            raise ConfigError("RedisRateLimiter.expected_replicas", expected_replicas, "must be an integer >= 1")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError("RedisRateLimiter.max_keys", max_keys, "must be an integer >= 1")
        self.limits: tuple[RateLimit, ...] = tuple(limits)
        self.prefix = prefix
        self.name = name
        self.failure_mode = failure_mode
        self.expected_replicas = expected_replicas
        self.timeout = finite_positive("RedisRateLimiter.timeout", timeout)
        self.retry_redis_after = finite_non_negative("RedisRateLimiter.retry_redis_after", retry_redis_after)
        self.sync_interval = (
            None if sync_interval is None else finite_positive("RedisRateLimiter.sync_interval", sync_interval)
        )
        self.max_keys = max_keys
        self.shadow = bool(shadow)

        if client is not None and not isinstance(client, (redis.Redis, redis.RedisCluster)):
            raise ConfigError("RedisRateLimiter.client", type(client).__name__, "must be a redis.Redis")
        if client is not None:
            _require_socket_timeout("RedisRateLimiter.client", client)
        if async_client is not None and not isinstance(
            async_client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)
        ):
            raise ConfigError(
                "RedisRateLimiter.async_client", type(async_client).__name__, "must be a redis.asyncio.Redis"
            )
        if async_client is not None:
            _require_socket_timeout("RedisRateLimiter.async_client", async_client)
        sync_kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self._async_kwargs: dict[str, Any] = {**sync_kwargs, "retry": AsyncRetry(NoBackoff(), 0)}
        try:
            if client is None:
                client = redis.Redis.from_pool(_pool(redis.ConnectionPool, url, self.url, sync_kwargs))
                self._sync = _Scripts(client, owned=True)
            else:
                self._sync = _Scripts(client, owned=False)
            if async_client is None:
                _pool(redis.asyncio.ConnectionPool, url, self.url, self._async_kwargs)  # validate the URL now
        except ConfigError as exc:
            raise ConfigError("RedisRateLimiter.url", self.url, exc.rule) from None
        self._async_user = None if async_client is None else _Scripts(async_client, owned=False)
        self._async_by_loop: dict[int, tuple[Any, _Scripts]] = {}

        # Per limit: field name, interval, tolerance (strings once, not on every call).
        self._limit_args: tuple[str, ...] = tuple(
            part
            for limit in self.limits
            for part in (
                f"{limit.rate!r}/{limit.per!r}b{limit.burst}",
                repr(limit.interval),
                repr(limit.tolerance),
            )
        )
        self._tail_args = (str(len(self.limits)), *self._limit_args)
        self._head = b"*%d\r\n" % (4 + len(self._tail_args) + 4) + _bulk(b"EVALSHA", _SHA, b"1")
        self._tail = _bulk(*(part.encode() for part in self._tail_args))
        self._tag = f"{prefix}{{{_escape(name)}/"
        self.local = RateLimiter(
            [_divided(limit, expected_replicas) for limit in self.limits],
            name=f"{name} (local fallback)",
            max_keys=max_keys,
        )
        self._by_local = {id(mine): theirs for mine, theirs in zip(self.local.limits, self.limits, strict=True)}
        if failure_mode == "open":
            what = f"deciding with each process's local limiter (limits divided by {expected_replicas})"
        else:
            what = "refusing every request (failure_mode='closed')"
        self._health = _Health(
            self.url,
            _secrets(url),
            self.retry_redis_after,
            subject=f"shared rate limit state of {name!r}",
            fallback=what,
            log=_log,
        )
        self._lock = threading.Lock()
        self.allowed = 0
        self.refused = 0
        self.degraded_decisions = 0
        # Batched mode.
        self._scale = float(expected_replicas)
        self._fresh = 2.0 * (self.sync_interval or 0.0)
        self._views: TTLCache[str, _View] = TTLCache(maxsize=max_keys, ttl=self._fresh or 1.0)
        self._dirty: dict[str, _View] = {}
        self._next_sync = 0.0
        self._syncing = False

    def __repr__(self) -> str:
        limits = "; ".join(limit.name for limit in self.limits)
        return f"RedisRateLimiter({limits!r}, url={self.url!r}, name={self.name!r})"

    @property
    def degraded(self) -> bool:
        """``True`` while Redis is considered unreachable (decisions are made without it)."""
        return self._health.down

    # -- decisions --------------------------------------------------------------------------------------------

    def try_acquire(self, key: str = "", cost: float = 1.0) -> Decision:
        """Take ``cost`` requests' worth for ``key`` from every limit, in every process, or none when any refuses.

        One Redis round trip (batched mode: usually none). Never raises a Redis error: see ``failure_mode``.

        Raises:
            ValueError: ``cost`` is not a finite number > 0.
        """
        _check(key, cost)
        if self.sync_interval is not None:
            batch = self._claim_batch()
            if batch is not None:
                self._sync_batch(batch)
            decision = self._from_view(key, cost, commit=True)
            if decision is not None:
                return decision
        return self._remote(key, cost, "a")

    async def atry_acquire(self, key: str = "", cost: float = 1.0) -> Decision:
        """:meth:`try_acquire` for async callers: ``redis.asyncio`` on asyncio, a worker thread under trio."""
        _check(key, cost)
        asyncio = sniffio.current_async_library() == "asyncio"
        if self.sync_interval is not None:
            batch = self._claim_batch()
            if batch is not None:
                if asyncio:
                    await self._async_sync_batch(batch)
                else:
                    await anyio.to_thread.run_sync(self._sync_batch, batch)
            decision = self._from_view(key, cost, commit=True)
            if decision is not None:
                return decision
        if not asyncio:
            return await anyio.to_thread.run_sync(self._remote, key, cost, "a")
        return await self._async_remote(key, cost, "a")

    def peek(self, key: str = "", cost: float = 1.0) -> Decision:
        """What :meth:`try_acquire` would answer now, without taking anything (one round trip)."""
        _check(key, cost)
        if self.sync_interval is not None:
            decision = self._from_view(key, cost, commit=False)
            if decision is not None:
                return decision
        return self._remote(key, cost, "p")

    async def apeek(self, key: str = "", cost: float = 1.0) -> Decision:
        """:meth:`peek` for async callers (see :meth:`atry_acquire`)."""
        _check(key, cost)
        if self.sync_interval is not None:
            decision = self._from_view(key, cost, commit=False)
            if decision is not None:
                return decision
        if sniffio.current_async_library() != "asyncio":
            return await anyio.to_thread.run_sync(self._remote, key, cost, "p")
        return await self._async_remote(key, cost, "p")

    def wait_time(self, key: str = "", cost: float = 1.0) -> float:
        """Seconds until ``cost`` requests for ``key`` would be allowed (0 when they would be now)."""
        return self.peek(key, cost).retry_after

    def hold_off(self, key: str, seconds: float) -> None:
        """Allow nothing for ``key``, in any process, for ``seconds`` (a server said ``Retry-After``).

        The local fallback limiter holds off too, so the hold also survives a Redis outage in this process.
        """
        if self._hold_here(key, seconds):
            self._remote(key, 1.0, "h", hold=seconds)

    async def ahold_off(self, key: str, seconds: float) -> None:
        """:meth:`hold_off` for async callers (see :meth:`atry_acquire`)."""
        if not self._hold_here(key, seconds):
            return
        if sniffio.current_async_library() != "asyncio":
            await anyio.to_thread.run_sync(self.hold_off, key, seconds)  # the local part again: idempotent
        else:
            await self._async_remote(key, 1.0, "h", hold=seconds)

    def _hold_here(self, key: str, seconds: float) -> bool:
        """Hold off in this process (fallback limiter, batched view); ``False`` for a meaningless ``seconds``."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (0 < seconds < math.inf):
            return False
        self.local.hold_off(key, seconds)
        until = time.monotonic() + seconds
        with self._lock:
            view = self._views.get(key)
            if view is not None:  # batched mode: this process knows at once; the others at their next sync
                view.held = max(view.held, until)
        return True

    # -- one round trip ---------------------------------------------------------------------------------------

    def _prepare(self, key: str, cost: float, mode: str, hold: float) -> _Call:
        view: _View | None = None
        carried = 0.0
        if self.sync_interval is not None and mode == "a":
            with self._lock:
                view = self._dirty.get(key) or self._views.get(key)
                if view is not None and view.pending > 0:
                    carried, view.pending = view.pending, 0.0
                    view.sent += carried
        redis_key = f"{self._tag}{_escape(key)}}}"
        cost_text, carried_text, hold_text = repr(float(cost)), repr(carried), repr(float(hold))
        texts = (redis_key, mode, cost_text, carried_text, hold_text)
        frame = b"".join((self._head, _bulk(*(text.encode() for text in texts)), self._tail))
        args = (mode, cost_text, carried_text, hold_text, *self._tail_args)
        return _Call(key, redis_key, args, time.monotonic(), view, carried, frame)

    def _remote(self, key: str, cost: float, mode: str, *, hold: float = 0.0) -> Decision:
        health = self._health
        if health.usable():
            call = self._prepare(key, cost, mode, hold)
            try:
                reply = self._sync.call(call)
            except Exception as exc:  # any Redis failure: decide without it, never raise it to the caller
                self._failed(call, exc)
            else:
                health.recovered()
                return self._answered(call, reply)
        return self._without_redis(key, cost, mode)

    async def _async_remote(self, key: str, cost: float, mode: str, *, hold: float = 0.0) -> Decision:
        health = self._health
        if health.usable():
            call = self._prepare(key, cost, mode, hold)
            try:
                reply = await self._async_scripts().acall(call, self.timeout)
            except Exception as exc:  # any Redis failure (cancellation is not an Exception): decide without it
                self._failed(call, exc)
            else:
                health.recovered()
                return self._answered(call, reply)
        return self._without_redis(key, cost, mode)

    def _failed(self, call: _Call, exc: BaseException) -> None:
        if call.view is not None and call.carried:
            with self._lock:  # still to be sent, by the next call that reaches Redis
                call.view.sent -= call.carried
                call.view.pending += call.carried
                self._dirty[call.key] = call.view
        self._health.failed(exc)

    def _answered(self, call: _Call, reply: Sequence[Any]) -> Decision:
        allowed, index, retry_us, remaining, reset_us, *leads = reply
        if self.sync_interval is not None and call.args[0] == "a":
            self._refresh_view(call, [int(lead) / 1e6 for lead in leads])
        limit = self.limits[max(int(index), 1) - 1]
        if call.args[0] == "h":
            return Decision(True, 0.0, 0, 0.0, limit)
        retry_after = math.inf if int(retry_us) < 0 else int(retry_us) / 1e6
        decision = Decision(bool(allowed), retry_after, int(remaining), int(reset_us) / 1e6, limit)
        return self._counted(decision, call.args[0] == "a")

    def _counted(self, decision: Decision, commit: bool) -> Decision:
        if commit:  # a peek counts nothing
            with self._lock:
                if decision.allowed:
                    self.allowed += 1
                else:
                    self.refused += 1
        if decision.allowed:
            return decision
        if self.shadow:
            return Decision(True, 0.0, 0, decision.reset_after, decision.limit)
        return decision

    def _without_redis(self, key: str, cost: float, mode: str) -> Decision:
        """The decision while Redis is unreachable: the local fallback (``open``) or a refusal (``closed``)."""
        if mode == "h":
            return Decision(True, 0.0, 0, 0.0, self.limits[0])
        with self._lock:
            self.degraded_decisions += 1
        if self.failure_mode == "closed":
            wait = self.retry_redis_after
            return self._counted(Decision(False, wait, 0, wait, self.limits[0]), mode == "a")
        local = self.local.try_acquire(key, cost) if mode == "a" else self.local.peek(key, cost)
        # The limit reported is the configured one (the policy every replica enforces), not its local share.
        decision = Decision(
            local.allowed, local.retry_after, local.remaining, local.reset_after, self._by_local[id(local.limit)]
        )
        return self._counted(decision, mode == "a")

    # -- batched mode -----------------------------------------------------------------------------------------

    def _from_view(self, key: str, cost: float, *, commit: bool) -> Decision | None:
        """A local decision on ``key``'s fresh view, or ``None`` when Redis must decide."""
        now = time.monotonic()
        with self._lock:
            view = self._views.get(key)
            if view is None or now - view.synced_at > self._fresh:
                return None
            if view.held > now:  # a hold-off: refused, nothing taken
                decision = Decision(False, view.held - now, 0, view.held - now, self.limits[0])
            else:
                decided = self._gcra(view.tats, cost * self._scale, now)
                if decided is None:
                    return None
                decision, new_tats = decided
                if commit and decision.allowed:
                    view.tats = new_tats
                    view.pending += cost
            if commit:
                self._dirty[key] = view  # touched: in the next sync, to learn what the others did
        return self._counted(decision, commit)

    def _gcra(self, tats: list[float], scaled: float, now: float) -> tuple[Decision, list[float]] | None:
        """GCRA on a view (the script's rules, on this process's clock); ``None`` when only Redis can tell."""
        refusal: Decision | None = None
        tightest: Decision | None = None
        new_tats = []
        for limit, tat in zip(self.limits, tats, strict=True):
            interval, tolerance = limit.interval, limit.tolerance
            eps = min(lua.EPS, interval / 1000)
            if scaled * interval > tolerance + eps:
                return None  # burst < replicas * cost: never decided locally
            base = tat if tat > now else now
            ahead = base + scaled * interval - now
            if ahead > tolerance + eps:
                wait = ahead - tolerance
                if refusal is None or wait > refusal.retry_after:
                    refusal = Decision(False, wait, 0, base - now, limit)
                new_tats.append(tat)
                continue
            left = int((tolerance + eps - ahead) / interval)
            if tightest is None or left < tightest.remaining:
                tightest = Decision(True, 0.0, left, ahead, limit)
            new_tats.append(base + scaled * interval)
        decision = refusal or tightest
        assert decision is not None
        return decision, new_tats

    def _refresh_view(self, call: _Call, leads: list[float]) -> None:
        now = time.monotonic()
        with self._lock:
            view = call.view
            if view is None:
                view = self._dirty.get(call.key) or self._views.get(call.key)
            if view is None:
                view = _View([], call.started)
            view.sent -= call.carried
            self._set_view(call.key, view, leads, call.started, now)

    def _set_view(self, key: str, view: _View, leads: list[float], started: float, now: float) -> None:
        """``leads``: the hold-off left, then each limit's lead, in seconds, as a script replied."""
        # Admissions made here while the round trip was in flight are not in the leads: add them back.
        own = view.pending * self._scale
        held, *leads = leads
        view.held = now + held if held > 0 else 0.0
        view.tats = [now + lead + own * limit.interval for lead, limit in zip(leads, self.limits, strict=True)]
        view.synced_at = started
        self._views[key] = view

    def _claim_batch(self) -> _Batch | None:
        """The sync due now, claimed by this caller (``None``: not due, already running, or nothing to send)."""
        interval = self.sync_interval
        assert interval is not None
        now = time.monotonic()
        if self._syncing or now < self._next_sync or not self._dirty:
            return None
        with self._lock:
            if self._syncing or now < self._next_sync or not self._dirty:
                return None
            self._next_sync = now + interval
            if not self._health.usable():
                return None
            self._syncing = True
            calls = []
            for key in list(self._dirty)[:_BATCH_MAX]:
                view = self._dirty.pop(key)
                carried, view.pending = view.pending, 0.0
                view.sent += carried
                args = ("s", "1.0", repr(carried), "0.0", *self._tail_args)
                redis_key = f"{self._tag}{_escape(key)}}}"
                calls.append(_Call(key, redis_key, args, now, view, carried))
        return _Batch(calls)

    def _sync_batch(self, batch: _Batch) -> None:
        """Send a claimed batch (one round trip: a pipeline of the script) and merge the answers."""
        try:
            replies = self._pipeline(self._sync, batch.calls)
            if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                self._sync.client.script_load(lua.DECIDE)  # Redis restarted empty: load once, send again
                replies = self._pipeline(self._sync, batch.calls)
            self._merge(batch, replies)
        except Exception as exc:
            self._batch_failed(batch, exc)
        finally:
            self._batch_failed(batch, None)  # interrupted: put everything back (nothing if done)

    async def _async_sync_batch(self, batch: _Batch) -> None:
        try:
            with anyio.fail_after(self.timeout):
                scripts = self._async_scripts()
                replies = await self._apipeline(scripts, batch.calls)
                if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                    await scripts.client.script_load(lua.DECIDE)
                    replies = await self._apipeline(scripts, batch.calls)
            self._merge(batch, replies)
        except Exception as exc:  # cancellation is not an Exception: it leaves through the finally below
            self._batch_failed(batch, exc)
        finally:
            self._batch_failed(batch, None)  # cancelled: put everything back (nothing if done)

    @staticmethod
    def _pipeline(scripts: _Scripts, calls: list[_Call]) -> list[Any]:
        pipe = scripts.client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(scripts.decide.sha, 1, call.redis_key, *call.args)
        return list(pipe.execute(raise_on_error=False))

    @staticmethod
    async def _apipeline(scripts: _Scripts, calls: list[_Call]) -> list[Any]:
        pipe = scripts.client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(scripts.decide.sha, 1, call.redis_key, *call.args)
        return list(await pipe.execute(raise_on_error=False))

    def _merge(self, batch: _Batch, replies: list[Any]) -> None:
        error = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if error is not None:
            raise error
        now = time.monotonic()
        with self._lock:
            if batch.done:
                return
            batch.done = True
            for call, reply in zip(batch.calls, replies, strict=True):
                view = call.view
                assert view is not None
                view.sent -= call.carried
                self._set_view(call.key, view, [int(lead) / 1e6 for lead in reply[5:]], call.started, now)
            self._syncing = False
        self._health.recovered()

    def _batch_failed(self, batch: _Batch, exc: BaseException | None) -> None:
        with self._lock:
            if batch.done:
                return
            batch.done = True
            for call in batch.calls:
                view = call.view
                assert view is not None
                view.sent -= call.carried
                view.pending += call.carried
                self._dirty.setdefault(call.key, view)
            self._syncing = False
        if exc is not None:
            self._health.failed(exc)

    def flush(self) -> None:
        """Batched mode: send every admission not yet in Redis now (e.g. before the process exits)."""
        if self.sync_interval is None:
            return
        with self._lock:
            self._next_sync = 0.0
        batch = self._claim_batch()
        if batch is not None:
            self._sync_batch(batch)

    # -- inspection and lifetime ------------------------------------------------------------------------------

    def keys(self) -> Iterable[str]:
        """Keys this process holds local state for (fallback limiter and batched views); Redis holds the rest."""
        with self._lock:
            views = list(self._views.keys())
        return list(dict.fromkeys([*views, *self.local.keys()]))

    def status(self) -> dict[str, object]:
        """A JSON-ready snapshot, from this process's counters (no round trip).

        Keys: those of :meth:`RateLimiter.status` plus ``remote`` (``True``), ``url`` (password masked),
        ``failure_mode``, ``expected_replicas``, ``sync_interval``, ``degraded`` and ``degraded_decisions``.
        """
        with self._lock:
            views = len(self._views)
        return {
            "name": self.name,
            "kind": "rate-limit",
            "shadow": self.shadow,
            "limits": [
                {"name": limit.name, "rate": limit.rate, "per_s": limit.per, "burst": limit.burst}
                for limit in self.limits
            ],
            "keys": views + len(list(self.local.keys())),
            "allowed": self.allowed,
            "refused": self.refused,
            "remote": True,
            "url": self.url,
            "failure_mode": self.failure_mode,
            "expected_replicas": self.expected_replicas,
            "sync_interval": self.sync_interval,
            "degraded": self._health.down,
            "degraded_decisions": self.degraded_decisions,
        }

    def close(self) -> None:
        """Batched mode: :meth:`flush`. Then close the sync client this limiter built (yours stays open)."""
        self.flush()
        self._sync.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client built for the running event loop (call it in each loop that used the
        async twins; under trio there is nothing to close)."""
        if sniffio.current_async_library() != "asyncio":
            return
        if self._async_user is not None:
            await self._async_user.aclose()
            return
        loop = _loop_key()
        with self._lock:
            entry = self._async_by_loop.pop(id(loop), None)
        if entry is not None and entry[0] is loop:
            await entry[1].aclose()

    def _async_scripts(self) -> _Scripts:
        if self._async_user is not None:
            return self._async_user
        loop = _loop_key()
        entry = self._async_by_loop.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        with self._lock:
            for ident, (other, _) in list(self._async_by_loop.items()):
                is_closed = getattr(other, "is_closed", None)
                if other is not loop and callable(is_closed) and is_closed():
                    del self._async_by_loop[ident]
            pool = _pool(redis.asyncio.ConnectionPool, self._url, self.url, self._async_kwargs)
            scripts = _Scripts(redis.asyncio.Redis.from_pool(pool), owned=True)
            self._async_by_loop[id(loop)] = (loop, scripts)
        return scripts
