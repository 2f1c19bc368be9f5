"""The endpoint model: one address a request can be sent to, as discovery finds it and balancers pick it.

An :class:`Endpoint` is frozen, validated data: an address (a host name or an IP literal), a port, a weight, an
optional zone (locality) and free-form metadata. Its :attr:`~Endpoint.key` (``"host:port"``, ``"[v6]:port"``) is
the identity everything else uses: endpoint sets, balancer state, outlier detection, circuit-breaker scopes.
Nothing here resolves names or opens sockets.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from connectivity.errors import ConfigError

__all__ = ["Endpoint"]

# RFC 1123 labels; underscores are allowed because service registries (SRV targets, Consul, Kubernetes
# headless services) hand them out and resolvers accept them.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _address(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError("Endpoint.address", value, "must be a non-empty host name or IP address")
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(text))  # normalised: "::0001" and "::1" are one endpoint
    except ValueError:
        pass
    host = text[:-1] if text.endswith(".") else text  # a fully qualified name's root dot
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise ConfigError("Endpoint.address", value, "must be a valid host name (RFC 1123) or IP address")
    return host.lower()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream address.

    Args:
        address: A host name (``"orders-1.internal"``) or an IP literal (``"10.0.0.7"``, ``"::1"``, ``"[::1]"``).
            IP literals are normalised and names lower-cased, so one endpoint has one key.
        port: The TCP port, 1-65535.
        weight: Relative share of traffic (> 0) for the weighted pickers and the hash rings.
        zone: The locality (zone, rack, region) the endpoint runs in, for locality-aware picking; ``None`` when
            unknown.
        metadata: Free-form labels from discovery (version, canary, ...). Copied into a read-only mapping; not
            part of the hash, so endpoints stay usable as set members and dict keys.

    Attributes:
        key: ``"host:port"`` (``"[v6]:port"`` for IPv6): the identity used by endpoint sets, balancer state and
            outlier detection.

    Raises:
        ConfigError: A field is invalid; ``field`` names it (``"Endpoint.port"``).

    .. versionadded:: 0.1
    """

    address: str
    port: int
    weight: float = 1
    zone: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        address = _address(self.address)
        object.__setattr__(self, "address", address)
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("Endpoint.port", port, "must be an integer from 1 to 65535")
        weight = self.weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ConfigError("Endpoint.weight", weight, "must be a finite number greater than 0")
        zone = self.zone
        if zone is not None and (not isinstance(zone, str) or not zone.strip()):
            raise ConfigError("Endpoint.zone", zone, "must be a non-empty string, or None")
        metadata = self.metadata
        if metadata is not _EMPTY:
            if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
                raise ConfigError("Endpoint.metadata", metadata, "must be a mapping with string keys")
            object.__setattr__(self, "metadata", MappingProxyType(dict(metadata)))
        host = f"[{address}]" if ":" in address else address
        object.__setattr__(self, "key", f"{host}:{port}")

    @classmethod
    def parse(
        cls, text: str, *, weight: float = 1, zone: str | None = None, default_port: int | None = None
    ) -> Endpoint:
        """An endpoint from ``"host:port"`` (``"[v6]:port"`` for IPv6), as static configuration writes it.

        Args:
            text: The address and port.
            weight: The endpoint's weight.
            zone: The endpoint's zone.
            default_port: The port when ``text`` has none (``None``: a port is required).

        Raises:
            ConfigError: The text is not ``host:port`` or a part is invalid.
        """
        if not isinstance(text, str):
            raise ConfigError("Endpoint", text, "must be a 'host:port' string")
        text = text.strip()
        port_text: str | None = None
        if text.startswith("["):  # "[v6]" or "[v6]:port"
            end = text.find("]") + 1
            host, rest = text[:end], text[end:]
            if end == 0 or (rest and not rest.startswith(":")):
                raise ConfigError("Endpoint", text, "must be 'host:port' ('[v6]:port' for IPv6)")
            port_text = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:  # a name without a port, or a bare IPv6 literal (which cannot carry one)
            host = text
        if port_text is None:
            if default_port is None:
                raise ConfigError("Endpoint", text, "must be 'host:port' ('[v6]:port' for IPv6)")
            return cls(host, default_port, weight, zone)
        if not port_text.isdigit():
            raise ConfigError("Endpoint.port", port_text, "must be an integer from 1 to 65535")
        return cls(host, int(port_text), weight, zone)

    def __str__(self) -> str:
        return self.key
