"""Authorization policies with Istio's ``AuthorizationPolicy`` semantics, as pure, frozen, precompiled objects.

Theory of operation: a :class:`Policy` has a name, an action (``ALLOW`` or ``DENY``) and rules. A :class:`Rule`
matches when one of its sources (Istio's ``from``) matches, one of its operations (``to``) matches and every
condition (``when``) holds; an empty list constrains nothing. In a :class:`Source` or an :class:`Operation` every
field that is set must match; a field matches when any of its values does, a ``not_*`` field when none does (so
``not_principals`` matches a request with no peer at all). A policy matches when any rule does: an ALLOW policy
without rules matches nothing, a policy with one empty rule matches everything.

:class:`Authorizer` decides as Istio does: a request a DENY policy matches is denied; otherwise it is allowed when
no ALLOW policy exists at all, and when some do, only if one of them matches (default deny).

Values are Istio string matches: exact, prefix ``"abc*"``, suffix ``"*abc"`` or presence ``"*"``. Peer
principals are SPIFFE ids, written ``spiffe://td/ns/x/sa/y`` or as Istio writes them (``td/ns/x/sa/y``);
``"td/ns/x/*"`` is a prefix and a bare trust domain (``"td"``) matches every id in it. Paths are matched on the
decoded path after normalisation (dot segments resolved, repeated slashes merged, as Envoy's ``normalize_path``
and ``merge_slashes``), so ``/public/../admin`` is ``/admin`` to a policy; path templates ``{*}`` (one segment)
and ``{**}`` (the rest, last only) are supported. Methods are compared upper-cased.

Everything is validated (a :class:`~connectivity.errors.ConfigError` naming the field) and compiled when a policy
is built; :meth:`Authorizer.decide` only runs the compiled checks against :class:`RequestFacts`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from operator import attrgetter
from typing import Any, Literal

from connectivity.errors import ConfigError
from connectivity.security._authz_match import _Match, _methods, _patterns, _strings, normalize_path
from connectivity.security.apikeys import ANONYMOUS_KEY
from connectivity.security.identity import CLAIMS_KEY, PEER_KEY, PRINCIPAL_KEY, Peer, Principal
from connectivity.security.spiffe import SCHEME

__all__ = [
    "ALLOW",
    "DENY",
    "Action",
    "Authorizer",
    "Condition",
    "Decision",
    "Operation",
    "Policy",
    "RequestFacts",
    "Rule",
    "Source",
    "normalize_path",
]

Action = Literal["ALLOW", "DENY"]
ALLOW: Action = "ALLOW"
DENY: Action = "DENY"

_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_CONDITION_KEYS = (
    "source.principal",
    "request.auth.principal",
    "request.auth.claims[<name>]",
    "request.auth.scopes",
    "request.auth.groups",
)


# -- request facts ---------------------------------------------------------------------------------------------
class RequestFacts:
    """What a decision is about: the request and who sent it, as the inbound middleware verified it.

    Args:
        method: The HTTP method (compared upper-cased).
        path: The decoded request path, without query (normalised here).
        peer: The verified peer workload (mTLS).
        principal: The verified request principal (JWT or API key).
        claims: The JWT's verified claims (default: the JWT principal's).
        anonymous: The principal is an anonymous consumer: it counts as unauthenticated.

    .. versionadded:: 0.1
    """

    __slots__ = ("claims", "groups", "methods", "paths", "peer_names", "principal", "request_principals", "scopes")

    def __init__(
        self,
        *,
        method: str = "GET",
        path: str = "/",
        peer: Peer | None = None,
        principal: Principal | None = None,
        claims: Mapping[str, Any] | None = None,
        anonymous: bool = False,
    ) -> None:
        # One-element tuples, so that every check is "does any value match".
        self.methods = (method.upper(),)
        self.paths = (normalize_path(path),)
        spiffe_id = peer.spiffe_id if peer is not None else None
        self.peer_names: tuple[str, ...] = () if spiffe_id is None else (str(spiffe_id)[len(SCHEME) :],)
        self.principal = principal
        if claims is None:
            claims = principal.claims if principal is not None and principal.method == "jwt" else {}
        self.claims = claims
        self.request_principals: tuple[str, ...] = ()
        if principal is not None and not anonymous:
            issuer = claims.get("iss") if principal.method == "jwt" else None
            # Istio names a JWT's principal "<iss>/<sub>"; the bare id matches too (and is all an API key has).
            self.request_principals = (principal.id, f"{issuer}/{principal.id}") if issuer else (principal.id,)
        self.groups = principal.groups if principal is not None else frozenset()
        self.scopes = principal.scopes if principal is not None else frozenset()

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> RequestFacts:
        """The facts of an ASGI request, from what the inbound middleware left in its scope."""
        method, path = scope.get("method"), scope.get("path")
        peer, principal, claims = scope.get(PEER_KEY), scope.get(PRINCIPAL_KEY), scope.get(CLAIMS_KEY)
        principal = principal if isinstance(principal, Principal) else None
        if not isinstance(claims, Mapping) or (principal is not None and principal.method != "jwt"):
            claims = None
        return cls(
            method=method if isinstance(method, str) else "GET",  # a websocket handshake is a GET
            path=path if isinstance(path, str) else "",
            peer=peer if isinstance(peer, Peer) else None,
            principal=principal,
            claims=claims,
            anonymous=scope.get(ANONYMOUS_KEY) is True,
        )

    def __repr__(self) -> str:
        return (
            f"RequestFacts(method={self.methods[0]!r}, path={self.paths[0]!r}, peer={self.peer_names!r}, "
            f"principals={self.request_principals!r}, groups={sorted(self.groups)!r})"
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: ``allowed``, the ``policy`` that decided (``None`` for the defaults) and why.

    .. versionadded:: 0.1
    """

    allowed: bool
    policy: str | None
    reason: str


