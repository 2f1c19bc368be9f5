"""Helpers for the balancing tests: endpoint factories and a virtual-time traffic simulator."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable

from connectivity.balancing import EndpointSet, Picker
from connectivity.discovery import Endpoint
from connectivity.testing import FakeClock


def endpoints(count: int, *, zone: str | None = None, subnet: int = 0, weight: float = 1) -> list[Endpoint]:
    """``count`` distinct endpoints ``10.<subnet>.x.y:8080``."""
    return [Endpoint(f"10.{subnet}.{i // 250}.{i % 250 + 1}", 8080, weight, zone) for i in range(count)]


def count_picks(picker: Picker, endpoint_set: EndpointSet, picks: int, **options: object) -> Counter[str]:
    """How many of ``picks`` picks (no request started) each endpoint key received."""
    found: Counter[str] = Counter()
    for _ in range(picks):
        chosen = picker.pick(endpoint_set, **options)  # type: ignore[arg-type]
        assert chosen is not None
        found[chosen.key] += 1
    return found


def simulate(
    picker: Picker,
    endpoint_set: EndpointSet,
    clock: FakeClock,
    latency: Callable[[str], float],
    *,
    gap: float,
    duration: float,
    warm_up: float = 0.0,
) -> Counter[str]:
    """Open-loop traffic in virtual time: a request every ``gap`` seconds for ``duration`` seconds, each started
    on the picked endpoint and finished ``latency(key)`` later. Returns the picks after ``warm_up``."""
    in_flight: list[tuple[float, int, object, float]] = []
    order = itertools.count()
    found: Counter[str] = Counter()
    start = clock.now()
    for step in itertools.count():
        now = start + step * gap
        if now >= start + duration:
            break
        while in_flight and in_flight[0][0] <= now:
            when, _, stats, started = heapq.heappop(in_flight)
            clock.advance(when - clock.now())
            stats.finish(started)  # type: ignore[attr-defined]
        clock.advance(now - clock.now())
        stats = picker.pick_stats(endpoint_set)
        assert stats is not None
        started = stats.start()
        if now - start >= warm_up:
            found[stats.key] += 1
        heapq.heappush(in_flight, (now + latency(stats.key), next(order), stats, started))
    return found
