"""Request ids: one id per inbound request, carried to every outbound call it makes (Envoy's ``x-request-id``).

The inbound middleware accepts a well-formed id from the caller or generates one, and makes it the *current*
request id (a context variable, so concurrent requests never see each other's); outbound transports copy it into
their requests; access logs and spans record it.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token

__all__ = ["HEADER", "MAX_LENGTH", "current_request_id", "generate", "reset_request_id", "set_request_id", "valid"]

HEADER = "x-request-id"
MAX_LENGTH = 128
"""Longer ids are refused (and replaced): an id ends up in every log line and span."""

# Printable, no spaces, no quotes or separators that would break a log line or a header list.
_VALID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_LENGTH}}}")

_current: ContextVar[str | None] = ContextVar("connectivity.request_id", default=None)


def valid(value: str) -> bool:
    """Whether ``value`` is acceptable as a request id (1-128 of ``A-Z a-z 0-9 . _ : @ / + = -``)."""
    return _VALID.fullmatch(value) is not None


def generate() -> str:
    """A new random request id (a UUID4, 32 hex digits without dashes)."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the inbound request being handled, or ``None`` outside one."""
    return _current.get()


def set_request_id(value: str | None) -> Token[str | None]:
    """Make ``value`` the current request id; returns the token to reset it with.

    Raises:
        ValueError: ``value`` is not a valid request id.
    """
    if value is not None and not valid(value):
        raise ValueError("invalid request id: 1-128 characters of A-Z a-z 0-9 . _ : @ / + = - expected")
    return _current.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Restore the request id that was current before :func:`set_request_id`."""
    _current.reset(token)
