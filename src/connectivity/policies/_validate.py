"""Validation helpers for frozen policy configuration: each raises ConfigError naming the field and the rule."""

from __future__ import annotations

import math
from typing import Any

from connectivity.errors import ConfigError

__all__ = ["at_least_int", "finite_non_negative", "finite_positive", "optional_positive", "ratio"]


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, "must be a number")
    if math.isnan(value):
        raise ConfigError(field, value, "must not be NaN")
    return float(value)


def finite_positive(field: str, value: Any) -> float:
    """A finite number > 0."""
    number = _number(field, value)
    if not (0 < number < math.inf):
        raise ConfigError(field, value, "must be a finite number greater than 0")
    return number


def finite_non_negative(field: str, value: Any) -> float:
    """A finite number >= 0."""
    number = _number(field, value)
    if not (0 <= number < math.inf):
        raise ConfigError(field, value, "must be a finite number greater than or equal to 0")
    return number


def optional_positive(field: str, value: Any) -> float | None:
    """``None`` (no limit) or a finite number > 0."""
    return None if value is None else finite_positive(field, value)


def ratio(field: str, value: Any) -> float:
    """A number in [0, 1]."""
    number = _number(field, value)
    if not (0 <= number <= 1):
        raise ConfigError(field, value, "must be between 0 and 1")
    return number


def at_least_int(field: str, value: Any, minimum: int) -> int:
    """An int >= minimum (bools are rejected: ``attempts=True`` is a bug, not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, value, "must be an integer")
    if value < minimum:
        raise ConfigError(field, value, f"must be at least {minimum}")
    return value
