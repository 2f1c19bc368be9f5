import pytest

import connectivity as cx
from connectivity.telemetry.request_id import reset_request_id, set_request_id
from connectivity.testing import ScriptedTransport
from connectivity.transports import RequestIDTransport

from .conftest import Sender


def test_the_current_request_id_goes_out(send: Sender) -> None:
    script = ScriptedTransport([200, 200, 200])
    transport = RequestIDTransport(script)
    token = set_request_id("req-42")
    try:
        send(transport)
        send(transport, headers={"X-Request-ID": "callers-own"})
    finally:
        reset_request_id(token)
    send(transport)  # outside an inbound request
    sent = [request.headers.get("x-request-id") for request in script.requests]
    assert sent == ["req-42", "callers-own", None]


def test_a_custom_header_name() -> None:
    assert RequestIDTransport(ScriptedTransport([]), header="X-Correlation-ID").describe() == {
        "header": "x-correlation-id"
    }


@pytest.mark.parametrize("header", ["", "x request id", "x:id", "ïd", 3])
def test_bad_header_names_are_config_errors(header: object) -> None:
    with pytest.raises(cx.ConfigError, match=r"RequestIDTransport\.header"):
        RequestIDTransport(ScriptedTransport([]), header=header)  # type: ignore[arg-type]
