"""The inbound benchmark's servers: one Starlette app, bare or behind :class:`RateLimitMiddleware`.

Each attribute is a complete app for ``python -m uvicorn bench._inbound_app:<attribute>``, run in a process of its
own so that each server's CPU can be read on its own:

* ``bare``: one route, ``GET /`` answering ``PlainTextResponse("ok")``;
* ``ratelimit``: the same app with ``app.add_middleware(RateLimitMiddleware, limiter=...)`` (the documented way),
  keyed by client address (the default key), every other option at its default (``headers=False``: allowed
  responses go out as the app made them);
* ``ratelimit_headers``: the same with ``headers=True`` (the ``RateLimit`` and ``RateLimit-Policy`` fields on
  every allowed response).

The limit, :data:`LIMIT`, is never exhausted by a run, so every request is allowed and the middleware does its
whole bookkeeping.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import connectivity as cx
from connectivity.middleware import RateLimitMiddleware

__all__ = ["LIMIT", "bare", "ratelimit", "ratelimit_headers"]

LIMIT = "1000000/s"
"""The limit every rate-limited server applies: far above what one sequential client can send."""


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _app(*, limited: bool = False, **options: Any) -> Starlette:
    """The Starlette app; ``limited``: behind a rate-limit middleware given ``options`` (besides the limiter)."""
    app = Starlette(routes=[Route("/", _ok, methods=["GET"])])
    if limited:
        app.add_middleware(RateLimitMiddleware, limiter=cx.RateLimiter(LIMIT), **options)
    return app


bare = _app()
ratelimit = _app(limited=True)
ratelimit_headers = _app(limited=True, headers=True)
