"""JWTAuthMiddleware in front of real uvicorn apps, with keys from a real JWKS server on loopback: Istio semantics
(invalid token: 401 ``invalid_token``; no token: anonymous unless required), the scope keys it sets, where tokens
are read from, and the attacks that must end in a 401, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectivity.errors import ConfigError
from connectivity.middleware.jwt_auth import JWTAuthMiddleware
from connectivity.security.identity import CLAIMS_KEY, PRINCIPAL_KEY, Principal, principal_of
from connectivity.security.jwks import JWKS, VerificationKey
from connectivity.security.jwt import JWTVerifier
from connectivity.testing import FakeClock
from connectivity.testing.server import serve

ISSUER = "https://issuer.example"
AUDIENCE = "orders"

Serve = Callable[[Any], Any]


# -- keys, tokens, and the JWKS server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sign(claims: dict[str, Any], key: Any, alg: str, kid: str | None) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = clock.time()
    values = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


class JWKSApp:
    """Serves ``document``; counts fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.fetches += 1
        body = json.dumps(self.document).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": body})


class Keys:
    """The issuer's keys: a JWKS with two good keys (RSA and EC) and three weak ones."""

    def __init__(self, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, weak: rsa.RSAPrivateKey):
        self.rsa, self.ec, self.weak = rsa_key, ec_key, weak
        self.short_secret = b"only-16-bytes!!!"
        good_rsa = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rsa", "use": "sig"}
        good_ec = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec", "alg": "ES256"}
        self.app = JWKSApp(
            {
                "keys": [
                    good_rsa,
                    good_ec,
                    RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True) | {"kid": "rsa-1024"},
                    HMACAlgorithm.to_jwk(self.short_secret, as_dict=True) | {"kid": "short-hmac", "alg": "HS256"},
                    good_rsa | {"kid": "for-encryption", "use": "enc"},
                ]
            }
        )


@pytest.fixture
def keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, weak_rsa_key: rsa.RSAPrivateKey
) -> Iterator[tuple[Keys, str]]:
    issuer = Keys(rsa_key, ec_key, weak_rsa_key)
    with serve(issuer.app, name="jwks") as running:
        yield issuer, f"{running.url}/jwks.json"


async def _whoami(request: Request) -> JSONResponse:
    principal = principal_of(request)
    claims = request.scope.get(CLAIMS_KEY)
    return JSONResponse(
        {
            "principal": None
            if principal is None
            else {
                "id": principal.id,
                "method": principal.method,
                "scopes": sorted(principal.scopes),
                "groups": sorted(principal.groups),
            },
            "claims": None if claims is None else dict(claims),
            "same_claims": principal is not None and principal.claims is claims,
        }
    )


def whoami_app() -> Starlette:
    return Starlette(routes=[Route("/", _whoami), Route("/health", _whoami)])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def protected(server: Serve, keys: tuple[Keys, str], clock: FakeClock) -> Callable[..., tuple[str, JWTVerifier]]:
    """Serve the whoami app behind JWTAuthMiddleware (keys from the JWKS server) with the given options."""

    def start(**options: Any) -> tuple[str, JWTVerifier]:
        _, url = keys
        verifier = JWTVerifier(keys=JWKS(url, clock=clock), issuer=ISSUER, audience=AUDIENCE, clock=clock)
        served = server(JWTAuthMiddleware(whoami_app(), verifier=verifier, **options))
        return served.url, verifier

    return start


async def get(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_invalid_token(response: httpx.Response, token: str, detail: str | None = None) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    problem = response.json()
    assert (problem["type"], problem["title"], problem["status"]) == ("about:blank", "Unauthorized", 401)
    if detail is not None:
        assert problem["detail"] == detail
    for segment in token.split("."):
        if len(segment) > 8:
            assert segment not in response.text


# -- accepted, anonymous, required ------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_valid_token_from_a_jwks_with_two_keys_sets_principal_and_claims(
    protected: Callable[..., tuple[str, JWTVerifier]], keys: tuple[Keys, str], clock: FakeClock
) -> None:
    issuer, _ = keys
    url, _ = protected()
    token_claims = claims(clock, scope="orders:read orders:write", groups=["ops", "dev"])
    for key, alg, kid in ((issuer.rsa, "RS256", "rsa"), (issuer.ec, "ES256", "ec")):
        response = await get(url, headers=bearer(sign(token_claims, key, alg, kid)))
        assert response.status_code == 200
        body = response.json()
        assert body["principal"] == {
            "id": "alice",
            "method": "jwt",
            "scopes": ["orders:read", "orders:write"],
            "groups": ["dev", "ops"],
        }
        assert body["claims"]["sub"] == "alice"
        assert body["claims"]["aud"] == AUDIENCE
        assert body["same_claims"] is True
    assert issuer.app.fetches == 1


