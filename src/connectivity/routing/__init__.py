"""Outbound routing: route tables, weighted traffic splits, and fault-injection policy; pure, no I/O.

A :class:`RouteTable` holds :class:`Route` entries matched in order on the method, the path (:class:`PathMatch`:
prefix, exact, separated prefix, regex, URI template) and headers (:class:`HeaderMatch`). A route sends to one
target or splits traffic by weight (:class:`Backend`), optionally sticky (:class:`Sticky`) and with header
overrides (:class:`Override`), and carries per-route timeout and retry overrides. Invalid configuration raises
:class:`~connectivity.errors.ConfigError` naming the route and the field.

:class:`FaultInjection` (with :class:`Delay` and :class:`Abort`) is Envoy's HTTP fault filter as a pure policy;
:class:`MirrorSlots` is request mirroring's in-flight bound and counters (:class:`MirrorStats`).

The transports that act on these live in :mod:`connectivity.transports`: ``RoutingTransport``,
``MirrorTransport`` and ``FaultInjectionTransport``.

.. versionadded:: 0.1
"""

from connectivity.routing.fault import Abort, Delay, FaultDecision, FaultInjection, FaultStats
from connectivity.routing.match import HeaderMatch, PathMatch
from connectivity.routing.mirror import MirrorSlots, MirrorStats, shadow_host
from connectivity.routing.route import Route, RouteChoice, RouteTable
from connectivity.routing.split import Backend, Override, Sticky, stable_fraction

__all__ = [
    "Abort",
    "Backend",
    "Delay",
    "FaultDecision",
    "FaultInjection",
    "FaultStats",
    "HeaderMatch",
    "MirrorSlots",
    "MirrorStats",
    "Override",
    "PathMatch",
    "Route",
    "RouteChoice",
    "RouteTable",
    "Sticky",
    "shadow_host",
    "stable_fraction",
]
