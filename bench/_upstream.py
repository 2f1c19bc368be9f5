"""The e2e benchmark's upstream: a pure ASGI app answering ``200 ok``, as cheap as uvicorn allows.

Run in its own process (``python -m uvicorn bench._upstream:app``) so its CPU never counts as the client's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["app"]

_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """Answer every HTTP request with ``200`` and the body ``ok``; ignore other scope types."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})
