"""Run each transport test three ways: httpx.Client, and httpx.AsyncClient on asyncio and on trio."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest

from connectivity._http import httpx

T = TypeVar("T")


class Sender:
    """Send requests through a transport with the client kind under test, reading the body."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    @property
    def is_async(self) -> bool:
        return self.mode != "sync"

    def __call__(
        self, transport: Any, method: str = "GET", url: str = "http://upstream/", **kwargs: Any
    ) -> httpx.Response:
        if self.mode == "sync":
            with httpx.Client(transport=transport) as client:
                response = client.request(method, url, **kwargs)
                response.read()
                return response

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.request(method, url, **kwargs)
                await response.aread()
                return response

        return anyio.run(main, backend=self.mode)

    def run(self, sync: Callable[[], T], async_: Callable[[], Awaitable[T]]) -> T:
        """Run the sync variant, or the async one on this mode's event loop."""
        if self.mode == "sync":
            return sync()
        return anyio.run(async_, backend=self.mode)


@pytest.fixture(params=["sync", "asyncio", "trio"])
def send(request: pytest.FixtureRequest) -> Sender:
    return Sender(str(request.param))


SERVER_ID = "spiffe://example.test/ns/tests/sa/upstream"
CLIENT_ID = "spiffe://example.test/ns/tests/sa/client"


class Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, each with a SPIFFE id."""

    def __init__(self, directory: Any) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)

        def name(common: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

        def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
            cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            return str(cert_path), str(key_path)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("connectivity test CA"))
            .issuer_name(name("connectivity test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca, _ = write("ca", ca, ca_key)

        def leaf(stem: str, spiffe_id: str, usage: x509.ObjectIdentifier) -> tuple[str, str]:
            key = ec.generate_private_key(ec.SECP256R1())
            names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
            if usage == ExtendedKeyUsageOID.SERVER_AUTH:
                names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            cert = (
                x509.CertificateBuilder()
                .subject_name(name(stem))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
                .sign(ca_key, hashes.SHA256())
            )
            return write(stem, cert, key)

        self.server_id, self.client_id = SERVER_ID, CLIENT_ID
        self.server_cert, self.server_key = leaf("server", SERVER_ID, ExtendedKeyUsageOID.SERVER_AUTH)
        self.client_cert, self.client_key = leaf("client", CLIENT_ID, ExtendedKeyUsageOID.CLIENT_AUTH)

    def server_context(self, *, require_client_cert: bool = False) -> Any:
        """A server-side context; with ``require_client_cert``, a handshake without a client certificate fails."""
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, *, with_cert: bool = False) -> Any:
        """A client-side context trusting the test CA, presenting the client certificate if asked."""
        import ssl

        context = ssl.create_default_context(cafile=self.ca)
        if with_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Test certificates made with ``cryptography`` once per session, in a temporary directory."""
    return Certificates(tmp_path_factory.mktemp("certificates"))


@contextlib.contextmanager
def raw_server(reply: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-thread TCP server that reads a request head and then does ``reply(connection)``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(5.0)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                    data += chunk
                reply(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(5.0)
        listener.close()
