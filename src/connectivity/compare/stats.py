"""Summaries over rounds (median and range of every measure) and the verdicts the comparison is held to.

Every measure is taken per block (one contender, one mode, one round) and reported as the median over the rounds
with its range (min-max), so a single noisy round shows as a wide range rather than moving the headline number.
The in-process stack's *added* client CPU is paired per round: each round's in-process figure minus the same
round's bare-httpx figure, whose median is then taken (rounds drift; a round's blocks share its conditions).

The verdicts (:func:`verdicts`):

* CPU: the in-process stack's added client CPU per request in the healthy scenario <= :data:`CPU_RATIO` x the
  cheapest sidecar hop (the proxy's own CPU per request) measured in the same run; shown with the run's noise
  floor, the median over rounds of how far a second bare client (``httpx (control)``) lands from the first,
  and called inconclusive when the margin is smaller than that;
* success: in every scenario with a failing replica, the in-process stack's success rate >= every sidecar's.

.. versionadded:: 0.1
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from connectivity.compare.scenarios import Scenario

__all__ = ["CPU_RATIO", "MEASURES", "summarise", "verdicts"]

CPU_RATIO = 0.2
"""Most client CPU the in-process stack may add per request, as a fraction of the cheapest sidecar hop."""

MEASURES = (
    "success_rate",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "client_cpu_us",
    "proxy_cpu_us",
    "proxy_rss_mb",
    "upstream_per_request",
)
"""The per-block measures summarised over rounds."""

_BARE = "httpx"
_IN_PROCESS = "connectivity"
_CONTROL = "httpx (control)"


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _policy(scenario: Scenario) -> dict[str, Any]:
    policy = scenario.policy
    return {
        "attempts": policy.attempts,
        "retry_statuses": sorted(policy.retry_statuses),
        "per_try_timeout": policy.per_try_timeout,
        "total_timeout": policy.total_timeout,
        "consecutive_5xx": policy.consecutive_5xx,
        "ejection_time": policy.ejection_time,
        "rate_limit": policy.rate_limit,
        "burst": policy.burst,
        "balancing": policy.balancing,
    }


def summarise(
    scenario: Scenario,
    rounds: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    unsupported: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """One scenario's results: for each mode and contender, every measure's median and range over the rounds.

    Args:
        scenario: The scenario measured.
        rounds: Block summaries by mode, then contender, one per round.
        unsupported: What each sidecar could not express of the policy.

    Returns:
        JSON-ready summaries, with the rounds themselves kept under ``"rounds"``.
    """
    modes: dict[str, Any] = {}
    for mode, contenders in rounds.items():
        summaries: dict[str, Any] = {}
        bare = contenders.get(_BARE)
        for name, blocks in contenders.items():
            summary: dict[str, Any] = {}
            for measure in MEASURES:
                values = [block[measure] for block in blocks if block[measure] is not None]
                summary[measure] = _spread(values) if values else None
            if bare is not None and name != _BARE:
                added = [
                    mine["client_cpu_us"] - base["client_cpu_us"] for mine, base in zip(blocks, bare, strict=False)
                ]
                summary["client_cpu_added_us"] = _spread(added)
            failures: Counter[str] = Counter()
            events: Counter[str] = Counter()
            for block in blocks:
                failures.update(block["failures"])
                events.update(block["events"])
            summary["failures"] = dict(failures.most_common())
            summary["events"] = dict(events.most_common())
            summary["requests"] = sum(block["requests"] for block in blocks)
            summary["rounds"] = list(blocks)
            summaries[name] = summary
        modes[mode] = summaries
    return {
        "title": scenario.title,
        "policy": _policy(scenario),
        "failing_replica": scenario.failing_replica,
        "faults": {str(index): repr(faults) for index, faults in scenario.faults.items()},
        "down": sorted(scenario.down),
        "unsupported": {name: list(items) for name, items in unsupported.items()},
        "modes": modes,
    }


def _median(summary: Mapping[str, Any], measure: str) -> float | None:
    spread = summary.get(measure)
    return None if spread is None else float(spread["median"])


def _noise_floor(contenders: Mapping[str, Any]) -> float | None:
    """The median, over rounds, of how far bare httpx's twin lands from it (either way), in µs per request."""
    bare, control = contenders.get(_BARE), contenders.get(_CONTROL)
    if bare is None or control is None:
        return None
    gaps = [
        abs(twin["client_cpu_us"] - base["client_cpu_us"])
        for twin, base in zip(control["rounds"], bare["rounds"], strict=False)
    ]
    return statistics.median(gaps) if gaps else None


def verdicts(scenarios: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The checks the in-process stack is held to, computed from a run's scenario summaries.

    Returns:
        One entry per check: ``check`` (what is held), ``pass`` (``True``, ``False``, or ``None`` when the run
        lacks what the check needs, e.g. no sidecar ran) and ``detail`` (the numbers).
    """
    results: list[dict[str, Any]] = []
    healthy = scenarios.get("healthy")
    if healthy is not None:
        for mode, contenders in healthy["modes"].items():
            ours = contenders.get(_IN_PROCESS)
            hops = {
                name: value
                for name, summary in contenders.items()
                if (value := _median(summary, "proxy_cpu_us")) is not None
            }
            check = f"healthy/{mode}: in-process added client CPU <= {CPU_RATIO} x cheapest sidecar hop"
            if ours is None or "client_cpu_added_us" not in ours or not hops:
                results.append({"check": check, "pass": None, "detail": "needs bare httpx, in-process, a sidecar"})
                continue
            added = float(ours["client_cpu_added_us"]["median"])
            cheapest = min(hops, key=lambda name: hops[name])
            # The hop is the proxy's own CPU (as Istio and the issue count it); what the client spends more to
            # reach the proxy than to reach the replicas directly is shown beside it, not added to it.
            client_extra = contenders[cheapest].get("client_cpu_added_us")
            extra = "" if client_extra is None else f"; its client side {client_extra['median']:+.1f} µs"
            noise = _noise_floor(contenders)
            if noise is not None:
                extra += f"; noise floor {noise:.1f} µs"
                if abs(added - CPU_RATIO * hops[cheapest]) < noise:
                    extra += ": inconclusive, the difference is within the noise"
            results.append(
                {
                    "check": check,
                    "pass": added <= CPU_RATIO * hops[cheapest],
                    "detail": f"added {added:.1f} µs/request vs {cheapest} {hops[cheapest]:.1f} µs/request "
                    f"(limit {CPU_RATIO * hops[cheapest]:.1f} µs{extra})",
                    "added_us": added,
                    "cheapest_hop": cheapest,
                    "cheapest_hop_us": hops[cheapest],
                    "noise_floor_us": noise,
                }
            )
    for name, scenario in scenarios.items():
        if not scenario["failing_replica"]:
            continue
        for mode, contenders in scenario["modes"].items():
            check = f"{name}/{mode}: in-process success rate >= every sidecar's"
            ours = contenders.get(_IN_PROCESS)
            sidecars = {
                other: rate
                for other, summary in contenders.items()
                if summary.get("proxy_cpu_us") is not None
                and (rate := _median(summary, "success_rate")) is not None
            }
            if ours is None or not sidecars:
                results.append({"check": check, "pass": None, "detail": "needs in-process and a sidecar"})
                continue
            rate = float(ours["success_rate"]["median"])
            others = ", ".join(f"{other} {value:.1%}" for other, value in sidecars.items())
            results.append(
                {
                    "check": check,
                    "pass": all(rate >= value for value in sidecars.values()),
                    "detail": f"in-process {rate:.1%}; {others}",
                }
            )
    return results
