"""A throwaway PKI for the security tests: CAs per trust domain and leaf certificates (``cryptography``)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Callable, Iterator
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


# --- For the TLS, rotation and certs tests: material made with connectivity.security.certs, and a bare TLS server.


@dataclass(frozen=True)
class DevLeaf:
    """A leaf issued by :mod:`connectivity.security.certs`, written to files."""

    cert: str
    key: str
    serial: int
    spiffe_id: str | None


class DevPKI:
    """CAs (one per trust domain) and leaves made with ``connectivity.security.certs``, as files in a directory."""

    def __init__(self, directory: Path) -> None:
        from connectivity.security.certs import CertificateAuthority, create_ca

        self.directory = directory
        self._create_ca = create_ca
        self.authorities: dict[str, CertificateAuthority] = {}

    def ca(self, trust_domain: str = "example.test", *, stem: str | None = None) -> str:
        """The CA bundle file of ``trust_domain`` (created on first use; ``stem`` makes another CA for it)."""
        key = stem or trust_domain
        if key not in self.authorities:
            self.authorities[key] = self._create_ca(trust_domain, name=f"{key} test CA")
            self.authorities[key].write(self.directory / f"{key}-ca.pem", self.directory / f"{key}-ca.key")
        return str(self.directory / f"{key}-ca.pem")

    def leaf(
        self,
        stem: str,
        spiffe_id: str | None = None,
        *,
        ca: str = "example.test",
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        **options: object,
    ) -> DevLeaf:
        """Issue a leaf from CA ``ca`` (a trust domain or a ``stem`` given to :meth:`ca`) and write (or replace,
        atomically) ``<stem>.pem`` and ``<stem>.key``."""
        if ca not in self.authorities:
            self.ca(ca)
        authority = self.authorities[ca]
        issued = authority.issue(spiffe_id=spiffe_id, dns_names=dns, ip_addresses=ips, **options)
        cert, key = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        issued.write(cert, key, overwrite=True)
        return DevLeaf(str(cert), str(key), issued.certificate.serial_number, spiffe_id)


@pytest.fixture
def dev_pki(tmp_path: Path) -> DevPKI:
    """A fresh :class:`DevPKI` in the test's ``tmp_path``."""
    return DevPKI(tmp_path)


@dataclass
class Accepted:
    """One connection a :class:`TLSListener` accepted."""

    handshake_error: str | None = None
    received: bytes = b""
    version: str | None = None
    alpn: str | None = None
    peer_serial: int | None = None


class TLSListener:
    """A bare TLS server on 127.0.0.1 in a thread: it completes each handshake and records, per connection, every
    byte received after it until the client closes (nothing is ever answered), the handshake error if any, the TLS
    version and ALPN protocol negotiated, and the client certificate's serial."""

    def __init__(self, context: ssl.SSLContext) -> None:
        import socket
        import threading

        self.context = context
        self.accepted: list[Accepted] = []
        self._done = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, name="tls-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            record = Accepted()
            conn.settimeout(5.0)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    record.version, record.alpn = tls.version(), tls.selected_alpn_protocol()
                    der = tls.getpeercert(binary_form=True)
                    record.peer_serial = None if der is None else x509.load_der_x509_certificate(der).serial_number
                    while chunk := tls.recv(65536):
                        record.received += chunk
            except (OSError, ValueError) as error:
                if record.version is None:
                    record.handshake_error = f"{type(error).__name__}: {error}"
            finally:
                conn.close()
            with self._done:
                self.accepted.append(record)
                self._done.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[Accepted]:
        """Block until ``count`` connections have been closed; returns their records."""
        with self._done:
            if not self._done.wait_for(lambda: len(self.accepted) >= count, timeout):
                raise TimeoutError(f"only {len(self.accepted)} of {count} connections finished")
            return list(self.accepted)

    def close(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone does not, on Linux)
        self._sock.close()
        self._thread.join(5.0)


@pytest.fixture
def tls_listener() -> Iterator[Callable[[ssl.SSLContext], TLSListener]]:
    """Start :class:`TLSListener` servers with a given server context; all are closed after the test."""
    started: list[TLSListener] = []

    def start(context: ssl.SSLContext) -> TLSListener:
        listener = TLSListener(context)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.close()
