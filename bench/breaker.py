"""Breaker: CPU a closed circuit breaker adds to one call, connectivity against pybreaker.

Every contender calls the same trivial function ``f()`` (it returns 1), so what differs is the breaker's decision:

* ``bare``: ``f()``, the baseline;
* ``connectivity (time)``: ``t = circuit.admit(); f(); circuit.record(t, SUCCESS)`` on the default
  ``CircuitBreaker()`` (a 30 s time window: ``record`` reads the system clock);
* ``connectivity (count)``: the same on ``CircuitBreaker(window_type="count", window=100)``;
* ``pybreaker call()``: ``breaker.call(f)`` on ``pybreaker.CircuitBreaker()``;
* ``pybreaker calling()``: ``with breaker.calling(): f()`` (when this pybreaker has it).

Every breaker stays closed (every call succeeds); a run that sees one open is refused. Each round times ``calls``
calls per contender with :func:`time.process_time_ns`, the contenders taking turns every ``block`` calls (see
:func:`bench._harness.schedule`); reported values are medians over the rounds. A contender's *overhead* is its cost
per call minus bare ``f()``'s. The target: connectivity's closed-state decision costs at most
:data:`TARGET_RATIO` x pybreaker ``call()``'s overhead, for both window types.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._harness import cpu_rounds, machine_info, median, publish, table, verdict, version
from connectivity.policies.breaker import CLOSED, SUCCESS, Circuit, CircuitBreaker

__all__ = ["FULL", "QUICK", "TARGET_RATIO", "Settings", "run"]

TARGET_RATIO = 0.2
"""Most connectivity's closed-state overhead may be, as a fraction of pybreaker ``call()``'s overhead."""

BARE = "bare"
TIME = "connectivity (time)"
COUNT = "connectivity (count)"
CALL = "pybreaker call()"
CALLING = "pybreaker calling()"
_OURS = (TIME, COUNT)

Timer = Callable[[int], int]
"""Runs ``n`` calls and returns the CPU nanoseconds they took."""


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        calls: Calls per contender per round.
        rounds: Measured rounds (the reported value is the median over them).
        warmup: Untimed calls per contender before the first round.
        block: Calls a contender makes before handing over to the next.
    """

    calls: int
    rounds: int
    warmup: int
    block: int = 10_000


FULL = Settings(calls=100_000, rounds=7, warmup=10_000)
QUICK = Settings(calls=5_000, rounds=3, warmup=1_000, block=1_000)


def f() -> int:
    """The protected call: as cheap as a call gets, so the breaker's cost is all that differs."""
    return 1


