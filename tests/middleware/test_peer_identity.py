"""PeerIdentityMiddleware: ordered sources (TLS extension, XFCC, Client-Cert), trusted proxies, sanitising,
require / allow-lists with 401/403 problem bodies, bad input never a 500, and the parse cache."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectivity.errors import ConfigError, InvalidSpiffeIdError
from connectivity.middleware import peer_identity as module
from connectivity.middleware.peer_identity import SOURCES, PeerIdentityMiddleware
from connectivity.middleware.ratelimit_keys import spiffe_id as spiffe_key
from connectivity.security.identity import PEER_ID_KEY, PEER_KEY, Peer, peer_of
from connectivity.security.spiffe import SpiffeId
from connectivity.testing.server import serve

pytestmark = pytest.mark.anyio

Call = Callable[..., Awaitable[list[dict[str, Any]]]]

CLIENT = "spiffe://example.test/ns/tests/sa/client"
PROXY = "10.0.0.5"
XFCC = b"x-forwarded-client-cert"


def _certificate(
    uris: tuple[str, ...] = (CLIENT,),
    dns: tuple[str, ...] = ("client.example.test",),
    *,
    ca: bool = False,
    digital_signature: bool = True,
) -> x509.Certificate:
    """A self-signed certificate: the middleware reads identities, the server (or proxy) verifies chains."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    names += [x509.DNSName(entry) for entry in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def leaf() -> x509.Certificate:
    return _certificate()


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


def _client_cert(certificate: x509.Certificate) -> bytes:
    return b":" + base64.b64encode(certificate.public_bytes(Encoding.DER)) + b":"


def _tls(certificate: x509.Certificate | None, **overrides: Any) -> dict[str, Any]:
    extension: dict[str, Any] = {
        "server_cert": None,
        "client_cert_chain": [_pem(certificate)] if certificate is not None else [],
        "client_cert_name": "CN=client",
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1302,
    }
    extension.update(overrides)
    return {"tls": extension}


