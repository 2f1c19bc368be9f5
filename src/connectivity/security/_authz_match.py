"""Istio string matches, compiled: exact, prefix ``"abc*"``, suffix ``"*abc"``, presence ``"*"``, path templates.

Used by :mod:`connectivity.security.authz` to compile a policy's fields once, at construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from connectivity.errors import ConfigError
from connectivity.security.spiffe import SCHEME, SpiffeId, validate_trust_domain

__all__ = ["normalize_path"]

_TOKEN = re.compile(r"[!#$%&'+\-.^_`|~0-9A-Za-z]+")


# -- request facts --------------------------------------------------------------------------------------------
def normalize_path(path: str) -> str:
    """``path`` with dot segments resolved and repeated slashes merged (RFC 3986 section 5.2.4)."""
    if not path.startswith("/") or ("//" not in path and "/." not in path):
        return path
    segments = path.split("/")[1:]
    last = len(segments) - 1
    out: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
            continue
        if index == last:
            out.append("")  # the path ends with a slash
    return "/" + "/".join(out)


class _Match:
    """A compiled Istio string match over a list of patterns (any pattern matching is a match)."""

    __slots__ = ("anything", "exact", "prefixes", "suffixes", "templates")

    def __init__(self) -> None:
        self.anything = False
        self.exact: set[str] = set()
        self.prefixes: tuple[str, ...] = ()
        self.suffixes: tuple[str, ...] = ()
        self.templates: tuple[re.Pattern[str], ...] = ()

    def __call__(self, value: str) -> bool:
        if self.anything or value in self.exact:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        return any(template.fullmatch(value) for template in self.templates)

    def any(self, values: Iterable[str]) -> bool:
        # Loops rather than any(<generator>) here and in the matches() methods: they run for every field of every
        # request, and a generator per call doubled the cost of a decision.
        for value in values:  # noqa: SIM110
            if self(value):
                return True
        return False


def _strings(field: str, values: object) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(field, values, "must be a list of strings (not one string)")
    result = tuple(values)
    for index, value in enumerate(result):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{field}[{index}]", value, "must be a non-empty string")
    return result


def _wildcard(field: str, pattern: str) -> Literal["any", "prefix", "suffix", "exact"]:
    if pattern == "*":
        return "any"
    stars = pattern.count("*")
    if stars == 0:
        return "exact"
    if stars == 1 and pattern.endswith("*"):
        return "prefix"
    if stars == 1 and pattern.startswith("*"):
        return "suffix"
    raise ConfigError(field, pattern, "'*' may only be the whole value, its first or its last character")


def _patterns(field: str, patterns: tuple[str, ...], kind: str = "") -> _Match:
    """Compile patterns; ``kind`` ``"peer"`` (SPIFFE ids in Istio's form) or ``"path"`` validates and extends."""
    match = _Match()
    for index, pattern in enumerate(patterns):
        where = f"{field}[{index}]"
        if kind == "path" and ("{" in pattern or "}" in pattern):
            match.templates += (_template(where, pattern),)
            continue
        text = pattern[len(SCHEME) :] if kind == "peer" and pattern.startswith(SCHEME) else pattern
        wildcard = _wildcard(where, text)
        stem = text.strip("*")
        fixed = wildcard in ("prefix", "exact")
        if kind == "path" and fixed and (not stem.startswith("/") or normalize_path(stem) != stem):
            raise ConfigError(where, pattern, "must be a normalised path starting with '/' (or '*' and a suffix)")
        if kind == "peer" and wildcard == "exact":
            SpiffeId.parse(SCHEME + stem, field=where)
        elif kind == "peer" and wildcard == "prefix" and "/" in stem:
            validate_trust_domain(stem.partition("/")[0], field=where)
        if wildcard == "any":
            match.anything = True
        elif wildcard == "prefix":
            match.prefixes += (stem,)
        elif wildcard == "suffix":
            match.suffixes += (stem,)
        else:
            match.exact.add(stem)
            if kind == "peer" and "/" not in stem:  # a bare trust domain: every id in it
                match.prefixes += (stem + "/",)
    return match


def _template(field: str, pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/") or normalize_path(pattern) != pattern:
        raise ConfigError(field, pattern, "a path template must be a normalised path starting with '/'")
    segments = pattern.split("/")[1:]
    parts = []
    for index, segment in enumerate(segments):
        if segment == "{*}":
            parts.append("[^/]+")
        elif segment == "{**}" and index == len(segments) - 1:
            parts.append(".*")
        elif segment == "{**}":
            raise ConfigError(field, pattern, "'{**}' may only be the last segment")
        elif any(char in segment for char in "{}*"):
            raise ConfigError(field, pattern, "an operator must be a whole segment: '{*}' or '{**}'")
        else:
            parts.append(re.escape(segment))
    return re.compile("/" + "/".join(parts))


def _methods(field: str, values: tuple[str, ...]) -> _Match:
    for index, value in enumerate(values):
        if not _TOKEN.fullmatch(value):
            raise ConfigError(f"{field}[{index}]", value, "must be an HTTP method such as GET (no wildcards)")
    return _patterns(field, tuple(value.upper() for value in values))
