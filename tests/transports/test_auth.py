"""AuthTransport against a real uvicorn app on loopback serving both a token endpoint and a protected resource."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
import httpx
import jwt
import pytest
from anyio import wait_all_tasks_blocked
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectivity.errors import ConfigError, CredentialError
from connectivity.policies.retry import Retry
from connectivity.security.credentials import APIKey, BearerToken
from connectivity.security.oauth2 import ClientCredentials
from connectivity.security.service_jwt import ServiceJWT
from connectivity.telemetry import events
from connectivity.testing import FakeClock
from connectivity.testing.otel import InMemoryTelemetry
from connectivity.testing.server import RunningServer, serve
from connectivity.transports.auth import AuthTransport
from connectivity.transports.retry import RetryTransport
from connectivity.transports.tracing import TracingTransport

from .conftest import Sender

CLIENT_ID, SECRET = "orders-api", "s3cr3t-client-secret"
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())


class IdP:
    """``/token`` issues ``tok-1``, ``tok-2``... (client_secret_basic or _post); ``/resource`` wants a valid one;
    ``/echo`` answers the request's headers; ``/jwt`` verifies a service JWT for its own origin."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issued = 0
        self.valid: set[str] = set()
        self.token_forms: list[dict[str, list[str]]] = []
        self.seen: list[str | None] = []
        self.audiences: list[str] = []
        self.script: list[tuple[int, bytes]] = []  # canned token responses, used first
        self.hold: threading.Event | None = None
        self.fetching = threading.Event()
        self.reject_all = False

    @property
    def fetches(self) -> int:
        return len(self.token_forms)

    def expire_all(self) -> None:
        with self.lock:
            self.valid.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        status, answer = await getattr(self, scope["path"].strip("/"))(headers, body)
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer})

    async def token(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        form = parse_qs(body.decode())
        with self.lock:
            self.token_forms.append(form)
            canned = self.script.pop(0) if self.script else None
        self.fetching.set()
        if self.hold is not None:
            assert await anyio.to_thread.run_sync(self.hold.wait, 10)
        if canned is not None:
            return canned
        basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
        posted = form.get("client_id") == [CLIENT_ID] and form.get("client_secret") == [SECRET]
        if headers.get("authorization") != basic and not posted:
            return 401, b'{"error": "invalid_client"}'
        with self.lock:
            self.issued += 1
            token = f"tok-{self.issued}"
            self.valid.add(token)
        return 200, json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 60}).encode()

    async def resource(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        authorization = headers.get("authorization")
        with self.lock:
            self.seen.append(authorization)
            ok = not self.reject_all and authorization is not None and authorization[7:] in self.valid
        if not ok:
            return 401, b'{"title": "Unauthorized"}'
        return 200, json.dumps({"token": authorization}).encode()

    async def echo(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        return 200, json.dumps(headers).encode()

    async def jwt(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        origin = f"http://{headers['host']}"
        claims = jwt.decode(
            headers["authorization"].removeprefix("Bearer "),
            SIGNING_KEY.public_key(),
            algorithms=["ES256"],
            audience=origin,
            issuer="orders",
            leeway=600,  # the tests move the client's clock ahead of this one
        )
        self.audiences.append(claims["aud"])
        return 200, json.dumps({"aud": claims["aud"], "jti": claims["jti"]}).encode()


class Fresh:
    """Serves the current test's :class:`IdP`: one server per module, a fresh app state per test."""

    def __init__(self) -> None:
        self.app = IdP()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def idp_server() -> Iterator[RunningServer[Fresh]]:
    with serve(Fresh(), name="idp") as server:
        yield server


@pytest.fixture
def idp(idp_server: RunningServer[Fresh]) -> tuple[IdP, RunningServer[Fresh]]:
    idp_server.app.app = IdP()
    return idp_server.app.app, idp_server


def oauth(server: RunningServer[Fresh], clock: FakeClock, **options: Any) -> ClientCredentials:
    return ClientCredentials(f"{server.url}/token", CLIENT_ID, SECRET, clock=clock, **options)


def network(send: Sender) -> httpx.BaseTransport | httpx.AsyncBaseTransport:
    """A network transport of the client kind under test only: a sync fetch in async code would fail."""
    return httpx.AsyncHTTPTransport() if send.is_async else httpx.HTTPTransport()


# -- static credentials -------------------------------------------------------------------------------------------


def test_static_bearer_token(send: Sender, idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    _, server = idp
    response = send(AuthTransport(network(send), BearerToken("static-1")), url=f"{server.url}/echo")
    assert response.json()["authorization"] == "Bearer static-1"


@pytest.mark.parametrize("header", ["apikey", "x-api-key"])
def test_static_api_key_in_the_configured_header(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]], header: str
) -> None:
    _, server = idp
    response = send(AuthTransport(network(send), APIKey("k-1", header=header)), url=f"{server.url}/echo")
    assert response.json()[header] == "k-1"
    assert "authorization" not in response.json()


def test_a_callers_own_header_is_kept_unless_overwrite(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]]
) -> None:
    _, server = idp
    own = {"Authorization": "Bearer per-call"}
    kept = send(AuthTransport(network(send), BearerToken("layer")), url=f"{server.url}/echo", headers=own)
    assert kept.json()["authorization"] == "Bearer per-call"
    replaced = send(
        AuthTransport(network(send), BearerToken("layer"), overwrite=True), url=f"{server.url}/echo", headers=own
    )
    assert replaced.json()["authorization"] == "Bearer layer"


