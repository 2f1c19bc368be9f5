"""Shared state for many processes: circuit breaker state in Redis.

The Redis backend needs the ``redis`` extra (``pip install 'connectivity-sdk[redis]'``); it is imported on first
use, so importing this package needs nothing beyond the core dependencies.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectivity.backends.redis import RedisBreakerBackend, RedisCircuit
    from connectivity.backends.redis_ratelimit import RedisRateLimiter

__all__ = ["RedisBreakerBackend", "RedisCircuit", "RedisRateLimiter"]

_MODULES = {
    "RedisBreakerBackend": "connectivity.backends.redis",
    "RedisCircuit": "connectivity.backends.redis",
    "RedisRateLimiter": "connectivity.backends.redis_ratelimit",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
