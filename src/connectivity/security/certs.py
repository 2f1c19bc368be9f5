"""Certificate and key files, created and issued for development and tests.

Reading and validating them for TLS contexts is :mod:`connectivity.security.material`.

Issuing (what ``connectivity certs`` does): :func:`create_ca` makes a CA for one trust domain and :func:`issue`
signs service certificates with a SPIFFE id (URI SAN) and DNS/IP SANs, following the X509-SVID rules and passing
OpenSSL's ``VERIFY_X509_STRICT`` checks. :func:`write_pem` replaces files atomically (a rotating reader never sees
half a file), private keys with mode 0600. For development, tests and demos; production certificates come from
SPIRE, cert-manager or your PKI.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectivity.errors import CertificateError, ConfigError, InvalidSpiffeIdError
from connectivity.security.material import MaterialInput, Password, _certificates, _matching_key
from connectivity.security.spiffe import SpiffeId, validate_trust_domain
from connectivity.security.x509 import uri_names

__all__ = [
    "KEY_TYPES",
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyType",
    "create_ca",
    "issue",
    "load_ca",
    "write_pem",
]


KeyType: TypeAlias = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
"""Key algorithms :func:`create_ca` and :func:`issue` generate."""

KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
_DNS = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SKEW = datetime.timedelta(minutes=5)  # back-date not_before a little: clocks are never quite in step
PrivateKey: TypeAlias = "ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey"
_PEM, _DER = serialization.Encoding.PEM, serialization.Encoding.DER


def write_pem(
    path: str | os.PathLike[str], data: bytes, *, private: bool = False, overwrite: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same directory, then a rename), mode 0600
    when ``private`` (keys), else 0644.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: The directory is not writable.
    """
    target = os.fspath(path)
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "file exists (overwrite it explicitly)", target)
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(target)), prefix=".connectivity-")
    try:
        with os.fdopen(fd, "wb") as file:  # mkstemp creates it 0600
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if not private:
            os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True, slots=True)
