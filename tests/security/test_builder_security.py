"""``connectivity.transport(tls=..., auth=...)``: mutual TLS and credentials wired into the recommended stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import connectivity as cx
from connectivity.errors import ConfigError, PeerIdentityError
from connectivity.security.credentials import BearerToken
from connectivity.security.tls import MTLS
from connectivity.testing.server import serve
from connectivity.transports import AuthTransport, PeerIdentityTransport, RetryTransport, TimeoutTransport

from .conftest import PKI, SERVER_ID


class Seen:
    """An ASGI app answering 200 and remembering the Authorization header of each request."""

    def __init__(self) -> None:
        self.authorization: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        value = headers.get(b"authorization")
        self.authorization.append(None if value is None else value.decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def layers(transport: object) -> list[type]:
    found = []
    while transport is not None:
        found.append(type(transport))
        transport = getattr(transport, "inner", None)
    return found


def mtls(pki: PKI, peer_id: str = SERVER_ID) -> MTLS:
    return MTLS(cert=pki.client.cert, key=pki.client.key, ca=pki.ca.cert, peer_id=peer_id)


def test_mutual_tls_through_the_stack(pki: PKI) -> None:
    app = Seen()
    transport = cx.transport(tls=mtls(pki), telemetry=False)
    with serve(app, ssl_context=pki.server_context()) as server, httpx.Client(transport=transport) as client:
        assert client.get(server.url).status_code == 200


@pytest.mark.anyio
async def test_mutual_tls_through_the_stack_async(pki: PKI) -> None:
    with serve(Seen(), ssl_context=pki.server_context()) as server:
        async with httpx.AsyncClient(transport=cx.transport(tls=mtls(pki), telemetry=False)) as client:
            assert (await client.get(server.url)).status_code == 200


def test_a_wrong_upstream_identity_is_refused_before_anything_is_sent(pki: PKI) -> None:
    app = Seen()
    expected = "spiffe://example.test/ns/tests/sa/somebody-else"
    with serve(app, ssl_context=pki.server_context()) as server:
        transport = cx.transport(tls=mtls(pki, expected), telemetry=False)
        with httpx.Client(transport=transport) as client, pytest.raises(PeerIdentityError) as caught:
            client.get(server.url)
        assert caught.value.expected == (expected,)
        assert caught.value.presented[0] == SERVER_ID  # then its DNS names
        assert app.authorization == []  # nothing reached the app


def test_peer_identity_sits_on_the_network_transport(pki: PKI) -> None:
    found = layers(cx.transport(tls=mtls(pki), telemetry=False, request_id=False))
    assert found[:2] == [TimeoutTransport, RetryTransport]
    assert found[2] is PeerIdentityTransport


def test_tls_conflicts_are_config_errors(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="explicit inner transport"):
        cx.transport(httpx.MockTransport(lambda request: httpx.Response(200)), tls=mtls(pki))
    with pytest.raises(ConfigError, match=r"transport\.verify"):
        cx.transport(tls=mtls(pki), verify=False)
    with pytest.raises(ConfigError, match=r"transport\.tls"):
        cx.transport(tls="client.pem")  # type: ignore[arg-type]


def test_credentials_on_every_attempt(pki: PKI) -> None:
    app = Seen()
    with serve(app) as server:
        transport = cx.transport(auth=BearerToken("t0ken-value"), telemetry=False, request_id=False)
        found = layers(transport)
        assert found[:3] == [TimeoutTransport, RetryTransport, AuthTransport]
        with httpx.Client(transport=transport) as client:
            assert client.get(server.url).status_code == 200
    assert app.authorization == ["Bearer t0ken-value"]


def test_credentials_config_errors_never_show_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        cx.transport(auth="Bearer s3cr3t")  # type: ignore[arg-type]
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(ConfigError, match="needs auth"):
        cx.transport(auth_hosts=["orders.internal"])
