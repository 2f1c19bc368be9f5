"""Retries: which failures to try again, when, and how often.

Theory of operation: :class:`Retry` is immutable configuration, shared freely. Adapters (transports) translate
what happened on the wire into the policy's vocabulary: a *failure kind* for errors (``connect-failure``,
``reset``, ``read-timeout``, ``per-try-timeout``) or a status code plus the ``Retry-After`` value for responses.
The policy answers with a reason to retry (or ``None``); the first time an attempt fails, the adapter asks
:meth:`Retry.start` for a :class:`RetryState`, the per-request mutable part, which decides whether another attempt
may be made and how long to wait. The success path therefore costs a set lookup and nothing else.

Safety rules (RFC 9110 §9.2.2): only idempotent methods are retried after the request may have reached the
server, unless the request carries an ``Idempotency-Key``; a failure that provably happened before the request
was sent (``connect-failure``) may be retried for any method. A body that cannot be replayed is never resent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative, optional_positive
from connectivity.policies.backoff import Backoff
from connectivity.policies.budget import RetryBudget
from connectivity.policies.retry_after import parse_retry_after

__all__ = [
    "CONNECT_FAILURE",
    "FAILURE_KINDS",
    "IDEMPOTENT_METHODS",
    "PER_TRY_TIMEOUT",
    "READ_TIMEOUT",
    "RESET",
    "Retry",
    "RetryDecision",
    "RetryState",
]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110 §9.2.2: methods whose repetition has the same intended effect as a single request."""

CONNECT_FAILURE: Final = "connect-failure"
"""The connection could not be established: nothing was sent, any method may be retried."""
RESET: Final = "reset"
"""The connection broke after the request may have been sent, before a response arrived."""
READ_TIMEOUT: Final = "read-timeout"
"""No response byte arrived in time."""
PER_TRY_TIMEOUT: Final = "per-try-timeout"
"""The attempt exceeded its per-try timeout."""
FAILURE_KINDS: Final = frozenset({CONNECT_FAILURE, RESET, READ_TIMEOUT, PER_TRY_TIMEOUT})
_NOT_SENT: Final = frozenset({CONNECT_FAILURE})


