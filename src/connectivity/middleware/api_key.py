"""API-key authentication for inbound requests as pure ASGI middleware, with Kong key-auth semantics.

Theory of operation: the key is looked for under each of ``key_names`` in turn (default ``apikey``), in a request
header (case-insensitive name) and, if enabled, in a query parameter (exact name, percent-decoded value); the
first name present decides, the header before the query parameter, as in Kong. The key is hashed and looked up in
a :class:`~connectivity.security.KeyRing` (one hash per request, a constant-time comparison), and the consumer's
:class:`~connectivity.security.Principal` goes into ``scope["connectivity.principal"]``.

The answers, as Kong gives them, each a ``401`` with ``WWW-Authenticate: Key realm="..."`` and an RFC 9457
``application/problem+json`` body:

* a key that belongs to no consumer (or is malformed or longer than 1 KiB): ``Invalid authentication
  credentials``;
* the same name given twice (two headers, or two query parameters): ``Duplicate API key found``;
* no key at all: ``No API key found in request``, unless an ``anonymous`` consumer is configured (the request
  goes on as that consumer, ``scope["connectivity.anonymous"]`` set) or ``required=False`` (it goes on without a
  principal, for an authorization policy to decide), or an outer middleware already authenticated it (a JWT:
  either credential will do).

Unlike Kong, a wrong key is refused even when an anonymous consumer is configured: a revoked or mistyped key
should fail loudly, not quietly downgrade to anonymous access. With ``hide_credentials`` every configured key name
is removed from the headers and the query string before the app sees the request (the other parameters are kept
byte for byte). The key is never logged, and never appears in a response, a repr or an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import ASGIApp, Receive, Scope, Send, require_app, target_path
from connectivity.security.apikeys import ANONYMOUS_KEY, MAX_KEY_LENGTH, Consumer, KeyRing
from connectivity.security.identity import PRINCIPAL_KEY, Principal

__all__ = ["DUPLICATE_KEY", "INVALID_KEY", "NO_KEY", "APIKeyAuthMiddleware"]

NO_KEY = "No API key found in request"
DUPLICATE_KEY = "Duplicate API key found"
INVALID_KEY = "Invalid authentication credentials"

_log = logging.getLogger("connectivity.security")
_KEY_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_REALM_CHARS = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}


def _problem(detail: str) -> bytes:
    return json.dumps(
        {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": detail}, separators=(",", ":")
    ).encode("ascii")


def _flag(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name}", value, "must be True or False")
    return value


def _query_name(part: bytes) -> bytes:
    name = part.partition(b"=")[0]
    return unquote_to_bytes(name.replace(b"+", b" ")) if b"%" in name or b"+" in name else name


class APIKeyAuthMiddleware:
    """Authenticate inbound requests by API key, as Kong's key-auth plugin does.

    Args:
        app: The ASGI application to wrap.
        consumers: The consumers (:class:`~connectivity.security.Consumer`, keys stored only as hashes), or a
            ready :class:`~connectivity.security.KeyRing`.
        key_names: Header and query parameter names the key may come under, tried in order (letters, digits,
            ``_`` and ``-``).
        key_in_header: Look in request headers.
        key_in_query: Look in query parameters (off by default, unlike Kong: a key in a URL ends up in access
            logs, proxies' logs and browser history).
        hide_credentials: Remove the key names from headers and query before the app sees the request.
        required: Refuse a request without a key (``401``). Default: required unless ``anonymous`` is given.
        anonymous: The consumer a request without a key is served as (it must have no keys).
        run_on_preflight: Authenticate ``OPTIONS`` requests too (as Kong's default); ``False`` lets CORS
            preflight requests through without a key.
        realm: The realm of the ``WWW-Authenticate: Key realm="..."`` challenge.
        pepper: The secret ``"blake2b:"`` key hashes were made with (see :func:`~connectivity.security.hash_key`).

    Raises:
        ConfigError: An argument is invalid (the field is named; a key never appears in the message).

    HTTP and WebSocket requests are authenticated (a refused WebSocket handshake is closed with code 1008, which
    the server turns into a 403); lifespan passes through.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_anonymous",
        "_header_names",
        "_headers",
        "_order",
        "_principals",
        "_query_names",
        "anonymous",
        "app",
        "hide_credentials",
        "key_in_header",
        "key_in_query",
        "key_names",
        "key_ring",
        "realm",
        "required",
        "run_on_preflight",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        consumers: Iterable[Consumer] | KeyRing,
        key_names: Iterable[str] = ("apikey",),
        key_in_header: bool = True,
        key_in_query: bool = False,
        hide_credentials: bool = False,
        required: bool | None = None,
        anonymous: Consumer | None = None,
        run_on_preflight: bool = True,
        realm: str = "connectivity",
        pepper: str | bytes | None = None,
    ) -> None:
        owner = "APIKeyAuthMiddleware"
        self.app = require_app(owner, app)
        if isinstance(consumers, KeyRing):
            if pepper is not None:
                raise ConfigError(f"{owner}.pepper", "<hidden>", "give the pepper to the KeyRing")
            self.key_ring = consumers
        else:
            self.key_ring = KeyRing(consumers, pepper=pepper)
        if isinstance(key_names, (str, bytes)) or not isinstance(key_names, Iterable):
            raise ConfigError(f"{owner}.key_names", key_names, "must be a collection of names (not one string)")
        self.key_names = tuple(key_names)
        if not self.key_names:
            raise ConfigError(f"{owner}.key_names", key_names, "must name at least one header or parameter")
        for name in self.key_names:
            if not isinstance(name, str) or not name or not _KEY_NAME_CHARS.issuperset(name):
                raise ConfigError(f"{owner}.key_names", name, "may only contain letters, digits, '_' and '-'")
        self.key_in_header = _flag(owner, "key_in_header", key_in_header)
        self.key_in_query = _flag(owner, "key_in_query", key_in_query)
        if not (self.key_in_header or self.key_in_query):
            raise ConfigError(f"{owner}.key_in_header", key_in_header, "the key must be looked for somewhere")
        self.hide_credentials = _flag(owner, "hide_credentials", hide_credentials)
        self.run_on_preflight = _flag(owner, "run_on_preflight", run_on_preflight)
        if anonymous is not None:
            if not isinstance(anonymous, Consumer):
                raise ConfigError(f"{owner}.anonymous", anonymous, "must be a Consumer or None")
            if anonymous.key_hashes:
                raise ConfigError(f"{owner}.anonymous", anonymous, "the anonymous consumer cannot have keys")
            if any(anonymous.id == consumer.id for consumer in self.key_ring.consumers):
                raise ConfigError(f"{owner}.anonymous", anonymous, "its id is already a consumer's")
        self.anonymous = anonymous
        self.required = anonymous is None if required is None else _flag(owner, "required", required)
        if self.required and anonymous is not None:
            rule = "a request without a key is served as the anonymous consumer"
            raise ConfigError(f"{owner}.required", required, rule)
        if not isinstance(realm, str) or not realm.isascii() or not 0 < len(realm) <= 128:
            raise ConfigError(f"{owner}.realm", realm, "must be 1-128 printable ASCII characters")
        if not _REALM_CHARS.issuperset(realm.encode()):
            raise ConfigError(f"{owner}.realm", realm, "must be printable ASCII without '\"' or '\\'")
        self.realm = realm
        # Everything a request needs is built now: header names as bytes, one Principal per consumer (frozen,
        # shared by every request), the three refusals.
        self._header_names = {name.lower().encode("ascii") for name in self.key_names}
        self._query_names = {name.encode("ascii") for name in self.key_names}
        self._order = tuple((name.lower().encode("ascii"), name.encode("ascii")) for name in self.key_names)
        self._principals = {id(consumer): consumer.principal() for consumer in self.key_ring.consumers}
        self._anonymous = anonymous.principal() if anonymous is not None else None
        challenge = f'Key realm="{realm}"'.encode("ascii")
        self._headers: dict[str, tuple[list[tuple[bytes, bytes]], bytes]] = {}
        for detail in (NO_KEY, DUPLICATE_KEY, INVALID_KEY):
            body = _problem(detail)
            self._headers[detail] = (
                [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"www-authenticate", challenge),
                    (b"cache-control", b"no-store"),
                ],
                body,
            )

    def __repr__(self) -> str:
        return (
            f"APIKeyAuthMiddleware(key_names={self.key_names!r}, consumers={len(self.key_ring.consumers)}, "
            f"key_in_header={self.key_in_header}, key_in_query={self.key_in_query}, "
            f"hide_credentials={self.hide_credentials}, required={self.required}, "
            f"anonymous={None if self.anonymous is None else self.anonymous.id!r})"
        )

    # -- finding the key ---------------------------------------------------------------------------------------
    def _find(self, scope: Scope) -> bytes | str | None:
        """The key (bytes), ``None`` when there is none, or the refusal (``DUPLICATE_KEY``)."""
        in_headers: dict[bytes, list[bytes]] = {}
        if self.key_in_header:
            wanted = self._header_names
            for name, value in scope.get("headers") or ():
                lowered = name.lower()
                if lowered in wanted:
                    in_headers.setdefault(lowered, []).append(value)
        in_query: dict[bytes, list[bytes]] = {}
        query = scope.get("query_string") or b""
        if self.key_in_query and query:
            wanted = self._query_names
            for part in query.split(b"&"):
                name = _query_name(part)
                if name in wanted:
                    value = part.partition(b"=")[2]
                    in_query.setdefault(name, []).append(unquote_to_bytes(value.replace(b"+", b" ")))
        if not in_headers and not in_query:
            return None
        for header_name, query_name in self._order:
            found = in_headers.get(header_name) or in_query.get(query_name)
            if found is not None:
                return DUPLICATE_KEY if len(found) > 1 else found[0].strip(b" \t")
        return None

    def _hide(self, scope: Scope) -> None:
        if self.key_in_header:
            names = self._header_names
            headers = scope.get("headers") or ()
            if any(name.lower() in names for name, _ in headers):
                scope["headers"] = [(name, value) for name, value in headers if name.lower() not in names]
        query = scope.get("query_string") or b""
        if self.key_in_query and query:
            names = self._query_names
            parts = query.split(b"&")
            kept = [part for part in parts if _query_name(part) not in names]
            if len(kept) != len(parts):
                scope["query_string"] = b"&".join(kept)
                raw_path = scope.get("raw_path")
                if isinstance(raw_path, bytes) and b"?" in raw_path:  # a server that leaves the query in it
                    scope["raw_path"] = raw_path.partition(b"?")[0] + (b"?" + b"&".join(kept) if kept else b"")

    # -- answering -----------------------------------------------------------------------------------------------
    async def _refuse(self, scope: Scope, send: Send, detail: str) -> None:
        _log.debug("API key refused: %s (%s %s)", detail, scope.get("method", "GET"), target_path(scope))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        headers, body = self._headers[detail]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or (
            not self.run_on_preflight and scope.get("method") == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        key = self._find(scope)
        if key is None or key == b"":
            if not isinstance(scope.get(PRINCIPAL_KEY), Principal):  # else: authenticated by another credential
                if self._anonymous is not None:
                    scope[PRINCIPAL_KEY] = self._anonymous
                    scope[ANONYMOUS_KEY] = True
                elif self.required:
                    await self._refuse(scope, send, NO_KEY)
                    return
        elif isinstance(key, str):
            await self._refuse(scope, send, key)
            return
        else:
            consumer = self.key_ring.lookup(key) if len(key) <= MAX_KEY_LENGTH else None
            if consumer is None:
                await self._refuse(scope, send, INVALID_KEY)
                return
            scope[PRINCIPAL_KEY] = self._principals.get(id(consumer)) or consumer.principal()
            scope.pop(ANONYMOUS_KEY, None)
        if self.hide_credentials:
            self._hide(scope)
        await self.app(scope, receive, send)
