"""Per-consumer rate limits for inbound requests as pure ASGI middleware, with the IETF RateLimit fields.

Each HTTP request is given a *key* (who is calling: the client address by default, an API key, a JWT subject, a
SPIFFE id, ...), and a *limiter* (by route, by the consumer's plan, or the default one) decides. A request over
its limit is answered at once with ``429 Too Many Requests``, ``Retry-After``, the ``RateLimit-Policy`` and
``RateLimit`` fields of draft-ietf-httpapi-ratelimit-headers (see :mod:`._ratelimit_headers`) and an
``application/problem+json`` body, before the app sees it. With ``headers=True`` (off by default, as in Envoy's
local rate limit) allowed responses carry ``RateLimit-Policy`` and ``RateLimit`` too, so well-behaved clients can
pace themselves (:class:`~connectivity.transports.ratelimit.RateLimitTransport` does).

**Client addresses** are resolved through trusted proxies only (see :mod:`.ratelimit_keys`): a spoofed
``X-Forwarded-For`` from an untrusted peer is never read.

**Never a 500.** A key function that raises (or returns something that is not a non-empty string) is logged and
the request is limited by its client address instead; a limits-by, plan or exemption function that raises is
logged and ignored; a limiter that raises (a shared store that is down) is logged and the request is let
through: rate limiting fails open, the app's own errors are its own.

**Key functions** are factories (:func:`client_ip`, :func:`api_key`, :func:`jwt_subject`, :func:`spiffe_id`,
:func:`header`, :func:`route`, :func:`combine`, in :mod:`.ratelimit_keys`, re-exported here) returning
``scope -> str``; secrets never become keys. :func:`rate_limit` is the
same decision as a FastAPI dependency, for limits on individual endpoints.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import ASGIApp, Message, Receive, Scope, Send, require_app, route_of
from connectivity.middleware._ratelimit_headers import (
    policy_field,
    problem_body,
    ratelimit_field,
    reset_seconds,
    retry_after_field,
)
from connectivity.middleware.concurrency import DEFAULT_EXCLUDED_PATHS
from connectivity.middleware.ratelimit_keys import (
    CLIENT_IP_SCOPE_KEY,
    KeyFunc,
    _fallback,
    _forwarded_header,
    _networks,
    _resolve,
    api_key,
    client_ip,
    combine,
    header,
    jwt_subject,
    route,
    spiffe_id,
)
from connectivity.telemetry import events, semconv

__all__ = [
    "CLIENT_IP_SCOPE_KEY",
    "DECISION_SCOPE_KEY",
    "DEFAULT_EXEMPT_PATHS",
    "KeyFunc",
    "RateLimitMiddleware",
    "api_key",
    "client_ip",
    "combine",
    "header",
    "jwt_subject",
    "rate_limit",
    "route",
    "spiffe_id",
]

DEFAULT_EXEMPT_PATHS: tuple[str, ...] = DEFAULT_EXCLUDED_PATHS
"""Paths that are never limited unless told otherwise: probes and scrapes."""
DECISION_SCOPE_KEY = "connectivity.rate_limit"
"""Scope key where the middleware leaves the limiter's decision for the request (for the app to read)."""

_log = logging.getLogger("connectivity.ratelimit")
_MAX_CACHED_POLICIES = 256
_MAX_CACHED_CALLERS = 4096
_FIELD_NAMES = frozenset({b"ratelimit", b"ratelimit-policy"})
_T = TypeVar("_T")


# -- the middleware -------------------------------------------------------------------------------------------
def _require_limiter(field: str, limiter: object) -> Any:
    if not callable(getattr(limiter, "try_acquire", None)):
        raise ConfigError(field, limiter, "must be a connectivity.RateLimiter (or have its interface)")
    return limiter


def _policy(limiter: Any) -> str | None:
    limits = getattr(limiter, "limits", None)
    try:
        return policy_field((limit.name, limit.rate, limit.per) for limit in limits) if limits else None
    except (AttributeError, TypeError, ValueError):  # a limiter of another shape: no policy to advertise
        return None


