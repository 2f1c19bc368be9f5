"""API-key consumers, hashes and lookups: keys are kept only as hashes and never shown."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from connectivity.errors import ConfigError
from connectivity.security import apikeys
from connectivity.security.apikeys import MAX_KEY_LENGTH, Consumer, KeyRing, generate_key, hash_key
from connectivity.security.identity import Principal

KEY = "ck_live_7Qe3kz9VbW2nXpL5tR8yA1"
OTHER = "ck_live_0000000000000000000000"
PEPPER = "pepper-of-at-least-16-bytes"


def test_hash_key_is_sha256_or_keyed_blake2b() -> None:
    assert hash_key(KEY) == "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    assert hash_key(KEY.encode()) == hash_key(KEY)
    peppered = hashlib.blake2b(KEY.encode(), key=PEPPER.encode(), digest_size=32).hexdigest()
    assert hash_key(KEY, pepper=PEPPER) == "blake2b:" + peppered
    assert hash_key(KEY, pepper="another-pepper-of-16-bytes") != hash_key(KEY, pepper=PEPPER)


def test_a_long_pepper_is_hashed_down_to_a_blake2b_key() -> None:
    long_pepper = "p" * 100
    expected = hashlib.blake2b(KEY.encode(), key=hashlib.blake2b(long_pepper.encode()).digest(), digest_size=32)
    assert hash_key(KEY, pepper=long_pepper) == "blake2b:" + expected.hexdigest()


def test_generate_key_is_random_and_url_safe() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(key) == 43 and key.replace("-", "").replace("_", "").isalnum() for key in keys)
    assert len(generate_key(16)) == 22
    for bad in (15, 513, True, 32.0):
        with pytest.raises(ConfigError) as caught:
            generate_key(bad)  # type: ignore[arg-type]
        assert caught.value.field == "generate_key.nbytes"


def test_a_consumer_keeps_only_hashes_of_its_keys() -> None:
    consumer = Consumer("billing", ["ops", "batch"], scopes=["orders:read"], keys=[KEY])
    assert consumer.key_hashes == (hash_key(KEY),)
    assert consumer.groups == frozenset({"ops", "batch"})
    assert consumer.scopes == frozenset({"orders:read"})
    assert not any(KEY in repr(getattr(consumer, name)) for name in Consumer.__slots__)
    assert repr(consumer) == "Consumer(id='billing', groups=['batch', 'ops'], scopes=['orders:read'], keys=1)"
    assert consumer == Consumer("billing", ("batch", "ops"), scopes={"orders:read"}, key_hashes=[hash_key(KEY)])
    assert hash(consumer) == hash(Consumer("billing", ["ops", "batch"], scopes=["orders:read"], keys=[KEY]))
    with pytest.raises(AttributeError):
        consumer.id = "other"  # type: ignore[misc]


def test_a_consumer_becomes_an_api_key_principal() -> None:
    principal = Consumer("billing", ["ops"], scopes=["orders:read"]).principal()
    assert principal == Principal(
        "billing", "api_key", scopes=frozenset({"orders:read"}), groups=frozenset({"ops"})
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "Consumer.id"),
        ({"id": "has space"}, "Consumer.id"),
        ({"id": 7}, "Consumer.id"),
        ({"id": "c", "groups": "ops"}, "Consumer.groups"),
        ({"id": "c", "groups": [""]}, "Consumer.groups"),
        ({"id": "c", "scopes": ["a b"]}, "Consumer.scopes"),
        ({"id": "c", "keys": KEY}, "Consumer.keys"),
        ({"id": "c", "keys": [""]}, "Consumer.keys"),
        ({"id": "c", "keys": [KEY + " "]}, "Consumer.keys"),
        ({"id": "c", "keys": ["k\u00e9y-with-accent"]}, "Consumer.keys"),
        ({"id": "c", "keys": ["k" * (MAX_KEY_LENGTH + 1)]}, "Consumer.keys"),
        ({"id": "c", "keys": [KEY, KEY]}, "Consumer.keys"),
        ({"id": "c", "keys": [7]}, "Consumer.keys"),
        ({"id": "c", "key_hashes": [KEY]}, "Consumer.key_hashes"),
        ({"id": "c", "key_hashes": ["SHA256:" + "a" * 64]}, "Consumer.key_hashes"),
        ({"id": "c", "key_hashes": ["sha256:" + "A" * 64]}, "Consumer.key_hashes"),
        ({"id": "c", "key_hashes": hash_key(KEY)}, "Consumer.key_hashes"),
    ],
)
def test_bad_consumers_are_refused_without_showing_keys(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Consumer(**kwargs)
    assert caught.value.field == field
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value.value)


def test_bad_peppers_are_refused_without_showing_them() -> None:
    for bad in ("short", b"", 1234567890123456789):
        with pytest.raises(ConfigError) as caught:
            hash_key(KEY, pepper=bad)  # type: ignore[arg-type]
        assert caught.value.field == "hash_key.pepper"
        assert "short" not in str(caught.value)


def test_lookup_finds_the_consumer_by_any_of_its_keys() -> None:
    billing = Consumer("billing", keys=[KEY, OTHER])
    ops = Consumer("ops", key_hashes=[hash_key("ck_ops_key_1234567890")])
    ring = KeyRing([billing, ops])
    assert ring.lookup(KEY) is billing
    assert ring.lookup(OTHER.encode()) is billing
    assert ring.lookup("ck_ops_key_1234567890") is ops
    assert repr(ring) == "KeyRing(consumers=2, keys=3)"


@pytest.mark.parametrize(
    "presented",
    ["", "wrong", KEY[:-1], KEY + "x", KEY.upper(), "k\u00e9y", b"\xff\xfe", "k" * (MAX_KEY_LENGTH + 1), None, 7],
)
def test_lookup_of_anything_else_finds_nobody(presented: Any) -> None:
    assert KeyRing([Consumer("billing", keys=[KEY])]).lookup(presented) is None


def test_lookup_confirms_the_hash_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    ring = KeyRing([Consumer("billing", keys=[KEY])])
    assert ring.lookup(KEY) is not None
    assert compared == [(hash_key(KEY), hash_key(KEY))]


def test_a_peppered_ring_hashes_with_its_pepper() -> None:
    ring = KeyRing([Consumer("billing", key_hashes=[hash_key(KEY, pepper=PEPPER)])], pepper=PEPPER)
    assert ring.lookup(KEY) is not None
    wrong = KeyRing([Consumer("billing", key_hashes=[hash_key(KEY, pepper=PEPPER)])], pepper="x" * 16)
    assert wrong.lookup(KEY) is None
    assert PEPPER not in repr(ring)


def test_a_ring_may_mix_plain_and_peppered_hashes() -> None:
    ring = KeyRing(
        [Consumer("old", keys=[OTHER]), Consumer("new", key_hashes=[hash_key(KEY, pepper=PEPPER)])], pepper=PEPPER
    )
    assert [ring.lookup(KEY).id, ring.lookup(OTHER).id] == ["new", "old"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("consumers", "pepper", "field"),
    [
        ([Consumer("a"), Consumer("a")], None, "KeyRing.consumers[1].id"),
        ([Consumer("a", keys=[KEY]), Consumer("b", keys=[KEY])], None, "KeyRing.consumers[1].key_hashes"),
        ([Consumer("a", key_hashes=[hash_key(KEY, pepper=PEPPER)])], None, "KeyRing.pepper"),
        ([Consumer("a", keys=[KEY])], PEPPER, "KeyRing.pepper"),
        (["a"], None, "KeyRing.consumers[0]"),
        (Consumer("a"), None, "KeyRing.consumers"),
    ],
)
def test_bad_rings_are_refused(consumers: Any, pepper: str | None, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeyRing(consumers, pepper=pepper)
    assert caught.value.field == field
    assert KEY not in str(caught.value)
    assert PEPPER not in str(caught.value)
