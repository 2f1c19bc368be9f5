"""The registry the admin app reads: named status sources, grouped by kind, read live.

Theory of operation: a component that has state worth showing (a client's transport stack, a circuit breaker, a
rate limiter, an endpoint set) registers itself as a :class:`StatusSource` under a *kind* (``"clients"``,
``"breakers"``, ``"limiters"``, ``"endpoints"``, or any other) and a *name*. The registry keeps a weak reference
to the source where Python allows one, so registering never keeps a client or a breaker alive; objects that cannot
be weakly referenced are held strongly until unregistered. Nothing is cached: :meth:`Registry.snapshot` calls every
live source's ``status()`` each time, so a breaker that trips or an endpoint that is ejected shows up in the very
next snapshot. Sources are called outside the registry's lock (a source may take its own lock, or even register
another source, without deadlocking), one failing source yields an ``{"error": "<ExceptionType>"}`` entry instead
of failing the snapshot, and every status is reduced to plain JSON data (string keys, finite numbers, lists)
while it is read, so the snapshot can always be serialised.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
import math
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar, runtime_checkable

from connectivity.errors import ConfigError
from connectivity.transports import Layer

__all__ = [
    "KINDS",
    "REGISTRY",
    "Registry",
    "StatusSource",
    "describe",
    "register",
    "register_client",
    "snapshot",
]

KINDS: tuple[str, ...] = ("clients", "breakers", "limiters", "endpoints")
"""The well-known kinds: a full snapshot always has these keys, empty when nothing of that kind is registered.

