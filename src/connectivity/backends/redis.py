"""Circuit breaker state shared by many processes through Redis.

Theory of operation: :class:`RedisBreakerBackend` hands out a :class:`RedisCircuit` per ``(breaker name, key)``.
A ``RedisCircuit`` has the interface of the local :class:`~connectivity.policies.breaker.Circuit`, but its state
machine runs in Redis: every :meth:`~RedisCircuit.admit` and :meth:`~RedisCircuit.record` is one Lua script (one
round trip, atomic across processes, server time only; see :mod:`connectivity.backends._redis_scripts`), so a trip
caused by one process is enforced by every other process on its next admit, and half-open probe permits are
counted once for all of them. The thresholds travel with each call as script arguments, from the
:class:`~connectivity.policies.breaker.CircuitBreaker` configuration.

Failing back to local: any Redis error or timeout (``timeout`` bounds every socket operation; the clients this
module builds never retry) makes that call decide with the breaker's own local circuit, ``breaker.circuit(key)``,
logs one warning per outage, and keeps Redis out of the path for ``retry_redis_after`` seconds, after which one
caller tries it again. An outage therefore costs one timeout per ``retry_redis_after``, never one per call, and no
Redis exception ever reaches the caller. A ticket says who issued it (bit 62 set: Redis), so an outcome is always
recorded where its call was admitted; the outcome of a Redis-admitted call whose record cannot reach Redis is
dropped (a probe permit lost that way is reclaimed by the probe lease).

Async: :meth:`RedisCircuit.aadmit` and :meth:`RedisCircuit.arecord` use ``redis.asyncio`` on asyncio (one client
per event loop). redis-py has no trio client, so under trio (or any other anyio backend) they run the sync twins in
a worker thread (:func:`anyio.to_thread.run_sync`): the state stays shared and a call is still bounded by
``timeout``.

Listeners of the breaker hear the transitions *this process's* calls cause; transitions caused by other processes
are not announced here (the state is shared, the events are not).
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import anyio.to_thread
import redis
import redis.asyncio
import sniffio

from connectivity.backends import _redis_scripts as lua
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
from connectivity.policies.breaker import CLOSED, CircuitBreaker, Rejection, Transition

__all__ = ["RedisBreakerBackend", "RedisCircuit"]

_log = logging.getLogger("connectivity.backends.redis")
_REMOTE: Final = 1 << 62
_PROBE: Final = 1

_SyncClient = redis.Redis | redis.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


class _Scripts:
    """The scripts registered on one client (EVALSHA, with EVAL when the server does not know them yet)."""

    __slots__ = ("admit", "client", "isolate", "owned", "record", "reset", "status")

    def __init__(self, client: Any, *, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self.admit: Any = client.register_script(lua.ADMIT)
        self.record: Any = client.register_script(lua.RECORD)
        self.isolate: Any = client.register_script(lua.ISOLATE)
        self.reset: Any = client.register_script(lua.RESET)
        self.status: Any = client.register_script(lua.STATUS)


def _call_listener(listener: Callable[[Transition], None], transition: Transition) -> None:
    try:
        listener(transition)
    except Exception:  # a listener can never break a call
        _log.exception("circuit breaker listener %r failed", listener)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _off(value: float | None) -> float:
    return -1 if value is None else value


class RedisCircuit:
    """A circuit whose state lives in Redis: the interface of :class:`~connectivity.policies.breaker.Circuit`.

    Get one from :meth:`RedisBreakerBackend.circuit`. Thread-safe; shared by threads, tasks and processes.

    Attributes:
        name: The circuit's name (breaker name, plus ``/key`` for a scoped circuit), as the local circuit's.
        state: The state the last decision saw (it may have changed since, in another process).
        breaker: The configuration.
        local: The local circuit that decides while Redis is unreachable (``breaker.circuit(key)``).
        remote: Always ``True``: decisions are shared (a local ``Circuit`` says ``False``).

    .. versionadded:: 0.1
    """

    remote: Final = True

    __slots__ = ("_args", "_backend", "_keys", "breaker", "local", "name", "state")

    def __init__(self, backend: RedisBreakerBackend, breaker: CircuitBreaker, key: str) -> None:
        self.breaker = breaker
        self.local = breaker.circuit(key)
        self.name = self.local.name
        self.state = CLOSED
        self._backend = backend
        base = f"{backend.prefix}{{{escape(breaker.name)}/{escape(key)}}}"
        self._keys = (f"{base}:state", f"{base}:window")
        count = breaker.window_type == "count"
        longest_open = (breaker.open_for_max or breaker.open_for) * (1.0 + breaker.jitter)
        ttl = max(backend.idle_ttl, 2.0 * longest_open, 0.0 if count else 2.0 * breaker.window)
        self._args: tuple[str | int | float, ...] = (
            breaker.window_type,
            int(breaker.window) if count else float(breaker.window),
            breaker.minimum_calls,
            _off(breaker.failure_ratio),
            _off(breaker.consecutive_failures),
            _off(breaker.slow_call_ratio),
            breaker.half_open_permits,
            breaker.half_open_successes or breaker.half_open_permits,
            float(breaker.open_for),
            _off(breaker.open_for_max),
            float(breaker.jitter),
            math.ceil(ttl * 1000.0),
            backend.probe_lease,
        )

    def __repr__(self) -> str:
        return f"<RedisCircuit {self.name!r} state={self.state}>"

    # -- admission --------------------------------------------------------------------------------------------

    def admit(self) -> int | Rejection:
        """A ticket (pass it to :meth:`record`) or, when the call must not be made, a :class:`Rejection`.

        One Redis round trip; the local circuit decides while Redis is unreachable. In shadow mode a call that
        would be rejected gets the ticket ``-1``.
        """
        health = self._backend._health
        if health.usable():
            try:
                reply = self._backend._sync.admit(keys=self._keys, args=(*self._args, random.random()))
            except Exception as exc:  # any Redis failure: decide locally, never raise it to the caller
                health.failed(exc)
            else:
                health.recovered()
                return self._admitted(reply)
        return self._admit_locally()

    async def aadmit(self) -> int | Rejection:
        """:meth:`admit` for async callers: ``redis.asyncio`` on asyncio, the sync twin in a worker thread else."""
        if sniffio.current_async_library() != "asyncio":
            return await anyio.to_thread.run_sync(self.admit)
        backend = self._backend
        health = backend._health
        if health.usable():
            try:
                with anyio.fail_after(backend._deadline):
                    scripts = backend._async_scripts()
                    reply = await scripts.admit(keys=self._keys, args=(*self._args, random.random()))
            except Exception as exc:  # any Redis failure (cancellation is not an Exception): decide locally
                health.failed(exc)
            else:
                health.recovered()
                return self._admitted(reply)
        return self._admit_locally()

    def _admitted(self, reply: Sequence[Any]) -> int | Rejection:
        admitted, state, epoch, probe, retry_us, from_state, reason, open_for_us = reply
        self.state = state = _text(state)
        if from_state:
            self._announce(_text(from_state), state, _text(reason), int(open_for_us))
        if admitted:
            return _REMOTE | int(epoch) << 1 | int(probe)
        if self.breaker.shadow:
            return -1
        return Rejection(self.name, state, None if retry_us < 0 else retry_us / 1e6)

    def _admit_locally(self) -> int | Rejection:
        ticket = self.local.admit()
        self.state = self.local.state
        return ticket

    # -- outcomes ---------------------------------------------------------------------------------------------

    def record(self, ticket: int, outcome: int) -> None:
        """Count the outcome of an admitted call where it was admitted (Redis or the local circuit)."""
        if ticket < 0:
            return
        if not ticket & _REMOTE:
            self.local.record(ticket, outcome)
            self.state = self.local.state
            return
        health = self._backend._health
        if not health.usable():
            return  # Redis admitted this call and cannot hear its outcome now: nowhere else counts it
        try:
            reply = self._backend._sync.record(keys=self._keys, args=self._record_args(ticket, outcome))
        except Exception as exc:
            health.failed(exc)
        else:
            health.recovered()
            self._changed(reply, announce=True)

    async def arecord(self, ticket: int, outcome: int) -> None:
        """:meth:`record` for async callers (see :meth:`aadmit`)."""
        if ticket < 0 or not ticket & _REMOTE:
            self.record(ticket, outcome)  # local: no I/O
            return
        if sniffio.current_async_library() != "asyncio":
            await anyio.to_thread.run_sync(self.record, ticket, outcome)
            return
        backend = self._backend
        health = backend._health
        if not health.usable():
            return
        try:
            with anyio.fail_after(backend._deadline):
                scripts = backend._async_scripts()
                reply = await scripts.record(keys=self._keys, args=self._record_args(ticket, outcome))
        except Exception as exc:
            health.failed(exc)
        else:
            health.recovered()
            self._changed(reply, announce=True)

    def _record_args(self, ticket: int, outcome: int) -> tuple[str | int | float, ...]:
        return (*self._args, random.random(), (ticket & ~_REMOTE) >> 1, ticket & _PROBE, outcome)

    def _changed(self, reply: Sequence[Any], *, announce: bool) -> None:
        state, from_state, reason, open_for_us = reply
        self.state = state = _text(state)
        if from_state and announce:
            self._announce(_text(from_state), state, _text(reason), int(open_for_us))

    def _announce(self, from_state: str, to_state: str, reason: str, open_for_us: int) -> None:
        transition = Transition(
            self.name, from_state, to_state, reason, None if open_for_us < 0 else open_for_us / 1e6
        )
        for listener in self.breaker._registry.listeners:
            _call_listener(listener, transition)

    # -- by hand ----------------------------------------------------------------------------------------------

    def isolate(self) -> None:
        """Reject every call, in every process, until :meth:`reset`; an isolated circuit's keys never expire.

        The local fallback circuit is isolated too, so the operator's intent also holds during a Redis outage.
        """
        self._by_hand("isolate", self.local.isolate)

    def reset(self) -> None:
        """Close the circuit in every process and forget its window (the local fallback circuit too)."""
        self._by_hand("reset", self.local.reset)

    def _by_hand(self, script: str, local: Callable[[], None]) -> None:
        before = self.local.state
        local()
        self.state = self.local.state
        health = self._backend._health
        if not health.usable():
            return
        try:
            reply = getattr(self._backend._sync, script)(keys=self._keys, args=(*self._args, random.random()))
        except Exception as exc:
            health.failed(exc)
        else:
            health.recovered()
            # One event per change: the local circuit already announced its own transition, if it made one.
            self._changed(reply, announce=self.local.state == before)

    # -- inspection -------------------------------------------------------------------------------------------

    def status(self) -> Mapping[str, object]:
        """A JSON-ready snapshot: the shared state, or the local circuit's while Redis is unreachable.

        Keys: ``state``, ``calls``, ``failures``, ``slow``, ``consecutive_failures``, ``probes_in_flight``,
        ``rejected``, ``retry_after_s``, ``shared`` (always ``True``) and ``degraded`` (``True`` when the
        snapshot is the local circuit's because Redis is unreachable).
        """
        health = self._backend._health
        if health.usable():
            try:
                reply = self._backend._sync.status(keys=self._keys, args=(*self._args, 0.0))
            except Exception as exc:
                health.failed(exc)
            else:
                health.recovered()
                state, calls, failures, slow, consecutive, probes, rejected, retry_us = reply
                self.state = state = _text(state)
                return {
                    "state": state,
                    "calls": int(calls),
                    "failures": int(failures),
                    "slow": int(slow),
                    "consecutive_failures": int(consecutive),
                    "probes_in_flight": int(probes),
                    "rejected": int(rejected),
                    "retry_after_s": None if retry_us < 0 else round(retry_us / 1e6, 3),
                    "shared": True,
                    "degraded": False,
                }
        return {**self.local.status(), "shared": True, "degraded": True}


class RedisBreakerBackend:
    """Circuit breaker state shared by every process that points at the same Redis (see the module docstring).

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL of the Redis server (a password in it is never
            logged nor shown in errors).
        prefix: Prefix of every key (no ``{`` or ``}``: the hash tag that follows it is the circuit's).
        timeout: Seconds every socket operation may take (connect, each command); a call that exceeds it decides
            locally. Applied to the clients built from ``url``, which never retry: a dead or frozen Redis costs a
            call one ``timeout`` (a connect that barely succeeds followed by a silent server, at most two); the
            async twins are also bounded as a whole by ``2 * timeout``.
        retry_redis_after: After a Redis failure, seconds during which every call decides locally before one
            caller tries Redis again (``0``: every call tries Redis, paying the timeout each time).
        idle_ttl: Seconds after which the keys of an unused circuit expire (raised to twice the longest open
            time and twice a time window when those are longer). Isolated circuits never expire.
        probe_lease: Seconds a half-open probe permit is held for a probe that never reports (its process died):
            once every permit is taken and the newest is older, the probes count as failed.
        client: Your own ``redis.Redis`` (or ``RedisCluster``) for the sync calls, instead of one built from
            ``url``; it must have a ``socket_timeout``. You close it.
        async_client: Your own ``redis.asyncio.Redis`` (or ``RedisCluster``) for the async calls on asyncio,
            bound to one event loop. You close it.

    Raises:
        ConfigError: An argument is invalid (the field is named; a password in the URL is masked).

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_async_kwargs",
        "_async_user",
        "_circuits",
        "_deadline",
        "_health",
        "_lock",
        "_per_loop",
        "_sync",
        "_url",
        "idle_ttl",
        "prefix",
        "probe_lease",
        "retry_redis_after",
        "timeout",
        "url",
    )

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "connectivity:breaker:",
        timeout: float = 0.05,
        retry_redis_after: float = 1.0,
        idle_ttl: float = 3600.0,
        probe_lease: float = 30.0,
        client: _SyncClient | None = None,
        async_client: _AsyncClient | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise ConfigError("RedisBreakerBackend.url", f"<{type(url).__name__}>", "must be a string")
        self.url = redact(url)
        self._url = url
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError("RedisBreakerBackend.prefix", prefix, "must be a non-empty string without { or }")
        self.prefix = prefix
        self.timeout = finite_positive("RedisBreakerBackend.timeout", timeout)
        self.retry_redis_after = finite_non_negative("RedisBreakerBackend.retry_redis_after", retry_redis_after)
        self.idle_ttl = finite_positive("RedisBreakerBackend.idle_ttl", idle_ttl)
        self.probe_lease = finite_positive("RedisBreakerBackend.probe_lease", probe_lease)
        # Connect, handshake and command each have their own socket timeout; the async path is also bounded whole.
        self._deadline = 2.0 * self.timeout
        made = clients("RedisBreakerBackend", url, self.url, self.timeout, client, async_client)
        self._sync = _Scripts(made.sync, owned=made.owned)
        self._async_kwargs = made.async_kwargs
        self._async_user = None if made.async_given is None else _Scripts(made.async_given, owned=False)
        self._lock = threading.Lock()
        self._per_loop = PerLoop(self._new_async_scripts, self._lock)
        self._circuits: dict[tuple[str, str], RedisCircuit] = {}
        self._health = Health(self.url, secrets(url), self.retry_redis_after)

    def __repr__(self) -> str:
        return f"RedisBreakerBackend({self.url!r}, prefix={self.prefix!r}, timeout={self.timeout!r})"

    @property
    def degraded(self) -> bool:
        """``True`` while Redis is considered unreachable (circuits decide locally)."""
        return self._health.down

    def circuit(self, breaker: CircuitBreaker, key: str = "") -> RedisCircuit:
        """The shared circuit of ``breaker`` for scope ``key`` (``""``: the breaker's single circuit).

        Cached per ``(breaker.name, key)``; a different breaker object with the same name (a reloaded
        configuration) gets a new circuit over the same shared state, and the cache keeps the newest.

        Raises:
            ConfigError: ``breaker`` is not a :class:`~connectivity.policies.breaker.CircuitBreaker` or ``key``
                is not a string.
        """
        if not isinstance(breaker, CircuitBreaker):
            raise ConfigError("RedisBreakerBackend.circuit.breaker", breaker, "must be a CircuitBreaker")
        if not isinstance(key, str):
            raise ConfigError("RedisBreakerBackend.circuit.key", key, "must be a string")
        ident = (breaker.name, key)
        found = self._circuits.get(ident)
        if found is not None and found.breaker is breaker:
            return found
        with self._lock:
            found = self._circuits.get(ident)
            if found is None or found.breaker is not breaker:
                found = self._circuits[ident] = RedisCircuit(self, breaker, key)
            return found

    def close(self) -> None:
        """Close the sync client this backend built (a client you passed in is yours to close)."""
        if self._sync.owned:
            self._sync.client.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client this backend built for the running event loop (call it in each loop
        that used the async twins; under trio there is nothing to close)."""
        if sniffio.current_async_library() != "asyncio":
            return
        scripts = self._per_loop.pop()
        if scripts is not None:
            await scripts.client.aclose()

    def _async_scripts(self) -> _Scripts:
        return self._async_user if self._async_user is not None else self._per_loop.get()

    def _new_async_scripts(self) -> _Scripts:
        pool = connection_pool(redis.asyncio.ConnectionPool, self._url, self.url, self._async_kwargs)
        return _Scripts(redis.asyncio.Redis.from_pool(pool), owned=True)
