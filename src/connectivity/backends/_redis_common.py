"""What the Redis backends share: URL checks and redaction, the client pool builder, per-event-loop client keys,
and the health gate that keeps an unreachable Redis out of the path.

Theory of operation: :class:`Health` is the outage state of one backend: after a failure, calls decide without
Redis and one caller tries it again every ``retry_after`` seconds; one warning per outage, with every secret of the
URL masked. :func:`pool` builds a connection pool whose timeouts and retries are the backend's, whatever the URL's
query string says, and refuses a URL redis-py would misread. :func:`loop_key` names the running event loop, so each
loop gets its own ``redis.asyncio`` client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Generic, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.lowlevel
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectivity.errors import ConfigError

__all__ = [
    "Health",
    "Clients",
    "PerLoop",
    "clients",
    "connection_pool",
    "escape",
    "loop_key",
    "redact",
    "require_socket_timeout",
    "secrets",
]

_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
# anyio >= 4.11; with an older anyio every event loop shares one redis.asyncio client (one loop per process).
_current_token: Callable[[], Any] | None = getattr(anyio.lowlevel, "current_token", None)
_log = logging.getLogger("connectivity.backends.redis")
_T = TypeVar("_T")
_ASYNC_CLIENTS: Final = (redis.asyncio.Redis, redis.asyncio.RedisCluster)


class Health:
    """Whether to use Redis: after a failure, one caller tries it again every ``retry_after`` seconds."""

    __slots__ = (
        "_fallback",
        "_lock",
        "_log",
        "_retry_after",
        "_retry_at",
        "_subject",
        "_where",
        "down",
        "secrets",
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
        self.secrets = tuple(secret for secret in secrets if secret)
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
        for secret in self.secrets:
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


def escape(part: str) -> str:
    """Keep the hash tag exact and unambiguous whatever the breaker name and key contain."""
    return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace("/", "%2F")


class _Anchor:
    """The weak-referenceable key of the one shared asyncio client when anyio cannot name the event loop."""


_ANCHOR: Final = _Anchor()


def loop_key() -> object:
    return _current_token().native_token if _current_token is not None else _ANCHOR


class PerLoop(Generic[_T]):
    """One object per event loop, built on first use in that loop (``redis.asyncio`` clients are loop-bound).

    Args:
        build: Makes the running loop's object.
        lock: Guards the map (the owner's lock).
    """

    __slots__ = ("_build", "_by_loop", "_lock")

    def __init__(self, build: Callable[[], _T], lock: threading.Lock) -> None:
        self._build = build
        self._lock = lock
        self._by_loop: dict[int, tuple[object, _T]] = {}  # id(loop) -> (that loop, its object)

    def get(self) -> _T:
        """The running loop's object, built now if it has none."""
        loop = loop_key()
        entry = self._by_loop.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        with self._lock:
            # Forget the objects of closed loops (they cannot be closed any more, nor used).
            for ident, (other, _) in list(self._by_loop.items()):
                is_closed = getattr(other, "is_closed", None)
                if other is not loop and callable(is_closed) and is_closed():
                    del self._by_loop[ident]
            built = self._build()
            self._by_loop[id(loop)] = (loop, built)
        return built

    def pop(self) -> _T | None:
        """The running loop's object, forgotten (to be closed by the caller); ``None`` if it has none."""
        loop = loop_key()
        with self._lock:
            entry = self._by_loop.pop(id(loop), None)
        return entry[1] if entry is not None and entry[0] is loop else None


def connection_pool(cls: Any, url: str, shown: str, kwargs: Mapping[str, Any]) -> Any:
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


class Clients(NamedTuple):
    """A backend's Redis clients: the sync one (built here or given), the async one given, if any, and the options
    for the async clients built per event loop."""

    sync: Any
    owned: bool
    async_given: Any
    async_kwargs: dict[str, Any]


def clients(owner: str, url: str, shown: str, timeout: float, client: Any, async_client: Any) -> Clients:
    """Check the clients a backend was given and build the sync one from ``url`` when none was.

    Every socket operation is bounded by ``timeout`` and nothing is retried, whatever the URL's query string says;
    a given client must have a socket timeout. Field names in errors start with ``owner`` (the class name).

    Raises:
        ConfigError: A client of the wrong type or without a socket timeout, or a URL redis-py would misread.
    """
    if client is not None and not isinstance(client, (redis.Redis, redis.RedisCluster)):
        raise ConfigError(f"{owner}.client", type(client).__name__, "must be a redis.Redis")
    if client is not None:
        require_socket_timeout(f"{owner}.client", client)
    if async_client is not None and not isinstance(
        async_client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)
    ):
        raise ConfigError(f"{owner}.async_client", type(async_client).__name__, "must be a redis.asyncio.Redis")
    if async_client is not None:
        require_socket_timeout(f"{owner}.async_client", async_client)
    sync_kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    async_kwargs: dict[str, Any] = {**sync_kwargs, "retry": AsyncRetry(NoBackoff(), 0)}
    owned = client is None
    try:
        if client is None:
            client = redis.Redis.from_pool(connection_pool(redis.ConnectionPool, url, shown, sync_kwargs))
        if async_client is None:
            connection_pool(redis.asyncio.ConnectionPool, url, shown, async_kwargs)  # the URL is checked now
    except ConfigError as exc:
        raise ConfigError(f"{owner}.url", shown, exc.rule) from None
    return Clients(client, owned, async_client, async_kwargs)


def require_socket_timeout(field: str, client: Any) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping) and kwargs.get("socket_timeout") is None:
        raise ConfigError(field, type(client).__name__, "must have a socket_timeout (a call must never hang)")


def secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password or ""]
    found += [value for name, value in parse_qsl(parts.query) if name.lower() == "password"]
    return found


def redact(url: str) -> str:
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
