"""The ``Etcd`` resolver: endpoints registered under a key prefix in etcd, followed with a watch.

Theory of operation: every key under ``prefix`` holds one endpoint as a JSON object (``{"address", "port",
"weight", "zone", "metadata"}``, the entries of :mod:`connectivity.discovery.file`); the endpoint list is all of
them, in key order. The resolver speaks etcd's v3 JSON gateway over httpx, so it needs no gRPC stack:
``POST /v3/kv/range`` with the base64 prefix and ``range_end`` = the prefix with its last byte incremented (every
key that starts with it) reads the set and its revision; :meth:`Etcd.refresh`/:meth:`Etcd.arefresh` do just that,
which is all a sync ``httpx.Client`` can use (it polls).

:meth:`Etcd.watch` follows changes as they happen: it reads the set, then opens ``POST /v3/watch`` from the next
revision and applies each streamed event (a JSON line) to its copy of the keys, publishing a new resolution per
change, so a registration or removal moves traffic within milliseconds. It reads the set again and reopens the
watch at once when etcd cancels it (its revision was compacted) or when nothing arrived for ``idle_timeout``
seconds (a connection that died silently). When the watch fails or the server ends the stream, it waits a
``backoff`` delay (at most ``refresh_interval``) and starts over with a read: while watches cannot be opened but
reads succeed, that is polling. While etcd cannot be read at all it retries with the exponential ``backoff``,
keeping the last good set with the error in :attr:`Resolution.error`. Several gateway URLs may be given: a failing
one hands over to the next.

An invalid value (not JSON, not an endpoint object) rejects the whole update with a
:class:`~connectivity.errors.ConfigError` naming the key, and the last good set stays in force until the key is
fixed or removed, as Envoy NACKs an invalid EDS update. Two keys with the same ``address:port`` give one endpoint
(the first key's): a re-registration under a new key must not be an error.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import anyio

from connectivity._http import httpx
from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.file import parse_entry
from connectivity.discovery.resolver import DiscoveryError, Resolution, Resolver, UpdateCallback
from connectivity.errors import ConfigError
from connectivity.policies._validate import finite_positive
from connectivity.policies.backoff import Backoff
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["Etcd"]

_log = logging.getLogger("connectivity.discovery")

_DEFAULT_BACKOFF = Backoff.exponential(base=0.25, cap=10.0)
_MAX_RETRY = 64  # the retry number handed to the backoff stops growing: 2.0 ** 1024 overflows a float


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A request body whose async iteration is no async generator.

    httpx's own body stream is one; when a write fails half-way (a pooled connection to an etcd that died), the
    generator is left unfinished and trio warns when it is collected. This one has nothing to finalize.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        return iter((self._data,))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    __slots__ = ("_data",)

    def __init__(self, data: bytes | None) -> None:
        self._data = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


def _request(
    client: httpx.AsyncClient, url: str, body: Mapping[str, Any], timeout: httpx.Timeout | None = None
) -> httpx.Request:
    data = json.dumps(body).encode()
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    request = client.build_request(
        "POST", url, content=data, headers={"Content-Type": "application/json"}, **options
    )
    request.stream = _Body(data)
    return request


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix" (``clientv3.GetPrefixRangeEnd``)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # all 0xff: every key from the prefix on


class Etcd(Resolver):
    """Endpoints stored as JSON values under an etcd key prefix (see the module docstring).

    Args:
        prefix: The key prefix, e.g. ``"/services/orders/"``.
        endpoints: The etcd gateway URL, or several (tried in turn when one fails).
        headers: Extra request headers (e.g. ``{"Authorization": token}`` with etcd authentication on).
        verify: TLS verification for ``https`` URLs (an ``ssl.SSLContext``, a CA bundle path, or a bool).
        timeout: Seconds for one read (connect, write, read, pool).
        refresh_interval: Seconds between reads when polling (a sync client, or while no watch can be opened).
        retry_interval: Seconds before a sync/async refresh retries after a failure.
        backoff: Delays between reconnection attempts of :meth:`watch`.
        idle_timeout: Seconds a watch stream may stay silent before it is reopened (and the set read again).
        gateway: The JSON gateway's path prefix: ``"/v3"`` (etcd 3.4 and later; 3.3 serves ``"/v3beta"``).
        clock: Time source of the refresh timing and the backoff sleeps.

    Raises:
        ConfigError: An invalid option.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_current_url",
        "_headers",
        "_key",
        "_range_end",
        "backoff",
        "endpoints",
        "gateway",
        "idle_timeout",
        "prefix",
        "timeout",
        "verify",
    )

    def __init__(
        self,
        prefix: str,
        *,
        endpoints: str | Sequence[str] = "http://127.0.0.1:2379",
        headers: Mapping[str, str] | None = None,
        verify: ssl.SSLContext | str | bool = True,
        timeout: float = 5.0,
        refresh_interval: float = 30.0,
        retry_interval: float = 5.0,
        backoff: Backoff = _DEFAULT_BACKOFF,
        idle_timeout: float = 60.0,
        gateway: str = "/v3",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("Etcd.prefix", prefix, "must be a non-empty key prefix")
        urls = [endpoints] if isinstance(endpoints, str) else endpoints
        if not isinstance(urls, Sequence) or not urls:
            raise ConfigError("Etcd.endpoints", endpoints, "must be a URL or a non-empty list of URLs")
        for index, url in enumerate(urls):
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"Etcd.endpoints[{index}]", url, "must be an http:// or https:// URL")
        if not isinstance(backoff, Backoff):
            raise ConfigError("Etcd.backoff", backoff, "must be a Backoff")
        if not isinstance(gateway, str) or not gateway.startswith("/"):
            raise ConfigError("Etcd.gateway", gateway, "must be a path such as '/v3'")
        self.prefix = prefix
        self.endpoints = tuple(url.rstrip("/") for url in urls)
        self.gateway = gateway.rstrip("/")
        self._headers = dict(headers or {})
        self.verify = verify
        self.timeout = finite_positive("Etcd.timeout", timeout)
        self.idle_timeout = finite_positive("Etcd.idle_timeout", idle_timeout)
        self.backoff = backoff
        key = prefix.encode()
        self._key = _b64(key)
        self._range_end = _b64(_prefix_end(key))
        self._current_url = 0  # the gateway that answered last
        super().__init__(
            f"etcd:{prefix}", refresh_interval=refresh_interval, retry_interval=retry_interval, clock=clock
        )

    # -- reads ---------------------------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        # trust_env=False: registry traffic must not take an HTTP(S)_PROXY meant for the service's own calls.
        return {"timeout": self.timeout, "headers": self._headers, "verify": self.verify, "trust_env": False}

    def _urls(self) -> list[tuple[int, str]]:
        count = len(self.endpoints)
        order = [(self._current_url + step) % count for step in range(count)]
        return [(index, self.endpoints[index]) for index in order]

    def _range_body(self) -> dict[str, str]:
        return {"key": self._key, "range_end": self._range_end}

    def _fetch(self) -> tuple[Iterable[Endpoint], float | None]:
        with httpx.Client(**self._client_options()) as client:
            failures = []
            for index, url in self._urls():
                try:
                    response = client.post(f"{url}{self.gateway}/kv/range", json=self._range_body())
                    kvs, _ = self._read_range(url, response)
                except (httpx.HTTPError, DiscoveryError) as error:
                    failures.append(error)
                    continue
                self._current_url = index
                return self._endpoints(kvs), None
        raise self._unavailable(failures)

    async def _afetch(self) -> tuple[Iterable[Endpoint], float | None]:
        async with httpx.AsyncClient(**self._client_options()) as client:
            kvs, _ = await self._arange(client)
        return self._endpoints(kvs), None

    async def _arange(self, client: httpx.AsyncClient) -> tuple[dict[bytes, bytes], int]:
        failures = []
        for index, url in self._urls():
            try:
                request = _request(client, f"{url}{self.gateway}/kv/range", self._range_body())
                response = await client.send(request)
                answer = self._read_range(url, response)
            except (httpx.HTTPError, DiscoveryError) as error:
                failures.append(error)
                continue
            self._current_url = index
            return answer
        raise self._unavailable(failures)

    def _read_range(self, url: str, response: httpx.Response) -> tuple[dict[bytes, bytes], int]:
        if response.status_code != 200:
            raise DiscoveryError(self.source, "unavailable", f"{url}: {_etcd_error(response)}")
        try:
            answer = response.json()
            revision = int(answer["header"]["revision"])
            kvs = {
                base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in answer.get("kvs", ())
            }
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            raise DiscoveryError(self.source, "malformed", f"{url}: unreadable range answer ({error})") from None
        return kvs, revision

    def _unavailable(self, failures: Sequence[Exception]) -> DiscoveryError:
        timeout = all(isinstance(failure, httpx.TimeoutException) for failure in failures)
        reasons = "; ".join(_reason(failure) for failure in failures)
        return DiscoveryError(self.source, "timeout" if timeout else "unavailable", f"no etcd answered: {reasons}")

    def _endpoints(self, kvs: Mapping[bytes, bytes]) -> list[Endpoint]:
        """The endpoint list of a key set, in key order.

        Raises:
            ConfigError: A value is not a JSON endpoint object (``field`` names the key).
        """
        found: dict[str, Endpoint] = {}
        for key in sorted(kvs):
            where = f"etcd:{key.decode(errors='replace')}"
            try:
                entry = json.loads(kvs[key])
            except ValueError:
                text = kvs[key][:60].decode(errors="replace")
                raise ConfigError(where, text, "must be a JSON endpoint object") from None
            endpoint = parse_entry(entry, where)
            found.setdefault(endpoint.key, endpoint)
        return list(found.values())

    def _apply(self, kvs: Mapping[bytes, bytes]) -> Resolution:
        try:
            endpoints = self._endpoints(kvs)
        except ConfigError as error:
            return self._failed(error)
        return self._succeeded(endpoints, None)

    # -- the watch -----------------------------------------------------------------------------------------

    async def watch(self, on_update: UpdateCallback) -> None:
        """Follow the prefix with an etcd watch until cancelled, calling ``on_update`` with each new resolution
        (see the module docstring for reconnection, polling fallback and backoff)."""
        version = self._resolution.version

        def publish(resolution: Resolution) -> None:
            nonlocal version
            if resolution.version != version:
                version = resolution.version
                on_update(resolution)

        failures = 0
        async with httpx.AsyncClient(**self._client_options()) as client:
            while True:
                try:
                    kvs, revision = await self._arange(client)
                except DiscoveryError as error:
                    publish(self._failed(error))
                    failures = min(failures + 1, _MAX_RETRY)
                    await self.clock.asleep(self.backoff.delay(failures))
                    continue
                publish(self._apply(kvs))
                try:
                    await self._follow(client, kvs, revision, publish)
                except (httpx.HTTPError, DiscoveryError) as error:
                    failures = min(failures + 1, _MAX_RETRY)
                    delay = min(self.backoff.delay(failures), self.refresh_interval)
                    _log.info("%s: watch failed (%s); reading again in %.3g s", self.source, _reason(error), delay)
                    await self.clock.asleep(delay)
                else:
                    failures = 0

    async def _follow(
        self,
        client: httpx.AsyncClient,
        kvs: dict[bytes, bytes],
        revision: int,
        publish: Callable[[Resolution], None],
    ) -> None:
        """Apply the watch stream's events to ``kvs`` until etcd cancels the watch (compaction) or the stream
        stays silent for ``idle_timeout`` (return: read the set again at once), or it fails or ends (raise)."""
        url = self.endpoints[self._current_url]
        request = {
            "create_request": {
                "key": self._key,
                "range_end": self._range_end,
                "start_revision": str(revision + 1),
                "progress_notify": True,
            }
        }
        timeout = httpx.Timeout(self.timeout, read=self.idle_timeout)
        stream = _Stream(self, kvs, publish)
        try:
            reply = await client.send(
                _request(client, f"{url}{self.gateway}/watch", request, timeout), stream=True
            )
        except httpx.ReadTimeout:
            raise DiscoveryError(
                self.source, "timeout", f"{url} watch: no answer in {self.idle_timeout:g} s"
            ) from None
        try:
            if reply.status_code != 200:
                await reply.aread()
                raise DiscoveryError(self.source, "unavailable", f"{url} watch: {_etcd_error(reply)}")
            # Leave the stream only through an exception raised inside httpx's iterators (a read error, a
            # timeout, the cancellation below), which finishes every async generator on the way out: an
            # unfinished one draws a ResourceWarning from trio when it is collected.
            with anyio.CancelScope() as scope:
                try:
                    async for line in reply.aiter_lines():
                        if stream.ended is None and stream.feed(line):
                            scope.cancel()
                except httpx.ReadTimeout:
                    if not stream.created:
                        raise
                    _log.debug("%s: watch idle for %g s; reading again", self.source, self.idle_timeout)
                    return
        finally:
            await reply.aclose()
        if isinstance(stream.ended, Exception):
            raise stream.ended
        if stream.ended is None:  # closed by the server: a failure (backoff), or a closing server loops us
            state = "after" if stream.created else "before"
            raise DiscoveryError(
                self.source, "unavailable", f"{url} watch: the stream ended {state} it was created"
            )


