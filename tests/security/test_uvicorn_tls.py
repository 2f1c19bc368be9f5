"""The ASGI TLS extension from uvicorn (TLSH11Protocol): real TLS handshakes against the test PKI."""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from uvicorn.protocols.http.h11_impl import H11Protocol

from connectivity.middleware.peer_identity import PeerIdentityMiddleware
from connectivity.security import uvicorn as tls_uvicorn
from connectivity.security.identity import PEER_ID_KEY, peer_of
from connectivity.security.uvicorn import TLS_EXTENSION, TLSH11Protocol, tls_protocol
from connectivity.testing.server import RunningServer, serve

CLIENT_ID = "spiffe://example.test/ns/tests/sa/client"


class Echo:
    """Answers with what it saw: the TLS extension and the peer identity. Writes into the extension it was given,
    to show the next request on the connection gets a fresh one."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        tls = (scope.get("extensions") or {}).get(TLS_EXTENSION)
        peer = peer_of(scope)
        body = {
            "tls": None if tls is None else {**tls, "client_cert_chain": list(tls["client_cert_chain"])},
            "peer_id": scope.get(PEER_ID_KEY),
            "source": peer.source if peer else None,
            "dns": list(peer.dns_names) if peer else None,
        }
        if tls is not None:
            tls["client_cert_name"] = "CN=written-by-the-app"
        data = json.dumps(body).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": data})


def _server_context(pki: Any, verify: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    context.load_verify_locations(pki.ca.cert)
    context.verify_mode = verify
    return context


def _client(pki: Any, leaf: Any = None, *, certificate: bool = True) -> httpx.Client:
    context = ssl.create_default_context(cafile=pki.ca.cert)
    if certificate:
        leaf = leaf or pki.client
        context.load_cert_chain(leaf.cert, leaf.key)
    return httpx.Client(verify=context, trust_env=False)


@pytest.fixture
def tls_server(pki: Any) -> Iterator[Callable[..., RunningServer[Any]]]:
    with contextlib.ExitStack() as stack:

        def start(
            app: Any = None,
            *,
            verify: ssl.VerifyMode = ssl.CERT_REQUIRED,
            protocol: Any = TLSH11Protocol,
            **options: Any,
        ) -> RunningServer[Any]:
            app = app or PeerIdentityMiddleware(Echo(), **options)
            context = _server_context(pki, verify)
            return stack.enter_context(serve(app, name="tls", ssl_context=context, http_protocol=protocol))

        yield start


def _der(path: str) -> bytes:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(Encoding.DER)


def test_the_app_sees_the_client_spiffe_id(pki: Any, tls_server: Any) -> None:
    server = tls_server(require=True)
    with _client(pki) as client:
        response = client.get(server.url + "/")
    assert response.status_code == 200
    body = response.json()
    assert body["peer_id"] == CLIENT_ID
    assert body["source"] == "tls"


def test_the_httptools_protocol_gives_the_same_identity_and_extension(pki: Any, tls_server: Any) -> None:
    pytest.importorskip("httptools")
    server = tls_server(require=True, protocol=tls_uvicorn.TLSHttpToolsProtocol)
    with _client(pki) as client:
        first = client.get(server.url + "/").json()
        second = client.get(server.url + "/").json()  # the same connection: a fresh extension again
    assert (first["peer_id"], first["source"]) == (CLIENT_ID, "tls")
    assert first["tls"]["client_cert_name"] == second["tls"]["client_cert_name"] == "CN=client"
    assert _der(pki.client.cert) == ssl.PEM_cert_to_DER_cert(first["tls"]["client_cert_chain"][0])
    assert server.connections_opened == 1


def test_the_extension_follows_the_asgi_spec(pki: Any, tls_server: Any) -> None:
    server = tls_server()
    with _client(pki) as client:
        tls = client.get(server.url + "/").json()["tls"]
    assert tls["server_cert"] is None
    assert tls["client_cert_error"] is None
    assert tls["client_cert_name"] == "CN=client"
    assert tls["tls_version"] == 0x0304  # both ends default to TLS 1.3
    assert tls["cipher_suite"] in {0x1301, 0x1302, 0x1303}  # the TLS 1.3 suites, by IANA number
    chain = tls["client_cert_chain"]
    assert _der(pki.client.cert) == ssl.PEM_cert_to_DER_cert(chain[0])
    if sys.version_info < (3, 13):
        assert len(chain) == 1  # the leaf: Python < 3.13 has no public API for the verified chain
    else:
        assert len(chain) == 2  # the verified chain, up to our CA
        assert _der(pki.ca.cert) == ssl.PEM_cert_to_DER_cert(chain[1])


def test_tls_1_2_is_reported_as_such(pki: Any, tls_server: Any) -> None:
    server = tls_server()
    context = ssl.create_default_context(cafile=pki.ca.cert)
    context.load_cert_chain(pki.client.cert, pki.client.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=context, trust_env=False) as client:
        tls = client.get(server.url + "/").json()["tls"]
    assert tls["tls_version"] == 0x0303
    assert isinstance(tls["cipher_suite"], int)
    assert tls["cipher_suite"] > 0


def test_each_request_on_a_connection_gets_a_fresh_extension(pki: Any, tls_server: Any) -> None:
    server = tls_server()
    with _client(pki) as client:
        first = client.get(server.url + "/").json()["tls"]
        second = client.get(server.url + "/").json()["tls"]
    assert server.connections_opened == 1  # one keep-alive connection
    assert first["client_cert_name"] == second["client_cert_name"] == "CN=client"


def test_no_client_certificate_is_401_when_required(pki: Any, tls_server: Any) -> None:
    server = tls_server(verify=ssl.CERT_OPTIONAL, require=True)
    with _client(pki, certificate=False) as client:
        response = client.get(server.url + "/")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401


def test_no_client_certificate_gives_an_empty_chain(pki: Any, tls_server: Any) -> None:
    server = tls_server(verify=ssl.CERT_OPTIONAL)
    with _client(pki, certificate=False) as client:
        body = client.get(server.url + "/").json()
    assert body["tls"]["client_cert_chain"] == []
    assert body["tls"]["client_cert_name"] is None
    assert body["peer_id"] is None


def test_a_certificate_from_another_ca_never_reaches_the_app(pki: Any, tls_server: Any) -> None:
    server = tls_server(verify=ssl.CERT_OPTIONAL)
    stranger = pki.other_ca.issue("stranger-client", "spiffe://example.test/ns/tests/sa/client", server=False)
    with _client(pki, stranger) as client, pytest.raises(httpx.HTTPError):
        client.get(server.url + "/")


def test_an_invalid_spiffe_id_in_a_verified_certificate_is_no_identity(pki: Any, tls_server: Any) -> None:
    server = tls_server(require=True)
    bad = pki.ca.issue("bad-spiffe-client", "spiffe://Example.test/upper/case", server=False, dns=(), ips=())
    with _client(pki, bad) as client:
        response = client.get(server.url + "/")
    assert response.status_code == 401


def test_a_certificate_without_spiffe_id_gives_its_dns_names(pki: Any, tls_server: Any) -> None:
    server = tls_server()
    plain = pki.ca.issue("dns-only-client", None, server=False, dns=("client.example.test",), ips=())
    with _client(pki, plain) as client:
        body = client.get(server.url + "/").json()
    assert body["peer_id"] is None
    assert body["source"] == "tls"
    assert body["dns"] == ["client.example.test"]


def test_allow_lists_over_real_tls(pki: Any, tls_server: Any) -> None:
    allowed = tls_server(allowed_trust_domains=["example.test"])
    refused = tls_server(allowed_ids=["spiffe://example.test/ns/tests/sa/someone-else"])
    with _client(pki) as client:
        assert client.get(allowed.url + "/").status_code == 200
        response = client.get(refused.url + "/")
    assert response.status_code == 403
    assert response.json()["title"] == "Forbidden"


def test_plain_http_has_no_tls_extension(pki: Any) -> None:
    with serve(Echo(), http_protocol=TLSH11Protocol) as server, httpx.Client(trust_env=False) as client:
        body = client.get(server.url + "/").json()
    assert body["tls"] is None


def test_serve_keeps_counting_connections_with_another_protocol(pki: Any, tls_server: Any) -> None:
    server = tls_server()
    with _client(pki) as client:
        client.get(server.url + "/")
        assert server.open_connections == 1
    server.wait_for_connections(0)
    assert server.connections_opened == 1


# -- the protocol classes -------------------------------------------------------------------------------------
def test_protocol_classes() -> None:
    assert issubclass(TLSH11Protocol, H11Protocol)
    assert TLSH11Protocol.__name__ == "TLSH11Protocol"
    assert TLSH11Protocol.__module__ == "connectivity.security.uvicorn"
    custom = tls_protocol(H11Protocol)
    assert custom.__name__ == "TLSH11Protocol"
    assert custom is not TLSH11Protocol


def test_uvicorn_finds_the_protocol_by_its_import_string() -> None:
    config = uvicorn.Config(Echo(), http="connectivity.security.uvicorn:TLSH11Protocol", log_config=None)
    config.load()
    assert config.http_protocol_class is TLSH11Protocol


def test_httptools_protocol_is_built_on_first_use() -> None:
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    protocol = tls_uvicorn.TLSHttpToolsProtocol
    assert issubclass(protocol, HttpToolsProtocol)
    assert tls_uvicorn.TLSHttpToolsProtocol is protocol


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="TLSNothing"):
        _ = tls_uvicorn.TLSNothing
