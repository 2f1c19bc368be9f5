"""What never leaves the process: secrets in URLs, headers and query strings.

One :class:`Redaction` policy is applied everywhere connectivity writes something down: span attributes and
events, metric attributes, access-log records and the text of its own exceptions. The default covers what the
OpenTelemetry conventions ask for (credentials in the URL, signed-URL query parameters) and what gateways
redact by habit (``Authorization``, ``Cookie``, ``Set-Cookie``, API-key and token headers, token-like query
parameters).

Only *values* are replaced (by ``REDACTED``): names stay, so a reader still sees that a token was sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from connectivity.errors import ConfigError

__all__ = [
    "DEFAULT_HEADERS",
    "DEFAULT_QUERY_PARAMS",
    "DEFAULT_REDACTION",
    "REDACTED",
    "Redaction",
    "RedactingFilter",
    "redact_httpx_logs",
]

REDACTED = "REDACTED"

DEFAULT_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
        "x-goog-api-key",
        "x-forwarded-client-cert",
    }
)
"""Headers whose values are never recorded (compared case-insensitively)."""

DEFAULT_QUERY_PARAMS = frozenset(
    {
        # The OpenTelemetry conventions' list (signed URLs)...
        "awsaccesskeyid",
        "signature",
        "sig",
        "x-goog-signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        # ... and the usual token carriers.
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "auth",
        "code",
    }
)
"""Query parameters whose values are never recorded (compared case-insensitively, after percent-decoding)."""


def _names(kind: str, names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, (str, bytes)):
        raise ConfigError(f"Redaction.{kind}", names, "must be a collection of names, not a single string")
    result = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"Redaction.{kind}", name, "every name must be a non-empty string")
        result.add(name.strip().lower())
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class Redaction:
    """Which header and query-parameter values are replaced by ``REDACTED`` wherever connectivity records them.

    Args:
        headers: Header names (case-insensitive). Default: :data:`DEFAULT_HEADERS`.
        query_params: Query parameter names (case-insensitive). Default: :data:`DEFAULT_QUERY_PARAMS`.

    Use :meth:`extend` to add names to the defaults rather than replace them.

    .. versionadded:: 0.1
    """

    headers: frozenset[str] = field(default=DEFAULT_HEADERS)
    query_params: frozenset[str] = field(default=DEFAULT_QUERY_PARAMS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _names("headers", self.headers))
        object.__setattr__(self, "query_params", _names("query_params", self.query_params))

    def extend(self, *, headers: Iterable[str] = (), query_params: Iterable[str] = ()) -> Redaction:
        """A policy redacting these names as well as this one's."""
        return Redaction(
            headers=self.headers | _names("headers", headers),
            query_params=self.query_params | _names("query_params", query_params),
        )

    def header(self, name: str, value: str) -> str:
        """``value``, or ``REDACTED`` when header ``name`` is sensitive."""
        return REDACTED if name.lower() in self.headers else value

    def headers_of(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs with sensitive values replaced."""
        return [(name, self.header(name, value)) for name, value in headers]

    def query(self, query: str) -> str:
        """A raw query string (``a=1&token=x``) with sensitive values replaced; order and encoding kept."""
        if not query:
            return query
        parts = query.split("&")
        changed = False
        for index, part in enumerate(parts):
            name, sep, _ = part.partition("=")
            if unquote(name.replace("+", " ")).strip().lower() in self.query_params:
                parts[index] = f"{name}={REDACTED}" if sep else part
                changed = changed or bool(sep)
        return "&".join(parts) if changed else query

    def target(self, path: str, query: str) -> str:
        """``path?query`` with the query redacted (just ``path`` when there is no query)."""
        return f"{path}?{self.query(query)}" if query else path

    def url(self, url: str) -> str:
        """An absolute URL fit to record: credentials replaced, sensitive query values replaced, fragment dropped.

        ``https://user:pw@host/p?token=x#f`` becomes ``https://REDACTED:REDACTED@host/p?token=REDACTED``, as the
        OpenTelemetry conventions specify for ``url.full``.
        """
        url, _, _ = url.partition("#")
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        authority_end = len(rest)
        for mark in "/?":
            position = rest.find(mark)
            if position != -1 and position < authority_end:
                authority_end = position
        authority, tail = rest[:authority_end], rest[authority_end:]
        userinfo, at, host = authority.rpartition("@")
        if at:
            authority = (f"{REDACTED}:{REDACTED}" if ":" in userinfo else REDACTED) + "@" + host
        path, qmark, query = tail.partition("?")
        if qmark:
            tail = f"{path}?{self.query(query)}"
        return f"{scheme}{sep}{authority}{tail}"


DEFAULT_REDACTION = Redaction()
"""The policy used when none is given."""

_filter_lock = threading.Lock()


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URLs in the arguments of records (as httpx logs every request's URL).

    Args:
        redaction: The policy to apply (default: :data:`DEFAULT_REDACTION`).

    .. versionadded:: 0.1
    """

    def __init__(self, redaction: Redaction = DEFAULT_REDACTION) -> None:
        super().__init__()
        self.redaction = redaction

    def _clean(self, value: object) -> object:
        if isinstance(value, str):
            return self.redaction.url(value) if "://" in value else value
        if type(value).__name__ == "URL" and "://" in (text := str(value)):  # httpx.URL, without importing httpx
            return self.redaction.url(text)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(self._clean(value) for value in args)
        elif isinstance(args, dict):
            record.args = {key: self._clean(value) for key, value in args.items()}
        return True


def redact_httpx_logs(redaction: Redaction = DEFAULT_REDACTION) -> None:
    """Install a :class:`RedactingFilter` on the ``httpx`` logger (once), which logs each request's full URL.

    :func:`connectivity.transport` calls it, so credentials and tokens in URLs never reach httpx's log lines.
    """
    logger = logging.getLogger("httpx")
    with _filter_lock:
        if not any(isinstance(existing, RedactingFilter) for existing in logger.filters):
            logger.addFilter(RedactingFilter(redaction))
