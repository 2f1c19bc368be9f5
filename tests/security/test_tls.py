"""MTLS and its contexts: validation at load, context settings, and real mutual TLS on loopback (uvicorn).

Every handshake here is real: uvicorn serves through ``connectivity.testing.server.serve`` with a server context
that verifies client certificates against our CA, and httpx connects with ``verify=mtls.client_context()``.
"""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from connectivity.errors import CertificateError, ConfigError, InvalidSpiffeIdError, PeerIdentityError
from connectivity.security.certs import create_ca, issue
from connectivity.security.tls import MTLS, PeerHandshake, PeerVerificationError, TLSContext
from connectivity.testing import FakeClock
from connectivity.testing.server import RunningServer, serve
from connectivity.transports.aiohttp import AiohttpTransport
from connectivity.transports.http import HTTPTransport
from connectivity.transports.peer_identity import PeerIdentityTransport, find_peer_verification_error

SERVER_ID = "spiffe://example.test/ns/tests/sa/upstream"
CLIENT_ID = "spiffe://example.test/ns/tests/sa/client"
DAY = datetime.timedelta(days=1)


class Counting:
    """An ASGI app answering 200 "ok" and counting the requests that reached it."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server_mtls(dev_pki: Any) -> MTLS:
    leaf = dev_pki.leaf("server", SERVER_ID, client=False)
    return MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca())


@pytest.fixture
def client_mtls(dev_pki: Any) -> MTLS:
    leaf = dev_pki.leaf("client", CLIENT_ID, server=False, dns=(), ips=())
    return MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), peer_id=SERVER_ID)


@pytest.fixture
def upstream(server_mtls: MTLS) -> Iterator[RunningServer[Counting]]:
    with serve(Counting(), ssl_context=server_mtls.server_context()) as server:
        yield server


def _chain(error: BaseException) -> list[BaseException]:
    found, current = [], error
    while current is not None and len(found) < 20:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


# --- Validation at construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cert": "a.pem"}, "MTLS.key"),
        ({"key": "a.key"}, "MTLS.cert"),
        ({"ca": None}, "MTLS.ca"),
        ({"ca": {}}, "MTLS.ca"),
        ({"ca": 42}, "MTLS.ca"),
        ({"peer_dns_name": "*.example.test"}, "MTLS.peer_dns_name"),
        ({"peer_dns_name": "not a name"}, "MTLS.peer_dns_name"),
        ({"peer_id": 7}, "MTLS.peer_id"),
        ({"check_interval": -1}, "MTLS.check_interval"),
        ({"check_interval": float("nan")}, "MTLS.check_interval"),
        ({"check_hostname": "yes"}, "MTLS.check_hostname"),
        ({"svid": 1}, "MTLS.svid"),
        ({"verify_peer": "no"}, "MTLS.verify_peer"),
        ({"listener": 3}, "MTLS.listener"),
        ({"clock": object()}, "MTLS.clock"),
        ({"password": 1234}, "MTLS.password"),
    ],
)
def test_malformed_options_raise_config_error_naming_the_field(
    dev_pki: Any, options: dict[str, Any], field: str
) -> None:
    arguments: dict[str, Any] = {"ca": dev_pki.ca(), **options}
    with pytest.raises(ConfigError) as raised:
        MTLS(**arguments)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"peer_id": "spiffe://example.test/a/../b"}, "MTLS.peer_id"),
        ({"peer_id": ["spiffe://example.test/ok", "https://example.test/x"]}, "MTLS.peer_id"),
        ({"peer_trust_domain": "Example.Test"}, "MTLS.peer_trust_domain"),
        ({"ca": {"bad domain": "ca.pem"}}, "MTLS.ca"),
    ],
)
def test_invalid_spiffe_ids_and_trust_domains_are_rejected(
    dev_pki: Any, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidSpiffeIdError) as raised:
        MTLS(**{"ca": dev_pki.ca(), **options})
    assert raised.value.field == field


def test_expectations_accept_one_or_many_and_are_listed(dev_pki: Any) -> None:
    mtls = MTLS(
        ca=dev_pki.ca(),
        peer_id=["spiffe://example.test/b", "spiffe://example.test/a"],
        peer_trust_domain="partner.test",
        peer_dns_name="Orders.Internal.",
    )
    assert mtls.expected == (
        "spiffe://example.test/a",
        "spiffe://example.test/b",
        "spiffe://partner.test",
        "orders.internal",
    )
    assert mtls.check_hostname is False  # the identity replaces the host name


# --- Validation at load ------------------------------------------------------------------------------------------


def test_unreadable_files_raise_certificate_error_naming_the_file(dev_pki: Any, tmp_path: Any) -> None:
    leaf = dev_pki.leaf("svc", CLIENT_ID)
    missing = str(tmp_path / "missing.pem")
    for options, named in (
        ({"cert": missing, "key": leaf.key}, missing),
        ({"cert": leaf.cert, "key": missing}, missing),
        ({"cert": leaf.cert, "key": leaf.key, "ca": missing}, missing),
    ):
        with pytest.raises(CertificateError) as raised:
            MTLS(**{"ca": dev_pki.ca(), **options})
        assert named in str(raised.value)
        assert "cannot be read" in str(raised.value)


def test_garbage_certificate_and_key_files_are_rejected(dev_pki: Any, tmp_path: Any) -> None:
    leaf = dev_pki.leaf("svc", CLIENT_ID)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match=r"garbage\.pem"):
        MTLS(cert=str(garbage), key=leaf.key, ca=dev_pki.ca())
    with pytest.raises(CertificateError, match="contains no PEM private key"):
        MTLS(cert=leaf.cert, key=leaf.cert, ca=dev_pki.ca())


def test_key_that_does_not_match_the_certificate_is_rejected(dev_pki: Any) -> None:
    one, other = dev_pki.leaf("one", CLIENT_ID), dev_pki.leaf("other", CLIENT_ID)
    with pytest.raises(CertificateError) as raised:
        MTLS(cert=one.cert, key=other.key, ca=dev_pki.ca())
    assert raised.value.field == "MTLS.key"
    assert other.key in str(raised.value)
    assert f"does not match the certificate in {one.cert}" in str(raised.value)


def test_expired_and_not_yet_valid_certificates_are_rejected(dev_pki: Any) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = dev_pki.leaf("expired", CLIENT_ID, not_before=now - 3 * DAY, valid_for=DAY)
    future = dev_pki.leaf("future", CLIENT_ID, not_before=now + DAY, valid_for=DAY)
    with pytest.raises(CertificateError, match=r"the certificate is expired at"):
        MTLS(cert=expired.cert, key=expired.key, ca=dev_pki.ca())
    with pytest.raises(CertificateError, match=r"the certificate is not valid before"):
        MTLS(cert=future.cert, key=future.key, ca=dev_pki.ca())


def test_validity_is_judged_by_the_injected_clock(dev_pki: Any) -> None:
    leaf = dev_pki.leaf("svc", CLIENT_ID, valid_for=DAY)
    MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), clock=FakeClock(epoch=time.time()))
    with pytest.raises(CertificateError, match="expired"):
        MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), clock=FakeClock(epoch=time.time() + 3 * 86400))


def test_own_certificate_must_be_an_svid_when_spiffe_peers_are_expected(dev_pki: Any) -> None:
    plain = dev_pki.leaf("plain", None, dns=("svc.example.test",))
    MTLS(cert=plain.cert, key=plain.key, ca=dev_pki.ca())  # no SPIFFE expectation: fine
    with pytest.raises(CertificateError, match="is not an X509-SVID: an X509-SVID has exactly one URI SAN"):
        MTLS(cert=plain.cert, key=plain.key, ca=dev_pki.ca(), peer_id=SERVER_ID)
    with pytest.raises(CertificateError, match="not an X509-SVID"):
        MTLS(cert=plain.cert, key=plain.key, ca=dev_pki.ca(), peer_trust_domain="example.test")
    MTLS(cert=plain.cert, key=plain.key, ca=dev_pki.ca(), peer_id=SERVER_ID, svid=False)  # explicitly allowed


def test_encrypted_keys_need_the_right_password(dev_pki: Any, tmp_path: Any) -> None:
    authority = create_ca("example.test")
    leaf = issue(authority, spiffe_id=CLIENT_ID)
    cert, key = tmp_path / "enc.pem", tmp_path / "enc.key"
    leaf.write(cert, key, password="s3cret-passphrase")
    (tmp_path / "ca.pem").write_bytes(authority.cert_pem())
    ca = str(tmp_path / "ca.pem")
    with pytest.raises(CertificateError, match="is encrypted: a password is needed"):
        MTLS(cert=str(cert), key=str(key), ca=ca)
    with pytest.raises(CertificateError, match="or the password is wrong") as raised:
        MTLS(cert=str(cert), key=str(key), ca=ca, password="wrong-password")
    assert "wrong-password" not in str(raised.value)
    assert MTLS(cert=str(cert), key=str(key), ca=ca, password="s3cret-passphrase").status().serial == (
        leaf.certificate.serial_number
    )
    assert MTLS(cert=str(cert), key=str(key), ca=ca, password=lambda: b"s3cret-passphrase").client_context()


def test_no_key_material_or_password_in_repr_messages_or_status(tmp_path: Any) -> None:
    authority = create_ca("example.test")
    leaf = issue(authority, spiffe_id=CLIENT_ID)
    key_pem = leaf.key_pem(password="hunter2-passphrase").decode()
    mtls = MTLS(cert=leaf.cert_pem().decode(), key=key_pem, ca=authority.cert_pem(), password="hunter2-passphrase")
    secret_lines = [line for line in key_pem.splitlines() if "-----" not in line]
    shown = [repr(mtls), str(mtls.describe()), repr(mtls.status()), repr(mtls._watcher.material)]
    with pytest.raises(CertificateError) as raised:
        MTLS(cert=leaf.cert_pem(), key=key_pem, ca=authority.cert_pem(), password="wrong-passphrase")
    shown.append(str(raised.value))
    with pytest.raises(ConfigError) as type_error:
        MTLS(ca=authority.cert_pem(), password=12345678)
    shown.append(str(type_error.value))
    for text in shown:
        assert "hunter2" not in text
        assert "PRIVATE KEY" not in text
        assert "wrong-passphrase" not in text
        assert "12345678" not in text
        assert not any(line in text for line in secret_lines)
    assert repr(mtls) == "MTLS(cert='<PEM string>', key='<PEM string>', ca='<PEM string>')"


# --- Context settings --------------------------------------------------------------------------------------------


def test_client_context_settings(client_mtls: MTLS, dev_pki: Any) -> None:
    context = client_mtls.client_context()
    assert isinstance(context, ssl.SSLContext)
    assert isinstance(context, TLSContext)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False  # a SPIFFE id is expected: the SAN is checked instead
    assert context.expected == (SERVER_ID,)
    plain = MTLS(ca=dev_pki.ca())
    assert plain.client_context().check_hostname is True
    both = MTLS(ca=dev_pki.ca(), peer_id=SERVER_ID, check_hostname=True)
    assert both.client_context().check_hostname is True


def test_server_context_settings(server_mtls: MTLS, dev_pki: Any) -> None:
    required = server_mtls.server_context()
    assert required.verify_mode == ssl.CERT_REQUIRED
    assert required.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert server_mtls.server_context(require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ConfigError) as raised:
        MTLS(ca=dev_pki.ca()).server_context()
    assert raised.value.field == "MTLS.cert"
    with pytest.raises(ConfigError):
        server_mtls.server_context(require_client_cert="yes")  # type: ignore[arg-type]


# --- Mutual TLS on loopback --------------------------------------------------------------------------------------


def test_mutual_tls_with_a_sync_client(dev_pki: Any, client_mtls: MTLS) -> None:
    seen: list[PeerHandshake] = []
    leaf = dev_pki.leaf("server", SERVER_ID, client=False)
    server = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), verify_peer=seen.append)
    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        transport = PeerIdentityTransport(HTTPTransport(verify=client_mtls.client_context()), tls=client_mtls)
        with httpx.Client(transport=transport) as client:
            response = client.get(upstream.url)
    assert response.status_code == 200
    assert response.text == "ok"
    assert [str(handshake.peer.spiffe_id) for handshake in seen] == [CLIENT_ID]  # the server saw our identity
    assert seen[0].server_side is True


@pytest.mark.anyio
async def test_mutual_tls_with_an_async_client(upstream: RunningServer[Counting], client_mtls: MTLS) -> None:
    seen: list[PeerHandshake] = []
    leaf_mtls = MTLS(
        cert=client_mtls.cert, key=client_mtls.key, ca=client_mtls.ca, peer_id=SERVER_ID, verify_peer=seen.append
    )
    async with httpx.AsyncClient(verify=leaf_mtls.client_context()) as client:
        responses = [await client.get(upstream.url) for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert upstream.app.requests == 3
    assert [str(handshake.peer.spiffe_id) for handshake in seen] == [SERVER_ID]  # one kept-alive connection
    assert seen[0].server_hostname == "127.0.0.1"


def test_mutual_tls_over_aiohttp(upstream: RunningServer[Counting], client_mtls: MTLS) -> None:
    async def main() -> httpx.Response:
        transport = PeerIdentityTransport(AiohttpTransport(verify=client_mtls.client_context()))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(upstream.url)

    assert anyio.run(main, backend="asyncio").status_code == 200


def test_pem_strings_work_like_files(dev_pki: Any, upstream: RunningServer[Counting]) -> None:
    leaf = dev_pki.leaf("inline", CLIENT_ID, server=False)
    with open(leaf.cert) as cert, open(leaf.key) as key, open(dev_pki.ca(), "rb") as ca:
        mtls = MTLS(cert=cert.read(), key=key.read(), ca=ca.read(), peer_id=SERVER_ID)
    assert mtls.cert == "<PEM string>"
    with httpx.Client(verify=mtls.client_context()) as client:
        assert client.get(upstream.url).status_code == 200


# --- Rejections --------------------------------------------------------------------------------------------------


def test_server_from_another_ca_fails_verification(dev_pki: Any, upstream: RunningServer[Counting]) -> None:
    leaf = dev_pki.leaf("client", CLIENT_ID, server=False)
    mtls = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca("example.test", stem="other"), peer_id=SERVER_ID)
    transport = PeerIdentityTransport(HTTPTransport(verify=mtls.client_context()))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError) as raised:
        client.get(upstream.url)
    assert not isinstance(raised.value, PeerIdentityError)  # not an identity question: the chain is untrusted
    causes = [error for error in _chain(raised.value) if isinstance(error, ssl.SSLCertVerificationError)]
    assert not isinstance(causes[0], PeerVerificationError)
    # 20: unable to get local issuer certificate; 19: the server sent its root too (OpenSSL's auto-chaining).
    assert causes[0].verify_code in (19, 20)
    assert upstream.app.requests == 0


@pytest.mark.anyio
async def test_client_from_another_ca_is_refused_by_the_server(
    dev_pki: Any, upstream: RunningServer[Counting]
) -> None:
    dev_pki.ca("example.test", stem="rogue")
    rogue = dev_pki.leaf("rogue-client", CLIENT_ID, ca="rogue", server=False)
    mtls = MTLS(cert=rogue.cert, key=rogue.key, ca=dev_pki.ca(), peer_id=SERVER_ID)
    async with httpx.AsyncClient(verify=mtls.client_context()) as client:
        # TLS 1.3: the client's handshake completes before the server verifies the client's certificate, so the
        # refusal (the server drops the connection) surfaces when the client reads the response.
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
            await client.get(upstream.url)
    assert upstream.app.requests == 0


def test_client_without_certificate_needs_require_client_cert_false(dev_pki: Any) -> None:
    leaf = dev_pki.leaf("server", SERVER_ID, client=False)
    server = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca())
    anonymous = MTLS(ca=dev_pki.ca(), peer_id=SERVER_ID)
    with (
        serve(Counting(), ssl_context=server.server_context()) as strict,
        httpx.Client(verify=anonymous.client_context()) as client,
    ):
        with pytest.raises(httpx.TransportError):
            client.get(strict.url)
        assert strict.app.requests == 0
    with (
        serve(Counting(), ssl_context=server.server_context(require_client_cert=False)) as lenient,
        httpx.Client(verify=anonymous.client_context()) as client,
    ):
        assert client.get(lenient.url).status_code == 200


def test_expired_server_certificate_fails_verification(dev_pki: Any, client_mtls: MTLS) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = dev_pki.leaf("expired-server", SERVER_ID, not_before=now - 3 * DAY, valid_for=DAY)
    # MTLS refuses to load an expired certificate, so the misbehaving server is a plain ssl context.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(expired.cert, expired.key)
    with (
        serve(Counting(), ssl_context=server) as upstream,
        httpx.Client(
            transport=PeerIdentityTransport(HTTPTransport(verify=client_mtls.client_context()))
        ) as client,
    ):
        with pytest.raises(httpx.ConnectError) as raised:
            client.get(upstream.url)
        assert upstream.app.requests == 0
    errors = [error for error in _chain(raised.value) if isinstance(error, ssl.SSLCertVerificationError)]
    assert errors[0].verify_message == "certificate has expired"


def test_host_name_is_checked_without_identity_and_replaced_by_it_with_one(dev_pki: Any) -> None:
    # A server certificate for "localhost" only, reached at 127.0.0.1.
    leaf = dev_pki.leaf("named", SERVER_ID, ips=(), client=False)
    server = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca())
    client_leaf = dev_pki.leaf("client", CLIENT_ID, server=False)
    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        hostname_only = MTLS(cert=client_leaf.cert, key=client_leaf.key, ca=dev_pki.ca())
        with (
            httpx.Client(verify=hostname_only.client_context()) as client,
            pytest.raises(httpx.ConnectError) as raised,
        ):
            client.get(upstream.url)
        assert any("IP address mismatch" in str(error) for error in _chain(raised.value))
        spiffe = MTLS(cert=client_leaf.cert, key=client_leaf.key, ca=dev_pki.ca(), peer_id=SERVER_ID)
        with httpx.Client(verify=spiffe.client_context()) as client:
            assert client.get(upstream.url).status_code == 200
        both = MTLS(
            cert=client_leaf.cert, key=client_leaf.key, ca=dev_pki.ca(), peer_id=SERVER_ID, check_hostname=True
        )
        with httpx.Client(verify=both.client_context()) as client, pytest.raises(httpx.ConnectError):
            client.get(upstream.url)


def test_ca_bundle_per_trust_domain(dev_pki: Any) -> None:
    bank, partner = dev_pki.ca("bank.test"), dev_pki.ca("partner.test")
    client_leaf = dev_pki.leaf("client", "spiffe://bank.test/sa/client", ca="bank.test", server=False)
    genuine = dev_pki.leaf("partner-server", "spiffe://partner.test/sa/api", ca="partner.test", client=False)
    server_ca = {"bank.test": bank, "partner.test": partner}
    client = MTLS(
        cert=client_leaf.cert,
        key=client_leaf.key,
        ca=server_ca,
        peer_trust_domain=["partner.test", "bank.test"],
    )
    server = MTLS(cert=genuine.cert, key=genuine.key, ca=server_ca)
    with (
        serve(Counting(), ssl_context=server.server_context()) as upstream,
        httpx.Client(transport=PeerIdentityTransport(HTTPTransport(verify=client.client_context()))) as http,
    ):
        assert http.get(upstream.url).status_code == 200
    # The partner's CA signs a certificate claiming an identity of the bank's trust domain.
    impostor = _forge(dev_pki, "spiffe://bank.test/sa/payments")
    rogue = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue.load_cert_chain(impostor[0], impostor[1])
    with (
        serve(Counting(), ssl_context=rogue) as upstream,
        httpx.Client(transport=PeerIdentityTransport(HTTPTransport(verify=client.client_context()))) as http,
    ):
        with pytest.raises(PeerIdentityError) as raised:
            http.get(upstream.url)
        assert upstream.app.requests == 0
    assert "is not signed by a CA of its trust domain" in str(raised.value)
    assert raised.value.presented[0] == "spiffe://bank.test/sa/payments"
    assert set(raised.value.expected) == {"spiffe://bank.test", "spiffe://partner.test"}


def _forge(dev_pki: Any, spiffe_id: str) -> tuple[str, str]:
    """A certificate with a bank.test SPIFFE id signed by the partner.test CA (a shared bundle would trust it)."""
    authority = dev_pki.authorities["partner.test"]
    # issue() refuses an id outside the CA's trust domain; forge with a look-alike CA object.
    from connectivity.security.certs import CertificateAuthority

    lookalike = CertificateAuthority(authority.certificate, authority.key, "bank.test")
    leaf = issue(lookalike, spiffe_id=spiffe_id, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    cert, key = dev_pki.directory / "forged.pem", dev_pki.directory / "forged.key"
    leaf.write(cert, key)
    return str(cert), str(key)


def test_verify_peer_hook_can_reject_and_failures_fail_closed(
    dev_pki: Any, upstream: RunningServer[Counting]
) -> None:
    leaf = dev_pki.leaf("client", CLIENT_ID, server=False)

    def refuse(handshake: PeerHandshake) -> None:
        raise RuntimeError(f"not today, {handshake.peer.spiffe_id}")

    mtls = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), peer_id=SERVER_ID, verify_peer=refuse)
    with httpx.Client(verify=mtls.client_context()) as client, pytest.raises(httpx.ConnectError) as raised:
        client.get(upstream.url)
    mismatch = find_peer_verification_error(raised.value)
    assert isinstance(mismatch, PeerVerificationError)
    assert "RuntimeError: not today, " + SERVER_ID in str(mismatch)
    assert upstream.app.requests == 0
