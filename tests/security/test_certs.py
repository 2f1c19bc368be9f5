"""Development certificates: ``connectivity.security.certs`` (create_ca, issue, load_ca, write_pem) and the
``connectivity certs`` command."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectivity.cli import main
from connectivity.errors import CertificateError, ConfigError, InvalidSpiffeIdError
from connectivity.security.certs import create_ca, issue, load_ca, write_pem
from connectivity.security.tls import MTLS
from connectivity.security.x509 import dns_names, svid_id, uri_names

ORDERS = "spiffe://bank.example/ns/prod/sa/orders"
DAY = datetime.timedelta(days=1)


def _extension(certificate: x509.Certificate, kind: type[Any]) -> Any:
    return certificate.extensions.get_extension_for_class(kind).value


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> ssl.SSLObject:
    """A complete TLS handshake between two in-memory SSL objects (no sockets); returns the client's."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(client_in, client_out, server_hostname=hostname)
    tls_server = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", tls_client), ("server", tls_server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return tls_client
    raise AssertionError("the handshake did not finish")


def test_create_ca_makes_a_spiffe_signing_certificate() -> None:
    authority = create_ca("bank.example")
    certificate = authority.certificate
    assert authority.trust_domain == "bank.example"
    assert _extension(certificate, x509.BasicConstraints).ca is True
    usage = _extension(certificate, x509.KeyUsage)
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, True)
    assert uri_names(certificate) == ["spiffe://bank.example"]
    assert certificate.issuer == certificate.subject
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == datetime.timedelta(days=365)
    assert "key=" not in repr(authority)  # the key is left out of repr


def test_issue_makes_an_x509_svid_with_sans_and_usages() -> None:
    authority = create_ca("bank.example")
    leaf = issue(authority, spiffe_id=ORDERS, dns_names=["orders.internal", "*.orders.svc"], ip_addresses=["::1"])
    certificate = leaf.certificate
    assert str(svid_id(certificate)) == ORDERS  # passes the X509-SVID leaf rules
    assert leaf.spiffe_id is not None
    assert str(leaf.spiffe_id) == ORDERS
    assert dns_names(certificate) == ["orders.internal", "*.orders.svc"]
    assert [
        str(ip) for ip in _extension(certificate, x509.SubjectAlternativeName).get_values_for_type(x509.IPAddress)
    ] == ["::1"]
    assert set(_extension(certificate, x509.ExtendedKeyUsage)) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert certificate.issuer == authority.certificate.subject
    certificate.verify_directly_issued_by(authority.certificate)
    assert leaf.issuer == authority.certificate
    client_only = issue(authority, spiffe_id=ORDERS, server=False)
    assert list(_extension(client_only.certificate, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_issued_certificates_pass_openssl_strict_checks() -> None:
    authority = create_ca("bank.example")
    leaf = issue(authority, spiffe_id=ORDERS, dns_names=["orders.internal"])
    mtls = MTLS(cert=leaf.cert_pem(), key=leaf.key_pem(), ca=authority.cert_pem())
    client = ssl.create_default_context(cadata=authority.cert_pem().decode())
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    tls = _handshake(client, mtls.server_context(require_client_cert=False), "orders.internal")
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    assert x509.load_der_x509_certificate(der).serial_number == leaf.certificate.serial_number


def test_key_types() -> None:
    authority = create_ca("bank.example", key_type="rsa-2048")
    assert isinstance(authority.key, rsa.RSAPrivateKey)
    leaf = issue(authority, spiffe_id=ORDERS, key_type="ec-p384")
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    assert leaf.key.curve.name == "secp384r1"
    rsa_leaf = issue(authority, spiffe_id=ORDERS, key_type="rsa-2048")
    assert _extension(rsa_leaf.certificate, x509.KeyUsage).key_encipherment is True
    assert str(svid_id(rsa_leaf.certificate)) == ORDERS


def test_validity_can_be_set_and_is_cut_at_the_ca_expiry() -> None:
    authority = create_ca("bank.example", valid_for=10 * DAY)
    long = issue(authority, spiffe_id=ORDERS, valid_for=365 * DAY)
    assert long.certificate.not_valid_after_utc == authority.certificate.not_valid_after_utc
    past = (datetime.datetime.now(datetime.timezone.utc) - 3 * DAY).replace(microsecond=0)
    expired = issue(authority, spiffe_id=ORDERS, not_before=past, valid_for=DAY)
    assert expired.certificate.not_valid_after_utc == past + DAY


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"spiffe_id": "spiffe://other.example/sa/x"}, "issue.spiffe_id"),
        ({}, "issue.spiffe_id"),
        ({"dns_names": ["bad name"]}, "issue.dns_names"),
        ({"dns_names": ["a.*.example"]}, "issue.dns_names"),
        ({"ip_addresses": ["300.1.1.1"]}, "issue.ip_addresses"),
        ({"spiffe_id": ORDERS, "valid_for": datetime.timedelta(0)}, "issue.valid_for"),
        ({"spiffe_id": ORDERS, "not_before": datetime.datetime(2030, 1, 1)}, "issue.not_before"),
        ({"spiffe_id": ORDERS, "key_type": "dsa-1024"}, "issue.key_type"),
        ({"spiffe_id": ORDERS, "server": False, "client": False}, "issue.server"),
    ],
)
def test_issue_rejects_bad_arguments(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        issue(create_ca("bank.example"), **options)
    assert raised.value.field == field


def test_invalid_ids_and_trust_domains() -> None:
    with pytest.raises(InvalidSpiffeIdError):
        create_ca("Bank.Example")
    with pytest.raises(InvalidSpiffeIdError):
        issue(create_ca("bank.example"), spiffe_id="spiffe://bank.example/a/../b")
    with pytest.raises(ConfigError):
        issue("not a CA", spiffe_id=ORDERS)  # type: ignore[arg-type]


def test_write_modes_atomic_replacement_and_overwrite_protection(tmp_path: Path) -> None:
    authority = create_ca("bank.example")
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    authority.write(cert, key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert).st_mode) == 0o644
    with pytest.raises(FileExistsError):
        authority.write(cert, key)
    inode = os.stat(key).st_ino
    create_ca("bank.example").write(cert, key, overwrite=True)
    assert os.stat(key).st_ino != inode  # replaced by a rename, never rewritten in place
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.key", "ca.pem"]  # no temporary left behind
    write_pem(tmp_path / "x.pem", b"data")
    assert (tmp_path / "x.pem").read_bytes() == b"data"


