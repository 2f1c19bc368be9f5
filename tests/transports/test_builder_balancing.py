"""``connectivity.transport(discovery=..., balancer=...)``: load balancing wired into the recommended stack."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

import connectivity as cx
from connectivity.balancing import RoundRobin
from connectivity.errors import ConfigError
from connectivity.policies.outlier import OutlierDetector
from connectivity.testing import ScriptedTransport
from connectivity.testing.server import serve
from connectivity.transports import (
    AutoTransport,
    HedgingTransport,
    HTTPTransport,
    LoadBalancingTransport,
    RetryTransport,
    TimeoutTransport,
)
from connectivity.transports._endpoint_pools import EndpointPools, find_pools


class Named:
    """An ASGI app answering with its own name and the Host header it was sent."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        host = dict(scope["headers"]).get(b"host", b"").decode()
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": f"{self.name} {host}".encode()})


def layers(transport: object) -> list[type]:
    found = []
    while transport is not None:
        found.append(type(transport))
        transport = getattr(transport, "inner", None)
    return found


def test_every_replica_serves_the_logical_service() -> None:
    with serve(Named("a")) as a, serve(Named("b")) as b:
        endpoints = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        transport = cx.transport(discovery=endpoints, balancer=RoundRobin(), service="orders", telemetry=False)
        with httpx.Client(transport=transport, base_url="http://orders") as client:
            bodies = [client.get("/").text for _ in range(6)]
    assert Counter(body.split()[0] for body in bodies) == {"a": 3, "b": 3}
    assert {body.split()[1] for body in bodies} == {"orders"}  # the logical Host header is kept


def test_a_retry_goes_to_another_replica() -> None:
    with serve(Named("bad", status=503)) as bad, serve(Named("good")) as good:
        endpoints = [f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}"]
        transport = cx.transport(discovery=endpoints, balancer=RoundRobin(), telemetry=False, retry=cx.Retry())
        with httpx.Client(transport=transport, base_url="http://orders") as client:
            responses = [client.get("/") for _ in range(4)]
    assert all(response.status_code == 200 for response in responses)
    assert all(response.text.startswith("good") for response in responses)


def test_the_balancer_sits_inside_retry_and_hedging() -> None:
    transport = cx.transport(
        discovery=["127.0.0.1:1"],
        hedge=cx.Hedge(delay=0.5),
        timeout=cx.Timeout(total=5.0, per_try=1.0),
        telemetry=False,
        request_id=False,
    )
    found = layers(transport)
    assert found[:3] == [TimeoutTransport, RetryTransport, HedgingTransport]
    assert found[3] is LoadBalancingTransport
    assert found[4] is TimeoutTransport  # the per-try limit, below the pick
    assert found[5:] == [EndpointPools, HTTPTransport]  # a network transport per endpoint, and the fallback


def test_each_endpoint_gets_a_network_transport_built_with_the_same_backend_and_options() -> None:
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=1)
    with serve(Named("a")) as a, serve(Named("b")) as b:
        endpoints = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        transport = cx.transport(discovery=endpoints, backend="auto", limits=limits, http1=True, telemetry=False)
        pools = find_pools(transport)
        assert pools is not None
        with httpx.Client(transport=transport, base_url="http://orders") as client:
            for _ in range(4):
                client.get("/")
            built = pools.pools
        assert sorted(built) == sorted(endpoints)
        for network in built.values():
            assert isinstance(network, AutoTransport)
            assert network._options == {"limits": limits, "http1": True}
        assert isinstance(pools.inner, AutoTransport)
        assert pools.pools == {}  # the client closed them all


def test_with_an_inner_transport_every_endpoint_shares_it() -> None:
    inner = ScriptedTransport(default=200)
    transport = cx.transport(inner, discovery=["127.0.0.1:1", "127.0.0.1:2"], telemetry=False)
    assert find_pools(transport) is None
    assert layers(transport)[-1] is ScriptedTransport


def test_balancing_options_need_discovery() -> None:
    with pytest.raises(ConfigError, match="needs discovery"):
        cx.transport(balancer=RoundRobin())
    with pytest.raises(ConfigError, match="needs discovery"):
        cx.transport(outlier=OutlierDetector())
    with pytest.raises(ConfigError, match="balancer"):
        cx.transport(discovery=["127.0.0.1:1"], balancer="ewma")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="outlier detection"):
        cx.transport(discovery=["127.0.0.1:1"], breaker=cx.CircuitBreaker(), breaker_scope="endpoint")
