"""The ``File`` resolver: endpoints listed in a JSON or YAML file, reloaded when the file changes.

Theory of operation: the file holds a list of endpoint entries, each ``{"address", "port", "weight", "zone",
"metadata"}`` (only ``address`` and ``port`` are required), like the ``lb_endpoints`` of an Envoy filesystem EDS
file; ``{"endpoints": [...]}`` is accepted too. The resolver polls: every ``interval`` seconds on the injected
clock (the default polling :meth:`~connectivity.discovery.Resolver.watch`, so no thread and no inotify), it
``stat``\\ s the file, and reads and parses it only when its identity (device, inode), size, modification time
or change time differ from the last read. Writers should write a new file and rename it over the old one (as
Envoy's filesystem subscriptions require, and as Kubernetes does for mounted ConfigMaps): a reader then never sees
half a file. A half-written file read anyway is merely invalid: the signature taken before reading is not
remembered when the file changed during the read, so the next poll reads it again.

A file that does not parse, or holds an invalid entry, is rejected whole with a
:class:`~connectivity.errors.ConfigError` naming the file and the line or the entry index
(``/etc/orders.json[2].port=0 is invalid: ...``), and the last good list stays in force; a missing or unreadable
file is a :class:`~connectivity.discovery.DiscoveryError`. An unchanged invalid file keeps failing with the same
error without being read again.

YAML needs the ``yaml`` extra (PyYAML), imported only when a YAML file is configured.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.resolver import DiscoveryError, Resolver
from connectivity.errors import BackendUnavailableError, ConfigError
from connectivity.policies._validate import finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["MAX_FILE_BYTES", "File", "parse_endpoints"]

MAX_FILE_BYTES = 16 << 20
"""Endpoint files larger than this (16 MiB) are refused rather than read."""

_FIELDS = ("address", "port", "weight", "zone", "metadata")
_Signature = tuple[int, int, int, int, int]


def parse_endpoints(document: Any, where: str) -> list[Endpoint]:
    """Endpoints from a parsed document: a list of entries, or ``{"endpoints": [entries]}``.

    Args:
        document: What ``json.loads`` or ``yaml.safe_load`` returned.
        where: The source, for error messages (a path); entries are named ``where[index]``.

    Raises:
        ConfigError: The document is not a list of entries, an entry is invalid (``field`` names it, e.g.
            ``"/etc/orders.json[2].port"``), or two entries have the same ``address:port``.

    .. versionadded:: 0.1
    """
    if isinstance(document, Mapping) and set(document) == {"endpoints"}:
        document = document["endpoints"]
    if not isinstance(document, list):
        raise ConfigError(where, _kind(document), "must be a list of endpoint entries, or {'endpoints': [...]}")
    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(document):
        endpoint = parse_entry(entry, f"{where}[{index}]")
        first = seen.setdefault(endpoint.key, index)
        if first != index:
            raise ConfigError(f"{where}[{index}]", endpoint.key, f"duplicates entry [{first}]")
        endpoints.append(endpoint)
    return endpoints


def parse_entry(entry: Any, where: str) -> Endpoint:
    """One endpoint from ``{"address", "port", "weight"?, "zone"?, "metadata"?}``.

    Raises:
        ConfigError: Not a mapping, an unknown or missing field, or an invalid value; ``field`` is
            ``where.<field>``.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(where, _kind(entry), "must be an object with address and port")
    for name in entry:
        if name not in _FIELDS:
            raise ConfigError(f"{where}.{name}", entry[name], f"is not a field (known: {', '.join(_FIELDS)})")
    for name in ("address", "port"):
        if name not in entry:
            raise ConfigError(f"{where}.{name}", None, "is required")
    metadata = entry.get("metadata")
    try:
        return Endpoint(
            entry["address"],
            entry["port"],
            entry.get("weight", 1),
            entry.get("zone"),
            {} if metadata is None else metadata,
        )
    except ConfigError as error:
        name = error.field.removeprefix("Endpoint.")
        raise ConfigError(f"{where}.{name}", error.value, error.rule) from None


def _kind(value: Any) -> str:
    return f"<{type(value).__name__}>"