@pytest.mark.anyio
async def test_no_token_is_anonymous_unless_required(protected: Callable[..., tuple[str, JWTVerifier]]) -> None:
    open_url, _ = protected()
    for headers in ({}, {"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}):
        response = await get(open_url, headers=headers)
        assert response.status_code == 200
        assert response.json()["principal"] is None
        assert response.json()["claims"] is None
    required_url, _ = protected(required=True)
    response = await get(required_url)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "bearer token required"
    realm_url, _ = protected(required=True, realm="orders")
    response = await get(realm_url)
    assert response.headers["www-authenticate"] == 'Bearer realm="orders"'
    response = await get(realm_url, headers=bearer("x.y.z"))
    assert response.headers["www-authenticate"] == 'Bearer realm="orders", error="invalid_token"'


@pytest.mark.anyio
async def test_excluded_paths_skip_authentication(
    protected: Callable[..., tuple[str, JWTVerifier]], keys: tuple[Keys, str]
) -> None:
    url, _ = protected(required=True, exclude_paths=["/health"])
    assert (await get(f"{url}/health")).status_code == 200
    response = await get(f"{url}/health", headers=bearer("not-even-a-jwt"))
    assert response.status_code == 200
    assert response.json()["principal"] is None
    assert (await get(url)).status_code == 401
    assert keys[0].app.fetches == 0


# -- refused: the attacks of the issue --------------------------------------------------------------------------
@pytest.mark.anyio
async def test_attacks_and_invalid_tokens_get_401_invalid_token(
    protected: Callable[..., tuple[str, JWTVerifier]], keys: tuple[Keys, str], clock: FakeClock
) -> None:
    issuer, _ = keys
    url, _ = protected()
    now = clock.time()
    public_pem = issuer.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = b64(json.dumps(claims(clock)).encode())
    none_header = b64(json.dumps({"alg": "none", "kid": "rsa"}).encode())
    confused_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa'}).encode())}.{body}"
    confused = f"{confused_input}.{b64(hmac.new(public_pem, confused_input.encode(), hashlib.sha256).digest())}"
    cases = {
        "alg none": (f"{none_header}.{body}.", "malformed token"),
        "alg none, any signature": (f"{none_header}.{body}.{b64(b'sig')}", "unsupported algorithm"),
        "HS256 with the RSA public key": (confused, "algorithm does not match the key"),
        "expired": (sign(claims(clock, exp=now - 120), issuer.rsa, "RS256", "rsa"), "token expired"),
        "not yet valid": (sign(claims(clock, nbf=now + 120), issuer.rsa, "RS256", "rsa"), "token not yet valid"),
        "wrong aud": (sign(claims(clock, aud="payments"), issuer.rsa, "RS256", "rsa"), "invalid audience"),
        "wrong iss": (sign(claims(clock, iss="https://evil"), issuer.rsa, "RS256", "rsa"), "invalid issuer"),
        "malformed segments": ("eyJhbGciOiJSUzI1NiJ9.!!!.abc", "malformed token"),
        "two segments": ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0", "malformed token"),
        "empty bearer": ("", "malformed token"),  # sent as "Authorization: Bearer"
        "oversized": (sign(claims(clock, pad="x" * 9000), issuer.rsa, "RS256", "rsa"), "token too large"),
        "RSA 1024 from the JWKS": (sign(claims(clock), issuer.weak, "RS256", "rsa-1024"), "no key for this token"),
        "short HMAC oct from the JWKS": (
            sign(claims(clock), issuer.short_secret, "HS256", "short-hmac"),
            "no key for this token",
        ),
        "use=enc from the JWKS": (
            sign(claims(clock), issuer.rsa, "RS256", "for-encryption"),
            "no key for this token",
        ),
        "forged signature": (
            sign(claims(clock), rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "rsa"),
            "invalid signature",
        ),
    }
    for name, (token, detail) in cases.items():
        response = await get(url, headers=bearer(token) if token else {"authorization": "Bearer"})
        assert response.status_code == 401, name
        assert_invalid_token(response, token, detail)
    assert issuer.app.fetches == 1  # one fetch for the whole run; refused kids did not buy another


@pytest.mark.anyio
async def test_unknown_kid_flood_fetches_the_jwks_at_most_once_per_interval(
    protected: Callable[..., tuple[str, JWTVerifier]], keys: tuple[Keys, str], clock: FakeClock
) -> None:
    issuer, _ = keys
    url, _ = protected()
    assert (await get(url, headers=bearer(sign(claims(clock), issuer.rsa, "RS256", "rsa")))).status_code == 200
    assert issuer.app.fetches == 1

    async def flood(count: int) -> None:
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=10) as client:

            async def one(index: int) -> None:
                token = sign(claims(clock), issuer.rsa, "RS256", f"made-up-{index}")
                statuses.append((await client.get(url, headers=bearer(token))).status_code)

            async with anyio.create_task_group() as group:
                for index in range(count):
                    group.start_soon(one, index)
        assert statuses == [401] * count

    await flood(40)
    assert issuer.app.fetches == 1
    clock.advance(30)
    await flood(40)
    assert issuer.app.fetches == 2
    clock.advance(29)
    await flood(40)
    assert issuer.app.fetches == 2


# -- where tokens come from -------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_token_locations(
    protected: Callable[..., tuple[str, JWTVerifier]], keys: tuple[Keys, str], clock: FakeClock
) -> None:
    issuer, _ = keys
    token = sign(claims(clock), issuer.rsa, "RS256", "rsa")
    other = sign(claims(clock, sub="bob"), issuer.rsa, "RS256", "rsa")
    url, _ = protected(header="X-JWT-Assertion", cookie="session", query_param="access_token")
    for kwargs in (
        {"headers": {"authorization": f"bearer {token}"}},
        {"headers": {"x-jwt-assertion": token}},
        {"headers": {"cookie": f"theme=dark; session={token}"}},
        {"params": {"access_token": token}},
        {"headers": {**bearer(token), "x-jwt-assertion": token}},  # the same token twice is one token
    ):
        response = await get(url, **kwargs)
        assert response.status_code == 200, kwargs
        assert response.json()["principal"]["id"] == "alice"
    response = await get(url, headers={**bearer(token), "x-jwt-assertion": other})
    assert response.status_code == 400
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_request"'
    assert response.json()["detail"] == "more than one bearer token"
    plain_url, _ = protected()
    response = await get(plain_url, params={"access_token": token}, headers={"cookie": f"session={token}"})
    assert response.status_code == 200
    assert response.json()["principal"] is None  # query and cookie are read only when configured


