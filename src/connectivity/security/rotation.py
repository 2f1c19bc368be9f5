"""Certificate rotation: a watcher that re-reads the files when they change, and contexts that follow it.

Theory of operation: a :class:`CertificateWatcher` holds the current validated
:class:`~connectivity.security.material.Material` of one configuration and runs no thread. Whoever is about to
start a handshake calls :meth:`~CertificateWatcher.poll`, which costs a clock read until ``check_interval`` seconds
have passed; then it compares the files' ``stat`` signatures (mtime, ctime, size, inode) with the last ones seen
and, if they changed, loads and validates the files. Valid material gets the next generation number. Invalid
material is reported (the ``connectivity.security`` logger, the listener, :meth:`~CertificateWatcher.status`) and
the old material stays in use; the same broken files are not reported twice. The clock's ``now()`` paces the checks
and its ``time()`` judges expiry, so tests drive both with a ``FakeClock``.

A :class:`RotatingContext` (the base of :class:`~connectivity.security.tls.TLSContext`) asks the watcher before
each ``wrap_socket``/``wrap_bio``, i.e. before each new connection, client or server side. On a new generation it
builds a fresh inner context from the material (its own CA store too, so a CA dropped from the bundle stops being
trusted) and hands it every new connection; connections already made keep their context, so in-flight requests
finish undisturbed. Settings made later on the outer context are copied to the inner one: the properties (checked
on each connection, a few attribute reads) and the setters without getters (``set_alpn_protocols``, which
httpcore calls before every connect, ``set_ciphers``, ``set_ecdh_curve``, ``load_dh_params``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from connectivity.errors import CertificateError
from connectivity.policies.clock import Clock
from connectivity.security.material import Material, MaterialSource, load_material
from connectivity.security.x509 import dns_names

__all__ = [
    "CertificateStatus",
    "CertificateWatcher",
    "Listener",
    "RotatingContext",
    "RotationEvent",
    "load_chain",
]

LOGGER = logging.getLogger("connectivity.security")
_COPIED = (  # outer-context properties copied to a rotated inner context (verify mode and hostname apart)
    "options",
    "verify_flags",
    "minimum_version",
    "maximum_version",
    "post_handshake_auth",
    "keylog_filename",
    "sni_callback",
    "hostname_checks_common_name",
)


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """``data`` behind a file name OpenSSL can open: an anonymous memory file on Linux, else a 0600 temp file."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("connectivity-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="connectivity-tls-", suffix=".pem")  # created 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield path
    finally:
        os.unlink(path)


