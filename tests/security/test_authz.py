"""The authorization policy model, decided in-process: Istio's ALLOW/DENY semantics, matching and validation.

The table at the top is the contract: each row is a set of policies, a request (who and what) and the decision
Istio would take. The rest pins the matching rules (principals, paths, claims), configuration loading from
dicts and Istio manifests, and the errors a bad configuration gets.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectivity.errors import ConfigError, InvalidSpiffeIdError
from connectivity.security.apikeys import ANONYMOUS_KEY
from connectivity.security.authz import (
    ALLOW,
    DENY,
    Authorizer,
    Condition,
    Decision,
    Operation,
    Policy,
    RequestFacts,
    Rule,
    Source,
    normalize_path,
)
from connectivity.security.identity import CLAIMS_KEY, PEER_KEY, PRINCIPAL_KEY, Peer, Principal
from connectivity.security.spiffe import SpiffeId

ORDERS = "spiffe://cluster.local/ns/prod/sa/orders"
BILLING = "spiffe://cluster.local/ns/prod/sa/billing"
STAGING = "spiffe://cluster.local/ns/staging/sa/orders"
FOREIGN = "spiffe://partner.example/ns/prod/sa/orders"
ISSUER = "https://issuer.example"


def peer(spiffe_id: str | None) -> Peer:
    return Peer(SpiffeId.parse(spiffe_id) if spiffe_id else None)


def jwt(sub: str, *, scopes: tuple[str, ...] = (), groups: tuple[str, ...] = (), **claims: Any) -> Principal:
    claims = {"iss": ISSUER, "sub": sub, **claims}
    return Principal(sub, "jwt", scopes=frozenset(scopes), groups=frozenset(groups), claims=claims)


def consumer(name: str, *groups: str) -> Principal:
    return Principal(name, "api_key", groups=frozenset(groups))


def facts(method: str = "GET", path: str = "/", **kwargs: Any) -> RequestFacts:
    return RequestFacts(method=method, path=path, **kwargs)


def allow(name: str, *rules: Rule) -> Policy:
    return Policy(name, ALLOW, rules)


def deny(name: str, *rules: Rule) -> Policy:
    return Policy(name, DENY, rules)


def sources(**fields: Any) -> Rule:
    return Rule(sources=[Source(**fields)])


def operations(**fields: Any) -> Rule:
    return Rule(operations=[Operation(**fields)])


# -- the decision table ---------------------------------------------------------------------------------------
ALLOW_ORDERS = allow("orders-peer", sources(principals=[ORDERS]))
DENY_BILLING = deny("no-billing", sources(principals=[BILLING]))
DENY_ADMIN = deny("no-admin", operations(paths=["/admin", "/admin/*"]))

TABLE = [
    # (policies, request, allowed, deciding policy)
    pytest.param([], facts(), True, None, id="no policies: allowed"),
    pytest.param([ALLOW_ORDERS], facts(peer=peer(ORDERS)), True, "orders-peer", id="ALLOW matching"),
    pytest.param([ALLOW_ORDERS], facts(peer=peer(BILLING)), False, None, id="ALLOW not matching: default deny"),
    pytest.param([ALLOW_ORDERS], facts(), False, None, id="ALLOW on peers, no peer: denied"),
    pytest.param([DENY_BILLING], facts(peer=peer(BILLING)), False, "no-billing", id="DENY matching, no ALLOW"),
    pytest.param([DENY_BILLING], facts(peer=peer(ORDERS)), True, None, id="DENY not matching, no ALLOW"),
    pytest.param(
        [ALLOW_ORDERS, deny("no-orders-admin", sources(principals=[ORDERS]), operations(paths=["/admin/*"]))],
        facts(path="/admin/users", peer=peer(ORDERS)),
        False,
        "no-orders-admin",
        id="DENY matching overrides ALLOW matching",
    ),
    pytest.param(
        [ALLOW_ORDERS, DENY_BILLING],
        facts(peer=peer(ORDERS)),
        True,
        "orders-peer",
        id="DENY not matching, ALLOW matching",
    ),
    pytest.param(
        [allow("nothing")], facts(peer=peer(ORDERS)), False, None, id="ALLOW without rules allows nothing"
    ),
    pytest.param([allow("everything", Rule())], facts(), True, "everything", id="ALLOW with one empty rule"),
    pytest.param([deny("empty")], facts(), True, None, id="DENY without rules denies nothing"),
    # principal kinds: peer ids
    pytest.param(
        [allow("td", sources(principals=["spiffe://cluster.local/*"]))],
        facts(peer=peer(STAGING)),
        True,
        "td",
        id="trust domain wildcard matches its ids",
    ),
    pytest.param(
        [allow("td", sources(principals=["spiffe://cluster.local/*"]))],
        facts(peer=peer(FOREIGN)),
        False,
        None,
        id="trust domain wildcard: other trust domain",
    ),
    pytest.param(
        [allow("td", sources(principals=["cluster.local"]))],
        facts(peer=peer(BILLING)),
        True,
        "td",
        id="bare trust domain matches its ids",
    ),
    pytest.param(
        [allow("ns", sources(principals=["cluster.local/ns/prod/sa/*"]))],
        facts(peer=peer(ORDERS)),
        True,
        "ns",
        id="Istio-form prefix: in namespace",
    ),
    pytest.param(
        [allow("ns", sources(principals=["cluster.local/ns/prod/sa/*"]))],
        facts(peer=peer(STAGING)),
        False,
        None,
        id="Istio-form prefix: other namespace",
    ),
    pytest.param(
        [allow("any-peer", sources(principals=["*"]))], facts(peer=peer(ORDERS)), True, "any-peer", id="any peer"
    ),
    pytest.param(
        [allow("any-peer", sources(principals=["*"]))], facts(), False, None, id="any peer: plaintext denied"
    ),
    pytest.param(
        [deny("not-orders", sources(not_principals=[ORDERS]))],
        facts(),
        False,
        "not-orders",
        id="not_principals matches a request without peer",
    ),
    # principal kinds: JWT subject, scope, API-key group
    pytest.param(
        [allow("alice", sources(request_principals=["alice"]))],
        facts(principal=jwt("alice")),
        True,
        "alice",
        id="jwt subject",
    ),
    pytest.param(
        [allow("alice", sources(request_principals=[f"{ISSUER}/alice"]))],
        facts(principal=jwt("alice")),
        True,
        "alice",
        id="jwt iss/sub (Istio form)",
    ),
    pytest.param(
        [allow("alice", sources(request_principals=["https://other.example/alice"]))],
        facts(principal=jwt("alice")),
        False,
        None,
        id="jwt iss/sub: other issuer",
    ),
    pytest.param(
        [allow("readers", sources(scopes=["orders:read"]))],
        facts(principal=jwt("bob", scopes=("orders:read", "profile"))),
        True,
        "readers",
        id="scope granted",
    ),
    pytest.param(
        [allow("readers", sources(scopes=["orders:read"]))],
        facts(principal=jwt("bob", scopes=("profile",))),
        False,
        None,
        id="scope missing",
    ),
    pytest.param(
        [allow("ops", sources(groups=["ops"]))],
        facts(principal=consumer("cron", "ops", "batch")),
        True,
        "ops",
        id="api-key consumer group",
    ),
    pytest.param(
        [allow("ops", sources(groups=["ops"]))],
        facts(principal=consumer("intern", "dev")),
        False,
        None,
        id="api-key consumer: other group",
    ),
    # anonymous / any authenticated
    pytest.param(
        [allow("authenticated", sources(request_principals=["*"]))],
        facts(principal=consumer("cron")),
        True,
        "authenticated",
        id="any authenticated: api key",
    ),
    pytest.param(
        [allow("authenticated", sources(request_principals=["*"]))],
        facts(),
        False,
        None,
        id="any authenticated: none",
    ),
    pytest.param(
        [allow("authenticated", sources(request_principals=["*"]))],
        facts(principal=consumer("guest", "public"), anonymous=True),
        False,
        None,
        id="any authenticated: the anonymous consumer is not",
    ),
    pytest.param(
        [deny("anonymous", sources(not_request_principals=["*"]))],
        facts(),
        False,
        "anonymous",
        id="anonymous denied",
    ),
    pytest.param(
        [deny("anonymous", sources(not_request_principals=["*"]))],
        facts(principal=jwt("alice")),
        True,
        None,
        id="anonymous DENY: authenticated passes",
    ),
    pytest.param(
        [allow("public", sources(groups=["public"]))],
        facts(principal=consumer("guest", "public"), anonymous=True),
        True,
        "public",
        id="the anonymous consumer's groups still match",
    ),
    # methods
    pytest.param([allow("reads", operations(methods=["GET", "HEAD"]))], facts("GET"), True, "reads", id="method"),
    pytest.param([allow("reads", operations(methods=["GET"]))], facts("POST"), False, None, id="other method"),
    pytest.param([allow("reads", operations(methods=["get"]))], facts("gEt"), True, "reads", id="method case"),
    pytest.param(
        [deny("writes", operations(not_methods=["GET", "HEAD", "OPTIONS"]))],
        facts("DELETE"),
        False,
        "writes",
        id="not_methods",
    ),
    # paths
    pytest.param([DENY_ADMIN], facts(path="/admin"), False, "no-admin", id="path exact"),
    pytest.param([DENY_ADMIN], facts(path="/admin/users"), False, "no-admin", id="path prefix"),
    pytest.param([DENY_ADMIN], facts(path="/administrator"), True, None, id="prefix is per segment"),
    pytest.param([DENY_ADMIN], facts(path="/public/../admin/x"), False, "no-admin", id="dot segments resolved"),
    pytest.param([DENY_ADMIN], facts(path="//admin"), False, "no-admin", id="slashes merged"),
    pytest.param([DENY_ADMIN], facts(path="/./admin/./"), False, "no-admin", id="dot segments removed"),
    pytest.param(
        [allow("json", operations(paths=["*.json"]))], facts(path="/a/b.json"), True, "json", id="path suffix"
    ),
    pytest.param(
        [allow("items", operations(paths=["/orders/{*}/items"]))],
        facts(path="/orders/42/items"),
        True,
        "items",
        id="path template {*}",
    ),
    pytest.param(
        [allow("items", operations(paths=["/orders/{*}/items"]))],
        facts(path="/orders/42/43/items"),
        False,
        None,
        id="path template {*} is one segment",
    ),
    pytest.param(
        [allow("files", operations(paths=["/files/{**}"]))],
        facts(path="/files/a/b/c.txt"),
        True,
        "files",
        id="path template {**}",
    ),
    pytest.param(
        [deny("all-but-health", operations(not_paths=["/healthz"]))],
        facts(path="/healthz"),
        True,
        None,
        id="not_paths: excepted path",
    ),
    pytest.param(
        [deny("all-but-health", operations(not_paths=["/healthz"]))],
        facts(path="/orders"),
        False,
        "all-but-health",
        id="not_paths: any other path",
    ),
    # a rule needs a source AND an operation; a policy needs any rule
    pytest.param(
        [
            allow(
                "orders-get", Rule(sources=[Source(principals=[ORDERS])], operations=[Operation(methods=["GET"])])
            )
        ],
        facts("POST", peer=peer(ORDERS)),
        False,
        None,
        id="rule: source matches, operation does not",
    ),
    pytest.param(
        [allow("either", sources(principals=[ORDERS]), operations(methods=["GET"]))],
        facts("GET", peer=peer(BILLING)),
        True,
        "either",
        id="policy: any rule",
    ),
    pytest.param(
        [allow("both", sources(principals=[ORDERS], groups=["ops"]))],
        facts(peer=peer(ORDERS), principal=consumer("intern", "dev")),
        False,
        None,
        id="source: every field must match",
    ),
    pytest.param(
        [allow("one-of", Rule(sources=[Source(principals=[ORDERS]), Source(groups=["ops"])]))],
        facts(principal=consumer("cron", "ops")),
        True,
        "one-of",
        id="rule: any source",
    ),
]


@pytest.mark.parametrize(("policies", "request_facts", "allowed", "policy"), TABLE)
def test_decision_table(
    policies: list[Policy], request_facts: RequestFacts, allowed: bool, policy: str | None
) -> None:
    decision = Authorizer(policies).decide(request_facts)
    assert (decision.allowed, decision.policy) == (allowed, policy)


def test_reasons_name_the_policy_or_the_default() -> None:
    authorizer = Authorizer([ALLOW_ORDERS, DENY_BILLING])
    assert authorizer.decide(facts(peer=peer(BILLING))) == Decision(
        False, "no-billing", "denied by DENY policy 'no-billing'"
    )
    assert authorizer.decide(facts(peer=peer(ORDERS))) == Decision(
        True, "orders-peer", "allowed by ALLOW policy 'orders-peer'"
    )
    assert authorizer.decide(facts()) == Decision(False, None, "no ALLOW policy matched")
    assert Authorizer([DENY_BILLING]).decide(facts()) == Decision(True, None, "no ALLOW policy is configured")


# -- conditions -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("condition", "principal", "matches"),
    [
        (Condition("request.auth.claims[groups]", ["admins"]), jwt("a"), False),
        (Condition("request.auth.claims[roles]", ["admin"]), jwt("a", roles=["user", "admin"]), True),
        (Condition("request.auth.claims[roles]", ["admin"]), jwt("a", roles="admin"), True),
        (Condition("request.auth.claims[roles]", ["admin"]), jwt("a", roles=["user"]), False),
        (Condition("request.auth.claims[roles]", ["admin"]), jwt("a", roles=7), False),
        (Condition("request.auth.claims[realm][roles]", ["ops"]), jwt("a", realm={"roles": ["ops"]}), True),
        (Condition("request.auth.claims[realm][roles]", ["ops"]), jwt("a", realm="ops"), False),
        (Condition("request.auth.claims[email]", ["*@example.com"]), jwt("a", email="a@example.com"), True),
        (Condition("request.auth.claims[email]", not_values=["*@evil.example"]), jwt("a"), True),
        (Condition("request.auth.claims[email]", ["*"]), jwt("a"), False),
        (Condition("request.auth.principal", [f"{ISSUER}/*"]), jwt("a"), True),
        (Condition("request.auth.scopes", ["orders:read"]), jwt("a", scopes=("orders:read",)), True),
        (Condition("request.auth.groups", ["ops"]), consumer("c", "ops"), True),
        (Condition("request.auth.claims[iss]", [ISSUER]), consumer("c"), False),
    ],
)
def test_conditions(condition: Condition, principal: Principal, matches: bool) -> None:
    assert condition.matches(facts(principal=principal)) is matches


def test_conditions_are_all_required_so_scopes_can_be_all_of() -> None:
    both = allow(
        "both",
        Rule(
            conditions=[
                Condition("request.auth.scopes", ["orders:read"]),
                Condition("request.auth.scopes", ["orders:write"]),
            ]
        ),
    )
    authorizer = Authorizer([both])
    assert authorizer.decide(facts(principal=jwt("a", scopes=("orders:read", "orders:write")))).allowed
    assert not authorizer.decide(facts(principal=jwt("a", scopes=("orders:read",)))).allowed


def test_source_principal_condition_uses_peer_patterns() -> None:
    condition = Condition("source.principal", ["spiffe://cluster.local/ns/prod/*"])
    assert condition.matches(facts(peer=peer(ORDERS)))
    assert not condition.matches(facts(peer=peer(STAGING)))
    assert not condition.matches(facts())


def test_claims_come_from_the_jwt_principal_or_are_given() -> None:
    condition = Condition("request.auth.claims[tenant]", ["acme"])
    assert condition.matches(facts(principal=jwt("a", tenant="acme")))
    assert condition.matches(facts(principal=jwt("a"), claims={"tenant": "acme"}))
    assert not condition.matches(facts(principal=consumer("c")))


# -- facts from a scope ---------------------------------------------------------------------------------------
def test_facts_from_scope_read_what_the_middleware_left() -> None:
    scope = {
        "type": "http",
        "method": "delete",
        "path": "/a//b/../c",
        PEER_KEY: peer(ORDERS),
        PRINCIPAL_KEY: jwt("alice", groups=("ops",)),
        CLAIMS_KEY: {"iss": "https://other.example", "sub": "alice"},
    }
    read = RequestFacts.from_scope(scope)
    assert (read.methods, read.paths, read.peer_names) == (
        ("DELETE",),
        ("/a/c",),
        ("cluster.local/ns/prod/sa/orders",),
    )
    assert read.request_principals == ("alice", "https://other.example/alice")  # the scope's claims win
    assert read.groups == frozenset({"ops"})


def test_facts_from_scope_ignore_what_is_not_theirs() -> None:
    scope = {
        "type": "websocket",
        "path": b"/bytes",
        PEER_KEY: "spiffe://cluster.local/ns/prod/sa/orders",  # text, not a Peer: not believed
        PRINCIPAL_KEY: {"id": "alice"},
        CLAIMS_KEY: ["not", "a", "mapping"],
    }
    read = RequestFacts.from_scope(scope)
    assert (read.methods, read.paths, read.peer_names, read.request_principals) == (("GET",), ("",), (), ())


def test_api_key_principals_do_not_take_jwt_claims_from_the_scope() -> None:
    scope = {"method": "GET", "path": "/", PRINCIPAL_KEY: consumer("cron"), CLAIMS_KEY: {"tenant": "acme"}}
    read = RequestFacts.from_scope(scope)
    assert read.claims == {}
    assert read.request_principals == ("cron",)


def test_the_anonymous_flag_makes_the_principal_unauthenticated() -> None:
    scope = {"method": "GET", "path": "/", PRINCIPAL_KEY: consumer("guest", "public"), ANONYMOUS_KEY: True}
    read = RequestFacts.from_scope(scope)
    assert read.request_principals == ()
    assert read.groups == frozenset({"public"})


@pytest.mark.parametrize(
    ("path", "normalised"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/", "/a/"),
        ("//", "/"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../c", "/a/c"),
        ("/../../a", "/a"),
        ("/..", "/"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/...", "/a/..."),
        ("*", "*"),
        ("", ""),
    ],
)
def test_normalize_path(path: str, normalised: str) -> None:
    assert normalize_path(path) == normalised


@given(st.lists(st.sampled_from(["", ".", "..", "a", "b.", "..c", "%2e"]), max_size=8), st.booleans())
def test_normalised_paths_have_no_dot_segments_or_empty_ones_and_stay_put(
    segments: list[str], slash: bool
) -> None:
    path = "/" + "/".join(segments) + ("/" if slash else "")
    normalised = normalize_path(path)
    assert normalised.startswith("/")
    inner = normalised[1:].removesuffix("/").split("/")
    assert normalised == "/" or not any(segment in ("", ".", "..") for segment in inner)
    assert normalize_path(normalised) == normalised


# -- building from configuration ------------------------------------------------------------------------------
ISTIO_MANIFEST = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "orders-readers", "namespace": "prod"},
    "spec": {
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/prod/sa/*"], "notPrincipals": [BILLING]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": ["/orders/*"]}}],
                "when": [{"key": "request.auth.claims[iss]", "values": [ISSUER]}],
            }
        ],
    },
}


def test_an_istio_manifest_loads_and_decides() -> None:
    policy = Policy.from_dict(ISTIO_MANIFEST)
    assert (policy.name, policy.action, len(policy.rules)) == ("orders-readers", "ALLOW", 1)
    rule = next(iter(policy.rules))
    assert rule == Rule(
        sources=[Source(principals=["cluster.local/ns/prod/sa/*"], not_principals=[BILLING])],
        operations=[Operation(methods=["GET"], paths=["/orders/*"])],
        conditions=[Condition("request.auth.claims[iss]", [ISSUER])],
    )
    authorizer = Authorizer([ISTIO_MANIFEST])  # mappings are accepted as they are
    assert authorizer.decide(facts("GET", "/orders/1", peer=peer(ORDERS), principal=jwt("a"))).allowed
    assert not authorizer.decide(facts("GET", "/orders/1", peer=peer(BILLING), principal=jwt("a"))).allowed
    assert not authorizer.decide(facts("GET", "/orders/1", peer=peer(ORDERS))).allowed  # no issuer claim


def test_a_plain_dict_with_snake_case_fields() -> None:
    policy = Policy.from_dict(
        {
            "name": "no-anonymous-writes",
            "action": "deny",
            "rules": [
                {
                    "from": [{"source": {"not_request_principals": ["*"]}}],
                    "to": [{"operation": {"not_methods": ["GET", "HEAD"]}}],
                }
            ],
        }
    )
    assert policy == deny(
        "no-anonymous-writes",
        Rule(sources=[Source(not_request_principals=["*"])], operations=[Operation(not_methods=["GET", "HEAD"])]),
    )
    assert policy.action == "DENY"


def test_action_defaults_to_allow_and_rules_to_none() -> None:
    policy = Policy.from_dict({"name": "allow-nothing"})
    assert (policy.action, policy.rules) == ("ALLOW", ())
    assert not Authorizer([policy]).decide(facts()).allowed


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        (
            {"name": "p", "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]},
            "Policy[p].rules[0].from[0].source.namespaces",
            ConfigError,
        ),
        (
            {"name": "p", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]},
            "Policy[p].rules[0].from[0].source.ipBlocks",
            ConfigError,
        ),
        (
            {"name": "p", "rules": [{"to": [{"operation": {"hosts": ["a"]}}]}]},
            "Policy[p].rules[0].to[0].operation.hosts",
            ConfigError,
        ),
        (
            {"name": "p", "rules": [{"to": [{"operation": {"paths": "/admin"}}]}]},
            "Policy[p].rules[0].to[0].operation.paths",
            ConfigError,
        ),
        (
            {"name": "p", "rules": [{"to": [{"operations": {}}]}]},
            "Policy[p].rules[0].to[0].operations",
            ConfigError,
        ),
        (
            {"name": "p", "rules": [{"from": [{"source": {"principals": ["Cluster.Local/ns/x"]}}]}]},
            "Policy[p].rules[0].from[0].source.principals[0]",
            InvalidSpiffeIdError,
        ),
        (
            {"name": "p", "rules": [{"from": [{"source": {"principals": ["spiffe://td/a//b"]}}]}]},
            "Policy[p].rules[0].from[0].source.principals[0]",
            InvalidSpiffeIdError,
        ),
        (
            {"name": "p", "rules": [{"when": [{"key": "request.headers[x]", "values": ["y"]}]}]},
            "Policy[p].rules[0].when[0].key",
            ConfigError,
        ),
        (
            {"name": "p", "rules": [{"when": [{"key": "request.auth.claims[x]"}]}]},
            "Policy[p].rules[0].when[0].values",
            ConfigError,
        ),
        ({"name": "p", "rules": [{"unless": []}]}, "Policy[p].rules[0].unless", ConfigError),
        ({"name": "p", "rules": {"from": []}}, "Policy[p].rules", ConfigError),
        ({"name": "p", "action": "AUDIT"}, "Policy[p].action", ConfigError),
        ({"name": "", "rules": []}, "Policy[].name", ConfigError),
        ({"rules": []}, "Policy.name", ConfigError),
        ({"name": "p", "selector": {}}, "Policy.selector", ConfigError),
        (
            {"metadata": {"name": "p"}, "spec": {"selector": {"matchLabels": {}}}},
            "Policy.spec.selector",
            ConfigError,
        ),
        ({"kind": "PeerAuthentication", "metadata": {"name": "p"}, "spec": {}}, "Policy.kind", ConfigError),
        ({"metadata": "p", "spec": {}}, "Policy.metadata", ConfigError),
    ],
)
def test_bad_configuration_names_the_field(data: dict[str, Any], field: str, error: type[ConfigError]) -> None:
    with pytest.raises(error) as caught:
        Policy.from_dict(data)
    assert type(caught.value) is error
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Source(principals="spiffe://td/x"), "Source.principals"),
        (lambda: Source(groups=[""]), "Source.groups[0]"),
        (lambda: Source(groups=[7]), "Source.groups[0]"),
        (lambda: Source(scopes=["a*b"]), "Source.scopes[0]"),
        (lambda: Source(scopes=["**"]), "Source.scopes[0]"),
        (lambda: Source(principals=["spiffe://Bad/x"]), "Source.principals[0]"),
        (lambda: Source(principals=["Bad.Domain/ns/*"]), "Source.principals[0]"),
        (lambda: Operation(methods=["*"]), "Operation.methods[0]"),
        (lambda: Operation(methods=["GET POST"]), "Operation.methods[0]"),
        (lambda: Operation(paths=["admin"]), "Operation.paths[0]"),
        (lambda: Operation(paths=["/a/../admin"]), "Operation.paths[0]"),
        (lambda: Operation(paths=["//admin/*"]), "Operation.paths[0]"),
        (lambda: Operation(paths=["/a/{**}/b"]), "Operation.paths[0]"),
        (lambda: Operation(paths=["/a/x{*}"]), "Operation.paths[0]"),
        (lambda: Operation(paths=["/a/{id}"]), "Operation.paths[0]"),
        (lambda: Condition("request.auth.claims", ["x"]), "Condition.key"),
        (lambda: Condition("request.auth.claims[x]"), "Condition.values"),
        (lambda: Rule(sources=[Operation()]), "Rule.sources[0]"),
        (lambda: Rule(sources=Source()), "Rule.sources"),
        (lambda: Policy("p", rules=Rule()), "Policy.rules"),
        (lambda: Policy("p", action="CUSTOM"), "Policy.action"),
        (lambda: Policy("bad\nname"), "Policy.name"),
        (lambda: Authorizer([allow("same"), deny("same")]), "Authorizer.policies"),
        (lambda: Authorizer(allow("one")), "Authorizer.policies"),
    ],
)
def test_bad_objects_are_refused_at_construction(build: Any, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.field == field


def test_objects_are_frozen_hashable_and_show_only_what_is_set() -> None:
    source = Source(principals=[ORDERS], groups=("ops",))
    assert source == Source(principals=(ORDERS,), groups=["ops"])
    assert hash(source) == hash(Source(principals=(ORDERS,), groups=["ops"]))
    assert repr(source) == f"Source(principals=('{ORDERS}',), groups=('ops',))"
    assert repr(Operation(methods=["GET"])) == "Operation(methods=('GET',))"
    with pytest.raises(AttributeError):
        source.principals = ()  # type: ignore[misc]
    authorizer = Authorizer([ALLOW_ORDERS, DENY_BILLING])
    assert repr(authorizer) == "Authorizer(policies=['orders-peer', 'no-billing'])"


def test_facts_repr_shows_who_and_what_but_no_claims() -> None:
    shown = repr(facts("GET", "/x", principal=jwt("alice", secret_claim="do-not-show")))
    assert "alice" in shown
    assert "do-not-show" not in shown
