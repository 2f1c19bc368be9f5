"""Summaries over rounds (median and range of every measure) and the verdicts the comparison is held to.

Every measure is taken per block (one contender, one mode, one round) and reported as the median over the rounds
with its range (min-max), so a single noisy round shows as a wide range rather than moving the headline number.
The in-process stack's *added* client CPU is paired per round: each round's in-process figure minus the same
round's bare-httpx figure, whose median is then taken (rounds drift; a round's blocks share its conditions).

The CPU verdict does not rest on those rounds but on the healthy scenario's *CPU phase* (:func:`summarise_cpu`):
many rounds of small blocks, every contender once per round in a shuffled order. Each round gives a *paired*
difference, the in-process stack's client CPU per request minus bare httpx's in the same round, and each
sidecar's hop cost (its own CPU per request). Every figure is the median over rounds with a distribution-free
95 % confidence interval for that median (:func:`median_interval`: order statistics chosen with the binomial
distribution, as for the sign test; no assumption about the shape of the noise). The twin of bare httpx
(``httpx (control)``) is paired the same way: its interval should straddle zero, and its width is the noise
floor of the run.

The verdicts (:func:`verdicts`):

* CPU: the in-process stack's added client CPU per request in the healthy scenario <= :data:`CPU_RATIO` x the
  cheapest sidecar hop measured in the same run. PASS when the whole interval of the added CPU lies at or below
  :data:`CPU_RATIO` x the lower end of the hop's interval; FAIL when it lies wholly above :data:`CPU_RATIO` x the
  hop's upper end; otherwise *inconclusive* (``pass`` is ``None``): the intervals straddle the limit;
* success: in every scenario with a failing replica, the in-process stack's success rate >= every sidecar's.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from connectivity.compare.scenarios import Scenario

__all__ = ["CONFIDENCE", "CPU_RATIO", "MEASURES", "median_interval", "summarise", "summarise_cpu", "verdicts"]

CPU_RATIO = 0.2
"""Most client CPU the in-process stack may add per request, as a fraction of the cheapest sidecar hop."""

CONFIDENCE = 0.95
"""Confidence of the intervals of the CPU phase (at least this much: order statistics give discrete levels)."""

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
        "retry_after_cap": policy.retry_after_cap,
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
        "mtls": scenario.mtls,
        "unsupported": {name: list(items) for name, items in unsupported.items()},
        "modes": modes,
    }


def _median(summary: Mapping[str, Any], measure: str) -> float | None:
    spread = summary.get(measure)
    return None if spread is None else float(spread["median"])


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float | int]:
    """The median of ``values`` with a distribution-free confidence interval for it.

    The interval runs from the k-th smallest to the k-th largest value, k being the largest rank such that a
    Binomial(n, 1/2) count falls below k with probability at most (1 - confidence) / 2: the interval then covers
    the true median with probability at least ``confidence``, whatever the distribution. With too few values for
    that (n < 6 at 95 %), it is the whole range, and ``level`` says how much less it covers.

    Returns:
        ``median``, ``low``, ``high``, ``n`` and ``level`` (the interval's actual coverage).
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    tail, k = 0.0, 0
    for count in range(n + 1):
        probability = math.comb(n, count) / 2**n
        if tail + probability > (1 - confidence) / 2:
            break
        tail += probability
        k = count + 1
    if k == 0:
        k, tail = 1, 1 / 2**n
    return {
        "median": statistics.median(ordered),
        "low": ordered[k - 1],
        "high": ordered[n - k],
        "n": n,
        "level": 1 - 2 * tail,
    }


def summarise_cpu(blocks: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """The CPU phase: per mode, the paired added client CPU of every contender against bare httpx, and each
    sidecar's hop cost, each as :func:`median_interval` over the rounds (blocks kept under ``"blocks"``)."""
    modes: dict[str, Any] = {}
    for mode, contenders in blocks.items():
        bare = contenders.get(_BARE)
        added: dict[str, Any] = {}
        hops: dict[str, Any] = {}
        for name, rounds in contenders.items():
            if bare is not None and name != _BARE and rounds:
                pairs = [
                    mine["client_cpu_us"] - base["client_cpu_us"] for mine, base in zip(rounds, bare, strict=False)
                ]
                added[name] = median_interval(pairs)
            proxy = [block["proxy_cpu_us"] for block in rounds if block.get("proxy_cpu_us") is not None]
            if proxy:
                hops[name] = median_interval(proxy)
        modes[mode] = {
            "added_client_cpu_us": added,
            "hop_cpu_us": hops,
            "client_cpu_us": {
                name: median_interval([block["client_cpu_us"] for block in rounds])
                for name, rounds in contenders.items()
                if rounds
            },
            "blocks": {
                name: [
                    {key: block.get(key) for key in ("client_cpu_us", "proxy_cpu_us", "success_rate", "round")}
                    for block in rounds
                ]
                for name, rounds in contenders.items()
            },
        }
    return modes


def _interval(spread: Mapping[str, Any]) -> str:
    return f"{spread['median']:.1f} µs [{spread['low']:.1f}, {spread['high']:.1f}]"


def _cpu_verdicts(healthy: Mapping[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for mode, phase in (healthy.get("cpu") or {}).items():
        check = f"healthy/{mode}: in-process added client CPU <= {CPU_RATIO} x cheapest sidecar hop"
        added = phase["added_client_cpu_us"].get(_IN_PROCESS)
        hops = phase["hop_cpu_us"]
        if added is None or not hops:
            results.append({"check": check, "pass": None, "detail": "needs bare httpx, in-process, a sidecar"})
            continue
        cheapest = min(hops, key=lambda name: hops[name]["median"])
        hop = hops[cheapest]
        low_limit, high_limit = CPU_RATIO * hop["low"], CPU_RATIO * hop["high"]
        outcome: bool | None = None
        if added["high"] <= low_limit:
            outcome = True
        elif added["low"] > high_limit:
            outcome = False
        control = phase["added_client_cpu_us"].get(_CONTROL)
        # The hop is the proxy's own CPU (as Istio counts a hop); what the client spends more to reach the proxy
        # than to reach the replicas directly is shown beside it, not added to it.
        client_side = phase["added_client_cpu_us"].get(cheapest)
        detail = (
            f"added {_interval(added)} vs {cheapest} hop {_interval(hop)}: limit {CPU_RATIO} x hop = "
            f"{CPU_RATIO * hop['median']:.1f} µs [{low_limit:.1f}, {high_limit:.1f}]"
        )
        if outcome is None:
            detail += "; inconclusive: the interval straddles the limit"
        if control is not None:
            detail += f"; control twin {_interval(control)} (noise floor)"
        if client_side is not None:
            detail += f"; {cheapest}'s client side {client_side['median']:+.1f} µs"
        detail += f"; {added['n']} paired rounds, {added['level']:.1%} intervals"
        results.append(
            {
                "check": check,
                "pass": outcome,
                "inconclusive": outcome is None,
                "detail": detail,
                "added_us": added,
                "cheapest_hop": cheapest,
                "cheapest_hop_us": hop,
                "noise_floor_us": control,
            }
        )
    return results


def verdicts(scenarios: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The checks the in-process stack is held to, computed from a run's scenario summaries.

    Returns:
        One entry per check: ``check`` (what is held), ``pass`` (``True``, ``False``, or ``None`` when the run
        lacks what the check needs, e.g. no sidecar ran, or when the CPU check is inconclusive, which its
        ``inconclusive`` says) and ``detail`` (the numbers).
    """
    results: list[dict[str, Any]] = []
    healthy = scenarios.get("healthy")
    if healthy is not None:
        results += _cpu_verdicts(healthy)
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
