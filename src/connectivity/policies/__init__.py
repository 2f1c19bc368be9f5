"""Pure policy primitives: decisions without I/O, driven by an injected clock.

Nothing here opens a socket, starts a task or imports httpx; the transports and middleware feed these objects
events and act on their answers. Import them in your own tests to check what a policy would decide.
"""

from connectivity.policies.backoff import Backoff
from connectivity.policies.breaker import Circuit, CircuitBreaker, Rejection, Transition
from connectivity.policies.budget import RetryBudget
from connectivity.policies.bulkhead import Bulkhead, Ticket
from connectivity.policies.clock import SYSTEM_CLOCK, Clock, SystemClock
from connectivity.policies.concurrency import (
    AIMD,
    AdaptiveConcurrency,
    Estimator,
    Gradient2,
    LimitAlgorithm,
    Vegas,
)
from connectivity.policies.deadline import (
    DEADLINE_HEADER,
    Deadline,
    current_deadline,
    deadline,
    parse_timeout_header,
)
from connectivity.policies.hedge import Hedge
from connectivity.policies.ratelimit import Decision, RateLimit, RateLimiter, parse_limits
from connectivity.policies.retry import (
    CONNECT_FAILURE,
    FAILURE_KINDS,
    IDEMPOTENT_METHODS,
    PER_TRY_TIMEOUT,
    READ_TIMEOUT,
    RESET,
    Retry,
    RetryDecision,
    RetryState,
)
from connectivity.policies.retry_after import parse_http_date, parse_retry_after
from connectivity.policies.timeout import Timeout

__all__ = [
    "AIMD",
    "CONNECT_FAILURE",
    "DEADLINE_HEADER",
    "FAILURE_KINDS",
    "IDEMPOTENT_METHODS",
    "PER_TRY_TIMEOUT",
    "READ_TIMEOUT",
    "RESET",
    "SYSTEM_CLOCK",
    "AdaptiveConcurrency",
    "Backoff",
    "Bulkhead",
    "Circuit",
    "CircuitBreaker",
    "Clock",
    "Deadline",
    "Decision",
    "Estimator",
    "Gradient2",
    "Hedge",
    "LimitAlgorithm",
    "RateLimit",
    "RateLimiter",
    "Rejection",
    "Retry",
    "RetryBudget",
    "RetryDecision",
    "RetryState",
    "SystemClock",
    "Ticket",
    "Timeout",
    "Transition",
    "Vegas",
    "current_deadline",
    "deadline",
    "parse_http_date",
    "parse_limits",
    "parse_retry_after",
    "parse_timeout_header",
]
