"""Parsers for the headers a TLS-terminating proxy uses to tell the service who its client was.

* Envoy's ``x-forwarded-client-cert`` (XFCC): a comma-separated list of *elements*, one per proxy the request
  passed, oldest first; each element is a semicolon-separated list of ``key=value`` pairs. Keys are
  case-insensitive (``By``, ``Hash``, ``Cert``, ``Chain``, ``Subject``, ``URI``, ``DNS``); a value containing
  ``,``, ``;`` or ``=`` is double-quoted, with ``\\"`` for a double quote inside. ``By``, ``URI`` and ``DNS``
  repeat when a certificate has several such names; ``Cert`` and ``Chain`` are URL-encoded PEM.
* RFC 9440 ``Client-Cert``: one Structured Field (RFC 8941) Item, a Byte Sequence holding the client certificate's
  DER (``:base64:``), possibly with parameters; and ``Client-Cert-Chain``: a List of such Byte Sequences (the
  intermediates, leaf excluded).

Theory of operation: each parser is a pure function of the header text, a handful of compiled regular expressions
matched left to right, with no backtracking across elements. A value that breaks the grammar raises
:class:`MalformedHeaderError`, whose message says which rule was broken and never repeats the header. What a
header *means* (which element to believe, whether the proxy is trusted) is decided by
:class:`~connectivity.middleware.peer_identity.PeerIdentityMiddleware`, not here.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote

from connectivity.errors import MalformedHeaderError

__all__ = [
    "CLIENT_CERT",
    "CLIENT_CERT_CHAIN",
    "MAX_HEADER_LENGTH",
    "XFCC",
    "MalformedHeaderError",
    "XfccElement",
    "parse_client_cert",
    "parse_client_cert_chain",
    "parse_xfcc",
]

XFCC = "x-forwarded-client-cert"
"""Envoy's header name (lower case, as in ASGI scopes)."""
CLIENT_CERT = "client-cert"
"""RFC 9440's header for the client certificate."""
CLIENT_CERT_CHAIN = "client-cert-chain"
"""RFC 9440's header for the client certificate's chain (leaf excluded)."""

MAX_HEADER_LENGTH = 32_768
"""Longest header value parsed, in characters: room for a URL-encoded chain of several certificates, far below
what a flood would need (Envoy's default limit for all request headers together is 60 KiB)."""

# A key (an RFC 9110 token), "=", then a quoted value (escapes allowed) or a bare one (no quote, comma or
# semicolon), then optional whitespace and a separator or the end. The quoted form is the unrolled loop
# [^"\\]*(\\.[^"\\]*)*: linear, whatever the input.
_XFCC_PAIR = re.compile(
    r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)="
    r'(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^",;]*))'
    r"[ \t]*([,;]|\Z)",
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_SINGULAR = ("hash", "cert", "chain", "subject")

