"""SPIFFE ids: ``spiffe://<trust domain>/<path>``, parsed and validated by the SPIFFE ID specification.

The rules (the same, with the same messages, as go-spiffe's ``spiffeid`` package): the scheme is exactly
``spiffe://``; the trust domain is 1-255 characters of lowercase letters, digits, ``.``, ``-`` and ``_``
(no userinfo, no port); the path is empty or ``/``-separated segments of letters, digits, ``.``, ``-`` and ``_``,
none of them empty, ``.`` or ``..``, with no trailing slash; the whole id is at most 2048 bytes. Matching is on
the full string: nothing is stripped (a trailing newline makes an id invalid, not equal to the id without it).
"""

from __future__ import annotations

import string

from connectivity.errors import InvalidSpiffeIdError

__all__ = ["SCHEME", "SpiffeId", "validate_trust_domain"]

SCHEME = "spiffe://"
_MAX_ID = 2048
_MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")

EMPTY = "cannot be empty"
BAD_SCHEME = "scheme is missing or invalid"
NO_TRUST_DOMAIN = "trust domain is missing"
BAD_TRUST_DOMAIN_CHAR = (
    "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
)
EMPTY_SEGMENT = "path cannot contain empty segments"
DOT_SEGMENT = "path cannot contain dot segments"
TRAILING_SLASH = "path cannot have a trailing slash"
BAD_PATH_CHAR = "path segment characters are limited to letters, numbers, dots, dashes, and underscores"


def _trust_domain_error(name: str) -> str | None:
    if not name:
        return NO_TRUST_DOMAIN
    if len(name) > _MAX_TRUST_DOMAIN:
        return f"trust domain is longer than {_MAX_TRUST_DOMAIN} characters"
    if not _TRUST_DOMAIN_CHARS.issuperset(name):
        return BAD_TRUST_DOMAIN_CHAR
    return None


def _path_error(path: str) -> str | None:
    if not path:
        return None
    segments = path.split("/")[1:]  # path starts with "/"
    for index, segment in enumerate(segments):
        if not segment:
            return TRAILING_SLASH if index == len(segments) - 1 else EMPTY_SEGMENT
        if segment in (".", ".."):
            return DOT_SEGMENT
        if not _PATH_CHARS.issuperset(segment):
            return BAD_PATH_CHAR
    return None


def validate_trust_domain(name: str, *, field: str = "trust_domain") -> str:
    """Check a bare trust domain name (``"bank.example"``) and return it.

    Raises:
        InvalidSpiffeIdError: It breaks a trust-domain rule (the message says which).
    """
    if not isinstance(name, str):
        raise InvalidSpiffeIdError(field, name, "must be a string")
    error = _trust_domain_error(name)
    if error is not None:
        raise InvalidSpiffeIdError(field, name, error)
    return name


class SpiffeId:
    """A validated SPIFFE id. Immutable, hashable, equal to another with the same text.

    Build one with :meth:`parse` (or :meth:`from_parts`). ``str(id)`` is the canonical text.

    Attributes:
        trust_domain: e.g. ``"bank.example"``.
        path: ``""`` or a path starting with ``/``, e.g. ``"/ns/prod/sa/orders"``.

    .. versionadded:: 0.1
    """

    __slots__ = ("_text", "path", "trust_domain")

    trust_domain: str
    path: str
    _text: str

    def __init__(self, trust_domain: str, path: str) -> None:  # unchecked: use parse() or from_parts()
        object.__setattr__(self, "trust_domain", trust_domain)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "_text", SCHEME + trust_domain + path)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SpiffeId is immutable")

    @classmethod
    def parse(cls, text: str, *, field: str = "spiffe_id") -> SpiffeId:
        """Parse and validate ``text``.

        Args:
            text: The id, e.g. ``"spiffe://bank.example/ns/prod/sa/orders"``.
            field: Where it came from, for the error (e.g. ``"MTLS.peer_id"``).

        Raises:
            InvalidSpiffeIdError: The text breaks a rule of the specification; the message says which.
        """
        if not isinstance(text, str):
            raise InvalidSpiffeIdError(field, text, "must be a string")
        if not text:
            raise InvalidSpiffeIdError(field, text, EMPTY)
        if not text.startswith(SCHEME):
            raise InvalidSpiffeIdError(field, text, BAD_SCHEME)
        if len(text.encode("utf-8", "surrogatepass")) > _MAX_ID:
            raise InvalidSpiffeIdError(field, text[:64] + "...", f"is longer than {_MAX_ID} bytes")
        rest = text[len(SCHEME) :]
        slash = rest.find("/")
        trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        error = _trust_domain_error(trust_domain) or _path_error(path)
        if error is not None:
            raise InvalidSpiffeIdError(field, text, error)
        return cls(trust_domain, path)

    @classmethod
    def from_parts(cls, trust_domain: str, path: str = "", *, field: str = "spiffe_id") -> SpiffeId:
        """Build an id from a trust domain and a path (``""`` or starting with ``/``), validating both."""
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise InvalidSpiffeIdError(field, path, "path must be empty or start with '/'")
        return cls.parse(SCHEME + (trust_domain if isinstance(trust_domain, str) else "") + path, field=field)

    def member_of(self, trust_domain: str) -> bool:
        """Whether this id belongs to ``trust_domain`` (exact name match)."""
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SpiffeId({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpiffeId):
            return self._text == other._text
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._text)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (SpiffeId, (self.trust_domain, self.path))
