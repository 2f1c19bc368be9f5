"""Reading TLS material: certificates, keys and CA bundles, validated together at one moment.

A :class:`MaterialSource` says where each piece comes from (a file, or inline PEM) and :func:`load_material` reads
it all at once and validates it: the key matches the certificate, the certificate is valid now, it is an X509-SVID
when one is required, the CA bundles parse. Contexts are loaded from the resulting :class:`Material`, never from
the files again, so a file replaced between validation and loading cannot slip in unchecked. Errors are
:class:`~connectivity.errors.CertificateError` naming the file; key material and passphrases never appear in a
message or a ``repr``.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectivity.errors import CertificateError, ConfigError, InvalidSpiffeIdError
from connectivity.security.spiffe import SpiffeId
from connectivity.security.x509 import load_certificates, not_valid, svid_id

__all__ = ["PEM_STRING", "Material", "MaterialInput", "MaterialSource", "Password", "load_material"]

Password: TypeAlias = "str | bytes | Callable[[], str | bytes]"
"""A private key's passphrase, or a function returning it (called at each load, e.g. to ask a secret store)."""


PEM_STRING = "<PEM string>"
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:ENCRYPTED |RSA |EC )?PRIVATE KEY)-----\r?\n.*?-----END \1-----", re.DOTALL
)
_Signature: TypeAlias = "tuple[tuple[int, ...] | None, ...]"
_PEM, _DER = serialization.Encoding.PEM, serialization.Encoding.DER


@dataclass(frozen=True, slots=True)
class MaterialInput:
    """One piece of material: a file (re-read on rotation) or inline PEM (``data``, never shown).

    ``option`` is the configuration field it came from, for errors (``"MTLS.cert"``).
    """

    option: str
    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, value: object, *, field: str) -> MaterialInput:
        """PEM text or bytes are inline; another string or a path is a file name.

        Raises:
            ConfigError: Anything else, or empty.
        """
        if isinstance(value, bytes) and value.strip():
            return cls(field, data=value)
        if isinstance(value, str) and "-----BEGIN" in value:
            return cls(field, data=value.encode("ascii", "replace"))
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            return cls(field, path=str(os.fspath(value)))
        # Maybe a secret handed over by mistake: show its type only.
        raise ConfigError(field, f"<{type(value).__name__}>", "must be a file name, PEM text or PEM bytes")

    @property
    def label(self) -> str:
        """The file name, or ``"<PEM string>"``: what messages show."""
        return self.path if self.path is not None else PEM_STRING

    def read(self) -> bytes:
        """The bytes, now. Raises :class:`CertificateError` naming the file and the OS reason."""
        if self.data is not None or self.path is None:
            return self.data or b""
        try:
            with open(self.path, "rb") as file:
                return file.read()
        except OSError as error:
            raise CertificateError(self.option, self.path, f"cannot be read ({error.strerror or error})") from None

    def signature(self) -> tuple[int, ...] | None:
        """What changes when the file is rewritten or replaced (``None``: inline or missing)."""
        try:
            stat = os.stat(self.path) if self.path is not None else None
        except OSError:
            return None
        return None if stat is None else (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)


@dataclass(frozen=True, slots=True)
class MaterialSource:
    """Everything one TLS configuration loads: ``cert`` and ``key`` (both ``None`` for a client without a
    certificate), CA bundles as ``((None, bundle),)`` or one ``(trust_domain, bundle)`` each, the key's password,
    and whether the leaf must be an X509-SVID."""

    cert: MaterialInput | None
    key: MaterialInput | None
    ca: tuple[tuple[str | None, MaterialInput], ...]
    password: Password | None = field(default=None, repr=False)
    svid: bool = False

    @property
    def cert_label(self) -> str | None:
        """The certificate's file name (or ``"<PEM string>"``)."""
        return None if self.cert is None else self.cert.label

    def inputs(self) -> tuple[MaterialInput, ...]:
        """Every input, certificate first."""
        return tuple(piece for piece in (self.cert, self.key, *(b for _, b in self.ca)) if piece is not None)

    @property
    def files(self) -> tuple[str, ...]:
        """The files, watched for rotation."""
        return tuple(piece.path for piece in self.inputs() if piece.path is not None)

    def signature(self) -> _Signature:
        """The ``stat`` signatures of every input, in order."""
        return tuple(piece.signature() for piece in self.inputs())


