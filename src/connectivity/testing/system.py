"""Tests needing a system binary (nginx, haproxy, envoy, ...): skipped locally when absent, required in CI."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["REQUIRE_ENV", "require_binary"]

REQUIRE_ENV = "CONNECTIVITY_REQUIRE_SYSTEM_DEPS"
"""When this environment variable is ``"1"``, a missing binary fails the test instead of skipping it."""


def require_binary(name: str) -> str:
    """The path of executable ``name`` on ``PATH``; skip (or, in CI, fail) the calling test when it is missing.

    Args:
        name: Executable name, e.g. ``"haproxy"``.

    Returns:
        The path found by :func:`shutil.which`.

    Raises:
        pytest.fail.Exception: It is missing and ``CONNECTIVITY_REQUIRE_SYSTEM_DEPS=1``.
        pytest.skip.Exception: It is missing otherwise.

    .. versionadded:: 0.1
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"system binary {name!r} not found on PATH"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
    pytest.skip(message)
