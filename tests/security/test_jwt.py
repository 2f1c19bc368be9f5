"""JWT verification: the key policy at load, the token checks, the verified-claims cache, and JWKS fetching from a
real uvicorn server on loopback (fetches counted on the server; time from a FakeClock, never slept)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
from anyio.abc import TaskGroup
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from connectivity.errors import AuthenticationError, ConfigError, KeyPolicyError
from connectivity.security.identity import Principal
from connectivity.security.jwks import JWKS, SkippedKey, VerificationKey
from connectivity.security.jwt import RAW_KEY_BYTES, JWTVerifier
from connectivity.testing import FakeClock
from connectivity.testing.server import serve

ISSUER = "https://issuer.example"
AUDIENCE = "orders"
SECRET = b"0123456789abcdef0123456789abcdef"  # exactly 32 bytes: the HS256 minimum


# -- keys and tokens -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sign(claims: dict[str, Any], key: Any, alg: str, kid: str | None = None, **header: Any) -> str:
    """A token signed with pyjwt (its weak-key warnings silenced: tests sign with weak keys on purpose)."""
    headers = dict(header)
    if kid is not None:
        headers["kid"] = kid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: Any, secret: bytes, *, raw_payload: bytes | None = None) -> str:
    """A token HMAC-SHA256-signed with ``secret`` whatever its header says (for confusion attacks)."""
    body = raw_payload if raw_payload is not None else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = clock.time()
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def verifier_for(clock: FakeClock, keys: Any, **options: Any) -> JWTVerifier:
    return JWTVerifier(keys=keys, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)


async def refused(verifier: JWTVerifier, token: str | bytes) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    assert caught.value.error == "invalid_token"
    text = token.decode("latin-1") if isinstance(token, bytes) else token
    for segment in text.split(".")[:3]:
        if len(segment) > 8:
            assert segment not in str(caught.value), "the token must never appear in an error"
    return caught.value.reason


# -- a JWKS server on loopback ---------------------------------------------------------------------------------
class JWKSApp:
    """Serves ``document`` as JSON (or ``status`` when it is not 200); counts the requests it receives. ``gate``,
    when set, holds every response until it is released (from the test thread)."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.fetches = 0
        self.gate: threading.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.fetches += 1
        gate = self.gate
        if gate is not None:
            await anyio.to_thread.run_sync(gate.wait, 10.0)
        body = json.dumps(self.document).encode() if self.status == 200 else b"nope"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def jwks_app() -> Iterator[tuple[JWKSApp, str]]:
    app = JWKSApp()
    with serve(app, name="jwks") as running:
        yield app, f"{running.url}/.well-known/jwks.json"
        if app.gate is not None:
            app.gate.set()


# -- the key policy, at load -----------------------------------------------------------------------------------
def test_rsa_under_2048_bits_is_refused_in_every_form(weak_rsa_key: rsa.RSAPrivateKey) -> None:
    pem = weak_rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for load in (
        lambda: VerificationKey.from_key(weak_rsa_key),
        lambda: VerificationKey.from_pem(pem, alg="RS256"),
        lambda: VerificationKey.from_jwk(rsa_jwk(weak_rsa_key, "weak")),
    ):
        with pytest.raises(KeyPolicyError) as caught:
            load()
        assert "2048" in caught.value.rule
        assert "1024" in str(caught.value)