def load_chain(context: ssl.SSLContext, material: Material) -> None:
    """Load the material's chain and key into ``context``. ``load_cert_chain`` reads files only: the validated
    bytes are handed to it in memory, never re-read from the configured files."""
    if material.chain_pem is not None and material.key_pem is not None:
        with _pem_file(material.chain_pem) as certfile, _pem_file(material.key_pem) as keyfile:
            context.load_cert_chain(certfile, keyfile, password=material.password)


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """What a status view shows about one TLS configuration's certificate.

    Attributes:
        source: The certificate's file name (or ``"<PEM string>"``; ``None`` without a certificate).
        generation: 1 for the material loaded first, one more per rotation.
        loaded_at: POSIX time the current material was loaded.
        serial: The current certificate's serial number.
        spiffe_id: Its SPIFFE id, if any.
        dns_names: Its DNS SANs.
        not_before: Start of its validity.
        not_after: End of its validity.
        checked_at: POSIX time the files were last looked at (``None`` before the first check).
        last_error: Why the newest material on disk was rejected (``None`` once valid material loads).
        last_error_at: POSIX time of that rejection.

    .. versionadded:: 0.1
    """

    source: str | None
    generation: int
    loaded_at: float
    serial: int | None
    spiffe_id: str | None
    dns_names: tuple[str, ...]
    not_before: datetime.datetime | None
    not_after: datetime.datetime | None
    checked_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly fields (times as ISO 8601, the serial in hex), for the status app."""

        def iso(moment: datetime.datetime | float | None) -> str | None:
            if moment is None:
                return None
            if isinstance(moment, float):
                moment = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
            return moment.isoformat()

        return {
            "source": self.source,
            "generation": self.generation,
            "loaded_at": iso(self.loaded_at),
            "serial": None if self.serial is None else format(self.serial, "x"),
            "spiffe_id": self.spiffe_id,
            "dns_names": list(self.dns_names),
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "checked_at": iso(self.checked_at),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
        }


@dataclass(frozen=True, slots=True)
class RotationEvent:
    """What a rotation listener receives.

    Attributes:
        kind: ``"loaded"`` (the first material), ``"rotated"`` (new material accepted) or ``"rejected"`` (new
            material invalid: the old one stays in use).
        status: The status after the event.
        error: Why the material was rejected (``"rejected"`` only).

    .. versionadded:: 0.1
    """

    kind: Literal["loaded", "rotated", "rejected"]
    status: CertificateStatus
    error: CertificateError | None = None


Listener: TypeAlias = "Callable[[RotationEvent], object]"


class CertificateWatcher:
    """The current material of one TLS configuration, re-read when its files change.

    Args:
        source: What to load.
        check_interval: Look at the files at most this often, in seconds (``0``: before every handshake;
            ``None``: only when :meth:`check` is called).
        clock: ``now()`` paces the checks, ``time()`` judges validity.
        listener: Called with a :class:`RotationEvent` on the first load, each rotation and each rejection, in the
            thread that noticed the change (often an event loop: keep it quick). Its exceptions are logged and
            swallowed.

    Raises:
        CertificateError: The initial material is invalid.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_check_interval",
        "_checked_at",
        "_clock",
        "_error",
        "_error_at",
        "_listener",
        "_lock",
        "_material",
        "_next_check",
        "_seen",
        "_source",
    )

    def __init__(
        self,
        source: MaterialSource,
        *,
        check_interval: float | None,
        clock: Clock,
        listener: Listener | None = None,
    ) -> None:
        self._source = source
        self._check_interval = check_interval
        self._clock = clock
        self._listener = listener
        self._lock = threading.Lock()
        self._material = load_material(source, now=clock.time())
        self._seen = self._material.signature
        self._next_check = clock.now() + (check_interval or 0.0)
        self._checked_at: float | None = None
        self._error: CertificateError | None = None
        self._error_at: float | None = None
        self._emit(RotationEvent("loaded", self.status()))

    @property
    def source(self) -> MaterialSource:
        """What is loaded."""
        return self._source

    @property
    def material(self) -> Material:
        """The current material (no file check)."""
        return self._material

    def poll(self) -> Material:
        """The current material, after looking at the files if ``check_interval`` has passed. Call it before a
        handshake; between checks it costs one clock read."""
        if self._check_interval is not None and self._clock.now() >= self._next_check:
            self.check(due_only=True)
        return self._material

    def check(self, *, force: bool = False, due_only: bool = False) -> bool:
        """Look at the files now and load them if they changed (or always, with ``force``). Callers arriving
        meanwhile wait for the outcome rather than go on with material about to be replaced.

        Returns:
            Whether new material was accepted.
        """
        with self._lock:
            if due_only and (self._check_interval is None or self._clock.now() < self._next_check):
                return False
            try:
                event = self._look(force)
            finally:  # only now: a concurrent poll() sees the check as due, and so waits on the lock
                self._next_check = self._clock.now() + (self._check_interval or 0.0)
        if event is None:
            return False
        self._emit(event)
        return event.kind == "rotated"

    def _look(self, force: bool) -> RotationEvent | None:
        self._checked_at = self._clock.time()
        signature = self._source.signature()
        if not self._source.files or (signature == self._seen and not force):
            return None
        self._seen = signature
        current = self._material
        try:
            material = load_material(self._source, now=self._clock.time(), generation=current.generation + 1)
        except CertificateError as error:
            self._error, self._error_at = error, self._clock.time()
            return RotationEvent("rejected", self._status(), error)
        self._error = self._error_at = None
        if material.same_bytes(current):
            return None
        self._material = material
        return RotationEvent("rotated", self._status())

    def report(self, error: CertificateError) -> None:
        """Record a failure to use material that passed validation (e.g. OpenSSL refused it)."""
        with self._lock:
            self._error, self._error_at = error, self._clock.time()
            event = RotationEvent("rejected", self._status(), error)
        self._emit(event)

    def status(self) -> CertificateStatus:
        """The current certificate and the last rejection, for a status view."""
        with self._lock:
            return self._status()

    def _status(self) -> CertificateStatus:
        material, leaf = self._material, self._material.leaf
        return CertificateStatus(
            source=self._source.cert_label,
            generation=material.generation,
            loaded_at=material.loaded_at,
            serial=None if leaf is None else leaf.serial_number,
            spiffe_id=None if material.spiffe_id is None else str(material.spiffe_id),
            dns_names=() if leaf is None else tuple(dns_names(leaf)),
            not_before=None if leaf is None else leaf.not_valid_before_utc,
            not_after=None if leaf is None else leaf.not_valid_after_utc,
            checked_at=self._checked_at,
            last_error=None if self._error is None else str(self._error),
            last_error_at=self._error_at,
        )

    def _emit(self, event: RotationEvent) -> None:
        status = event.status
        if event.kind == "rejected":
            LOGGER.error(
                "TLS material rejected, keeping generation %d (serial %x): %s",
                status.generation,
                status.serial or 0,
                event.error,
            )
        else:
            LOGGER.log(
                logging.INFO if event.kind == "rotated" else logging.DEBUG,
                "TLS material %s: generation %d, %s serial %x, SPIFFE id %s, valid until %s",
                event.kind,
                status.generation,
                status.source,
                status.serial or 0,
                status.spiffe_id,
                None if status.not_after is None else status.not_after.isoformat(),
            )
        if self._listener is not None:
            try:
                self._listener(event)
            except Exception:
                LOGGER.warning("a TLS rotation listener raised", exc_info=True)

    def __repr__(self) -> str:
        return f"<CertificateWatcher {self._source.cert_label or 'without certificate'}>"


