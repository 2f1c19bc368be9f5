"""Discovery: the endpoint model and the resolvers that produce endpoint lists.

:class:`Static` (a fixed list), :class:`DNS` (A/AAAA and SRV records, refreshed by TTL; needs the ``dns`` extra),
:class:`File` (a JSON or YAML endpoint file, reloaded when it changes; YAML needs the ``yaml`` extra) and
:class:`Etcd` (keys under a prefix, followed with a watch) all keep the last good list when their source fails.

.. versionadded:: 0.1
"""

from connectivity.discovery.dns import DNS
from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.etcd import Etcd
from connectivity.discovery.file import File, parse_endpoints
from connectivity.discovery.resolver import DiscoveryError, Resolution, Resolver, Static, UpdateCallback

__all__ = [
    "DNS",
    "DiscoveryError",
    "Endpoint",
    "Etcd",
    "File",
    "Resolution",
    "Resolver",
    "Static",
    "UpdateCallback",
    "parse_endpoints",
]
