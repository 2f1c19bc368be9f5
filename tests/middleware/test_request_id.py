"""RequestIDMiddleware: accept, validate, generate, isolate, over real uvicorn servers."""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import pytest

from connectivity.errors import ConfigError
from connectivity.middleware import RequestIDMiddleware
from connectivity.telemetry.request_id import current_request_id

GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_valid_incoming_id_is_accepted_everywhere(server: Any, fastapi_app: Any) -> None:
    srv = server(RequestIDMiddleware(fastapi_app))
    incoming = "req-42_A.b:c@d/e+f=g"
    response = httpx.get(f"{srv.url}/items/1", headers={"x-request-id": incoming})
    assert response.headers.get_list("x-request-id") == [incoming]
    body = response.json()
    assert body["request_id"] == incoming  # the current request id, in the handler
    assert body["state_request_id"] == incoming  # request.state.request_id


def test_without_an_incoming_id_a_new_one_is_generated_per_request(server: Any, fastapi_app: Any) -> None:
    srv = server(RequestIDMiddleware(fastapi_app))
    with httpx.Client(base_url=srv.url) as client:
        first, second = client.get("/items/1"), client.get("/items/1")
    ids = [response.headers["x-request-id"] for response in (first, second)]
    assert all(GENERATED.fullmatch(value) for value in ids)
    assert ids[0] != ids[1]
    assert [response.json()["request_id"] for response in (first, second)] == ids


@pytest.mark.parametrize(
    "invalid",
    ["has space", "x" * 129, "semi;colon", 'quo"te', "<script>alert(1)</script>", "comma,separated"],
)
def test_an_invalid_incoming_id_is_replaced_and_never_echoed(server: Any, fastapi_app: Any, invalid: str) -> None:
    srv = server(RequestIDMiddleware(fastapi_app))
    response = httpx.get(f"{srv.url}/items/1", headers={"x-request-id": invalid})
    request_id = response.headers["x-request-id"]
    assert GENERATED.fullmatch(request_id)
    assert response.json()["request_id"] == request_id
    assert invalid not in response.text
    assert all(invalid not in value for value in response.headers.values())


def test_duplicate_incoming_ids_are_both_refused(server: Any, fastapi_app: Any) -> None:
    srv = server(RequestIDMiddleware(fastapi_app))
    response = httpx.get(
        f"{srv.url}/items/1", headers=[("x-request-id", "first-id"), ("x-request-id", "second-id")]
    )
    request_id = response.headers["x-request-id"]
    assert GENERATED.fullmatch(request_id)
    assert response.json()["request_id"] == request_id
    assert "first-id" not in response.text
    assert "second-id" not in response.text


def test_untrusted_incoming_ids_are_always_replaced(server: Any, fastapi_app: Any) -> None:
    srv = server(RequestIDMiddleware(fastapi_app, trust_incoming=False))
    response = httpx.get(f"{srv.url}/items/1", headers={"x-request-id": "caller-chosen"})
    assert GENERATED.fullmatch(response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_without_the_response_header_the_id_is_still_current(server: Any, fastapi_app: Any) -> None:
    srv = server(RequestIDMiddleware(fastapi_app, response_header=False))
    response = httpx.get(f"{srv.url}/items/1", headers={"x-request-id": "req-7"})
    assert "x-request-id" not in response.headers
    assert response.json()["request_id"] == "req-7"


def test_a_header_the_app_set_itself_is_kept(server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Request-ID", b"from-app")]})
        await send({"type": "http.response.body", "body": b"ok"})

    srv = server(RequestIDMiddleware(app))
    response = httpx.get(srv.url, headers={"x-request-id": "from-caller"})
    assert response.headers.get_list("x-request-id") == ["from-app"]


def test_a_custom_header_is_read_and_written_case_insensitively(server: Any, starlette_app: Any) -> None:
    middleware = RequestIDMiddleware(starlette_app, header="X-Correlation-ID")
    assert middleware.header == "x-correlation-id"
    srv = server(middleware)
    response = httpx.get(f"{srv.url}/whoami", headers={"X-Correlation-Id": "corr-1", "x-request-id": "other"})
    assert response.headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in response.headers
    assert response.json() == {"request_id": "corr-1"}


class Rendezvous:
    """An app that answers only once ``parties`` requests are inside it at the same time, with the current id."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.everyone: anyio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.everyone is None:
            self.everyone = anyio.Event()
        self.arrived += 1
        if self.arrived == self.parties:
            self.everyone.set()
        with anyio.fail_after(5):
            await self.everyone.wait()
        # Every request has set its id by now: each must still read its own.
        body = f"{current_request_id()} {scope['state']['request_id']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.anyio
async def test_concurrent_requests_each_see_their_own_id(server: Any) -> None:
    srv = server(RequestIDMiddleware(Rendezvous(parties=3)))
    bodies: dict[str, str] = {}

    async def fetch(client: httpx.AsyncClient, request_id: str) -> None:
        response = await client.get(srv.url, headers={"x-request-id": request_id})
        bodies[request_id] = response.text

    with anyio.fail_after(10):
        async with httpx.AsyncClient() as client, anyio.create_task_group() as group:
            for request_id in ("req-a", "req-b", "req-c"):
                group.start_soon(fetch, client, request_id)
    assert bodies == {value: f"{value} {value}" for value in ("req-a", "req-b", "req-c")}


@pytest.mark.anyio
async def test_the_id_is_reset_after_the_request_even_when_the_app_raises(http_scope: Any, asgi_call: Any) -> None:
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_request_id())
        raise RuntimeError("app failure")

    assert current_request_id() is None
    with pytest.raises(RuntimeError, match="app failure"):
        await asgi_call(RequestIDMiddleware(app), http_scope(headers=[(b"x-request-id", b"req-9")]))
    assert seen == ["req-9"]
    assert current_request_id() is None


@pytest.mark.parametrize("header", ["bad header", "", "x-id:", "x-íd", 42, None])
def test_the_header_name_is_validated(header: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        RequestIDMiddleware(lambda scope, receive, send: None, header=header)
    assert caught.value.field == "RequestIDMiddleware.header"
    assert caught.value.value == header


@pytest.mark.parametrize("field", ["trust_incoming", "response_header"])
def test_flags_must_be_bools(field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RequestIDMiddleware(lambda scope, receive, send: None, **{field: "yes"})
    assert caught.value.field == f"RequestIDMiddleware.{field}"


def test_the_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="app"):
        RequestIDMiddleware(None)  # type: ignore[arg-type]