class _Live:
    """How an outer context follows rotation: the context new connections get, and what was copied to it."""

    __slots__ = ("build", "delegate", "generation", "lock", "synced", "watcher")

    def __init__(
        self, watcher: CertificateWatcher, build: Callable[[Material], RotatingContext], outer: RotatingContext
    ) -> None:
        self.watcher, self.build, self.delegate = watcher, build, outer
        self.generation = watcher.material.generation
        self.lock = threading.Lock()
        self.synced: tuple[object, ...] | None = None


class RotatingContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` whose new connections use the newest material of a :class:`CertificateWatcher`.

    Attach with :meth:`follow` (``build`` makes a context from material); without it, it is a plain context.

    .. versionadded:: 0.1
    """

    __slots__ = ("_calls", "_calls_version", "_live")

    def __init__(self, protocol: int, *args: Any, **kwargs: Any) -> None:
        self._live: _Live | None = None
        self._calls: dict[str, tuple[Any, ...]] = {}
        self._calls_version = 0

    def follow(self, watcher: CertificateWatcher, build: Callable[[Material], RotatingContext]) -> None:
        """From now on, give new connections a context ``build`` makes from the watcher's newest material."""
        self._live = _Live(watcher, build, self)

    def _target(self) -> RotatingContext:
        """The context for a new connection: this one, or the one built from rotated material."""
        live = self._live
        if live is None:
            return self
        material = live.watcher.poll()
        if material.generation != live.generation:
            with live.lock:  # others wait here while the new context is built, then use it
                if material.generation != live.generation:
                    try:
                        live.delegate, live.synced = live.build(material), None
                    except (ssl.SSLError, OSError, ValueError) as error:  # validated, yet refused: keep the old
                        rule = f"was refused by OpenSSL ({type(error).__name__})"
                        live.watcher.report(CertificateError("MTLS.cert", live.watcher.source.cert_label, rule))
                    live.generation = material.generation  # last: whoever sees it also sees the new delegate
        delegate = live.delegate
        if delegate is not self:
            state = (
                self.check_hostname,
                self.verify_mode,
                self._calls_version,
                *map(self.__getattribute__, _COPIED),
            )
            if state != live.synced:
                with live.lock:
                    self._copy_to(delegate)
                    live.synced = state
        return delegate

    def _copy_to(self, delegate: RotatingContext) -> None:
        if self.check_hostname:  # the order matters: CERT_NONE needs check_hostname off first
            delegate.verify_mode, delegate.check_hostname = self.verify_mode, True
        else:
            delegate.check_hostname, delegate.verify_mode = False, self.verify_mode
        for name in _COPIED:
            value = getattr(self, name)
            if getattr(delegate, name) != value:
                setattr(delegate, name, value)
        for method, args in list(self._calls.items()):
            getattr(ssl.SSLContext, method)(delegate, *args)

    def _record(self, method: str, *args: Any) -> None:
        if self._calls.get(method) != args:
            self._calls[method] = args
            self._calls_version += 1

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        protocols = tuple(alpn_protocols)
        super().set_alpn_protocols(protocols)
        self._record("set_alpn_protocols", protocols)

    def set_ciphers(self, cipherlist: str, /) -> None:
        super().set_ciphers(cipherlist)
        self._record("set_ciphers", cipherlist)

    def set_ecdh_curve(self, name: str, /) -> None:
        super().set_ecdh_curve(name)
        self._record("set_ecdh_curve", name)

    def load_dh_params(self, path: str, /) -> None:
        super().load_dh_params(path)
        self._record("load_dh_params", path)

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        args = (sock, server_side, do_handshake_on_connect, suppress_ragged_eofs, server_hostname, session)
        target = self._target()
        return super().wrap_socket(*args) if target is self else target.wrap_socket(*args)

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        args = (incoming, outgoing, server_side, server_hostname, session)
        target = self._target()
        return super().wrap_bio(*args) if target is self else target.wrap_bio(*args)