# -- the policy model -----------------------------------------------------------------------------------------
Check = Callable[[RequestFacts], bool]
_Compile = Callable[[str, tuple[str, ...]], _Match]


def _repr(obj: Any) -> str:
    shown = (f"{f.name}={getattr(obj, f.name)!r}" for f in fields(obj) if f.repr and getattr(obj, f.name) != ())
    return f"{type(obj).__name__}({', '.join(shown)})"


def _check(values: Callable[[RequestFacts], Iterable[str]], match: _Match, negate: bool) -> Check:
    return lambda facts: match.any(values(facts)) is not negate


def _compile(obj: Any, spec: Mapping[str, tuple[_Compile, str]]) -> None:
    """Validate the string fields of ``obj`` and compile one check per field that is set."""
    owner = type(obj).__name__
    checks: list[Check] = []
    for name, (compile_, attribute) in spec.items():
        for field_name in (name, "not_" + name):
            values = _strings(f"{owner}.{field_name}", getattr(obj, field_name))
            object.__setattr__(obj, field_name, values)
            if values:
                match = compile_(f"{owner}.{field_name}", values)
                checks.append(_check(attrgetter(attribute), match, field_name != name))
    object.__setattr__(obj, "checks", tuple(checks))


class _Matcher:
    __slots__ = ()
    checks: tuple[Check, ...]

    def matches(self, facts: RequestFacts) -> bool:
        """Whether every field that is set matches the request."""
        for check in self.checks:  # noqa: SIM110
            if not check(facts):
                return False
        return True


