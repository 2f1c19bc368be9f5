"""The ASGI TLS extension for uvicorn: the client certificate, in every request's scope, without a proxy.

uvicorn terminates TLS (``ssl_certfile=``, ``ssl_cert_reqs=ssl.CERT_REQUIRED``, ``ssl_ca_certs=``) but does not
tell the app which certificate the client presented. The protocol classes here fill in the ASGI TLS extension
(``scope["extensions"]["tls"]``, ASGI spec "TLS Extension") for every HTTP request on a TLS connection, so
:class:`~connectivity.middleware.peer_identity.PeerIdentityMiddleware` (source ``"tls"``) and the app can read it::

    uvicorn.run(app, http=TLSH11Protocol, ssl_certfile=..., ssl_keyfile=..., ssl_ca_certs="ca.pem",
                ssl_cert_reqs=ssl.CERT_REQUIRED)

or on the command line ``uvicorn app:app --http connectivity.security.uvicorn:TLSH11Protocol --ssl-... ``
(``TLSHttpToolsProtocol`` when httptools is installed).

Theory of operation: the TLS handshake is over when uvicorn's protocol hears of the connection
(``connection_made``), and the client certificate cannot change afterwards, so the extension is computed once per
connection from the transport's ``ssl_object``: the leaf from ``getpeercert(binary_form=True)`` (on Python 3.13+
the whole verified chain, from ``get_verified_chain()``), the subject in RFC 4514 form, the TLS version and the
IANA number of the cipher suite. Each request then gets a fresh copy of that dictionary, added to its scope by a
wrapper around the app; the protocol itself is otherwise uvicorn's, untouched. ``server_cert`` is ``None`` (the
``ssl`` module does not expose the local certificate) and ``client_cert_error`` is ``None``: Python's ``ssl``
aborts the handshake on a certificate that fails verification, so an unverified one never reaches the app.

WebSocket connections are handed by uvicorn to a separate protocol class and do not get the extension.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

# TLSHttpToolsProtocol is importable too (built on first access; it needs httptools), but is not in __all__ so
# that a star import works without httptools.
__all__ = ["TLS_EXTENSION", "TLSH11Protocol", "tls_extension", "tls_protocol"]

TLS_EXTENSION = "tls"
"""The key of the TLS extension in ``scope["extensions"]``."""

_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_CIPHER_IDS: dict[str, int] = {}  # OpenSSL cipher name -> IANA number; the mapping is global to OpenSSL

P = TypeVar("P")


def _cipher_suite(ssl_object: Any) -> int | None:
    cipher = ssl_object.cipher()
    if not cipher:
        return None
    name = cipher[0]
    number = _CIPHER_IDS.get(name)
    if number is None:
        for entry in ssl_object.context.get_ciphers():
            _CIPHER_IDS[entry["name"]] = entry["id"] & 0xFFFF  # OpenSSL ids are 0x0300XXXX
        number = _CIPHER_IDS.get(name)
    return number


def _chain(ssl_object: Any) -> list[bytes]:
    verified = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+: DER, leaf first
    if verified is not None:
        chain = [item for item in verified() if isinstance(item, bytes)]
        if chain:
            return chain
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI TLS extension for a connection whose handshake is complete.

    Args:
        ssl_object: The connection's ``ssl_object`` (``transport.get_extra_info("ssl_object")``).

    Returns:
        ``server_cert`` (``None``), ``client_cert_chain`` (PEM strings, leaf first; empty when the client sent no
        certificate), ``client_cert_name`` (RFC 4514 subject, or ``None``), ``client_cert_error`` (``None``),
        ``tls_version`` (e.g. ``0x0304``) and ``cipher_suite`` (the IANA number, e.g. ``0x1302``).

    .. versionadded:: 0.1
    """
    chain = _chain(ssl_object)
    name: str | None = None
    if chain:
        try:
            name = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
        except ValueError:  # verified by OpenSSL yet unreadable here: leave the name out, keep the chain
            name = None
    return {
        "server_cert": None,
        "client_cert_chain": tuple(ssl.DER_cert_to_PEM_cert(der) for der in chain),
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_suite(ssl_object),
    }


App = Callable[[Any, Any, Any], Awaitable[None]]


def _with_tls(app: App, extension: dict[str, Any]) -> App:
    async def app_with_tls(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            # A copy per request: the app may write into it; the next request on the connection must not see that.
            scope["extensions"] = {**(scope.get("extensions") or {}), TLS_EXTENSION: dict(extension)}
        await app(scope, receive, send)

    return app_with_tls


def _connection_made(base: Any) -> Callable[[Any, Any], None]:
    def connection_made(self: Any, transport: Any) -> None:
        base.connection_made(self, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # plain HTTP: no extension, as the ASGI spec says
            self.app = _with_tls(self.app, tls_extension(ssl_object))

    return connection_made


def tls_protocol(base: type[P], name: str | None = None) -> type[P]:
    """A subclass of a uvicorn HTTP protocol class (h11, httptools, ...) that adds the ASGI TLS extension.

    Any uvicorn protocol that reads ``self.app`` per request and sets up the connection in ``connection_made``
    works; that is all of uvicorn's HTTP/1.1 protocols.

    .. versionadded:: 0.1
    """
    namespace = {"connection_made": _connection_made(base), "__module__": __name__}
    return cast("type[P]", type(name or f"TLS{base.__name__}", (base,), namespace))


TLSH11Protocol: type[H11Protocol] = tls_protocol(H11Protocol, "TLSH11Protocol")
"""uvicorn's h11 protocol with the ASGI TLS extension: ``uvicorn.run(app, http=TLSH11Protocol, ssl_...=...)``.

.. versionadded:: 0.1
"""


def __getattr__(name: str) -> Any:
    # TLSHttpToolsProtocol is built on first use: httptools is an optional dependency of uvicorn.
    if name == "TLSHttpToolsProtocol":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        protocol = tls_protocol(HttpToolsProtocol, "TLSHttpToolsProtocol")
        globals()[name] = protocol
        return protocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