class _Stream:
    """Applies the lines of one watch stream to the key set; :attr:`ended` says why it should stop."""

    __slots__ = ("created", "ended", "kvs", "publish", "resolver")

    def __init__(self, resolver: Etcd, kvs: dict[bytes, bytes], publish: Callable[[Resolution], None]) -> None:
        self.resolver = resolver
        self.kvs = kvs
        self.publish = publish
        self.created = False
        self.ended: Exception | bool | None = None  # True: read the set again; an exception: raise it

    def feed(self, line: str) -> bool:
        """Apply one line; ``True`` when the stream should be left (see :attr:`ended`)."""
        try:
            self.ended, changed = self._read(line)
        except DiscoveryError as error:
            self.ended = error
        except (ValueError, KeyError, TypeError) as error:
            source = self.resolver.source
            self.ended = DiscoveryError(source, "malformed", f"watch: unreadable message ({_reason(error)})")
        else:
            if changed:
                try:
                    self.publish(self.resolver._apply(self.kvs))
                except Exception as error:  # the update callback's own failure: raised once the stream is closed
                    self.ended = error
        return self.ended is not None

    def _read(self, line: str) -> tuple[bool | None, bool]:
        """Apply one line to the key set: (whether to read the set again, whether the set changed)."""
        if not line.strip():
            return None, False
        source = self.resolver.source
        message = json.loads(line)
        if "error" in message:
            raise DiscoveryError(source, "unavailable", f"watch: {message['error']}")
        result = message.get("result") or {}
        if result.get("canceled"):  # compacted past our revision, or cancelled by the server
            _log.info("%s: watch cancelled (%s); reading again", source, result)
            return True, False
        self.created = self.created or bool(result.get("created"))
        events = result.get("events") or ()
        for event in events:
            kv = event["kv"]
            key = base64.b64decode(kv["key"])
            if event.get("type") == "DELETE":
                self.kvs.pop(key, None)
            else:
                self.kvs[key] = base64.b64decode(kv.get("value", ""))
        return None, bool(events)


def _etcd_error(response: httpx.Response) -> str:
    """``HTTP 404: ...`` with etcd's message when the body carries one."""
    detail = response.text[:200]
    try:
        body = response.json()
    except ValueError:
        pass
    else:
        if isinstance(body, dict):
            detail = str(body.get("message") or body.get("error") or detail)
    return f"HTTP {response.status_code}: {detail}".rstrip(": ")


def _reason(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