def test_credentials_go_only_to_the_listed_hosts(send: Sender, idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    _, server = idp
    transport = AuthTransport(network(send), BearerToken("layer"), hosts=["127.0.0.1", "*.example.test"])
    assert send(transport, url=f"{server.url}/echo").json()["authorization"] == "Bearer layer"
    other = send(transport, url=f"http://localhost:{server.port}/echo").json()
    assert "authorization" not in other
    assert transport.describe()["hosts"] == ["127.0.0.1", "*.example.test"]


@pytest.mark.parametrize("hosts", ["a.example", ["a b"], ["a.*.example"], [""], [7]])
def test_hosts_are_validated(hosts: Any) -> None:
    with pytest.raises(ConfigError, match=r"AuthTransport\.hosts"):
        AuthTransport(httpx.HTTPTransport(), BearerToken("t"), hosts=hosts)


def test_transport_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"AuthTransport\.credentials"):
        AuthTransport(httpx.HTTPTransport(), "Bearer abc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"AuthTransport\.token_transport"):
        AuthTransport(httpx.HTTPTransport(), BearerToken("t"), token_transport=object())  # type: ignore[arg-type]


# -- OAuth2 client credentials ------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_token_is_fetched_once_cached_and_refetched_after_expiry(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]], auth_method: Any
) -> None:
    app, server = idp
    clock = FakeClock()
    transport = AuthTransport(
        network(send), oauth(server, clock, auth_method=auth_method, scopes=["orders.read"], audience="orders")
    )
    for _ in range(3):
        assert send(transport, url=f"{server.url}/resource").json() == {"token": "Bearer tok-1"}
    assert app.fetches == 1
    assert app.token_forms[0]["scope"] == ["orders.read"]
    assert app.token_forms[0]["audience"] == ["orders"]
    clock.advance(60)
    app.expire_all()
    assert send(transport, url=f"{server.url}/resource").json() == {"token": "Bearer tok-2"}
    assert app.fetches == 2


def test_async_clients_fetch_through_an_async_only_stack(idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    """The token request goes through the inner transport: an AsyncHTTPTransport has no sync path at all."""
    app, server = idp
    transport = AuthTransport(httpx.AsyncHTTPTransport(), oauth(server, FakeClock()))
    assert Sender("asyncio")(transport, url=f"{server.url}/resource").status_code == 200
    assert app.fetches == 1
    with pytest.raises(TypeError, match="async-only transport"):
        Sender("sync")(transport, url=f"{server.url}/resource")


def test_token_requests_take_the_token_transport_and_its_retries(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]]
) -> None:
    app, server = idp
    app.script = [(503, b"{}")]
    clock = FakeClock()
    base = network(send)
    retried = RetryTransport(base, Retry(methods=frozenset({"POST"})), clock=clock)
    transport = AuthTransport(base, oauth(server, clock), token_transport=retried)
    assert send(transport, url=f"{server.url}/resource").json() == {"token": "Bearer tok-1"}
    assert app.fetches == 2  # a 503, retried by the token transport
    assert app.seen == ["Bearer tok-1"]  # the resource request itself was sent once


def _refresh_and_retry(send: Sender, app: IdP, server: RunningServer[Fresh], **kwargs: Any) -> httpx.Response:
    transport = AuthTransport(network(send), oauth(server, FakeClock()))
    assert send(transport, url=f"{server.url}/resource").status_code == 200
    app.expire_all()  # the upstream revokes tok-1
    return send(transport, "POST", f"{server.url}/resource", **kwargs)


