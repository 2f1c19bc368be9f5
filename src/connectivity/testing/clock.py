"""A virtual clock for tests: policy time, sleeps and timeouts that cost no real time.

Theory of operation: :class:`FakeClock` keeps its own ``now`` and a heap of timers (sleepers to wake, cancel scopes
to cancel). ``advance(seconds)`` moves time forward and fires, in order, every timer that falls due. Sync
``sleep`` simply advances. Async ``asleep`` registers a timer and waits for it; with ``autojump`` (the default),
when every task in the event loop is blocked, the clock jumps to the next timer, the way trio's ``MockClock`` does,
so async tests run as fast as the code allows while events still happen in virtual-time order. Works under asyncio
and trio (through anyio).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

import anyio
import anyio.lowlevel
from anyio import wait_all_tasks_blocked

__all__ = ["FakeClock"]


class FakeClock:
    """A controllable clock implementing :class:`connectivity.policies.Clock`.

    Args:
        start: Initial monotonic reading.
        epoch: POSIX time at ``start`` (for wall-clock readings such as HTTP-date ``Retry-After``).
        autojump: In async code, jump to the next timer whenever all tasks are blocked.

    Attributes:
        sleeps: Every sleep requested (sync and async), in seconds, in order.

    .. versionadded:: 0.1
    """

    def __init__(self, start: float = 0.0, *, epoch: float = 1_700_000_000.0, autojump: bool = True) -> None:
        self._now = float(start)
        self._start = float(start)
        self._epoch = float(epoch)
        self._autojump = autojump
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = itertools.count()
        self._woken = 0
        self._driver: _Sleeper | None = None
        self._followers: set[_Sleeper] = set()
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        """The current virtual monotonic time."""
        return self._now

    def time(self) -> float:
        """The current virtual POSIX time."""
        return self._epoch + (self._now - self._start)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due, in order."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds})")
        self._advance_to(self._now + seconds)

    def _advance_to(self, target: float) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    self._now = max(self._now, target)
                    return
                when, _, fire = heapq.heappop(self._timers)
                self._now = max(self._now, when)
            fire()

    def _schedule(self, delay: float, fire: Callable[[], object]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (self._now + delay, next(self._seq), fire))

    def sleep(self, seconds: float) -> None:
        """Sync sleep: advance virtual time at once."""
        self.sleeps.append(seconds)
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """Async sleep in virtual time (see the module docstring for how time moves)."""
        self.sleeps.append(seconds)
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(self)
        self._schedule(seconds, sleeper.fire)
        try:
            await self._wait(sleeper)
        finally:
            sleeper.done()

    def timeout_scope(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope cancelled when virtual time reaches ``now + seconds``."""
        scope = anyio.CancelScope()
        if seconds <= 0:
            scope.cancel()
        else:
            self._schedule(seconds, scope.cancel)
        return scope

    async def _wait(self, sleeper: _Sleeper) -> None:
        if not self._autojump:
            await sleeper.event.wait()
            return
        # One sleeper at a time drives the clock; the others wait on their own event, so that a sleeper whose
        # timer fires is runnable at once (and the driver's next "all blocked" moment comes after it has run).
        while not sleeper.fired:
            if self._driver is None:
                self._driver = sleeper
                try:
                    while not sleeper.fired:
                        await wait_all_tasks_blocked()
                        if not sleeper.fired and self._woken == 0:
                            self._jump()
                finally:
                    self._driver = None
                    self._hand_off()
            else:
                self._followers.add(sleeper)
                try:
                    await sleeper.event.wait()
                finally:
                    self._followers.discard(sleeper)
                if not sleeper.fired:
                    sleeper.event = anyio.Event()  # nudged to take over driving

    def _hand_off(self) -> None:
        if self._followers:
            self._followers.pop().event.set()

    def _jump(self) -> None:
        with self._lock:
            if not self._timers:
                return
            target = self._timers[0][0]
        self._advance_to(target)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g}, pending_timers={len(self._timers)})"


class _Sleeper:
    """One pending ``asleep``: its wake-up event, and whether the clock is waiting for it to run."""

    __slots__ = ("alive", "clock", "event", "fired")

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.event = anyio.Event()
        self.alive = True
        self.fired = False

    def fire(self) -> None:
        if self.alive and not self.fired:
            self.fired = True
            self.clock._woken += 1
            self.event.set()

    def done(self) -> None:
        self.alive = False
        if self.fired:
            self.fired = False
            self.clock._woken -= 1
