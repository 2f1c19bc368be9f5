"""The fields a rate-limited server sends: ``RateLimit-Policy``, ``RateLimit``, ``Retry-After`` and a problem body.

Syntax: draft-ietf-httpapi-ratelimit-headers-10 (the same as -09), whose fields are structured-field Lists
(RFC 8941) of String items with Integer parameters::

    RateLimit-Policy: "10/minute";q=10;w=60
    RateLimit: "10/minute";r=3;t=42

``q`` is the quota granted per window of ``w`` seconds, ``r`` what remains now, ``t`` the seconds until more
quota is available. A GCRA limit (``rate`` per ``per`` seconds, with a ``burst``) is advertised as its sustained
quota (``q`` = ``rate`` over ``w`` = ``per``, rescaled to whole numbers when either is fractional); ``r`` is what
may be sent back to back right now (at most the burst). When quota remains, ``t`` is the time until the limit is
back to its full burst; when none does (``r=0``, every 429 included), it is the time until the next request
passes, so a client that waits ``t`` is not refused (on a 429 that is the moment ``Retry-After`` names, which the
draft asks never to be earlier than ``t``). Seconds are rounded up to whole seconds. Integers are capped at the 15
digits an sf-integer allows; a name outside printable ASCII has those characters replaced, so a field is always
valid.

The 429 body is an RFC 9457 problem of the draft's ``quota-exceeded`` type, naming the violated policy.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "PROBLEM_TYPE",
    "policy_field",
    "problem_body",
    "quota_of",
    "ratelimit_field",
    "reset_seconds",
    "retry_after_field",
    "sf_string",
]

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The problem type the draft registers for a request over its quota (recommended status: 429)."""

_SF_INTEGER_MAX = 999_999_999_999_999
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_QUOTED: dict[str, str] = {}
_MAX_QUOTED = 1024


def sf_string(text: str) -> str:
    """``text`` as an sf-string: quoted, ``\\`` and ``"`` escaped, anything outside printable ASCII as ``?``."""
    quoted = _QUOTED.get(text)
    if quoted is None:  # limit names are few: each is quoted once
        clean = _UNPRINTABLE.sub("?", text).replace("\\", "\\\\").replace('"', '\\"')
        quoted = f'"{clean}"'
        if len(_QUOTED) >= _MAX_QUOTED:
            _QUOTED.clear()
        _QUOTED[text] = quoted
    return quoted


def _integer(value: float) -> int:
    return max(0, min(_SF_INTEGER_MAX, int(value)))


def quota_of(rate: float, per: float) -> tuple[int, int]:
    """``(q, w)``: ``rate`` requests per ``per`` seconds as an integer quota over a whole number of seconds."""
    if per >= 1 and float(per).is_integer() and float(rate).is_integer():
        return _integer(rate), _integer(per)
    window = max(1, math.ceil(per))
    quota = math.floor(rate * window / per + 1e-9)
    if quota < 1:  # fewer than one request per whole second: the window that holds exactly one
        return 1, _integer(math.ceil(per / rate - 1e-9))
    return _integer(quota), _integer(window)


def policy_field(limits: Iterable[tuple[str, float, float]]) -> str:
    """``RateLimit-Policy`` for limits given as ``(name, rate, per)``."""
    items = []
    for name, rate, per in limits:
        quota, window = quota_of(rate, per)
        items.append(f"{sf_string(name)};q={quota};w={window}")
    return ", ".join(items)


def ratelimit_field(name: str, remaining: int, reset_after: float) -> str:
    """``RateLimit`` for one policy: ``remaining`` requests now, more quota in ``reset_after`` seconds."""
    return f"{sf_string(name)};r={_integer(remaining)};t={_integer(math.ceil(max(0.0, reset_after) - 1e-9))}"


def reset_seconds(decision: Any) -> float:
    """``t`` for a limiter's decision (see the module docstring): time to full, or to the next request."""
    if not decision.allowed:
        return float(decision.retry_after)
    if decision.remaining > 0:
        return float(decision.reset_after)
    limit = decision.limit
    try:  # the next request passes once the arrival time is back within the tolerance
        return max(0.0, float(decision.reset_after) + float(limit.interval) - float(limit.tolerance))
    except (AttributeError, TypeError, ValueError):  # a limit of another shape: the conservative answer
        return float(decision.reset_after)


def retry_after_field(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up and at least 1 (a client retrying at once would be refused)."""
    return str(max(1, min(_SF_INTEGER_MAX, math.ceil(seconds - 1e-9))))


def problem_body(policy: str, retry_after: int) -> bytes:
    """The ``application/problem+json`` body of a 429."""
    return json.dumps(
        {
            "type": PROBLEM_TYPE,
            "title": "Quota Exceeded",
            "status": 429,
            "detail": f"rate limit {policy!r} exceeded: retry in {retry_after} s",
            "violated-policies": [policy],
        },
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
