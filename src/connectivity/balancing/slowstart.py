"""Slow start: a new endpoint's share of traffic ramps up over a window instead of jumping to full.

Envoy's formula (``slow_start_config`` of its round-robin and least-request balancers): during the first
``window`` seconds after an endpoint joins, its effective weight is

    weight * max(min_weight_percent / 100, time_factor ** (1 / aggression)),
    time_factor = max(seconds_since_join, 1) / window

so with the defaults (aggression 1, minimum 10 %) it starts at 10 % of its weight and grows linearly to 100 %
at the end of the window. ``aggression`` above 1 ramps faster early, below 1 slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from connectivity.errors import ConfigError
from connectivity.policies._validate import finite_positive

__all__ = ["SlowStart"]


@dataclass(frozen=True, slots=True)
class SlowStart:
    """How a new endpoint's effective weight ramps up (Envoy ``slow_start_config``; see the module docstring).

    Args:
        window: Seconds over which the weight ramps to full (Envoy ``slow_start_window``).
        aggression: Shape of the ramp: 1 linear, > 1 faster at first, < 1 slower (Envoy ``aggression``).
        min_weight_percent: The floor of the ramp, in percent of the weight (Envoy default 10).

    Raises:
        ConfigError: A field is invalid.

    .. versionadded:: 0.1
    """

    window: float
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    def __post_init__(self) -> None:
        finite_positive("SlowStart.window", self.window)
        finite_positive("SlowStart.aggression", self.aggression)
        floor = self.min_weight_percent
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor <= 100:
            raise ConfigError("SlowStart.min_weight_percent", floor, "must be a number in (0, 100]")

    def factor(self, age: float) -> float:
        """The fraction of its weight an endpoint that joined ``age`` seconds ago gets (1.0 after the window)."""
        window = self.window
        if age >= window or math.isnan(age):
            return 1.0
        time_factor = max(age, 1.0) / window
        if time_factor >= 1.0:
            return 1.0
        ramp = time_factor if self.aggression == 1.0 else time_factor ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)