@dataclass(frozen=True, slots=True, repr=False)
class Source(_Matcher):
    """Who may (or may not) send the request; Istio's ``from.source``.

    Args:
        principals: Peer SPIFFE ids (mTLS), e.g. ``"spiffe://td/ns/prod/sa/*"`` or ``"td"`` (the trust domain).
        request_principals: A JWT's ``"<iss>/<sub>"`` or its subject, an API-key consumer's id; ``"*"`` is any
            authenticated caller (``not_request_principals=["*"]``: unauthenticated callers).
        groups: Groups of the principal (API-key consumer groups, or a JWT's groups claim).
        scopes: Scopes granted to the principal.
        not_principals, not_request_principals, not_groups, not_scopes: Match when none of the values does.

    .. versionadded:: 0.1
    """

    principals: Collection[str] = ()
    not_principals: Collection[str] = ()
    request_principals: Collection[str] = ()
    not_request_principals: Collection[str] = ()
    groups: Collection[str] = ()
    not_groups: Collection[str] = ()
    scopes: Collection[str] = ()
    not_scopes: Collection[str] = ()
    checks: tuple[Check, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        _compile(self, _SOURCE_SPEC)

    __repr__ = _repr


@dataclass(frozen=True, slots=True, repr=False)
class Operation(_Matcher):
    """What the request does; Istio's ``to.operation``.

    Args:
        methods: HTTP methods (``GET``, ...).
        paths: Exact, prefix ``"/api/*"`` (not matching ``"/api"`` itself), suffix ``"*.json"``, or a template
            such as ``"/orders/{*}/items"`` or ``"/files/{**}"``.
        not_methods, not_paths: Match when none of the values does.

    .. versionadded:: 0.1
    """

    methods: Collection[str] = ()
    not_methods: Collection[str] = ()
    paths: Collection[str] = ()
    not_paths: Collection[str] = ()
    checks: tuple[Check, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        _compile(self, _OPERATION_SPEC)

    __repr__ = _repr


_SOURCE_SPEC: dict[str, tuple[_Compile, str]] = {
    "principals": (partial(_patterns, kind="peer"), "peer_names"),
    "request_principals": (_patterns, "request_principals"),
    "groups": (_patterns, "groups"),
    "scopes": (_patterns, "scopes"),
}
_OPERATION_SPEC: dict[str, tuple[_Compile, str]] = {
    "methods": (_methods, "methods"),
    "paths": (partial(_patterns, kind="path"), "paths"),
}


def _claim(path: tuple[str, ...]) -> Callable[[RequestFacts], tuple[str, ...]]:
    def values(facts: RequestFacts) -> tuple[str, ...]:
        value: Any = facts.claims
        for name in path:
            value = value.get(name) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)):  # Istio: a list-of-strings claim matches by any element
            return tuple(item for item in value if isinstance(item, str))
        return ()

    return values


@dataclass(frozen=True, slots=True, repr=False)
class Condition(_Matcher):
    """An extra condition; Istio's ``when``: the value at ``key`` is one of ``values`` and none of ``not_values``.

    Args:
        key: ``"source.principal"`` (the peer's SPIFFE id), ``"request.auth.principal"``,
            ``"request.auth.claims[name]"`` (nested: ``[a][b]``; string or list-of-strings claims),
            ``"request.auth.scopes"`` or ``"request.auth.groups"`` (the last two are connectivity's).
        values: Patterns one of which must match (a missing value matches none).
        not_values: Patterns none of which may match (a missing value passes).

    .. versionadded:: 0.1
    """

    key: str
    values: Collection[str] = ()
    not_values: Collection[str] = ()
    checks: tuple[Check, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        key = self.key
        claim = _CLAIM_KEY.fullmatch(key) if isinstance(key, str) else None
        getter: Callable[[RequestFacts], Iterable[str]]
        compile_: _Compile = _patterns
        if key == "source.principal":
            getter, compile_ = attrgetter("peer_names"), partial(_patterns, kind="peer")
        elif key in ("request.auth.principal", "request.auth.scopes", "request.auth.groups"):
            getter = attrgetter("request_principals" if key.endswith("principal") else key.rpartition(".")[2])
        elif claim is not None:
            getter = _claim(tuple(claim.group(1)[1:-1].split("][")))
        else:
            raise ConfigError("Condition.key", key, f"must be one of {', '.join(_CONDITION_KEYS)}")
        checks: list[Check] = []
        for name in ("values", "not_values"):
            values = _strings(f"Condition.{name}", getattr(self, name))
            object.__setattr__(self, name, values)
            if values:
                checks.append(_check(getter, compile_(f"Condition.{name}", values), name == "not_values"))
        if not checks:
            raise ConfigError("Condition.values", self.values, "values or not_values must be given")
        object.__setattr__(self, "checks", tuple(checks))

    __repr__ = _repr


def _list(field: str, value: object) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(field, value, "must be a list")
    return list(value)


def _items(field: str, values: object, kind: type) -> tuple[Any, ...]:
    result = tuple(_list(field, values))
    for index, value in enumerate(result):
        if not isinstance(value, kind):
            raise ConfigError(f"{field}[{index}]", value, f"must be a {kind.__name__}")
    return result


@dataclass(frozen=True, slots=True, repr=False)
class Rule:
    """One way to match: one of the sources, one of the operations and every condition (empty: no constraint).

    .. versionadded:: 0.1
    """

    sources: Collection[Source] = ()
    operations: Collection[Operation] = ()
    conditions: Collection[Condition] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", _items("Rule.sources", self.sources, Source))
        object.__setattr__(self, "operations", _items("Rule.operations", self.operations, Operation))
        object.__setattr__(self, "conditions", _items("Rule.conditions", self.conditions, Condition))

    __repr__ = _repr

    def matches(self, facts: RequestFacts) -> bool:
        """Whether the request matches this rule."""
        for parts in (self.sources, self.operations):
            if parts:
                for part in parts:
                    if part.matches(facts):
                        break
                else:
                    return False
        return all(condition.matches(facts) for condition in self.conditions)


@dataclass(frozen=True, slots=True, repr=False)
class Policy:
    """A named ALLOW or DENY policy: it matches a request when any of its rules does.

    Args:
        name: Names the policy in decisions, logs and (if the middleware is told to) 403 bodies.
        action: ``"ALLOW"`` (default, as in Istio) or ``"DENY"``.
        rules: The rules. None at all: the policy matches nothing (an ALLOW policy without rules therefore
            denies everything, Istio's "allow-nothing"); ``[Rule()]`` matches everything.

    Raises:
        ConfigError: A field is invalid (the field is named, e.g. ``"Source.principals[0]"``).

    .. versionadded:: 0.1
    """

    name: str
    action: Action = ALLOW
    rules: Collection[Rule] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[^\x00-\x1f\x7f]{1,253}", self.name):
            raise ConfigError("Policy.name", self.name, "must be 1-253 characters, no control characters")
        action = self.action.upper() if isinstance(self.action, str) else self.action
        if action not in (ALLOW, DENY):
            raise ConfigError("Policy.action", self.action, "must be ALLOW or DENY (AUDIT and CUSTOM unsupported)")
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "rules", _items("Policy.rules", self.rules, Rule))

    __repr__ = _repr

    def matches(self, facts: RequestFacts) -> bool:
        """Whether any rule matches the request."""
        for rule in self.rules:  # noqa: SIM110
            if rule.matches(facts):
                return True
        return False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """A policy from configuration: ``{"name", "action", "rules"}`` or a whole Istio ``AuthorizationPolicy``
        manifest (``metadata.name`` and ``spec``), rules written as in Istio (``from``/``source``,
        ``to``/``operation``, ``when``; camelCase or snake_case field names).

        A field this model does not support (``namespaces``, ``ipBlocks``, ``hosts``, ``ports``, ``selector``,
        ...) is refused, never ignored: ignoring it would widen an ALLOW policy.

        Raises:
            ConfigError: The data is malformed; the field is named, e.g. ``"Policy[orders].rules[0].from[0]"``.
        """
        from connectivity.security.authz_config import policy_from_dict

        return policy_from_dict(cls, data)