.. versionadded:: 0.1
"""

_log = logging.getLogger("connectivity.admin")

_T = TypeVar("_T")

# Deeper than any sensible status; also what stops a self-referencing status from recursing forever.
_MAX_DEPTH = 32
# A transport stack longer than this is a cycle of `.inner` references, not a real stack.
_MAX_LAYERS = 256


@runtime_checkable
class StatusSource(Protocol):
    """Anything that can report its current state to the admin app.

    ``status()`` is called on every request to the admin app, on the server's event loop: it must be quick and
    must not block (take a lock briefly, copy a few numbers, return).

    .. versionadded:: 0.1
    """

    def status(self) -> Mapping[str, object]:
        """Return the current state as a JSON-serialisable mapping (e.g. ``{"state": "open", "failures": 7}``)."""
        ...


class _Entry:
    """One registration: how to reach the source (weakly or strongly), and its identity for unregistering."""

    __slots__ = ("source",)

    def __init__(self, source: Callable[[], StatusSource | None]) -> None:
        self.source = source


class Registry:
    """Named status sources by kind, safe to use from any thread.

    Sources are held weakly where possible (see :meth:`register`), and read live by :meth:`snapshot`.

    Example::

        registry = Registry()
        unregister = registry.register("breakers", "orders", breaker)  # breaker.status() -> {"state": ...}
        registry.snapshot()  # {"breakers": {"orders": {"state": "closed"}}, "clients": {}, ...}
        unregister()

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_entries", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, _Entry]] = {}

    def __repr__(self) -> str:
        with self._lock:
            counts = ", ".join(f"{kind}={len(names)}" for kind, names in sorted(self._entries.items()))
        return f"<Registry {counts}>" if counts else "<Registry empty>"

    def register(self, kind: str, name: str, source: StatusSource) -> Callable[[], None]:
        """Register ``source`` as ``name`` among the sources of ``kind``.

        The registry keeps a weak reference to ``source`` when the object supports one: the registration then
        disappears by itself when the source is garbage-collected, so keep a reference to it for as long as it
        should be shown. Objects that cannot be weakly referenced (``__slots__`` without ``__weakref__``) are
        held strongly until unregistered.

        Registering a kind and name that are already registered *replaces* the previous source (last one wins,
        as when a client is rebuilt under the same name); the previous registration's unregister function then
        does nothing.

        Args:
            kind: What the source is: ``"clients"``, ``"breakers"``, ``"limiters"``, ``"endpoints"`` or any other
                non-empty string.
            name: The source's name within its kind, e.g. the upstream service it guards.
            source: An object with a ``status()`` method (see :class:`StatusSource`).

        Returns:
            A function that removes this registration. It is idempotent, and leaves alone a newer source
            registered under the same kind and name.

        Raises:
            ConfigError: ``kind`` or ``name`` is not a non-empty string.
            TypeError: ``source`` has no callable ``status`` attribute.

        .. versionadded:: 0.1
        """
        _check_name("Registry.register.kind", kind)
        _check_name("Registry.register.name", name)
        if not callable(getattr(source, "status", None)):
            raise TypeError(
                f"a status source needs a status() method returning a mapping, got {type(source).__name__}"
            )
        return self._add(kind, name, _Entry(_reference(source)))

    def register_client(self, name: str, transport: object) -> Callable[[], None]:
        """Register a client's transport stack under ``"clients"``: its status is :func:`describe` of it, live.

        The transport is held weakly where possible, as in :meth:`register`.

        Args:
            name: The client's name, e.g. the service it calls.
            transport: The outermost transport given to the ``httpx`` client (e.g. ``connectivity.transport()``).

        Returns:
            A function that removes this registration.

        Raises:
            ConfigError: ``name`` is not a non-empty string.

        .. versionadded:: 0.1
        """
        _check_name("Registry.register_client.name", name)
        target = _reference(transport)

        def source() -> StatusSource | None:
            current = target()
            return None if current is None else _Described(current)

        return self._add("clients", name, _Entry(source))

    def snapshot(self, *kinds: str) -> dict[str, dict[str, object]]:
        """Read every live source now.

        Args:
            *kinds: Only these kinds (each key present, empty if nothing is registered). By default every kind:
                the well-known :data:`KINDS` (empty when unused) and any other kind that has a source.

        Returns:
            ``{kind: {name: status}}``, names sorted. A status is plain JSON data; a source whose ``status()``
            raised (or returned something other than a mapping) appears as ``{"error": "<ExceptionType>"}``.
            Sources that were garbage-collected are dropped from the registry.

        .. versionadded:: 0.1
        """
        with self._lock:
            wanted = kinds or tuple(dict.fromkeys((*KINDS, *self._entries)))
            entries = [
                (kind, name, entry)
                for kind in wanted
                for name, entry in sorted(self._entries.get(kind, {}).items())
            ]
        result: dict[str, dict[str, object]] = {kind: {} for kind in wanted}
        dead: list[tuple[str, str, _Entry]] = []
        # Outside the lock: a source may block briefly on its own lock, or register something itself.
        for kind, name, entry in entries:
            source = entry.source()
            if source is None:
                dead.append((kind, name, entry))
            else:
                result[kind][name] = _read(kind, name, source)
        if dead:
            with self._lock:
                for kind, name, entry in dead:
                    self._remove(kind, name, entry)
        return result

    def _add(self, kind: str, name: str, entry: _Entry) -> Callable[[], None]:
        with self._lock:
            self._entries.setdefault(kind, {})[name] = entry

        def unregister() -> None:
            with self._lock:
                self._remove(kind, name, entry)

        return unregister

    def _remove(self, kind: str, name: str, entry: _Entry) -> None:
        """Drop ``entry`` if it is still the one registered (the caller holds the lock)."""
        names = self._entries.get(kind)
        if names is not None and names.get(name) is entry:
            del names[name]
            if not names:
                del self._entries[kind]


REGISTRY = Registry()
"""The process-wide registry that :func:`connectivity.admin._app` reads by default.

.. versionadded:: 0.1
"""


def register(kind: str, name: str, source: StatusSource) -> Callable[[], None]:
    """Register ``source`` in the default :data:`REGISTRY` (see :meth:`Registry.register`).

    .. versionadded:: 0.1
    """
    return REGISTRY.register(kind, name, source)


