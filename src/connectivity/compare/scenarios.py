"""The scenarios ``connectivity compare`` runs: what goes wrong at the upstreams, and the policy that meets it.

Every scenario runs against the same fleet of :data:`REPLICAS` upstream replicas; the faults (if any) hit the last
one, so the others stay healthy and a policy that steers away from the bad replica can hide it completely. The
policy is the same for every contender of a scenario: the in-process stack is built from it by
:meth:`~connectivity.compare.policy.Policy.transport` and each sidecar's configuration is generated from it.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from connectivity.compare.policy import Policy
from connectivity.errors import ConfigError
from connectivity.testing.upstream import Faults

__all__ = ["REPLICAS", "SCENARIOS", "Scenario", "select"]

REPLICAS = 3
"""Upstream replicas in the fleet."""

_BAD = REPLICAS - 1


@dataclass(frozen=True, slots=True)
class Scenario:
    """One situation at the upstreams, and the policy every contender is configured with to face it.

    Attributes:
        name: Short name (CLI ``--scenarios``, JSON keys, plot titles).
        title: One line for tables and the report.
        policy: What every contender is configured to do.
        faults: Faults per replica index (replicas not named are healthy).
        down: Replica indexes that are stopped for the scenario (connections to them are refused).
        rate_factor: The open-loop rate is this times the configured rate (above 1: a burst over the limit).
        failing_replica: A replica fails in this scenario: the in-process stack's success rate is checked
            against every sidecar's.
        mtls: Every hop to the replicas is mutual TLS (the replicas require a client certificate); a sidecar's
            client talks plain HTTP to it on the loopback, as in a pod.

    .. versionadded:: 0.1
    """

    name: str
    title: str
    policy: Policy = field(default_factory=Policy)
    faults: Mapping[int, Faults] = field(default_factory=lambda: MappingProxyType({}))
    down: frozenset[int] = frozenset()
    rate_factor: float = 1.0
    failing_replica: bool = False
    mtls: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("healthy", "every replica healthy"),
    Scenario(
        "errors",
        "one replica answers 503 to 30 % of requests",
        faults=MappingProxyType({_BAD: Faults(error_rate=0.3, error_status=503)}),
        failing_replica=True,
    ),
    Scenario(
        "slow",
        "one replica answers 200 ms late (least-request balancing)",
        policy=Policy(balancing="least_request"),
        faults=MappingProxyType({_BAD: Faults(latency=0.2)}),
        failing_replica=True,
    ),
    Scenario(
        "down",
        "one replica down (connection refused)",
        down=frozenset({_BAD}),
        failing_replica=True,
    ),
    Scenario(
        "429",
        "one replica answers 429 with Retry-After: 1 to 50 % of requests (429 retried, Retry-After honoured)",
        policy=Policy(retry_statuses=frozenset({429, 502, 503, 504}), retry_after_cap=2.0),
        faults=MappingProxyType({_BAD: Faults(error_rate=0.5, error_status=429, retry_after="1")}),
        failing_replica=True,
    ),
    Scenario(
        "burst",
        "open loop at twice the rate limit (100/s, burst 20)",
        policy=Policy(rate_limit=100.0, burst=20),
        rate_factor=2.0,
    ),
    Scenario("mtls", "every replica healthy, mutual TLS on every hop to the replicas", mtls=True),
)
"""Every scenario, in the order they run."""


def select(names: Sequence[str] | None) -> tuple[Scenario, ...]:
    """The scenarios named (all when ``names`` is empty or ``None``), in :data:`SCENARIOS` order.

    Raises:
        ConfigError: A name is not a scenario.
    """
    if not names:
        return SCENARIOS
    known = {scenario.name for scenario in SCENARIOS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError("scenarios", ",".join(unknown), f"must be among {', '.join(sorted(known))}")
    return tuple(scenario for scenario in SCENARIOS if scenario.name in names)
