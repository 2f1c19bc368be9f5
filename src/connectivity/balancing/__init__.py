"""Client-side load balancing: endpoint sets with live load, and the pickers that choose among them.

Pure building blocks, no I/O: a transport keeps the current :class:`EndpointSet` snapshot (rebuilt when
discovery or health changes), asks a picker for an endpoint per request, and reports the request's start and end
to the endpoint's :class:`EndpointStats`.

=================  ====================================================  =======================================
picker             chooses                                               cost per pick
=================  ====================================================  =======================================
``RoundRobin``     each candidate in turn                                O(1)
``Random``         a uniformly random candidate                          O(1)
``LeastRequest``   P2C: the fewer requests in flight (Envoy)             O(choice_count)
``EWMA``           P2C: lower peak-EWMA latency * (in flight + 1)        O(choice_count)
``Weighted``       smooth weighted round robin (nginx)                   O(n)
``RingHash``       consistent hashing on a ketama ring (Envoy)           O(log R); O(R log R) per new ring
``Maglev``         Maglev consistent hashing (Envoy)                     O(1); O(M log M) per new table
=================  ====================================================  =======================================

Every picker applies the panic threshold; all but the hash pickers also prefer a local zone (with Envoy's
gradual failover) and slow start. See :mod:`connectivity.balancing.base`.

.. versionadded:: 0.1
"""

from connectivity.balancing.base import Picker, ZoneAwarePicker
from connectivity.balancing.endpoints import EndpointSet
from connectivity.balancing.health import HealthCheck, HealthChecker, HealthTransition
from connectivity.balancing.maglev import Maglev
from connectivity.balancing.p2c import EWMA, LeastRequest
from connectivity.balancing.ring import RingHash
from connectivity.balancing.simple import Random, RoundRobin
from connectivity.balancing.slowstart import SlowStart
from connectivity.balancing.stats import DEFAULT_DECAY, DEFAULT_PENALTY, EndpointStats
from connectivity.balancing.weighted import Weighted

__all__ = [
    "DEFAULT_DECAY",
    "DEFAULT_PENALTY",
    "EWMA",
    "EndpointSet",
    "EndpointStats",
    "HealthCheck",
    "HealthChecker",
    "HealthTransition",
    "LeastRequest",
    "Maglev",
    "Picker",
    "Random",
    "RingHash",
    "RoundRobin",
    "SlowStart",
    "Weighted",
    "ZoneAwarePicker",
]
