"""The HTTP client library connectivity builds on: httpx, or its fork httpx2 (Pydantic's httpx2 / httpcore2).

Theory of operation: every module of the package imports ``httpx`` and ``httpcore`` from here, never directly, so
one choice made once, at import, decides which library's classes the transports subclass, accept and return.
The two libraries have the same transport interface, but not the same classes: a transport built on httpx cannot
serve an ``httpx2.AsyncClient`` (its responses are not httpx2's), so the choice must match the client the
application uses. The rule:

* ``CONNECTIVITY_HTTPX=httpx`` or ``=httpx2`` in the environment: that library, or an ``ImportError`` naming it;
* otherwise (``auto``): ``httpx`` when it can be imported, else ``httpx2``. An application that installed both
  and uses httpx2 either sets the variable, or calls ``httpx2.alias_httpx()`` before importing connectivity (then
  ``import httpx`` is httpx2 everywhere in the process, connectivity included).

For type checkers the module is always httpx: the two libraries' public names and signatures are the same.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["ENVIRONMENT_VARIABLE", "LIBRARY", "httpcore", "httpx"]

ENVIRONMENT_VARIABLE = "CONNECTIVITY_HTTPX"
"""Chooses the HTTP client library: ``httpx``, ``httpx2`` or ``auto`` (the default)."""

_CORES = {"httpx": "httpcore", "httpx2": "httpcore2"}


def choose(setting: str | None) -> tuple[ModuleType, ModuleType]:
    """The ``(httpx, httpcore)`` modules for a setting of :data:`ENVIRONMENT_VARIABLE` (``None``: unset).

    Raises:
        ImportError: The setting is not one of ``httpx``, ``httpx2``, ``auto``, or names a library that is not
            installed, or (``auto``) neither is installed.
    """
    wanted = (setting or "auto").strip().lower()
    if wanted not in ("auto", *_CORES):
        raise ImportError(f"{ENVIRONMENT_VARIABLE}={setting!r}: must be 'httpx', 'httpx2' or 'auto'")
    names = ("httpx", "httpx2") if wanted == "auto" else (wanted,)
    for name in names:
        try:
            client = importlib.import_module(name)
        except ImportError:
            continue
        # After httpx2.alias_httpx(), "httpx" is httpx2 and "httpcore" httpcore2: ask the module, not the name.
        return client, importlib.import_module(_CORES.get(client.__name__, "httpcore"))
    if wanted == "auto":
        raise ImportError(
            "connectivity needs httpx (pip install httpx) or httpx2 (pip install httpx2): neither is installed"
        )
    raise ImportError(f"{ENVIRONMENT_VARIABLE}={setting!r}, but {wanted} is not installed (pip install {wanted})")


if TYPE_CHECKING:
    import httpcore
    import httpx
else:
    httpx, httpcore = choose(os.environ.get(ENVIRONMENT_VARIABLE))

LIBRARY: str = httpx.__name__
"""The library in use: ``"httpx"`` or ``"httpx2"``."""
