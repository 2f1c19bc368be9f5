"""Routes and route tables: which target a request goes to, and with which per-route policy.

Theory of operation: a :class:`Route` is frozen, validated configuration: conditions on the method, the path and
headers, a target or a weighted split of targets (with an optional sticky key and header overrides), and policy
overrides (total timeout, per-try timeout, retry policy). A :class:`RouteTable` is an ordered list of routes whose
names are unique and whose targets are all known; the first route whose conditions all hold takes the request (as
in Envoy's virtual host and Istio's ``VirtualService``). Everything that can be wrong is found when the route or
table is built and raised as :class:`~connectivity.errors.ConfigError` naming the route and the field
(``Route['orders'].regex``); nothing is validated per request.

Matching and choosing are pure functions of ``(method, path, headers)`` and a random draw, so the same table
serves sync and async transports and tests without any I/O. The routing transport keeps one table and swaps it as
a whole when the configuration changes (:meth:`connectivity.transports.RoutingTransport.update`); a request reads
the table once, so it is routed entirely by the old table or entirely by the new one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeVar

from connectivity.errors import ConfigError
from connectivity.policies._validate import optional_positive
from connectivity.policies.retry import Retry
from connectivity.routing.match import EXACT, NO_PARAMS, HeaderMatch, PathMatch
from connectivity.routing.split import Backend, Override, Sticky, WeightTable, choose

__all__ = ["Route", "RouteChoice", "RouteTable"]

TIMEOUT_EXTENSION: Final = "connectivity.timeout"
PER_TRY_TIMEOUT_EXTENSION: Final = "connectivity.per_try_timeout"
RETRY_EXTENSION: Final = "connectivity.retry"

_PATH_ARGUMENTS: Final = {
    "prefix": "prefix",
    "path": EXACT,
    "separated_prefix": "separated_prefix",
    "regex": "regex",
    "template": "template",
}
T = TypeVar("T")
_CLASS_PREFIX = re.compile(r"^[A-Za-z]+")
_KEYS: Final = frozenset(
    {"name", "methods", "headers", "target", "split", "sticky", "overrides", "timeout", "per_try_timeout", "retry"}
    | set(_PATH_ARGUMENTS)
)


class RouteChoice(NamedTuple):
    """Where one request went, found in ``response.extensions["connectivity.route"]``.

    Attributes:
        route: The name of the route that matched, or ``None`` when none did and the default target took it.
        target: The target the request was sent to.
        reason: Why this target: ``"route"`` (the route's only target), ``"split"`` (a random draw),
            ``"sticky"`` (the hash of the sticky key), ``"override"`` (a header override) or ``"default"``.
        params: The path template's variables (``{"id": "7"}`` for ``/orders/{id}``); empty otherwise.

    .. versionadded:: 0.1
    """

    route: str | None
    target: str
    reason: str
    params: Mapping[str, str]


def _within(prefix: str, exc: ConfigError) -> ConfigError:
    """Re-home a nested object's error under ``prefix``: ``PathMatch.regex`` -> ``Route['orders'].regex``."""
    return ConfigError(prefix + _CLASS_PREFIX.sub("", exc.field, count=1), exc.value, exc.rule)


def _nested(where: str, build: Callable[[object], T], item: object) -> T:
    """``build(item)``, its ConfigError re-homed under ``where``."""
    try:
        return build(item)
    except ConfigError as exc:
        raise _within(where, exc) from None


def _methods(where: str, methods: object) -> frozenset[str] | None:
    if methods is None:
        return None
    items = [methods] if isinstance(methods, str) else methods
    if not isinstance(items, Iterable):
        raise ConfigError(where, methods, "must be an HTTP method or a list of them")
    result = set()
    for method in items:
        if not isinstance(method, str) or not method.isascii() or not method.isalpha():
            raise ConfigError(where, methods, "must be HTTP method names")
        result.add(method.upper())
    if not result:
        raise ConfigError(where, methods, "must not be empty (leave it out to match every method)")
    return frozenset(result)


def _headers(where: str, headers: object) -> tuple[HeaderMatch, ...]:
    if isinstance(headers, Mapping):
        items: list[object] = [{"name": name, "exact": value} for name, value in headers.items()]
    elif isinstance(headers, Sequence) and not isinstance(headers, str):
        items = list(headers)
    else:
        raise ConfigError(where, headers, "must be a list of HeaderMatch (or dicts), or a mapping name -> value")
    return tuple(_nested(f"{where}[{index}]", _header_match, item) for index, item in enumerate(items))


def _header_match(item: object) -> HeaderMatch:
    if isinstance(item, HeaderMatch):
        return item
    if isinstance(item, Mapping):
        try:
            return HeaderMatch(**item)
        except TypeError:
            raise ConfigError(
                "HeaderMatch", dict(item), "keys are name and one of exact, prefix, regex, present (+ invert)"
            ) from None
    raise ConfigError("HeaderMatch", item, "must be a HeaderMatch or a dict")


def _split(where: str, split: object) -> tuple[Backend, ...]:
    if isinstance(split, Mapping):
        pairs: list[object] = [Backend(str(target), weight) for target, weight in split.items()]
    elif isinstance(split, Sequence) and not isinstance(split, str):
        pairs = list(split)
    else:
        raise ConfigError(where, split, "must be a mapping target -> weight, or a list of Backend")
    backends = []
    for item in pairs:
        if isinstance(item, Backend):
            backends.append(item)
        elif isinstance(item, Mapping) and set(item) <= {"target", "weight"}:
            backends.append(Backend(item.get("target"), item.get("weight")))  # type: ignore[arg-type]
        elif isinstance(item, tuple) and len(item) == 2:
            backends.append(Backend(*item))
        else:
            raise ConfigError(where, item, "each entry must be a Backend, a (target, weight) pair or a dict")
    return tuple(backends)


def _sticky(where: str, sticky: object) -> Sticky | None:
    if sticky is None or isinstance(sticky, Sticky):
        return sticky
    if isinstance(sticky, Mapping) and set(sticky) <= {"header", "cookie"}:
        try:
            return Sticky(**sticky)
        except ConfigError as exc:
            raise _within(where, exc) from None
    raise ConfigError(where, sticky, "must be a Sticky or a dict with 'header' or 'cookie'")


def _overrides(where: str, overrides: object) -> tuple[Override, ...]:
    if not isinstance(overrides, Sequence) or isinstance(overrides, str):
        raise ConfigError(where, overrides, "must be a list of Override (or dicts)")
    return tuple(_nested(f"{where}[{index}]", _override, item) for index, item in enumerate(overrides))


def _override(item: object) -> Override:
    if isinstance(item, Override):
        return item
    if isinstance(item, Mapping) and "target" in item:
        condition = {key: value for key, value in item.items() if key != "target"}
        if "header" in condition:
            condition["name"] = condition.pop("header")
        return Override(_header_match(condition), item["target"])
    raise ConfigError("Override", item, "must be an Override or a dict with header, a condition and target")


def _retry(where: str, retry: object) -> Retry | None:
    if retry is None or isinstance(retry, Retry):
        return retry
    if isinstance(retry, Mapping):
        try:
            return Retry(**retry)
        except ConfigError as exc:
            raise _within(where, exc) from None
        except TypeError as exc:
            raise ConfigError(where, dict(retry), f"not a Retry configuration: {exc}") from None
    raise ConfigError(where, retry, "must be a connectivity.Retry or a dict of its fields")


def _timeout(where: str, value: object) -> float | None:
    try:
        return optional_positive(where, value)
    except ConfigError:
        raise ConfigError(where, value, "must be None or a number of seconds > 0") from None


@dataclass(frozen=True, slots=True, init=False)
class Route:
    """One entry of a route table: conditions on the request, where it goes, and per-route policy.

    Args:
        name: Unique within the table; recorded in :class:`RouteChoice` and named by every error.
        methods: Methods matched (``"GET"`` or ``["GET", "HEAD"]``); ``None``: any.
        prefix: Path prefix (a plain string prefix, as Envoy's ``prefix``).
        path: Exact path (Envoy's ``path``), or any :class:`PathMatch`.
        separated_prefix: ``/orders`` matches ``/orders`` and ``/orders/...`` but not ``/orders-archive``.
        regex: Regular expression the whole path must match.
        template: URI template, ``/orders/{id}``; variables are recorded in ``RouteChoice.params``.
        headers: Conditions on headers, all of which must hold: :class:`HeaderMatch` objects (or dicts of their
            fields), or a mapping ``name -> exact value``.
        target: The target every matched request goes to. Exactly one of ``target`` and ``split`` is given.
        split: A weighted split, ``{"orders-v1": 95, "orders-v2": 5}`` (percent, summing to 100) or a list of
            :class:`Backend`.
        sticky: Hash this header's or cookie's value instead of drawing at random (a split only).
        overrides: Header conditions that force a target, checked in order before the split.
        timeout: Total time limit for the route, seconds (``request.extensions["connectivity.timeout"]``).
        per_try_timeout: Per-attempt limit (``request.extensions["connectivity.per_try_timeout"]``).
        retry: Retry policy for the route (``request.extensions["connectivity.retry"]``); a dict of
            :class:`~connectivity.Retry` fields is accepted.

    At most one of ``prefix``, ``path``, ``separated_prefix``, ``regex`` and ``template`` is given; none matches
    every path. Policy overrides reach the layers *inside* the routing transport (each target's stack); a value
    the caller already put in the request's extensions wins over the route's.

    Raises:
        ConfigError: Any invalid field; ``field`` reads ``Route['<name>'].<field>``.

    .. versionadded:: 0.1
    """

    name: str
    methods: frozenset[str] | None
    path: PathMatch | None
    headers: tuple[HeaderMatch, ...]
    target: str | None
    split: tuple[Backend, ...]
    sticky: Sticky | None
    overrides: tuple[Override, ...]
    timeout: float | None
    per_try_timeout: float | None
    retry: Retry | None
    _table: WeightTable | None = field(repr=False, compare=False)
    _policy: tuple[tuple[str, object], ...] = field(repr=False, compare=False)

    def __init__(
        self,
        name: str,
        *,
        methods: str | Iterable[str] | None = None,
        prefix: str | None = None,
        path: str | PathMatch | None = None,
        separated_prefix: str | None = None,
        regex: str | None = None,
        template: str | None = None,
        headers: Sequence[HeaderMatch | Mapping[str, Any]] | Mapping[str, str] = (),
        target: str | None = None,
        split: Mapping[str, float] | Sequence[Backend | tuple[str, float]] | None = None,
        sticky: Sticky | Mapping[str, str] | None = None,
        overrides: Sequence[Override | Mapping[str, Any]] = (),
        timeout: float | None = None,
        per_try_timeout: float | None = None,
        retry: Retry | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("Route.name", name, "must be a non-empty string")
        where = f"Route[{name!r}]"
        put = object.__setattr__
        put(self, "name", name)
        put(self, "methods", _methods(f"{where}.methods", methods))
        put(self, "path", _path(where, prefix, path, separated_prefix, regex, template))
        put(self, "headers", _headers(f"{where}.headers", headers))
        if (target is None) == (split is None):
            raise ConfigError(f"{where}.target", (target, split), "give exactly one of target and split")
        table: WeightTable | None = None
        if target is not None:
            if not isinstance(target, str) or not target:
                raise ConfigError(f"{where}.target", target, "must be a non-empty target name")
            backends: tuple[Backend, ...] = ()
        else:
            try:
                backends = _split(f"{where}.split", split)
            except ConfigError as exc:
                if exc.field.startswith(where):
                    raise
                raise _within(f"{where}.split", exc) from None  # a Backend's own error
            table = WeightTable(backends, field=f"{where}.split")
        put(self, "target", target)
        put(self, "split", backends)
        put(self, "_table", table)
        sticky_key = _sticky(f"{where}.sticky", sticky)
        if sticky_key is not None and table is None:
            raise ConfigError(f"{where}.sticky", sticky_key, "only a split can be sticky")
        put(self, "sticky", sticky_key)
        put(self, "overrides", _overrides(f"{where}.overrides", overrides))
        put(self, "timeout", _timeout(f"{where}.timeout", timeout))
        put(self, "per_try_timeout", _timeout(f"{where}.per_try_timeout", per_try_timeout))
        put(self, "retry", _retry(f"{where}.retry", retry))
        policy: list[tuple[str, object]] = []
        if self.timeout is not None:
            policy.append((TIMEOUT_EXTENSION, self.timeout))
        if self.per_try_timeout is not None:
            policy.append((PER_TRY_TIMEOUT_EXTENSION, self.per_try_timeout))
        if self.retry is not None:
            policy.append((RETRY_EXTENSION, self.retry))
        put(self, "_policy", tuple(policy))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Route:
        """Build a route from plain data (a configuration file's entry).

        Keys are the constructor's arguments; nested values may be dicts too: ``headers`` a list of
        ``{"name", "exact"|"prefix"|"regex"|"present", "invert"}`` or a mapping name -> value, ``split`` a mapping
        target -> weight or a list of ``{"target", "weight"}``, ``sticky`` ``{"header"}`` or ``{"cookie"}``,
        ``overrides`` a list of ``{"header", "exact"|..., "target"}``, ``retry`` a dict of Retry fields.

        Raises:
            ConfigError: An unknown key or an invalid value, naming the route and the field.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("Route", data, "must be a mapping")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("Route.name", name, "must be a non-empty string")
        if unknown := sorted(set(data) - _KEYS):
            raise ConfigError(
                f"Route[{name!r}].{unknown[0]}",
                data[unknown[0]],
                f"unknown field; expected one of {sorted(_KEYS)}",
            )
        options = {key: value for key, value in data.items() if key != "name"}
        return cls(name, **options)

    @property
    def policy(self) -> tuple[tuple[str, object], ...]:
        """The request extensions this route sets (key, value), in the order they are applied."""
        return self._policy

    @property
    def targets(self) -> frozenset[str]:
        """Every target the route can send to: its target or split targets, and its override targets."""
        names = {self.target} if self.target is not None else {backend.target for backend in self.split}
        return frozenset(names | {override.target for override in self.overrides})

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> Mapping[str, str] | None:
        """The path variables if every condition holds (empty when there are none), else ``None``."""
        if self.methods is not None and method not in self.methods:
            return None
        if self.path is None:
            params: Mapping[str, str] | None = NO_PARAMS
        else:
            params = self.path.match(path)
            if params is None:
                return None
        for condition in self.headers:
            if not condition.matches(headers):
                return None
        return params

    def choose(self, headers: Mapping[str, str], random: Callable[[], float]) -> tuple[str, str]:
        """The target for a request this route matched, and the reason (see :class:`RouteChoice`)."""
        if self._table is None:
            assert self.target is not None
            for override in self.overrides:
                if override.match.matches(headers):
                    return override.target, "override"
            return self.target, "route"
        return choose(self._table, headers, random, self.sticky, self.overrides)


def _path(
    where: str,
    prefix: str | None,
    path: str | PathMatch | None,
    separated_prefix: str | None,
    regex: str | None,
    template: str | None,
) -> PathMatch | None:
    given = {
        argument: value
        for argument, value in (
            ("prefix", prefix),
            ("path", path),
            ("separated_prefix", separated_prefix),
            ("regex", regex),
            ("template", template),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ConfigError(
            where, sorted(given), "give at most one of prefix, path, separated_prefix, regex, template"
        )
    if not given:
        return None
    ((argument, value),) = given.items()
    if isinstance(value, PathMatch):
        if argument != "path":
            raise ConfigError(f"{where}.{argument}", value, "must be a string (pass a PathMatch as path=)")
        return value
    try:
        return PathMatch(_PATH_ARGUMENTS[argument], value)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{argument}", exc.value, exc.rule) from None


class RouteTable:
    """An ordered, validated list of routes: the first route whose conditions hold takes the request.

    Args:
        routes: :class:`Route` objects or dicts (see :meth:`Route.from_dict`), in matching order.
        targets: The target names that exist; every target a route names must be one of them. ``None`` skips the
            check (a table built on its own, before the transport knows its targets).

    Raises:
        ConfigError: An invalid route, two routes with one name, or a route naming an unknown target.

    .. versionadded:: 0.1
    """

    __slots__ = ("_routes",)

    def __init__(
        self, routes: Iterable[Route | Mapping[str, Any]], *, targets: Collection[str] | None = None
    ) -> None:
        if isinstance(routes, (str, bytes, Mapping)) or not isinstance(routes, Iterable):
            raise ConfigError("RouteTable.routes", routes, "must be a list of Route (or dicts)")
        built: list[Route] = []
        names: set[str] = set()
        for index, item in enumerate(routes):
            if isinstance(item, Route):
                route = item
            elif isinstance(item, Mapping):
                route = Route.from_dict(item)
            else:
                raise ConfigError(f"RouteTable.routes[{index}]", item, "must be a Route or a dict")
            if route.name in names:
                raise ConfigError(f"Route[{route.name!r}].name", route.name, "another route has this name")
            names.add(route.name)
            if targets is not None:
                _check_targets(route, targets)
            built.append(route)
        self._routes = tuple(built)

    @property
    def routes(self) -> tuple[Route, ...]:
        """The routes, in matching order."""
        return self._routes

    def match(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[Route, Mapping[str, str]] | None:
        """The first route whose conditions hold, with the path variables it captured; ``None`` if none does."""
        for route in self._routes:
            params = route.matches(method, path, headers)
            if params is not None:
                return route, params
        return None

    def select(
        self, method: str, path: str, headers: Mapping[str, str], random: Callable[[], float]
    ) -> RouteChoice | None:
        """Match and choose a target in one call (what the transport does per request); ``None``: no route."""
        found = self.match(method, path, headers)
        if found is None:
            return None
        route, params = found
        target, reason = route.choose(headers, random)
        return RouteChoice(route.name, target, reason, params)


def _check_targets(route: Route, targets: Collection[str]) -> None:
    where = f"Route[{route.name!r}]"
    known = sorted(targets)
    if route.target is not None and route.target not in targets:
        raise ConfigError(f"{where}.target", route.target, f"unknown target; known targets: {known}")
    for backend in route.split:
        if backend.target not in targets:
            raise ConfigError(f"{where}.split", backend.target, f"unknown target; known targets: {known}")
    for index, override in enumerate(route.overrides):
        if override.target not in targets:
            raise ConfigError(
                f"{where}.overrides[{index}].target", override.target, f"unknown target; known targets: {known}"
            )
