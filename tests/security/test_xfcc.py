"""Parsers for Envoy's x-forwarded-client-cert and RFC 9440's Client-Cert / Client-Cert-Chain."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from connectivity.errors import ConnectivityError
from connectivity.security.xfcc import (
    MAX_HEADER_LENGTH,
    MalformedHeaderError,
    XfccElement,
    parse_client_cert,
    parse_client_cert_chain,
    parse_xfcc,
)

HASH = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"
MARKER = "s3cr3t-marker"  # put into malformed values: it must never show up in an error message


# -- XFCC: Envoy's documented examples ------------------------------------------------------------------------
def test_envoy_example_one_certificate() -> None:
    value = (
        f"By=http://frontend.lyft.com;Hash={HASH};"
        'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com'
    )
    assert parse_xfcc(value) == [
        XfccElement(
            by=("http://frontend.lyft.com",),
            hash=HASH,
            subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
            uri=("http://testclient.lyft.com",),
        )
    ]


def test_envoy_example_two_elements_oldest_first() -> None:
    value = (
        f"By=http://frontend.lyft.com;Hash={HASH};URI=http://testclient.lyft.com,"
        "By=http://backend.lyft.com;Hash=9ba6;URI=http://frontend.lyft.com"
    )
    first, last = parse_xfcc(value)
    assert first.uri == ("http://testclient.lyft.com",)
    assert last.by == ("http://backend.lyft.com",)
    assert last.uri == ("http://frontend.lyft.com",)


def test_envoy_example_uri_and_repeated_dns() -> None:
    value = f"By=http://frontend.lyft.com;Hash={HASH};URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com"
    (element,) = parse_xfcc(value)
    assert element.uri == ("http://testclient.lyft.com",)
    assert element.dns == ("lyft.com", "www.lyft.com")


def test_istio_sidecar_header() -> None:
    value = (
        'By=spiffe://cluster.local/ns/default/sa/api;Hash=abc;Subject="";'
        "URI=spiffe://cluster.local/ns/default/sa/sleep"
    )
    (element,) = parse_xfcc(value)
    assert element.subject == ""
    assert element.uri == ("spiffe://cluster.local/ns/default/sa/sleep",)


# -- XFCC: quoting, escaping, case, whitespace -----------------------------------------------------------------
def test_quoted_values_may_hold_separators_and_escaped_quotes() -> None:
    value = r'Subject="CN=a,O=b;c=\"d\"";URI="spiffe://td/x";DNS=a.example'
    (element,) = parse_xfcc(value)
    assert element.subject == 'CN=a,O=b;c="d"'
    assert element.uri == ("spiffe://td/x",)
    assert element.dns == ("a.example",)


def test_a_backslash_escapes_any_character_in_a_quoted_value() -> None:
    (element,) = parse_xfcc(r'Subject="a\\b\c"')
    assert element.subject == "a\\bc"


def test_keys_are_case_insensitive_values_are_not() -> None:
    (element,) = parse_xfcc("uri=spiffe://td/X;dns=A.example;BY=spiffe://td/proxy;hAsH=ff")
    assert element == XfccElement(by=("spiffe://td/proxy",), hash="ff", uri=("spiffe://td/X",), dns=("A.example",))


def test_whitespace_around_elements_and_pairs_is_ignored() -> None:
    first, second = parse_xfcc("URI=spiffe://td/a ; DNS=a.example ,  URI=spiffe://td/b")
    assert first.uri == ("spiffe://td/a",)
    assert first.dns == ("a.example",)
    assert second.uri == ("spiffe://td/b",)


def test_an_empty_uri_means_none_and_unknown_keys_are_ignored() -> None:
    (element,) = parse_xfcc("Hash=ff;URI=;DNS=a.example;Future=whatever")
    assert element.uri == ()
    assert element.dns == ("a.example",)


def test_cert_and_chain_are_url_decoded() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB+w==\n-----END CERTIFICATE-----\n"
    (element,) = parse_xfcc(f'Hash=ff;Cert="{quote(pem, safe="")}";Chain={quote(pem + pem, safe="")}')
    assert element.cert == pem
    assert element.chain == pem + pem


def test_an_equals_sign_in_a_bare_value_is_kept() -> None:
    (element,) = parse_xfcc("URI=spiffe://td/a?b=c")
    assert element.uri == ("spiffe://td/a?b=c",)


# -- XFCC: malformed ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("  ", id="blank"),
        pytest.param("By", id="no equals"),
        pytest.param(f"URI={MARKER};", id="trailing semicolon"),
        pytest.param(f"URI={MARKER},", id="trailing comma"),
        pytest.param(f",URI={MARKER}", id="leading comma"),
        pytest.param(f"URI={MARKER},,URI=b", id="empty element"),
        pytest.param(f"URI={MARKER};;DNS=b", id="empty pair"),
        pytest.param(f'Subject="{MARKER}', id="unterminated quote"),
        pytest.param(f'Subject="{MARKER}\\"', id="escaped closing quote"),
        pytest.param(f'Subject="{MARKER}"tail', id="text after closing quote"),
        pytest.param(f'URI=ab"{MARKER}"', id="quote inside bare value"),
        pytest.param(f'URI=ab"{MARKER}', id="stray quote"),
        pytest.param(f"Sub ject={MARKER}", id="space in key"),
        pytest.param(f"=spiffe://td/{MARKER}", id="empty key"),
        pytest.param(f"Hash={MARKER};Hash=ff", id="Hash twice"),
        pytest.param(f"Subject={MARKER};subject=b", id="Subject twice"),
        pytest.param(f"Cert=%FF%FE{MARKER}", id="Cert not UTF-8"),
        pytest.param(f"URI={MARKER}\x00;x", id="NUL in a value, then a pair without equals"),
    ],
)
def test_malformed_xfcc(value: str) -> None:
    with pytest.raises(MalformedHeaderError) as caught:
        parse_xfcc(value)
    assert caught.value.header == "x-forwarded-client-cert"
    assert MARKER not in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ConnectivityError)


def test_a_huge_xfcc_is_rejected_unread() -> None:
    value = "URI=spiffe://td/" + "a" * MAX_HEADER_LENGTH
    with pytest.raises(MalformedHeaderError, match="longer than"):
        parse_xfcc(value)
    assert parse_xfcc(value, max_length=len(value))[0].uri == (value[4:],)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('Subject="' + "\\" * 30_000, id="backslashes, unterminated"),
        pytest.param('Subject="' + '\\"' * 15_000, id="escaped quotes, unterminated"),
        pytest.param("URI=" + "a" * 30_000 + '"', id="long bare value then a quote"),
        pytest.param("URI=a;" * 5_000 + "x", id="many pairs then garbage"),
    ],
)
def test_pathological_xfcc_is_rejected(value: str) -> None:
    with pytest.raises(MalformedHeaderError):
        parse_xfcc(value)


# -- Client-Cert ---------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_client_cert_is_the_der_of_a_real_certificate(pki: Any) -> None:
    client = x509.load_pem_x509_certificate(Path(pki.client.cert).read_bytes())
    der = client.public_bytes(Encoding.DER)
    assert parse_client_cert(f":{_b64(der)}:") == der


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(":aGVsbG8=:", b"hello", id="padded"),
        pytest.param(":aGVsbG8:", b"hello", id="unpadded (RFC 8941: do not fail)"),
        pytest.param("  :aGVsbG8=:  ", b"hello", id="surrounding spaces"),
        pytest.param(':aGVsbG8=:;a=1;b="x y";c;d=?0;e=tok/en;f=:AA==:;g=1.5;*h=-2', b"hello", id="parameters"),
    ],
)
def test_client_cert_values(value: str, expected: bytes) -> None:
    assert parse_client_cert(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("aGVsbG8=", id="no colons"),
        pytest.param(":aGVsbG8=", id="no closing colon"),
        pytest.param("::", id="empty byte sequence"),
        pytest.param(":aGVs$G8=:", id="character outside base64"),
        pytest.param(":aGVsb-_=:", id="base64url alphabet"),
        pytest.param(":aGVsbG8gd:", id="length 1 mod 4"),
        pytest.param(":aG=VsbG8=:", id="padding inside"),
        pytest.param(":aGVsbG8=====:", id="too much padding"),
        pytest.param(":aGVsbG8=:, :aGVsbG8=:", id="sent twice"),
        pytest.param('"aGVsbG8="', id="a string"),
        pytest.param(":aGVsbG8=:;A=1", id="upper-case parameter key"),
        pytest.param(":aGVsbG8=:;a=", id="parameter without value"),
        pytest.param(':aGVsbG8=:;a="unterminated', id="unterminated string parameter"),
        pytest.param(":aGVsbG8=: trailing", id="trailing garbage"),
        pytest.param(":" + "A" * MAX_HEADER_LENGTH + ":", id="huge"),
    ],
)
def test_malformed_client_cert(value: str) -> None:
    with pytest.raises(MalformedHeaderError) as caught:
        parse_client_cert(value)
    assert caught.value.header == "client-cert"


# -- Client-Cert-Chain ---------------------------------------------------------------------------------------
def test_client_cert_chain_in_order() -> None:
    assert parse_client_cert_chain(":aGVsbG8=:, :d29ybGQ=:;p=1,:IQ==:") == [b"hello", b"world", b"!"]


def test_an_empty_client_cert_chain_is_an_empty_list() -> None:
    assert parse_client_cert_chain("") == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(":aGVsbG8=:,", id="trailing comma"),
        pytest.param(":aGVsbG8=:,,:IQ==:", id="empty member"),
        pytest.param(":aGVsbG8=: :IQ==:", id="no comma"),
        pytest.param("(:aGVsbG8=:)", id="inner list"),
        pytest.param(":aGVsbG8=:, token", id="a token member"),
        pytest.param(":aGVsbG8=:, :!!:", id="bad base64 member"),
    ],
)
def test_malformed_client_cert_chain(value: str) -> None:
    with pytest.raises(MalformedHeaderError) as caught:
        parse_client_cert_chain(value)
    assert caught.value.header == "client-cert-chain"