# -- the rest of the ASGI surface --------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_websocket_handshake_is_authenticated(
    http_scope: Callable[..., dict[str, Any]],
    asgi_call: Callable[[Any, dict[str, Any]], Awaitable[list[dict[str, Any]]]],
) -> None:
    reached: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    secret = b"0123456789abcdef0123456789abcdef"
    middleware = JWTAuthMiddleware(
        app, verifier=JWTVerifier(keys=VerificationKey.from_secret(secret), audience=AUDIENCE)
    )
    sent = await asgi_call(middleware, http_scope(type="websocket", headers=[(b"authorization", b"Bearer x.y.z")]))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "malformed token"}]
    assert reached == []
    token = sign(claims(FakeClock(epoch=time.time())), secret, "HS256", None)
    await asgi_call(
        middleware, http_scope(type="websocket", headers=[(b"authorization", f"Bearer {token}".encode())])
    )
    await asgi_call(middleware, {"type": "lifespan"})
    assert reached == ["websocket", "lifespan"]


@pytest.mark.anyio
async def test_principal_lands_in_the_scope_of_the_inner_app(
    http_scope: Callable[..., dict[str, Any]],
    asgi_call: Callable[[Any, dict[str, Any]], Awaitable[list[dict[str, Any]]]],
    clock: FakeClock,
) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    secret = b"0123456789abcdef0123456789abcdef"
    verifier = JWTVerifier(keys=VerificationKey.from_secret(secret), audience=AUDIENCE, clock=clock)
    token = sign(claims(clock, scp=["a", "b"]), secret, "HS256", None)
    await asgi_call(
        JWTAuthMiddleware(app, verifier=verifier),
        http_scope(headers=[(b"authorization", f"Bearer {token}".encode())]),
    )
    principal = seen[PRINCIPAL_KEY]
    assert isinstance(principal, Principal)
    assert (principal.id, principal.scopes) == ("alice", frozenset({"a", "b"}))
    assert seen[CLAIMS_KEY]["sub"] == "alice"