# RFC 8941 section 4.2.7 (Byte Sequence) and 3.1.2 (Parameters; the bare items of RFC 8941 and RFC 9651).
_BYTE_SEQUENCE = re.compile(r":([A-Za-z0-9+/]*=*):")
_PARAMETER = re.compile(
    r";[ ]*[a-z*][a-z0-9_.*-]*"
    r"(?:=(?:-?[0-9]{1,15}(?:\.[0-9]{1,3})?"  # integer, decimal
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'  # string
    r"|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*"  # token
    r"|:[A-Za-z0-9+/=]*:"  # byte sequence
    r"|\?[01]"  # boolean
    r"|@-?[0-9]{1,15}"  # date (RFC 9651)
    r"))?"
)
_LIST_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One XFCC element: what one proxy says about the client certificate it received.

    Attributes:
        by: The URI SANs of that proxy's own certificate (``By``).
        hash: The SHA-256 of the client certificate, hex (``Hash``).
        cert: The client certificate, PEM, URL-decoded (``Cert``).
        chain: The client certificate chain, leaf included, PEM, URL-decoded (``Chain``).
        subject: The client certificate's subject (``Subject``).
        uri: The client certificate's URI SANs (``URI``; an empty ``URI=`` is left out).
        dns: The client certificate's DNS SANs (``DNS``).

    .. versionadded:: 0.1
    """

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def _too_long(header: str, value: str, max_length: int) -> None:
    if len(value) > max_length:
        raise MalformedHeaderError(header, f"is longer than {max_length} characters")


def _element(pairs: list[tuple[str, str]], number: int) -> XfccElement:
    by: list[str] = []
    uri: list[str] = []
    dns: list[str] = []
    single: dict[str, str] = {}
    for key, value in pairs:
        if key == "uri":
            if value:
                uri.append(value)
        elif key == "dns":
            if value:
                dns.append(value)
        elif key == "by":
            if value:
                by.append(value)
        elif key in _SINGULAR:
            if key in single:
                raise MalformedHeaderError(XFCC, f"element {number} has more than one {key.capitalize()}")
            single[key] = value
        # Other keys are ignored: a newer proxy may add some.
    try:
        cert = unquote(single["cert"], errors="strict") if "cert" in single else None
        chain = unquote(single["chain"], errors="strict") if "chain" in single else None
    except UnicodeDecodeError:
        raise MalformedHeaderError(
            XFCC, f"element {number} has a Cert or Chain that is not URL-encoded text"
        ) from None
    return XfccElement(
        by=tuple(by),
        hash=single.get("hash"),
        cert=cert,
        chain=chain,
        subject=single.get("subject"),
        uri=tuple(uri),
        dns=tuple(dns),
    )


def parse_xfcc(value: str, *, max_length: int = MAX_HEADER_LENGTH) -> list[XfccElement]:
    """Parse an ``x-forwarded-client-cert`` value (several header lines joined with ``,``) into its elements.

    The *last* element was added by the proxy nearest to this service: it describes the certificate of that
    proxy's own client.

    Args:
        value: The header value.
        max_length: Longer values are rejected unread.

    Returns:
        The elements, oldest first (never empty).

    Raises:
        MalformedHeaderError: Too long, empty, a pair without ``=`` or with a bad key, an unterminated or
            misplaced double quote, an empty element, ``Hash``/``Cert``/``Chain``/``Subject`` given twice in one
            element, or a ``Cert``/``Chain`` that does not URL-decode to text.

    .. versionadded:: 0.1
    """
    _too_long(XFCC, value, max_length)
    if not value.strip(" \t"):
        raise MalformedHeaderError(XFCC, "is empty")
    elements: list[XfccElement] = []
    pairs: list[tuple[str, str]] = []
    position, end = 0, len(value)
    while True:
        match = _XFCC_PAIR.match(value, position)
        if match is None:
            raise MalformedHeaderError(
                XFCC,
                f'element {len(elements) + 1}, pair {len(pairs) + 1} is not key=value or key="quoted value"',
            )
        key, quoted, bare, separator = match.groups()
        if quoted is not None:
            text = _ESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
        else:
            text = bare.rstrip(" \t")
        pairs.append((key.lower(), text))
        position = match.end()
        if separator == ";":
            continue
        elements.append(_element(pairs, len(elements) + 1))
        pairs = []
        if not separator:  # the end
            return elements
        if position == end:
            raise MalformedHeaderError(XFCC, "ends with a comma")


def _base64(header: str, text: str) -> bytes:
    padded = text.rstrip("=")
    if len(text) - len(padded) > 2:
        raise MalformedHeaderError(header, "has a byte sequence with too much padding")
    padded += "=" * (-len(padded) % 4)  # RFC 8941: parsers should not fail on missing padding
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedHeaderError(header, "has a byte sequence that is not valid base64") from None


def _item(header: str, value: str, position: int) -> tuple[bytes, int]:
    """A Byte Sequence item with its parameters at ``position``; returns the bytes and where the item ends."""
    match = _BYTE_SEQUENCE.match(value, position)
    if match is None:
        raise MalformedHeaderError(header, "is not a structured-field byte sequence (:base64:)")
    data = _base64(header, match.group(1))
    position = match.end()
    while position < len(value) and value[position] == ";":
        parameter = _PARAMETER.match(value, position)
        if parameter is None:
            raise MalformedHeaderError(header, "has a malformed parameter")
        position = parameter.end()
    return data, position


def parse_client_cert(value: str, *, max_length: int = MAX_HEADER_LENGTH) -> bytes:
    """The DER certificate in an RFC 9440 ``Client-Cert`` value (a Structured Field Byte Sequence Item).

    Parameters are allowed and ignored, as RFC 8941 says of unknown ones. The certificate itself is not parsed.

    Raises:
        MalformedHeaderError: Too long, not one byte sequence (e.g. the field was sent twice, or is a token), a
            character outside the base64 alphabet, or a malformed parameter.

    .. versionadded:: 0.1
    """
    _too_long(CLIENT_CERT, value, max_length)
    text = value.strip(" ")
    data, position = _item(CLIENT_CERT, text, 0)
    if position != len(text):
        raise MalformedHeaderError(CLIENT_CERT, "has data after the byte sequence")
    if not data:
        raise MalformedHeaderError(CLIENT_CERT, "is an empty byte sequence")
    return data


def parse_client_cert_chain(value: str, *, max_length: int = MAX_HEADER_LENGTH) -> list[bytes]:
    """The DER certificates in an RFC 9440 ``Client-Cert-Chain`` value (a Structured Field List of Byte
    Sequences; several header lines joined with ``,``), in the order sent.

    Raises:
        MalformedHeaderError: Too long, a member that is not a byte sequence, or a malformed separator.

    .. versionadded:: 0.1
    """
    _too_long(CLIENT_CERT_CHAIN, value, max_length)
    text = value.strip(" ")
    chain: list[bytes] = []
    position = 0
    while position < len(text):
        data, position = _item(CLIENT_CERT_CHAIN, text, position)
        chain.append(data)
        if position == len(text):
            break
        separator = _LIST_SEPARATOR.match(text, position)
        if separator is None or separator.end() == len(text):
            raise MalformedHeaderError(CLIENT_CERT_CHAIN, "is not a comma-separated list of byte sequences")
        position = separator.end()
    return chain
