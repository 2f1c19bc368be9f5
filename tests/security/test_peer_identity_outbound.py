"""The outbound peer check: the upstream's SPIFFE id (or DNS name) is checked right after the TLS handshake, before
any request byte leaves, and a mismatch surfaces as ``PeerIdentityError`` for Client and AsyncClient alike."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from connectivity.errors import ConfigError, PeerIdentityError
from connectivity.policies.retry import Retry
from connectivity.security.tls import MTLS, PeerVerificationError
from connectivity.testing import FakeClock
from connectivity.testing.server import RunningServer, serve
from connectivity.transports.aiohttp import AiohttpTransport
from connectivity.transports.http import HTTPTransport
from connectivity.transports.peer_identity import PeerIdentityTransport, find_peer_verification_error
from connectivity.transports.retry import RetryTransport

SERVER_ID = "spiffe://example.test/ns/tests/sa/upstream"
CLIENT_ID = "spiffe://example.test/ns/tests/sa/client"
WRONG_ID = "spiffe://example.test/ns/tests/sa/payments"


class Counting:
    """An ASGI app answering 200 and counting the requests that reached it."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.requests += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server_mtls(dev_pki: Any) -> MTLS:
    leaf = dev_pki.leaf("server", SERVER_ID, dns=("localhost", "orders.svc.test"), client=False)
    return MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca())


@pytest.fixture
def upstream(server_mtls: MTLS) -> Iterator[RunningServer[Counting]]:
    with serve(Counting(), ssl_context=server_mtls.server_context()) as server:
        yield server


@pytest.fixture
def client_for(dev_pki: Any) -> Callable[..., MTLS]:
    leaf = dev_pki.leaf("client", CLIENT_ID, server=False, dns=(), ips=())

    def make(**expectations: Any) -> MTLS:
        return MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), **expectations)

    return make


def _send(mode: str, mtls: MTLS, url: str, *, backend: str = "httpcore") -> httpx.Response:
    def network() -> Any:
        context = mtls.client_context()
        return AiohttpTransport(verify=context) if backend == "aiohttp" else HTTPTransport(verify=context)

    if mode == "sync":
        with httpx.Client(transport=PeerIdentityTransport(network(), tls=mtls)) as client:
            return client.get(url, headers={"x-secret-marker": "must-not-leave"})

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=PeerIdentityTransport(network(), tls=mtls)) as client:
            return await client.get(url, headers={"x-secret-marker": "must-not-leave"})

    return anyio.run(main, backend=mode)


MODES = [("sync", "httpcore"), ("asyncio", "httpcore"), ("trio", "httpcore"), ("asyncio", "aiohttp")]


@pytest.mark.parametrize(("mode", "backend"), MODES)
def test_wrong_spiffe_id_raises_peer_identity_error_and_sends_nothing(
    mode: str, backend: str, client_for: Callable[..., MTLS], server_mtls: MTLS, tls_listener: Any
) -> None:
    # A bare TLS server that records every byte it receives after the handshake.
    listener = tls_listener(server_mtls.server_context())
    with pytest.raises(PeerIdentityError) as raised:
        _send(mode, client_for(peer_id=WRONG_ID), listener.url, backend=backend)
    error = raised.value
    assert isinstance(error, httpx.TransportError)
    assert error.expected == (WRONG_ID,)
    assert error.presented == (SERVER_ID, "localhost", "orders.svc.test")
    assert error.request is not None
    assert error.request.url.port == listener.port
    assert str(error).startswith(f"https://127.0.0.1:{listener.port}: peer identity mismatch: 127.0.0.1 presented")
    assert isinstance(error.__cause__, PeerVerificationError)
    (accepted,) = listener.wait(1)
    assert accepted.received == b""  # not one byte of the request left the client


@pytest.mark.parametrize(("mode", "backend"), MODES)
def test_expected_spiffe_id_passes(
    mode: str, backend: str, client_for: Callable[..., MTLS], upstream: RunningServer[Counting]
) -> None:
    response = _send(mode, client_for(peer_id=SERVER_ID), upstream.url, backend=backend)
    assert response.status_code == 200
    assert upstream.app.requests == 1


