"""Our attribute and metric names are the stable conventions' names; request ids are validated."""

import pytest
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.semconv.metrics import http_metrics

from connectivity.telemetry import semconv
from connectivity.telemetry.request_id import current_request_id, generate, reset_request_id, set_request_id, valid


def test_stable_names_match_the_semantic_conventions_package() -> None:
    assert semconv.HTTP_REQUEST_METHOD == http_attributes.HTTP_REQUEST_METHOD
    assert semconv.HTTP_REQUEST_METHOD_ORIGINAL == http_attributes.HTTP_REQUEST_METHOD_ORIGINAL
    assert semconv.HTTP_REQUEST_RESEND_COUNT == http_attributes.HTTP_REQUEST_RESEND_COUNT
    assert semconv.HTTP_RESPONSE_STATUS_CODE == http_attributes.HTTP_RESPONSE_STATUS_CODE
    assert semconv.HTTP_ROUTE == http_attributes.HTTP_ROUTE
    assert semconv.URL_FULL == url_attributes.URL_FULL
    assert semconv.URL_PATH == url_attributes.URL_PATH
    assert semconv.URL_QUERY == url_attributes.URL_QUERY
    assert semconv.URL_SCHEME == url_attributes.URL_SCHEME
    assert semconv.SERVER_ADDRESS == server_attributes.SERVER_ADDRESS
    assert semconv.SERVER_PORT == server_attributes.SERVER_PORT
    assert semconv.CLIENT_ADDRESS == client_attributes.CLIENT_ADDRESS
    assert semconv.NETWORK_PROTOCOL_VERSION == network_attributes.NETWORK_PROTOCOL_VERSION
    assert semconv.USER_AGENT_ORIGINAL == user_agent_attributes.USER_AGENT_ORIGINAL
    assert semconv.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert semconv.METRIC_CLIENT_DURATION == http_metrics.HTTP_CLIENT_REQUEST_DURATION
    assert semconv.METRIC_SERVER_DURATION == http_metrics.HTTP_SERVER_REQUEST_DURATION
    assert http_attributes.HttpRequestMethodValues.OTHER.value == semconv.OTHER_METHOD
    assert {value.value for value in http_attributes.HttpRequestMethodValues} - {"_OTHER", "QUERY"} <= (
        semconv.KNOWN_METHODS
    )


@pytest.mark.parametrize("value", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "a" * 128, "k8s:pod/1+2=@x"])
def test_valid_request_ids(value: str) -> None:
    assert valid(value)


@pytest.mark.parametrize("value", ["", "a" * 129, "has space", "new\nline", 'quote"', "comma,sep", "ünï"])
def test_invalid_request_ids(value: str) -> None:
    assert not valid(value)
    with pytest.raises(ValueError, match="invalid request id"):
        set_request_id(value)


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = {generate() for _ in range(100)}
    assert len(ids) == 100
    assert all(valid(value) for value in ids)


def test_the_current_id_is_set_and_reset() -> None:
    assert current_request_id() is None
    token = set_request_id("req-1")
    assert current_request_id() == "req-1"
    reset_request_id(token)
    assert current_request_id() is None
