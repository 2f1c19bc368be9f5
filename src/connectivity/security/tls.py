"""Mutual TLS: ``ssl.SSLContext`` objects that check the peer's SPIFFE identity and follow certificate rotation.

:class:`MTLS` is the configuration; its :meth:`~MTLS.client_context` and :meth:`~MTLS.server_context` build
:class:`TLSContext` objects, real ``ssl.SSLContext`` subclasses that httpx, aiohttp, uvicorn and asyncio accept.

Theory of operation:

* **Checked after the handshake, before the first byte.** httpcore (sync, anyio, trio), asyncio (aiohttp, uvicorn)
  and anyio open TLS with ``context.wrap_socket()``/``wrap_bio()`` and call ``do_handshake()``. Ours return
  subclasses whose ``do_handshake`` checks the peer's certificate as the handshake completes: a wrong peer fails
  the handshake with :class:`PeerVerificationError` (an ``ssl.SSLCertVerificationError``), so no request byte is
  written. httpx raises ``httpx.ConnectError``; ``PeerIdentityTransport`` makes it a ``PeerIdentityError``.
* **The SPIFFE identity replaces the host name.** With expected ids, trust domains or DNS names, the peer is
  authenticated by its certificate's SAN, not the URL's host (``check_hostname`` off), as in Istio and Envoy; any
  one expectation matching is enough, like Envoy's SAN matchers. Without them, OpenSSL checks the host name.
* **A CA bundle per trust domain**: the chain's trust anchor must be in the bundle of the peer's trust domain.
* **Rotation without a thread.** Before a new connection a context asks the shared
  :class:`~connectivity.security.rotation.CertificateWatcher` for the material (a clock read; a ``stat`` every
  ``check_interval`` s). New material gets a fresh inner context for new connections; established ones keep
  theirs, and a CA dropped from the bundle stops being trusted. Settings changed later on the outer context (ALPN,
  set by httpcore on each connect, ciphers, options, verify flags, keylog file, SNI callback) are carried over.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography import x509

from connectivity.errors import CertificateError, ConfigError, ConnectivityError, InvalidSpiffeIdError
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.security.identity import Peer
from connectivity.security.material import Material, MaterialInput, MaterialSource, Password
from connectivity.security.rotation import (
    CertificateStatus,
    CertificateWatcher,
    Listener,
    RotatingContext,
    load_chain,
)
from connectivity.security.spiffe import SpiffeId, validate_trust_domain
from connectivity.security.x509 import dns_names, svid_id, uri_names

__all__ = ["MTLS", "PeerHandshake", "PeerVerificationError", "TLSContext"]

_DNS_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$)({_DNS_LABEL}\.)*{_DNS_LABEL}$")


class PeerVerificationError(ssl.SSLCertVerificationError, ConnectivityError):
    """The TLS peer is not who was expected, or its chain ends at a CA outside its trust domain's bundle. Raised by
    ``do_handshake``, so nothing was sent.

    Attributes:
        expected: SPIFFE ids, ``spiffe://<trust domain>`` (any workload of it) and DNS names that were expected.
        presented: The peer certificate's SPIFFE id (or URI SANs) and DNS names.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, expected: tuple[str, ...] = (), presented: tuple[str, ...] = ()) -> None:
        super().__init__(1, message)
        self.expected, self.presented = expected, presented
        self.verify_code, self.verify_message = 50, message  # X509_V_ERR_APPLICATION_VERIFICATION
        self.library, self.reason = "connectivity", "PEER_IDENTITY_MISMATCH"

    def __str__(self) -> str:
        return self.verify_message


@dataclass(frozen=True, slots=True)
class PeerHandshake:
    """What a ``verify_peer`` hook of :class:`MTLS` receives after each handshake that passed the checks.

    Attributes:
        peer: The peer's SPIFFE id (when its certificate is an X509-SVID) and DNS names.
        certificate: The peer's leaf certificate.
        server_side: Whether this end is the server (the peer is a client).
        server_hostname: The host name the client connected to (client side).

    .. versionadded:: 0.1
    """

    peer: Peer
    certificate: x509.Certificate
    server_side: bool
    server_hostname: str | None


