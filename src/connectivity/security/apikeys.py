"""API keys as Kong's key-auth plugin knows them: consumers, their keys (stored only as hashes) and the lookup.

Theory of operation: a :class:`Consumer` is who calls (an id, groups, scopes) and the hashes of the keys it may
present. Plaintext keys given to :class:`Consumer` are hashed at construction and dropped; configuration files
carry only :func:`hash_key` output, ``"sha256:<hex>"`` or, with a secret *pepper*, ``"blake2b:<hex>"`` (keyed
BLAKE2b-256, so a leaked configuration does not let anyone test guesses of low-entropy keys offline). A
:class:`KeyRing` indexes every consumer by key hash. A lookup hashes the presented key once per scheme in use
(one hash in the usual single-scheme configuration), finds the candidate by its hash and confirms it with
:func:`hmac.compare_digest`: the time a lookup takes does not depend on how much of a stored hash a guess shares.

Nothing here keeps, logs or prints a key: reprs show ids and counts, errors say which rule a key broke.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from connectivity.errors import ConfigError
from connectivity.security.identity import Principal

__all__ = [
    "ANONYMOUS_KEY",
    "MAX_KEY_LENGTH",
    "Consumer",
    "KeyRing",
    "generate_key",
    "hash_key",
]

ANONYMOUS_KEY = "connectivity.anonymous"
"""Scope key set to ``True`` when the principal is the configured anonymous consumer (Kong's
``X-Anonymous-Consumer``): authorization counts such a request as unauthenticated."""

MAX_KEY_LENGTH = 1024
"""Longest key accepted, in bytes. A longer presented key is an invalid credential, refused without hashing."""

_HASH = re.compile(r"(sha256|blake2b):[0-9a-f]{64}")
_KEY_BYTES = frozenset(range(0x21, 0x7F))  # visible ASCII: what a header and a query parameter carry unchanged
_ID = re.compile(r"[^\x00-\x20\x7f]{1,256}")
_MAX_PEPPER = 64  # BLAKE2b's longest key


def _hidden(value: object) -> str:
    """What an error shows instead of something that may be a key."""
    return f"<hidden: {len(value)} characters>" if isinstance(value, (str, bytes)) else type(value).__name__


def _key_bytes(field: str, key: object) -> bytes:
    if isinstance(key, str):
        if not key.isascii():
            raise ConfigError(field, _hidden(key), "an API key must be visible ASCII characters")
        key = key.encode("ascii")
    if not isinstance(key, bytes):
        raise ConfigError(field, _hidden(key), "an API key must be a string or bytes")
    if not 0 < len(key) <= MAX_KEY_LENGTH or not _KEY_BYTES.issuperset(key):
        raise ConfigError(
            field, _hidden(key), f"an API key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces)"
        )
    return key


def _pepper(field: str, pepper: object) -> bytes | None:
    if pepper is None:
        return None
    if isinstance(pepper, str):
        pepper = pepper.encode("utf-8")
    if not isinstance(pepper, bytes) or len(pepper) < 16:
        raise ConfigError(field, _hidden(pepper), "must be a secret of at least 16 bytes (a string or bytes)")
    return pepper if len(pepper) <= _MAX_PEPPER else hashlib.blake2b(pepper).digest()


def _digest(key: bytes, pepper: bytes | None) -> str:
    if pepper is None:
        return "sha256:" + hashlib.sha256(key).hexdigest()
    return "blake2b:" + hashlib.blake2b(key, key=pepper, digest_size=32).hexdigest()


def hash_key(key: str | bytes, *, pepper: str | bytes | None = None) -> str:
    """The hash of an API key, as :class:`Consumer` and configuration files hold it.

    Args:
        key: The plaintext key (visible ASCII, at most :data:`MAX_KEY_LENGTH` bytes).
        pepper: A server-side secret (at least 16 bytes). Without one the hash is ``"sha256:<hex>"``, enough for
            random keys such as :func:`generate_key` makes; with one it is ``"blake2b:<hex>"``, a keyed hash that
            a leaked configuration cannot be brute-forced from. The :class:`KeyRing` (or the middleware) must be
            given the same pepper.

    Raises:
        ConfigError: The key or the pepper breaks a rule (the message never contains them).

    .. versionadded:: 0.1
    """
    return _digest(_key_bytes("hash_key.key", key), _pepper("hash_key.pepper", pepper))


def generate_key(nbytes: int = 32) -> str:
    """A new random API key: ``nbytes`` random bytes (at least 16), URL-safe base64 encoded.

    .. versionadded:: 0.1
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 16 <= nbytes <= 512:
        raise ConfigError("generate_key.nbytes", nbytes, "must be an integer from 16 to 512")
    return secrets.token_urlsafe(nbytes)


