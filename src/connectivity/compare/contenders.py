"""The contenders' clients: bare httpx, the in-process stack and bare httpx through each sidecar, built alike.

Theory of operation: every contender sends with an ``httpx.AsyncClient`` whose network transport is a
:class:`FreshPool`: the same network transport as usual (httpx's own for the bare clients,
:class:`connectivity.transports.EndpointPools` of :class:`~connectivity.transports.HTTPTransport` under the
in-process stack, as ``connectivity.transport(discovery=...)`` builds it), replaced by a new one, with an empty
connection pool, before every block (:func:`connectivity.compare.drive.settle`). Why: httpcore's pool looks at
*every* pooled connection on every request (is it expired? is its socket readable? one ``poll()`` system call per
idle connection), so a request costs more client CPU the more idle connections sit in the pool, some 20-25 µs
per idle connection on a loaded 2-vCPU machine. How many there are depends on the contender's history: a
closed-loop block leaves 8-14 of them, and they expire only after 5 s of idleness, so a contender whose turn came
soon after its previous closed-loop block paid for a dozen idle connections on each request, and one that waited
longer paid for none. Renewing the pool before each block (then opening the connections the mode needs, untimed)
puts every contender in the same state whatever the order of the blocks; the in-process stack keeps its policy
state (ejections, balancer statistics) across blocks, as a sidecar does, since only the bottom of its stack is
renewed.

In the ``mtls`` scenario the bare client and the in-process stack talk mutual TLS to the replicas themselves
(bare httpx with a plain :mod:`ssl` context; the stack with ``tls=MTLS(...)`` checking the replicas' SPIFFE id),
while the sidecars' clients talk plain HTTP to the sidecar on the loopback, and the sidecar originates the mTLS.

.. versionadded:: 0.1
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any

from connectivity._http import httpx
from connectivity.compare.drive import Contender
from connectivity.compare.fleet import Fleet
from connectivity.compare.pki import UPSTREAM_ID, Pki
from connectivity.compare.scenarios import Scenario
from connectivity.transports._endpoint_pools import EndpointPools
from connectivity.transports.http import HTTPTransport
from connectivity.transports.peer_identity import PeerIdentityTransport
from connectivity.transports.timeout import deadline_aware

__all__ = ["BARE", "CONTROL", "CONTROL_SCENARIO", "IN_PROCESS", "FreshPool", "build"]

BARE = "httpx"
"""The bare httpx contender: no policy at all."""
IN_PROCESS = "connectivity"
"""The in-process contender: the policy as a :func:`connectivity.transport` stack."""
CONTROL = "httpx (control)"
"""A second bare httpx client, in the healthy scenario only: the noise floor."""
CONTROL_SCENARIO = "healthy"


class FreshPool(httpx.AsyncBaseTransport):
    """A network transport that :meth:`renew` replaces with a new one (an empty pool); calls go to the current one.

    Args:
        make: Builds the network transport (called now and on every renewal).

    .. versionadded:: 0.1
    """

    def __init__(self, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._make = make
        self._current = make()
        # A deadline-aware transport below keeps the timeout layers above from adding cancel scopes of their own.
        self.connectivity_deadline_aware = deadline_aware(self._current)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._current.handle_async_request(request)

    async def renew(self) -> None:
        """Close the current transport (its pooled connections) and continue on a new one."""
        old, self._current = self._current, self._make()
        await old.aclose()

    async def aclose(self) -> None:
        await self._current.aclose()


def build(
    scenario: Scenario,
    fleet: Fleet,
    sidecars: Sequence[tuple[str, str, Any]],
    wanted: Sequence[str],
    pki: Pki | None = None,
) -> list[Contender]:
    """Fresh clients for one scenario: bare, in-process, and through each sidecar (the caller closes them).

    Args:
        scenario: The scenario (its policy; ``mtls``; the healthy one also gets :data:`CONTROL`).
        fleet: The replicas.
        sidecars: ``(name, url, sidecar)`` of every sidecar running.
        wanted: Contender names to build (empty: all).
        pki: The certificates, for a scenario with ``mtls``.
    """
    policy = scenario.policy
    timeout = httpx.Timeout(policy.total_timeout)
    # One context per client, built once: a new pool must not reload a CA bundle (tens of ms) before each block.
    plain = ssl.create_default_context()
    tls = pki if scenario.mtls else None

    def client(
        make: Callable[[], httpx.AsyncBaseTransport], urls: list[str], name: str, **extra: Any
    ) -> Contender:
        pool = FreshPool(make)
        made = httpx.AsyncClient(trust_env=False, timeout=timeout, transport=pool)
        return Contender(name, made, urls, renew=pool.renew, **extra)

    contenders: list[Contender] = []
    if not wanted or BARE in wanted:
        urls = [f"{fleet.scheme}://{h}:{p}/" for h, p in fleet.addresses]
        context = plain if tls is None else tls.clients[BARE].ssl_context()
        contenders.append(client(lambda: httpx.AsyncHTTPTransport(verify=context), urls, BARE))
        if scenario.name == CONTROL_SCENARIO:
            # A twin of the baseline, measured like everyone else: how far it lands from bare httpx is the noise
            # floor of the run, against which the in-process stack's added CPU is read.
            contenders.append(client(lambda: httpx.AsyncHTTPTransport(verify=context), urls, CONTROL))
    if not wanted or IN_PROCESS in wanted:
        endpoints = [f"{h}:{p}" for h, p in fleet.addresses]
        mtls = None if tls is None else tls.clients[IN_PROCESS].mtls(peer_id=UPSTREAM_ID)
        verify: Any = plain if mtls is None else mtls.client_context()
        pool = FreshPool(lambda: EndpointPools(lambda: HTTPTransport(verify=verify)))
        # What cx.transport(discovery=..., tls=mtls) builds at the bottom of the stack: a pool per endpoint (here
        # renewable) with the MTLS client context, under the peer-identity check.
        inner = pool if mtls is None else PeerIdentityTransport(pool, tls=mtls)
        stack = policy.transport(endpoints, inner=inner, service="upstream", telemetry=False, request_id=False)
        made = httpx.AsyncClient(trust_env=False, timeout=timeout, transport=stack)
        contenders.append(Contender(IN_PROCESS, made, [f"{fleet.scheme}://upstream/"], renew=pool.renew))
    for name, url, sidecar in sidecars:
        contenders.append(
            client(
                lambda: httpx.AsyncHTTPTransport(verify=plain),
                [url],
                name,
                cpu_ns=sidecar.cpu_ns,
                rss_bytes=sidecar.rss_bytes,
                counters=sidecar.counters,
            )
        )
    return contenders