@pytest.mark.parametrize(
    ("expectations", "accepted"),
    [
        ({"peer_id": [WRONG_ID, SERVER_ID]}, True),  # any of several ids
        ({"peer_trust_domain": "example.test"}, True),
        ({"peer_trust_domain": ["partner.test", "example.test"]}, True),
        ({"peer_trust_domain": "partner.test"}, False),
        ({"peer_dns_name": "localhost"}, True),
        ({"peer_dns_name": "orders.internal"}, False),
        ({"peer_id": WRONG_ID, "peer_dns_name": "orders.svc.test"}, True),  # any one expectation is enough
        ({"peer_id": WRONG_ID, "peer_trust_domain": "partner.test"}, False),
    ],
)
def test_ids_trust_domains_and_dns_names(
    expectations: dict[str, Any],
    accepted: bool,
    client_for: Callable[..., MTLS],
    upstream: RunningServer[Counting],
) -> None:
    mtls = client_for(**expectations)
    if accepted:
        assert _send("sync", mtls, upstream.url).status_code == 200
        return
    with pytest.raises(PeerIdentityError) as raised:
        _send("sync", mtls, upstream.url)
    assert raised.value.expected == mtls.expected
    assert upstream.app.requests == 0


def test_wildcard_dns_san_matches_one_label(dev_pki: Any, client_for: Callable[..., MTLS]) -> None:
    leaf = dev_pki.leaf("wild", None, dns=("*.svc.test",), client=False)
    server = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca())
    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        assert (
            _send("sync", client_for(peer_dns_name="orders.svc.test", svid=False), upstream.url).status_code == 200
        )
        for name in ("a.orders.svc.test", "svc.test"):
            with pytest.raises(PeerIdentityError):
                _send("sync", client_for(peer_dns_name=name, svid=False), upstream.url)


def test_peer_that_is_not_an_svid_is_rejected_when_an_id_is_expected(
    dev_pki: Any, client_for: Callable[..., MTLS]
) -> None:
    leaf = dev_pki.leaf("plain", None, client=False)  # DNS and IP SANs only, no SPIFFE id
    server = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca())
    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        with pytest.raises(PeerIdentityError) as raised:
            _send("trio", client_for(peer_id=SERVER_ID), upstream.url)
        assert upstream.app.requests == 0
    assert "not an X509-SVID: an X509-SVID has exactly one URI SAN, this one has 0" in str(raised.value)
    assert raised.value.presented == ("localhost",)


def test_identity_errors_are_not_retried(
    client_for: Callable[..., MTLS], server_mtls: MTLS, tls_listener: Any
) -> None:
    listener = tls_listener(server_mtls.server_context())
    mtls = client_for(peer_id=WRONG_ID)
    network = PeerIdentityTransport(HTTPTransport(verify=mtls.client_context()))
    transport = RetryTransport(network, Retry(attempts=3), clock=FakeClock())
    with httpx.Client(transport=transport) as client, pytest.raises(PeerIdentityError):
        client.get(listener.url)
    # The listener serves connections one after the other: once a last, plain connection (no TLS, so a failed
    # handshake; the sync client's own handshakes succeed server-side) is recorded, every attempt before it is too.
    socket.create_connection(("127.0.0.1", listener.port)).close()
    accepted = listener.wait(1)
    while accepted[-1].handshake_error is None:
        accepted = listener.wait(len(accepted) + 1)
    assert len(accepted) == 2  # one handshake, then the plain connection: the same upstream is not tried again
    assert (accepted[0].handshake_error, accepted[0].received) == (None, b"")


def test_other_transport_errors_pass_through(client_for: Callable[..., MTLS]) -> None:
    with serve(Counting()) as gone:
        url = gone.url.replace("http://", "https://")
    with pytest.raises(httpx.ConnectError) as raised:
        _send("sync", client_for(peer_id=SERVER_ID), url)
    assert not isinstance(raised.value, PeerIdentityError)
    assert find_peer_verification_error(raised.value) is None


def test_find_peer_verification_error_walks_causes_and_contexts_once() -> None:
    mismatch = PeerVerificationError("boom", expected=("a",), presented=("b",))
    outer = httpx.ConnectError("outer")
    middle = RuntimeError("middle")
    outer.__cause__ = middle
    middle.__context__ = mismatch
    assert find_peer_verification_error(outer) is mismatch
    looped = RuntimeError("loop")
    looped.__context__ = looped
    assert find_peer_verification_error(looped) is None
    assert isinstance(mismatch, ssl.SSLCertVerificationError)
    assert str(mismatch) == "boom"


def test_describe_shows_expectations_and_certificate_status(client_for: Callable[..., MTLS]) -> None:
    mtls = client_for(peer_id=SERVER_ID)
    layer = PeerIdentityTransport(HTTPTransport(verify=mtls.client_context()), tls=mtls)
    described = layer.describe()
    assert described["expected"] == [SERVER_ID]
    assert described["spiffe_id"] == CLIENT_ID
    assert described["generation"] == 1
    assert described["last_error"] is None
    assert layer.tls is mtls
    assert PeerIdentityTransport(HTTPTransport()).describe() == {}
    with pytest.raises(ConfigError) as raised:
        PeerIdentityTransport(HTTPTransport(), tls="mtls")  # type: ignore[arg-type]
    assert raised.value.field == "PeerIdentityTransport.tls"