def test_a_401_drops_the_token_fetches_a_new_one_and_resends_once(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]]
) -> None:
    app, server = idp
    response = _refresh_and_retry(send, app, server, content=b'{"order": 1}')
    assert response.status_code == 200
    assert response.json() == {"token": "Bearer tok-2"}
    assert app.seen == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert app.fetches == 2


def test_a_second_401_is_returned_as_it_is(send: Sender, idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    app, server = idp
    app.reject_all = True
    transport = AuthTransport(network(send), oauth(server, FakeClock()))
    response = send(transport, url=f"{server.url}/resource")
    assert response.status_code == 401
    assert response.json() == {"title": "Unauthorized"}
    assert app.seen == ["Bearer tok-1", "Bearer tok-2"]
    assert app.fetches == 2


def test_no_resend_when_the_body_cannot_be_replayed(send: Sender, idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    app, server = idp

    def chunks() -> Iterator[bytes]:
        yield b"streamed"

    async def achunks() -> Any:
        yield b"streamed"

    response = _refresh_and_retry(send, app, server, content=achunks() if send.is_async else chunks())
    assert response.status_code == 401
    assert app.fetches == 1


def test_no_resend_for_static_credentials_or_when_disabled(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]]
) -> None:
    app, server = idp
    assert send(AuthTransport(network(send), BearerToken("nope")), url=f"{server.url}/resource").status_code == 401
    transport = AuthTransport(network(send), oauth(server, FakeClock()), refresh_on_401=False)
    app.reject_all = True
    assert send(transport, url=f"{server.url}/resource").status_code == 401
    assert app.seen == ["Bearer nope", "Bearer tok-1"]


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/token"


def test_token_endpoint_down_is_a_credential_error(send: Sender, idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    _, server = idp
    url = _dead_url()
    transport = AuthTransport(network(send), ClientCredentials(url, CLIENT_ID, SECRET, clock=FakeClock()))
    with pytest.raises(CredentialError, match=f"OAuth2 token endpoint {url} failed: ConnectError") as caught:
        send(transport, url=f"{server.url}/resource")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("canned", "message"),
    [
        ((500, b'{"error": "server_error"}'), r"answered 500 \(server_error\)$"),
        ((200, b"<html>hello</html>"), "answered 200 with a body that is not JSON"),
        ((200, b'{"token_type": "Bearer"}'), "answered 200 without an access_token"),
        ((200, b'{"access_token": "tok-x", "expires_in": -1}'), "invalid expires_in"),
        ((200, b'{"access_token": "tok-x", "token_type": "DPoP"}'), "token_type 'DPoP', not Bearer"),
    ],
)
def test_token_endpoint_errors_and_garbage_are_credential_errors(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]], canned: tuple[int, bytes], message: str
) -> None:
    app, server = idp
    app.script = [canned]
    transport = AuthTransport(network(send), oauth(server, FakeClock()))
    with pytest.raises(CredentialError, match=message) as caught:
        send(transport, url=f"{server.url}/resource")
    assert str(caught.value).startswith(f"OAuth2 token endpoint {server.url}/token answered")
    assert SECRET not in str(caught.value)
    assert "tok-x" not in str(caught.value)
    assert app.seen == []  # nothing was sent upstream without a credential


def test_wrong_client_secret_is_a_credential_error_naming_the_oauth_error(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]]
) -> None:
    _, server = idp
    wrong = ClientCredentials(f"{server.url}/token", CLIENT_ID, "wrong-secret", clock=FakeClock())
    with pytest.raises(CredentialError, match=r"answered 401 \(invalid_client\)$") as caught:
        send(AuthTransport(network(send), wrong), url=f"{server.url}/resource")
    assert "wrong-secret" not in str(caught.value)