@dataclass(frozen=True, slots=True)
class Material:
    """Validated TLS material as loaded at one moment: the leaf, its chain re-encoded as PEM, the key's PEM block
    as read (still encrypted if it was) and its resolved password, the leaf's SPIFFE id, the CAs as PEM and as DER
    per trust domain (``None``: one bundle for all), a generation number (one more per rotation), the POSIX time
    of the load and the files' ``stat`` signatures. Contexts are built from these bytes."""

    leaf: x509.Certificate | None
    chain_pem: bytes | None = field(repr=False)
    key_pem: bytes | None = field(repr=False)
    password: bytes | None = field(repr=False)
    spiffe_id: SpiffeId | None
    ca_pem: str = field(repr=False)
    anchors: Mapping[str | None, frozenset[bytes]] = field(repr=False)
    generation: int = 1
    loaded_at: float = 0.0
    signature: _Signature = field(default=(), repr=False)

    def same_bytes(self, other: Material) -> bool:
        """Whether ``other`` holds exactly the same certificate, key and CAs."""
        return (self.chain_pem, self.key_pem, self.ca_pem) == (other.chain_pem, other.key_pem, other.ca_pem)


def _password(password: Password | None, piece: MaterialInput) -> bytes | None:
    if callable(password):
        try:
            password = password()
        except Exception as error:
            rule = f"its password function raised {type(error).__name__}"
            raise CertificateError(piece.option, piece.label, rule) from None
    return password.encode("utf-8") if isinstance(password, str) else password


def _certificates(piece: MaterialInput) -> list[x509.Certificate]:
    raw = piece.read()
    try:
        return load_certificates(raw, source=piece.label)
    except CertificateError as error:
        raise CertificateError(piece.option, piece.label, error.rule) from None


def _spki(key: Any) -> bytes:
    encoded: bytes = key.public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return encoded


def _private_key(piece: MaterialInput, password: bytes | None) -> tuple[bytes, Any]:
    block = _KEY_BLOCK.search(piece.read())
    if block is None:
        raise CertificateError(piece.option, piece.label, "contains no PEM private key")
    try:
        return block.group(0), serialization.load_pem_private_key(block.group(0), password=password)
    except TypeError:
        rule = "is encrypted: a password is needed" if password is None else "is not encrypted: give no password"
    except ValueError:  # cryptography's message may quote parser state: say it in our own words
        rule = "is not a readable private key, or the password is wrong"
    except Exception:  # UnsupportedAlgorithm
        rule = "is a private key of an unsupported type"
    raise CertificateError(piece.option, piece.label, rule)


def _matching_key(
    cert: MaterialInput, key: MaterialInput, leaf: x509.Certificate, password: Password | None
) -> tuple[bytes, Any]:
    pem, private = _private_key(key, _password(password, key))
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        raise CertificateError(key.option, key.label, f"does not match the certificate in {cert.label}")
    return pem, private


def _spiffe_id(leaf: x509.Certificate, piece: MaterialInput, *, required: bool) -> SpiffeId | None:
    try:
        return svid_id(leaf, source=piece.label)
    except (CertificateError, InvalidSpiffeIdError) as error:
        if required:
            raise CertificateError(piece.option, piece.label, f"is not an X509-SVID: {error.rule}") from None
        return None


def load_material(source: MaterialSource, *, now: float, generation: int = 1) -> Material:
    """Read and validate everything ``source`` names, at one moment; ``now`` (POSIX time) judges validity.

    Raises:
        CertificateError: A file is unreadable or unparseable, the key does not match the certificate, the
            certificate is expired or not yet valid, or not an X509-SVID although one is required. The message
            names the file and the rule, never key material.
    """
    signature = source.signature()
    leaf = chain_pem = key_pem = spiffe_id = None
    if source.cert is not None and source.key is not None:
        chain = _certificates(source.cert)
        leaf = chain[0]
        key_pem, _ = _matching_key(source.cert, source.key, leaf, source.password)
        invalid = not_valid(leaf, datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
        if invalid is not None:
            raise CertificateError(source.cert.option, source.cert.label, f"the certificate is {invalid}")
        spiffe_id = _spiffe_id(leaf, source.cert, required=source.svid)
        chain_pem = b"".join(certificate.public_bytes(_PEM) for certificate in chain)
    bundles = [(domain, _certificates(bundle)) for domain, bundle in source.ca]
    return Material(
        leaf=leaf,
        chain_pem=chain_pem,
        key_pem=key_pem,
        password=None if source.key is None else _password(source.password, source.key),
        spiffe_id=spiffe_id,
        ca_pem="".join(ca.public_bytes(_PEM).decode("ascii") for _, authorities in bundles for ca in authorities),
        anchors={
            domain: frozenset(ca.public_bytes(_DER) for ca in authorities) for domain, authorities in bundles
        },
        generation=generation,
        loaded_at=now,
        signature=signature,
    )
