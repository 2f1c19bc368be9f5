"""JWT verification keys: a strict key policy, static keys, and JWKS key sets fetched over HTTP and cached.

Every :class:`VerificationKey` carries exactly one algorithm, fixed when the key is loaded (from the JWK's ``alg``,
the caller, or the key itself when only one fits). A token's header never chooses how its signature is checked: it
matches the key's algorithm or is refused, which closes the algorithm-confusion attacks (``alg: none``, an HS256
token "signed" with an RSA public key as the HMAC secret). The key policy is enforced at load, never per token:
RSA keys of at least 2048 bits for ``RS*``/``PS*``; EC keys on their algorithm's curve (``ES256``: P-256,
``ES384``: P-384, ``ES512``: P-521, ``ES256K``: secp256k1); Ed25519/Ed448 for ``EdDSA``; HMAC secrets at least as
long as the hash output (RFC 7518 section 3.2: 32 bytes for ``HS256``); and a JWK whose ``use`` is not ``sig`` or
whose ``key_ops`` lack ``verify`` is no verification key. A static key that breaks the policy raises
:class:`~connectivity.errors.KeyPolicyError`; a key in a JWKS that does is skipped, logged (its ``kid`` and the
rule, never the key) and listed in :attr:`JWKS.skipped`, and tokens it signed find no key.

Theory of operation of :class:`JWKS`: the key set lives in a cachetools ``TLRUCache`` timed by the injected
clock, fresh for ``cache_ttl`` seconds after a successful fetch. A lookup that finds it expired, or asks for a
``kid`` it does not hold (the issuer may have rotated), refreshes it. Single flight: while a fetch is in progress,
other lookups wait for it. Rate limit: one attempt per ``min_refresh_interval`` at most, so a flood of made-up
``kid`` values costs the issuer one request per interval. A failed refresh keeps the last good keys, trusted until
the next attempt is allowed. A successful one reuses unchanged keys and bumps :attr:`JWKS.generation` when a key
went away or changed (the claims cache watches it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
from cachetools import TLRUCache
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from connectivity._http import httpx
from connectivity.errors import ConfigError, KeyPolicyError
from connectivity.policies._validate import finite_non_negative, finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "ALGORITHMS",
    "JWKS",
    "MIN_RSA_BITS",
    "KeySet",
    "SkippedKey",
    "VerificationKey",
]

_log = logging.getLogger("connectivity.security")

MIN_RSA_BITS: Final = 2048
"""The smallest RSA modulus accepted, in bits."""

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Final[Mapping[str, str]] = {
    "ES256": "secp256r1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
    "ES256K": "secp256k1",
}
_JWK_CURVES: Final = dict(zip(("P-256", "P-384", "P-521", "secp256k1"), _EC_CURVES, strict=True))
_HMAC_BYTES: Final[Mapping[str, int]] = {"HS256": 32, "HS384": 48, "HS512": 64}
_KTY: Final[Mapping[str, str]] = {
    **dict.fromkeys(_RSA_ALGS, "RSA"),
    **dict.fromkeys(_EC_CURVES, "EC"),
    **dict.fromkeys(_HMAC_BYTES, "oct"),
    "EdDSA": "OKP",
}

_PYJWT: Final[Mapping[str, Algorithm]] = {
    name: alg for name, alg in get_default_algorithms().items() if name in _KTY
}

ALGORITHMS: Final = frozenset(_PYJWT)
"""Every algorithm a key may be pinned to. ``none`` is not one of them, and never will be."""
_MAX_DOCUMENT_BYTES = 1 << 20
_MAX_KEYS = 100


class VerificationKey:
    """A public key (or HMAC secret) that verifies JWT signatures with one algorithm, checked against the key
    policy (see the module docstring) by :meth:`from_pem`, :meth:`from_jwk`, :meth:`from_secret` and
    :meth:`from_key`, which raise :class:`~connectivity.errors.KeyPolicyError` for a key that breaks it.

    Attributes:
        alg: The one algorithm this key verifies.
        kid: The key id tokens name (``None``: tried for tokens whose ``kid`` no other key has).
        kty: ``"RSA"``, ``"EC"``, ``"OKP"`` or ``"oct"``.
        size: Key size in bits.

    Key material never appears in ``repr`` or in an error message.

    .. versionadded:: 0.1
    """

    __slots__ = ("_algorithm", "_key", "alg", "kid", "kty", "size")

    def __init__(self, key: Any, *, alg: str | None = None, kid: str | None = None) -> None:
        if kid is not None and not isinstance(kid, str):
            raise KeyPolicyError("VerificationKey.kid", kid, "must be a string or None")
        if isinstance(key, (bytes, bytearray)):
            secret = bytes(key)
            alg = "HS256" if alg is None else alg
            _check_alg("VerificationKey.alg", alg)
            if _KTY[alg] != "oct":
                raise KeyPolicyError(
                    "VerificationKey.alg", alg, "an HMAC secret verifies HS256, HS384 or HS512 only"
                )
            needed = _HMAC_BYTES[alg]
            if len(secret) < needed:
                raise KeyPolicyError(
                    "VerificationKey.key",
                    f"<{len(secret)}-byte secret>",
                    f"an {alg} secret must be at least {needed} bytes (the hash output size)",
                )
            self._key: Any = secret
            self.kty = "oct"
            self.size = len(secret) * 8
        else:
            public = _public(key)
            alg = _default_alg(public) if alg is None else alg
            _check_alg("VerificationKey.alg", alg)
            self.kty, self.size = _check_asymmetric(public, alg)
            self._key = public
        self.alg: str = alg
        self.kid = kid
        self._algorithm = _PYJWT[alg]

    @classmethod
    def from_key(cls, key: Any, *, alg: str | None = None, kid: str | None = None) -> VerificationKey:
        """A key from a ``cryptography`` key object (only the public half of a private key is kept) or HMAC secret
        bytes. ``alg`` defaults to ``RS256`` for RSA, the curve's ``ES*`` for EC, ``EdDSA``, ``HS256``."""
        return cls(key, alg=alg, kid=kid)

    @classmethod
    def from_pem(cls, data: str | bytes, *, alg: str | None = None, kid: str | None = None) -> VerificationKey:
        """A key from PEM text: a public key, an X.509 certificate (its public key), or a private key (its public
        half). ``alg`` as for :meth:`from_key`."""
        raw = data.encode("ascii", "replace") if isinstance(data, str) else data
        if not isinstance(raw, bytes):
            raise KeyPolicyError("VerificationKey.pem", type(data).__name__, "must be PEM text (str or bytes)")
        loaded: Any = None
        for load in (
            serialization.load_pem_public_key,
            lambda blob: x509.load_pem_x509_certificate(blob).public_key(),
            lambda blob: serialization.load_pem_private_key(blob, password=None),
        ):
            try:
                loaded = load(raw)
                break
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
        if loaded is None:
            raise KeyPolicyError("VerificationKey.pem", "<PEM>", "no public key, certificate or unencrypted key")
        return cls(loaded, alg=alg, kid=kid)

    @classmethod
    def from_secret(cls, secret: str | bytes, *, alg: str = "HS256", kid: str | None = None) -> VerificationKey:
        """An HMAC key (``HS256``/``HS384``/``HS512``); a ``str`` secret is encoded as UTF-8."""
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, bytes):
            raise KeyPolicyError("VerificationKey.secret", type(secret).__name__, "must be str or bytes")
        return cls(secret, alg=alg, kid=kid)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any] | str, *, alg: str | None = None) -> VerificationKey:
        """A key from a JWK (a mapping, or its JSON text), with its ``kid``. The algorithm is the JWK's ``alg``
        (which must agree with ``alg`` if both are given), else ``alg``, else as for :meth:`from_key`."""
        if isinstance(jwk, str):
            try:
                jwk = json.loads(jwk)
            except ValueError:
                raise KeyPolicyError("JWK", "<JWK>", "is not valid JSON") from None
        if not isinstance(jwk, Mapping):
            raise KeyPolicyError("JWK", type(jwk).__name__, "must be a JSON object")
        kty = jwk.get("kty")
        if kty not in ("RSA", "EC", "OKP", "oct"):
            raise KeyPolicyError("JWK.kty", kty, "must be RSA, EC, OKP or oct")
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise KeyPolicyError("JWK.kid", kid, "must be a string")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise KeyPolicyError("JWK.use", use, "must be 'sig' for a signature verification key")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise KeyPolicyError("JWK.key_ops", ops, "must include 'verify'")
        declared = jwk.get("alg")
        if declared is not None:
            _check_alg("JWK.alg", declared)
            if alg is not None and alg != declared:
                raise KeyPolicyError(
                    "JWK.alg", declared, f"disagrees with the algorithm configured for it ({alg})"
                )
        chosen = declared or alg or _jwk_default_alg(jwk)
        _check_alg("JWK.alg", chosen)
        if _KTY[chosen] != kty:
            raise KeyPolicyError("JWK.kty", kty, f"a {kty} key cannot verify {chosen}")
        try:
            material = _PYJWT[chosen].from_jwk(dict(jwk))
        except (PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
            raise KeyPolicyError("JWK", f"<{kty} key>", "its key parameters cannot be read") from None
        return cls(material, alg=chosen, kid=kid)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``signing_input`` (never raises)."""
        try:
            return bool(self._algorithm.verify(signing_input, self._key, signature))
        except Exception:  # a malformed signature is a failed verification, whatever the backend raises
            return False

    def __repr__(self) -> str:
        return f"VerificationKey(kid={self.kid!r}, alg={self.alg!r}, kty={self.kty!r}, size={self.size})"


def _check_alg(field: str, alg: object) -> None:
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        rule = "'none' is never accepted" if isinstance(alg, str) and alg.lower() == "none" else "unsupported"
        raise KeyPolicyError(field, alg, f"{rule}; one of {', '.join(sorted(ALGORITHMS))}")


_PRIVATE = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
_PUBLIC = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def _public(key: Any) -> Any:
    if isinstance(key, _PRIVATE):
        key = key.public_key()
    if isinstance(key, _PUBLIC):
        return key
    raise KeyPolicyError(
        "VerificationKey.key", type(key).__name__, "must be an RSA, EC or EdDSA key object, or HMAC secret bytes"
    )


def _default_alg(public: Any) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public, ec.EllipticCurvePublicKey):
        for alg, curve in _EC_CURVES.items():
            if public.curve.name == curve:
                return alg
        raise KeyPolicyError("VerificationKey.key", f"EC {public.curve.name}", "no JWS algorithm uses this curve")
    return "EdDSA"


def _check_asymmetric(public: Any, alg: str) -> tuple[str, int]:
    """``(kty, size)`` of a public key that may verify ``alg``; a :class:`KeyPolicyError` otherwise."""
    if isinstance(public, rsa.RSAPublicKey):
        if alg not in _RSA_ALGS:
            raise KeyPolicyError("VerificationKey.alg", alg, "an RSA key verifies RS256/384/512 or PS256/384/512")
        if public.key_size < MIN_RSA_BITS:
            rule = f"RSA keys must have >= {MIN_RSA_BITS} bits"
            raise KeyPolicyError("VerificationKey.key", f"<RSA {public.key_size} bits>", rule)
        return "RSA", public.key_size
    if isinstance(public, ec.EllipticCurvePublicKey):
        expected = _EC_CURVES.get(alg)
        if expected is None:
            raise KeyPolicyError("VerificationKey.alg", alg, "an EC key verifies ES256, ES384, ES512 or ES256K")
        if public.curve.name != expected:
            raise KeyPolicyError(
                "VerificationKey.key", f"<EC {public.curve.name}>", f"{alg} requires a key on {expected}"
            )
        return "EC", public.curve.key_size
    if alg != "EdDSA":
        raise KeyPolicyError("VerificationKey.alg", alg, "an Ed25519/Ed448 key verifies EdDSA only")
    return "OKP", 256 if isinstance(public, ed25519.Ed25519PublicKey) else 456


def _jwk_default_alg(jwk: Mapping[str, Any]) -> str:
    default = {"RSA": "RS256", "oct": "HS256", "OKP": "EdDSA"}.get(jwk["kty"])
    if default is not None:
        return default
    crv = jwk.get("crv")
    alg = _JWK_CURVES.get(crv) if isinstance(crv, str) else None
    if alg is None:
        raise KeyPolicyError("JWK.crv", crv, f"must be one of {', '.join(_JWK_CURVES)}")
    return alg


# -- key sets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """A key of a JWKS that was not loaded.

    Attributes:
        kid: Its ``kid`` (``None`` when it had none, or not a string).
        reason: The rule it broke (never key material).

    .. versionadded:: 0.1
    """

    kid: str | None
    reason: str


class KeySet:
    """Keys indexed by ``kid``, and the keys without one."""

    __slots__ = ("by_kid", "keys", "unnamed")

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self.keys: tuple[VerificationKey, ...] = tuple(keys)
        self.by_kid: dict[str, VerificationKey] = {key.kid: key for key in self.keys if key.kid is not None}
        self.unnamed: tuple[VerificationKey, ...] = tuple(key for key in self.keys if key.kid is None)

    def select(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """The keys to try for a token naming ``kid``: that key, else the keys without a ``kid``; every key for a
        token naming none."""
        if kid is None:
            return self.keys
        key = self.by_kid.get(kid)
        return (key,) if key is not None else self.unnamed


_EMPTY = KeySet(())


def _ttu(_url: str, entry: tuple[KeySet, float], now: float) -> float:
    return now + entry[1]  # an entry is (keys, seconds to live)


class _FetchError(Exception):
    """The JWKS could not be fetched or used; the message is safe to log."""


class JWKS:
    """A JSON Web Key Set fetched from ``url``, cached, and refreshed on expiry or on an unknown ``kid``.

    Args:
        url: The ``jwks_uri`` (``http://`` or ``https://``).
        client: The :class:`httpx.AsyncClient` to fetch with (the caller owns it). By default each fetch uses a
            short-lived ``httpx.AsyncClient(transport=connectivity.transport(timeout=timeout))``: fetches are
            minutes apart, no connection is worth keeping open between them.
        cache_ttl: Seconds a fetched key set is used before it is fetched again (default 10 minutes).
        min_refresh_interval: Least seconds between two fetch attempts, whatever triggers them (expiry, unknown
            ``kid``, failure): an unknown-``kid`` flood costs the issuer at most one request per interval.
        timeout: Seconds a default-client fetch may take in all.
        clock: Time source for the cache and the rate limit (inject a ``FakeClock`` in tests).

    Attributes:
        fetches: Fetch attempts so far (successful or not).
        generation: Bumped when a refresh removes or changes a key.
        skipped: Keys of the last fetched document that break the key policy, and why.
        last_error: Why the last fetch failed (``None`` after a success).

    Raises:
        ConfigError: An argument is out of range.

    Use one instance per event loop. Keys are fetched on first use (or by ``await jwks.refresh()``).

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_cache",
        "_fresh_until",
        "_in_flight",
        "_last_attempt",
        "_last_good",
        "_raw",
        "cache_ttl",
        "client",
        "clock",
        "fetches",
        "generation",
        "last_error",
        "min_refresh_interval",
        "skipped",
        "timeout",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        cache_ttl: float = 600.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ConfigError("JWKS.url", url, "must be an http:// or https:// URL")
        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise ConfigError("JWKS.client", type(client).__name__, "must be an httpx.AsyncClient or None")
        self.url = url
        self.client = client
        self.cache_ttl = finite_positive("JWKS.cache_ttl", cache_ttl)
        self.min_refresh_interval = finite_non_negative("JWKS.min_refresh_interval", min_refresh_interval)
        self.timeout = finite_positive("JWKS.timeout", timeout)
        self.clock = clock
        self._cache: TLRUCache[str, tuple[KeySet, float]] = TLRUCache(maxsize=1, ttu=_ttu, timer=clock.now)
        self._fresh_until = -math.inf  # when the cached entry expires: fresh() without the cache's bookkeeping
        self._last_good: KeySet | None = None
        self._raw: dict[str, VerificationKey] = {}  # canonical JWK JSON -> loaded key, to reuse unchanged keys
        self._last_attempt = -math.inf
        self._in_flight: anyio.Event | None = None
        self.fetches = 0
        self.generation = 0
        self.skipped: tuple[SkippedKey, ...] = ()
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"JWKS({self.url!r}, keys={len(self._last_good.keys) if self._last_good else 0})"

    def fresh(self) -> bool:
        """Whether the cached keys are within their time to live (no refresh is due)."""
        return self.clock.now() < self._fresh_until

    def _store(self, keys: KeySet, ttl: float) -> None:
        self._cache[self.url] = (keys, ttl)
        self._fresh_until = self.clock.now() + ttl

    @property
    def keys(self) -> KeySet:
        """The keys in use now (the last good set, possibly stale; empty before the first successful fetch)."""
        return self._last_good or _EMPTY

    async def lookup(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """The keys to try for a token naming ``kid`` (see :meth:`KeySet.select`), refreshing the set first when
        it expired, or when ``kid`` is unknown (both subject to the rate limit)."""
        entry = self._cache.get(self.url)
        if entry is None:
            await self.refresh()
            entry = self._cache.get(self.url)
        keys = entry[0] if entry is not None else self.keys
        if kid is not None and kid not in keys.by_kid and await self.refresh():
            keys = self.keys
        return keys.select(kid)

    async def refresh(self) -> bool:
        """Fetch the key set now unless a fetch is in progress (then wait for it) or the rate limit forbids it.
        Returns whether a fetch was made or awaited (not whether it succeeded: see :attr:`last_error`)."""
        in_flight = self._in_flight
        if in_flight is not None:
            await in_flight.wait()
            return True
        now = self.clock.now()
        if now - self._last_attempt < self.min_refresh_interval:
            return False
        self._last_attempt = now
        self._in_flight = event = anyio.Event()
        try:
            # Shielded: a caller going away must not abandon a fetch others wait for (it has its own timeout).
            with anyio.CancelScope(shield=True):
                await self._fetch()
        finally:
            self._in_flight = None
            event.set()
        return True

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            document = await self._download()
            keys, skipped = self._load(document)
        except _FetchError as exc:
            self.last_error = str(exc)
            stale = self._last_good
            _log.warning(
                "JWKS %s: refresh failed (%s); %s",
                self.url,
                exc,
                f"keeping {len(stale.keys)} stale key(s)" if stale else "no keys to verify with",
            )
            if stale is not None:
                # Trusted until the next attempt is allowed: cached verifications stay usable meanwhile.
                self._store(stale, max(self.min_refresh_interval, 1e-3))
            return
        self.last_error = None
        self.skipped = skipped
        for skip in skipped:
            _log.warning("JWKS %s: key %r skipped: %s", self.url, skip.kid, skip.reason)
        self._store(keys, self.cache_ttl)
        self._last_good = keys

    async def _download(self) -> Any:
        headers = {"accept": "application/jwk-set+json, application/json"}
        try:
            if self.client is not None:
                response = await self.client.get(self.url, headers=headers)
            else:
                from connectivity._builder import transport  # lazy: the builder imports every transport

                async with httpx.AsyncClient(
                    transport=transport(timeout=self.timeout), timeout=self.timeout, trust_env=False
                ) as client:
                    response = await client.get(self.url, headers=headers)
        except httpx.HTTPError as exc:
            raise _FetchError(type(exc).__name__) from None
        if response.status_code != 200:
            raise _FetchError(f"status {response.status_code}")
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise _FetchError(f"document larger than {_MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(response.content)
        except (ValueError, RecursionError):
            raise _FetchError("not JSON") from None

    def _load(self, document: Any) -> tuple[KeySet, tuple[SkippedKey, ...]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _FetchError("not a JWK Set (no 'keys' list)")
        loaded: list[VerificationKey] = []
        raw: dict[str, VerificationKey] = {}
        skipped: list[SkippedKey] = []
        seen: set[str] = set()
        for jwk in document["keys"]:
            if not isinstance(jwk, dict):
                skipped.append(SkippedKey(None, "not a JSON object"))
                continue
            kid = jwk.get("kid")
            kid = kid if isinstance(kid, str) else None
            if len(loaded) >= _MAX_KEYS:
                skipped.append(SkippedKey(kid, f"more than {_MAX_KEYS} keys"))
                continue
            if kid is not None and kid in seen:
                skipped.append(SkippedKey(kid, "duplicate kid"))
                continue
            try:
                canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
                key = self._raw.get(canonical) or VerificationKey.from_jwk(jwk)
            except KeyPolicyError as exc:
                skipped.append(SkippedKey(kid, f"{exc.field}: {exc.rule}"))
                continue
            if kid is not None:
                seen.add(kid)
            raw[canonical] = key
            loaded.append(key)
        if not loaded:
            raise _FetchError(f"no usable key ({len(skipped)} skipped)")
        if any(canonical not in raw for canonical in self._raw):
            self.generation += 1  # a key was removed or changed: verifications made with it are stale
        self._raw = raw
        return KeySet(loaded), tuple(skipped)