class Recorder:
    """The app behind the middleware: remembers the scope it was called with."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    @property
    def scope(self) -> dict[str, Any]:
        assert self.scopes, "the app was not called"
        return self.scopes[-1]


@pytest.fixture
def app() -> Recorder:
    return Recorder()


def _status(sent: list[dict[str, Any]]) -> int:
    return int(sent[0]["status"])


def _problem(sent: list[dict[str, Any]]) -> dict[str, Any]:
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"cache-control"] == b"no-store"
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert int(headers[b"content-length"]) == len(body)
    return json.loads(body)  # type: ignore[no-any-return]


def _proxied(http_scope: Callable[..., dict[str, Any]], *headers: tuple[bytes, bytes], client: str = PROXY) -> Any:
    return http_scope(client=(client, 40000), headers=[(b"host", b"svc"), *headers])


# -- the TLS extension -----------------------------------------------------------------------------------------
async def test_tls_extension_gives_the_peer(app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any) -> None:
    sent = await asgi_call(PeerIdentityMiddleware(app), http_scope(extensions=_tls(leaf)))
    assert _status(sent) == 200
    assert app.scope[PEER_KEY] == Peer(SpiffeId.parse(CLIENT), ("client.example.test",), "tls")
    assert app.scope[PEER_ID_KEY] == CLIENT
    assert peer_of(app.scope) == app.scope[PEER_KEY]
    assert spiffe_key()(app.scope) == f"spiffe:{CLIENT}"  # what the rate-limit key reads


async def test_no_client_certificate_is_no_identity(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    await asgi_call(PeerIdentityMiddleware(app), http_scope(extensions=_tls(None)))
    assert PEER_KEY not in app.scope
    assert PEER_ID_KEY not in app.scope
    sent = await asgi_call(PeerIdentityMiddleware(app, require=True), http_scope(extensions=_tls(None)))
    assert _status(sent) == 401
    assert _problem(sent) == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "a verified peer identity (a SPIFFE id) is required",
    }


async def test_a_plain_http_request_has_no_identity(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    await asgi_call(PeerIdentityMiddleware(app), http_scope())
    assert PEER_KEY not in app.scope


async def test_a_server_reported_verification_error_is_no_identity(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    scope = http_scope(extensions=_tls(leaf, client_cert_error="certificate has expired"))
    await asgi_call(PeerIdentityMiddleware(app), scope)
    assert PEER_KEY not in app.scope
    sent = await asgi_call(PeerIdentityMiddleware(app, require=True), http_scope(extensions=scope["extensions"]))
    assert _status(sent) == 401


async def test_a_chain_given_as_any_iterable(app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any) -> None:
    await asgi_call(
        PeerIdentityMiddleware(app), http_scope(extensions=_tls(leaf, client_cert_chain=iter([_pem(leaf)])))
    )
    assert app.scope[PEER_ID_KEY] == CLIENT


async def test_a_certificate_without_uri_san_is_a_peer_without_spiffe_id(
    app: Recorder, asgi_call: Call, http_scope: Any
) -> None:
    certificate = _certificate(uris=(), dns=("a.example.test", "b.example.test"))
    await asgi_call(PeerIdentityMiddleware(app), http_scope(extensions=_tls(certificate)))
    assert app.scope[PEER_KEY] == Peer(None, ("a.example.test", "b.example.test"), "tls")
    assert PEER_ID_KEY not in app.scope
    sent = await asgi_call(PeerIdentityMiddleware(app, require=True), http_scope(extensions=_tls(certificate)))
    assert _status(sent) == 401


@pytest.mark.parametrize(
    "certificate",
    [
        pytest.param(lambda: _certificate(uris=("spiffe://Example.test/x",)), id="invalid SPIFFE id"),
        pytest.param(lambda: _certificate(uris=("https://example.test/x",)), id="URI SAN not SPIFFE"),
        pytest.param(lambda: _certificate(uris=(CLIENT, "spiffe://example.test/other")), id="two URI SANs"),
        pytest.param(lambda: _certificate(ca=True), id="a CA certificate"),
        pytest.param(lambda: _certificate(digital_signature=False), id="no digitalSignature"),
    ],
)
async def test_a_certificate_that_is_not_an_svid_is_no_identity(
    app: Recorder, certificate: Callable[[], x509.Certificate], asgi_call: Call, http_scope: Any
) -> None:
    extensions = _tls(certificate())
    sent = await asgi_call(PeerIdentityMiddleware(app), http_scope(extensions=extensions))
    assert _status(sent) == 200
    assert PEER_KEY not in app.scope
    sent = await asgi_call(PeerIdentityMiddleware(app, require=True), http_scope(extensions=extensions))
    assert _status(sent) == 401


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param(["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"], id="garbage PEM"),
        pytest.param(["hello"], id="not PEM"),
        pytest.param([b"bytes, not text"], id="bytes"),
        pytest.param("a string, not a list", id="not a list"),
    ],
)
async def test_an_unreadable_tls_certificate_is_no_identity(
    app: Recorder, chain: Any, asgi_call: Call, http_scope: Any
) -> None:
    extensions = {"tls": {"client_cert_chain": chain, "client_cert_error": None}}
    sent = await asgi_call(PeerIdentityMiddleware(app, require=True), http_scope(extensions=extensions))
    assert _status(sent) == 401


# -- headers from untrusted and trusted peers ---------------------------------------------------------------
async def test_identity_headers_from_an_untrusted_peer_are_removed_and_ignored(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc", "client-cert"), trusted_proxies=["10.0.0.0/24"])
    scope = _proxied(
        http_scope,
        (b"X-Forwarded-Client-Cert", f"Hash=ff;URI={CLIENT}".encode()),
        (b"client-cert", _client_cert(leaf)),
        (b"Client-Cert-Chain", _client_cert(leaf)),
        (b"accept", b"*/*"),
        client="192.0.2.7",
    )
    sent = await asgi_call(middleware, scope)
    assert _status(sent) == 200
    assert app.scope["headers"] == [(b"host", b"svc"), (b"accept", b"*/*")]
    assert PEER_KEY not in app.scope


async def test_identity_headers_are_removed_even_when_no_header_source_is_configured(
    app: Recorder, asgi_call: Call, http_scope: Any
) -> None:
    scope = _proxied(http_scope, (XFCC, f"URI={CLIENT}".encode()))
    await asgi_call(PeerIdentityMiddleware(app), scope)
    assert app.scope["headers"] == [(b"host", b"svc")]
    assert PEER_KEY not in app.scope


async def test_a_peer_without_an_address_is_untrusted(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=["0.0.0.0/0"])
    scope = http_scope(client=None, headers=[(XFCC, f"URI={CLIENT}".encode())])
    await asgi_call(middleware, scope)
    assert app.scope["headers"] == []
    assert PEER_KEY not in app.scope


async def test_xfcc_from_a_trusted_proxy_last_element_wins(
    app: Recorder, asgi_call: Call, http_scope: Any
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    value = (
        'By=spiffe://example.test/edge;Hash=aa;Subject="CN=x, O=y";URI=spiffe://example.test/ns/web/sa/frontend,'
        f"By=spiffe://example.test/ns/tests/sa/api;Hash=bb;URI={CLIENT};DNS=client.example.test"
    )
    await asgi_call(middleware, _proxied(http_scope, (XFCC, value.encode())))
    assert app.scope[PEER_KEY] == Peer(SpiffeId.parse(CLIENT), ("client.example.test",), "xfcc")
    assert app.scope[PEER_ID_KEY] == CLIENT
    assert (XFCC, value.encode()) in app.scope["headers"]  # from a trusted proxy, the app still sees it


async def test_xfcc_on_several_header_lines(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=["10.0.0.0/8"])
    scope = _proxied(http_scope, (XFCC, b"URI=spiffe://example.test/first"), (XFCC, f"URI={CLIENT}".encode()))
    await asgi_call(middleware, scope)
    assert app.scope[PEER_ID_KEY] == CLIENT


async def test_ipv4_mapped_proxy_address_is_trusted(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    await asgi_call(middleware, _proxied(http_scope, (XFCC, f"URI={CLIENT}".encode()), client=f"::ffff:{PROXY}"))
    assert app.scope[PEER_ID_KEY] == CLIENT


async def test_xfcc_with_only_the_certificate(app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    value = f'By=spiffe://example.test/api;Hash=ff;Cert="{quote(_pem(leaf), safe="")}"'
    await asgi_call(middleware, _proxied(http_scope, (XFCC, value.encode())))
    assert app.scope[PEER_KEY] == Peer(SpiffeId.parse(CLIENT), ("client.example.test",), "xfcc")


async def test_xfcc_without_uri_is_a_peer_without_spiffe_id(
    app: Recorder, asgi_call: Call, http_scope: Any
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    scope = _proxied(http_scope, (XFCC, b'Hash=ff;Subject="CN=c";URI=;DNS=c.example.test'))
    await asgi_call(middleware, scope)
    assert app.scope[PEER_KEY] == Peer(None, ("c.example.test",), "xfcc")
    assert PEER_ID_KEY not in app.scope


async def test_client_cert_from_a_trusted_proxy(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("client-cert",), trusted_proxies=[PROXY])
    await asgi_call(middleware, _proxied(http_scope, (b"client-cert", _client_cert(leaf))))
    assert app.scope[PEER_KEY] == Peer(SpiffeId.parse(CLIENT), ("client.example.test",), "client-cert")


async def test_a_source_that_is_not_configured_is_never_trusted(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("tls", "client-cert"), trusted_proxies=[PROXY])
    await asgi_call(middleware, _proxied(http_scope, (XFCC, f"URI={CLIENT}".encode())))
    assert PEER_KEY not in app.scope
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    scope = _proxied(http_scope, (b"client-cert", _client_cert(leaf)))
    scope["extensions"] = _tls(leaf)
    await asgi_call(middleware, scope)
    assert PEER_KEY not in app.scope


# -- order of sources --------------------------------------------------------------------------------------
async def test_the_first_present_source_decides(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    proxy_leaf = _certificate(uris=("spiffe://example.test/ns/mesh/sa/proxy",))
    other = "spiffe://example.test/ns/tests/sa/other"

    def scope() -> dict[str, Any]:
        result = _proxied(http_scope, (XFCC, f"URI={other}".encode()), (b"client-cert", _client_cert(leaf)))
        result["extensions"] = _tls(proxy_leaf)
        return result

    cases = [
        (("tls", "xfcc", "client-cert"), "spiffe://example.test/ns/mesh/sa/proxy", "tls"),
        (("xfcc", "tls"), other, "xfcc"),
        (("client-cert", "xfcc"), CLIENT, "client-cert"),
    ]
    for sources, expected, source in cases:
        await asgi_call(PeerIdentityMiddleware(app, sources=sources, trusted_proxies=[PROXY]), scope())
        assert app.scope[PEER_ID_KEY] == expected
        assert app.scope[PEER_KEY].source == source


async def test_an_absent_source_passes_to_the_next(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("tls", "client-cert", "xfcc"), trusted_proxies=[PROXY])
    scope = _proxied(http_scope, (XFCC, f"URI={CLIENT}".encode()))
    scope["extensions"] = _tls(None)  # TLS to the proxy, without a client certificate
    await asgi_call(middleware, scope)
    assert app.scope[PEER_KEY].source == "xfcc"


async def test_a_broken_source_does_not_fall_back_to_the_next(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc", "client-cert"), trusted_proxies=[PROXY])
    scope = _proxied(http_scope, (XFCC, b'URI="unterminated'), (b"client-cert", _client_cert(leaf)))
    await asgi_call(middleware, scope)
    assert PEER_KEY not in app.scope


# -- bad input from a trusted proxy: no identity, 401 only when required, never a 500 ----------------------------
_VALID_DER = _client_cert(_certificate())

BAD_HEADERS = [
    pytest.param(XFCC, b'URI="spiffe://example.test/x', id="xfcc unterminated quote"),
    pytest.param(XFCC, b'Subject="a"b;URI=spiffe://example.test/x', id="xfcc garbage after quote"),
    pytest.param(XFCC, b"URI=spiffe://example.test/x,", id="xfcc trailing comma"),
    pytest.param(XFCC, b"garbage", id="xfcc not key=value"),
    pytest.param(XFCC, b"URI=spiffe://Example.test/x", id="xfcc invalid SPIFFE id"),
    pytest.param(XFCC, b"URI=https://example.test/x", id="xfcc URI is not SPIFFE"),
    pytest.param(XFCC, b"URI=spiffe://example.test/a;URI=spiffe://example.test/b", id="xfcc two URIs"),
    pytest.param(XFCC, b"URI=spiffe://example.test/a/../b", id="xfcc dot segment"),
    pytest.param(XFCC, b"Hash=ff;Cert=%2D%2D%2Dnot-a-cert", id="xfcc Cert not a certificate"),
    pytest.param(XFCC, b"URI=spiffe://example.test/" + b"a" * 40_000, id="xfcc huge"),
    pytest.param(XFCC, b"URI=spiffe://example.test/\xff\xfe", id="xfcc non-ASCII"),
    pytest.param(b"client-cert", b":not base64!:", id="client-cert bad base64"),
    pytest.param(b"client-cert", b":" + base64.b64encode(b"not DER at all") + b":", id="client-cert not DER"),
    pytest.param(b"client-cert", _VALID_DER[:-10] + b":", id="client-cert truncated DER"),
    pytest.param(b"client-cert", _VALID_DER.replace(b":", b""), id="client-cert no colons"),
    pytest.param(b"client-cert", _VALID_DER + b", " + _VALID_DER, id="client-cert twice"),
    pytest.param(b"client-cert", b":" + b"A" * 40_000 + b":", id="client-cert huge"),
]


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
async def test_bad_identity_headers(
    name: bytes, value: bytes, app: Recorder, asgi_call: Call, http_scope: Any
) -> None:
    sources = ("xfcc", "client-cert")
    sent = await asgi_call(
        PeerIdentityMiddleware(app, sources=sources, trusted_proxies=[PROXY]), _proxied(http_scope, (name, value))
    )
    assert _status(sent) == 200
    assert PEER_KEY not in app.scope
    assert PEER_ID_KEY not in app.scope
    app.scopes.clear()
    strict = PeerIdentityMiddleware(app, sources=sources, trusted_proxies=[PROXY], require=True)
    sent = await asgi_call(strict, _proxied(http_scope, (name, value)))
    assert _status(sent) == 401
    assert _problem(sent)["status"] == 401
    assert not app.scopes


async def test_a_malformed_header_is_logged_without_its_value(
    app: Recorder, asgi_call: Call, http_scope: Any, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    await asgi_call(middleware, _proxied(http_scope, (XFCC, b'Subject="s3cr3t-marker')))
    assert "x-forwarded-client-cert" in caplog.text
    assert "s3cr3t-marker" not in caplog.text


# -- require and allow-lists ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "status"),
    [
        pytest.param({"allowed_ids": [CLIENT]}, 200, id="allowed id"),
        pytest.param({"allowed_ids": [SpiffeId.parse(CLIENT)]}, 200, id="allowed id object"),
        pytest.param({"allowed_ids": ["spiffe://example.test/ns/tests/sa/other"]}, 403, id="other id"),
        pytest.param({"allowed_trust_domains": ["example.test"]}, 200, id="allowed trust domain"),
        pytest.param({"allowed_trust_domains": ["bank.example"]}, 403, id="other trust domain"),
        pytest.param(
            {"allowed_trust_domains": ["bank.example"], "allowed_ids": [CLIENT]}, 200, id="either list allows"
        ),
        pytest.param({"require": True}, 200, id="required and present"),
    ],
)
async def test_allow_lists(
    options: dict[str, Any], status: int, app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any
) -> None:
    sent = await asgi_call(PeerIdentityMiddleware(app, **options), http_scope(extensions=_tls(leaf)))
    assert _status(sent) == status
    if status == 403:
        assert _problem(sent) == {
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": "the peer identity is not allowed",
        }
        assert not app.scopes


async def test_an_allow_list_implies_require(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, allowed_trust_domains=["example.test"])
    assert middleware.require
    sent = await asgi_call(middleware, http_scope())
    assert _status(sent) == 401


async def test_excluded_paths_are_not_enforced(app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any) -> None:
    middleware = PeerIdentityMiddleware(app, require=True, exclude_paths=["/healthz", "/public/"])
    assert _status(await asgi_call(middleware, http_scope(path="/healthz"))) == 200
    assert _status(await asgi_call(middleware, http_scope(path="/public/a/b"))) == 200
    assert _status(await asgi_call(middleware, http_scope(path="/healthz/x"))) == 401
    assert _status(await asgi_call(middleware, http_scope(path="/public"))) == 401
    await asgi_call(middleware, http_scope(path="/healthz", extensions=_tls(leaf)))
    assert app.scope[PEER_ID_KEY] == CLIENT  # still recorded where not enforced


async def test_keys_left_by_an_outer_layer_are_removed(app: Recorder, asgi_call: Call, http_scope: Any) -> None:
    forged = Peer(SpiffeId.parse("spiffe://example.test/forged"), (), "tls")
    await asgi_call(
        PeerIdentityMiddleware(app), http_scope(**{PEER_KEY: forged, PEER_ID_KEY: str(forged.spiffe_id)})
    )
    assert PEER_KEY not in app.scope
    assert PEER_ID_KEY not in app.scope


# -- other scope types ----------------------------------------------------------------------------------------
async def test_lifespan_passes_through(app: Recorder) -> None:
    middleware = PeerIdentityMiddleware(app, require=True)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await middleware(scope, _never_called, _never_called)
    assert app.scope is scope


async def _never_called(*args: Any) -> Any:
    raise AssertionError("not expected")


async def test_websocket_is_sanitised_identified_and_refused(app: Recorder, leaf: Any, http_scope: Any) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = PeerIdentityMiddleware(app, sources=("tls", "xfcc"), trusted_proxies=[PROXY], require=True)
    scope = http_scope(type="websocket", scheme="wss", client=("192.0.2.1", 1), headers=[(XFCC, b"URI=x")])
    await middleware(scope, _never_called, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    assert scope["headers"] == []
    scope = http_scope(type="websocket", scheme="wss", extensions=_tls(leaf))
    await middleware(scope, _never_called, send)
    assert app.scope[PEER_ID_KEY] == CLIENT


# -- cost: one parse per distinct value -------------------------------------------------------------------------
async def test_each_distinct_value_is_parsed_once(
    app: Recorder, leaf: Any, asgi_call: Call, http_scope: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for source, parser in list(module._PARSERS.items()):

        def counting(text: str, parser: Any = parser, source: str = source) -> Any:
            calls.append(source)
            return parser(text)

        monkeypatch.setitem(module._PARSERS, source, counting)
    middleware = PeerIdentityMiddleware(app, sources=SOURCES, trusted_proxies=[PROXY], cache_size=2)
    for _ in range(20):
        await asgi_call(middleware, http_scope(extensions=_tls(leaf)))
        await asgi_call(middleware, _proxied(http_scope, (XFCC, b"URI=garbage")))  # failures are cached too
    assert calls == ["tls", "xfcc"]
    await asgi_call(middleware, _proxied(http_scope, (b"client-cert", _client_cert(leaf))))
    assert len(middleware._cache) == 2  # bounded: the least recently used entry went
    await asgi_call(middleware, http_scope(extensions=_tls(leaf)))
    assert calls == ["tls", "xfcc", "client-cert", "tls"]


async def test_long_values_are_not_held(
    app: Recorder, asgi_call: Call, http_scope: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    middleware = PeerIdentityMiddleware(app, sources=("xfcc",), trusted_proxies=[PROXY])
    value = f"Hash=ff;Future={'a' * 20_000};URI={CLIENT}".encode()
    await asgi_call(middleware, _proxied(http_scope, (XFCC, value)))
    assert app.scope[PEER_ID_KEY] == CLIENT
    assert len(middleware._cache) == 0


# -- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "field"),
    [
        pytest.param({"sources": "tls"}, "sources", id="sources as one string"),
        pytest.param({"sources": []}, "sources", id="no source"),
        pytest.param({"sources": ["tls", "mtls"]}, "sources", id="unknown source"),
        pytest.param({"sources": ["tls", "tls"]}, "sources", id="source twice"),
        pytest.param({"sources": ["xfcc"]}, "trusted_proxies", id="header source without proxies"),
        pytest.param({"trusted_proxies": "10.0.0.1"}, "trusted_proxies", id="proxies as one string"),
        pytest.param({"trusted_proxies": ["10.0.0.300"]}, "trusted_proxies", id="bad proxy"),
        pytest.param({"require": "yes"}, "require", id="require not bool"),
        pytest.param({"allowed_ids": CLIENT}, "allowed_ids", id="ids as one string"),
        pytest.param({"allowed_ids": ["spiffe://example.test/a/"]}, "allowed_ids", id="invalid id"),
        pytest.param({"allowed_trust_domains": ["Example.test"]}, "allowed_trust_domains", id="invalid domain"),
        pytest.param({"allowed_trust_domains": "example.test"}, "allowed_trust_domains", id="domains as string"),
        pytest.param({"exclude_paths": ["healthz"]}, "exclude_paths", id="relative path"),
        pytest.param({"cache_size": 0}, "cache_size", id="no cache"),
    ],
)
def test_configuration_errors(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PeerIdentityMiddleware(Recorder(), **options)
    assert caught.value.field == f"PeerIdentityMiddleware.{field}"


def test_an_invalid_allowed_id_is_an_invalid_spiffe_id_error() -> None:
    with pytest.raises(InvalidSpiffeIdError):
        PeerIdentityMiddleware(Recorder(), allowed_ids=["spiffe://example.test/a/../b"])


def test_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="PeerIdentityMiddleware"):
        PeerIdentityMiddleware(None)  # type: ignore[arg-type]


def test_configuration_is_exposed() -> None:
    middleware = PeerIdentityMiddleware(
        Recorder(), sources=["xfcc", "tls"], trusted_proxies=["10.0.0.1", "fd00::/8"], allowed_ids=[CLIENT]
    )
    assert middleware.sources == ("xfcc", "tls")
    assert middleware.trusted_proxies == ("10.0.0.1/32", "fd00::/8")
    assert middleware.allowed_ids == frozenset({SpiffeId.parse(CLIENT)})
    assert middleware.require


# -- on a real server -------------------------------------------------------------------------------------------
async def _whoami(request: Request) -> JSONResponse:
    peer = peer_of(request)
    return JSONResponse(
        {
            "peer_id": request.scope.get(PEER_ID_KEY),
            "source": peer.source if peer else None,
            "xfcc": request.headers.get("x-forwarded-client-cert"),
        }
    )


@pytest.fixture
def served() -> Iterator[Callable[..., str]]:
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> str:
            app = PeerIdentityMiddleware(Starlette(routes=[Route("/", _whoami)]), **options)
            return stack.enter_context(serve(app, name="peer-identity")).url

        yield start


def test_real_server_strips_xfcc_from_an_untrusted_peer(served: Callable[..., str]) -> None:
    url = served(sources=("xfcc",), trusted_proxies=["10.0.0.0/8"], require=False)
    with httpx.Client(trust_env=False) as client:
        response = client.get(url, headers={"x-forwarded-client-cert": f"Hash=ff;URI={CLIENT}"})
    assert response.status_code == 200
    assert response.json() == {"peer_id": None, "source": None, "xfcc": None}


def test_real_server_believes_xfcc_from_a_trusted_proxy(served: Callable[..., str]) -> None:
    url = served(sources=("xfcc",), trusted_proxies=["127.0.0.1"], allowed_trust_domains=["example.test"])
    xfcc = f'By=spiffe://example.test/proxy;Hash=ff;Subject="CN=a, O=b";URI={CLIENT}'
    with httpx.Client(trust_env=False) as client:
        allowed = client.get(url, headers={"x-forwarded-client-cert": xfcc})
        refused = client.get(url, headers={"x-forwarded-client-cert": "URI=spiffe://bank.example/x"})
        malformed = client.get(url, headers={"x-forwarded-client-cert": 'URI="spiffe://example.test/x'})
    assert allowed.json() == {"peer_id": CLIENT, "source": "xfcc", "xfcc": xfcc}
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert malformed.status_code == 401