class File(Resolver):
    """Endpoints from a JSON or YAML file, re-read when it changes (see the module docstring).

    Args:
        path: The endpoint file.
        format: ``"json"``, ``"yaml"``, or ``None`` to choose by suffix (``.yaml``/``.yml``: YAML, else JSON).
        interval: Seconds between checks of the file (a ``stat`` each; it is read only when it changed).
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).

    Raises:
        ConfigError: An invalid option.
        BackendUnavailableError: A YAML file without PyYAML installed (``pip install 'connectivity-sdk[yaml]'``).

    .. versionadded:: 0.1
    """

    __slots__ = ("_error", "_format", "_loads", "_signature", "path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Literal["json", "yaml"] | None = None,
        interval: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigError("File.path", path, "must be a path")
        self.path = Path(path)
        if format is None:
            format = "yaml" if self.path.suffix.lower() in (".yaml", ".yml") else "json"
        if format not in ("json", "yaml"):
            raise ConfigError("File.format", format, "must be 'json', 'yaml' or None (by suffix)")
        self._format = format
        self._loads = _yaml_loader() if format == "yaml" else json.loads
        interval = finite_positive("File.interval", interval)
        super().__init__(f"file:{self.path}", refresh_interval=interval, retry_interval=interval, clock=clock)
        self._signature: _Signature | None = None
        self._error: Exception | None = None

    def _fetch(self) -> tuple[Iterable[Endpoint], float | None]:
        try:
            signature = _signature(os.stat(self.path))
        except OSError as error:
            self._signature = None
            raise self._unreadable(error) from error
        if signature == self._signature:  # unchanged since the last read: same answer, no parsing
            if self._error is not None:
                raise self._error
            return self.current().endpoints, None
        try:
            with self.path.open("rb") as handle:
                before = _signature(os.fstat(handle.fileno()))
                data = handle.read(MAX_FILE_BYTES + 1)
                after = _signature(os.fstat(handle.fileno()))
        except OSError as error:
            self._signature = None
            raise self._unreadable(error) from error
        # Remember the file only if it held still while read; otherwise read it again at the next check.
        self._signature = before if before == after == signature else None
        try:
            endpoints = self._parse(data)
        except ConfigError as error:
            self._error = error
            raise
        self._error = None
        return endpoints, None

    def _unreadable(self, error: OSError) -> DiscoveryError:
        kind = "not-found" if isinstance(error, FileNotFoundError) else "unavailable"
        return DiscoveryError(self.source, kind, f"cannot read the endpoint file: {error.strerror or error}")

    def _parse(self, data: bytes) -> list[Endpoint]:
        where = str(self.path)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(where, f"<more than {MAX_FILE_BYTES} bytes>", "is too large for an endpoint file")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ConfigError(where, f"<byte {error.start}>", "must be UTF-8 text") from None
        try:
            document = self._loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{where}:{error.lineno}:{error.colno}", _line(text, error.lineno), f"is not JSON: {error.msg}"
            ) from None
        except Exception as error:  # yaml.YAMLError, without importing yaml for the except clause
            mark = getattr(error, "problem_mark", None)
            if mark is None:
                raise ConfigError(where, "<document>", f"is not {self._format.upper()}: {error}") from None
            line = mark.line + 1
            problem = getattr(error, "problem", None) or str(error)
            raise ConfigError(
                f"{where}:{line}:{mark.column + 1}", _line(text, line), f"is not YAML: {problem}"
            ) from None
        return parse_endpoints(document, where)


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _line(text: str, number: int) -> str:
    lines = text.splitlines()
    line = lines[number - 1].strip() if 0 < number <= len(lines) else ""
    return line if len(line) <= 80 else line[:77] + "..."


def _yaml_loader() -> Any:
    try:
        yaml = importlib.import_module("yaml")  # untyped without types-PyYAML; the extra is optional
    except ImportError:
        raise BackendUnavailableError(
            "pyyaml",
            "reading YAML endpoint files needs PyYAML: pip install 'connectivity-sdk[yaml]'",
            field="File.format",
            value="yaml",
        ) from None
    return yaml.safe_load
