"""JWT authentication for inbound requests as pure ASGI middleware, with Istio ``RequestAuthentication`` semantics.

Theory of operation: the middleware looks for a bearer token in the places it is told to (``Authorization:
Bearer``, then a configured header, a cookie, and the query string only if enabled), and

* finds none: the request goes on anonymously, with no principal (as Istio does: whether anonymous requests are
  allowed is an authorization decision), unless ``required=True``: ``401`` with ``WWW-Authenticate: Bearer``;
* finds one: :class:`~connectivity.security.jwt.JWTVerifier` checks it. A refused token is answered ``401`` with
  ``WWW-Authenticate: Bearer error="invalid_token"`` and an RFC 9457 problem body saying why (never echoing the
  token), before the app sees the request. An accepted one is recorded in the scope:
  ``scope["connectivity.claims"]`` (the verified claims, read-only) and ``scope["connectivity.principal"]`` (a
  :class:`~connectivity.security.identity.Principal` with ``method="jwt"``);
* finds several different tokens: ``400`` with ``error="invalid_request"`` (RFC 6750 section 3.1).

A token seen before costs one pass over the raw header list (the configured header, cookie and query parameter
are looked at only when configured), a hash and a cache lookup (see the verifier) and two scope writes; ``receive``
and ``send`` are passed on unwrapped, so the response costs nothing extra. WebSocket handshakes are authenticated
the same way; a refused one is closed with code 1008 (the server answers the handshake with 403). Lifespan and
other scopes pass straight through, as do the excluded paths.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from connectivity.errors import AuthenticationError, ConfigError
from connectivity.middleware._asgi import ASGIApp, Receive, Scope, Send, require_app
from connectivity.middleware._hop import Hop
from connectivity.security.identity import CLAIMS_KEY, PRINCIPAL_KEY
from connectivity.security.jwks import JWKS, VerificationKey
from connectivity.security.jwt import JWTVerifier

__all__ = ["JWTAuthMiddleware"]

_log = logging.getLogger("connectivity.security")

_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110): header and cookie names
_QUOTABLE = re.compile(r"[\x20-\x7e]*")
_MISSING = "bearer token required"
_SEVERAL = "more than one bearer token"
_UNEXPECTED = "token could not be verified"


class JWTAuthMiddleware(Hop):
    """Authenticate inbound requests by JWT bearer token.

    Args:
        app: The ASGI application to wrap.
        verifier: The :class:`~connectivity.security.jwt.JWTVerifier` to check tokens with. Or, instead, give
            ``jwks_url``/``keys``, ``issuer`` and ``audience`` and one is built with its other defaults.
        jwks_url: See :class:`~connectivity.security.jwt.JWTVerifier`.
        keys: See :class:`~connectivity.security.jwt.JWTVerifier`.
        issuer: See :class:`~connectivity.security.jwt.JWTVerifier`.
        audience: See :class:`~connectivity.security.jwt.JWTVerifier`.
        required: Refuse requests without a token (``401``). By default they pass, without a principal.
        header: Also read the token from this request header (its whole value, e.g. ``"x-jwt-assertion"``).
        cookie: Also read the token from this cookie.
        query_param: Also read the token from this query parameter. Off by default: URLs end up in logs, browser
            history and ``Referer`` headers (RFC 6750 section 2.3).
        exclude_paths: Paths not authenticated at all (health checks): an exact path, or a prefix when it ends
            with ``/``. A token sent there is ignored.
        realm: The ``realm`` of the ``WWW-Authenticate`` challenge.

    Raises:
        ConfigError: An option is invalid, or both a verifier and verifier options are given.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_app",
        "_cached",
        "_call",
        "_cookie",
        "_elsewhere",
        "_exact",
        "_excluding",
        "_header",
        "_invalid_request",
        "_invalid_token",
        "_missing",
        "_names",
        "_prefixes",
        "_query",
        "exclude_paths",
        "realm",
        "required",
        "verifier",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: JWTVerifier | None = None,
        jwks_url: str | None = None,
        keys: VerificationKey | JWKS | Iterable[VerificationKey | JWKS] | None = None,
        issuer: str | Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        required: bool = False,
        header: str | None = None,
        cookie: str | None = None,
        query_param: str | None = None,
        exclude_paths: Iterable[str] = (),
        realm: str | None = None,
    ) -> None:
        self.app = require_app("JWTAuthMiddleware", app)
        options = {"jwks_url": jwks_url, "keys": keys, "issuer": issuer, "audience": audience}
        if verifier is not None:
            if not isinstance(verifier, JWTVerifier):
                raise ConfigError("JWTAuthMiddleware.verifier", type(verifier).__name__, "must be a JWTVerifier")
            given = sorted(name for name, value in options.items() if value is not None)
            if given:
                raise ConfigError(
                    "JWTAuthMiddleware.verifier", given, "give either a verifier or its options, not both"
                )
            self.verifier = verifier
        else:
            self.verifier = JWTVerifier(**options)  # type: ignore[arg-type]
        self._cached = self.verifier.cached  # bound once: a cache hit is the hot path
        if not isinstance(required, bool):
            raise ConfigError("JWTAuthMiddleware.required", required, "must be True or False")
        self.required = required
        self._header = _name("JWTAuthMiddleware.header", header)
        if self._header in (b"authorization", b"cookie"):
            raise ConfigError("JWTAuthMiddleware.header", header, "Authorization and Cookie are read already")
        self._cookie = _name("JWTAuthMiddleware.cookie", cookie)
        self._names = frozenset(name for name in (self._header, b"cookie" if cookie else None) if name is not None)
        if query_param is not None and (not isinstance(query_param, str) or not query_param):
            raise ConfigError("JWTAuthMiddleware.query_param", query_param, "must be a non-empty string or None")
        self._query = query_param
        self.exclude_paths = _paths(exclude_paths)
        self._exact = frozenset(path for path in self.exclude_paths if not path.endswith("/"))
        self._prefixes = tuple(path for path in self.exclude_paths if path.endswith("/"))
        self._excluding = bool(self.exclude_paths)
        self._elsewhere = bool(self._names) or self._query is not None
        if realm is not None and (not isinstance(realm, str) or not _QUOTABLE.fullmatch(realm) or '"' in realm):
            raise ConfigError("JWTAuthMiddleware.realm", realm, "must be printable ASCII without double quotes")
        self.realm = realm
        prefix = f'Bearer realm="{realm}"' if realm is not None else "Bearer"
        self._missing = prefix.encode("ascii")
        self._invalid_token = f'{prefix}{"," if realm is not None else ""} error="invalid_token"'.encode("ascii")
        self._invalid_request = f'{prefix}{"," if realm is not None else ""} error="invalid_request"'.encode(
            "ascii"
        )

    def __repr__(self) -> str:
        return f"JWTAuthMiddleware(verifier={self.verifier!r}, required={self.required})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self._call(scope, receive, send)
            return
        if self._excluding:
            path = str(scope.get("path", ""))
            if path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes)):
                await self._call(scope, receive, send)
                return
        try:
            token = self._token(scope)
        except AuthenticationError as exc:
            await self._refuse(kind, send, 400, self._invalid_request, exc.reason)
            return
        if token is None:
            if self.required:
                await self._refuse(kind, send, 401, self._missing, _MISSING)
                return
            await self._call(scope, receive, send)
            return
        try:
            principal = self._cached(token) or await self.verifier.verify(token)
        except AuthenticationError as exc:
            await self._refuse(kind, send, 401, self._invalid_token, exc.reason)
            return
        except Exception as exc:  # a bug must still fail closed with a 401, not a 500 carrying the token's fate
            _log.error("JWT verification failed unexpectedly (%s)", type(exc).__name__)
            await self._refuse(kind, send, 401, self._invalid_token, _UNEXPECTED)
            return
        scope[CLAIMS_KEY] = principal.claims
        scope[PRINCIPAL_KEY] = principal
        await self._call(scope, receive, send)

    def _token(self, scope: Scope) -> bytes | None:
        """The one token the request carries, ``None`` for none.

        Raises:
            AuthenticationError: It carries different ones (``error="invalid_request"``).
        """
        found: bytes | None = None
        several = False
        for name, value in scope.get("headers") or ():  # a tight loop: most requests carry only this header
            if name == b"authorization" and (
                value.startswith(b"Bearer ") or (value[:6].lower() == b"bearer" and value[6:7] in (b" ", b""))
            ):  # the scheme is case-insensitive; "Bearer " is what clients send. Other schemes are not ours
                candidate = value[7:].strip()
                several = several or (found is not None and candidate != found)
                found = candidate
        if self._elsewhere:
            found, several = self._other_places(scope, found, several)
        if several:
            raise AuthenticationError(_SEVERAL, error="invalid_request")
        return found

    def _other_places(self, scope: Scope, found: bytes | None, several: bool) -> tuple[bytes | None, bool]:
        """Add the tokens in the configured header, cookie and query parameter to what ``Authorization`` had."""
        candidates: list[bytes | None] = []
        names = self._names
        for name, value in scope.get("headers") or ():
            if name in names:
                candidates.append(value.strip() if name == self._header else _cookie(value, self._cookie or b""))
        if self._query is not None and scope.get("query_string"):
            query = scope["query_string"].decode("latin-1")
            candidates += [
                value.encode("latin-1", "replace")
                for name, value in parse_qsl(query, keep_blank_values=True)
                if name == self._query
            ]
        for candidate in candidates:
            if candidate is not None:
                several = several or (found is not None and candidate != found)
                found = candidate
        return found, several

    async def _refuse(self, kind: str, send: Send, status: int, challenge: bytes, reason: str) -> None:
        _log.debug("JWT authentication refused a request: %s", reason)
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Unauthorized" if status == 401 else "Bad Request",
                "status": status,
                "detail": reason,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"www-authenticate", challenge),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _cookie(header: bytes, name: bytes) -> bytes | None:
    found: bytes | None = None
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            found = value.strip().strip(b'"')
    return found


def _name(field: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
        raise ConfigError(field, value, "must be a header or cookie name (an HTTP token)")
    return value.lower().encode("ascii") if field.endswith("header") else value.encode("ascii")


def _paths(paths: object) -> tuple[str, ...]:
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise ConfigError(
            "JWTAuthMiddleware.exclude_paths", paths, "must be a collection of paths (not one string)"
        )
    result = tuple(paths)
    for path in result:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError("JWTAuthMiddleware.exclude_paths", path, "must be a path starting with '/'")
    return result
