"""Routing and traffic splitting as a transport: a route table picks the target of each request.

Theory of operation: every decision lives in :class:`connectivity.routing.RouteTable` (pure, validated when it is
built). Per request this transport reads its current table once, asks it for the first matching route, asks the
route for a target (its only target, a header override, a sticky hash or a weighted draw from the injected random
number generator), applies the route's policy overrides as request extensions, and hands the request to that
target's transport. What it chose is recorded in ``response.extensions["connectivity.route"]`` (a
:class:`~connectivity.routing.RouteChoice`).

A target is either a transport of its own (a whole stack for ``orders-v2``, say) or a base URL: the request's
scheme, host and port are replaced by the base URL's (its path, if any, is prepended), the ``Host`` header follows
(like Envoy's ``auto_host_rewrite``), and the request goes through the shared network ``transport``.

Per-route timeouts and retry policies reach the layers that read them (``connectivity.timeout``,
``connectivity.per_try_timeout``, ``connectivity.retry``) only if those layers are *inside* this transport, in the
targets' stacks: put the routing transport outermost, as Envoy's router owns the retry loop of the route it chose.
A value the caller already set in the request's extensions wins over the route's.

Reconfiguration: :meth:`RoutingTransport.update` validates a new route table against the known targets first and
only then swaps it in (one attribute assignment): an invalid table raises :class:`~connectivity.ConfigError` and
the last good table stays in force; requests in flight finish with the table they started with.

With no matching route the request goes to ``default``; without a default, :class:`NoRouteError` is raised (Envoy
answers ``404`` with the ``NR`` flag; a client library raises instead, before anything is sent).
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any, Final

from connectivity._http import httpx
from connectivity.errors import ConfigError, NoRouteError
from connectivity.routing.match import NO_PARAMS
from connectivity.routing.route import Route, RouteChoice, RouteTable
from connectivity.transports._base import Inner

__all__ = ["ROUTE_EXTENSION", "NoRouteError", "RoutingTransport"]

ROUTE_EXTENSION: Final = "connectivity.route"
"""Key of the :class:`~connectivity.routing.RouteChoice` in ``response.extensions``."""
DEFAULT_TARGET: Final = "default"
"""The target name a transport given as ``default`` is registered under."""


def parse_base_url(field: str, value: object) -> httpx.URL:
    """Validate a base URL (``http(s)://host[:port][/prefix]``, no query, fragment or credentials)."""
    if not isinstance(value, (str, httpx.URL)):
        raise ConfigError(field, value, "must be a base URL such as 'http://10.0.0.7:8080'")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ConfigError(field, value, f"invalid URL: {exc}") from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise ConfigError(field, value, "must be an absolute http:// or https:// URL with a host")
    if url.query or url.fragment or url.userinfo:
        raise ConfigError(field, value, "must not carry a query, a fragment or credentials")
    return url


def rebase_url(url: httpx.URL, base: httpx.URL) -> httpx.URL:
    """``url`` with the scheme, host and port of ``base``, and the base's path (if any) prefixed to its own."""
    prefix = base.raw_path.rstrip(b"/")
    return url.copy_with(
        scheme=base.scheme,
        host=base.host,
        port=base.port,
        raw_path=prefix + url.raw_path if prefix else url.raw_path,
    )


def rebase(request: httpx.Request, base: httpx.URL, host: str) -> httpx.Request:
    """A copy of ``request`` sent to ``base`` (see :func:`rebase_url`) with ``Host`` set to ``host``. Headers are
    copied; the body stream and the extensions dict are shared."""
    copy = httpx.Request(
        request.method, rebase_url(request.url, base), headers=request.headers, stream=request.stream
    )
    copy.headers["Host"] = host
    copy.extensions = request.extensions  # one call: layers inside share the attempt counter and overrides
    return copy


class _Target:
    """One target: its transport (resolved once per client kind) and, for a base-URL target, the rewrite."""

    __slots__ = ("async_", "base", "host", "name", "sync", "transport")

    def __init__(self, name: str, transport: Inner, base: httpx.URL | None = None) -> None:
        self.name = name
        self.transport = transport
        self.sync = transport if isinstance(transport, httpx.BaseTransport) else None
        self.async_ = transport if isinstance(transport, httpx.AsyncBaseTransport) else None
        self.base = base
        self.host = "" if base is None else base.netloc.decode("ascii")

    def unsupported(self, client: str) -> TypeError:
        kind = "an async-only" if client == "sync" else "a sync-only"
        return TypeError(
            f"RoutingTransport target {self.name!r} is {type(self.transport).__name__}, {kind} transport: "
            f"give it a transport that serves {'httpx.Client' if client == 'sync' else 'httpx.AsyncClient'}"
        )


class RoutingTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Send each request to the target its route chooses: route tables, traffic splits, header overrides.

    Args:
        routes: :class:`~connectivity.routing.Route` objects or dicts (:meth:`Route.from_dict`), or a
            :class:`~connectivity.routing.RouteTable`; matched in order.
        targets: Target name -> transport (a stack of its own) or base URL (``"http://10.0.0.7:8080"``, sent
            through ``transport`` with the URL and ``Host`` rewritten).
        default: Where requests no route matches go: a target name, or a transport (registered as the target
            ``"default"``). ``None``: they raise :class:`NoRouteError`.
        transport: The network transport base-URL targets share (default: a new
            :class:`~connectivity.transports.HTTPTransport`, created only if a base-URL target exists).
        rng: Random number generator for weighted splits (seed it in tests).

    Closing, and entering or leaving as a context manager, is passed on to every distinct transport given.
    The choice made is in ``response.extensions["connectivity.route"]``.

    Raises:
        ConfigError: An invalid route or target, or a route naming a target that does not exist.

    .. versionadded:: 0.1
    """

    __slots__ = ("_default", "_exits", "_random", "_table", "_targets", "_transports")

    def __init__(
        self,
        routes: Iterable[Route | Mapping[str, Any]] | RouteTable,
        *,
        targets: Mapping[str, Inner | str | httpx.URL] | None = None,
        default: str | Inner | None = None,
        transport: Inner | None = None,
        rng: _random.Random | None = None,
    ) -> None:
        if targets is None:
            targets = {}
        if not isinstance(targets, Mapping):
            raise ConfigError(
                "RoutingTransport.targets", targets, "must be a mapping name -> transport or base URL"
            )
        if transport is not None and not isinstance(transport, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            raise ConfigError("RoutingTransport.transport", transport, "must be an httpx transport")
        built: dict[str, _Target] = {}
        network = transport
        for name, value in targets.items():
            where = f"RoutingTransport.targets[{name!r}]"
            if not isinstance(name, str) or not name:
                raise ConfigError("RoutingTransport.targets", name, "target names must be non-empty strings")
            if isinstance(value, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
                built[name] = _Target(name, value)
                continue
            base = parse_base_url(where, value)
            if network is None:
                from connectivity.transports.http import HTTPTransport

                network = HTTPTransport()
            built[name] = _Target(name, network, base)
        if isinstance(default, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            if DEFAULT_TARGET in built:
                raise ConfigError("RoutingTransport.default", default, "a target is already named 'default'")
            built[DEFAULT_TARGET] = _Target(DEFAULT_TARGET, default)
            default = DEFAULT_TARGET
        elif default is not None and default not in built:
            raise ConfigError(
                "RoutingTransport.default", default, f"unknown target; known targets: {sorted(built)}"
            )
        if not built:
            raise ConfigError("RoutingTransport.targets", targets, "needs at least one target (or a default)")
        self._targets = built
        self._default = default
        self._table = self._build(routes)
        self._random = (rng if rng is not None else _random.Random()).random
        transports: list[Inner] = []
        for target in built.values():
            if all(target.transport is not seen for seen in transports):
                transports.append(target.transport)
        self._transports = tuple(transports)
        self._exits: ExitStack | AsyncExitStack | None = None

    def _build(self, routes: Iterable[Route | Mapping[str, Any]] | RouteTable) -> RouteTable:
        if isinstance(routes, RouteTable):
            routes = routes.routes
        return RouteTable(routes, targets=self._targets.keys())

    @property
    def table(self) -> RouteTable:
        """The route table in force."""
        return self._table

    @property
    def targets(self) -> tuple[str, ...]:
        """The target names."""
        return tuple(self._targets)

    def update(self, routes: Iterable[Route | Mapping[str, Any]] | RouteTable) -> RouteTable:
        """Replace the route table: validated in full first, then swapped in at once.

        Returns:
            The new table.

        Raises:
            ConfigError: The new routes are invalid or name an unknown target; the table in force is unchanged.
        """
        table = self._build(routes)
        self._table = table
        return table

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer."""
        return {
            "routes": [
                {
                    "name": route.name,
                    "targets": sorted(route.targets),
                    "split": {b.target: b.weight for b in route.split},
                }
                for route in self._table.routes
            ],
            "targets": {
                name: (target.host if target.base is not None else type(target.transport).__name__)
                for name, target in self._targets.items()
            },
            "default": self._default,
        }

    def _route(self, request: httpx.Request) -> tuple[_Target, RouteChoice, httpx.Request]:
        headers = request.headers
        path = request.url.path
        found = self._table.match(request.method, path, headers)
        if found is None:
            if self._default is None:
                raise NoRouteError(
                    f"no route matches {request.method} {path} and there is no default target",
                    request=request,
                    method=request.method,
                    path=path,
                )
            choice = RouteChoice(None, self._default, "default", NO_PARAMS)
        else:
            route, params = found
            name, reason = route.choose(headers, self._random)
            choice = RouteChoice(route.name, name, reason, params)
            if route.policy:
                extensions = request.extensions
                for key, value in route.policy:
                    if key not in extensions:
                        extensions[key] = value
        target = self._targets[choice.target]
        if target.base is not None:
            request = rebase(request, target.base, target.host)
        return target, choice, request

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target, choice, request = self._route(request)
        inner = target.sync
        if inner is None:
            raise target.unsupported("sync")
        response = inner.handle_request(request)
        response.extensions[ROUTE_EXTENSION] = choice
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target, choice, request = self._route(request)
        inner = target.async_
        if inner is None:
            raise target.unsupported("async")
        response = await inner.handle_async_request(request)
        response.extensions[ROUTE_EXTENSION] = choice
        return response

    # -- lifetime: passed on to every distinct transport ---------------------------------------------------

    def close(self) -> None:
        for transport in self._transports:
            if isinstance(transport, httpx.BaseTransport):
                transport.close()

    async def aclose(self) -> None:
        for transport in self._transports:
            if isinstance(transport, httpx.AsyncBaseTransport):
                await transport.aclose()

    def __enter__(self) -> RoutingTransport:
        with ExitStack() as stack:
            for transport in self._transports:
                if isinstance(transport, httpx.BaseTransport):
                    stack.enter_context(transport)
            self._exits = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        exits, self._exits = self._exits, None
        if isinstance(exits, ExitStack):
            exits.__exit__(exc_type, exc_value, traceback)
        else:
            self.close()

    async def __aenter__(self) -> RoutingTransport:
        async with AsyncExitStack() as stack:
            for transport in self._transports:
                if isinstance(transport, httpx.AsyncBaseTransport):
                    await stack.enter_async_context(transport)
            self._exits = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        exits, self._exits = self._exits, None
        if isinstance(exits, AsyncExitStack):
            await exits.__aexit__(exc_type, exc_value, traceback)
        else:
            await self.aclose()
