"""The status app over real layers: an ejection and a breaker trip show on the next request, and the app can be
guarded by the authorization middleware."""

from __future__ import annotations

from typing import Any

import httpx

import connectivity as cx
from connectivity import admin
from connectivity.balancing import RoundRobin
from connectivity.middleware import AuthorizationMiddleware, PeerIdentityMiddleware
from connectivity.policies.outlier import OutlierDetector
from connectivity.testing.server import serve


class Status:
    """An upstream answering a fixed status."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_an_ejection_shows_on_the_next_status_request() -> None:
    outlier = OutlierDetector(consecutive_5xx=2, always_eject_one_host=True, interval=1000.0)
    with serve(Status(503)) as bad, serve(Status(200)) as good, serve(admin.app()) as status:
        bad_key = f"127.0.0.1:{bad.port}"
        transport = cx.transport(
            discovery=[bad_key, f"127.0.0.1:{good.port}"],
            balancer=RoundRobin(),
            outlier=outlier,
            retry=False,
            service="live-ejection",
            telemetry=False,
        )
        with httpx.Client(transport=transport, base_url="http://live-ejection") as client:
            seen: list[tuple[int, list[str]]] = []
            for _ in range(
                4
            ):  # round robin (from a random start): the bad replica answers requests 1 and 3, or 2 and 4
                code = client.get("/").status_code
                seen.append((code, httpx.get(f"{status.url}/endpoints").json()["live-ejection"]["ejected"]))
    second = [index for index, (code, _) in enumerate(seen) if code == 503][1]
    assert [ejected for _, ejected in seen[:second]] == [[]] * second
    # The request that made the second 503 in a row: the status shows the ejection at once, and it stays.
    assert [ejected for _, ejected in seen[second:]] == [[bad_key]] * (len(seen) - second)


def test_a_breaker_trip_shows_on_the_next_status_request() -> None:
    breaker = cx.CircuitBreaker(name="live-breaker", failure_ratio=None, consecutive_failures=2, open_for=60.0)
    with serve(Status(503)) as upstream, serve(admin.app()) as status:
        transport = cx.transport(breaker=breaker, breaker_scope="client", retry=False, telemetry=False)
        with httpx.Client(transport=transport) as client:
            states = []
            for _ in range(2):
                client.get(upstream.url)
                states.append(httpx.get(f"{status.url}/breakers").json()["live-breaker"]["circuits"]["*"]["state"])
    assert states == ["closed", "open"]


def test_the_status_app_behind_peer_identity_and_authorization() -> None:
    guarded = PeerIdentityMiddleware(
        AuthorizationMiddleware(
            admin.app(allow_remote=True),
            policies=[
                {"name": "operators", "rules": [{"from": [{"source": {"principals": ["example.test/ns/ops/*"]}}]}]}
            ],
        ),
        sources=["xfcc"],
        trusted_proxies=["127.0.0.1"],
    )
    operator = "By=spiffe://example.test/ns/edge/sa/proxy;URI=spiffe://example.test/ns/ops/sa/oncall"
    stranger = "By=spiffe://example.test/ns/edge/sa/proxy;URI=spiffe://example.test/ns/shop/sa/checkout"
    with serve(guarded) as status:
        assert httpx.get(f"{status.url}/status").status_code == 403  # no identity at all
        assert httpx.get(f"{status.url}/status", headers={"x-forwarded-client-cert": stranger}).status_code == 403
        allowed = httpx.get(f"{status.url}/status", headers={"x-forwarded-client-cert": operator})
        assert allowed.status_code == 200
        assert set(allowed.json()) >= {"clients", "breakers", "limiters", "endpoints"}
