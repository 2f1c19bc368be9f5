import logging

import httpx
import pytest

from connectivity.testing import ScriptedTransport
from connectivity.transports import AccessLogTransport

from .conftest import Sender


def test_one_record_per_call_with_its_outcome(send: Sender, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="connectivity.access")
    send(AccessLogTransport(ScriptedTransport([404])), "DELETE", "http://orders/items/1?api_key=k3y")
    (record,) = [r for r in caplog.records if r.name == "connectivity.access"]
    access = record.__dict__["access"]
    assert (access["direction"], access["method"], access["status"], access["attempts"]) == (
        "outbound",
        "DELETE",
        404,
        1,
    )
    assert access["url"] == "http://orders/items/1?api_key=REDACTED"
    assert access["duration_s"] >= 0
    assert "k3y" not in record.getMessage()


def test_errors_are_logged_and_raised(send: Sender, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="connectivity.access")
    with pytest.raises(httpx.ConnectError):
        send(AccessLogTransport(ScriptedTransport([httpx.ConnectError])))
    (record,) = [r for r in caplog.records if r.name == "connectivity.access"]
    assert (record.__dict__["access"]["status"], record.__dict__["access"]["error"]) == (None, "ConnectError")


def test_nothing_is_built_when_the_level_is_off(send: Sender, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="connectivity.access")
    send(AccessLogTransport(ScriptedTransport([200])))
    assert not [r for r in caplog.records if r.name == "connectivity.access"]


def test_wrong_argument_types_are_refused() -> None:
    with pytest.raises(TypeError, match="logger"):
        AccessLogTransport(ScriptedTransport([]), logger="connectivity.access")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="redaction"):
        AccessLogTransport(ScriptedTransport([]), redaction={})  # type: ignore[arg-type]