class _PathTable:
    """Limiters by path: exact paths and route templates, or prefixes ending with ``/`` (longest wins)."""

    __slots__ = ("exact", "prefixes", "templates")

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.templates: dict[str, Any] = {}
        prefixes: list[tuple[str, Any]] = []
        for path, limiter in table.items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError("RateLimitMiddleware.limits_by", path, "keys must be paths starting with '/'")
            _require_limiter(f"RateLimitMiddleware.limits_by[{path!r}]", limiter)
            if path.endswith("/") and len(path) > 1:
                prefixes.append((path, limiter))
            elif "{" in path:
                self.templates[path] = limiter
            else:
                self.exact[path] = limiter
        self.prefixes = sorted(prefixes, key=lambda item: len(item[0]), reverse=True)

    def __call__(self, scope: Scope) -> Any:
        path = str(scope.get("path", ""))
        if path in self.exact:
            return self.exact[path]
        if self.templates:
            template = route_of(scope, path, str(scope.get("root_path", "")))
            if template in self.templates:
                return self.templates[template]
        for prefix, limiter in self.prefixes:
            if path.startswith(prefix):
                return limiter
        return None


class RateLimitMiddleware:
    """Limit inbound HTTP requests per caller: 429 with ``Retry-After``, IETF RateLimit fields and a problem body.

    Args:
        app: The ASGI application to wrap.
        limiter: The default limiter (a :class:`connectivity.RateLimiter`, or a shared one with its interface;
            one with ``remote = True`` is awaited through ``atry_acquire``).
        key: Who is calling (default :func:`client_ip`, through ``trusted_proxies``).
        limits_by: Per-route limiters: a mapping of paths (exact, route templates such as ``"/items/{id}"``, or
            prefixes ending with ``/``) to limiters, or a function ``scope -> limiter | None``.
        plans: Per-consumer-group limiters by plan name, e.g. ``{"free": RateLimiter("10/minute"), "pro":
            RateLimiter("1000/minute")}``; requires ``plan``.
        plan: ``scope -> plan name | None``: the caller's plan (an unknown or missing plan gets ``limiter``).
        exempt: Requests never limited: paths (exact, or prefixes ending with ``/``) or ``scope -> bool``.
        headers: Send ``RateLimit-Policy`` and ``RateLimit`` on allowed responses too (default off; a 429 always
            has them).
        trusted_proxies: Addresses or CIDR blocks of the proxies whose forwarding header is believed.
        forwarded_header: The forwarding header those proxies write: ``"x-forwarded-for"`` or ``"forwarded"``.

    Raises:
        ConfigError: An argument is invalid (a limiter without ``try_acquire``, a bad path or proxy, ``plans``
            without ``plan``).

    The first limiter that applies decides: ``limits_by``, then the plan's, then ``limiter``. Put this middleware
    inside authentication when keys come from it (:func:`jwt_subject`), outside everything else. The decision is
    left in ``scope["connectivity.rate_limit"]`` and the client address in ``scope["connectivity.client_ip"]``.
    Limiters are registered with the status app under ``"limiters"``.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_by",
        "_default_key",
        "_exact",
        "_exempt",
        "_forwarded",
        "_networks",
        "_peers",
        "_plan",
        "_plans",
        "_policies",
        "_prefixes",
        "_remote",
        "app",
        "headers",
        "key",
        "key_failures",
        "limiter",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: Any,
        key: KeyFunc | None = None,
        limits_by: Mapping[str, Any] | Callable[[Scope], Any] | None = None,
        plans: Mapping[str, Any] | None = None,
        plan: Callable[[Scope], str | None] | None = None,
        exempt: Iterable[str] | Callable[[Scope], bool] = DEFAULT_EXEMPT_PATHS,
        headers: bool = False,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
    ) -> None:
        self.app = require_app("RateLimitMiddleware", app)
        self.limiter = _require_limiter("RateLimitMiddleware.limiter", limiter)
        self._networks = _networks("RateLimitMiddleware.trusted_proxies", trusted_proxies)
        self._forwarded = _forwarded_header("RateLimitMiddleware.forwarded_header", forwarded_header)
        if key is not None and not callable(key):
            raise ConfigError("RateLimitMiddleware.key", key, "must be a key function (scope -> str)")
        self.key: KeyFunc = key if key is not None else client_ip()
        self._default_key = self.key if key is None else None
        if limits_by is None or callable(limits_by):
            self._by: Callable[[Scope], Any] | None = limits_by
        elif isinstance(limits_by, Mapping):
            self._by = _PathTable(limits_by)
        else:
            raise ConfigError(
                "RateLimitMiddleware.limits_by", limits_by, "must be a mapping of paths to limiters or a function"
            )
        if (plans is None) != (plan is None):
            raise ConfigError(
                "RateLimitMiddleware.plans", plans, "plans and plan (scope -> plan name) go together"
            )
        if plan is not None and not callable(plan):
            raise ConfigError("RateLimitMiddleware.plan", plan, "must be a function scope -> plan name")
        if plans is not None and not isinstance(plans, Mapping):
            raise ConfigError("RateLimitMiddleware.plans", plans, "must be a mapping of plan names to limiters")
        self._plans = {
            str(name): _require_limiter(f"RateLimitMiddleware.plans[{name!r}]", value)
            for name, value in (plans or {}).items()
        }
        self._plan = plan
        if callable(exempt):
            self._exempt: Callable[[Scope], bool] | None = exempt
            self._exact: frozenset[str] = frozenset()
            self._prefixes: tuple[str, ...] = ()
        else:
            paths = _paths(exempt)
            self._exempt = None
            self._exact = frozenset(path for path in paths if not path.endswith("/"))
            self._prefixes = tuple(path for path in paths if path.endswith("/"))
        if not isinstance(headers, bool):
            raise ConfigError("RateLimitMiddleware.headers", headers, "must be True or False")
        self.headers = headers
        self.key_failures = 0
        self._policies: dict[int, tuple[Any, bytes | None]] = {}
        # Without trusted proxies the client address depends on the peer address alone, and the default key on
        # the client address alone: both are remembered per peer, sparing two address parses per request (they
        # were the middleware's largest own cost). Bounded: a flood of new peers only empties the table.
        self._peers: dict[str, tuple[str | None, str]] = {}
        self._remote = bool(getattr(self.limiter, "remote", False))
        limiters = [self.limiter, *self._plans.values()]
        if isinstance(self._by, _PathTable):
            limiters += [*self._by.exact.values(), *self._by.templates.values()]
            limiters += [limiter for _, limiter in self._by.prefixes]
        _register_all(limiters)

    # -- choosing ----------------------------------------------------------------------------------------------
    def _is_exempt(self, scope: Scope) -> bool:
        if self._exempt is not None:
            try:
                return bool(self._exempt(scope))
            except Exception:
                _log.warning("rate-limit exemption function failed: request not exempt", exc_info=True)
                return False
        path = str(scope.get("path", ""))
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def _choose(self, scope: Scope) -> Any:
        if self._by is not None:
            try:
                chosen = self._by(scope)
            except Exception:
                _log.warning(
                    "rate-limit limits_by function failed: using the plan or default limiter", exc_info=True
                )
                chosen = None
            if chosen is not None:
                return chosen
        if self._plan is not None:
            try:
                name = self._plan(scope)
            except Exception:
                _log.warning("rate-limit plan function failed: using the default limiter", exc_info=True)
                name = None
            chosen = self._plans.get(name) if isinstance(name, str) else None
            if chosen is not None:
                return chosen
        return self.limiter

    def _address_of(self, scope: Scope) -> str | None:
        return _resolve(scope, self._networks, self._forwarded)

    def _key_of(self, scope: Scope) -> str:
        try:
            key = self.key(scope)
            if not isinstance(key, str) or not key:
                raise TypeError(f"a key function must return a non-empty string, not {type(key).__name__}")
        except Exception as exc:
            self.key_failures += 1
            failures = self.key_failures
            if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th, ...: an attacker cannot flood the log
                _log.warning(
                    "rate-limit key function %s failed (%s, %d time(s) so far): limiting by client address",
                    getattr(self.key, "__qualname__", repr(self.key)),
                    type(exc).__name__,
                    failures,
                )
            key = _fallback(scope)
        return key

    def _policy_of(self, limiter: Any) -> bytes | None:
        cached = self._policies.get(id(limiter))
        if cached is not None and cached[0] is limiter:  # holding the limiter keeps its id from being reused
            return cached[1]
        text = _policy(limiter)
        policy = None if text is None else text.encode("ascii")
        if len(self._policies) >= _MAX_CACHED_POLICIES:  # a limits_by function that makes a limiter per call
            self._policies.clear()
        self._policies[id(limiter)] = (limiter, policy)
        return policy

    # -- answering ---------------------------------------------------------------------------------------------
    async def _refuse(self, send: Send, decision: Any, policy: bytes | None) -> None:
        name = str(decision.limit.name)
        retry_after = retry_after_field(decision.retry_after)
        events.emit(
            events.RATE_LIMIT_REFUSED,
            {semconv.CONNECTIVITY_REASON: name, semconv.CONNECTIVITY_DELAY: float(decision.retry_after)},
        )
        body = problem_body(name, int(retry_after))
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"retry-after", retry_after.encode("ascii")),
            (b"ratelimit", ratelimit_field(name, 0, decision.retry_after).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        if policy is not None:
            headers.append((b"ratelimit-policy", policy))
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._exempt is None:  # the common case, inlined: exempt paths only
            path = scope.get("path")
            prefixes = self._prefixes
            if path in self._exact or (prefixes and isinstance(path, str) and path.startswith(prefixes)):
                await self.app(scope, receive, send)
                return
        elif self._is_exempt(scope):
            await self.app(scope, receive, send)
            return
        # The default key with no trusted proxies is a function of the peer address alone: one lookup per request.
        by_peer = self.key is self._default_key and not self._networks
        client = scope.get("client")
        peer = client[0] if by_peer and client else None
        known = self._peers.get(peer) if isinstance(peer, str) else None
        if known is None:
            address = scope[CLIENT_IP_SCOPE_KEY] = self._address_of(scope)
            key = self._key_of(scope)
            if isinstance(peer, str):
                _remember(self._peers, peer, (address, key))
        else:
            scope[CLIENT_IP_SCOPE_KEY], key = known
        if self._by is None and self._plan is None:
            limiter, remote = self.limiter, self._remote
        else:
            limiter = self._choose(scope)
            remote = self._remote if limiter is self.limiter else bool(getattr(limiter, "remote", False))
        try:
            decision = await limiter.atry_acquire(key, 1.0) if remote else limiter.try_acquire(key, 1.0)
        except Exception:
            _log.warning(
                "rate limiter %r failed: request let through", getattr(limiter, "name", limiter), exc_info=True
            )
            await self.app(scope, receive, send)
            return
        scope[DECISION_SCOPE_KEY] = decision
        if not decision.allowed:
            await self._refuse(send, decision, self._policy_of(limiter))
            return
        if self.headers:
            send = _with_fields(
                send,
                self._policy_of(limiter),
                ratelimit_field(decision.limit.name, decision.remaining, reset_seconds(decision)),
            )
        await self.app(scope, receive, send)


def _with_fields(send: Send, policy: bytes | None, ratelimit: str) -> Send:
    added = [(b"ratelimit", ratelimit.encode("ascii"))]
    if policy is not None:
        added.append((b"ratelimit-policy", policy))

    async def send_with_fields(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or ())
            for name, _ in headers:
                if name.lower() in _FIELD_NAMES:  # the app's own fields win
                    break
            else:
                message = {**message, "headers": headers + added}
        await send(message)

    return send_with_fields


def _remember(cache: dict[str, _T], key: str, value: _T) -> _T:
    if len(cache) >= _MAX_CACHED_CALLERS:
        cache.clear()
    cache[key] = value
    return value


def _register_all(limiters: Iterable[Any]) -> None:
    from connectivity.admin.registry import register  # lazy: the registry imports the transports package

    seen: set[int] = set()
    for limiter in limiters:
        name = getattr(limiter, "name", None)
        if id(limiter) in seen or not isinstance(name, str) or not name.strip():
            continue
        if callable(getattr(limiter, "status", None)):
            seen.add(id(limiter))
            register("limiters", name, limiter)


def _paths(paths: object) -> tuple[str, ...]:
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise ConfigError("RateLimitMiddleware.exempt", paths, "must be a collection of paths or a function")
    result = tuple(paths)
    for path in result:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError("RateLimitMiddleware.exempt", path, "must be a path starting with '/'")
    return result


# -- FastAPI ----------------------------------------------------------------------------------------------------
def rate_limit(
    limiter: Any,
    key: KeyFunc | None = None,
    *,
    headers: bool = False,
    trusted_proxies: Iterable[str] = (),
) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that limits one endpoint: ``Depends(rate_limit(RateLimiter("5/minute")))``.

    Args:
        limiter: The limiter for the endpoint(s) depending on it.
        key: Who is calling (default: the client address, as :class:`RateLimitMiddleware` resolved it if it runs,
            else through ``trusted_proxies``).
        headers: Add ``RateLimit-Policy`` and ``RateLimit`` to allowed responses (default off).
        trusted_proxies: Proxies whose forwarding header is believed when no middleware resolved the address.

    Returns:
        An async dependency (needs ``starlette``, imported when this is called) that raises
        ``starlette.exceptions.HTTPException(429)`` with ``Retry-After``, ``RateLimit-Policy`` and ``RateLimit``
        headers when the limiter refuses. A key function that raises falls back to the client address.

    .. versionadded:: 0.1
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    limiter = _require_limiter("rate_limit.limiter", limiter)
    networks = _networks("rate_limit.trusted_proxies", trusted_proxies)
    if key is not None and not callable(key):
        raise ConfigError("rate_limit.key", key, "must be a key function (scope -> str)")
    key_of = key if key is not None else client_ip()
    policy = _policy(limiter)
    _register_all([limiter])

    async def dependency(request: Request, response: Response) -> None:
        scope = request.scope
        if not isinstance(scope.get(CLIENT_IP_SCOPE_KEY), str):
            scope[CLIENT_IP_SCOPE_KEY] = _resolve(scope, networks, "x-forwarded-for")
        try:
            caller = key_of(scope)
            if not isinstance(caller, str) or not caller:
                raise TypeError("a key function must return a non-empty string")
        except Exception as exc:
            _log.warning("rate-limit key function failed (%s): limiting by client address", type(exc).__name__)
            caller = _fallback(scope)
        if getattr(limiter, "remote", False):
            decision = await limiter.atry_acquire(caller, 1.0)
        else:
            decision = limiter.try_acquire(caller, 1.0)
        fields = {} if policy is None else {"RateLimit-Policy": policy}
        name = str(decision.limit.name)
        if not decision.allowed:
            retry_after = retry_after_field(decision.retry_after)
            events.emit(
                events.RATE_LIMIT_REFUSED,
                {semconv.CONNECTIVITY_REASON: name, semconv.CONNECTIVITY_DELAY: float(decision.retry_after)},
            )
            fields |= {"Retry-After": retry_after, "RateLimit": ratelimit_field(name, 0, decision.retry_after)}
            raise HTTPException(
                429, detail=f"rate limit {name!r} exceeded: retry in {retry_after} s", headers=fields
            )
        if headers:
            fields["RateLimit"] = ratelimit_field(name, decision.remaining, reset_seconds(decision))
            response.headers.update(fields)

    # FastAPI reads the parameters' types from the signature; with postponed annotations they would be strings
    # naming classes this module does not import at the top.
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter("response", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Response),
        ],
        return_annotation=None,
    )
    return dependency