def _names(field: str, values: object) -> frozenset[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(field, values, "must be a collection of strings (not one string)")
    names = frozenset(values)
    for name in names:
        if not isinstance(name, str) or not _ID.fullmatch(name):
            raise ConfigError(field, name, "must be 1-256 characters, no spaces or control characters")
    return names


class Consumer:
    """Who presents an API key: an id, groups and scopes, and the hashes of the keys that identify it.

    Args:
        id: The consumer's id, which becomes ``Principal.id``.
        groups: Groups it belongs to (authorization policies and :func:`require_groups` match them).
        scopes: Scopes its keys grant (:func:`require_scopes` checks them as it does a JWT's).
        key_hashes: Its keys as :func:`hash_key` output (what a configuration file holds).
        keys: Its keys in plaintext: hashed with SHA-256 at once, never kept. For a peppered ring give
            ``key_hashes=[hash_key(key, pepper=...)]`` instead.

    Raises:
        ConfigError: A field breaks its rule (the message never shows a key).

    Immutable and hashable; ``repr`` shows how many keys there are, never the keys or their hashes.

    .. versionadded:: 0.1
    """

    __slots__ = ("groups", "id", "key_hashes", "scopes")

    id: str
    groups: frozenset[str]
    scopes: frozenset[str]
    key_hashes: tuple[str, ...]

    def __init__(
        self,
        id: str,
        groups: Iterable[str] = (),
        *,
        scopes: Iterable[str] = (),
        key_hashes: Iterable[str] = (),
        keys: Iterable[str | bytes] = (),
    ) -> None:
        if not isinstance(id, str) or not _ID.fullmatch(id):
            raise ConfigError("Consumer.id", id, "must be 1-256 characters, no spaces or control characters")
        hashes: list[str] = []
        for field, values in (("Consumer.key_hashes", key_hashes), ("Consumer.keys", keys)):
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise ConfigError(field, _hidden(values), "must be a collection (not one string)")
        for value in key_hashes:
            if not isinstance(value, str) or not _HASH.fullmatch(value):
                raise ConfigError(
                    "Consumer.key_hashes",
                    _hidden(value),
                    "must be hash_key() output: 'sha256:' or 'blake2b:' followed by 64 lower-case hex digits",
                )
            hashes.append(value)
        hashes.extend(_digest(_key_bytes("Consumer.keys", key), None) for key in keys)
        if len(set(hashes)) != len(hashes):
            raise ConfigError("Consumer.keys", f"<{len(hashes)} keys>", "the same key is given twice")
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "groups", _names("Consumer.groups", groups))
        object.__setattr__(self, "scopes", _names("Consumer.scopes", scopes))
        object.__setattr__(self, "key_hashes", tuple(hashes))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Consumer is immutable")

    def __repr__(self) -> str:
        return (
            f"Consumer(id={self.id!r}, groups={sorted(self.groups)!r}, scopes={sorted(self.scopes)!r}, "
            f"keys={len(self.key_hashes)})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Consumer):
            return NotImplemented
        return (self.id, self.groups, self.scopes, self.key_hashes) == (
            other.id,
            other.groups,
            other.scopes,
            other.key_hashes,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.groups, self.scopes, self.key_hashes))

    def principal(self) -> Principal:
        """The :class:`Principal` a request authenticated as this consumer carries."""
        return Principal(id=self.id, method="api_key", scopes=self.scopes, groups=self.groups)


class KeyRing:
    """Consumers indexed by key hash: :meth:`lookup` finds who a presented key belongs to.

    Args:
        consumers: The consumers (ids unique, no key shared by two of them).
        pepper: The secret the ``"blake2b:"`` hashes were made with (see :func:`hash_key`); required when there
            are any, refused when there are none.

    Raises:
        ConfigError: Two consumers share an id or a key, or the pepper does not fit the hashes.

    Safe to share between threads and tasks: nothing changes after construction.

    .. versionadded:: 0.1
    """

    __slots__ = ("_by_hash", "_pepper", "_schemes", "consumers")

    def __init__(self, consumers: Iterable[Consumer], *, pepper: str | bytes | None = None) -> None:
        if isinstance(consumers, (str, bytes, Consumer)) or not isinstance(consumers, Iterable):
            raise ConfigError("KeyRing.consumers", consumers, "must be a collection of Consumer")
        self.consumers: tuple[Consumer, ...] = tuple(consumers)
        self._pepper = _pepper("KeyRing.pepper", pepper)
        self._by_hash: dict[str, tuple[str, Consumer]] = {}
        ids: set[str] = set()
        for index, consumer in enumerate(self.consumers):
            if not isinstance(consumer, Consumer):
                raise ConfigError(f"KeyRing.consumers[{index}]", consumer, "must be a Consumer")
            if consumer.id in ids:
                raise ConfigError(f"KeyRing.consumers[{index}].id", consumer.id, "two consumers have this id")
            ids.add(consumer.id)
            for digest in consumer.key_hashes:
                if digest in self._by_hash:
                    raise ConfigError(
                        f"KeyRing.consumers[{index}].key_hashes",
                        f"<key of {consumer.id!r}>",
                        f"the same key also belongs to {self._by_hash[digest][1].id!r}",
                    )
                self._by_hash[digest] = (digest, consumer)
        schemes = {digest.partition(":")[0] for digest in self._by_hash}
        if "blake2b" in schemes and self._pepper is None:
            raise ConfigError("KeyRing.pepper", None, "'blake2b:' key hashes need the pepper they were made with")
        if "blake2b" not in schemes and self._pepper is not None:
            raise ConfigError("KeyRing.pepper", "<hidden>", "no 'blake2b:' key hash uses it")
        self._schemes: tuple[bytes | None, ...] = tuple(
            self._pepper if scheme == "blake2b" else None for scheme in sorted(schemes)
        )

    def __repr__(self) -> str:
        return f"KeyRing(consumers={len(self.consumers)}, keys={len(self._by_hash)})"

    def lookup(self, key: str | bytes) -> Consumer | None:
        """The consumer ``key`` belongs to, or ``None`` (an unknown, malformed or overlong key)."""
        if isinstance(key, str):
            try:
                key = key.encode("ascii")
            except UnicodeEncodeError:
                return None
        if not isinstance(key, bytes) or not 0 < len(key) <= MAX_KEY_LENGTH:
            return None
        found: Consumer | None = None
        for pepper in self._schemes:
            digest = _digest(key, pepper)
            entry = self._by_hash.get(digest)
            if entry is not None and hmac.compare_digest(entry[0], digest):
                found = entry[1]
        return found
