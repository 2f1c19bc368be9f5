"""connectivity.admin: a read-only JSON view of the process's clients, breakers, limiters and endpoints.

Like Envoy's admin ``/clusters`` and ``/stats``, but in process and off by default: nothing is served until the
ASGI app is mounted. Components register status sources in a :class:`Registry` (weakly held, read live at every
request); :func:`app` serves them.

Example::

    import connectivity as cx
    from connectivity import admin
    from fastapi import FastAPI

    transport = cx.transport(retry=cx.Retry(attempts=3))
    admin.register_client("orders", transport)

    api = FastAPI()
    api.mount("/_connectivity", admin.app())  # loopback clients only, unless allow_remote=True

.. versionadded:: 0.1
"""

from connectivity.admin._app import ASGIApp, app
from connectivity.admin.registry import (
    KINDS,
    REGISTRY,
    Registry,
    StatusSource,
    describe,
    register,
    register_client,
    snapshot,
)

__all__ = [
    "ASGIApp",
    "KINDS",
    "REGISTRY",
    "Registry",
    "StatusSource",
    "app",
    "describe",
    "register",
    "register_client",
    "snapshot",
]
