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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import anyio.to_thread
import redis
import redis.asyncio
import sniffio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectivity.backends import _redis_scripts as lua
from connectivity.errors import ConfigError
from connectivity.policies._validate import finite_non_negative, finite_positive
from connectivity.policies.breaker import CLOSED, CircuitBreaker, Rejection, Transition

__all__ = ["RedisBreakerBackend", "RedisCircuit"]

_log = logging.getLogger("connectivity.backends.redis")
_REMOTE: Final = 1 << 62
_PROBE: Final = 1
_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
# anyio >= 4.11; with an older anyio every event loop shares one redis.asyncio client (one loop per process).
_current_token: Callable[[], Any] | None = getattr(anyio.lowlevel, "current_token", None)

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


class _Health:
    """Whether to use Redis: after a failure, one caller tries it again every ``retry_after`` seconds."""

    __slots__ = (
        "_fallback",
        "_lock",
        "_log",
        "_retry_after",
        "_retry_at",
        "_secrets",
        "_subject",
        "_where",
        "down",
    )

    def __init__(
        self,
        where: str,
        secrets: Sequence[str],
        retry_after: float,
        *,
        subject: str = "shared circuit breaker state",
        fallback: str = "deciding with each process's local circuit",
        log: logging.Logger = _log,
    ) -> None:
        self._log = log
        self._subject = subject
        self._fallback = fallback
        self._lock = threading.Lock()
        self._where = where
        self._secrets = tuple(secret for secret in secrets if secret)
        self._retry_after = retry_after
        self._retry_at = 0.0
        self.down = False

    def usable(self) -> bool:
        if not self.down:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        with self._lock:
            if now < self._retry_at:
                return False
            self._retry_at = now + self._retry_after  # this caller tries Redis; the others stay local meanwhile
            return True

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self._retry_after
            if self.down:
                return
            self.down = True
        detail = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        self._log.warning(
            "%s at %s is unavailable (%s); %s, trying Redis again every %g s",
            self._subject,
            self._where,
            detail,
            self._fallback,
            self._retry_after,
        )

    def recovered(self) -> None:
        if self.down:
            self._recover()

    def _recover(self) -> None:
        with self._lock:
            was_down, self.down = self.down, False  # another thread may have seen the recovery first
        if not was_down:
            return
        self._log.info("%s at %s is available again", self._subject, self._where)


def _call_listener(listener: Callable[[Transition], None], transition: Transition) -> None:
    try:
        listener(transition)
    except Exception:  # a listener can never break a call
        _log.exception("circuit breaker listener %r failed", listener)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _escape(part: str) -> str:
    """Keep the hash tag exact and unambiguous whatever the breaker name and key contain."""
    return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace("/", "%2F")


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
        base = f"{backend.prefix}{{{_escape(breaker.name)}/{_escape(key)}}}"
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
        "_async_by_loop",
        "_async_kwargs",
        "_async_user",
        "_circuits",
        "_deadline",
        "_health",
        "_lock",
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
        self.url = _redact(url)
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
        if client is not None and not isinstance(client, (redis.Redis, redis.RedisCluster)):
            raise ConfigError("RedisBreakerBackend.client", type(client).__name__, "must be a redis.Redis")
        if client is not None:
            _require_socket_timeout("RedisBreakerBackend.client", client)
        if async_client is not None and not isinstance(
            async_client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)
        ):
            raise ConfigError(
                "RedisBreakerBackend.async_client", type(async_client).__name__, "must be a redis.asyncio.Redis"
            )
        if async_client is not None:
            _require_socket_timeout("RedisBreakerBackend.async_client", async_client)
        sync_kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self._async_kwargs: dict[str, Any] = {**sync_kwargs, "retry": AsyncRetry(NoBackoff(), 0)}
        if client is None:
            client = redis.Redis.from_pool(_pool(redis.ConnectionPool, url, self.url, sync_kwargs))
            self._sync = _Scripts(client, owned=True)
        else:
            self._sync = _Scripts(client, owned=False)
        if async_client is None:
            _pool(redis.asyncio.ConnectionPool, url, self.url, self._async_kwargs)  # validate the URL now
        self._async_user = None if async_client is None else _Scripts(async_client, owned=False)
        # id(event loop) -> (that loop, the scripts of the client built for it); redis.asyncio is loop-bound.
        self._async_by_loop: dict[int, tuple[Any, _Scripts]] = {}
        self._lock = threading.Lock()
        self._circuits: dict[tuple[str, str], RedisCircuit] = {}
        self._health = _Health(self.url, _secrets(url), self.retry_redis_after)

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
        loop = _loop_key()
        with self._lock:
            entry = self._async_by_loop.pop(id(loop), None)
        if entry is not None and entry[0] is loop:
            await entry[1].client.aclose()

    def _async_scripts(self) -> _Scripts:
        if self._async_user is not None:
            return self._async_user
        loop = _loop_key()
        entry = self._async_by_loop.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        with self._lock:
            # Forget the clients of closed loops (they cannot be closed any more, nor used).
            for ident, (other, _) in list(self._async_by_loop.items()):
                is_closed = getattr(other, "is_closed", None)
                if other is not loop and callable(is_closed) and is_closed():
                    del self._async_by_loop[ident]
            pool = _pool(redis.asyncio.ConnectionPool, self._url, self.url, self._async_kwargs)
            scripts = _Scripts(redis.asyncio.Redis.from_pool(pool), owned=True)
            self._async_by_loop[id(loop)] = (loop, scripts)
        return scripts


class _Anchor:
    """The weak-referenceable key of the one shared asyncio client when anyio cannot name the event loop."""


_ANCHOR: Final = _Anchor()


def _loop_key() -> object:
    return _current_token().native_token if _current_token is not None else _ANCHOR


def _pool(cls: Any, url: str, shown: str, kwargs: Mapping[str, Any]) -> Any:
    """A connection pool for ``url`` whose timeouts and retries are ours, whatever its query string says."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
        if parts.scheme not in _SCHEMES:
            raise ValueError(parts.scheme)
        database = parts.path.strip("/")
        if parts.scheme != "unix" and database and not database.isdigit():
            raise ValueError(database)  # redis-py would silently use database 0
        pool = cls.from_url(url, **kwargs)
        pool.connection_kwargs.update(kwargs)
        if cls is redis.ConnectionPool:
            pool.connection_class(**pool.connection_kwargs)  # unknown query options fail here, not on first use
    except (TypeError, ValueError):
        raise ConfigError(
            "RedisBreakerBackend.url", shown, "must be a valid redis://, rediss:// or unix:// URL"
        ) from None
    return pool


def _require_socket_timeout(field: str, client: Any) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping) and kwargs.get("socket_timeout") is None:
        raise ConfigError(field, type(client).__name__, "must have a socket_timeout (a call must never hang)")


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password or ""]
    found += [value for name, value in parse_qsl(parts.query) if name.lower() == "password"]
    return found


def _redact(url: str) -> str:
    """``url`` with its password (in the user info or the query string) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() == "password" for name, _ in pairs):
            redacted = [(name, "***" if name.lower() == "password" else value) for name, value in pairs]
            parts = parts._replace(query=urlencode(redacted, safe="*"))
        return urlunsplit(parts)
    except ValueError:
        return "<unparseable URL>"
