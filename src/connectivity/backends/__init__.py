"""Shared state for many processes: circuit breaker state in Redis.

The Redis backend needs the ``redis`` extra (``pip install 'connectivity-sdk[redis]'``); it is imported on first
use, so importing this package needs nothing beyond the core dependencies.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectivity.backends.redis import RedisBreakerBackend, RedisCircuit

__all__ = ["RedisBreakerBackend", "RedisCircuit"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from connectivity.backends import redis

        return getattr(redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
