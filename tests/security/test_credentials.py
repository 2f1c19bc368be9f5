"""Credential providers as pure objects: a fake ``send`` function, a FakeClock, no network."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import jwt
import pytest
from anyio import wait_all_tasks_blocked
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from connectivity.errors import ConfigError, CredentialError, DeadlineExceededError, KeyPolicyError
from connectivity.security import service_jwt as module
from connectivity.security.credentials import APIKey, BearerToken
from connectivity.security.oauth2 import ClientCredentials
from connectivity.security.service_jwt import ServiceJWT
from connectivity.telemetry import events
from connectivity.telemetry.events import TOKEN_FAILED, TOKEN_FETCHED
from connectivity.testing import FakeClock

SECRET = "s3cr3t+/client=secret"
URL = "https://idp.example/oauth/token"
REQUEST = httpx.Request("GET", "https://orders.example/items", extensions={"timeout": {"connect": 1.5}})


def answer(status: int = 200, body: Any = None, **fields: Any) -> httpx.Response:
    """A token endpoint response, as a transport returns it (an unread stream)."""
    if body is None:
        body = {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600, **fields}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, stream=httpx.ByteStream(content))


class Endpoint:
    """A scripted token endpoint: ``send`` for the providers, recording the requests it got."""

    def __init__(self, *responses: Callable[[], httpx.Response] | Exception) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step: Any = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if step is not None:
            return step()
        self.issued += 1
        return answer(access_token=f"tok-{self.issued}")

    async def asend(self, request: httpx.Request) -> httpx.Response:
        return self(request)


def oauth(clock: FakeClock, **options: Any) -> ClientCredentials:
    return ClientCredentials(URL, "orders-api", SECRET, clock=clock, **options)


def no_secret(text: str) -> None:
    for secret in (SECRET, "tok-", "s3cr3t"):
        assert secret not in text, text


# -- static credentials -------------------------------------------------------------------------------------------


def test_bearer_token_and_api_key_give_their_header() -> None:
    assert BearerToken("abc.def").value(REQUEST, Endpoint()) == "Bearer abc.def"
    assert BearerToken("abc").header == "authorization"
    key = APIKey("k-123", header="ApiKey")
    assert (key.header, key.value(REQUEST, Endpoint())) == ("apikey", "k-123")
    assert APIKey("k-123").header == "x-api-key"
    assert APIKey("k-123", header="authorization", scheme="Token").value(REQUEST, Endpoint()) == "Token k-123"
    assert anyio.run(BearerToken("abc").avalue, REQUEST, Endpoint().asend) == "Bearer abc"


@pytest.mark.parametrize("bad", ["", "two words", "line\r\nx-injected: 1", "caf\u00e9", 42])
def test_a_static_credential_that_is_no_header_value_is_refused_without_being_shown(bad: Any) -> None:
    for make in (BearerToken, APIKey):
        with pytest.raises(ConfigError) as caught:
            make(bad)
        assert not isinstance(bad, str) or not bad or bad not in str(caught.value)
        assert caught.value.field.endswith((".token", ".key"))


def test_api_key_header_and_scheme_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"APIKey.header"):
        APIKey("k", header="x api key")
    with pytest.raises(ConfigError, match=r"APIKey.scheme"):
        APIKey("k", scheme="To ken")


def test_static_reprs_hide_the_secret() -> None:
    for credentials in (BearerToken(SECRET.replace("+", "")), APIKey("s3cr3t-key", header="apikey")):
        assert "s3cr3t" not in repr(credentials)
        assert "s3cr3t" not in str(credentials.describe())
    assert repr(APIKey("s3cr3t-key", header="apikey")) == "APIKey(header='apikey')"


# -- OAuth2 client credentials: the request ---------------------------------------------------------------------


def test_token_request_uses_client_secret_basic_by_default() -> None:
    credentials = oauth(
        FakeClock(), scopes=["orders.read", "orders.write"], audience="https://api", resource="https://orders/"
    )
    request = credentials.token_request(REQUEST)
    assert (request.method, str(request.url)) == ("POST", URL)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    # RFC 6749 §2.3.1: id and secret form-encoded, then Basic.
    assert (scheme, base64.b64decode(encoded).decode()) == ("Basic", "orders-api:s3cr3t%2B%2Fclient%3Dsecret")
    form = parse_qs(request.content.decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "scope": ["orders.read orders.write"],
        "audience": ["https://api"],
        "resource": ["https://orders/"],
    }
    assert request.extensions["timeout"] == {"connect": 1.5}  # the calling request's timeouts


def test_token_request_with_client_secret_post() -> None:
    request = oauth(FakeClock(), auth_method="client_secret_post").token_request()
    assert "authorization" not in request.headers
    form = parse_qs(request.content.decode())
    assert form["client_id"] == ["orders-api"]
    assert form["client_secret"] == [SECRET]
    assert "scope" not in form


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"token_url": "http://idp.example/token"}, "token_url"),
        ({"token_url": "https://user:pw@idp.example/token"}, "token_url"),
        ({"token_url": "/token"}, "token_url"),
        ({"token_url": "ftp://idp.example/token"}, "token_url"),
        ({"client_id": ""}, "client_id"),
        ({"client_secret": ""}, "client_secret"),
        ({"auth_method": "private_key_jwt"}, "auth_method"),
        ({"scopes": "orders.read"}, "scopes"),
        ({"scopes": ["a b"]}, "scopes"),
        ({"resource": "orders"}, "resource"),
        ({"audience": ""}, "audience"),
        ({"refresh_before": -1}, "refresh_before"),
        ({"refresh_ratio": 2}, "refresh_ratio"),
        ({"retry_interval": float("nan")}, "retry_interval"),
        ({"default_expires_in": 0}, "default_expires_in"),
        ({"max_response_bytes": 10}, "max_response_bytes"),
    ],
)
def test_client_credentials_options_are_validated(options: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"token_url": URL, "client_id": "orders-api", "client_secret": SECRET, **options}
    with pytest.raises(ConfigError) as caught:
        ClientCredentials(**arguments)
    assert caught.value.field == f"ClientCredentials.{field}"
    assert "pw@" not in str(caught.value)
    no_secret(str(caught.value))


def test_plain_http_is_allowed_on_loopback_or_when_asked() -> None:
    ClientCredentials("http://127.0.0.1:8080/token", "id", SECRET)
    ClientCredentials("http://localhost/token", "id", SECRET)
    ClientCredentials("http://idp.internal/token", "id", SECRET, allow_http=True)


# -- OAuth2 client credentials: responses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (lambda: answer(500, b"oops"), r"idp.example/oauth/token answered 500$"),
        (
            lambda: answer(401, {"error": "invalid_client", "error_description": SECRET}),
            r"answered 401 \(invalid_client\)",
        ),
        (lambda: answer(400, {"error": "<script>"}), r"answered 400$"),
        (lambda: answer(200, b"<html>tok-1</html>"), "not JSON"),
        (lambda: answer(200, [1, 2]), "not a JSON object"),
        (lambda: answer(200, b"[" * 60_000), "not JSON"),
        (lambda: answer(200, {"token_type": "Bearer"}), "without an access_token"),
        (lambda: answer(200, {"access_token": ""}), "without an access_token"),
        (lambda: answer(access_token="tok-1\r\nx-evil: 1"), "unfit for a header"),
        (lambda: answer(token_type="mac"), "token_type 'mac', not Bearer"),
        (lambda: answer(token_type="N_A tok-1"), r"token_type \(unsupported\)"),
        (lambda: answer(expires_in=-5), "invalid expires_in"),
        (lambda: answer(expires_in=0), "invalid expires_in"),
        (lambda: answer(expires_in="soon"), "invalid expires_in"),
        (lambda: answer(expires_in=True), "invalid expires_in"),
        (lambda: answer(200, b'{"access_token": "tok-1", "expires_in": NaN}'), "invalid expires_in"),
        (lambda: answer(200, b'{"access_token": "tok-1", "x": "' + b"a" * 70_000 + b'"}'), "larger than 65536"),
    ],
)
def test_bad_token_responses_are_credential_errors_naming_endpoint_and_status(
    response: Callable[[], httpx.Response], message: str
) -> None:
    credentials = oauth(FakeClock())
    with pytest.raises(CredentialError, match=message) as caught:
        credentials.value(REQUEST, Endpoint(response))
    text = str(caught.value)
    assert text.startswith("OAuth2 token endpoint https://idp.example/oauth/token ")
    no_secret(text)
    assert caught.value.__cause__ is None  # no chained decoder error quoting the body
    assert caught.value.__suppress_context__


def test_lenient_but_valid_answers_are_accepted() -> None:
    clock = FakeClock()
    credentials = oauth(clock, default_expires_in=120)
    endpoint = Endpoint(lambda: answer(200, {"access_token": "tok-a"}))  # no token_type, no expires_in
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-a"
    assert credentials.describe()["expires_in_s"] == 120
    clock.advance(200)
    endpoint = Endpoint(lambda: answer(token_type="bearer", expires_in="3599", access_token="tok-b"))
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-b"
    assert credentials.describe()["expires_in_s"] == 3599


def test_transport_errors_become_credential_errors_chaining_the_cause() -> None:
    credentials = oauth(FakeClock())
    with pytest.raises(CredentialError, match=r"token endpoint .* failed: ConnectError: refused") as caught:
        credentials.value(REQUEST, Endpoint(httpx.ConnectError("refused")))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert isinstance(caught.value, httpx.TransportError)


def test_the_callers_deadline_is_not_the_endpoints_failure() -> None:
    credentials = oauth(FakeClock())
    endpoint = Endpoint(DeadlineExceededError("deadline"))
    with pytest.raises(DeadlineExceededError):
        credentials.value(REQUEST, endpoint)
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-1"  # not remembered as a failure


# -- OAuth2 client credentials: the token's life ------------------------------------------------------------------


@pytest.mark.parametrize(("lifetime", "refresh_at"), [(3600, 3240), (100, 70), (20, 10)])
def test_refresh_time_is_the_larger_skew_capped_at_half_the_lifetime(lifetime: int, refresh_at: int) -> None:
    clock = FakeClock()
    credentials = oauth(clock)
    endpoint = Endpoint(*[lambda: answer(expires_in=lifetime)] * 2)
    credentials.value(REQUEST, endpoint)
    clock.advance(refresh_at - 0.001)
    credentials.value(REQUEST, endpoint)
    assert len(endpoint.requests) == 1
    clock.advance(0.001)
    credentials.value(REQUEST, endpoint)
    assert len(endpoint.requests) == 2


def test_token_is_cached_then_refetched_after_expiry() -> None:
    clock = FakeClock()
    credentials = oauth(clock)
    endpoint = Endpoint()
    assert [credentials.value(REQUEST, endpoint) for _ in range(3)] == ["Bearer tok-1"] * 3
    assert credentials.describe()["token"] == "fresh"
    clock.advance(3600)
    assert credentials.describe()["token"] == "expired"
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-2"
    assert len(endpoint.requests) == 2


def test_a_failed_refresh_ahead_keeps_the_valid_token_and_is_not_retried_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    credentials = oauth(clock, retry_interval=5)
    endpoint = Endpoint(answer, lambda: answer(503, b""), lambda: answer(access_token="tok-2"))
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-1"
    clock.advance(3300)  # refreshing: still valid for 300 s
    with caplog.at_level(logging.WARNING, logger="connectivity.security"):
        assert credentials.value(REQUEST, endpoint) == "Bearer tok-1"
    assert "answered 503; using the current token" in caplog.text
    no_secret(caplog.text)
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-1"
    assert len(endpoint.requests) == 2  # the failure is remembered for retry_interval
    clock.advance(5)
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-2"


def test_a_failed_fetch_is_remembered_for_retry_interval() -> None:
    clock = FakeClock()
    credentials = oauth(clock)  # retry_interval=2.0, Envoy's default
    endpoint = Endpoint(lambda: answer(500, b""))
    with pytest.raises(CredentialError, match=r"answered 500$"):
        credentials.value(REQUEST, endpoint)
    clock.advance(1.5)
    with pytest.raises(CredentialError, match=r"answered 500; not retried for 0.5s"):
        credentials.value(REQUEST, endpoint)
    assert len(endpoint.requests) == 1
    assert credentials.describe()["failing"] is True
    clock.advance(0.5)
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-1"
    assert len(endpoint.requests) == 2


def test_retry_interval_zero_retries_at_once() -> None:
    credentials = oauth(FakeClock(), retry_interval=0)
    endpoint = Endpoint(lambda: answer(500, b""))
    with pytest.raises(CredentialError):
        credentials.value(REQUEST, endpoint)
    assert credentials.value(REQUEST, endpoint) == "Bearer tok-1"


def test_invalidate_drops_only_the_current_token() -> None:
    credentials = oauth(FakeClock())
    endpoint = Endpoint()
    first = credentials.value(REQUEST, endpoint)
    assert credentials.invalidate(first) is True
    second = credentials.value(REQUEST, endpoint)
    assert second == "Bearer tok-2"
    credentials.invalidate(first)  # a late 401 for the old token: the new one stays
    assert credentials.value(REQUEST, endpoint) == second
    assert len(endpoint.requests) == 2


def test_events_say_what_happened_without_secrets() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = events.subscribe(lambda name, attributes: seen.append((name, dict(attributes))))
    try:
        clock = FakeClock()
        credentials = oauth(clock, retry_interval=0)
        endpoint = Endpoint(lambda: answer(500, b""), lambda: answer(expires_in=60))
        with pytest.raises(CredentialError):
            credentials.value(REQUEST, endpoint)
        credentials.value(REQUEST, endpoint)
        clock.advance(60)
        credentials.value(REQUEST, endpoint)
    finally:
        unsubscribe()
    assert seen == [
        (TOKEN_FAILED, {"connectivity.reason": "status 500"}),
        (TOKEN_FETCHED, {"connectivity.reason": "initial", "connectivity.delay": 60.0}),
        (TOKEN_FETCHED, {"connectivity.reason": "expired", "connectivity.delay": 3600.0}),
    ]


def test_client_credentials_repr_and_describe_hide_secret_and_token() -> None:
    credentials = oauth(FakeClock(), scopes=["orders.read"])
    credentials.value(REQUEST, Endpoint())
    assert repr(credentials) == (
        "ClientCredentials(token_url='https://idp.example/oauth/token', client_id='orders-api', "
        "auth_method='client_secret_basic', scopes=('orders.read',))"
    )
    described = credentials.describe()
    assert described["token"] == "fresh"
    assert described["fetches"] == 1
    for text in (repr(credentials), str(described), repr(credentials._token)):
        no_secret(text)
        assert base64.b64encode(b"orders-api:").decode()[:12] not in text


# -- OAuth2 client credentials: single flight ---------------------------------------------------------------------


def test_threads_share_one_fetch() -> None:
    clock = FakeClock()
    credentials = oauth(clock)
    started, release = threading.Event(), threading.Event()
    endpoint = Endpoint()

    def slow(request: httpx.Request) -> httpx.Response:
        started.set()
        assert release.wait(10)
        return endpoint(request)

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(credentials.value(REQUEST, slow))) for _ in range(20)
    ]
    threads[0].start()
    assert started.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == ["Bearer tok-1"] * 20
    assert len(endpoint.requests) == 1


@pytest.mark.anyio
async def test_tasks_waiting_for_an_expired_token_share_one_fetch() -> None:
    clock = FakeClock()
    credentials = oauth(clock)
    release = anyio.Event()
    endpoint = Endpoint()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return endpoint(request)

    results: list[str] = []

    async def call() -> None:
        results.append(await credentials.avalue(REQUEST, slow))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(call)
        await wait_all_tasks_blocked()  # one task in the fetch, 49 waiting for it
        assert results == []
        release.set()
    assert results == ["Bearer tok-1"] * 50
    assert len(endpoint.requests) == 1


@pytest.mark.anyio
async def test_while_refreshing_ahead_only_the_fetcher_waits() -> None:
    clock = FakeClock()
    credentials = oauth(clock)
    endpoint = Endpoint()
    assert await credentials.avalue(REQUEST, endpoint.asend) == "Bearer tok-1"
    clock.advance(3300)  # inside the refresh window, still valid
    release = anyio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return endpoint(request)

    results: list[str] = []

    async def call() -> None:
        results.append(await credentials.avalue(REQUEST, slow))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(call)
        await wait_all_tasks_blocked()
        assert results == ["Bearer tok-1"] * 9  # served the valid token without waiting
        release.set()
    assert results[-1] == "Bearer tok-2"
    assert len(endpoint.requests) == 2


@pytest.mark.anyio
async def test_a_cancelled_fetcher_hands_over_to_a_waiter() -> None:
    credentials = oauth(FakeClock())
    endpoint = Endpoint()
    calls = 0

    async def first_hangs(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep_forever()
        return endpoint(request)

    results: list[str] = []

    async def call() -> None:
        results.append(await credentials.avalue(REQUEST, first_hangs))

    async with anyio.create_task_group() as group, anyio.create_task_group() as leader:
        leader.start_soon(call)
        await wait_all_tasks_blocked()
        for _ in range(5):
            group.start_soon(call)
        await wait_all_tasks_blocked()
        leader.cancel_scope.cancel()
    assert results == ["Bearer tok-1"] * 5
    assert calls == 2
    assert credentials.describe()["failing"] is False


def test_one_provider_works_on_successive_event_loops() -> None:
    clock = FakeClock()
    credentials = oauth(clock)
    endpoint = Endpoint()
    for backend in ("asyncio", "trio", "asyncio"):
        clock.advance(3600)
        assert anyio.run(credentials.avalue, REQUEST, endpoint.asend, backend=backend).startswith("Bearer tok-")
    assert len(endpoint.requests) == 3


# -- service JWTs -------------------------------------------------------------------------------------------------


def pem(key: Any, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.NoEncryption() if password is None else serialization.BestAvailableEncryption(password)
    )
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def service(key: Any, clock: FakeClock, algorithm: str = "ES256", **options: Any) -> ServiceJWT:
    return ServiceJWT(pem(key), algorithm, issuer="orders", clock=clock, **options)


def claims_of(value: str, key: Any, audience: str, algorithm: str = "ES256") -> dict[str, Any]:
    scheme, _, token = value.partition(" ")
    assert scheme == "Bearer"
    return dict(
        jwt.decode(
            token,
            key.public_key(),
            algorithms=[algorithm],
            audience=audience,
            options={"verify_exp": False, "verify_iat": False},
        )
    )


def test_service_jwt_claims_and_header(ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock(epoch=1_800_000_000.4)
    credentials = service(
        ec_key, clock, subject="spiffe://example.test/sa/orders", key_id="k1", claims={"tenant": "t1"}
    )
    value = credentials.value(httpx.Request("GET", "https://billing.internal/pay"), Endpoint())
    claims = claims_of(value, ec_key, "https://billing.internal")
    assert claims.pop("jti")
    assert claims == {
        "iss": "orders",
        "sub": "spiffe://example.test/sa/orders",
        "aud": "https://billing.internal",
        "iat": 1_800_000_000,
        "exp": 1_800_000_300,
        "tenant": "t1",
    }
    assert jwt.get_unverified_header(value.split()[1]) == {"alg": "ES256", "kid": "k1", "typ": "JWT"}


def test_audience_is_the_target_origin_or_the_mapped_one(ec_key: ec.EllipticCurvePrivateKey) -> None:
    derived = service(ec_key, FakeClock())
    assert derived.audience_for(httpx.URL("https://Orders.Internal:443/x?y")) == "https://orders.internal"
    assert derived.audience_for(httpx.URL("http://orders.internal:8080/x")) == "http://orders.internal:8080"
    mapped = service(ec_key, FakeClock(), audience={"orders.internal": "orders", "pay:9000": "pay-admin"})
    assert mapped.audience_for(httpx.URL("https://orders.internal/x")) == "orders"
    assert mapped.audience_for(httpx.URL("http://pay:9000/")) == "pay-admin"
    assert mapped.audience_for(httpx.URL("http://pay:9001/")) == "http://pay:9001"
    assert service(ec_key, FakeClock(), audience="everyone").audience_for(httpx.URL("http://a/")) == "everyone"


def test_tokens_are_cached_per_audience_until_shortly_before_expiry(ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock()
    credentials = service(ec_key, clock, lifetime=300)
    orders, billing = httpx.Request("GET", "https://orders/"), httpx.Request("GET", "https://billing/")
    first = credentials.value(orders, Endpoint())
    assert credentials.value(orders, Endpoint()) == first
    other = credentials.value(billing, Endpoint())
    assert other != first
    assert claims_of(other, ec_key, "https://billing")["aud"] == "https://billing"
    clock.advance(269.9)  # refreshed 30 s (10 %) before expiry
    assert credentials.value(orders, Endpoint()) == first
    clock.advance(0.1)
    assert credentials.value(orders, Endpoint()) != first
    assert credentials.describe()["audiences"] == ["https://billing", "https://orders"]


def test_the_audience_cache_is_bounded(
    ec_key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "_MAX_AUDIENCES", 4)
    credentials = service(ec_key, FakeClock())
    for number in range(10):
        credentials.value(httpx.Request("GET", f"https://host-{number}/"), Endpoint())
    assert credentials.describe()["audiences"] == [f"https://host-{n}" for n in range(6, 10)]


@pytest.mark.parametrize(
    ("make", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ES512"),
        (lambda: rsa.generate_private_key(65537, 2048), "RS256"),
        (lambda: rsa.generate_private_key(65537, 2048), "PS384"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_every_supported_key_signs_verifiable_tokens(make: Callable[[], Any], algorithm: str) -> None:
    key = make()
    value = service(key, FakeClock(), algorithm).value(REQUEST, Endpoint())
    assert claims_of(value, key, "https://orders.example", algorithm)["iss"] == "orders"


@pytest.mark.parametrize(
    ("make", "algorithm", "rule"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RS256", "at least 2048 bits"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES384", "ES384 needs an EC key on secp384r1"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES256", "ES256 needs an EC key on secp256r1"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "RS256", "RS256 needs an RSA key"),
        (lambda: rsa.generate_private_key(65537, 2048), "ES256", "an RSA key cannot sign ES256"),
        (ed25519.Ed25519PrivateKey.generate, "ES256", "an EdDSA key cannot sign ES256"),
        (lambda: dsa.generate_private_key(2048), "RS256", "not a JWT signing key"),
    ],
)
def test_weak_or_mismatched_keys_break_the_key_policy(make: Callable[[], Any], algorithm: str, rule: str) -> None:
    with pytest.raises(KeyPolicyError, match=rule) as caught:
        service(make(), FakeClock(), algorithm)
    assert caught.value.field == "ServiceJWT.private_key"
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize("algorithm", ["HS256", "none", "ES256K", ""])
def test_shared_secret_and_none_algorithms_are_refused(ec_key: ec.EllipticCurvePrivateKey, algorithm: str) -> None:
    with pytest.raises(ConfigError, match="no HS\\*, no none") as caught:
        service(ec_key, FakeClock(), algorithm)
    assert caught.value.field == "ServiceJWT.algorithm"


def test_keys_load_from_files_and_encrypted_pem(ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(pem(ec_key, b"pw"))
    credentials = ServiceJWT(path, "ES256", issuer="orders", password=b"pw")
    assert claims_of(credentials.value(REQUEST, Endpoint()), ec_key, "https://orders.example")["iss"] == "orders"
    assert ServiceJWT(pem(ec_key).decode(), "ES256", issuer="orders").issuer == "orders"


@pytest.mark.parametrize("source", ["garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_unreadable_keys_are_config_errors_that_do_not_quote_them(source: Any) -> None:
    with pytest.raises(ConfigError, match="readable PEM private key") as caught:
        ServiceJWT(source, "ES256", issuer="orders")
    assert "AAAA" not in str(caught.value)
    assert "garbage" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_wrong_password_or_missing_file(ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable PEM"):
        ServiceJWT(pem(ec_key, b"pw"), "ES256", issuer="orders", password=b"wrong")
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        ServiceJWT(tmp_path / "missing.pem", "ES256", issuer="orders")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"issuer": ""}, "issuer"),
        ({"subject": 7}, "subject"),
        ({"key_id": ""}, "key_id"),
        ({"audience": ""}, "audience"),
        ({"audience": {"orders": ""}}, "audience"),
        ({"lifetime": 0}, "lifetime"),
        ({"claims": {"aud": "x"}}, "claims"),
        ({"claims": {"when": object()}}, "claims"),
        ({"refresh_ratio": -0.1}, "refresh_ratio"),
    ],
)
def test_service_jwt_options_are_validated(
    ec_key: ec.EllipticCurvePrivateKey, options: dict[str, Any], field: str
) -> None:
    arguments: dict[str, Any] = {"issuer": "orders", **options}
    with pytest.raises(ConfigError) as caught:
        ServiceJWT(pem(ec_key), "ES256", **arguments)
    assert caught.value.field == f"ServiceJWT.{field}"


def test_service_jwt_repr_and_describe_hold_no_key_or_token(ec_key: ec.EllipticCurvePrivateKey) -> None:
    credentials = service(ec_key, FakeClock(), key_id="k1")
    value = credentials.value(REQUEST, Endpoint())
    assert repr(credentials) == (
        "ServiceJWT(algorithm='ES256', issuer='orders', subject='orders', audience='<from host>', "
        "lifetime=300, key_id='k1')"
    )
    token = value.split()[1]
    for text in (repr(credentials), str(credentials.describe()), repr(credentials._cache)):
        assert token not in text
        assert "PRIVATE" not in text