@dataclass(frozen=True, slots=True)
class Retry:
    """When and how to retry an outbound request.

    Args:
        attempts: Total attempts including the first (1 disables retries).
        backoff: Wait between attempts when the server gives no ``Retry-After``.
        budget: A shared :class:`RetryBudget`; ``None`` means only ``attempts`` limits retries.
        retry_on: Failure kinds to retry (see :data:`FAILURE_KINDS`).
        statuses: Response statuses to retry.
        statuses_requiring_retry_after: Statuses in ``statuses`` that are retried only when the response carries a
            valid ``Retry-After`` (by default 429: a throttled client should wait as told, or not retry).
        methods: Methods retried once the request may have been sent.
        idempotency_header: A request carrying this header may be retried whatever its method.
        retry_after_cap: Longest ``Retry-After`` honoured, seconds; longer values are capped to this.
        per_try_timeout: Time limit of each attempt, seconds (``None``: only the total deadline applies).
        max_replay_bytes: A streamed request body up to this size is kept so it can be resent; a larger one
            disables retries for that request. Bytes bodies are always replayable.
        prefer_other_endpoint: Ask the load balancer to pick a different endpoint for each retry.

    Raises:
        ConfigError: A value is out of range; the message names the field.

    .. versionadded:: 0.1
    """

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff.exponential)
    budget: RetryBudget | None = None
    retry_on: frozenset[str] = frozenset({CONNECT_FAILURE, RESET, READ_TIMEOUT, PER_TRY_TIMEOUT})
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    statuses_requiring_retry_after: frozenset[int] = frozenset({429})
    methods: frozenset[str] = IDEMPOTENT_METHODS
    idempotency_header: str = "idempotency-key"
    retry_after_cap: float = 10.0
    per_try_timeout: float | None = None
    max_replay_bytes: int = 64 * 1024
    prefer_other_endpoint: bool = True

    def __post_init__(self) -> None:
        at_least_int("Retry.attempts", self.attempts, 1)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError("Retry.backoff", self.backoff, "must be a connectivity.Backoff")
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ConfigError("Retry.budget", self.budget, "must be a connectivity.RetryBudget or None")
        _frozen(self, "retry_on", {str(kind) for kind in _iterable(self, "retry_on")})
        if unknown := self.retry_on - FAILURE_KINDS:
            raise ConfigError("Retry.retry_on", sorted(unknown), f"must be among {sorted(FAILURE_KINDS)}")
        _frozen(self, "statuses", {_status("Retry.statuses", s) for s in _iterable(self, "statuses")})
        _frozen(
            self,
            "statuses_requiring_retry_after",
            {
                _status("Retry.statuses_requiring_retry_after", s)
                for s in _iterable(self, "statuses_requiring_retry_after")
            },
        )
        methods = _iterable(self, "methods")
        if any(not isinstance(m, str) or not m.isascii() or not m.isalpha() for m in methods):
            raise ConfigError("Retry.methods", self.methods, "must be HTTP method names")
        _frozen(self, "methods", {str(m).upper() for m in methods})
        if not isinstance(self.idempotency_header, str) or not self.idempotency_header:
            raise ConfigError("Retry.idempotency_header", self.idempotency_header, "must be a header name")
        object.__setattr__(self, "idempotency_header", self.idempotency_header.lower())
        finite_non_negative("Retry.retry_after_cap", self.retry_after_cap)
        optional_positive("Retry.per_try_timeout", self.per_try_timeout)
        at_least_int("Retry.max_replay_bytes", self.max_replay_bytes, 0)
        if not isinstance(self.prefer_other_endpoint, bool):
            raise ConfigError("Retry.prefer_other_endpoint", self.prefer_other_endpoint, "must be a bool")

    @classmethod
    def disabled(cls) -> Retry:
        """A policy that never retries (useful as a per-request override)."""
        return cls(attempts=1)

    # -- classification: cheap, called on every failed attempt ----------------------------------------------

    def status_reason(self, status: int, retry_after: str | None) -> str | None:
        """Why a response with this status should be retried, or ``None`` if it should not."""
        if status not in self.statuses:
            return None
        if status in self.statuses_requiring_retry_after and (
            retry_after is None or parse_retry_after(retry_after, now=0.0) is None
        ):
            return None
        return f"status {status}"

    def error_reason(self, kind: str) -> str | None:
        """Why an error of this failure kind should be retried, or ``None`` if it should not."""
        return kind if kind in self.retry_on else None

    def method_allows(self, method: str, *, has_idempotency_key: bool, sent: bool) -> bool:
        """Whether a request with this method may be sent again after a failure."""
        return not sent or has_idempotency_key or method in self.methods

    def start(self) -> RetryState:
        """Per-request state, created on the first failure."""
        return RetryState(self)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt.

    Attributes:
        retry: Whether to make another attempt.
        delay: Seconds to wait first.
        reason: Why the attempt failed (``"status 503"``, ``"connect-failure"``).
        give_up: When ``retry`` is false, why not (``"attempts exhausted"``, ``"retry budget exhausted"``, ...).
    """

    retry: bool
    delay: float
    reason: str
    give_up: str | None = None


class RetryState:
    """The mutable, per-request part of a retry policy: attempts made, reasons, waits.

    Not shared: each request that fails at least once gets its own (see :meth:`Retry.start`).
    """

    __slots__ = ("_previous_delay", "attempts", "policy", "reasons", "waits")

    def __init__(self, policy: Retry) -> None:
        self.policy = policy
        self.attempts = 1
        self.reasons: list[str] = []
        self.waits: list[float] = []
        self._previous_delay = 0.0

    def decide(
        self,
        reason: str,
        *,
        method_ok: bool,
        replayable: bool,
        retry_after: str | None = None,
        remaining: float | None = None,
        wall_now: float = 0.0,
    ) -> RetryDecision:
        """Decide about another attempt after attempt number ``self.attempts`` failed for ``reason``.

        Args:
            reason: The retryable reason found by :meth:`Retry.status_reason` / :meth:`Retry.error_reason`.
            method_ok: Result of :meth:`Retry.method_allows` for this request and failure.
            replayable: Whether the request body can be sent again.
            retry_after: The response's ``Retry-After`` value, if any.
            remaining: Seconds left before the call's deadline, if it has one.
            wall_now: Current POSIX time, for HTTP-date ``Retry-After`` values.
        """
        policy = self.policy
        self.reasons.append(reason)
        if not method_ok:
            return RetryDecision(False, 0.0, reason, "method is not idempotent")
        if not replayable:
            return RetryDecision(False, 0.0, reason, "request body is not replayable")
        if self.attempts >= policy.attempts:
            return RetryDecision(False, 0.0, reason, "attempts exhausted")
        delay = self._delay(retry_after, wall_now)
        if remaining is not None and delay >= remaining:
            return RetryDecision(False, delay, reason, "deadline too close for another attempt")
        if policy.budget is not None and not policy.budget.try_withdraw():
            return RetryDecision(False, 0.0, reason, "retry budget exhausted")
        self.attempts += 1
        self.waits.append(delay)
        self._previous_delay = delay
        return RetryDecision(True, delay, reason)

    def _delay(self, retry_after: str | None, wall_now: float) -> float:
        policy = self.policy
        told = parse_retry_after(retry_after, now=wall_now) if retry_after is not None else None
        if told is not None:
            return min(told, policy.retry_after_cap)
        delay = policy.backoff.delay(self.attempts, self._previous_delay)
        return delay if math.isfinite(delay) else policy.backoff.cap


def _iterable(policy: Retry, name: str) -> list[object]:
    value = getattr(policy, name)
    if isinstance(value, (str, bytes, int)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"Retry.{name}", value, "must be a collection")
    return list(value)


def _frozen(policy: Retry, name: str, items: set[object]) -> None:
    object.__setattr__(policy, name, frozenset(items))


def _status(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ConfigError(name, value, "must contain HTTP status codes (100-599)")
    return value
