"""Deadlines: one time budget for a whole logical call, visible to everything nested inside it.

Theory of operation: a :class:`Deadline` is an absolute expiry on a :class:`~connectivity.policies.clock.Clock`'s
timeline. The current deadline lives in a :mod:`contextvars` variable, so an inner layer (a per-try timeout, a
retry deciding whether a backoff wait still fits, a nested outbound call made while serving an inbound request)
sees what is *left*, never more. Entering a new deadline keeps the earlier of the two.

Across services the deadline travels as a relative timeout in milliseconds: we send ``x-connectivity-timeout-ms``
and, on input, also understand gRPC's ``grpc-timeout`` and Envoy's ``x-envoy-expected-rq-timeout-ms``. Relative
values avoid trusting the peer's wall clock. Invalid header values are ignored (the call gets no deadline from
them), never guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from connectivity.policies._validate import finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "DEADLINE_HEADER",
    "Deadline",
    "current_deadline",
    "deadline",
    "parse_timeout_header",
]

DEADLINE_HEADER = "x-connectivity-timeout-ms"
"""The header we send: the remaining budget in whole milliseconds (rounded down)."""

_ENVOY_HEADER = "x-envoy-expected-rq-timeout-ms"
_GRPC_HEADER = "grpc-timeout"
_MS = re.compile(r"[0-9]{1,12}\Z", re.ASCII)
_GRPC = re.compile(r"([0-9]{1,8})([HMSmun])\Z", re.ASCII)
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

_current: ContextVar[Deadline | None] = ContextVar("connectivity.deadline", default=None)


class Deadline:
    """An absolute expiry on a clock's timeline (treat as immutable).

    Attributes:
        expires_at: Clock time (``clock.now()``) at which the budget is spent.
        clock: The clock the expiry refers to.
        attempt_only: This is the limit of a single attempt (a per-try timeout), not of the call. The response
            body, read after the attempt is over, is bounded by ``parent`` only.
        parent: For an ``attempt_only`` limit, the deadline of the whole call it narrows, if any.

    .. versionadded:: 0.1
    """

    # A plain slotted class rather than a frozen dataclass: one is created per request on the hot path, and a
    # frozen dataclass's __init__ costs several times more.
    __slots__ = ("attempt_only", "clock", "expires_at", "parent")

    expires_at: float
    clock: Clock
    attempt_only: bool
    parent: Deadline | None

    def __init__(
        self,
        expires_at: float,
        clock: Clock = SYSTEM_CLOCK,
        attempt_only: bool = False,
        parent: Deadline | None = None,
    ) -> None:
        self.expires_at = expires_at
        self.clock = clock
        self.attempt_only = attempt_only
        self.parent = parent

    def __repr__(self) -> str:
        extra = f", attempt_only=True, parent={self.parent!r}" if self.attempt_only else ""
        return f"Deadline(expires_at={self.expires_at!r}, clock={self.clock!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Deadline):
            return NotImplemented
        return (
            self.expires_at == other.expires_at
            and self.clock is other.clock
            and self.attempt_only == other.attempt_only
            and self.parent == other.parent
        )

    def __hash__(self) -> int:
        return hash((self.expires_at, id(self.clock), self.attempt_only, self.parent))

    @classmethod
    def after(cls, seconds: float, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(clock.now() + finite_positive("Deadline.seconds", seconds), clock)

    def remaining(self) -> float:
        """Seconds left (negative once expired)."""
        return self.expires_at - self.clock.now()

    @property
    def expired(self) -> bool:
        """Whether the budget is spent."""
        return self.clock.now() >= self.expires_at

    def to_header(self) -> str:
        """The remaining budget as a ``x-connectivity-timeout-ms`` value (at least 0)."""
        return str(max(0, math.floor(self.remaining() * 1000)))

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], clock: Clock = SYSTEM_CLOCK) -> Deadline | None:
        """The tightest valid deadline announced by a caller's headers, or ``None``.

        Reads ``x-connectivity-timeout-ms``, ``grpc-timeout`` and ``x-envoy-expected-rq-timeout-ms``; values
        that do not parse are ignored. ``headers`` must be case-insensitive or have lower-case keys.
        """
        best: float | None = None
        for name in (DEADLINE_HEADER, _GRPC_HEADER, _ENVOY_HEADER):
            raw = headers.get(name)
            if raw is None:
                continue
            seconds = parse_timeout_header(name, raw)
            if seconds is not None and (best is None or seconds < best):
                best = seconds
        if best is None:
            return None
        return cls(clock.now() + best, clock)


def parse_timeout_header(name: str, value: str) -> float | None:
    """Seconds encoded by a timeout header, or ``None`` if the value is invalid.

    Args:
        name: ``x-connectivity-timeout-ms``, ``x-envoy-expected-rq-timeout-ms`` or ``grpc-timeout``.
        value: The raw value.
    """
    value = value.strip(" \t")
    if name.lower() == _GRPC_HEADER:
        if match := _GRPC.match(value):
            return int(match.group(1)) * _GRPC_UNITS[match.group(2)]
        return None
    if _MS.match(value):
        return int(value) / 1000
    return None


def current_deadline() -> Deadline | None:
    """The deadline of the call this code runs in, if any."""
    return _current.get()


@contextmanager
def deadline(seconds: float | Deadline, clock: Clock = SYSTEM_CLOCK) -> Iterator[Deadline]:
    """Run the block under a deadline; nested outbound calls see only what is left.

    If a deadline is already in force and is earlier, it is kept: a nested scope can shorten the budget, never
    extend it.

    Example::

        with cx.deadline(2.0):
            await client.get("/a")   # these two calls share 2 s
            await client.get("/b")
    """
    new = seconds if isinstance(seconds, Deadline) else Deadline.after(seconds, clock)
    outer = _current.get()
    if outer is not None and outer.remaining() <= new.remaining():
        new = outer
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
