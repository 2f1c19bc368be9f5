"""Timeout configuration: a total budget for the call and a limit per attempt."""

from __future__ import annotations

from dataclasses import dataclass

from connectivity.errors import ConfigError
from connectivity.policies._validate import optional_positive

__all__ = ["Timeout"]


@dataclass(frozen=True, slots=True)
class Timeout:
    """Time limits of an outbound call.

    Args:
        total: Seconds for the whole call, retries and backoff waits included (the deadline). ``None``: no limit
            beyond an ambient :func:`connectivity.deadline`.
        per_try: Seconds for each attempt. Must not exceed ``total``.
        propagate: Send the remaining budget to the upstream in ``x-connectivity-timeout-ms`` so it can stop
            working on a request nobody waits for any more. Off by default: the header is an extra few µs per
            request and tells third-party upstreams about your internal budgets; turn it on inside your own mesh.

    .. versionadded:: 0.1
    """

    total: float | None = None
    per_try: float | None = None
    propagate: bool = False

    def __post_init__(self) -> None:
        optional_positive("Timeout.total", self.total)
        optional_positive("Timeout.per_try", self.per_try)
        if self.total is not None and self.per_try is not None and self.per_try > self.total:
            raise ConfigError("Timeout.per_try", self.per_try, f"must not exceed Timeout.total ({self.total})")
        if not isinstance(self.propagate, bool):
            raise ConfigError("Timeout.propagate", self.propagate, "must be a bool")