def register_client(name: str, transport: object) -> Callable[[], None]:
    """Register a client's transport stack in the default :data:`REGISTRY` (see :meth:`Registry.register_client`).

    Example::

        transport = connectivity.transport(retry=connectivity.Retry(attempts=3))
        connectivity.admin.register_client("orders", transport)
        client = httpx.AsyncClient(transport=transport, base_url="http://orders")

    .. versionadded:: 0.1
    """
    return REGISTRY.register_client(name, transport)


def snapshot(*kinds: str) -> dict[str, dict[str, object]]:
    """Read the default :data:`REGISTRY` now (see :meth:`Registry.snapshot`).

    .. versionadded:: 0.1
    """
    return REGISTRY.snapshot(*kinds)


def describe(transport: object) -> dict[str, object]:
    """Describe a transport stack, outermost layer first.

    Walks :class:`connectivity.transports.Layer` objects through their ``inner`` transport and stops at the
    first transport that is not a layer (the network transport).

    Args:
        transport: The outermost transport.

    Returns:
        ``{"layers": [...]}``: one mapping per layer, ``{"type": <class name>}`` merged with what the layer's own
        ``describe()`` method returns, if it has one (its policy, its state). ``"type"`` is always the class
        name; a ``describe()`` that raises contributes ``{"error": "<ExceptionType>"}`` instead. The innermost,
        non-layer transport comes last, described the same way.

    .. versionadded:: 0.1
    """
    layers: list[dict[str, object]] = []
    current: object = transport
    while isinstance(current, Layer) and len(layers) < _MAX_LAYERS:
        layers.append(_layer(current))
        current = current.inner
    if not isinstance(current, Layer):
        layers.append(_layer(current))
    return {"layers": layers}


class _Described:
    """The status source of a registered client: its stack, described at the time of asking."""

    __slots__ = ("transport",)

    def __init__(self, transport: object) -> None:
        self.transport = transport

    def status(self) -> Mapping[str, object]:
        return describe(self.transport)


def _layer(transport: object) -> dict[str, object]:
    entry: dict[str, object] = {"type": type(transport).__name__}
    method = getattr(transport, "describe", None)
    if not callable(method):
        return entry
    try:
        details = method()
    except Exception as exc:
        _log.debug("describe() of %s failed", entry["type"], exc_info=True)
        entry["error"] = type(exc).__name__
        return entry
    if isinstance(details, Mapping):
        entry.update((str(key), value) for key, value in details.items() if key != "type")
    return entry


def _read(kind: str, name: str, source: StatusSource) -> dict[str, object]:
    try:
        status = source.status()
        if not isinstance(status, Mapping):
            raise TypeError(f"status() returned {type(status).__name__}, not a mapping")
        return {str(key): _plain(value, 1) for key, value in status.items()}
    except Exception as exc:
        # Debug level: the admin app may be polled, and one broken source should not flood the logs.
        _log.debug("status() of %s %r failed", kind, name, exc_info=True)
        return {"error": type(exc).__name__}


def _plain(value: object, depth: int) -> object:
    """Reduce ``value`` to JSON data: string keys, finite numbers, lists; anything unknown becomes its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # NaN and infinities are not JSON; "inf" still says what it means (e.g. an unlimited rate).
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return f"<{type(value).__name__}: nested too deep>"
    if isinstance(value, enum.Enum):
        inner = value.value
        return _plain(inner, depth + 1) if isinstance(inner, (bool, int, float, str)) else value.name
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _plain(item, depth + 1) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name), depth + 1) for field in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item, depth + 1) for item in value), key=str)
    if isinstance(value, (list, tuple)):
        # Only concrete sequences: iterating an arbitrary iterable could consume it, or never end.
        return [_plain(item, depth + 1) for item in value]
    return str(value)


def _reference(obj: _T) -> Callable[[], _T | None]:
    """A weak reference to ``obj`` where possible, else a strong one with the same call interface."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, value, "must be a non-empty string")
