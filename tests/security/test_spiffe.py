"""SPIFFE id parsing against go-spiffe's vectors, and the id's value semantics."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from connectivity.errors import ConfigError, InvalidSpiffeIdError
from connectivity.security.spiffe import SpiffeId, validate_trust_domain

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "spiffe-id-vectors.json").read_text(encoding="utf-8")
)["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[repr(vector["input"]) for vector in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    if vector["valid"]:
        parsed = SpiffeId.parse(vector["input"])
        assert str(parsed) == vector["input"]
        if "path" in vector:
            assert parsed.path == vector["path"]
    else:
        with pytest.raises(InvalidSpiffeIdError) as caught:
            SpiffeId.parse(vector["input"])
        assert caught.value.rule.startswith(vector["error"])


def test_every_vector_is_exercised() -> None:
    assert len(VECTORS) > 500
    assert sum(vector["valid"] for vector in VECTORS) > 100


def test_parts_and_membership() -> None:
    parsed = SpiffeId.parse("spiffe://bank.example/ns/prod/sa/orders")
    assert (parsed.trust_domain, parsed.path) == ("bank.example", "/ns/prod/sa/orders")
    assert parsed.member_of("bank.example")
    assert not parsed.member_of("bank.example.evil")
    assert SpiffeId.from_parts("bank.example", "/ns/prod/sa/orders") == parsed


def test_value_semantics() -> None:
    one = SpiffeId.parse("spiffe://td/a")
    assert one == SpiffeId.parse("spiffe://td/a")
    assert one != SpiffeId.parse("spiffe://td/b")
    assert one != "spiffe://td/a"  # compare ids with ids: a string is not parsed implicitly
    assert len({one, SpiffeId.parse("spiffe://td/a")}) == 1
    assert repr(one) == "SpiffeId('spiffe://td/a')"
    assert pickle.loads(pickle.dumps(one)) == one
    with pytest.raises(AttributeError):
        one.path = "/b"  # type: ignore[misc]


def test_full_string_matching() -> None:
    with pytest.raises(InvalidSpiffeIdError, match="path segment characters"):
        SpiffeId.parse("spiffe://td/a\n")
    with pytest.raises(InvalidSpiffeIdError, match="scheme"):
        SpiffeId.parse(" spiffe://td/a")


def test_limits_and_types() -> None:
    with pytest.raises(InvalidSpiffeIdError, match="2048 bytes"):
        SpiffeId.parse("spiffe://td/" + "a" * 2048)
    with pytest.raises(InvalidSpiffeIdError, match="255"):
        SpiffeId.parse("spiffe://" + "a" * 256)
    with pytest.raises(InvalidSpiffeIdError, match="must be a string"):
        SpiffeId.parse(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpiffeIdError, match="start with '/'"):
        SpiffeId.from_parts("td", "path")


def test_error_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        SpiffeId.parse("spiffe://TD/a", field="MTLS.peer_id")
    assert caught.value.field == "MTLS.peer_id"
    assert "lowercase" in str(caught.value)


def test_trust_domain_names() -> None:
    assert validate_trust_domain("bank.example") == "bank.example"
    with pytest.raises(InvalidSpiffeIdError, match="missing"):
        validate_trust_domain("")
    with pytest.raises(InvalidSpiffeIdError, match="lowercase"):
        validate_trust_domain("Bank")