class _KeyPair:
    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)

    def cert_pem(self) -> bytes:
        """The certificate, PEM-encoded."""
        return self.certificate.public_bytes(_PEM)

    def key_pem(self, password: str | bytes | None = None) -> bytes:
        """The private key as PKCS #8 PEM, encrypted when ``password`` is given."""
        secret = password.encode() if isinstance(password, str) else password
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
        )
        return self.key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, encryption)

    def write(
        self,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        *,
        password: str | bytes | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write the key (0600), then the certificate (0644), each atomically (:func:`write_pem`). A rotating
        reader that sees the new key before the certificate rejects the pair, and accepts it once both are new."""
        write_pem(key, self.key_pem(password), private=True, overwrite=overwrite)
        write_pem(cert, self.cert_pem(), overwrite=overwrite)


@dataclass(frozen=True, slots=True)
class CertificateAuthority(_KeyPair):
    """A CA for one trust domain, from :func:`create_ca` or :func:`load_ca`: ``certificate`` (self-signed, with
    the URI SAN ``spiffe://<trust_domain>``), ``key`` (left out of ``repr``). ``cert_pem()`` is the bundle peers
    trust; ``issue(**options)`` is :func:`issue` with this CA.

    .. versionadded:: 0.1
    """

    trust_domain: str = ""

    def issue(self, **options: Any) -> IssuedCertificate:
        """Sign a service certificate: :func:`issue` with this CA."""
        return issue(self, **options)


@dataclass(frozen=True, slots=True)
class IssuedCertificate(_KeyPair):
    """A service certificate from :func:`issue`: ``certificate``, ``key`` (left out of ``repr``), the ``issuer``'s
    certificate and the ``spiffe_id`` (if any). It is signed by the root directly: there is no chain to add.

    .. versionadded:: 0.1
    """

    issuer: x509.Certificate | None = None
    spiffe_id: SpiffeId | None = None


def _generate(key_type: str, field: str) -> PrivateKey:
    if key_type not in KEY_TYPES:
        raise ConfigError(field, key_type, f"must be one of {', '.join(KEY_TYPES)}")
    kind, size = key_type.split("-")
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1() if size == "p256" else ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(size))


def _builder(
    subject: str, issuer: x509.Name | None, key: PrivateKey, start: datetime.datetime, end: datetime.datetime
) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64])])
    ca = issuer is None
    usage = dict.fromkeys(("content_commitment", "data_encipherment", "key_agreement", "encipher_only"), False)
    usage |= {"decipher_only": False, "key_encipherment": isinstance(key, rsa.RSAPrivateKey) and not ca}
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _validity(
    not_before: datetime.datetime | None, valid_for: datetime.timedelta, field: str
) -> tuple[datetime.datetime, datetime.datetime]:
    if not isinstance(valid_for, datetime.timedelta) or valid_for <= datetime.timedelta(0):
        raise ConfigError(f"{field}.valid_for", valid_for, "must be a positive datetime.timedelta")
    if not_before is None:
        not_before = datetime.datetime.now(datetime.timezone.utc) - _SKEW
    elif not isinstance(not_before, datetime.datetime) or not_before.tzinfo is None:
        raise ConfigError(f"{field}.not_before", not_before, "must be a timezone-aware datetime")
    return not_before, not_before + valid_for


def create_ca(
    trust_domain: str,
    *,
    valid_for: datetime.timedelta = datetime.timedelta(days=365),
    not_before: datetime.datetime | None = None,
    key_type: KeyType = "ec-p256",
    name: str | None = None,
) -> CertificateAuthority:
    """Create a self-signed CA for ``trust_domain`` (URI SAN ``spiffe://<trust domain>``, as SPIRE's CAs have).

    Args:
        trust_domain: e.g. ``"bank.example"``.
        valid_for: Lifetime (default one year).
        not_before: Start of validity (default: five minutes ago).
        key_type: One of :data:`KEY_TYPES`.
        name: The subject's common name (default ``"<trust domain> development CA"``).

    Raises:
        InvalidSpiffeIdError: The trust domain is invalid. ``ConfigError``: another argument is.

    .. versionadded:: 0.1
    """
    validate_trust_domain(trust_domain, field="create_ca.trust_domain")
    start, end = _validity(not_before, valid_for, "create_ca")
    key = _generate(key_type, "create_ca.key_type")
    certificate = (
        _builder(name or f"{trust_domain} development CA", None, key, start, end)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key, trust_domain)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError("issue.ip_addresses", address, "must be an IPv4 or IPv6 address") from None


def _names(
    ca: CertificateAuthority, spiffe_id: object, dns: Iterable[str], ips: Iterable[str]
) -> tuple[SpiffeId | None, list[x509.GeneralName]]:
    names: list[x509.GeneralName] = []
    parsed = None if spiffe_id is None else SpiffeId.parse(str(spiffe_id), field="issue.spiffe_id")
    if parsed is not None:
        if not parsed.member_of(ca.trust_domain):
            raise ConfigError(
                "issue.spiffe_id", str(parsed), f"must be in the CA's trust domain {ca.trust_domain!r}"
            )
        names.append(x509.UniformResourceIdentifier(str(parsed)))
    for name in [dns] if isinstance(dns, str) else dns:
        normal = name.lower().rstrip(".") if isinstance(name, str) else ""
        if not _DNS.match(normal):
            raise ConfigError("issue.dns_names", name, "must be a DNS name (a leading '*.' is allowed)")
        names.append(x509.DNSName(normal))
    names += [x509.IPAddress(_ip(address)) for address in ([ips] if isinstance(ips, str) else ips)]
    if not names:
        raise ConfigError("issue.spiffe_id", None, "a certificate needs a SPIFFE id, a DNS name or an IP address")
    return parsed, names


def issue(
    ca: CertificateAuthority,
    *,
    spiffe_id: str | SpiffeId | None = None,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    valid_for: datetime.timedelta = datetime.timedelta(days=30),
    not_before: datetime.datetime | None = None,
    server: bool = True,
    client: bool = True,
    key_type: KeyType = "ec-p256",
    name: str | None = None,
) -> IssuedCertificate:
    """Issue a service certificate signed by ``ca``; with a SPIFFE id it is an X509-SVID.

    Args:
        ca: The issuing CA.
        spiffe_id: The workload's SPIFFE id, in the CA's trust domain: the only URI SAN.
        dns_names: DNS SANs (``"*.orders.internal"`` allowed).
        ip_addresses: IP address SANs (e.g. ``"127.0.0.1"`` for loopback tests).
        valid_for: Lifetime (default 30 days), cut short at the CA's expiry.
        not_before: Start of validity (default: five minutes ago). In the past, with a short ``valid_for``, it
            makes an expired certificate for tests.
        server: Allow TLS server use (extended key usage ``serverAuth``).
        client: Allow TLS client use (``clientAuth``).
        key_type: One of :data:`KEY_TYPES`.
        name: The subject's common name (default: the first DNS name, or the SPIFFE id's last segment).

    Raises:
        ConfigError: No SAN, a SPIFFE id outside the CA's trust domain, a malformed name or address, neither
            ``server`` nor ``client``, or a bad lifetime. ``InvalidSpiffeIdError``: the SPIFFE id is invalid.

    .. versionadded:: 0.1
    """
    if not isinstance(ca, CertificateAuthority):
        raise ConfigError("issue.ca", ca, "must be a CertificateAuthority (create_ca() or load_ca())")
    parsed, names = _names(ca, spiffe_id, dns_names, ip_addresses)
    if not (server or client):
        raise ConfigError("issue.server", server, "a certificate must allow server use, client use or both")
    start, end = _validity(not_before, valid_for, "issue")
    key = _generate(key_type, "issue.key_type")
    dns = [entry.value for entry in names if isinstance(entry, x509.DNSName)]
    common = name or (
        dns[0] if dns else (parsed.path.rsplit("/", 1)[-1] if parsed and parsed.path else "workload")
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    certificate = (
        _builder(common, ca.certificate.subject, key, start, min(end, ca.certificate.not_valid_after_utc))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, key, ca.certificate, parsed)


def load_ca(
    cert: str | os.PathLike[str] | bytes, key: str | os.PathLike[str] | bytes, *, password: Password | None = None
) -> CertificateAuthority:
    """Read a CA written by :func:`create_ca` (its trust domain comes from its ``spiffe://`` URI SAN).

    Raises:
        CertificateError: A file is unreadable, the key does not match, or the certificate is not a CA with a
            ``spiffe://<trust domain>`` URI SAN.

    .. versionadded:: 0.1
    """
    cert_input, key_input = (
        MaterialInput.of(cert, field="load_ca.cert"),
        MaterialInput.of(key, field="load_ca.key"),
    )
    certificate = _certificates(cert_input)[0]
    _, private = _matching_key(cert_input, key_input, certificate, password)
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        trust_domain = SpiffeId.parse(uri_names(certificate)[0]).trust_domain
    except (x509.ExtensionNotFound, IndexError, InvalidSpiffeIdError):
        is_ca, trust_domain = False, ""
    if not is_ca or not isinstance(private, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(
            cert_input.option, cert_input.label, "is not a CA certificate with a spiffe:// URI SAN"
        )
    return CertificateAuthority(certificate, private, trust_domain)