# -- single flight: the must-show ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_100_concurrent_requests_during_expiry_cause_one_fetch_async(
    idp: tuple[IdP, RunningServer[Fresh]],
) -> None:
    app, server = idp
    clock = FakeClock()
    transport = AuthTransport(
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=200)), oauth(server, clock)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{server.url}/resource")).status_code == 200
        clock.advance(60)  # tok-1 expires, here and upstream
        app.expire_all()
        app.hold, app.fetching = threading.Event(), threading.Event()
        statuses: list[int] = []

        async def call() -> None:
            statuses.append((await client.get(f"{server.url}/resource")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(call)
            assert await anyio.to_thread.run_sync(app.fetching.wait, 10)
            await wait_all_tasks_blocked()  # all 100 are in: one fetching, 99 waiting for it
            assert statuses == []
            app.hold.set()
    assert statuses == [200] * 100
    assert app.fetches == 2
    assert app.seen[1:] == ["Bearer tok-2"] * 100


def test_100_concurrent_requests_during_expiry_cause_one_fetch_threads(
    idp: tuple[IdP, RunningServer[Fresh]],
) -> None:
    app, server = idp
    clock = FakeClock()
    auth = AuthTransport(httpx.HTTPTransport(limits=httpx.Limits(max_connections=200)), oauth(server, clock))
    entered = threading.Condition()
    count = 0

    class Entering(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal count
            with entered:
                count += 1
                entered.notify_all()
            return auth.handle_request(request)

        def close(self) -> None:
            auth.close()

    with httpx.Client(transport=Entering()) as client, ThreadPoolExecutor(max_workers=100) as pool:
        assert client.get(f"{server.url}/resource").status_code == 200
        clock.advance(60)
        app.expire_all()
        app.hold, app.fetching = threading.Event(), threading.Event()
        count = 0
        futures = [pool.submit(client.get, f"{server.url}/resource") for _ in range(100)]
        assert app.fetching.wait(10)
        with entered:  # all 100 inside the layer while the one fetch is held at the endpoint
            assert entered.wait_for(lambda: count == 100, 10)
        assert not any(future.done() for future in futures)
        app.hold.set()
        statuses = [future.result(10).status_code for future in futures]
    assert statuses == [200] * 100
    assert app.fetches == 2
    assert app.seen[1:] == ["Bearer tok-2"] * 100


# -- service JWTs -------------------------------------------------------------------------------------------------


def test_service_jwt_audience_per_host_and_caching(send: Sender, idp: tuple[IdP, RunningServer[Fresh]]) -> None:
    app, server = idp
    key = SIGNING_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    clock = FakeClock(epoch=time.time())
    transport = AuthTransport(network(send), ServiceJWT(key, "ES256", issuer="orders", clock=clock))
    by_ip = [send(transport, url=f"{server.url}/jwt").json() for _ in range(2)]
    by_name = send(transport, url=f"http://localhost:{server.port}/jwt").json()
    assert app.audiences == [server.url, server.url, f"http://localhost:{server.port}"]
    assert by_ip[0]["jti"] == by_ip[1]["jti"]  # cached per audience
    assert by_name["jti"] != by_ip[0]["jti"]
    clock.advance(270)  # 30 s before expiry: a new token
    assert send(transport, url=f"{server.url}/jwt").json()["jti"] != by_ip[0]["jti"]


# -- secrets ------------------------------------------------------------------------------------------------------


def test_reprs_spans_and_events_carry_no_secret(
    send: Sender, idp: tuple[IdP, RunningServer[Fresh]], otel: InMemoryTelemetry
) -> None:
    app, server = idp
    seen: list[str] = []
    unsubscribe = events.subscribe(lambda name, attributes: seen.append(f"{name} {dict(attributes)}"))
    try:
        clock = FakeClock()
        auth = AuthTransport(network(send), oauth(server, clock))
        traced = TracingTransport(auth, telemetry=otel.telemetry())
        assert send(traced, url=f"{server.url}/resource").status_code == 200
        app.expire_all()
        assert send(traced, url=f"{server.url}/resource").status_code == 200  # 401, refreshed
    finally:
        unsubscribe()
    assert seen  # fetched twice
    spans = otel.spans()
    assert len(spans) == 2 * 2  # a logical and an attempt span per call; token requests are not the call's
    recorded = [str(dict(span.attributes or {})) for span in spans]
    recorded += [f"{event.name} {dict(event.attributes or {})}" for span in spans for event in span.events]
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    for text in [*seen, *recorded, repr(auth), repr(auth.credentials), str(auth.describe())]:
        for secret in (SECRET, basic, "tok-1", "tok-2"):
            assert secret not in text, text
    assert repr(auth) == (
        f"AuthTransport(ClientCredentials(token_url='{server.url}/token', client_id='orders-api', "
        f"auth_method='client_secret_basic', scopes=()), inner={type(auth.inner).__name__})"
    )