@pytest.mark.anyio
async def test_the_bearer_scheme_is_matched_case_insensitively(
    http_scope: Callable[..., dict[str, Any]],
    asgi_call: Callable[[Any, dict[str, Any]], Awaitable[list[dict[str, Any]]]],
    clock: FakeClock,
) -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get(PRINCIPAL_KEY))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    secret = b"0123456789abcdef0123456789abcdef"
    verifier = JWTVerifier(keys=VerificationKey.from_secret(secret), audience=AUDIENCE, clock=clock)
    middleware = JWTAuthMiddleware(app, verifier=verifier)
    token = sign(claims(clock), secret, "HS256", None).encode()
    other = sign(claims(clock, sub="bob"), secret, "HS256", None).encode()

    async def status(*values: bytes) -> int:
        sent = await asgi_call(middleware, http_scope(headers=[(b"authorization", value) for value in values]))
        return int(sent[0]["status"])

    for scheme in (b"Bearer ", b"bearer ", b"BEARER ", b"Bearer   "):
        seen.clear()
        assert await status(scheme + token) == 204, scheme
        assert [principal.id for principal in seen] == ["alice"]
    for value in (b"Bearer" + token, b"Basic YWxhZGRpbjpvcGVuc2VzYW1l", b"Bear " + token):
        seen.clear()
        assert await status(value) == 204, value  # not a bearer token: anonymous
        assert seen == [None]
    assert await status(b"Bearer ") == 401  # the scheme without a token
    assert await status(b"Bearer " + token, b"bEaReR " + token) == 204  # the same token twice is one token
    assert await status(b"Bearer " + token, b"bearer " + other) == 400


class _BrokenVerifier(JWTVerifier):
    async def verify(self, token: str | bytes) -> Principal:
        raise RuntimeError("a bug")


@pytest.mark.anyio
async def test_an_unexpected_verifier_failure_is_a_401_not_a_500(server: Serve) -> None:
    verifier = _BrokenVerifier(keys=VerificationKey.from_secret(b"k" * 32))
    served = server(JWTAuthMiddleware(whoami_app(), verifier=verifier))
    response = await get(served.url, headers=bearer("a.b.c"))
    assert_invalid_token(response, "a.b.c", "token could not be verified")


@pytest.mark.anyio
async def test_add_middleware_with_verifier_options(server: Serve, keys: tuple[Keys, str]) -> None:
    issuer, jwks_url = keys
    app = whoami_app()
    app.add_middleware(JWTAuthMiddleware, jwks_url=jwks_url, issuer=ISSUER, audience=AUDIENCE, required=True)
    served = server(app)
    token = sign(claims(FakeClock(epoch=time.time())), issuer.rsa, "RS256", "rsa")
    assert (await get(served.url, headers=bearer(token))).json()["principal"]["id"] == "alice"
    assert (await get(served.url)).status_code == 401


def test_configuration_is_validated() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    verifier = JWTVerifier(keys=VerificationKey.from_secret(b"k" * 32))
    for options, field in (
        ({}, "JWTVerifier.keys"),
        ({"verifier": verifier, "issuer": ISSUER}, "JWTAuthMiddleware.verifier"),
        ({"verifier": "nope"}, "JWTAuthMiddleware.verifier"),
        ({"verifier": verifier, "required": "yes"}, "JWTAuthMiddleware.required"),
        ({"verifier": verifier, "header": "bad header"}, "JWTAuthMiddleware.header"),
        ({"verifier": verifier, "header": "Authorization"}, "JWTAuthMiddleware.header"),
        ({"verifier": verifier, "cookie": "a;b"}, "JWTAuthMiddleware.cookie"),
        ({"verifier": verifier, "query_param": ""}, "JWTAuthMiddleware.query_param"),
        ({"verifier": verifier, "exclude_paths": "/health"}, "JWTAuthMiddleware.exclude_paths"),
        ({"verifier": verifier, "exclude_paths": ["health"]}, "JWTAuthMiddleware.exclude_paths"),
        ({"verifier": verifier, "realm": 'a"b'}, "JWTAuthMiddleware.realm"),
    ):
        with pytest.raises(ConfigError) as caught:
            JWTAuthMiddleware(app, **options)
        assert caught.value.field == field
    with pytest.raises(TypeError):
        JWTAuthMiddleware(None, verifier=verifier)  # type: ignore[arg-type]
