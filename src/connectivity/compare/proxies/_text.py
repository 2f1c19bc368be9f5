"""How the generated configurations spell durations and addresses (HAProxy and Caddy alike)."""

from __future__ import annotations

__all__ = ["address", "ms"]


def ms(seconds: float) -> str:
    """``seconds`` as whole milliseconds, at least 1 (``"250ms"``): 0 would mean "no timeout" to a proxy."""
    return f"{max(1, round(seconds * 1000))}ms"


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