@pytest.mark.parametrize(("alg", "size"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_hmac_secret_must_be_as_long_as_the_hash(alg: str, size: int) -> None:
    assert VerificationKey.from_secret(b"k" * size, alg=alg).alg == alg
    with pytest.raises(KeyPolicyError) as caught:
        VerificationKey.from_secret(b"k" * (size - 1), alg=alg)
    assert f"at least {size} bytes" in caught.value.rule
    short = HMACAlgorithm.to_jwk(b"k" * (size - 1), as_dict=True) | {"alg": alg}
    with pytest.raises(KeyPolicyError):
        VerificationKey.from_jwk(short)


def test_jwk_meant_for_encryption_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KeyPolicyError) as caught:
        VerificationKey.from_jwk(rsa_jwk(rsa_key, "enc", use="enc"))
    assert caught.value.field == "JWK.use"
    with pytest.raises(KeyPolicyError) as caught:
        VerificationKey.from_jwk(rsa_jwk(rsa_key, "ops", key_ops=["encrypt", "wrapKey"]))
    assert caught.value.field == "JWK.key_ops"
    assert VerificationKey.from_jwk(rsa_jwk(rsa_key, "ok", use="sig", key_ops=["verify"])).kid == "ok"


def test_ec_key_on_the_wrong_curve_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyPolicyError) as caught:
        VerificationKey.from_key(p384, alg="ES256")
    assert "secp256r1" in caught.value.rule
    jwk = ECAlgorithm.to_jwk(p384.public_key(), as_dict=True) | {"alg": "ES256"}
    with pytest.raises(KeyPolicyError):
        VerificationKey.from_jwk(jwk)
    assert VerificationKey.from_key(p384).alg == "ES384"  # the curve names the algorithm


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS1", "RS1", ""])
def test_none_and_unknown_algorithms_are_refused(alg: str, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KeyPolicyError):
        VerificationKey.from_key(rsa_key, alg=alg)
    with pytest.raises(KeyPolicyError):
        VerificationKey.from_jwk(rsa_jwk(rsa_key, "k", alg=alg))


def test_key_type_must_fit_the_algorithm(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    for load in (
        lambda: VerificationKey.from_key(rsa_key, alg="ES256"),
        lambda: VerificationKey.from_key(rsa_key, alg="HS256"),
        lambda: VerificationKey.from_key(ec_key, alg="RS256"),
        lambda: VerificationKey.from_key(ed25519.Ed25519PrivateKey.generate(), alg="RS256"),
        lambda: VerificationKey.from_secret(SECRET, alg="RS256"),
        lambda: VerificationKey.from_jwk(rsa_jwk(rsa_key, "k", alg="HS256")),
        lambda: VerificationKey.from_jwk(rsa_jwk(rsa_key, "k", alg="RS256"), alg="PS256"),
        lambda: VerificationKey.from_jwk({"kty": "RSA", "n": "AQAB"}),
        lambda: VerificationKey.from_jwk({"kty": "XYZ"}),
        lambda: VerificationKey.from_jwk("{not json"),
        lambda: VerificationKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        lambda: VerificationKey.from_key("not a key"),
    ):
        with pytest.raises(KeyPolicyError):
            load()


def test_loaded_keys_keep_public_material_only_and_never_show_it(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = VerificationKey.from_pem(private_pem, kid="k1")
    assert (key.alg, key.kty, key.size, key.kid) == ("RS256", "RSA", 2048, "k1")
    assert isinstance(key._key, rsa.RSAPublicKey)
    secret = VerificationKey.from_secret("a-very-long-shared-secret-of-32+bytes", kid="h")
    assert "secret" not in repr(secret)
    assert "very-long" not in repr(secret)
    with pytest.raises(KeyPolicyError) as caught:
        VerificationKey.from_secret("short-secret")
    assert "short-secret" not in str(caught.value)


# -- tokens: accepted -------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_valid_tokens_of_every_key_type_give_a_principal(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    clock = FakeClock()
    ed = ed25519.Ed25519PrivateKey.generate()
    verifier = verifier_for(
        clock,
        [
            VerificationKey.from_key(rsa_key, kid="rsa"),
            VerificationKey.from_key(rsa_key, alg="PS256", kid="pss"),
            VerificationKey.from_key(ec_key, kid="ec"),
            VerificationKey.from_key(ed, kid="ed"),
            VerificationKey.from_secret(SECRET, kid="hs"),
        ],
        groups_claim="roles",
    )
    token_claims = claims(clock, scope="orders:read orders:write", scp=["admin"], roles=["ops", 7])
    for key, alg, kid in (
        (rsa_key, "RS256", "rsa"),
        (rsa_key, "PS256", "pss"),
        (ec_key, "ES256", "ec"),
        (ed, "EdDSA", "ed"),
        (SECRET, "HS256", "hs"),
    ):
        principal = await verifier.verify(sign(token_claims, key, alg, kid))
        assert principal == Principal(
            id="alice", method="jwt", scopes=frozenset({"orders:read", "orders:write", "admin"}), groups={"ops"}
        )
        assert principal.claims["sub"] == "alice"
        with pytest.raises(TypeError):
            principal.claims["sub"] = "mallory"  # type: ignore[index]


@pytest.mark.anyio
async def test_audience_list_and_issuer_sets(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    key = VerificationKey.from_key(rsa_key, kid="k")
    verifier = JWTVerifier(keys=key, issuer=[ISSUER, "https://other"], audience={"a", AUDIENCE}, clock=clock)
    assert (await verifier.verify(sign(claims(clock, aud=["x", AUDIENCE]), rsa_key, "RS256", "k"))).id == "alice"
    assert (await verifier.verify(sign(claims(clock, iss="https://other"), rsa_key, "RS256", "k"))).id == "alice"


@pytest.mark.anyio
async def test_a_key_without_kid_serves_tokens_of_its_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key))
    assert (await verifier.verify(sign(claims(clock), rsa_key, "RS256", "any-kid"))).id == "alice"
    assert (await verifier.verify(sign(claims(clock), rsa_key, "RS256"))).id == "alice"


# -- tokens: refused --------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_alg_none_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))
    body = b64(json.dumps(claims(clock)).encode())
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "kid": "k"}).encode())
        assert await refused(verifier, f"{header}.{body}.") == "malformed token"  # no signature at all
        assert await refused(verifier, f"{header}.{body}.{b64(b'sig')}") == "unsupported algorithm"


