"""Path and header matchers: Envoy's semantics, compiled and validated once."""

from __future__ import annotations

import httpx
import pytest

from connectivity.errors import ConfigError
from connectivity.routing import HeaderMatch, PathMatch


@pytest.mark.parametrize(
    ("matcher", "path", "expected"),
    [
        (PathMatch.prefix("/orders"), "/orders", True),
        (PathMatch.prefix("/orders"), "/orders/7", True),
        (PathMatch.prefix("/orders"), "/orders-archive", True),  # a plain string prefix, as in Envoy
        (PathMatch.prefix("/orders"), "/order", False),
        (PathMatch.separated_prefix("/orders"), "/orders", True),
        (PathMatch.separated_prefix("/orders"), "/orders/7", True),
        (PathMatch.separated_prefix("/orders"), "/orders-archive", False),
        (PathMatch.exact("/health"), "/health", True),
        (PathMatch.exact("/health"), "/health/", False),
        (PathMatch.regex(r"/v\d+/.*"), "/v2/orders", True),
        (PathMatch.regex(r"/v\d+"), "/v2/orders", False),  # the whole path must match
        (PathMatch.template("/orders/{id}"), "/orders/7", True),
        (PathMatch.template("/orders/{id}"), "/orders/7/items", False),
        (PathMatch.template("/orders/{id}"), "/orders/", False),
        (PathMatch.template("/a/*/c"), "/a/b/c", True),
        (PathMatch.template("/files/**"), "/files/x/y/z", True),
        (PathMatch.template("/files/**"), "/other/x", False),
    ],
)
def test_path_kinds(matcher: PathMatch, path: str, expected: bool) -> None:
    assert (matcher.match(path) is not None) is expected


def test_template_captures_named_variables() -> None:
    matcher = PathMatch.template("/orders/{id}/items/{item=*}/{rest=**}")
    assert matcher.variables == ("id", "item", "rest")
    assert matcher.match("/orders/7/items/3/a/b") == {"id": "7", "item": "3", "rest": "a/b"}
    assert PathMatch.prefix("/").match("/x") == {}


def test_template_literals_are_not_regular_expressions() -> None:
    matcher = PathMatch.template("/v1.0/{id}")
    assert matcher.match("/v1.0/7") == {"id": "7"}
    assert matcher.match("/v1x0/7") is None


@pytest.mark.parametrize(
    ("build", "field", "fragment"),
    [
        (lambda: PathMatch.regex("/(unclosed"), "PathMatch.regex", "invalid regular expression"),
        (lambda: PathMatch.regex(""), "PathMatch.regex", "non-empty"),
        (lambda: PathMatch.template("orders/{id}"), "PathMatch.template", "starting with '/'"),
        (lambda: PathMatch.template("/orders/{id"), "PathMatch.template", "whole segment"),
        (lambda: PathMatch.template("/orders/{id}.json"), "PathMatch.template", "whole segment"),
        (lambda: PathMatch.template("/a/{id}/{id}"), "PathMatch.template", "appears twice"),
        (lambda: PathMatch.template("/a/{1x}"), "PathMatch.template", "needs a name"),
        (lambda: PathMatch.template("/a/**/b"), "PathMatch.template", "last segment"),
        (lambda: PathMatch.template("/a/{x=***}"), "PathMatch.template", "'*' or '**'"),
        (lambda: PathMatch.prefix("orders"), "PathMatch.prefix", "starting with '/'"),
        (lambda: PathMatch.separated_prefix("/orders/"), "PathMatch.separated_prefix", "must not end"),
        (lambda: PathMatch("glob", "/x"), "PathMatch.kind", "must be one of"),
    ],
)
def test_invalid_paths_raise_config_errors(build: object, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field
    assert fragment in caught.value.rule


def test_header_matchers() -> None:
    headers = httpx.Headers({"X-Tenant": "acme", "X-Version": "v2", "Accept": "a", "accept": "b"})
    assert HeaderMatch("x-tenant", exact="acme").matches(headers)
    assert HeaderMatch("X-TENANT", exact="acme").matches(headers)  # names are case-insensitive
    assert not HeaderMatch("x-tenant", exact="Acme").matches(headers)  # values are not
    assert HeaderMatch("x-version", regex=r"v\d").matches(headers)
    assert not HeaderMatch("x-version", regex=r"v").matches(headers)  # full match
    assert HeaderMatch("x-version", prefix="v").matches(headers)
    assert HeaderMatch("accept", exact="a, b").matches(headers)  # repeated headers are joined
    assert HeaderMatch("x-tenant", present=True).matches(headers)
    assert not HeaderMatch("x-debug", present=True).matches(headers)
    assert HeaderMatch("x-debug", present=False).matches(headers)
    assert HeaderMatch("x-tenant", exact="other", invert=True).matches(headers)
    assert not HeaderMatch("x-tenant", exact="acme", invert=True).matches(headers)
    # An absent header never matches a value condition, inverted or not (Envoy).
    assert not HeaderMatch("x-debug", exact="1", invert=True).matches(headers)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "x-a"}, "HeaderMatch"),
        ({"name": "x-a", "exact": "1", "prefix": "1"}, "HeaderMatch"),
        ({"name": "bad name", "exact": "1"}, "HeaderMatch.name"),
        ({"name": "x-a", "regex": "("}, "HeaderMatch.regex"),
        ({"name": "x-a", "exact": 1}, "HeaderMatch.exact"),
        ({"name": "x-a", "present": "yes"}, "HeaderMatch.present"),
        ({"name": "x-a", "present": True, "invert": True}, "HeaderMatch.invert"),
    ],
)
def test_invalid_header_matchers(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HeaderMatch(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
