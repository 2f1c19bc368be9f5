"""JWT verification: cheap checks first, the signature with a pinned key, the claims, and a verified-claims cache.

Theory of operation: :meth:`JWTVerifier.verify` takes a compact JWS and returns the caller's
:class:`~connectivity.security.identity.Principal`, or raises :class:`~connectivity.errors.AuthenticationError`
with a short reason that never contains the token. In order, cheapest first:

1. size: a token over ``max_token_bytes`` (8 KiB) is refused before anything else;
2. cache: the token (its SHA-256 when long, see below) is looked up among recent verifications; a hit is
   accepted only if ``exp``/``nbf`` still hold on the clock now, and the key that verified it is still current
   (its key set is fresh and has not dropped or changed a key since). A hit costs a hash and a dictionary lookup
   (about a microsecond, against 40-200 for a signature check);
3. form: three base64url segments, a JSON header object with a supported ``alg`` (``none`` is not one) and no
   ``crit`` extension (none is supported, RFC 7515 section 4.1.11);
4. key: static keys by ``kid``, then each :class:`~connectivity.security.jwks.JWKS` (which may refresh, rate
   limited); the header's ``alg`` must be the key's own algorithm; keys are never taken from the token (``jwk``,
   ``jku``, ``x5u`` and ``x5c`` headers are ignored);
5. signature, then the payload: a JSON object whose registered claims are checked with ``leeway`` seconds of clock
   skew: ``exp``, ``nbf``, ``iat`` (not in the future), ``iss`` and ``aud`` when configured, and the required
   claims present.

A verified token with an ``exp`` is cached with the :class:`Principal` built from it, each entry valid until
``exp + leeway``; the cache holds at most ``cache_size`` entries (when full, the oldest goes, or every expired
one when the oldest has expired). Tokens up to :data:`RAW_KEY_BYTES` are their own cache key, as in Envoy's JWT
cache (a hit is one dict lookup, the exact token or nothing); longer ones are keyed by their SHA-256, which bounds
the cache's memory at about ``cache_size`` x 2 KiB.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from hashlib import sha256 as _sha256
from types import MappingProxyType
from typing import Any, Final

from connectivity.errors import AuthenticationError, ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.security.identity import Principal
from connectivity.security.jwks import ALGORITHMS, JWKS, KeySet, VerificationKey

__all__ = ["DEFAULT_MAX_TOKEN_BYTES", "RAW_KEY_BYTES", "JWTVerifier"]

DEFAULT_MAX_TOKEN_BYTES: Final = 8192
"""The largest token accepted by default, in bytes (Envoy and most proxies cap request headers near this)."""
RAW_KEY_BYTES: Final = 2048
"""Tokens up to this size are kept as their own cache key; longer ones by their SHA-256."""
_CacheKey = bytes | tuple[str, bytes]

_FORM = re.compile(rb"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")

# The reasons a token is refused: constant strings, never anything taken from the token.
TOO_LARGE = "token too large"
MALFORMED = "malformed token"
BAD_ALG = "unsupported algorithm"
NO_KEY = "no key for this token"
ALG_MISMATCH = "algorithm does not match the key"
BAD_SIGNATURE = "invalid signature"
EXPIRED = "token expired"
NOT_YET_VALID = "token not yet valid"
ISSUED_IN_FUTURE = "token issued in the future"
BAD_ISSUER = "invalid issuer"
BAD_AUDIENCE = "invalid audience"


class _Verified:
    """One cache entry: the principal, the wall-clock window it holds in (``nbf``/``exp`` widened by the leeway),
    and the key source that vouched for it."""

    __slots__ = ("end", "generation", "principal", "source", "start")

    def __init__(
        self, principal: Principal, start: float, end: float, source: JWKS | None, generation: int
    ) -> None:
        self.principal = principal
        self.start = start
        self.end = end
        self.source = source
        self.generation = generation


class JWTVerifier:
    """Verifies JWTs (JWS compact form) against pinned keys and a claims policy.

    Args:
        keys: Static keys and key sets: a :class:`~connectivity.security.jwks.VerificationKey`, a
            :class:`~connectivity.security.jwks.JWKS`, or an iterable of them. Static keys are looked up first.
        jwks_url: Shorthand for adding ``JWKS(jwks_url, clock=clock)`` to ``keys``.
        issuer: The accepted ``iss`` value(s). When set, ``iss`` is required.
        audience: The accepted ``aud`` value(s); a token is accepted if any of its audiences is one of them. When
            set, ``aud`` is required; when not set, a token that carries an ``aud`` is refused (as PyJWT does: a
            token minted for another service must not be accepted by default).
        leeway: Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
        required_claims: Claims that must be present (default ``("exp",)``: a token that never expires is
            refused).
        groups_claim: The claim listing the principal's groups (a list of strings, or a space-separated string);
            ``None`` for none.
        cache_size: Verified tokens remembered (0 disables the cache).
        max_token_bytes: Longer tokens are refused before any parsing.
        clock: Time source: ``time()`` for the claims, ``now()`` for the caches.

    Raises:
        ConfigError: An argument is invalid, or no key source is given.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_audiences",
        "_cache",
        "_issuers",
        "_required",
        "_sources",
        "_static",
        "cache_size",
        "clock",
        "groups_claim",
        "leeway",
        "max_token_bytes",
    )

    def __init__(
        self,
        *,
        keys: VerificationKey | JWKS | Iterable[VerificationKey | JWKS] | None = None,
        jwks_url: str | None = None,
        issuer: str | Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        leeway: float = 60.0,
        required_claims: Iterable[str] = ("exp",),
        groups_claim: str | None = "groups",
        cache_size: int = 10_000,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        items: list[Any]
        if keys is None:
            items = []
        elif isinstance(keys, (VerificationKey, JWKS)):
            items = [keys]
        elif isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Iterable):
            raise ConfigError(
                "JWTVerifier.keys",
                type(keys).__name__,
                "must be a VerificationKey, a JWKS, or an iterable of them",
            )
        else:
            items = list(keys)
        if jwks_url is not None:
            items.append(JWKS(jwks_url, clock=clock))
        static: list[VerificationKey] = []
        sources: list[JWKS] = []
        for item in items:
            if isinstance(item, VerificationKey):
                static.append(item)
            elif isinstance(item, JWKS):
                sources.append(item)
            else:
                raise ConfigError("JWTVerifier.keys", type(item).__name__, "must hold VerificationKey or JWKS")
        if not items:
            raise ConfigError("JWTVerifier.keys", None, "give at least one key or key set (keys= or jwks_url=)")
        self._static = KeySet(static)
        self._sources = tuple(sources)
        self._issuers = _names("JWTVerifier.issuer", issuer)
        self._audiences = _names("JWTVerifier.audience", audience)
        self.leeway = finite_non_negative("JWTVerifier.leeway", leeway)
        required = _names("JWTVerifier.required_claims", required_claims, allow_empty=True) or frozenset()
        self._required = tuple(sorted(required))
        if groups_claim is not None and (not isinstance(groups_claim, str) or not groups_claim):
            raise ConfigError("JWTVerifier.groups_claim", groups_claim, "must be a non-empty string or None")
        self.groups_claim = groups_claim
        self.cache_size = at_least_int("JWTVerifier.cache_size", cache_size, 0)
        self.max_token_bytes = at_least_int("JWTVerifier.max_token_bytes", max_token_bytes, 64)
        self.clock = clock
        # A plain dict, oldest entry evicted first: a hit must cost next to nothing (a cachetools cache's
        # Python-level bookkeeping would double the cost of a hit), and every hit re-checks the entry anyway.
        self._cache: dict[_CacheKey, _Verified] | None = {} if cache_size else None

    @property
    def key_sets(self) -> tuple[JWKS, ...]:
        """The remote key sets consulted (after the static keys)."""
        return self._sources

    @property
    def static_keys(self) -> tuple[VerificationKey, ...]:
        """The static keys."""
        return self._static.keys

    def __repr__(self) -> str:
        return (
            f"JWTVerifier(static_keys={len(self._static.keys)}, key_sets={list(self._sources)!r}, "
            f"issuer={sorted(self._issuers) if self._issuers else None}, "
            f"audience={sorted(self._audiences) if self._audiences else None})"
        )

    def cached(self, token: str | bytes) -> Principal | None:
        """The principal of ``token`` if it was verified before and its verification still holds (``exp`` and
        ``nbf`` on the clock now, its key still current); ``None`` otherwise. No I/O, no signature check: the
        fast path :meth:`verify` takes first, for callers that want to skip a coroutine on a hit."""
        cache = self._cache
        if cache is None:
            return None
        raw = token if token.__class__ is bytes else _bytes(token)
        size = len(raw)
        if size > self.max_token_bytes:
            return None
        key: _CacheKey = raw if size <= RAW_KEY_BYTES else ("sha256", _sha256(raw).digest())
        entry = cache.get(key)
        if entry is None:
            return None
        source = entry.source
        if entry.start <= self.clock.time() < entry.end and (
            source is None or (source.generation == entry.generation and source.fresh())
        ):
            return entry.principal
        del cache[key]
        return None

    async def verify(self, token: str | bytes) -> Principal:
        """Verify ``token`` and return its principal (``id`` = ``sub``, scopes from ``scope``/``scp``, groups from
        ``groups_claim``, ``claims`` = the verified claims, read-only).

        Raises:
            AuthenticationError: The token is refused; ``reason`` says why, without the token.
        """
        raw = _bytes(token)
        if len(raw) > self.max_token_bytes:
            raise AuthenticationError(TOO_LARGE)
        principal = self.cached(raw)
        if principal is not None:
            return principal
        return await self._verify(raw)

    async def _verify(self, raw: bytes) -> Principal:
        form = _FORM.fullmatch(raw)
        if form is None:
            raise AuthenticationError(MALFORMED)
        header = _json_object(form.group(1))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise AuthenticationError(BAD_ALG)
        if "crit" in header or header.get("b64", True) is not True:
            raise AuthenticationError(MALFORMED)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError(MALFORMED)
        signature = _b64(form.group(3))
        signing_input = raw[: form.end(2)]
        source, generation = await self._verify_signature(kid, alg, signing_input, signature)
        claims = _json_object(form.group(2))
        principal = self._check(claims)
        cache = self._cache
        exp = _time_claim(claims, "exp")
        if cache is not None and exp is not None:
            if len(cache) >= self.cache_size:
                self._evict(cache)
            nbf = _time_claim(claims, "nbf")
            start = -math.inf if nbf is None else nbf - self.leeway
            key: _CacheKey = bytes(raw) if len(raw) <= RAW_KEY_BYTES else ("sha256", _sha256(raw).digest())
            cache[key] = _Verified(principal, start, exp + self.leeway, source, generation)
        return principal

    def _evict(self, cache: dict[_CacheKey, _Verified]) -> None:
        """Make room: drop the oldest entry, or every expired one when the oldest has expired."""
        now = self.clock.time()
        oldest = next(iter(cache))
        if cache[oldest].end > now:
            del cache[oldest]
            return
        for key in [key for key, entry in cache.items() if entry.end <= now]:
            del cache[key]

    async def _candidates(self, kid: str | None) -> list[tuple[VerificationKey, JWKS | None, int]]:
        """The keys to try, each with its source (``None``: static) and that source's generation: the key named
        ``kid`` if one is known (after refreshing the key sets that do not know it), else the keys without a
        ``kid`` (every key, for a token naming none)."""
        if kid is not None:
            key = self._static.by_kid.get(kid)
            if key is not None:
                return [(key, None, 0)]
        fallback: list[tuple[VerificationKey, JWKS | None, int]] = [
            (key, None, 0) for key in self._static.select(kid)
        ]
        for jwks in self._sources:
            found = await jwks.lookup(kid)
            generation = jwks.generation
            if kid is not None and kid in jwks.keys.by_kid:
                return [(found[0], jwks, generation)]
            fallback.extend((key, jwks, generation) for key in found)
        return fallback

    async def _verify_signature(
        self, kid: str | None, alg: str, signing_input: bytes, signature: bytes
    ) -> tuple[JWKS | None, int]:
        """Check the signature; return the verifying key's source and generation."""
        candidates = await self._candidates(kid)
        if not candidates:
            raise AuthenticationError(NO_KEY)
        matching = [candidate for candidate in candidates if candidate[0].alg == alg]
        if not matching:
            raise AuthenticationError(ALG_MISMATCH)
        for key, source, generation in matching:
            if key.verify(signing_input, signature):
                return source, generation
        raise AuthenticationError(BAD_SIGNATURE)

    def _check(self, claims: dict[str, Any]) -> Principal:
        now = self.clock.time()
        leeway = self.leeway
        for name in self._required:
            if name not in claims:
                raise AuthenticationError(f"missing claim: {name}")
        exp = _time_claim(claims, "exp")
        if exp is not None and now >= exp + leeway:
            raise AuthenticationError(EXPIRED)
        nbf = _time_claim(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise AuthenticationError(NOT_YET_VALID)
        iat = _time_claim(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise AuthenticationError(ISSUED_IN_FUTURE)
        if self._issuers is not None:
            iss = claims.get("iss")
            if not isinstance(iss, str) or iss not in self._issuers:
                raise AuthenticationError(BAD_ISSUER)
        aud = claims.get("aud")
        if self._audiences is None:
            if aud is not None:
                raise AuthenticationError(BAD_AUDIENCE)
        else:
            audiences = [aud] if isinstance(aud, str) else aud
            if (
                not isinstance(audiences, list)
                or not all(isinstance(item, str) for item in audiences)
                or self._audiences.isdisjoint(audiences)
            ):
                raise AuthenticationError(BAD_AUDIENCE)
        sub = claims.get("sub", "")
        if not isinstance(sub, str):
            raise AuthenticationError("invalid claim: sub")
        return Principal(
            id=sub,
            method="jwt",
            scopes=_words(claims.get("scope")) | _words(claims.get("scp")),
            groups=_words(claims.get(self.groups_claim)) if self.groups_claim else frozenset(),
            claims=MappingProxyType(claims),
        )


def _bytes(token: str | bytes) -> bytes:
    # A token is ASCII; anything else becomes '?', which no well-formed token contains.
    return token.encode("latin-1", "replace") if isinstance(token, str) else bytes(token)


def _names(field: str, value: object, *, allow_empty: bool = False) -> frozenset[str] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else value
    if isinstance(names, (bytes, Mapping)) or not isinstance(names, Iterable):
        raise ConfigError(field, value, "must be a string or an iterable of strings")
    result = frozenset(names)
    if not all(isinstance(name, str) and name for name in result):
        raise ConfigError(field, value, "must hold non-empty strings")
    if not result and not allow_empty:
        raise ConfigError(field, value, "must not be empty (use None to not check it)")
    return result


def _b64(segment: bytes) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):  # a length of 4n+1 is not base64
        raise AuthenticationError(MALFORMED) from None


def _json_object(segment: bytes) -> dict[str, Any]:
    try:
        value = json.loads(_b64(segment))
    except (ValueError, RecursionError):
        raise AuthenticationError(MALFORMED) from None
    if not isinstance(value, dict):
        raise AuthenticationError(MALFORMED)
    return value


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a finite float, ``None`` when absent; refused when present but not a number."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthenticationError(f"invalid claim: {name}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise AuthenticationError(f"invalid claim: {name}") from None
    if not math.isfinite(number):  # json.loads reads NaN and Infinity
        raise AuthenticationError(f"invalid claim: {name}")
    return number


def _words(value: object) -> frozenset[str]:
    """Scopes or groups: a space-separated string (RFC 8693 ``scope``) or a list of strings (``scp``, groups)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()
