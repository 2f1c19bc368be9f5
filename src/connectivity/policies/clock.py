"""Time, injected.

Policies never read the wall clock: they ask a :class:`Clock` for monotonic seconds. Transports also ask it to
sleep (backoff waits) and to bound an async operation (deadlines), so a test that injects
:class:`connectivity.testing.FakeClock` controls every second the library spends, and no test waits for real
backoff. The default, :data:`SYSTEM_CLOCK`, is :func:`time.monotonic` plus anyio's sleep and cancel scopes.
"""

from __future__ import annotations

import time as _time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where policies and transports get time from.

    ``now`` is all a policy uses. Transports also use ``time`` (wall clock, for HTTP dates), ``sleep`` (sync),
    ``asleep`` (async) and ``timeout_scope`` (a cancel scope that expires ``seconds`` from now on this clock's
    timeline).
    """

    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def time(self) -> float:
        """POSIX seconds (wall clock), for HTTP dates such as ``Retry-After``."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def timeout_scope(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope that cancels itself ``seconds`` from now."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.sleep`, :func:`anyio.sleep`, anyio cancel scopes."""

    __slots__ = ()

    # A bound builtin: calling it costs what calling time.monotonic costs.
    now = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0.0))

    def timeout_scope(self, seconds: float) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
"""The process-wide default clock."""
