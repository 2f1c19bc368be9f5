"""Batched mode of :class:`~connectivity.backends.redis_ratelimit.RedisRateLimiter`: per-key views of the shared
state, decided locally between syncs.

Theory of operation (``sync_interval``, Kong's ``sync_rate``): each process decides hot keys on its own and
reconciles with Redis every ``sync_interval`` seconds, all keys in one round trip. :class:`Views` keeps, per key, a
:class:`View`: the shared arrival times as of the last sync, plus this process's own admissions since, counted
``expected_replicas`` times (it assumes the other replicas do what it does), and the real cost it admitted since,
which the next sync adds to the shared state unconditionally. A key whose view is missing or older than twice the
interval is decided in Redis (one round trip, which also refreshes the view), so a key used less often than every
``sync_interval`` is exact. A limit whose burst is smaller than ``expected_replicas * cost`` is always decided in
Redis. The limiter does the I/O; this module only keeps and merges state, under the limiter's lock.

How far batched mode can be off is in :mod:`connectivity.backends.redis_ratelimit`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

from cachetools import TTLCache

from connectivity.backends import _ratelimit_scripts as lua
from connectivity.backends._ratelimit_wire import Call
from connectivity.backends._redis_common import Health, escape
from connectivity.policies.ratelimit import Decision, RateLimit

__all__ = ["BATCH_MAX", "Batch", "View", "Views"]

BATCH_MAX: Final = 10_000
"""Keys per sync round trip; the rest wait for the next one."""


class View:
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


class Batch:
    """One sync's calls; ``done`` once merged or put back (whichever comes first, exactly once)."""

    __slots__ = ("calls", "done")

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.done = False


class Views:
    """Every key's view, the keys touched since the last sync, and when the next sync is due.

    Args:
        limits: The limiter's limits (the script's order).
        interval: ``sync_interval`` in seconds (0: not batched; the views then only hold hold-offs).
        scale: ``expected_replicas``: how many times a local admission is counted.
        max_keys: Views kept at most (least recently used go first).
        tag: The Redis key prefix with the hash tag opened (``prefix{name/``).
        tail_args: The script arguments that follow the per-call ones.
        health: The limiter's Redis health gate.
        lock: The limiter's lock (views and counters change together).
    """

    __slots__ = (
        "dirty",
        "fresh",
        "health",
        "interval",
        "limits",
        "lock",
        "next_sync",
        "scale",
        "syncing",
        "tag",
        "tail_args",
        "views",
    )

    def __init__(
        self,
        limits: tuple[RateLimit, ...],
        *,
        interval: float,
        scale: float,
        max_keys: int,
        tag: str,
        tail_args: tuple[str, ...],
        health: Health,
        lock: threading.Lock,
    ) -> None:
        self.limits = limits
        self.interval = interval
        self.scale = scale
        self.fresh = 2.0 * interval
        self.views: TTLCache[str, View] = TTLCache(maxsize=max_keys, ttl=self.fresh or 1.0)
        self.dirty: dict[str, View] = {}
        self.next_sync = 0.0
        self.syncing = False
        self.tag = tag
        self.tail_args = tail_args
        self.health = health
        self.lock = lock

    def decide(self, key: str, cost: float, *, commit: bool) -> Decision | None:
        """A local decision on ``key``'s fresh view (not counted yet), or ``None`` when Redis must decide."""
        now = time.monotonic()
        with self.lock:
            view = self.views.get(key)
            if view is None or now - view.synced_at > self.fresh:
                return None
            if view.held > now:  # a hold-off: refused, nothing taken
                decision = Decision(False, view.held - now, 0, view.held - now, self.limits[0])
            else:
                decided = self.gcra(view.tats, cost * self.scale, now)
                if decided is None:
                    return None
                decision, new_tats = decided
                if commit and decision.allowed:
                    view.tats = new_tats
                    view.pending += cost
            if commit:
                self.dirty[key] = view  # touched: in the next sync, to learn what the others did
        return decision

    def gcra(self, tats: list[float], scaled: float, now: float) -> tuple[Decision, list[float]] | None:
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

    def refresh(self, call: Call, leads: list[float]) -> None:
        now = time.monotonic()
        with self.lock:
            view = call.view
            if view is None:
                view = self.dirty.get(call.key) or self.views.get(call.key)
            if view is None:
                view = View([], call.started)
            view.sent -= call.carried
            self.set_view(call.key, view, leads, call.started, now)

    def set_view(self, key: str, view: View, leads: list[float], started: float, now: float) -> None:
        """``leads``: the hold-off left, then each limit's lead, in seconds, as a script replied."""
        # Admissions made here while the round trip was in flight are not in the leads: add them back.
        own = view.pending * self.scale
        held, *leads = leads
        view.held = now + held if held > 0 else 0.0
        view.tats = [now + lead + own * limit.interval for lead, limit in zip(leads, self.limits, strict=True)]
        view.synced_at = started
        self.views[key] = view

    def claim(self) -> Batch | None:
        """The sync due now, claimed by this caller (``None``: not due, already running, or nothing to send)."""
        interval = self.interval
        now = time.monotonic()
        if self.syncing or now < self.next_sync or not self.dirty:
            return None
        with self.lock:
            if self.syncing or now < self.next_sync or not self.dirty:
                return None
            self.next_sync = now + interval
            if not self.health.usable():
                return None
            self.syncing = True
            calls = []
            for key in list(self.dirty)[:BATCH_MAX]:
                view = self.dirty.pop(key)
                carried, view.pending = view.pending, 0.0
                view.sent += carried
                args = ("s", "1.0", repr(carried), "0.0", *self.tail_args)
                redis_key = f"{self.tag}{escape(key)}}}"
                calls.append(Call(key, redis_key, args, now, view, carried))
        return Batch(calls)

    def merge(self, batch: Batch, replies: list[Any]) -> None:
        error = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if error is not None:
            raise error
        now = time.monotonic()
        with self.lock:
            if batch.done:
                return
            batch.done = True
            for call, reply in zip(batch.calls, replies, strict=True):
                view = call.view
                assert view is not None
                view.sent -= call.carried
                self.set_view(call.key, view, [int(lead) / 1e6 for lead in reply[5:]], call.started, now)
            self.syncing = False
        self.health.recovered()

    def put_back(self, batch: Batch, exc: BaseException | None) -> None:
        with self.lock:
            if batch.done:
                return
            batch.done = True
            for call in batch.calls:
                view = call.view
                assert view is not None
                view.sent -= call.carried
                view.pending += call.carried
                self.dirty.setdefault(call.key, view)
            self.syncing = False
        if exc is not None:
            self.health.failed(exc)