def test_load_ca_round_trip_and_errors(tmp_path: Path) -> None:
    authority = create_ca("bank.example")
    authority.write(tmp_path / "ca.pem", tmp_path / "ca.key", password="ca-passphrase")
    loaded = load_ca(tmp_path / "ca.pem", tmp_path / "ca.key", password="ca-passphrase")
    assert loaded.trust_domain == "bank.example"
    assert loaded.certificate == authority.certificate
    assert str(svid_id(loaded.issue(spiffe_id=ORDERS).certificate)) == ORDERS
    leaf = authority.issue(spiffe_id=ORDERS)
    leaf.write(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        load_ca(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    with pytest.raises(CertificateError, match="does not match"):
        load_ca(tmp_path / "ca.pem", tmp_path / "leaf.key")
    with pytest.raises(CertificateError, match="password"):
        load_ca(tmp_path / "ca.pem", tmp_path / "ca.key")


# --- The command ------------------------------------------------------------------------------------------------


def test_cli_creates_a_ca_and_issues_a_usable_svid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "certs")
    assert main(["certs", "ca", "bank.example", "-o", out]) == 0
    ca_pem, ca_key = tmp_path / "certs" / "bank.example-ca.pem", tmp_path / "certs" / "bank.example-ca.key"
    assert stat.S_IMODE(os.stat(ca_key).st_mode) == 0o600
    arguments = ["--spiffe-id", ORDERS, "--dns", "orders.internal", "--ip", "127.0.0.1", "-o", out]
    assert main(["certs", "issue", "orders", "--ca", str(ca_pem), *arguments]) == 0
    output = capsys.readouterr().out
    assert f"SPIFFE id:  {ORDERS} (X509-SVID)" in output
    assert "PRIVATE KEY" not in output
    leaf_cert, leaf_key = tmp_path / "certs" / "orders.pem", tmp_path / "certs" / "orders.key"
    assert stat.S_IMODE(os.stat(leaf_key).st_mode) == 0o600
    mtls = MTLS(cert=leaf_cert, key=leaf_key, ca=ca_pem, peer_trust_domain="bank.example")
    assert mtls.status().spiffe_id == ORDERS
    assert main(["certs", "show", str(leaf_cert), str(ca_pem)]) == 0
    shown = capsys.readouterr().out
    assert "DNS SANs:   orders.internal" in shown
    assert "IP SANs:    127.0.0.1" in shown
    assert "CA:         yes" in shown


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ca", "Bank_Example"], "TRUST_DOMAIN 'Bank_Example': trust domain characters are limited"),
        (["issue", "svc", "--ca", "{ca}", "--spiffe-id", "spiffe://other.example/x"], "must be in the CA's trust"),
        (["issue", "svc", "--ca", "{ca}", "--spiffe-id", "spiffe://bank.example/x/"], "trailing slash"),
        (["issue", "svc", "--ca", "{ca}"], "--spiffe-id: a certificate needs a SPIFFE id, a DNS name or an IP"),
        (["issue", "svc", "--ca", "{ca}", "--ip", "1.2.3"], "--ip '1.2.3': must be an IPv4 or IPv6 address"),
        (["issue", "svc", "--ca", "{missing}", "--dns", "a.b"], "cannot be read (No such file or directory)"),
        (["issue", "svc", "--ca", "{ca}", "--ca-key", "{ca}", "--dns", "a.b"], "contains no PEM private key"),
        (["ca", "bank.example", "-o", "{out}"], "exists; pass --force to replace it"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["certs", "ca", "bank.example", "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    values = {
        "ca": str(tmp_path / "bank.example-ca.pem"),
        "missing": str(tmp_path / "nope.pem"),
        "out": str(tmp_path),
    }
    assert main(["certs", *(argument.format(**values) for argument in arguments), "-o", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("connectivity certs: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize(
    "arguments",
    [
        ["certs"],
        ["certs", "issue", "svc"],
        ["certs", "ca", "bank.example", "--days", "0"],
        ["certs", "frobnicate"],
    ],
)
def test_cli_usage_errors_exit_2(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_force_replaces_files(tmp_path: Path) -> None:
    assert main(["certs", "ca", "bank.example", "-o", str(tmp_path)]) == 0
    before = (tmp_path / "bank.example-ca.pem").read_bytes()
    assert main(["certs", "ca", "bank.example", "-o", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "bank.example-ca.pem").read_bytes() != before
