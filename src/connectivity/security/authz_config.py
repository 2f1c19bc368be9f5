"""Policies from configuration: plain mappings or whole Istio ``AuthorizationPolicy`` manifests.

Field names are accepted in Istio's camelCase and in snake_case; every field the model does not support is refused
with a :class:`~connectivity.errors.ConfigError` naming its full path (``Policy[orders].rules[0].from[0]...``),
never ignored: ignoring it would widen an ALLOW policy.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import fields
from typing import Any

from connectivity.errors import ConfigError
from connectivity.security.authz import ALLOW, Condition, Operation, Policy, Rule, Source, _list

__all__ = ["policy_from_dict"]


def policy_from_dict(cls: type[Policy], data: Mapping[str, Any]) -> Policy:
    """Build ``cls`` (a :class:`~connectivity.security.authz.Policy`) from configuration (see
    :meth:`Policy.from_dict <connectivity.security.authz.Policy.from_dict>`)."""
    data = _mapping("Policy", data)
    if "spec" in data or "metadata" in data:
        _keys("Policy", data, {"apiVersion", "kind", "metadata", "spec"})
        if data.get("kind", "AuthorizationPolicy") != "AuthorizationPolicy":
            raise ConfigError("Policy.kind", data.get("kind"), "must be AuthorizationPolicy")
        name = _mapping("Policy.metadata", data.get("metadata")).get("name")
        spec = _mapping("Policy.spec", data.get("spec", {}))
        _keys("Policy.spec", spec, {"action", "rules"})
    else:
        _keys("Policy", data, {"name", "action", "rules"})
        name, spec = data.get("name"), data
    prefix = f"Policy[{name}]" if isinstance(name, str) else "Policy"
    rules = []
    for index, rule in enumerate(_list(f"{prefix}.rules", spec.get("rules", []))):
        where = f"{prefix}.rules[{index}]"
        with _within(where):
            rules.append(_rule(where, _mapping(where, rule)))
    with _within(prefix):
        return cls(name=name, action=spec.get("action", ALLOW), rules=rules)  # type: ignore[arg-type]


def _aliases(cls: type) -> dict[str, str]:
    """Field names by their Istio (camelCase) and Python (snake_case) spellings."""
    names = [f.name for f in fields(cls) if f.init]
    return {alias: name for name in names for alias in (name, re.sub(r"_(\w)", lambda m: m[1].upper(), name))}


_PARTS: dict[str, tuple[str, type, dict[str, str]]] = {
    "from": ("source", Source, _aliases(Source)),
    "to": ("operation", Operation, _aliases(Operation)),
    "when": ("", Condition, _aliases(Condition)),
}


@contextlib.contextmanager
def _within(prefix: str) -> Iterator[None]:
    """Re-raise a model's ConfigError with the configuration path in front of its field."""
    try:
        yield
    except ConfigError as exc:
        if exc.field.startswith(prefix):
            raise
        inner = exc.field.partition(".")[2] or exc.field
        raise type(exc)(f"{prefix}.{inner}", exc.value, exc.rule) from None


def _mapping(field: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field, value, "must be a mapping")
    return value


def _keys(field: str, data: Mapping[str, Any], allowed: Collection[str]) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{field}.{key}", data[key], f"is not supported here (known: {', '.join(allowed)})")


def _rule(where: str, data: Mapping[str, Any]) -> Rule:
    _keys(where, data, _PARTS)
    parts: dict[str, list[Any]] = {}
    for part, (wrapper, cls, aliases) in _PARTS.items():
        parts[part] = []
        for index, item in enumerate(_list(f"{where}.{part}", data.get(part, []))):
            here = f"{where}.{part}[{index}]"
            body = _mapping(here, item)
            if wrapper:  # from: [{source: {...}}], to: [{operation: {...}}]
                _keys(here, body, (wrapper,))
                here = f"{here}.{wrapper}"
                body = _mapping(here, body.get(wrapper, {}))
            _keys(here, body, aliases)
            with _within(here):
                parts[part].append(cls(**{aliases[key]: value for key, value in body.items()}))
    return Rule(sources=parts["from"], operations=parts["to"], conditions=parts["when"])