VerifyPeer: TypeAlias = "Callable[[PeerHandshake], object]"
Connection: TypeAlias = "ssl.SSLObject | ssl.SSLSocket"


def _dns_match(expected: str, presented: str) -> bool:
    presented = presented.lower().rstrip(".")
    if presented == expected:
        return True
    # A wildcard SAN stands for exactly one whole left-most label (RFC 6125 6.4.3).
    label, _, rest = expected.partition(".")
    return presented.startswith("*.") and bool(label and rest) and rest == presented[2:]


def _verified_chain(connection: Connection) -> list[bytes]:
    """The verified chain as DER, leaf first, trust anchor last (public from 3.13, private since 3.10)."""
    public = getattr(connection, "get_verified_chain", None)
    if public is not None:
        return list(public())
    private = getattr(getattr(connection, "_sslobj", None), "get_verified_chain", None)
    return [] if private is None else [certificate.public_bytes(2) for certificate in private()]  # 2: DER


@dataclass(frozen=True, slots=True)
class _Policy:
    """What the contexts of one :class:`MTLS` check after the handshake."""

    ids: frozenset[SpiffeId]
    trust_domains: frozenset[str]
    dns_names: tuple[str, ...]
    verify_peer: VerifyPeer | None

    @property
    def identity(self) -> bool:
        return bool(self.ids or self.trust_domains or self.dns_names)

    def expected(self) -> tuple[str, ...]:
        return (
            *sorted(map(str, self.ids)),
            *sorted(f"spiffe://{name}" for name in self.trust_domains),
            *self.dns_names,
        )

    def check(self, connection: Connection, anchors: Mapping[str | None, frozenset[bytes]]) -> None:
        server_side = connection.server_side
        identity = self.identity and not server_side  # inbound authorization is the middleware's job
        per_domain = None not in anchors
        if not (identity or per_domain or self.verify_peer is not None):
            return
        der = connection.getpeercert(binary_form=True)
        if der is None:
            if server_side:
                return  # an optional client certificate that was not sent
            raise PeerVerificationError("the peer presented no certificate")
        certificate = x509.load_der_x509_certificate(der)
        peer_id, not_svid = None, ""
        try:
            peer_id = svid_id(certificate, source="peer certificate")
        except (CertificateError, InvalidSpiffeIdError) as error:
            not_svid = f" (not an X509-SVID: {error.rule})"
        names = dns_names(certificate)
        presented = (*([str(peer_id)] if peer_id else uri_names(certificate)), *names)
        if per_domain:
            bundle = anchors.get(peer_id.trust_domain) if peer_id else None
            chain = _verified_chain(connection) if bundle else []
            if bundle is None or not chain or chain[-1] not in bundle:
                domains = tuple(f"spiffe://{name}" for name in sorted(filter(None, anchors)))
                raise PeerVerificationError(
                    f"{', '.join(presented) or 'the peer'}{not_svid} is not signed by a CA of its trust domain",
                    expected=domains,
                    presented=presented,
                )
        if identity and not (
            (peer_id is not None and (peer_id in self.ids or peer_id.trust_domain in self.trust_domains))
            or any(_dns_match(expected, name) for expected in self.dns_names for name in names)
        ):
            expected, shown = self.expected(), ", ".join(presented) or "no SPIFFE id or DNS name"
            raise PeerVerificationError(
                f"peer identity mismatch: {connection.server_hostname or 'the peer'} presented {shown}"
                f"{not_svid if self.ids or self.trust_domains else ''}; expected {' or '.join(expected)}",
                expected=expected,
                presented=presented,
            )
        if self.verify_peer is not None:
            peer = Peer(spiffe_id=peer_id, dns_names=tuple(names), source="tls")
            self.verify_peer(PeerHandshake(peer, certificate, server_side, connection.server_hostname))


