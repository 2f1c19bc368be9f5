"""Any ``limits`` strategy and storage behind :class:`~connectivity.policies.ratelimit.RateLimiter`'s interface.

Theory of operation: :class:`LimitsAdapter` answers ``try_acquire(key, cost) -> Decision`` (and ``peek``,
``wait_time``, ``status``) by asking a strategy of the `limits <https://limits.readthedocs.io>`_ library (fixed
window, moving window, sliding window counter) over any of its storages (memory, Redis, Redis Cluster, Memcached,
MongoDB, ...). Code written against the connectivity decision interface (the rate limit middleware and transport)
can so use a window algorithm, or a storage connectivity does not ship, without changing.

What differs from :class:`RateLimiter` (GCRA), because ``limits`` decides:

* ``retry_after`` and ``reset_after`` come from the strategy's window statistics (the time its window, or its
  oldest entry, expires): exact for a fixed window, a lower bound for a moving window with ``cost > 1``;
* several limits are consumed together *on a best effort basis*: each is tested first and then hit in turn, so a
  concurrent request (another process) can win between the test and the hit, and the limits hit before the one that
  then refuses stay consumed (``limits`` has no transaction over several limits). A fixed window is always tested
  first too: ``limits`` counts a refused fixed-window hit, which a :class:`RateLimiter` never does;
* ``cost`` must be a whole number (``limits`` counts hits);
* time is ``limits``' own wall clock (``time.time``), not an injected :class:`~connectivity.policies.clock.Clock`.

Sync and asyncio only: a sync strategy/storage gives :meth:`~LimitsAdapter.try_acquire` and friends; an async one
(``limits.aio``, an ``async+...`` storage URI) gives :meth:`~LimitsAdapter.atry_acquire` and
:meth:`~LimitsAdapter.apeek`, which run on asyncio only (``limits.aio`` storages use asyncio primitives; under trio
they raise ``RuntimeError``). ``limits`` is imported when an adapter is built, never by importing this module.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from connectivity.errors import ConfigError
from connectivity.policies.ratelimit import Decision, RateLimit

if TYPE_CHECKING:
    from limits import RateLimitItem

__all__ = ["LimitsAdapter"]


def _whole_cost(cost: float) -> int:
    if (
        isinstance(cost, bool)
        or not isinstance(cost, (int, float))
        or not math.isfinite(cost)
        or cost < 1
        or cost != int(cost)
    ):
        raise ValueError(f"cost must be a whole number >= 1 for a limits strategy, got {cost!r}")
    return int(cost)


def _as_rate_limit(item: RateLimitItem) -> RateLimit:
    """The connectivity view of a ``limits`` item: ``amount`` per window, all of it at once."""
    return RateLimit(rate=item.amount, per=float(item.get_expiry()), burst=item.amount, name=str(item))


class LimitsAdapter:
    """A ``limits`` strategy over a ``limits`` storage, answering like a :class:`RateLimiter`.

    Args:
        strategy: A strategy name (``"moving-window"``, ``"fixed-window"``, ``"sliding-window-counter"``), a
            strategy class (``limits.strategies.*`` or ``limits.aio.strategies.*``), or a strategy instance
            already bound to its storage (then ``storage`` must be ``None``).
        storage: A ``limits`` storage URI (``"memory://"``, ``"redis://host:6379"``, ``"async+redis://..."``) or
            a storage instance (``limits.storage.*`` or ``limits.aio.storage.*``).
        limits: ``limits`` notation (``"10/second"``, ``"10/second; 1000/hour"``), one ``RateLimitItem`` or a
            sequence of them.
        name: Names the adapter in keys (``limits`` identifiers are ``(name, key)``), events and the status app.

    Attributes:
        is_async: Whether the strategy is a ``limits.aio`` one (use :meth:`atry_acquire` and :meth:`apeek`).
        limits: The limits as connectivity :class:`RateLimit` (``burst`` = the window's amount).
        items: The ``limits`` items, in the same order.

    Raises:
        ConfigError: An argument is invalid, the storage URI is unknown, or a sync strategy meets an async storage
            (or the reverse).

    .. versionadded:: 0.1
    """

    __slots__ = ("_lock", "_one_hit", "allowed", "is_async", "items", "limits", "name", "refused", "strategy")

    def __init__(
        self,
        strategy: str | type[Any] | Any,
        storage: str | Any | None,
        limits: str | RateLimitItem | Sequence[RateLimitItem],
        *,
        name: str = "rate-limit",
    ) -> None:
        from limits import storage as sync_storage
        from limits import strategies as sync_strategies
        from limits.aio import storage as async_storage
        from limits.aio import strategies as async_strategies
        from limits.errors import ConfigurationError

        if not isinstance(name, str) or not name.strip():
            raise ConfigError("LimitsAdapter.name", name, "must be a non-empty string")
        self.name = name
        self._lock = threading.Lock()
        self.allowed = 0
        self.refused = 0
        self.items = self._items(limits)
        self.limits: tuple[RateLimit, ...] = tuple(_as_rate_limit(item) for item in self.items)

        sync_base, async_base = sync_strategies.RateLimiter, async_strategies.RateLimiter
        if isinstance(strategy, (sync_base, async_base)):
            if storage is not None:
                raise ConfigError("LimitsAdapter.storage", storage, "must be None when strategy is an instance")
            self.strategy: Any = strategy
            self.is_async = isinstance(strategy, async_base)
            self._one_hit = self._hit_is_atomic()
            return

        if isinstance(storage, str):
            try:
                storage = sync_storage.storage_from_string(storage)
            except (ConfigurationError, ValueError, TypeError) as exc:
                rule = f"is not a usable limits storage ({exc})"
                raise ConfigError("LimitsAdapter.storage", storage, rule) from None
        if isinstance(storage, async_storage.Storage):
            is_async = True
        elif isinstance(storage, sync_storage.Storage):
            is_async = False
        else:
            raise ConfigError("LimitsAdapter.storage", storage, "must be a limits storage URI or storage")

        table: dict[str, Any] = async_strategies.STRATEGIES if is_async else sync_strategies.STRATEGIES
        if isinstance(strategy, str):
            if strategy not in table:
                raise ConfigError("LimitsAdapter.strategy", strategy, f"must be one of {sorted(table)}")
            strategy = table[strategy]
        if not isinstance(strategy, type) or not issubclass(strategy, (sync_base, async_base)):
            rule = "must be a limits strategy name, class or instance"
            raise ConfigError("LimitsAdapter.strategy", strategy, rule)
        if issubclass(strategy, async_base) != is_async:
            kind = "an async (limits.aio)" if is_async else "a sync"
            raise ConfigError("LimitsAdapter.strategy", strategy, f"must match {kind} storage")
        try:
            self.strategy = strategy(storage)
        except NotImplementedError as exc:  # e.g. a moving window over a storage that cannot keep one
            rule = f"does not support this storage ({exc})"
            raise ConfigError("LimitsAdapter.strategy", strategy, rule) from None
        self.is_async = is_async
        self._one_hit = self._hit_is_atomic()

    def _hit_is_atomic(self) -> bool:
        """Whether one ``hit`` decides alone: one limit, and a strategy whose refused hit takes nothing.

        A fixed window counts a refused hit (``limits`` increments, then compares), so it is tested first.
        """
        from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindow
        from limits.strategies import FixedWindowRateLimiter

        return len(self.items) == 1 and not isinstance(self.strategy, (FixedWindowRateLimiter, AsyncFixedWindow))

    @staticmethod
    def _items(limits: object) -> tuple[RateLimitItem, ...]:
        from limits import RateLimitItem, parse_many

        items: list[Any]
        if isinstance(limits, str):
            try:
                items = parse_many(limits)
            except ValueError:
                rule = "must be limits notation such as '10/second'"
                raise ConfigError("LimitsAdapter.limits", limits, rule) from None
        elif isinstance(limits, RateLimitItem):
            items = [limits]
        elif isinstance(limits, Sequence):
            items = list(limits)
        else:
            items = []
        if not items or not all(isinstance(item, RateLimitItem) for item in items):
            raise ConfigError("LimitsAdapter.limits", limits, "must be limits notation or limits.RateLimitItem(s)")
        return tuple(items)

    def __repr__(self) -> str:
        return f"LimitsAdapter({type(self.strategy).__name__}, {'; '.join(map(str, self.items))!r})"

    # -- sync -------------------------------------------------------------------------------------------------

    def try_acquire(self, key: str = "", cost: float = 1.0) -> Decision:
        """Take ``cost`` hits for ``key`` from every limit (best effort all-or-nothing; see the module docstring).

        Raises:
            ValueError: ``cost`` is not a whole number >= 1.
            TypeError: The adapter is async (use :meth:`atry_acquire`).
        """
        hits = _whole_cost(cost)
        self._require(async_=False)
        strategy, ids = self.strategy, (self.name, key)
        if self._one_hit:
            allowed = strategy.hit(self.items[0], *ids, cost=hits)
        else:
            allowed = all(strategy.test(item, *ids, cost=hits) for item in self.items)
            allowed = allowed and all(strategy.hit(item, *ids, cost=hits) for item in self.items)
        return self._counted(
            self._explain(allowed, hits, [strategy.get_window_stats(i, *ids) for i in self.items])
        )

    def peek(self, key: str = "", cost: float = 1.0) -> Decision:
        """What :meth:`try_acquire` would answer now, without taking anything."""
        hits = _whole_cost(cost)
        self._require(async_=False)
        strategy, ids = self.strategy, (self.name, key)
        allowed = all(strategy.test(item, *ids, cost=hits) for item in self.items)
        return self._explain(allowed, hits, [strategy.get_window_stats(i, *ids) for i in self.items])

    def wait_time(self, key: str = "", cost: float = 1.0) -> float:
        """Seconds until ``cost`` hits for ``key`` would be allowed, as the strategy's windows tell (0: now)."""
        return self.peek(key, cost).retry_after

    # -- asyncio ----------------------------------------------------------------------------------------------

    async def atry_acquire(self, key: str = "", cost: float = 1.0) -> Decision:
        """:meth:`try_acquire` with a ``limits.aio`` strategy (asyncio only).

        Raises:
            ValueError: ``cost`` is not a whole number >= 1.
            TypeError: The adapter is sync (use :meth:`try_acquire`).
        """
        hits = _whole_cost(cost)
        self._require(async_=True)
        strategy, ids = self.strategy, (self.name, key)
        if self._one_hit:
            allowed = await strategy.hit(self.items[0], *ids, cost=hits)
        else:
            allowed = True
            for item in self.items:
                allowed = allowed and await strategy.test(item, *ids, cost=hits)
            for item in self.items:
                allowed = allowed and await strategy.hit(item, *ids, cost=hits)
        stats = [await strategy.get_window_stats(item, *ids) for item in self.items]
        return self._counted(self._explain(allowed, hits, stats))

    async def apeek(self, key: str = "", cost: float = 1.0) -> Decision:
        """:meth:`peek` with a ``limits.aio`` strategy (asyncio only)."""
        hits = _whole_cost(cost)
        self._require(async_=True)
        strategy, ids = self.strategy, (self.name, key)
        allowed = True
        for item in self.items:
            allowed = allowed and await strategy.test(item, *ids, cost=hits)
        stats = [await strategy.get_window_stats(item, *ids) for item in self.items]
        return self._explain(allowed, hits, stats)

    # -- shared -----------------------------------------------------------------------------------------------

    def _require(self, *, async_: bool) -> None:
        if self.is_async != async_:
            use = "atry_acquire/apeek" if self.is_async else "try_acquire/peek"
            kind = "an async" if self.is_async else "a sync"
            raise TypeError(f"{self!r} has {kind} strategy: use {use}")
        if async_:
            import sniffio

            if sniffio.current_async_library() != "asyncio":
                raise RuntimeError("limits.aio strategies run on asyncio only")

    def _explain(self, allowed: bool, hits: int, stats: Sequence[Any]) -> Decision:
        now = time.time()
        if allowed:
            index = min(range(len(stats)), key=lambda i: stats[i].remaining)
            reset = max(0.0, stats[index].reset_time - now)
            return Decision(True, 0.0, max(0, int(stats[index].remaining)), reset, self.limits[index])
        # Refused: the limit that frees last decides (a limit short of ``hits`` is one that refuses).
        short = [i for i, window in enumerate(stats) if window.remaining < hits] or list(range(len(stats)))
        index = max(short, key=lambda i: stats[i].reset_time)
        wait = max(0.0, stats[index].reset_time - now)
        return Decision(False, wait, 0, wait, self.limits[index])

    def _counted(self, decision: Decision) -> Decision:
        with self._lock:
            if decision.allowed:
                self.allowed += 1
            else:
                self.refused += 1
        return decision

    def status(self) -> dict[str, object]:
        """A JSON-ready snapshot for the status app."""
        return {
            "name": self.name,
            "kind": "rate-limit",
            "backend": "limits",
            "strategy": type(self.strategy).__name__,
            "storage": type(self.strategy.storage).__name__,
            "limits": [
                {"name": limit.name, "rate": limit.rate, "per_s": limit.per, "burst": limit.burst}
                for limit in self.limits
            ],
            "allowed": self.allowed,
            "refused": self.refused,
        }
