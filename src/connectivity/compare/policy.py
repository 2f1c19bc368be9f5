"""One policy description, from which the in-process stack and every sidecar's configuration are generated.

A :class:`Policy` says what the traffic to one upstream service should get: retries (how many, on what), timeouts,
passive outlier ejection, a rate limit and a balancing algorithm. :meth:`Policy.transport` builds the in-process
stack with :func:`connectivity.transport`; the proxy generators (:mod:`connectivity.compare.proxies`) translate
the same description into nginx, HAProxy and Caddy configurations, and list what a proxy cannot express instead of
dropping it silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_positive, optional_positive

__all__ = ["Balancing", "Policy"]

Balancing = Literal["round_robin", "least_request"]


@dataclass(frozen=True, slots=True)
class Policy:
    """What the calls to one service should get, whoever enforces it.

    Args:
        attempts: Tries per request, the first included (1: no retries).
        retry_statuses: Upstream statuses that are retried (besides connect failures and resets): 5xx, and 429,
            which is retried only when the response carries a ``Retry-After`` (waited for, up to
            ``retry_after_cap``), as :class:`connectivity.Retry` does.
        retry_after_cap: Longest ``Retry-After`` waited for before retrying a 429, seconds.
        per_try_timeout: Seconds one attempt may take.
        total_timeout: Seconds the whole request may take, retries included.
        consecutive_5xx: 5xx (or connect failures) in a row that eject a replica (``None``: no outlier ejection).
        ejection_time: Seconds an ejected replica stays out.
        rate_limit: Requests per second allowed to the service (``None``: none), with ``burst`` on top.
        burst: Requests allowed at once above the rate.
        balancing: ``"round_robin"`` or ``"least_request"``.

    .. versionadded:: 0.1
    """

    attempts: int = 3
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({502, 503, 504}))
    retry_after_cap: float = 2.0
    per_try_timeout: float = 1.0
    total_timeout: float = 5.0
    consecutive_5xx: int | None = 5
    ejection_time: float = 30.0
    rate_limit: float | None = None
    burst: int = 0
    balancing: Balancing = "round_robin"

    def __post_init__(self) -> None:
        at_least_int("Policy.attempts", self.attempts, 1)
        statuses = frozenset(self.retry_statuses)
        if any(
            isinstance(code, bool) or not isinstance(code, int) or not (500 <= code <= 599 or code == 429)
            for code in statuses
        ):
            raise ConfigError("Policy.retry_statuses", self.retry_statuses, "must be 5xx status codes or 429")
        object.__setattr__(self, "retry_statuses", statuses)
        finite_positive("Policy.retry_after_cap", self.retry_after_cap)
        finite_positive("Policy.per_try_timeout", self.per_try_timeout)
        finite_positive("Policy.total_timeout", self.total_timeout)
        if self.per_try_timeout > self.total_timeout:
            raise ConfigError("Policy.per_try_timeout", self.per_try_timeout, "must not exceed total_timeout")
        if self.consecutive_5xx is not None:
            at_least_int("Policy.consecutive_5xx", self.consecutive_5xx, 1)
        finite_positive("Policy.ejection_time", self.ejection_time)
        optional_positive("Policy.rate_limit", self.rate_limit)
        at_least_int("Policy.burst", self.burst, 0)
        if self.balancing not in ("round_robin", "least_request"):
            raise ConfigError("Policy.balancing", self.balancing, "must be 'round_robin' or 'least_request'")

    def retry(self) -> Any:
        """The :class:`connectivity.Retry` for this policy: its attempts and statuses; a 429 only with a
        ``Retry-After``, waited for up to :attr:`retry_after_cap`."""
        import connectivity as cx

        return cx.Retry(
            attempts=self.attempts,
            statuses=self.retry_statuses,
            statuses_requiring_retry_after=self.retry_statuses & {429},
            retry_after_cap=self.retry_after_cap,
        )

    def transport(self, endpoints: Sequence[str], *, service: str = "upstream", **options: Any) -> Any:
        """The in-process stack for this policy over ``endpoints`` (``"host:port"``), built by
        :func:`connectivity.transport`; ``options`` go to it as well (``telemetry=False``, ``backend=``...)."""
        import connectivity as cx
        from connectivity.balancing import LeastRequest, RoundRobin
        from connectivity.policies.outlier import OutlierDetector

        outlier = (
            None
            if self.consecutive_5xx is None
            else OutlierDetector(
                consecutive_5xx=self.consecutive_5xx,
                base_ejection_time=self.ejection_time,
                always_eject_one_host=True,
            )
        )
        limiter = (
            None
            if self.rate_limit is None
            else cx.RateLimiter(cx.RateLimit(rate=self.rate_limit, per=1.0, burst=self.burst))
        )
        return cx.transport(
            timeout=cx.Timeout(total=self.total_timeout, per_try=self.per_try_timeout),
            retry=self.retry() if self.attempts > 1 else False,
            discovery=list(endpoints),
            balancer=RoundRobin() if self.balancing == "round_robin" else LeastRequest(),
            outlier=outlier,
            rate_limit=limiter,
            service=service,
            **options,
        )