def _after_handshake(connection: Connection) -> None:
    context = connection.context
    if isinstance(context, TLSContext):
        try:
            context._policy.check(connection, context._anchors)
        except PeerVerificationError:
            raise
        except Exception as error:  # a failing hook, or a bug: fail closed, as a failed handshake
            raise PeerVerificationError(f"the peer check failed: {type(error).__name__}: {error}") from error


class _CheckedSSLObject(ssl.SSLObject):
    """The in-memory TLS connection (asyncio, anyio, trio): checks the peer as its handshake completes."""

    def do_handshake(self) -> None:
        super().do_handshake()
        _after_handshake(self)


class _CheckedSSLSocket(ssl.SSLSocket):
    """The blocking TLS socket (httpcore's sync streams): checks the peer as its handshake completes."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _after_handshake(self)


class TLSContext(RotatingContext):
    """An ``ssl.SSLContext`` that checks the peer right after the handshake and, when built by :class:`MTLS`,
    follows certificate rotation. Use it wherever an ``ssl.SSLContext`` goes.

    .. versionadded:: 0.1
    """

    sslobject_class = _CheckedSSLObject
    sslsocket_class = _CheckedSSLSocket

    __slots__ = ("_anchors", "_policy")

    def __init__(self, protocol: int, *, policy: _Policy, anchors: Mapping[str | None, frozenset[bytes]]) -> None:
        super().__init__(protocol)
        self._policy, self._anchors = policy, anchors

    @property
    def expected(self) -> tuple[str, ...]:
        """The peer identities accepted (empty: any peer the CA vouches for, by host name)."""
        return self._policy.expected()


def _build(
    material: Material, *, server: bool, require_client_cert: bool, check_hostname: bool, policy: _Policy
) -> TLSContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    context = TLSContext(protocol, policy=policy, anchors=material.anchors)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=material.ca_pem)
    if server:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
    load_chain(context, material)
    return context


def _many(value: object, field: str) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, SpiffeId)):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        return tuple(value)
    raise ConfigError(field, value, "must be a string or a list of strings")


def _dns_names(value: object) -> tuple[str, ...]:
    names = [
        name.lower().rstrip(".") if isinstance(name, str) else name for name in _many(value, "MTLS.peer_dns_name")
    ]
    for name in names:
        if not isinstance(name, str) or not _DNS_NAME.match(name):
            raise ConfigError("MTLS.peer_dns_name", name, "must be a DNS name (no wildcard, no IP address)")
    return tuple(names)


def _ca(value: object) -> tuple[tuple[str | None, MaterialInput], ...]:
    if value is None or (isinstance(value, Mapping) and not value):
        raise ConfigError("MTLS.ca", value, "is required: a CA bundle, or one per trust domain")
    if not isinstance(value, Mapping):
        return ((None, MaterialInput.of(value, field="MTLS.ca")),)
    return tuple(
        (validate_trust_domain(domain, field="MTLS.ca"), MaterialInput.of(bundle, field=f"MTLS.ca[{domain!r}]"))
        for domain, bundle in value.items()
    )


def _check_options(svid: object, check_hostname: object, check_interval: object, **hooks: object) -> None:
    for name, flag in (("svid", svid), ("check_hostname", check_hostname)):
        if flag is not None and not isinstance(flag, bool):
            raise ConfigError(f"MTLS.{name}", flag, "must be True, False or None")
    if check_interval is not None and (
        isinstance(check_interval, bool)
        or not isinstance(check_interval, (int, float))
        or not math.isfinite(check_interval)
        or check_interval < 0
    ):
        raise ConfigError("MTLS.check_interval", check_interval, "must be a number of seconds >= 0, or None")
    for name, hook in hooks.items():
        if hook is not None and not callable(hook):
            raise ConfigError(f"MTLS.{name}", hook, "must be callable")


class MTLS:
    """Mutual TLS configuration: this workload's certificate, the CAs it trusts, and who its peer must be.

    ``MTLS(cert="svc.pem", key="svc.key", ca="ca.pem", peer_id="spiffe://bank.example/ns/prod/sa/orders")``

    The material is read and validated here, and re-read when its files change. Give :meth:`client_context` to
    httpx as ``verify=`` (or use ``connectivity.transport(tls=...)``), :meth:`server_context` to uvicorn.

    Args:
        cert: The certificate chain, leaf first: a file name, PEM text or bytes (``None``: present none).
        key: Its private key (PEM): a file name, PEM text or bytes. Never logged or shown.
        ca: The CA bundle; or ``{trust_domain: bundle}``, each trusted only for its own trust domain's peers.
        peer_id: The SPIFFE id(s) the peer (for a client: the upstream) may have.
        peer_trust_domain: Trust domain(s) whose every workload is accepted.
        peer_dns_name: DNS name(s) the peer's certificate may carry as a DNS SAN (wildcard SANs honoured).
        password: The key's passphrase, or a function returning it. Never logged or shown.
        svid: Whether our own certificate must be an X509-SVID (default: when SPIFFE peers are expected).
        check_hostname: Check the URL's host against the certificate. Default: only without peer expectations.
        check_interval: Look at the files at most every this many seconds, before a new connection (``0``: every
            time; ``None``: only on :meth:`reload`).
        verify_peer: Called with a :class:`PeerHandshake` after each handshake that passed the checks (client and
            server side); raising rejects the connection, like Go's ``tls.Config.VerifyConnection``.
        listener: Called with a :class:`~connectivity.security.rotation.RotationEvent` on the first load, each
            rotation and each rejected one.
        clock: Paces the file checks (``now``) and judges validity (``time``).

    Raises:
        ConfigError: An option is malformed. ``InvalidSpiffeIdError``: an id or trust domain is not valid.
        CertificateError: Material unreadable, mismatched, expired, not yet valid, or not an X509-SVID when one is
            required; the message names the file, never key material.

    .. versionadded:: 0.1
    """

    __slots__ = ("_policy", "_watcher", "check_hostname", "check_interval", "svid")

    check_hostname: bool
    check_interval: float | None
    svid: bool
    _policy: _Policy
    _watcher: CertificateWatcher

    def __init__(
        self,
        *,
        cert: str | os.PathLike[str] | bytes | None = None,
        key: str | os.PathLike[str] | bytes | None = None,
        ca: str | os.PathLike[str] | bytes | Mapping[str, str | os.PathLike[str] | bytes],
        peer_id: str | SpiffeId | Iterable[str | SpiffeId] | None = None,
        peer_trust_domain: str | Iterable[str] | None = None,
        peer_dns_name: str | Iterable[str] | None = None,
        password: Password | None = None,
        svid: bool | None = None,
        check_hostname: bool | None = None,
        check_interval: float | None = 5.0,
        verify_peer: VerifyPeer | None = None,
        listener: Listener | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (cert is None) != (key is None):
            raise ConfigError(f"MTLS.{'key' if key is None else 'cert'}", None, "cert and key go together")
        cert_input = None if cert is None else MaterialInput.of(cert, field="MTLS.cert")
        key_input = None if key is None else MaterialInput.of(key, field="MTLS.key")
        bundles = _ca(ca)
        ids = frozenset(SpiffeId.parse(str(i), field="MTLS.peer_id") for i in _many(peer_id, "MTLS.peer_id"))
        domains = frozenset(
            validate_trust_domain(name, field="MTLS.peer_trust_domain")
            for name in _many(peer_trust_domain, "MTLS.peer_trust_domain")
        )
        if password is not None and not isinstance(password, (str, bytes)) and not callable(password):
            raise ConfigError("MTLS.password", f"<{type(password).__name__}>", "must be str, bytes or a function")
        _check_options(svid, check_hostname, check_interval, verify_peer=verify_peer, listener=listener)
        if not isinstance(clock, Clock):
            raise ConfigError("MTLS.clock", clock, "must be a connectivity.policies.Clock")
        policy = _Policy(ids, domains, _dns_names(peer_dns_name), verify_peer)
        spiffe = bool(ids or domains or bundles[0][0] is not None)
        own_svid = (spiffe and cert_input is not None) if svid is None else svid
        interval = None if check_interval is None else float(check_interval)
        source = MaterialSource(cert_input, key_input, bundles, password, own_svid)
        init = object.__setattr__
        init(self, "_policy", policy)
        init(self, "check_hostname", (not policy.identity) if check_hostname is None else check_hostname)
        init(self, "check_interval", interval)
        init(self, "svid", own_svid)
        init(self, "_watcher", CertificateWatcher(source, check_interval=interval, clock=clock, listener=listener))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MTLS is immutable")

    @property
    def expected(self) -> tuple[str, ...]:
        """What the peer may present: SPIFFE ids, ``spiffe://<trust domain>``, DNS names (empty: any peer)."""
        return self._policy.expected()

    @property
    def cert(self) -> str | None:
        """The certificate's file name, or ``"<PEM string>"``."""
        return self._watcher.source.cert_label

    @property
    def key(self) -> str | None:
        """The key's file name, or ``"<PEM string>"``; never the key."""
        key = self._watcher.source.key
        return None if key is None else key.label

    @property
    def ca(self) -> str | dict[str, str]:
        """The CA bundle's file name, or one per trust domain."""
        bundles = self._watcher.source.ca
        if bundles[0][0] is None:
            return bundles[0][1].label
        return {str(domain): bundle.label for domain, bundle in bundles}

    def client_context(self) -> TLSContext:
        """A client context (TLS >= 1.2; the server checked against the CA bundle(s) and the expected identity,
        or the host name) for ``httpx.Client(verify=...)``, ``httpx.AsyncClient(verify=...)`` or aiohttp's
        ``ssl=``. Wrap the transport in :class:`~connectivity.transports.PeerIdentityTransport` for typed errors.
        """
        return self._context(server=False, require_client_cert=False)

    def server_context(self, *, require_client_cert: bool = True) -> TLSContext:
        """A server context (TLS >= 1.2; client certificates verified against the CA bundle(s)).

        Args:
            require_client_cert: Refuse clients without a certificate. ``False`` verifies one if presented
                (``CERT_OPTIONAL``). Which client may call what is the inbound middleware's decision, as in Istio.

        Raises:
            ConfigError: There is no certificate to serve.
        """
        if self._watcher.source.cert is None:
            raise ConfigError("MTLS.cert", None, "a server context needs a certificate and key")
        if not isinstance(require_client_cert, bool):
            raise ConfigError("MTLS.server_context.require_client_cert", require_client_cert, "must be a bool")
        return self._context(server=True, require_client_cert=require_client_cert)

    def _context(self, *, server: bool, require_client_cert: bool) -> TLSContext:
        def build(material: Material) -> TLSContext:
            return _build(
                material,
                server=server,
                require_client_cert=require_client_cert,
                check_hostname=self.check_hostname,
                policy=self._policy,
            )

        context = build(self._watcher.material)
        if self._watcher.source.files:
            context.follow(self._watcher, build)
        return context

    def status(self) -> CertificateStatus:
        """The current certificate (serial, SPIFFE id, validity, load time) and the last rotation error."""
        return self._watcher.status()

    def reload(self) -> bool:
        """Re-read the files now, whatever ``check_interval`` says (e.g. on SIGHUP).

        Returns:
            Whether new material was accepted (invalid material is reported, and the old one kept).
        """
        return self._watcher.check(force=True)

    def describe(self) -> dict[str, object]:
        """What the status app shows: the files, the expected peer and the certificate's status."""
        return {
            "ca": self.ca,
            "expected": list(self.expected),
            "check_hostname": self.check_hostname,
            "check_interval": self.check_interval,
            **self.status().as_dict(),
        }

    def __repr__(self) -> str:
        expected = f", expected={list(self.expected)!r}" if self.expected else ""
        return f"MTLS(cert={self.cert!r}, key={self.key!r}, ca={self.ca!r}{expected})"
