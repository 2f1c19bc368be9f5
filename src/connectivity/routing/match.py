"""Request matchers of a route table: the path (prefix, exact, separated prefix, regex, template) and headers.

Theory of operation: a matcher is frozen configuration compiled once, when it is built. Everything that can be
wrong with it (a regular expression that does not compile, a template with an unbalanced brace or a repeated
variable) raises :class:`~connectivity.errors.ConfigError` then, never while a request is being matched. Matching
is a pure function of the request's path or headers: no I/O, no httpx, no state.

Semantics follow Envoy's ``RouteMatch`` and ``HeaderMatcher``:

* ``prefix`` is a plain string prefix (``/orders`` also matches ``/orders-archive``, as in Envoy);
  ``separated_prefix`` (Envoy's ``path_separated_prefix``) matches ``/orders`` and ``/orders/...`` only;
* ``exact`` (Envoy's ``path``) compares the whole path; ``regex`` must match the whole path (RE2's full-match
  semantics, here :func:`re.fullmatch`);
* ``template`` (Envoy's URI template, ``/orders/{id}``): ``{name}`` or ``*`` is one path segment, ``{name=**}``
  or ``**`` the rest of the path (last only); named variables are captured and recorded with the route choice;
* the path matched is the request's percent-decoded path, without the query string;
* a header matcher compares the header's value (several values of one header joined by ``", "``); an absent
  header matches only ``present=False``, whatever ``invert`` says (Envoy: a missing header never matches a value
  matcher, inverted or not).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from connectivity.errors import ConfigError

__all__ = ["NO_PARAMS", "HeaderMatch", "PathMatch"]

NO_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})
"""The (shared, read-only) parameters of a match that captures none."""

PREFIX: Final = "prefix"
EXACT: Final = "exact"
SEPARATED_PREFIX: Final = "separated_prefix"
REGEX: Final = "regex"
TEMPLATE: Final = "template"
PATH_KINDS: Final = (PREFIX, EXACT, SEPARATED_PREFIX, REGEX, TEMPLATE)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


def compile_regex(field_name: str, pattern: object) -> re.Pattern[str]:
    """Compile ``pattern`` or raise a :class:`ConfigError` naming ``field_name`` and what is wrong with it."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(field_name, pattern, "must be a non-empty regular expression")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(field_name, pattern, f"invalid regular expression: {exc}") from None


def compile_template(field_name: str, template: object) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """Compile a URI template (``/orders/{id}``, ``/files/{path=**}``) into a regex and its variable names."""
    if not isinstance(template, str) or not template.startswith("/"):
        raise ConfigError(field_name, template, "must be a path template starting with '/'")
    segments = template[1:].split("/")
    parts: list[str] = []
    names: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment in {"*", "**"} or (segment.startswith("{") and segment.endswith("}")):
            name, _, kind = segment[1:-1].partition("=") if segment.startswith("{") else ("", "", segment)
            kind = kind or "*"
            if segment.startswith("{"):
                if not _NAME.fullmatch(name):
                    raise ConfigError(field_name, template, f"variable {segment!r} needs a name like {{id}}")
                if name in names:
                    raise ConfigError(field_name, template, f"variable {name!r} appears twice")
                names.append(name)
            if kind not in {"*", "**"}:
                raise ConfigError(field_name, template, f"variable {segment!r} may only be '*' or '**'")
            if kind == "**" and not last:
                raise ConfigError(field_name, template, "'**' may only be the last segment")
            body = "[^/]+" if kind == "*" else ".*"
            parts.append(f"(?P<{name}>{body})" if name else f"(?:{body})")
        elif any(char in segment for char in "{}*"):
            raise ConfigError(
                field_name, template, f"segment {segment!r}: a variable or wildcard must be a whole segment"
            )
        else:
            parts.append(re.escape(segment))
    return re.compile("/" + "/".join(parts)), tuple(names)


