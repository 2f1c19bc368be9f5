"""Reading identities out of X.509 certificates: SPIFFE ids (X509-SVID rules), DNS names, validity.

An X509-SVID leaf (SPIFFE X509-SVID specification, section 4) carries exactly one URI SAN, which is the SPIFFE id;
it is not a CA (basic constraints ``cA=false``); and it has the ``digitalSignature`` key usage (``keyCertSign`` and
``cRLSign`` must be absent). :func:`svid_id` checks those rules and returns the id.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from connectivity.errors import CertificateError
from connectivity.security.spiffe import SpiffeId

__all__ = ["dns_names", "load_certificates", "not_valid", "svid_id", "uri_names"]


def load_certificates(data: bytes | str, *, source: str = "<PEM string>") -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (or one DER certificate), leaf first as given.

    Args:
        data: PEM text or bytes, or DER bytes.
        source: Where it came from (a file name), for the error.

    Raises:
        CertificateError: Nothing parseable was found.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            certificates = x509.load_pem_x509_certificates(raw)
        else:
            certificates = [x509.load_der_x509_certificate(raw)]
    except ValueError as error:
        raise CertificateError(source, "<certificate data>", f"is not a readable certificate ({error})") from None
    if not certificates:
        raise CertificateError(source, "<certificate data>", "contains no certificate")
    return certificates


def _san(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def uri_names(certificate: x509.Certificate) -> list[str]:
    """The certificate's URI SANs, as written."""
    san = _san(certificate)
    return [] if san is None else list(san.get_values_for_type(x509.UniformResourceIdentifier))


def dns_names(certificate: x509.Certificate) -> list[str]:
    """The certificate's DNS SANs, as written."""
    san = _san(certificate)
    return [] if san is None else list(san.get_values_for_type(x509.DNSName))


def svid_id(certificate: x509.Certificate, *, source: str = "certificate") -> SpiffeId:
    """The SPIFFE id of an X509-SVID leaf, after checking the leaf rules.

    Args:
        certificate: The leaf certificate.
        source: Where it came from, for the error (a file name, ``"peer certificate"``).

    Raises:
        CertificateError: Not exactly one URI SAN, a CA certificate, no ``digitalSignature`` key usage, or
            ``keyCertSign``/``cRLSign`` set.
        InvalidSpiffeIdError: The URI SAN is not a valid SPIFFE id.
    """
    uris = uri_names(certificate)
    if len(uris) != 1:
        raise CertificateError(source, uris, f"an X509-SVID has exactly one URI SAN, this one has {len(uris)}")
    extensions = certificate.extensions
    try:
        constraints = extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        constraints = None
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise CertificateError(source, uris[0], "an X509-SVID leaf must not be a CA certificate")
    try:
        usage = extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        usage = None
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        raise CertificateError(source, uris[0], "an X509-SVID leaf must have the digitalSignature key usage")
    if usage.key_cert_sign or usage.crl_sign:
        raise CertificateError(source, uris[0], "an X509-SVID leaf must not have keyCertSign or cRLSign")
    return SpiffeId.parse(uris[0], field=f"{source} URI SAN")


def not_valid(certificate: x509.Certificate, now: datetime.datetime | None = None) -> str | None:
    """Why the certificate is not valid at ``now`` (default: the current time), or ``None`` when it is."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < certificate.not_valid_before_utc:
        return f"not valid before {certificate.not_valid_before_utc.isoformat()}"
    if now > certificate.not_valid_after_utc:
        return f"expired at {certificate.not_valid_after_utc.isoformat()}"
    return None
