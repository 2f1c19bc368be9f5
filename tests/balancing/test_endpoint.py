"""The Endpoint model: validation, normalisation, keys, parsing, hashing."""

from __future__ import annotations

from typing import Any

import pytest

from connectivity.discovery import Endpoint
from connectivity.errors import ConfigError


def test_defaults_and_key() -> None:
    endpoint = Endpoint("orders-1.internal", 8080)
    assert (endpoint.weight, endpoint.zone, dict(endpoint.metadata)) == (1, None, {})
    assert endpoint.key == "orders-1.internal:8080" == str(endpoint)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.7", "10.0.0.7:80"),
        ("::1", "[::1]:80"),
        ("[::0001]", "[::1]:80"),  # normalised: one endpoint, one key
        ("2001:DB8::1", "[2001:db8::1]:80"),
        ("Orders.Internal.", "orders.internal:80"),  # case and the root dot do not make another endpoint
        ("svc_http.consul", "svc_http.consul:80"),
    ],
)
def test_addresses_are_normalised(address: str, key: str) -> None:
    assert Endpoint(address, 80).key == key


def test_metadata_is_a_read_only_copy_outside_the_hash() -> None:
    labels = {"version": "v2"}
    endpoint = Endpoint("10.0.0.1", 80, metadata=labels)
    labels["version"] = "v3"
    assert endpoint.metadata["version"] == "v2"
    with pytest.raises(TypeError):
        endpoint.metadata["version"] = "v4"  # type: ignore[index]
    assert hash(endpoint) == hash(Endpoint("10.0.0.1", 80))
    assert endpoint == Endpoint("10.0.0.1", 80, metadata={"version": "v2"})
    assert endpoint != Endpoint("10.0.0.1", 80)
    assert len({endpoint, Endpoint("10.0.0.1", 80, metadata={"version": "v2"})}) == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"address": "", "port": 80}, "Endpoint.address"),
        ({"address": "bad host", "port": 80}, "Endpoint.address"),
        ({"address": "-leading.dash", "port": 80}, "Endpoint.address"),
        ({"address": "a" * 64 + ".example", "port": 80}, "Endpoint.address"),
        ({"address": 10, "port": 80}, "Endpoint.address"),
        ({"address": "h", "port": 0}, "Endpoint.port"),
        ({"address": "h", "port": 65536}, "Endpoint.port"),
        ({"address": "h", "port": "80"}, "Endpoint.port"),
        ({"address": "h", "port": True}, "Endpoint.port"),
        ({"address": "h", "port": 80, "weight": 0}, "Endpoint.weight"),
        ({"address": "h", "port": 80, "weight": -1}, "Endpoint.weight"),
        ({"address": "h", "port": 80, "weight": float("inf")}, "Endpoint.weight"),
        ({"address": "h", "port": 80, "weight": float("nan")}, "Endpoint.weight"),
        ({"address": "h", "port": 80, "zone": ""}, "Endpoint.zone"),
        ({"address": "h", "port": 80, "zone": 3}, "Endpoint.zone"),
        ({"address": "h", "port": 80, "metadata": {1: "x"}}, "Endpoint.metadata"),
        ({"address": "h", "port": 80, "metadata": ["x"]}, "Endpoint.metadata"),
    ],
)
def test_invalid_fields_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Endpoint(**options)
    assert raised.value.field == field


def test_parse() -> None:
    assert Endpoint.parse("10.0.0.1:8080") == Endpoint("10.0.0.1", 8080)
    assert Endpoint.parse(" [::1]:443 ", weight=3, zone="a") == Endpoint("::1", 443, 3, "a")
    assert Endpoint.parse("orders", default_port=80).key == "orders:80"
    assert Endpoint.parse("::1", default_port=80).key == "[::1]:80"  # a bare IPv6 literal carries no port
    assert Endpoint.parse("[::1]", default_port=80).key == "[::1]:80"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("orders", "Endpoint"),
        ("h:http", "Endpoint.port"),
        ("[::1", "Endpoint"),
        ("[::1]x", "Endpoint"),
        ("h:0", "Endpoint.port"),
    ],
)
def test_parse_rejects(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Endpoint.parse(text)
    assert raised.value.field == field