@dataclass(frozen=True, slots=True)
class PathMatch:
    """How a route matches the request path. Build one with the class methods.

    Args:
        kind: ``"prefix"``, ``"exact"``, ``"separated_prefix"``, ``"regex"`` or ``"template"``.
        value: The prefix, path, regular expression or template.

    Raises:
        ConfigError: An unknown kind, a value not starting with ``/`` (prefix, exact, template), an invalid regular
            expression or template.

    .. versionadded:: 0.1
    """

    kind: str
    value: str
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if self.kind not in PATH_KINDS:
            raise ConfigError("PathMatch.kind", self.kind, f"must be one of {list(PATH_KINDS)}")
        where = f"PathMatch.{self.kind}"
        if self.kind == REGEX:
            object.__setattr__(self, "_pattern", compile_regex(where, self.value))
        elif self.kind == TEMPLATE:
            pattern, names = compile_template(where, self.value)
            object.__setattr__(self, "_pattern", pattern)
            object.__setattr__(self, "_names", names)
        elif not isinstance(self.value, str) or not self.value.startswith("/"):
            raise ConfigError(where, self.value, "must be a path starting with '/'")
        elif self.kind == SEPARATED_PREFIX and (self.value.endswith("/") or "?" in self.value):
            raise ConfigError(
                where, self.value, "must not end with '/' (it matches '<prefix>' and '<prefix>/...')"
            )

    @classmethod
    def prefix(cls, value: str) -> PathMatch:
        """Paths starting with ``value`` (a plain string prefix, as Envoy's ``prefix``)."""
        return cls(PREFIX, value)

    @classmethod
    def exact(cls, value: str) -> PathMatch:
        """Exactly this path (Envoy's ``path``)."""
        return cls(EXACT, value)

    @classmethod
    def separated_prefix(cls, value: str) -> PathMatch:
        """``value`` itself or paths under it: ``/orders`` matches ``/orders`` and ``/orders/7``, not
        ``/orders-archive`` (Envoy's ``path_separated_prefix``)."""
        return cls(SEPARATED_PREFIX, value)

    @classmethod
    def regex(cls, value: str) -> PathMatch:
        """Paths the regular expression matches in full (Envoy's ``safe_regex``)."""
        return cls(REGEX, value)

    @classmethod
    def template(cls, value: str) -> PathMatch:
        """A URI template: ``/orders/{id}`` (one segment per variable), ``/files/{rest=**}`` (the rest)."""
        return cls(TEMPLATE, value)

    @property
    def variables(self) -> tuple[str, ...]:
        """The template's variable names (empty for other kinds)."""
        return self._names

    def match(self, path: str) -> Mapping[str, str] | None:
        """The captured variables if ``path`` matches (:data:`NO_PARAMS` when none are captured), else ``None``."""
        kind = self.kind
        if kind == PREFIX:
            return NO_PARAMS if path.startswith(self.value) else None
        if kind == EXACT:
            return NO_PARAMS if path == self.value else None
        if kind == SEPARATED_PREFIX:
            value = self.value
            if path.startswith(value) and (len(path) == len(value) or path[len(value)] == "/"):
                return NO_PARAMS
            return None
        assert self._pattern is not None
        found = self._pattern.fullmatch(path)
        if found is None:
            return None
        return found.groupdict() if self._names else NO_PARAMS


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A condition on one request header (Envoy's ``HeaderMatcher``). Exactly one of ``exact``, ``prefix``,
    ``regex`` and ``present`` is given.

    Args:
        name: The header name (case-insensitive).
        exact: The value must equal this.
        prefix: The value must start with this.
        regex: The value must match this regular expression in full.
        present: ``True``: the header must be present (any value); ``False``: it must be absent.
        invert: Negate a value match (``exact``, ``prefix``, ``regex``); an absent header still does not match.

    Raises:
        ConfigError: A bad name, none or several conditions, an invalid regular expression.

    .. versionadded:: 0.1
    """

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _HEADER_NAME.fullmatch(self.name):
            raise ConfigError("HeaderMatch.name", self.name, "must be an HTTP header name")
        object.__setattr__(self, "name", self.name.lower())
        given = [kind for kind in ("exact", "prefix", "regex", "present") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ConfigError("HeaderMatch", given or None, "give exactly one of exact, prefix, regex and present")
        for kind in ("exact", "prefix"):
            value = getattr(self, kind)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"HeaderMatch.{kind}", value, "must be a string")
        if self.present is not None and not isinstance(self.present, bool):
            raise ConfigError("HeaderMatch.present", self.present, "must be a bool")
        if not isinstance(self.invert, bool):
            raise ConfigError("HeaderMatch.invert", self.invert, "must be a bool")
        if self.invert and self.present is not None:
            raise ConfigError("HeaderMatch.invert", self.invert, "use present=False instead of inverting present")
        if self.regex is not None:
            object.__setattr__(self, "_pattern", compile_regex("HeaderMatch.regex", self.regex))

    def matches(self, headers: Mapping[str, str]) -> bool:
        """Whether ``headers`` satisfy this condition.

        Args:
            headers: A case-insensitive mapping such as :class:`httpx.Headers`, or a dict with lower-case names.
        """
        value = headers.get(self.name)
        if value is None:
            return self.present is False
        if self.present is not None:
            return self.present
        if self.exact is not None:
            hit = value == self.exact
        elif self.prefix is not None:
            hit = value.startswith(self.prefix)
        else:
            assert self._pattern is not None
            hit = self._pattern.fullmatch(value) is not None
        return hit != self.invert
