"""Hedging: when an attempt is slow, send another and take whichever answers first.

Theory of operation: the first attempt starts at once; if no acceptable answer has arrived ``delay`` seconds
later, another attempt starts, up to ``max_extra`` extra attempts, each ``delay`` after the previous one. An
attempt that *fails* (a retryable status or error, as classified by the retry policy) before the delay expires
triggers the next attempt immediately. The first acceptable response wins; the others are cancelled and their
responses closed. Every hedge withdraws from the retry budget, so hedging cannot multiply load on an upstream that
is already slow. Hedging is for idempotent requests with replayable bodies only.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative
from connectivity.policies.budget import RetryBudget
from connectivity.policies.retry import IDEMPOTENT_METHODS

__all__ = ["Hedge"]


@dataclass(frozen=True, slots=True)
class Hedge:
    """Hedged requests: a backup attempt when the first is slow.

    Args:
        delay: Seconds to wait for an answer before sending the next attempt.
        max_extra: Most extra attempts in flight for one request.
        budget: Retry budget the hedges draw from (the builder fills in the retry policy's budget).
        methods: Methods that may be hedged.
        idempotency_header: A request carrying this header may be hedged whatever its method.

    .. versionadded:: 0.1
    """

    delay: float = 0.05
    max_extra: int = 1
    budget: RetryBudget | None = None
    methods: frozenset[str] = IDEMPOTENT_METHODS
    idempotency_header: str = "idempotency-key"

    def __post_init__(self) -> None:
        finite_non_negative("Hedge.delay", self.delay)
        at_least_int("Hedge.max_extra", self.max_extra, 1)
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ConfigError("Hedge.budget", self.budget, "must be a connectivity.RetryBudget or None")
        methods: object = self.methods
        if isinstance(methods, str) or not all(isinstance(m, str) for m in self.methods):
            raise ConfigError("Hedge.methods", self.methods, "must be a collection of HTTP method names")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        object.__setattr__(self, "idempotency_header", self.idempotency_header.lower())

    def may_hedge(self, method: str, *, has_idempotency_key: bool) -> bool:
        """Whether a request with this method may be sent more than once concurrently."""
        return has_idempotency_key or method in self.methods

    def allow_extra(self, started: int) -> bool:
        """Whether another attempt may start when ``started`` attempts have started so far."""
        if started > self.max_extra:
            return False
        return self.budget is None or self.budget.try_withdraw()

    def worst_case(self, per_try: float) -> float:
        """Longest a hedged call can take when every attempt runs its full per-try timeout."""
        return self.delay * self.max_extra + per_try