@pytest.mark.anyio
async def test_hs256_signed_with_the_rsa_public_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """The classic confusion: the attacker HMACs with the server's public key, hoping it is used as the secret."""
    clock = FakeClock()
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = verifier_for(clock, VerificationKey.from_pem(public_pem, kid="rsa"))
    for header in ({"alg": "HS256", "kid": "rsa"}, {"alg": "HS256"}, {"alg": "HS256", "typ": "JWT"}):
        token = forge(header, claims(clock), public_pem)
        assert await refused(verifier, token) == "algorithm does not match the key"


@pytest.mark.anyio
async def test_alg_in_header_must_be_the_keys_own(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))  # pinned to RS256
    token = sign(claims(clock), rsa_key, "PS256", "k")  # a genuine signature by the key, another algorithm
    assert await refused(verifier, token) == "algorithm does not match the key"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await refused(verifier, sign(claims(clock), other, "RS256", "k")) == "invalid signature"


@pytest.mark.anyio
async def test_time_claims_with_leeway(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"), cache_size=0)
    now = clock.time()

    async def check(expected: str | None, **overrides: Any) -> None:
        token = sign(claims(clock, **overrides), rsa_key, "RS256", "k")
        if expected is None:
            assert (await verifier.verify(token)).id == "alice"
        else:
            assert await refused(verifier, token) == expected

    await check("token expired", exp=now - 61)
    await check(None, exp=now - 59)  # within the default 60 s leeway
    await check("token not yet valid", nbf=now + 61)
    await check(None, nbf=now + 59)
    await check("token issued in the future", iat=now + 61)
    await check("invalid claim: exp", exp="tomorrow")
    await check("invalid claim: exp", exp=True)
    await check("invalid claim: nbf", nbf=[1])
    await check("missing claim: exp", exp=None)
    strict = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"), leeway=0, cache_size=0)
    assert await refused(strict, sign(claims(clock, exp=now - 1), rsa_key, "RS256", "k")) == "token expired"


@pytest.mark.anyio
async def test_audience_and_issuer_mismatches(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    key = VerificationKey.from_key(rsa_key, kid="k")
    verifier = verifier_for(clock, key)
    for overrides, reason in (
        ({"aud": "payments"}, "invalid audience"),
        ({"aud": ["payments", "billing"]}, "invalid audience"),
        ({"aud": None}, "invalid audience"),
        ({"aud": [AUDIENCE, 3]}, "invalid audience"),
        ({"iss": "https://evil.example"}, "invalid issuer"),
        ({"iss": None}, "invalid issuer"),
        ({"sub": 42}, "invalid claim: sub"),
    ):
        assert await refused(verifier, sign(claims(clock, **overrides), rsa_key, "RS256", "k")) == reason
    # No audience configured: a token minted for some audience is not taken for this service (as PyJWT does).
    anyone = JWTVerifier(keys=key, clock=clock)
    assert await refused(anyone, sign(claims(clock), rsa_key, "RS256", "k")) == "invalid audience"
    assert (await anyone.verify(sign(claims(clock, aud=None), rsa_key, "RS256", "k"))).id == "alice"
    required = JWTVerifier(keys=key, audience=AUDIENCE, required_claims=["exp", "sub", "jti"], clock=clock)
    assert await refused(required, sign(claims(clock), rsa_key, "RS256", "k")) == "missing claim: jti"


def _malformed(clock: FakeClock) -> list[str]:
    good_header = b64(json.dumps({"alg": "HS256", "kid": "hs"}).encode())
    body = b64(json.dumps(claims(clock)).encode())
    sig = b64(b"x" * 32)
    return [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        f"{good_header}.{body}",
        f"{good_header}..{sig}",
        f"{good_header}.{body}.{sig}=",
        f"{good_header}.{body}.!!!!",
        f"{good_header} .{body}.{sig}",
        f"{good_header}.{body}.{sig}\n",
        f"é{good_header}.{body}.{sig}",
        f"{b64(b'not json')}.{body}.{sig}",
        f"{b64(b'[1, 2]')}.{body}.{sig}",
        f"{b64(b'{')}.{body}.{sig}",
        f"{b64(b'{}')[:-1]}A.{body}.{sig}",  # base64 of length 4n+1
        f"{b64(json.dumps({'alg': 'HS256', 'kid': 7}).encode())}.{body}.{sig}",
        f"{b64(json.dumps({'alg': 'HS256', 'crit': ['exp']}).encode())}.{body}.{sig}",
        f"{b64(json.dumps({'alg': 'HS256', 'b64': False}).encode())}.{body}.{sig}",
        f"{b64(b'[' * 5000)}.{body}.{sig}",
    ]


@pytest.mark.anyio
async def test_malformed_tokens_are_refused_before_any_key_is_fetched(jwks_app: tuple[JWKSApp, str]) -> None:
    app, url = jwks_app
    clock = FakeClock()
    verifier = verifier_for(clock, JWKS(url, clock=clock))
    for token in _malformed(clock):
        assert await refused(verifier, token) in {"malformed token", "unsupported algorithm"}, token
    assert app.fetches == 0


@pytest.mark.anyio
async def test_a_payload_that_is_not_a_json_object_is_refused_after_the_signature() -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_secret(SECRET, kid="hs"))
    for payload in (b"not json", b"[1]", b"NaN"):
        token = forge({"alg": "HS256", "kid": "hs"}, None, SECRET, raw_payload=payload)
        assert await refused(verifier, token) == "malformed token"
    token = forge({"alg": "HS256", "kid": "hs"}, None, SECRET, raw_payload=b'{"exp": NaN, "sub": "a"}')
    assert await refused(verifier, token) == "invalid claim: exp"
    token = forge({"alg": "HS256", "kid": "hs"}, None, SECRET, raw_payload=b'{"exp": 1' + b"0" * 400 + b"}")
    assert await refused(verifier, token) == "invalid claim: exp"


@pytest.mark.anyio
async def test_oversized_tokens_are_refused_before_parsing(
    rsa_key: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    clock = FakeClock()
    verifier = verifier_for(clock, JWKS(url, clock=clock))
    token = sign(claims(clock, padding="x" * 9000), rsa_key, "RS256", "unknown")
    assert len(token) > 8192
    assert await refused(verifier, token) == "token too large"
    assert await refused(verifier, "x" * 100_000) == "token too large"
    assert app.fetches == 0
    small = JWTVerifier(keys=VerificationKey.from_secret(SECRET), audience=AUDIENCE, max_token_bytes=200)
    assert await refused(small, sign(claims(clock), SECRET, "HS256")) == "token too large"


# -- the verified-claims cache ---------------------------------------------------------------------------------
@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The ``kid`` of every key asked to check a signature."""
    checked: list[str | None] = []
    original = VerificationKey.verify

    def counting(self: VerificationKey, signing_input: bytes, signature: bytes) -> bool:
        checked.append(self.kid)
        return original(self, signing_input, signature)

    monkeypatch.setattr(VerificationKey, "verify", counting)
    return checked


@pytest.mark.anyio
async def test_a_repeated_token_is_served_from_the_cache_keyed_by_itself(
    rsa_key: rsa.RSAPrivateKey, signature_checks: list[str | None]
) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))
    token = sign(claims(clock), rsa_key, "RS256", "k")
    first = await verifier.verify(token)
    for _ in range(5):
        assert await verifier.verify(token) is first
        assert await verifier.verify(token.encode()) is first
    assert signature_checks == ["k"]
    cache = verifier._cache
    assert cache is not None
    assert list(cache) == [token.encode()]  # the exact token, as in Envoy's JWT cache
    # A cached token is the exact token: a different signature on the same claims is checked (and refused).
    header, body, _ = token.split(".")
    assert await refused(verifier, f"{header}.{body}.{b64(b'x' * 256)}") == "invalid signature"


@pytest.mark.anyio
async def test_a_long_token_is_cached_by_its_hash(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))
    token = sign(claims(clock, padding="x" * 3000), rsa_key, "RS256", "k")
    assert len(token) > RAW_KEY_BYTES
    first = await verifier.verify(token)
    assert verifier.cached(token) is first
    digest = hashlib.sha256(token.encode()).digest()
    assert list(verifier._cache or {}) == [("sha256", digest)]
    assert verifier.cached(digest) is None  # the digest itself is no token


@pytest.mark.anyio
async def test_cached_is_the_synchronous_hit_path(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))
    token = sign(claims(clock, exp=clock.time() + 100), rsa_key, "RS256", "k")
    assert verifier.cached(token) is None  # never verified: nothing to vouch for it
    principal = await verifier.verify(token)
    assert verifier.cached(token) is principal
    assert verifier.cached(token.encode()) is principal
    assert verifier.cached("x" * 10_000) is None
    clock.advance(160)
    assert verifier.cached(token) is None
    assert verifier_for(clock, VerificationKey.from_key(rsa_key), cache_size=0).cached(token) is None


@pytest.mark.anyio
async def test_a_cached_token_expires_on_time(
    rsa_key: rsa.RSAPrivateKey, signature_checks: list[str | None]
) -> None:
    clock = FakeClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))
    token = sign(claims(clock, exp=clock.time() + 100), rsa_key, "RS256", "k")
    await verifier.verify(token)
    clock.advance(159)  # exp + leeway - 1
    assert (await verifier.verify(token)).id == "alice"
    assert len(signature_checks) == 1
    clock.advance(1)
    assert await refused(verifier, token) == "token expired"
    assert verifier._cache == {}


class SettableClock(FakeClock):
    """A FakeClock whose wall time can be set (also backwards), to test what a hit re-checks."""

    def __init__(self) -> None:
        super().__init__()
        self.wall = super().time()

    def time(self) -> float:
        return self.wall


@pytest.mark.anyio
async def test_a_cache_hit_rechecks_nbf_against_the_clock(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = SettableClock()
    verifier = verifier_for(clock, VerificationKey.from_key(rsa_key, kid="k"))
    token = sign(claims(clock, nbf=clock.wall + 30), rsa_key, "RS256", "k")  # valid thanks to the leeway
    await verifier.verify(token)
    clock.wall -= 120  # the wall clock stepped back: the token is not valid yet
    assert await refused(verifier, token) == "token not yet valid"


@pytest.mark.anyio
async def test_cache_is_bounded_and_can_be_disabled(
    rsa_key: rsa.RSAPrivateKey, signature_checks: list[str | None]
) -> None:
    clock = FakeClock()
    key = VerificationKey.from_key(rsa_key, kid="k")
    verifier = verifier_for(clock, key, cache_size=3)
    tokens = [sign(claims(clock, jti=str(index)), rsa_key, "RS256", "k") for index in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert verifier._cache is not None
    assert len(verifier._cache) == 3
    clock.advance(400)  # every entry expired: the next insert clears them all
    fresh = sign(claims(clock), rsa_key, "RS256", "k")
    await verifier.verify(fresh)
    assert len(verifier._cache) == 1
    signature_checks.clear()
    uncached = verifier_for(clock, key, cache_size=0)
    for _ in range(3):
        await uncached.verify(fresh)
    assert len(signature_checks) == 3
    # Tokens without exp (allowed when not required) are never cached: nothing bounds their life.
    no_exp = verifier_for(clock, key, required_claims=())
    token = sign(claims(clock, exp=None), rsa_key, "RS256", "k")
    await no_exp.verify(token)
    assert no_exp._cache == {}


# -- JWKS: caching, refresh, rate limit, stale keys, weak keys ------------------------------------------------
@pytest.mark.anyio
async def test_jwks_with_two_keys_is_fetched_once_and_cached_for_its_ttl(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec", "alg": "ES256", "use": "sig"}
    app.document = {"keys": [rsa_jwk(rsa_key, "rsa", alg="RS256", use="sig"), ec_jwk]}
    clock = FakeClock()
    jwks = JWKS(url, clock=clock)
    verifier = verifier_for(clock, jwks, cache_size=0)
    for _ in range(3):
        assert (await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))).id == "alice"
        assert (await verifier.verify(sign(claims(clock), ec_key, "ES256", "ec"))).id == "alice"
    assert app.fetches == 1
    assert [(key.kid, key.alg) for key in jwks.keys.keys] == [("rsa", "RS256"), ("ec", "ES256")]
    clock.advance(599)
    await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))
    assert app.fetches == 1
    clock.advance(2)  # the 10 minute TTL is over
    await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))
    assert app.fetches == 2
    assert jwks.fetches == 2
    assert jwks.last_error is None


@pytest.mark.anyio
async def test_unknown_kid_flood_fetches_at_most_once_per_refresh_interval(
    rsa_key: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    app.document = {"keys": [rsa_jwk(rsa_key, "rsa")]}
    clock = FakeClock()
    verifier = verifier_for(clock, JWKS(url, clock=clock))
    await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))
    assert app.fetches == 1

    async def flood(count: int) -> None:
        async def one(index: int) -> None:
            token = sign(claims(clock), rsa_key, "RS256", f"made-up-{index}")
            assert await refused(verifier, token) == "no key for this token"

        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(one, index)

    await flood(50)  # within 30 s of the last fetch: refused without any request
    assert app.fetches == 1
    for expected in (2, 3, 4):
        clock.advance(30)
        await flood(50)  # one refresh per interval, shared by the whole flood
        assert app.fetches == expected
        clock.advance(15)
        await flood(50)
        assert app.fetches == expected


@pytest.mark.anyio
async def test_concurrent_unknown_kids_share_one_fetch(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    app.document = {"keys": [rsa_jwk(rsa_key, "old")]}
    clock = FakeClock()
    jwks = JWKS(url, clock=clock)
    verifier = verifier_for(clock, jwks)
    await verifier.verify(sign(claims(clock), rsa_key, "RS256", "old"))
    clock.advance(31)
    app.document = {"keys": [rsa_jwk(rsa_key, "old"), rsa_jwk(rsa_key2, "new")]}
    app.gate = threading.Event()  # the server holds the fetch until every request is waiting for it
    results: list[str] = []

    async def one() -> None:
        results.append((await verifier.verify(sign(claims(clock), rsa_key2, "RS256", "new"))).id)

    async def release(group: TaskGroup) -> None:
        await anyio.wait_all_tasks_blocked()
        assert app.gate is not None
        app.gate.set()

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(one)
        group.start_soon(release, group)
    assert results == ["alice"] * 20
    assert app.fetches == 2


@pytest.mark.anyio
async def test_a_failed_refresh_keeps_the_stale_keys(
    rsa_key: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    app.document = {"keys": [rsa_jwk(rsa_key, "rsa")]}
    clock = FakeClock()
    jwks = JWKS(url, clock=clock)
    verifier = verifier_for(clock, jwks, cache_size=0)
    await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))
    for failure in ("status", "garbage", "no usable key"):
        clock.advance(601)
        if failure == "status":
            app.status = 500
        elif failure == "garbage":
            app.status, app.document = 200, ["not", "a", "jwks"]
        else:
            app.document = {"keys": [{"kty": "RSA", "kid": "broken"}]}
        fetches = app.fetches
        assert (await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))).id == "alice"
        assert app.fetches == fetches + 1
        assert jwks.last_error is not None
        assert jwks.keys.by_kid.keys() == {"rsa"}
        clock.advance(29)  # the stale keys are trusted until the next attempt is allowed
        await verifier.verify(sign(claims(clock), rsa_key, "RS256", "rsa"))
        assert app.fetches == fetches + 1


@pytest.mark.anyio
async def test_no_keys_at_all_refuses_every_token(
    rsa_key: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    app.status = 503
    clock = FakeClock()
    verifier = verifier_for(clock, JWKS(url, clock=clock))
    assert await refused(verifier, sign(claims(clock), rsa_key, "RS256", "rsa")) == "no key for this token"
    assert await refused(verifier, sign(claims(clock), rsa_key, "RS256")) == "no key for this token"


@pytest.mark.anyio
async def test_weak_keys_in_a_jwks_are_skipped_and_their_tokens_refused(
    rsa_key: rsa.RSAPrivateKey,
    weak_rsa_key: rsa.RSAPrivateKey,
    jwks_app: tuple[JWKSApp, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, url = jwks_app
    p384 = ec.generate_private_key(ec.SECP384R1())
    short_secret = b"sixteen-byte-key"
    weak = [
        rsa_jwk(weak_rsa_key, "rsa-1024"),
        HMACAlgorithm.to_jwk(short_secret, as_dict=True) | {"kid": "short-hmac", "alg": "HS256"},
        rsa_jwk(rsa_key, "for-encryption", use="enc"),
        rsa_jwk(rsa_key, "no-verify-op", key_ops=["encrypt"]),
        ECAlgorithm.to_jwk(p384.public_key(), as_dict=True) | {"kid": "wrong-curve", "alg": "ES256"},
        {"kty": "RSA", "kid": "alg-none", "alg": "none", "n": "AQAB", "e": "AQAB"},
        "not an object",
    ]
    app.document = {"keys": [*weak, rsa_jwk(rsa_key, "good")]}
    clock = FakeClock()
    jwks = JWKS(url, clock=clock)
    verifier = verifier_for(clock, jwks)
    with caplog.at_level(logging.WARNING, logger="connectivity.security"):
        assert (await verifier.verify(sign(claims(clock), rsa_key, "RS256", "good"))).id == "alice"
    assert [key.kid for key in jwks.keys.keys] == ["good"]
    assert {skip.kid for skip in jwks.skipped} == {
        "rsa-1024",
        "short-hmac",
        "for-encryption",
        "no-verify-op",
        "wrong-curve",
        "alg-none",
        None,
    }
    assert all(isinstance(skip, SkippedKey) and skip.reason for skip in jwks.skipped)
    logged = caplog.text
    assert "rsa-1024" in logged
    assert "short-hmac" in logged
    assert weak[0]["n"][:40] not in logged
    assert weak[1]["k"] not in logged
    assert "sixteen" not in logged
    for token in (
        sign(claims(clock), weak_rsa_key, "RS256", "rsa-1024"),
        sign(claims(clock), short_secret, "HS256", "short-hmac"),
        sign(claims(clock), rsa_key, "RS256", "for-encryption"),
        sign(claims(clock), rsa_key, "RS256", "no-verify-op"),
        sign(claims(clock), p384, "ES384", "wrong-curve"),
    ):
        assert await refused(verifier, token) == "no key for this token"
    assert app.fetches == 1  # the refused kids did not buy a refetch within the interval


@pytest.mark.anyio
async def test_rotation_retires_cached_verifications_made_with_a_removed_key(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]
) -> None:
    app, url = jwks_app
    app.document = {"keys": [rsa_jwk(rsa_key, "old")]}
    clock = FakeClock()
    jwks = JWKS(url, clock=clock)
    verifier = verifier_for(clock, jwks)
    old_token = sign(claims(clock, exp=clock.time() + 3600), rsa_key, "RS256", "old")
    await verifier.verify(old_token)
    app.document = {"keys": [rsa_jwk(rsa_key2, "new")]}  # "old" is revoked
    clock.advance(31)
    assert (await verifier.verify(old_token)).id == "alice"  # still fresh: nothing told us yet
    await verifier.verify(sign(claims(clock), rsa_key2, "RS256", "new"))  # unknown kid: refresh
    assert app.fetches == 2
    assert jwks.generation == 1
    assert await refused(verifier, old_token) == "no key for this token"


@pytest.mark.anyio
async def test_cached_verifications_follow_the_key_set_ttl(
    rsa_key: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str], signature_checks: list[str | None]
) -> None:
    app, url = jwks_app
    app.document = {"keys": [rsa_jwk(rsa_key, "k")]}
    clock = FakeClock()
    jwks = JWKS(url, clock=clock, cache_ttl=60)
    verifier = verifier_for(clock, jwks)
    token = sign(claims(clock, exp=clock.time() + 3600), rsa_key, "RS256", "k")
    await verifier.verify(token)
    await verifier.verify(token)
    assert (len(signature_checks), app.fetches) == (1, 1)
    clock.advance(61)  # key set expired: the hit is not trusted; the set is refreshed, unchanged keys reused
    await verifier.verify(token)
    assert (len(signature_checks), app.fetches, jwks.generation) == (2, 2, 0)
    await verifier.verify(token)
    assert len(signature_checks) == 2


@pytest.mark.anyio
async def test_an_injected_client_is_used(rsa_key: rsa.RSAPrivateKey, jwks_app: tuple[JWKSApp, str]) -> None:
    app, url = jwks_app
    app.document = {"keys": [rsa_jwk(rsa_key, "k")]}
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(str(request.url))

    clock = FakeClock()
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        jwks = JWKS(url, client=client, clock=clock)
        assert await jwks.refresh() is True
        assert await jwks.refresh() is False  # rate limited
    assert seen == [url]
    assert app.fetches == 1
    assert [key.kid for key in jwks.keys.keys] == ["k"]


# -- configuration ---------------------------------------------------------------------------------------------
def test_configuration_is_validated(rsa_key: rsa.RSAPrivateKey) -> None:
    key = VerificationKey.from_key(rsa_key)
    for build, field in (
        (JWTVerifier, "JWTVerifier.keys"),
        (lambda: JWTVerifier(keys="-----BEGIN PUBLIC KEY-----"), "JWTVerifier.keys"),  # type: ignore[arg-type]
        (lambda: JWTVerifier(keys=[key, "x"]), "JWTVerifier.keys"),  # type: ignore[list-item]
        (lambda: JWTVerifier(keys=key, leeway=-1), "JWTVerifier.leeway"),
        (lambda: JWTVerifier(keys=key, issuer=""), "JWTVerifier.issuer"),
        (lambda: JWTVerifier(keys=key, audience=[]), "JWTVerifier.audience"),
        (lambda: JWTVerifier(keys=key, cache_size=-1), "JWTVerifier.cache_size"),
        (lambda: JWTVerifier(keys=key, groups_claim=""), "JWTVerifier.groups_claim"),
        (lambda: JWTVerifier(keys=key, max_token_bytes=True), "JWTVerifier.max_token_bytes"),
        (lambda: JWKS("ftp://issuer/jwks"), "JWKS.url"),
        (lambda: JWKS("https://issuer/jwks", cache_ttl=0), "JWKS.cache_ttl"),
        (lambda: JWKS("https://issuer/jwks", min_refresh_interval=-1), "JWKS.min_refresh_interval"),
        (lambda: JWKS("https://issuer/jwks", client=object()), "JWKS.client"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError) as caught:
            build()
        assert caught.value.field == field
    verifier = JWTVerifier(jwks_url="https://issuer.example/jwks", audience=AUDIENCE)
    assert [jwks.url for jwks in verifier.key_sets] == ["https://issuer.example/jwks"]
    assert "JWKS('https://issuer.example/jwks'" in repr(verifier)
