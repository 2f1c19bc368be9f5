from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

import connectivity as cx
from connectivity import admin
from connectivity.admin import ASGIApp, Registry
from connectivity.testing.server import RunningServer, serve

from .conftest import Broken, FakeBreaker, call

JSON = "application/json"
PROBLEM = "application/problem+json"


def get(url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client() as client:
        return client.get(url, **kwargs)


def test_each_request_reads_the_current_state(served: RunningServer[ASGIApp], breaker: FakeBreaker) -> None:
    with httpx.Client(base_url=served.url) as client:
        first = client.get("/breakers")
        assert first.status_code == 200
        assert first.json() == {"orders": {"state": "closed", "failures": 0}}
        breaker.state, breaker.failures = "open", 5  # the breaker trips
        assert client.get("/breakers").json() == {"orders": {"state": "open", "failures": 5}}
        assert client.get("/status").json()["breakers"] == {"orders": {"state": "open", "failures": 5}}


def test_an_ejection_shows_on_the_next_request(served: RunningServer[ASGIApp], registry: Registry) -> None:
    class Endpoints:
        def __init__(self) -> None:
            self.ejected: set[str] = set()

        def status(self) -> dict[str, object]:
            return {
                address: {"healthy": address not in self.ejected, "ejected": address in self.ejected}
                for address in ("10.0.0.1:80", "10.0.0.2:80")
            }

    endpoints = Endpoints()
    registry.register("endpoints", "orders", endpoints)
    assert get(f"{served.url}/endpoints").json()["orders"]["10.0.0.2:80"] == {"healthy": True, "ejected": False}
    endpoints.ejected.add("10.0.0.2:80")
    assert get(f"{served.url}/endpoints").json()["orders"]["10.0.0.2:80"] == {"healthy": False, "ejected": True}


def test_status_has_every_kind(served: RunningServer[ASGIApp], registry: Registry) -> None:
    transport = cx.transport(telemetry=False, request_id=False)
    broken = Broken()
    registry.register_client("orders", transport)
    registry.register("limiters", "orders", broken)
    response = get(f"{served.url}/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"clients", "breakers", "limiters", "endpoints"}
    layers = body["clients"]["orders"]["layers"]
    assert [layer["type"] for layer in layers] == ["TimeoutTransport", "RetryTransport", "HTTPTransport"]
    assert body["limiters"] == {"orders": {"error": "RuntimeError"}}
    assert body["breakers"] == body["endpoints"] == {}


@pytest.mark.parametrize("kind", ["clients", "breakers", "limiters", "endpoints"])
def test_an_empty_kind_is_an_empty_object(served: RunningServer[ASGIApp], kind: str) -> None:
    response = get(f"{served.url}/{kind}")
    assert response.status_code == 200
    assert response.json() == {}


def test_index_lists_the_routes(served: RunningServer[ASGIApp]) -> None:
    routes = get(f"{served.url}/").json()["routes"]
    assert set(routes) == {"/", "/status", "/clients", "/breakers", "/limiters", "/endpoints"}


def test_a_trailing_slash_is_ignored(served: RunningServer[ASGIApp], breaker: FakeBreaker) -> None:
    assert get(f"{served.url}/breakers/").json() == {"orders": {"state": "closed", "failures": 0}}


def test_unknown_path_is_a_404_problem(served: RunningServer[ASGIApp]) -> None:
    response = get(f"{served.url}/stats")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["cache-control"] == "no-store"
    problem = response.json()
    assert {key: problem[key] for key in ("type", "title", "status")} == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
    }


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_a_405_problem(served: RunningServer[ASGIApp], method: str) -> None:
    with httpx.Client() as client:
        response = client.request(method, f"{served.url}/status", content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 405


def test_head_has_the_headers_of_get_and_no_body(served: RunningServer[ASGIApp], breaker: FakeBreaker) -> None:
    with httpx.Client(base_url=served.url) as client:
        got = client.get("/status")
        head = client.head("/status")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == JSON
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


def test_token_is_required_when_configured(registry: Registry, breaker: FakeBreaker) -> None:
    with (
        serve(admin.app(registry=registry, token="s3cr3t-T0ken"), name="admin") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        missing = client.get("/breakers")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.headers["content-type"] == PROBLEM
        assert missing.json()["status"] == 401
        wrong = client.get("/breakers", headers={"authorization": "Bearer s3cr3t-T0keN"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        basic = client.get("/breakers", auth=("user", "s3cr3t-T0ken"))
        assert basic.status_code == 401
        ok = client.get("/breakers", headers={"authorization": "Bearer s3cr3t-T0ken"})
        assert ok.status_code == 200
        assert ok.json() == {"orders": {"state": "closed", "failures": 0}}
        assert client.get("/breakers", headers={"authorization": "bearer s3cr3t-T0ken"}).status_code == 200
        # the token guards the whole app: unknown routes are not revealed either
        assert client.get("/nope").status_code == 401


@pytest.mark.parametrize("token", ["", "two words", "tab\tinside", "newline\n", "naïve"])
def test_bad_tokens_are_rejected_without_echoing_them(token: str) -> None:
    with pytest.raises(cx.ConfigError) as info:
        admin.app(token=token)
    assert info.value.field == "admin.app.token"
    if token:
        assert token not in str(info.value)
        assert token not in repr(info.value.value)


def test_other_options_are_validated() -> None:
    with pytest.raises(cx.ConfigError):
        admin.app(allow_remote="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        admin.app(registry={})  # type: ignore[arg-type]


def test_mounted_in_starlette(registry: Registry, breaker: FakeBreaker) -> None:
    site = Starlette(routes=[Mount("/_connectivity", app=admin.app(registry=registry))])
    with serve(site, name="starlette") as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/_connectivity/breakers").json() == {"orders": {"state": "closed", "failures": 0}}
        index = client.get("/_connectivity/")
        assert index.status_code == 200
        assert "/_connectivity/status" in index.json()["routes"]
        assert client.get("/_connectivity/nope").status_code == 404
        assert client.post("/_connectivity/status").status_code == 405
        breaker.state = "open"
        assert client.get("/_connectivity/status").json()["breakers"]["orders"]["state"] == "open"


def test_mounted_twice_deep_in_starlette(registry: Registry, breaker: FakeBreaker) -> None:
    inner = Starlette(routes=[Mount("/admin", app=admin.app(registry=registry))])
    site = Starlette(routes=[Mount("/ops", app=inner)])
    with serve(site, name="starlette") as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/ops/admin/breakers").json() == {"orders": {"state": "closed", "failures": 0}}
        assert "/ops/admin/breakers" in client.get("/ops/admin/").json()["routes"]


def test_mounted_in_fastapi(registry: Registry, breaker: FakeBreaker) -> None:
    api = FastAPI()

    @api.get("/orders")
    def orders() -> dict[str, str]:
        return {"ok": "yes"}

    api.mount("/_connectivity", admin.app(registry=registry))
    with serve(api, name="fastapi") as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/orders").json() == {"ok": "yes"}
        assert client.get("/_connectivity/breakers").json() == {"orders": {"state": "closed", "failures": 0}}
        breaker.state = "half_open"
        assert client.get("/_connectivity/breakers").json()["orders"]["state"] == "half_open"
        assert client.head("/_connectivity/status").status_code == 200
        assert client.delete("/_connectivity/status").status_code == 405


@pytest.mark.anyio
async def test_served_to_an_async_client(served: RunningServer[ASGIApp], breaker: FakeBreaker) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/breakers")).json()["orders"]["state"] == "closed"
        breaker.state = "open"
        assert (await client.get("/breakers")).json()["orders"]["state"] == "open"


# Direct ASGI calls: clients and scopes a loopback test server cannot produce.


@pytest.mark.anyio
@pytest.mark.parametrize("client", [("10.0.0.1", 1234), ("2001:db8::1", 1234), ("testclient", 50000), None])
async def test_remote_clients_are_forbidden(registry: Registry, client: Any) -> None:
    response = await call(admin.app(registry=registry), client=client)
    assert response.status == 403
    assert response.headers["content-type"] == PROBLEM
    assert b'"status": 403' in response.body


@pytest.mark.anyio
@pytest.mark.parametrize("client", [("127.0.0.1", 1), ("127.8.9.10", 1), ["::1", 1], ("::ffff:127.0.0.1", 1)])
async def test_loopback_clients_are_served(registry: Registry, client: Any) -> None:
    assert (await call(admin.app(registry=registry), client=client)).status == 200


@pytest.mark.anyio
async def test_allow_remote_serves_remote_clients(registry: Registry, breaker: FakeBreaker) -> None:
    response = await call(admin.app(registry=registry, allow_remote=True), "/breakers", client=("10.0.0.1", 1234))
    assert response.status == 200
    assert b'"closed"' in response.body


@pytest.mark.anyio
async def test_remote_check_comes_before_the_token(registry: Registry) -> None:
    app = admin.app(registry=registry, token="t")
    headers = [(b"authorization", b"Bearer t")]
    assert (await call(app, client=("10.0.0.1", 1), headers=headers)).status == 403
    assert (await call(app, headers=headers)).status == 200


@pytest.mark.anyio
async def test_path_already_stripped_by_the_mount(registry: Registry, breaker: FakeBreaker) -> None:
    # Starlette before 0.33, and some servers, strip the mount prefix from "path" and put it in "root_path".
    response = await call(admin.app(registry=registry), "/breakers", root_path="/_connectivity")
    assert response.status == 200
    assert b'"orders"' in response.body


@pytest.mark.anyio
async def test_path_equal_to_root_path_is_the_index(registry: Registry) -> None:
    response = await call(admin.app(registry=registry), "/_connectivity", root_path="/_connectivity")
    assert response.status == 200
    assert b'"/_connectivity/status"' in response.body


@pytest.mark.anyio
async def test_lifespan_completes_startup_and_shutdown() -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await admin.app()({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


@pytest.mark.anyio
async def test_websockets_are_closed() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/status", "client": ("127.0.0.1", 1)}
    await admin.app()(scope, receive, send)
    assert [message["type"] for message in sent] == ["websocket.close"]


def test_standalone_with_lifespan_on(registry: Registry, breaker: FakeBreaker) -> None:
    import threading

    import uvicorn

    # serve() runs with lifespan off; check a real server's lifespan protocol too.
    config = uvicorn.Config(
        admin.app(registry=registry), host="127.0.0.1", port=0, lifespan="on", log_config=None, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        assert get(f"http://127.0.0.1:{port}/breakers").json()["orders"]["state"] == "closed"
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


@pytest.mark.anyio
async def test_unknown_scope_types_are_refused() -> None:
    async def receive() -> MutableMapping[str, Any]:
        raise AssertionError("not called")

    async def send(message: MutableMapping[str, Any]) -> None:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="webtransport"):
        await admin.app()({"type": "webtransport"}, receive, send)