# -- deciding -------------------------------------------------------------------------------------------------
class Authorizer:
    """Decides requests against a set of policies: DENY first, then ALLOW, default deny once ALLOW policies exist.

    Args:
        policies: :class:`Policy` objects, or mappings for :meth:`Policy.from_dict`. Names must be unique.

    Raises:
        ConfigError: A policy is invalid, or two have the same name.

    Immutable; one authorizer is safely shared by every request, thread and task.

    .. versionadded:: 0.1
    """

    __slots__ = ("_allow", "_denied", "_deny", "_open", "policies")

    def __init__(self, policies: Iterable[Policy | Mapping[str, Any]]) -> None:
        items = _list("Authorizer.policies", policies)
        built = tuple(item if isinstance(item, Policy) else Policy.from_dict(item) for item in items)
        names: set[str] = set()
        for policy in built:
            if policy.name in names:
                raise ConfigError("Authorizer.policies", policy.name, "two policies have this name")
            names.add(policy.name)
        self.policies: tuple[Policy, ...] = built
        self._deny = tuple(
            (policy, Decision(False, policy.name, f"denied by DENY policy {policy.name!r}"))
            for policy in built
            if policy.action == DENY
        )
        self._allow = tuple(
            (policy, Decision(True, policy.name, f"allowed by ALLOW policy {policy.name!r}"))
            for policy in built
            if policy.action == ALLOW
        )
        self._open = Decision(True, None, "no ALLOW policy is configured")
        self._denied = Decision(False, None, "no ALLOW policy matched")

    def __repr__(self) -> str:
        return f"Authorizer(policies={[policy.name for policy in self.policies]!r})"

    def decide(self, facts: RequestFacts) -> Decision:
        """The decision for a request."""
        for policy, decision in self._deny:
            if policy.matches(facts):
                return decision
        if not self._allow:
            return self._open
        for policy, decision in self._allow:
            if policy.matches(facts):
                return decision
        return self._denied
