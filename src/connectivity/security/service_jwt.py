"""Short-lived service JWTs (``aud`` = the target service), minted with PyJWT and cached per audience."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from connectivity._http import httpx
from connectivity.errors import ConfigError, KeyPolicyError
from connectivity.policies._validate import finite_non_negative, finite_positive, ratio
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.security.credentials import AsyncSend, Credentials, Send, _skew, _Token

__all__ = ["ALGORITHMS", "ServiceJWT"]


_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
ALGORITHMS = (*_RSA, *_CURVES, "EdDSA")
_RESERVED = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti"})
_MAX_AUDIENCES = 1024


def _signing_key(private_key: str | bytes | Path, password: bytes | None, algorithm: str) -> Any:
    """Load a PEM private key and check it against the key policy for ``algorithm``."""
    field = "ServiceJWT.private_key"
    shown = str(private_key) if isinstance(private_key, Path) else "<PEM>"
    try:
        data = private_key.read_bytes() if isinstance(private_key, Path) else private_key
        if isinstance(data, str):
            data = data.encode("ascii")
        if not isinstance(data, bytes):
            raise TypeError
        key = serialization.load_pem_private_key(data, password=password)
    except (OSError, TypeError, ValueError, UnicodeError):  # their messages may quote the input: not chained
        raise ConfigError(field, shown, "must be a readable PEM private key (is the password right?)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if algorithm not in _RSA:
            raise KeyPolicyError(field, f"RSA key ({shown})", f"an RSA key cannot sign {algorithm}")
        if key.key_size < 2048:
            raise KeyPolicyError(
                field, f"RSA {key.key_size}-bit key ({shown})", "RSA keys need at least 2048 bits"
            )
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        curve = _CURVES.get(algorithm)
        if curve is None or not isinstance(key.curve, curve):
            raise KeyPolicyError(
                field, f"EC {key.curve.name} key ({shown})", f"{algorithm} needs {_expected(algorithm)} (RFC 7518)"
            )
    elif isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        if algorithm != "EdDSA":
            raise KeyPolicyError(field, f"EdDSA key ({shown})", f"an EdDSA key cannot sign {algorithm}")
    else:
        raise KeyPolicyError(field, f"{type(key).__name__} ({shown})", "not a JWT signing key (RSA, EC or EdDSA)")
    return key


def _expected(algorithm: str) -> str:
    curve = _CURVES.get(algorithm)
    return "an RSA key" if curve is None else f"an EC key on {curve.name}"


class ServiceJWT(Credentials):
    """Short-lived service JWTs signed with this service's key, one per target audience, cached until shortly
    before they expire. Sent as ``Authorization: Bearer <jwt>``.

    Each token carries ``iss``, ``sub``, ``aud``, ``iat``, ``exp`` and a unique ``jti``. The audience is the
    target service: ``audience[host]`` when ``audience`` maps the request's host (or ``host:port``), else the
    request's origin (``https://orders.internal``, Google Cloud Run's convention); a string fixes it for all.

    Args:
        private_key: The signing key: PEM text or bytes, or a :class:`~pathlib.Path` to a PEM file.
        algorithm: ``RS256``/``384``/``512``, ``PS256``/``384``/``512`` (RSA >= 2048 bits), ``ES256`` (P-256),
            ``ES384`` (P-384), ``ES512`` (P-521) or ``EdDSA`` (Ed25519, Ed448). Shared-secret ``HS*`` and
            ``none`` are refused.
        issuer: The ``iss`` claim (this service).
        subject: The ``sub`` claim (default: ``issuer``).
        audience: ``None`` (derive from the request), a fixed audience, or a mapping host -> audience.
        lifetime: Seconds each token is valid (default 300).
        key_id: The ``kid`` header, so verifiers can pick the key from a JWKS.
        claims: Extra claims (JSON values; not the registered ones above).
        password: The PEM's password, if encrypted.
        refresh_before: Mint a new token this many seconds before expiry...
        refresh_ratio: ...or this share of ``lifetime``, whichever is more (capped at half the lifetime).
        clock: Time source (``time()`` for the claims, ``now()`` for the cache).

    Raises:
        ConfigError: An option is invalid or the key unreadable.
        KeyPolicyError: The key is weak (RSA under 2048 bits) or does not fit the algorithm.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_cache",
        "_claims",
        "_clock",
        "_key",
        "_lock",
        "_refresh",
        "algorithm",
        "audience",
        "issuer",
        "key_id",
        "lifetime",
        "subject",
    )

    def __init__(
        self,
        private_key: str | bytes | Path,
        algorithm: str,
        *,
        issuer: str,
        subject: str | None = None,
        audience: str | Mapping[str, str] | None = None,
        lifetime: float = 300.0,
        key_id: str | None = None,
        claims: Mapping[str, Any] | None = None,
        password: bytes | None = None,
        refresh_before: float = 30.0,
        refresh_ratio: float = 0.1,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                "ServiceJWT.algorithm", algorithm, f"must be one of {', '.join(ALGORITHMS)} (no HS*, no none)"
            )
        self.algorithm = algorithm
        self._key = _signing_key(private_key, password, algorithm)
        for field, text in (("issuer", issuer), ("subject", subject), ("key_id", key_id)):
            if text is not None and (not isinstance(text, str) or not text):
                raise ConfigError(f"ServiceJWT.{field}", text, "must be a non-empty string")
        self.issuer = issuer
        self.subject = subject if subject is not None else issuer
        self.key_id = key_id
        if isinstance(audience, Mapping):
            audience = {str(host).lower(): aud for host, aud in audience.items()}
            if not all(host and isinstance(aud, str) and aud for host, aud in audience.items()):
                raise ConfigError("ServiceJWT.audience", audience, "must map host names to non-empty strings")
        elif audience is not None and (not isinstance(audience, str) or not audience):
            raise ConfigError("ServiceJWT.audience", audience, "must be None, a non-empty string or a mapping")
        self.audience = audience
        self.lifetime = finite_positive("ServiceJWT.lifetime", lifetime)
        extra = dict(claims or {})
        if _RESERVED & extra.keys():
            raise ConfigError(
                "ServiceJWT.claims", sorted(_RESERVED & extra.keys()), "are set by ServiceJWT itself"
            )
        try:
            json.dumps(extra)
        except (TypeError, ValueError):
            raise ConfigError("ServiceJWT.claims", list(extra), "must be JSON values") from None
        self._claims = extra
        self._refresh = _skew(
            self.lifetime,
            finite_non_negative("ServiceJWT.refresh_before", refresh_before),
            ratio("ServiceJWT.refresh_ratio", refresh_ratio),
        )
        self._clock = clock
        self._cache: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        audience = "<from host>" if self.audience is None else self.audience
        return (
            f"ServiceJWT(algorithm={self.algorithm!r}, issuer={self.issuer!r}, subject={self.subject!r}, "
            f"audience={audience!r}, lifetime={self.lifetime:g}, key_id={self.key_id!r})"
        )

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "algorithm": self.algorithm,
            "issuer": self.issuer,
            "subject": self.subject,
            "lifetime_s": self.lifetime,
            "audiences": sorted(self._cache),
        }

    def audience_for(self, url: httpx.URL) -> str:
        """The audience of a token for a request to ``url``."""
        if isinstance(self.audience, str):
            return self.audience
        netloc = url.netloc.decode("ascii").lower()
        if self.audience is not None:
            mapped = self.audience.get(netloc) or self.audience.get(url.host.lower())
            if mapped is not None:
                return mapped
        return f"{url.scheme}://{netloc}"

    def mint(self, audience: str) -> str:
        """A new signed token for ``audience`` (not cached)."""
        issued = int(self._clock.time())
        payload = {
            **self._claims,
            "iss": self.issuer,
            "sub": self.subject,
            "aud": audience,
            "iat": issued,
            "exp": issued + math.ceil(self.lifetime),
            "jti": uuid.uuid4().hex,
        }
        headers = None if self.key_id is None else {"kid": self.key_id}
        return jwt.encode(payload, self._key, algorithm=self.algorithm, headers=headers)

    def value(self, request: httpx.Request, send: Send) -> str:
        audience = self.audience_for(request.url)
        token = self._cache.get(audience)
        if token is not None and self._clock.now() < token.refresh_at:
            return token.value
        with self._lock:  # signing takes well under a millisecond: a thread lock is fine in async code too
            now = self._clock.now()
            token = self._cache.get(audience)
            if token is not None and now < token.refresh_at:
                return token.value
            value = "Bearer " + self.mint(audience)
            if len(self._cache) >= _MAX_AUDIENCES:
                self._cache = {aud: t for aud, t in self._cache.items() if now < t.refresh_at}
                while len(self._cache) >= _MAX_AUDIENCES:
                    del self._cache[next(iter(self._cache))]
            self._cache[audience] = _Token(value, now + self.lifetime - self._refresh, now + self.lifetime)
            return value

    async def avalue(self, request: httpx.Request, send: AsyncSend) -> str:
        return self.value(request, _no_send)


def _no_send(request: httpx.Request) -> httpx.Response:  # pragma: no cover - ServiceJWT never sends
    raise AssertionError("ServiceJWT does not send requests")