def _bare() -> Timer:
    def timed(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            f()
        return time.process_time_ns() - start

    return timed


def _connectivity(circuit: Circuit) -> Timer:
    def timed(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            t = circuit.admit()
            f()
            circuit.record(t, SUCCESS)  # type: ignore[arg-type]  # closed: always a ticket (checked after)
        return time.process_time_ns() - start

    return timed


def _pybreaker_call(breaker: Any) -> Timer:
    def timed(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            breaker.call(f)
        return time.process_time_ns() - start

    return timed


def _pybreaker_calling(breaker: Any) -> Timer:
    def timed(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            with breaker.calling():
                f()
        return time.process_time_ns() - start

    return timed


def _pybreaker_version() -> str | None:
    return version("pybreaker")


def _contenders() -> tuple[dict[str, Timer], list[Callable[[], bool]], list[str]]:
    """The timers, checks that every breaker is still closed, and notes on contenders left out."""
    import pybreaker

    time_circuit = CircuitBreaker(name="bench-time").circuit()
    count_circuit = CircuitBreaker(name="bench-count", window_type="count", window=100).circuit()
    call_breaker = pybreaker.CircuitBreaker()
    timers: dict[str, Timer] = {
        BARE: _bare(),
        TIME: _connectivity(time_circuit),
        COUNT: _connectivity(count_circuit),
        CALL: _pybreaker_call(call_breaker),
    }
    checks: list[Callable[[], bool]] = [
        lambda: time_circuit.state == CLOSED and time_circuit.window_counts()[1] == 0,
        lambda: count_circuit.state == CLOSED and count_circuit.window_counts() == (100, 0, 0),
        lambda: call_breaker.current_state == pybreaker.STATE_CLOSED,
    ]
    notes: list[str] = []
    if hasattr(pybreaker.CircuitBreaker, "calling"):
        calling_breaker = pybreaker.CircuitBreaker()
        timers[CALLING] = _pybreaker_calling(calling_breaker)
        checks.append(lambda: calling_breaker.current_state == pybreaker.STATE_CLOSED)
    else:
        notes.append(f"{CALLING}: this pybreaker has no CircuitBreaker.calling()")
    return timers, checks, notes


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def _summarise(rounds: dict[str, list[float]]) -> dict[str, Any]:
    bare = rounds[BARE]
    bare_median = median(bare)
    contenders = {
        name: {
            "rounds_ns_per_call": [round(value, 1) for value in values],
            "median_ns_per_call": round(median(values), 1),
            "overhead_ns": round(median(values) - bare_median, 1),
        }
        for name, values in rounds.items()
    }
    theirs = rounds[CALL]
    theirs_overhead = median(theirs) - bare_median
    comparisons: dict[str, dict[str, Any]] = {}
    for name in _OURS:
        ours = rounds[name]
        overhead_ratio = _ratio(median(ours) - bare_median, theirs_overhead)
        paired = [
            _ratio(o - b, t - b) for o, t, b in zip(ours, theirs, bare, strict=True) if t - b > 0
        ]  # per round: the contenders of one round ran interleaved, under the same conditions
        comparisons[f"{name} vs {CALL}"] = {
            "ratio": _ratio(median(ours), median(theirs)),
            "overhead_ratio": overhead_ratio,
            "overhead_ratio_paired_median": median([p for p in paired if p is not None]) if paired else None,
            "target_overhead_ratio": TARGET_RATIO,
            "pass": overhead_ratio is not None and overhead_ratio <= TARGET_RATIO,
        }
    return {"contenders": contenders, "comparisons": comparisons}


def _skipped(
    quick: bool, settings: Settings, reason: str, began: float, results_dir: Path | None
) -> dict[str, Any]:
    print(f"SKIPPED  breaker: {reason}")
    payload: dict[str, Any] = {
        "benchmark": "breaker",
        "quick": quick,
        "target_ratio": TARGET_RATIO,
        "config": {"calls_per_round": settings.calls, "rounds": settings.rounds},
        "machine": machine_info(),
        "contenders": {},
        "comparisons": {},
        "skipped": reason,
        "pass": True,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("breaker", payload, results_dir)


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    calls: int | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the breaker benchmark, print its table and verdicts, and write ``breaker.json``.

    Args:
        quick: Few rounds of few calls (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds.
        calls: Override the calls per contender per round.
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.
    """
    base = QUICK if quick else FULL
    settings = Settings(
        calls=calls or base.calls,
        rounds=rounds or base.rounds,
        warmup=min(base.warmup, calls or base.warmup),
        block=min(base.block, calls or base.block),
    )
    began = time.perf_counter()
    installed = _pybreaker_version()
    if installed is None:
        return _skipped(quick, settings, "pybreaker is not installed", began, results_dir)
    timers, checks, notes = _contenders()
    print(
        f"breaker: a closed breaker around f() (returns 1), connectivity against pybreaker {installed}; "
        f"{settings.rounds} rounds x {settings.calls} calls per contender, taking turns every {settings.block} "
        "calls; CPU time (process_time)"
    )
    result = _summarise(
        cpu_rounds(
            timers, count=settings.calls, rounds=settings.rounds, block=settings.block, warmup=settings.warmup
        )
    )
    if not all(check() for check in checks):
        raise RuntimeError("a breaker left the closed state: the benchmark timed something else")

    contenders = result["contenders"]
    call_overhead = contenders[CALL]["overhead_ns"]
    rows = [
        [
            name,
            f"{summary['median_ns_per_call']:.0f}",
            f"{summary['overhead_ns']:.0f}",
            f"{summary['median_ns_per_call'] / contenders[CALL]['median_ns_per_call']:.2f}x",
            f"{summary['overhead_ns'] / call_overhead:.2f}x" if call_overhead > 0 else "-",
        ]
        for name, summary in contenders.items()
    ]
    print(table(["contender", "ns/call", "overhead ns", f"vs {CALL}", f"overhead vs {CALL}'s"], rows))
    for note in notes:
        print(f"note: {note}")
    for name, comparison in result["comparisons"].items():
        ratio = comparison["overhead_ratio"]
        shown = "n/a" if ratio is None else f"{ratio:.3f}x"
        print(
            f"{verdict(comparison['pass'])}  breaker {name}: overhead {shown} "
            f"(per-call cost {comparison['ratio']}x; target overhead <= {TARGET_RATIO:g}x)"
        )
    payload: dict[str, Any] = {
        "benchmark": "breaker",
        "quick": quick,
        "target_ratio": TARGET_RATIO,
        "config": {
            "function": "def f(): return 1",
            "contenders": {
                BARE: "f()",
                TIME: "t = circuit.admit(); f(); circuit.record(t, SUCCESS) on CircuitBreaker() (30 s window)",
                COUNT: 'the same on CircuitBreaker(window_type="count", window=100)',
                CALL: "pybreaker.CircuitBreaker().call(f)",
                CALLING: "with pybreaker.CircuitBreaker().calling(): f()",
            },
            "notes": notes,
            "calls_per_round": settings.calls,
            "rounds": settings.rounds,
            "warmup_calls": settings.warmup,
            "block_calls": settings.block,
            "timer": "time.process_time_ns",
            "order": "contenders alternate every block of calls; the order rotates every block and round",
        },
        "machine": machine_info({"pybreaker": installed}),
        **result,
        "skipped": None,
        "pass": all(comparison["pass"] for comparison in result["comparisons"].values()),
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("breaker", payload, results_dir)
