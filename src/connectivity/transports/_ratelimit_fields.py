"""What an upstream says of its limits: ``Retry-After`` and the IETF ``RateLimit`` and ``RateLimit-Policy`` fields.

The fields are RFC 8941 structured-field Lists (draft-ietf-httpapi-ratelimit-headers); only as much of RFC 8941
is parsed as they need. Anything malformed is ignored as a whole: a server's bad header never raises.
"""

from __future__ import annotations

import base64
import binascii
import re

from connectivity._http import httpx
from connectivity.policies.retry_after import parse_retry_after

__all__ = ["THROTTLE_STATUSES", "hold_off_seconds", "parse_sf_list"]

THROTTLE_STATUSES = frozenset({429, 503})
"""Statuses whose ``Retry-After`` makes the client hold the host off."""


# -- reading what the upstream says -----------------------------------------------------------------------------
def hold_off_seconds(status: int, headers: httpx.Headers, *, now: float) -> float | None:
    """How long an upstream asks its clients to hold off, from one response; ``None`` when it does not.

    ``Retry-After`` counts on 429 and 503 responses and takes precedence. Otherwise the IETF fields (draft-ietf-
    httpapi-ratelimit-headers-10) count on any response: a ``RateLimit`` item with ``r=0`` holds off for its ``t``
    (or for the window ``w`` of the ``RateLimit-Policy`` item of the same name), a ``RateLimit-Policy`` item with
    ``q=0`` for its ``w``; with several, the longest. A field that is not a valid structured-field List of String
    items with integer parameters is ignored as a whole, as the draft requires.

    Args:
        status: The response status.
        headers: The response headers.
        now: The current POSIX time (for an HTTP-date ``Retry-After``).
    """
    if status in THROTTLE_STATUSES:
        retry_after = parse_retry_after(headers.get("retry-after"), now=now)
        if retry_after is not None:
            return retry_after
    policies = _quota_items(headers, "ratelimit-policy", required="q")
    limits = _quota_items(headers, "ratelimit", required="r")
    if not policies and not limits:
        return None
    windows = {name: params["w"] for name, params in policies if params.get("w")}
    longest: float | None = None
    for name, params in limits:
        if params["r"] == 0:
            seconds = params.get("t", windows.get(name))
            if seconds is not None and (longest is None or seconds > longest):
                longest = float(seconds)
    for _, params in policies:
        window = params.get("w")
        if params["q"] == 0 and window and (longest is None or window > longest):
            longest = float(window)
    return longest


_INTEGER_PARAMS = {"q", "w", "r", "t"}


def _quota_items(headers: httpx.Headers, name: str, *, required: str) -> list[tuple[str, dict[str, int]]]:
    """The items of a ``RateLimit``/``RateLimit-Policy`` field; empty when absent or malformed."""
    lines = headers.get_list(name)
    if not lines:
        return []
    members = parse_sf_list(",".join(lines))
    if not members:
        return []
    items: list[tuple[str, dict[str, int]]] = []
    for value, params in members:
        if not isinstance(value, str) or isinstance(value, _Token) or required not in params:
            return []
        numbers: dict[str, int] = {}
        for key in _INTEGER_PARAMS & params.keys():
            number = params[key]
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                return []
            if key == "w" and number == 0:
                return []
            numbers[key] = number
        items.append((value, numbers))
    return items


# -- RFC 8941 structured fields: just enough to parse a List ---------------------------------------------------
class _Token(str):
    """An sf-token (distinct from an sf-string, which the RateLimit fields require)."""

    __slots__ = ()


class _Malformed(ValueError):
    pass


_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")

Params = dict[str, object]


def parse_sf_list(text: str) -> list[tuple[object, Params]] | None:
    """Parse a structured-field List (RFC 8941 §4.2.1) into ``(bare item, parameters)`` pairs.

    Inner lists are returned as Python lists. Returns ``None`` when the text is not a valid List.
    """
    try:
        return _List(text).parse()
    except _Malformed:
        return None


class _List:
    __slots__ = ("i", "s")

    def __init__(self, text: str) -> None:
        self.s = text.strip(" \t")
        self.i = 0

    def parse(self) -> list[tuple[object, Params]]:
        s = self.s
        members: list[tuple[object, Params]] = []
        if not s.isascii():
            raise _Malformed
        while self.i < len(s):
            members.append(self._member())
            self._ows()
            if self.i >= len(s):
                return members
            if s[self.i] != ",":
                raise _Malformed
            self.i += 1
            self._ows()
            if self.i >= len(s):
                raise _Malformed  # a trailing comma
        return members

    def _ows(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def _member(self) -> tuple[object, Params]:
        if self.s.startswith("(", self.i):
            self.i += 1
            inner: list[tuple[object, Params]] = []
            while True:
                while self.s.startswith(" ", self.i):
                    self.i += 1
                if self.s.startswith(")", self.i):
                    self.i += 1
                    return inner, self._params()
                inner.append((self._bare(), self._params()))
                if not self.s.startswith((" ", ")"), self.i):
                    raise _Malformed
        return self._bare(), self._params()

    def _params(self) -> Params:
        params: Params = {}
        while self.s.startswith(";", self.i):
            self.i += 1
            while self.s.startswith(" ", self.i):
                self.i += 1
            match = _KEY.match(self.s, self.i)
            if match is None:
                raise _Malformed
            self.i = match.end()
            value: object = True
            if self.s.startswith("=", self.i):
                self.i += 1
                value = self._bare()
            params[match.group()] = value
        return params

    def _bare(self) -> object:
        s, i = self.s, self.i
        if i >= len(s):
            raise _Malformed
        char = s[i]
        if char == "-" or char.isdigit():
            match = _NUMBER.match(s, i)
            if match is None:
                raise _Malformed
            text = match.group()
            whole, _, fraction = text.lstrip("-").partition(".")
            if (fraction and (len(whole) > 12 or len(fraction) > 3)) or (not fraction and len(whole) > 15):
                raise _Malformed
            self.i = match.end()
            return float(text) if fraction else int(text)
        if char == '"':
            out: list[str] = []
            i += 1
            while i < len(s):
                char = s[i]
                if char == "\\":
                    if i + 1 >= len(s) or s[i + 1] not in '"\\':
                        raise _Malformed
                    out.append(s[i + 1])
                    i += 2
                    continue
                if char == '"':
                    self.i = i + 1
                    return "".join(out)
                if not " " <= char <= "~":
                    raise _Malformed
                out.append(char)
                i += 1
            raise _Malformed  # unterminated
        if char == ":":
            end = s.find(":", i + 1)
            if end == -1 or _BASE64.fullmatch(s, i + 1, end) is None:
                raise _Malformed
            try:
                value = base64.b64decode(s[i + 1 : end], validate=True)
            except (binascii.Error, ValueError):
                raise _Malformed from None
            self.i = end + 1
            return value
        if char == "?":
            if s[i + 1 : i + 2] not in ("0", "1"):
                raise _Malformed
            self.i = i + 2
            return s[i + 1] == "1"
        match = _TOKEN.match(s, i)
        if match is None:
            raise _Malformed
        self.i = match.end()
        return _Token(match.group())
