"""TracingMiddleware: SERVER spans and HTTP server metrics over real uvicorn servers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry import propagate
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.semconv._incubating.metrics.http_metrics import HTTP_SERVER_ACTIVE_REQUESTS
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.semconv.metrics.http_metrics import HTTP_SERVER_REQUEST_DURATION
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from connectivity.middleware import RequestIDMiddleware, TracingMiddleware
from connectivity.telemetry import Telemetry
from connectivity.telemetry import semconv as ours

METHOD = http_attributes.HTTP_REQUEST_METHOD
METHOD_ORIGINAL = http_attributes.HTTP_REQUEST_METHOD_ORIGINAL
STATUS = http_attributes.HTTP_RESPONSE_STATUS_CODE
ROUTE = http_attributes.HTTP_ROUTE
ERROR = error_attributes.ERROR_TYPE
SCHEME = url_attributes.URL_SCHEME
QUERY = url_attributes.URL_QUERY
VERSION = network_attributes.NETWORK_PROTOCOL_VERSION

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
OTHER_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"


def server_spans(otel: Any) -> list[Any]:
    return [span for span in otel.spans() if span.kind is SpanKind.SERVER]


def the_server_span(otel: Any) -> Any:
    spans = server_spans(otel)
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def test_fastapi_route_gives_a_templated_server_span_with_the_stable_attributes(
    otel: Any, server: Any, fastapi_app: Any, secret: str
) -> None:
    srv = server(TracingMiddleware(fastapi_app, telemetry=otel.telemetry()))
    with httpx.Client() as client:
        response = client.get(
            f"{srv.url}/items/42?q=1&token={secret}",
            headers={"user-agent": "probe/1.0", "authorization": f"Bearer {secret}", "cookie": f"sid={secret}"},
        )
    assert response.status_code == 200
    srv.wait()

    span = the_server_span(otel)
    assert span.name == "GET /items/{item_id}"
    assert dict(span.attributes) == {
        METHOD: "GET",
        url_attributes.URL_PATH: "/items/42",
        SCHEME: "http",
        QUERY: "q=1&token=REDACTED",
        server_attributes.SERVER_ADDRESS: "127.0.0.1",
        server_attributes.SERVER_PORT: srv.port,
        client_attributes.CLIENT_ADDRESS: "127.0.0.1",
        VERSION: "1.1",
        user_agent_attributes.USER_AGENT_ORIGINAL: "probe/1.0",
        STATUS: 200,
        ROUTE: "/items/{item_id}",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None
    assert secret not in span.to_json()


def test_our_attribute_names_are_the_semantic_conventions() -> None:
    assert (ours.HTTP_REQUEST_METHOD, ours.HTTP_REQUEST_METHOD_ORIGINAL) == (METHOD, METHOD_ORIGINAL)
    assert (ours.HTTP_RESPONSE_STATUS_CODE, ours.HTTP_ROUTE, ours.ERROR_TYPE) == (STATUS, ROUTE, ERROR)
    assert (ours.URL_PATH, ours.URL_QUERY, ours.URL_SCHEME) == (url_attributes.URL_PATH, QUERY, SCHEME)
    assert ours.SERVER_ADDRESS == server_attributes.SERVER_ADDRESS
    assert ours.SERVER_PORT == server_attributes.SERVER_PORT
    assert ours.CLIENT_ADDRESS == client_attributes.CLIENT_ADDRESS
    assert ours.NETWORK_PROTOCOL_VERSION == VERSION
    assert ours.USER_AGENT_ORIGINAL == user_agent_attributes.USER_AGENT_ORIGINAL
    assert (ours.METRIC_SERVER_DURATION, ours.METRIC_SERVER_ACTIVE) == (
        HTTP_SERVER_REQUEST_DURATION,
        HTTP_SERVER_ACTIVE_REQUESTS,
    )


@pytest.mark.parametrize(
    ("path", "status", "route"),
    [
        ("/hello/ann", 200, "/hello/{name}"),
        ("/m/deep/x", 200, "/m/deep/{z}"),  # a route inside a mount: the mount prefix is part of the template
        ("/m/elsewhere", 404, "/m/{path}"),  # the mount matched, nothing inside it did
    ],
)
def test_starlette_routes_are_templated(
    otel: Any, server: Any, starlette_app: Any, path: str, status: int, route: str
) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    assert httpx.get(srv.url + path).status_code == status
    srv.wait()
    span = the_server_span(otel)
    assert span.attributes[ROUTE] == route
    assert span.name == f"GET {route}"


def _hide_route(app: Any) -> Any:
    """An app whose framework matches routes on its own copy of the scope (as older Starlette did not set
    ``scope["route"]``): only ``scope["app"]`` is visible to the middleware."""

    async def framework(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["app"] = app
        await app(dict(scope), receive, send)

    return framework


@pytest.mark.parametrize(
    ("path", "route"),
    [("/hello/ann", "/hello/{name}"), ("/m/deep/x", "/m/deep/{z}"), ("/nowhere", None)],
)
def test_without_scope_route_the_app_routes_are_matched(
    otel: Any, server: Any, starlette_app: Any, path: str, route: str | None
) -> None:
    srv = server(TracingMiddleware(_hide_route(starlette_app), telemetry=otel.telemetry()))
    httpx.get(srv.url + path)
    srv.wait()
    span = the_server_span(otel)
    assert span.attributes.get(ROUTE) == route
    assert span.name == ("GET" if route is None else f"GET {route}")


def test_not_found_has_no_route_and_is_not_an_error(otel: Any, server: Any, fastapi_app: Any) -> None:
    srv = server(TracingMiddleware(fastapi_app, telemetry=otel.telemetry()))
    assert httpx.get(f"{srv.url}/no/such/thing").status_code == 404
    srv.wait()
    span = the_server_span(otel)
    assert span.name == "GET"
    assert ROUTE not in span.attributes
    assert ERROR not in span.attributes
    assert span.attributes[STATUS] == 404
    assert span.attributes[url_attributes.URL_PATH] == "/no/such/thing"  # the raw path stays in url.path only
    assert span.status.status_code is StatusCode.UNSET


def test_app_raising_outside_error_middleware_records_the_exception_and_the_500(
    otel: Any, server: Any, starlette_app: Any
) -> None:
    """Wrapping the whole Starlette app: its ServerErrorMiddleware sends the 500, then re-raises through us."""
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    response = httpx.get(f"{srv.url}/boom")
    assert response.status_code == 500
    srv.wait()
    span = the_server_span(otel)
    assert span.attributes[ERROR] == "Failures.Boom"  # the qualified name
    assert span.attributes[STATUS] == 500
    assert span.attributes[ROUTE] == "/boom"
    assert span.status.status_code is StatusCode.ERROR


def test_app_raising_inside_error_middleware_is_recorded_and_reraised(
    otel: Any, server: Any, starlette_app: Any
) -> None:
    """Added with add_middleware: the exception passes through us before any response; Starlette answers 500."""
    starlette_app.add_middleware(TracingMiddleware, telemetry=otel.telemetry())
    srv = server(starlette_app)
    response = httpx.get(f"{srv.url}/boom")
    assert response.status_code == 500  # from Starlette's error middleware, outside ours: we re-raised
    srv.wait()
    span = the_server_span(otel)
    assert span.attributes[ERROR] == "Failures.Boom"
    assert STATUS not in span.attributes  # nothing was sent when the exception passed through
    assert span.attributes[ROUTE] == "/boom"
    assert span.status.status_code is StatusCode.ERROR


def test_a_5xx_response_is_an_error_typed_by_its_status(otel: Any, server: Any) -> None:
    async def unavailable(request: Request) -> Response:
        return PlainTextResponse("later", status_code=503)

    async def teapot(request: Request) -> Response:
        return PlainTextResponse("no", status_code=418)

    app = Starlette(routes=[Route("/down", unavailable), Route("/tea", teapot)])
    srv = server(TracingMiddleware(app, telemetry=otel.telemetry()))
    with httpx.Client(base_url=srv.url) as client:
        assert client.get("/down").status_code == 503
        assert client.get("/tea").status_code == 418
    srv.wait(2)
    by_route = {span.attributes[ROUTE]: span for span in server_spans(otel)}
    assert by_route["/down"].attributes[ERROR] == "503"
    assert by_route["/down"].status.status_code is StatusCode.ERROR
    assert ERROR not in by_route["/tea"].attributes  # a 4xx is the client's problem, not the server's
    assert by_route["/tea"].status.status_code is StatusCode.UNSET


def test_a_non_standard_method_is_recorded_as_other(otel: Any, server: Any, starlette_app: Any) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    assert httpx.request("PURGE", f"{srv.url}/hello/ann").status_code == 405
    srv.wait()
    span = the_server_span(otel)
    assert span.attributes[METHOD] == "_OTHER"
    assert span.attributes[METHOD_ORIGINAL] == "PURGE"
    assert span.name == "HTTP /hello/{name}"
    (point,) = otel.metrics()[HTTP_SERVER_REQUEST_DURATION]
    assert point.attributes[METHOD] == "_OTHER"


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [("example.com:8443", "example.com", 8443), ("example.com", "example.com", 80), ("[::1]:9000", "::1", 9000)],
)
def test_server_address_and_port_come_from_the_host_header(
    otel: Any, server: Any, starlette_app: Any, host: str, address: str, port: int
) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    httpx.get(f"{srv.url}/hello/ann", headers={"host": host})
    srv.wait()
    span = the_server_span(otel)
    assert span.attributes[server_attributes.SERVER_ADDRESS] == address
    assert span.attributes[server_attributes.SERVER_PORT] == port


# -- trace context --------------------------------------------------------------------------------------------
def test_the_callers_trace_context_is_the_parent(otel: Any, server: Any, starlette_app: Any) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    httpx.get(f"{srv.url}/hello/ann", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=x"})
    srv.wait()
    span = the_server_span(otel)
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "x"


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", TRACEPARENT), ("traceparent", OTHER_TRACEPARENT), ("tracestate", "vendor=x")],
        [("traceparent", f"{TRACEPARENT},{OTHER_TRACEPARENT}"), ("tracestate", "vendor=x")],
        [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT), ("tracestate", "vendor=x")],
    ],
    ids=["two-headers", "one-header-two-values", "same-value-twice"],
)
def test_an_ambiguous_traceparent_starts_a_new_trace(
    otel: Any, server: Any, starlette_app: Any, headers: list[tuple[str, str]]
) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    assert httpx.get(f"{srv.url}/hello/ann", headers=headers).status_code == 200
    srv.wait()
    span = the_server_span(otel)
    assert span.parent is None
    assert span.context.trace_id not in (int(TRACE_ID, 16), int(OTHER_TRACEPARENT.split("-")[1], 16))
    assert span.context.trace_state.get("vendor") is None  # tracestate was dropped with traceparent


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "trusted"),
    [
        ([(b"TraceParent", TRACEPARENT.encode())], True),
        ([(b"TraceParent", TRACEPARENT.encode()), (b"traceparent", OTHER_TRACEPARENT.encode())], False),
    ],
)
async def test_trace_context_header_names_are_case_insensitive(
    otel: Any, http_scope: Any, asgi_call: Any, headers: list[tuple[bytes, bytes]], trusted: bool
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await asgi_call(TracingMiddleware(app, telemetry=otel.telemetry()), http_scope(headers=headers))
    span = the_server_span(otel)
    assert (span.context.trace_id == int(TRACE_ID, 16)) is trusted
    assert (span.parent is not None) is trusted


def test_outbound_calls_of_the_handler_join_the_same_trace(otel: Any, server: Any) -> None:
    """Two services, each behind the middleware: the second's span is a child of the first's."""

    async def leaf(request: Request) -> Response:
        return PlainTextResponse("leaf")

    downstream = server(TracingMiddleware(Starlette(routes=[Route("/leaf", leaf)]), telemetry=otel.telemetry()))

    async def front(request: Request) -> Response:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the current span is the middleware's SERVER span
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{downstream.url}/leaf", headers=headers)
        return PlainTextResponse(answer.text)

    upstream = server(TracingMiddleware(Starlette(routes=[Route("/front", front)]), telemetry=otel.telemetry()))
    assert httpx.get(f"{upstream.url}/front", headers={"traceparent": TRACEPARENT}).text == "leaf"
    upstream.wait()
    downstream.wait()
    by_route = {span.attributes[ROUTE]: span for span in server_spans(otel)}
    front_span, leaf_span = by_route["/front"], by_route["/leaf"]
    assert front_span.context.trace_id == leaf_span.context.trace_id == int(TRACE_ID, 16)
    assert leaf_span.parent.span_id == front_span.context.span_id


# -- coexistence with OpenTelemetry's ASGI middleware ---------------------------------------------------------
def test_inside_opentelemetry_middleware_the_outer_server_span_gets_the_route(
    otel: Any, server: Any, fastapi_app: Any, secret: str
) -> None:
    reader = InMemoryMetricReader()
    their_meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    app = OpenTelemetryMiddleware(
        TracingMiddleware(fastapi_app, telemetry=otel.telemetry()),
        tracer_provider=otel.tracer_provider,
        meter_provider=their_meters,
    )
    srv = server(app)
    try:
        assert httpx.get(f"{srv.url}/items/42?token={secret}").status_code == 200
        srv.wait()
        span = the_server_span(otel)
        assert span.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"  # theirs, not a second one
        assert span.attributes[ROUTE] == "/items/{item_id}"
        assert span.name == "GET /items/{item_id}"
        assert span.attributes[METHOD] == "GET"
        assert span.attributes[STATUS] == 200
        assert span.attributes[QUERY] == "token=REDACTED"
        # The duration is theirs to record: ours would count every request twice.
        assert HTTP_SERVER_REQUEST_DURATION not in otel.metrics()
        assert HTTP_SERVER_ACTIVE_REQUESTS not in otel.metrics()
        data = reader.get_metrics_data()
        assert data is not None
        their_names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        assert any(name.startswith("http.server.") and "duration" in name for name in their_names)
    finally:
        their_meters.shutdown()


# -- metrics --------------------------------------------------------------------------------------------------
def test_server_metrics_names_units_and_attributes(otel: Any, server: Any, fastapi_app: Any, secret: str) -> None:
    srv = server(TracingMiddleware(fastapi_app, telemetry=otel.telemetry()))
    with httpx.Client(base_url=srv.url) as client:
        assert client.get(f"/items/1?token={secret}").status_code == 200
        assert client.get("/items/2").status_code == 200
    srv.wait(2)

    units = otel.units()
    assert units[HTTP_SERVER_REQUEST_DURATION] == "s"
    assert units[HTTP_SERVER_ACTIVE_REQUESTS] == "{request}"
    metrics = otel.metrics()
    (duration,) = metrics[HTTP_SERVER_REQUEST_DURATION]  # two requests, one series: the route is templated
    assert dict(duration.attributes) == {
        METHOD: "GET",
        SCHEME: "http",
        ROUTE: "/items/{item_id}",
        STATUS: 200,
        VERSION: "1.1",
    }
    assert duration.count == 2
    assert 0 < duration.sum < 5
    (active,) = metrics[HTTP_SERVER_ACTIVE_REQUESTS]
    assert dict(active.attributes) == {METHOD: "GET", SCHEME: "http"}
    assert active.value == 0  # +1 and -1 per request
    assert secret not in json.dumps([dict(point.attributes) for points in metrics.values() for point in points])


def test_an_exception_is_in_the_duration_metric(otel: Any, server: Any, starlette_app: Any) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=otel.telemetry()))
    httpx.get(f"{srv.url}/boom")
    srv.wait()
    (duration,) = otel.metrics()[HTTP_SERVER_REQUEST_DURATION]
    assert duration.attributes[ERROR] == "Failures.Boom"
    assert duration.attributes[STATUS] == 500
    assert duration.attributes[ROUTE] == "/boom"


def test_metrics_only_when_only_a_meter_provider_is_given(otel: Any, server: Any, starlette_app: Any) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=Telemetry(meter_provider=otel.meter_provider)))
    httpx.get(f"{srv.url}/hello/ann")
    srv.wait()
    assert otel.spans() == []
    (duration,) = otel.metrics()[HTTP_SERVER_REQUEST_DURATION]
    assert duration.attributes[ROUTE] == "/hello/{name}"


def test_spans_only_when_only_a_tracer_provider_is_given(otel: Any, server: Any, starlette_app: Any) -> None:
    srv = server(TracingMiddleware(starlette_app, telemetry=Telemetry(tracer_provider=otel.tracer_provider)))
    httpx.get(f"{srv.url}/hello/ann")
    srv.wait()
    assert the_server_span(otel).attributes[ROUTE] == "/hello/{name}"
    assert otel.metrics() == {}


@pytest.mark.anyio
async def test_when_nothing_records_the_app_gets_the_servers_own_callables(http_scope: Any) -> None:
    telemetry = Telemetry()
    assert telemetry.tracer() is None, "a test installed a global tracer provider"
    assert telemetry.meters() is None, "a test installed a global meter provider"
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope=scope, receive=receive, send=send)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    scope = http_scope()
    before = dict(scope)
    await TracingMiddleware(app, telemetry=telemetry)(scope, receive, send)
    assert seen["scope"] is scope
    assert seen["receive"] is receive
    assert seen["send"] is send
    assert scope == before


# -- request id -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_id_outside", [True, False], ids=["request-id-outside", "request-id-inside"])
def test_the_span_records_the_request_id(
    otel: Any, server: Any, starlette_app: Any, request_id_outside: bool
) -> None:
    telemetry = otel.telemetry()
    if request_id_outside:
        app = RequestIDMiddleware(TracingMiddleware(starlette_app, telemetry=telemetry))
    else:
        app = TracingMiddleware(RequestIDMiddleware(starlette_app), telemetry=telemetry)
    srv = server(app)
    response = httpx.get(f"{srv.url}/hello/ann", headers={"x-request-id": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    srv.wait()
    assert the_server_span(otel).attributes["connectivity.request_id"] == "req-42"


def test_constructor_checks_its_arguments() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(TypeError, match="app"):
        TracingMiddleware("not an app")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="telemetry"):
        TracingMiddleware(app, telemetry="otel")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_inside_fastapis_native_telemetry_there_is_one_server_span(otel: Any) -> None:
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        pytest.skip("this FastAPI has no native telemetry")
    app = FastAPI(telemetry={"tracer_provider": otel.tracer_provider, "metrics": False, "logs": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.add_middleware(TracingMiddleware, telemetry=otel.telemetry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        assert (await client.get("/items/3?token=s3cr3t")).status_code == 200
    (span,) = server_spans(otel)
    assert span.attributes[ROUTE] == "/items/{item_id}"
    assert "s3cr3t" not in json.dumps(dict(span.attributes))
