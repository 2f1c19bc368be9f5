"""A throwaway PKI for the security tests: CAs per trust domain and leaf certificates (``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_ID = "spiffe://example.test/ns/tests/sa/upstream"
CLIENT_ID = "spiffe://example.test/ns/tests/sa/client"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Leaf:
    """A leaf certificate and its key, as files."""

    cert: str
    key: str
    spiffe_id: str | None


class Authority:
    """A CA (one per trust domain) that writes its certificate and the leaves it issues into ``directory``."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.directory = directory
        self.name = name
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(f"connectivity test CA {name}"))
            .issuer_name(_name(f"connectivity test CA {name}"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert = str(directory / f"{name}.pem")
        Path(self.cert).write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        stem: str,
        spiffe_id: str | None,
        *,
        server: bool = True,
        client: bool = True,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        valid_from: datetime.timedelta = datetime.timedelta(days=-1),
        valid_for: datetime.timedelta = datetime.timedelta(days=2),
    ) -> Leaf:
        """Issue a leaf certificate; ``valid_from``/``valid_for`` are relative to now (negative: in the past)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        if spiffe_id is not None:
            names.append(x509.UniformResourceIdentifier(spiffe_id))
        names += [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid_from)
            .not_valid_after(now + valid_from + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Leaf(str(cert), str(key_path), spiffe_id)


class PKI:
    """One trust domain's CA with a server and a client certificate, and a second, unrelated CA."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = Authority(directory, "ca")
        self.other_ca = Authority(directory, "other-ca")
        self.server = self.ca.issue("server", SERVER_ID, client=False)
        self.client = self.ca.issue("client", CLIENT_ID, server=False, dns=(), ips=())

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """A plain ``ssl`` server context (not built by the library): for tests of the client side."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server.cert, self.server.key)
        if require_client_cert:
            context.load_verify_locations(self.ca.cert)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, *, leaf: Leaf | None = None) -> ssl.SSLContext:
        """A plain ``ssl`` client context trusting the CA, presenting ``leaf`` (default: the client one)."""
        context = ssl.create_default_context(cafile=self.ca.cert)
        leaf = leaf or self.client
        context.load_cert_chain(leaf.cert, leaf.key)
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A PKI made once per session; issue more leaves with ``pki.ca.issue(...)`` into ``tmp_path`` if needed."""
    return PKI(tmp_path_factory.mktemp("pki"))
