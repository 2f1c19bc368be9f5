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

Batched mode (``sync_interval``, Kong's ``sync_rate``): each process decides hot keys on its own from a *view* of
the shared state and reconciles with Redis every ``sync_interval`` seconds, all keys in one round trip (see
:mod:`connectivity.backends._ratelimit_views`); a key used less often than that is decided in Redis, exactly.

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

Hot path: one EVALSHA frame, mostly built in advance, on an idle pooled connection, skipping redis-py's per-command
layers (see :mod:`connectivity.backends._ratelimit_wire`).

Async: :meth:`RedisRateLimiter.atry_acquire` and :meth:`RedisRateLimiter.apeek` use ``redis.asyncio`` on asyncio
(one client per event loop). redis-py has no trio client, so under trio they run the sync twins in a worker thread
(:func:`anyio.to_thread.run_sync`) whenever Redis must be asked; batched local decisions need no thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import redis
import redis.asyncio
import redis.exceptions
import sniffio

from connectivity.backends import _ratelimit_scripts as lua
from connectivity.backends._ratelimit_views import Batch, View, Views
from connectivity.backends._ratelimit_wire import SHA, Call, Scripts, apipeline, bulk, pipeline
from connectivity.backends._redis_common import (
    Health,
    PerLoop,
    clients,
    connection_pool,
    escape,
    redact,
    secrets,
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
        "_async_kwargs",
        "_async_user",
        "_batched",
        "_by_local",
        "_head",
        "_health",
        "_limit_args",
        "_lock",
        "_per_loop",
        "_sync",
        "_tag",
        "_tail",
        "_tail_args",
        "_url",
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
        self.url = redact(url)
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

        made = clients("RedisRateLimiter", url, self.url, self.timeout, client, async_client)
        self._sync = Scripts(made.sync, owned=made.owned)
        self._async_kwargs = made.async_kwargs
        self._async_user = None if made.async_given is None else Scripts(made.async_given, owned=False)

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
        self._head = b"*%d\r\n" % (4 + len(self._tail_args) + 4) + bulk(b"EVALSHA", SHA, b"1")
        self._tail = bulk(*(part.encode() for part in self._tail_args))
        self._tag = f"{prefix}{{{escape(name)}/"
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
        self._health = Health(
            self.url,
            secrets(url),
            self.retry_redis_after,
            subject=f"shared rate limit state of {name!r}",
            fallback=what,
            log=_log,
        )
        self._lock = threading.Lock()
        self._per_loop = PerLoop(self._new_async_scripts, self._lock)
        self.allowed = 0
        self.refused = 0
        self.degraded_decisions = 0
        self._batched = Views(
            self.limits,
            interval=self.sync_interval or 0.0,
            scale=float(expected_replicas),
            max_keys=max_keys,
            tag=self._tag,
            tail_args=self._tail_args,
            health=self._health,
            lock=self._lock,
        )

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
            batch = self._batched.claim()
            if batch is not None:
                self._sync_batch(batch)
            decision = self._batched.decide(key, cost, commit=True)
            if decision is not None:
                return self._counted(decision, True)
        return self._remote(key, cost, "a")

    async def atry_acquire(self, key: str = "", cost: float = 1.0) -> Decision:
        """:meth:`try_acquire` for async callers: ``redis.asyncio`` on asyncio, a worker thread under trio."""
        _check(key, cost)
        asyncio = sniffio.current_async_library() == "asyncio"
        if self.sync_interval is not None:
            batch = self._batched.claim()
            if batch is not None:
                if asyncio:
                    await self._async_sync_batch(batch)
                else:
                    await anyio.to_thread.run_sync(self._sync_batch, batch)
            decision = self._batched.decide(key, cost, commit=True)
            if decision is not None:
                return self._counted(decision, True)
        if not asyncio:
            return await anyio.to_thread.run_sync(self._remote, key, cost, "a")
        return await self._async_remote(key, cost, "a")

    def peek(self, key: str = "", cost: float = 1.0) -> Decision:
        """What :meth:`try_acquire` would answer now, without taking anything (one round trip)."""
        _check(key, cost)
        if self.sync_interval is not None:
            decision = self._batched.decide(key, cost, commit=False)
            if decision is not None:
                return self._counted(decision, False)
        return self._remote(key, cost, "p")

    async def apeek(self, key: str = "", cost: float = 1.0) -> Decision:
        """:meth:`peek` for async callers (see :meth:`atry_acquire`)."""
        _check(key, cost)
        if self.sync_interval is not None:
            decision = self._batched.decide(key, cost, commit=False)
            if decision is not None:
                return self._counted(decision, False)
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
            view = self._batched.views.get(key)
            if view is not None:  # batched mode: this process knows at once; the others at their next sync
                view.held = max(view.held, until)
        return True

    # -- one round trip ---------------------------------------------------------------------------------------

    def _prepare(self, key: str, cost: float, mode: str, hold: float) -> Call:
        view: View | None = None
        carried = 0.0
        if self.sync_interval is not None and mode == "a":
            with self._lock:
                view = self._batched.dirty.get(key) or self._batched.views.get(key)
                if view is not None and view.pending > 0:
                    carried, view.pending = view.pending, 0.0
                    view.sent += carried
        redis_key = f"{self._tag}{escape(key)}}}"
        cost_text, carried_text, hold_text = repr(float(cost)), repr(carried), repr(float(hold))
        texts = (redis_key, mode, cost_text, carried_text, hold_text)
        frame = b"".join((self._head, bulk(*(text.encode() for text in texts)), self._tail))
        args = (mode, cost_text, carried_text, hold_text, *self._tail_args)
        return Call(key, redis_key, args, time.monotonic(), view, carried, frame)

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

    def _failed(self, call: Call, exc: BaseException) -> None:
        if call.view is not None and call.carried:
            with self._lock:  # still to be sent, by the next call that reaches Redis
                call.view.sent -= call.carried
                call.view.pending += call.carried
                self._batched.dirty[call.key] = call.view
        self._health.failed(exc)

    def _answered(self, call: Call, reply: Sequence[Any]) -> Decision:
        allowed, index, retry_us, remaining, reset_us, *leads = reply
        if self.sync_interval is not None and call.args[0] == "a":
            self._batched.refresh(call, [int(lead) / 1e6 for lead in leads])
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

    def _sync_batch(self, batch: Batch) -> None:
        """Send a claimed batch (one round trip: a pipeline of the script) and merge the answers."""
        try:
            replies = pipeline(self._sync, batch.calls)
            if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                self._sync.client.script_load(lua.DECIDE)  # Redis restarted empty: load once, send again
                replies = pipeline(self._sync, batch.calls)
            self._batched.merge(batch, replies)
        except Exception as exc:
            self._batched.put_back(batch, exc)
        finally:
            self._batched.put_back(batch, None)  # interrupted: put everything back (nothing if done)

    async def _async_sync_batch(self, batch: Batch) -> None:
        try:
            with anyio.fail_after(self.timeout):
                scripts = self._async_scripts()
                replies = await apipeline(scripts, batch.calls)
                if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                    await scripts.client.script_load(lua.DECIDE)
                    replies = await apipeline(scripts, batch.calls)
            self._batched.merge(batch, replies)
        except Exception as exc:  # cancellation is not an Exception: it leaves through the finally below
            self._batched.put_back(batch, exc)
        finally:
            self._batched.put_back(batch, None)  # cancelled: put everything back (nothing if done)

    def flush(self) -> None:
        """Batched mode: send every admission not yet in Redis now (e.g. before the process exits)."""
        if self.sync_interval is None:
            return
        with self._lock:
            self._batched.next_sync = 0.0
        batch = self._batched.claim()
        if batch is not None:
            self._sync_batch(batch)

    # -- inspection and lifetime ------------------------------------------------------------------------------

    def keys(self) -> Iterable[str]:
        """Keys this process holds local state for (fallback limiter and batched views); Redis holds the rest."""
        with self._lock:
            views = list(self._batched.views.keys())
        return list(dict.fromkeys([*views, *self.local.keys()]))

    def status(self) -> dict[str, object]:
        """A JSON-ready snapshot, from this process's counters (no round trip).

        Keys: those of :meth:`RateLimiter.status` plus ``remote`` (``True``), ``url`` (password masked),
        ``failure_mode``, ``expected_replicas``, ``sync_interval``, ``degraded`` and ``degraded_decisions``.
        """
        with self._lock:
            views = len(self._batched.views)
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
        scripts = self._per_loop.pop()
        if scripts is not None:
            await scripts.aclose()

    def _async_scripts(self) -> Scripts:
        return self._async_user if self._async_user is not None else self._per_loop.get()

    def _new_async_scripts(self) -> Scripts:
        pool = connection_pool(redis.asyncio.ConnectionPool, self._url, self.url, self._async_kwargs)
        return Scripts(redis.asyncio.Redis.from_pool(pool), owned=True)
