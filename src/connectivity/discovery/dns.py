"""The ``DNS`` resolver: endpoints from A/AAAA or SRV records (dnspython), refreshed as their TTLs run out.

Theory of operation: one refresh is a short *plan* of DNS queries, written once as a generator that yields
``(name, type)`` questions and receives answers (or a :class:`~connectivity.discovery.DiscoveryError`); the sync
path answers it with ``dns.resolver`` and the async path with ``dns.asyncresolver``, on asyncio and on trio (the
dnspython backend is picked per call from the running loop: dnspython's own default remembers the first loop it
saw, which breaks a process that runs both).

* ``A``/``AAAA`` (a host name and a ``port``): one endpoint per address. ``kind="auto"`` on a host name asks for
  both (``lookup_family="all"``, Envoy's ``dns_lookup_family`` ``ALL``), or one (``"v4_only"``, ``"v6_only"``).
* ``SRV`` (``_service._proto.name``; ``kind="auto"`` picks it for a name starting with ``_``): the records of the
  lowest priority with a usable target form the list (RFC 2782: higher priorities are fallbacks, used only when
  every target of the lower ones fails to resolve). Each record's weight becomes the endpoints' ``weight``; weight
  0 becomes 0.01 (RFC 2782's "very small chance") unless every record of the group has 0, which makes them equal.
  Targets are resolved to addresses (``resolve_targets=True``, the default) so a balancer, outlier detection and
  breakers see every address, and a target's weight is split evenly between its addresses; the answer's
  additional section is used first (dnsmasq, Consul and CoreDNS fill it) and target addresses are cached for their
  TTL in a cachetools ``TLRUCache`` on the injected clock (names that have none for their TTL floor), so a refresh
  whose SRV set did not change costs one query. ``resolve_targets=False`` keeps the target names as addresses
  (the HTTP client then resolves them per connection). A lone ``.`` target means "no such service here": an empty
  list, not an error.
* TTL: the smallest TTL of the records used drives :meth:`~connectivity.discovery.Resolver.due`, clamped to
  ``[min_ttl, max_ttl]`` (a TTL of 0, dnsmasq's default for local records, would refresh on every request).

A failure never empties the list: NXDOMAIN, an answer without records of the type asked, a timeout, every server
failing, or a malformed answer (a record with port 0 or an invalid target name, or a message that does not parse)
is a :class:`~connectivity.discovery.DiscoveryError` in the resolution, the last good list is kept and the next
attempt comes after ``retry_interval``. (NXDOMAIN counts as a failure, not as "no endpoints": a zone being
reloaded or a registry glitch must not drain a service's traffic.) Endpoints come out sorted, so servers that
rotate record order do not make a new version on every refresh.

dnspython is the optional ``dns`` extra (``pip install 'connectivity-sdk[dns]'``), imported when a :class:`DNS`
is built.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import threading
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Literal

import sniffio
from cachetools import TLRUCache

from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.resolver import DiscoveryError, Resolver
from connectivity.errors import BackendUnavailableError, ConfigError
from connectivity.policies._validate import finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = ["DNS", "ZERO_SRV_WEIGHT"]

ZERO_SRV_WEIGHT = 0.01
"""The weight of an SRV record with weight 0 in a group where other records have positive weights."""

_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                   r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")  # fmt: skip
_KINDS = ("auto", "A", "AAAA", "SRV")
_FAMILIES = {"all": ("A", "AAAA"), "v4_only": ("A",), "v6_only": ("AAAA",)}
_CACHE_SIZE = 1024

_Question = tuple[str, str]
_Reply = Any  # a dns.resolver.Answer, or the DiscoveryError the question ended in
_Plan = Generator[_Question, _Reply, tuple[list[Endpoint], float]]
_Cached = tuple[tuple[str, ...], float]  # addresses, expiry time on the resolver's clock


class DNS(Resolver):
    """Endpoints from DNS A/AAAA or SRV records (see the module docstring).

    Args:
        name: The name to look up: a host name (with ``port``) or an SRV name (``"_http._tcp.orders.internal"``).
        kind: ``"A"``, ``"AAAA"``, ``"SRV"``, or ``"auto"``: SRV for a name whose first label starts with ``_``,
            else addresses of the ``lookup_family``.
        port: The port of A/AAAA endpoints (required for them; SRV records carry their own, so not allowed).
        nameservers: ``"ip"``, ``"ip:port"`` or ``"[v6]:port"`` strings; ``None`` uses the system's
            (``/etc/resolv.conf``).
        lookup_family: Which addresses ``kind="auto"`` and SRV targets resolve to: ``"all"`` (A and AAAA),
            ``"v4_only"`` or ``"v6_only"``.
        resolve_targets: Resolve SRV targets to addresses (``True``) or keep their names.
        timeout: Seconds one question may take, across retries and nameservers.
        tcp: Ask over TCP instead of UDP.
        min_ttl: Floor of the refresh interval taken from TTLs (Envoy's ``dns_refresh_rate`` default, 5 s).
        max_ttl: Cap of the refresh interval taken from TTLs.
        retry_interval: Seconds before retrying after a failed refresh.
        clock: Time source (also of the target address cache).

    Raises:
        ConfigError: An invalid option (``field`` names it), or no nameserver given and none configured.
        BackendUnavailableError: dnspython is not installed (``pip install 'connectivity-sdk[dns]'``).

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_async",
        "_cache",
        "_cache_lock",
        "_dns",
        "_families",
        "_srv",
        "_sync",
        "kind",
        "lookup_family",
        "max_ttl",
        "min_ttl",
        "name",
        "port",
        "resolve_targets",
        "tcp",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        *,
        kind: Literal["auto", "A", "AAAA", "SRV"] = "auto",
        port: int | None = None,
        nameservers: Sequence[str] | None = None,
        lookup_family: Literal["all", "v4_only", "v6_only"] = "all",
        resolve_targets: bool = True,
        timeout: float = 2.0,
        tcp: bool = False,
        min_ttl: float = 5.0,
        max_ttl: float = 300.0,
        retry_interval: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError("DNS.name", name, "must be a valid DNS name")
        if kind not in _KINDS:
            raise ConfigError("DNS.kind", kind, "must be 'auto', 'A', 'AAAA' or 'SRV'")
        if lookup_family not in _FAMILIES:
            raise ConfigError("DNS.lookup_family", lookup_family, "must be 'all', 'v4_only' or 'v6_only'")
        self.name = name.lower()
        self.kind = kind
        self.lookup_family = lookup_family
        self._srv = kind == "SRV" or (kind == "auto" and name.startswith("_"))
        if self._srv:
            if port is not None:
                raise ConfigError("DNS.port", port, "must be None for SRV records (they carry the port)")
        elif isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("DNS.port", port, f"must be an integer from 1 to 65535 for {kind} lookups")
        self.port = port
        self._families = (kind,) if kind in ("A", "AAAA") else _FAMILIES[lookup_family]
        self.resolve_targets = bool(resolve_targets)
        self.tcp = bool(tcp)
        self.timeout = finite_positive("DNS.timeout", timeout)
        self.min_ttl = finite_positive("DNS.min_ttl", min_ttl)
        self.max_ttl = finite_positive("DNS.max_ttl", max_ttl)
        if self.max_ttl < self.min_ttl:
            raise ConfigError("DNS.max_ttl", max_ttl, f"must be at least min_ttl ({min_ttl})")
        servers = _nameservers(nameservers)
        self._dns = _dnspython()
        self._sync = self._resolver(self._dns.resolver.Resolver, servers)
        self._async = self._resolver(self._dns.asyncresolver.Resolver, servers)
        super().__init__(
            f"dns:{'SRV ' if self._srv else ''}{self.name}",
            refresh_interval=self.max_ttl,
            retry_interval=retry_interval,
            clock=clock,
        )
        self._cache: TLRUCache[_Question, _Cached] = TLRUCache(
            _CACHE_SIZE, ttu=lambda _key, value, _now: value[1], timer=clock.now
        )
        self._cache_lock = threading.Lock()  # cachetools caches are not thread-safe; sync refreshes may overlap

    def __repr__(self) -> str:
        kind = "SRV" if self._srv else self.kind
        port = "" if self.port is None else f", port={self.port}"
        return f"DNS({self.name!r}, kind={kind!r}{port})"

    def _resolver(self, factory: Any, servers: list[tuple[str, int]] | None) -> Any:
        try:
            resolver = factory(configure=servers is None)
        except self._dns.resolver.NoResolverConfiguration:
            raise ConfigError(
                "DNS.nameservers", None, "no system resolver is configured (/etc/resolv.conf): pass nameservers"
            ) from None
        if servers is not None:
            resolver.nameservers = [self._dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
        count = len(resolver.nameservers)
        resolver.lifetime = self.timeout
        resolver.timeout = self.timeout / min(max(count, 1), 3)  # a dead first server leaves time for the next
        return resolver

    # -- the drivers ---------------------------------------------------------------------------------------

    def _fetch(self) -> tuple[Iterable[Endpoint], float | None]:
        plan = self._plan()
        question = next(plan)
        while True:
            name, rdtype = question
            try:
                reply = self._sync.resolve(name, rdtype, tcp=self.tcp)
            except Exception as error:
                reply = self._error(name, rdtype, error)
            try:
                question = plan.send(reply)
            except StopIteration as done:
                return self._clamped(done.value)

    async def _afetch(self) -> tuple[Iterable[Endpoint], float | None]:
        backend = self._dns.asyncbackend.get_backend(sniffio.current_async_library())
        plan = self._plan()
        question = next(plan)
        while True:
            name, rdtype = question
            try:
                reply = await self._async.resolve(name, rdtype, tcp=self.tcp, backend=backend)
            except Exception as error:
                reply = self._error(name, rdtype, error)
            try:
                question = plan.send(reply)
            except StopIteration as done:
                return self._clamped(done.value)

    def _clamped(self, result: tuple[list[Endpoint], float]) -> tuple[list[Endpoint], float]:
        endpoints, ttl = result
        return endpoints, min(max(ttl, self.min_ttl), self.max_ttl)

    def _error(self, name: str, rdtype: str, error: Exception) -> DiscoveryError:
        dns = self._dns
        question = f"{name} {rdtype}"
        if isinstance(error, dns.resolver.NXDOMAIN):
            return DiscoveryError(self.source, "not-found", f"{question}: no such name (NXDOMAIN)")
        if isinstance(error, dns.resolver.NoAnswer):
            return DiscoveryError(self.source, "no-data", f"{question}: the name has no {rdtype} record")
        if isinstance(error, dns.exception.Timeout):
            return DiscoveryError(self.source, "timeout", f"{question}: no answer within {self.timeout:g} s")
        kind = "unavailable"
        if isinstance(error, dns.resolver.NoNameservers):
            failures = error.kwargs.get("errors") or ()
            if any(len(failure) > 3 and isinstance(failure[3], dns.exception.FormError) for failure in failures):
                kind = "malformed"
        elif isinstance(error, dns.exception.FormError):
            kind = "malformed"
        detail = str(error) or type(error).__name__
        return DiscoveryError(self.source, kind, f"{question}: {detail}")

    # -- the plan ------------------------------------------------------------------------------------------

    def _plan(self) -> _Plan:
        if self._srv:
            return (yield from self._srv_plan())
        assert self.port is not None
        addresses, ttl, missing = yield from self._addresses(self.name, cached=False)
        if not addresses:
            assert missing is not None
            raise missing
        endpoints = {Endpoint(address, self.port) for address in addresses}
        return sorted(endpoints, key=_order), ttl

    def _addresses(
        self, name: str, *, cached: bool
    ) -> Generator[_Question, _Reply, tuple[list[str], float, DiscoveryError | None]]:
        """The addresses of ``name`` in the configured families, their smallest TTL, and why a family had none
        (NXDOMAIN, no data: not a failure while another family has addresses). Other failures end the refresh.
        With ``cached``, answers (negative ones for ``min_ttl``) come from and go to the target cache."""
        addresses: list[str] = []
        ttl = float("inf")
        missing: DiscoveryError | None = None
        for rdtype in self._families:
            entry = self._cached((name, rdtype)) if cached else None
            if entry is None:
                reply = yield (name, rdtype)
                now = self.clock.now()
                if isinstance(reply, DiscoveryError):
                    if reply.kind not in ("not-found", "no-data"):
                        raise reply
                    missing = missing or reply
                    entry = ((), now + self.min_ttl)
                else:
                    entry = (_rdata_addresses(reply), now + _ttl(reply))
                if cached:
                    self._store((name, rdtype), entry)
            found, expires = entry
            if found:
                addresses.extend(found)
                ttl = min(ttl, expires - self.clock.now())
        return addresses, ttl, missing

    def _srv_plan(self) -> _Plan:
        reply = yield (self.name, "SRV")
        if isinstance(reply, DiscoveryError):
            raise reply
        ttl = _ttl(reply)
        records = [_SRV.parse(self.source, rdata) for rdata in reply]
        if any(record.target == "" for record in records):
            if len(records) == 1:  # RFC 2782: "." alone means the service is decidedly not available here
                return [], ttl
            raise DiscoveryError(self.source, "malformed", "an SRV record with target '.' among others")
        if self.resolve_targets:
            self._harvest(reply)
        for priority in sorted({record.priority for record in records}):
            group = [record for record in records if record.priority == priority]
            weights = _weights(group)
            found: dict[str, Endpoint] = {}
            for record, weight in zip(group, weights, strict=True):
                metadata = {"target": record.target, "priority": priority}
                if not self.resolve_targets:
                    _add(found, Endpoint(record.target, record.port, weight, None, metadata))
                    continue
                addresses, address_ttl, _ = yield from self._addresses(record.target, cached=True)
                if addresses:
                    ttl = min(ttl, address_ttl)
                for address in addresses:
                    _add(found, Endpoint(address, record.port, weight / len(addresses), None, metadata))
            if found:
                return sorted(found.values(), key=_order), ttl
        raise DiscoveryError(
            self.source, "not-found", f"none of the {len(records)} SRV targets has an address ({self._kinds()})"
        )

    def _kinds(self) -> str:
        return " or ".join(self._families)

    # -- the target address cache --------------------------------------------------------------------------

    def _harvest(self, reply: Any) -> None:
        """Cache the target addresses a server sent along with the SRV answer (its additional section)."""
        rdatatype = self._dns.rdatatype
        for rrset in reply.response.additional:
            rdtype = rdatatype.to_text(rrset.rdtype)
            if rdtype in self._families:
                name = rrset.name.to_text(omit_final_dot=True).lower()
                self._store((name, rdtype), (_rdata_addresses(rrset), self.clock.now() + rrset.ttl))

    def _cached(self, question: _Question) -> _Cached | None:
        with self._cache_lock:
            return self._cache.get(question)

    def _store(self, question: _Question, entry: _Cached) -> None:
        with self._cache_lock:
            self._cache[question] = entry


class _SRV:
    """One validated SRV record."""

    __slots__ = ("port", "priority", "target", "weight")

    def __init__(self, priority: int, weight: int, port: int, target: str) -> None:
        self.priority = priority
        self.weight = weight
        self.port = port
        self.target = target

    @classmethod
    def parse(cls, source: str, rdata: Any) -> _SRV:
        target = rdata.target.to_text(omit_final_dot=True).lower()
        if target in ("", "."):
            return cls(rdata.priority, rdata.weight, rdata.port, "")
        try:
            Endpoint(target, rdata.port)  # validates the port (1-65535) and the target name
        except ConfigError as error:
            raise DiscoveryError(source, "malformed", f"SRV record '{rdata}' is invalid: {error}") from None
        return cls(rdata.priority, rdata.weight, rdata.port, target)


def _weights(group: list[_SRV]) -> list[float]:
    if all(record.weight == 0 for record in group):
        return [1.0] * len(group)
    return [float(record.weight) if record.weight else ZERO_SRV_WEIGHT for record in group]


def _add(found: dict[str, Endpoint], endpoint: Endpoint) -> None:
    """Add an endpoint; one reached through two records gets both records' weights."""
    known = found.get(endpoint.key)
    if known is not None:
        endpoint = Endpoint(known.address, known.port, known.weight + endpoint.weight, None, known.metadata)
    found[endpoint.key] = endpoint


def _order(endpoint: Endpoint) -> tuple[int, int, str, int]:
    try:
        address = ipaddress.ip_address(endpoint.address)
    except ValueError:
        return (2, 0, endpoint.address, endpoint.port)
    return (0 if address.version == 4 else 1, int(address), "", endpoint.port)


def _ttl(answer: Any) -> float:
    return float(answer.chaining_result.minimum_ttl)


def _rdata_addresses(rdataset: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(rdata.address) for rdata in rdataset)


def _nameservers(nameservers: Sequence[str] | None) -> list[tuple[str, int]] | None:
    if nameservers is None:
        return None
    if isinstance(nameservers, (str, bytes)) or not isinstance(nameservers, Sequence) or not nameservers:
        raise ConfigError("DNS.nameservers", nameservers, "must be a non-empty list of 'ip' or 'ip:port' strings")
    servers = []
    for index, text in enumerate(nameservers):
        field = f"DNS.nameservers[{index}]"
        try:
            server = Endpoint.parse(text, default_port=53)
            ipaddress.ip_address(server.address)
        except (ConfigError, ValueError):
            raise ConfigError(field, text, "must be an IP address with an optional port ('[v6]:port')") from None
        servers.append((server.address, server.port))
    return servers


def _dnspython() -> Any:
    """The dnspython modules used here (imported as untyped modules: the extra is optional)."""
    try:
        for name in (
            "dns.resolver",
            "dns.asyncresolver",
            "dns.asyncbackend",
            "dns.nameserver",
            "dns.exception",
            "dns.rdatatype",
        ):
            importlib.import_module(name)
    except ImportError:
        raise BackendUnavailableError(
            "dnspython",
            "DNS discovery needs dnspython: pip install 'connectivity-sdk[dns]'",
            field="DNS",
            value="dnspython",
        ) from None
    return importlib.import_module("dns")
