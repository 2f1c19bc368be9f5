"""``python -m bench [overhead|breaker|ratelimit|inbound|auth|e2e|tracing|instructions|backends|balancing|mirror
|all]``; JSON: bench/results/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import (
    auth,
    backends,
    balancing,
    breaker,
    e2e,
    inbound,
    instructions,
    mirror,
    overhead,
    ratelimit,
    tracing,
)

_BENCHMARKS = (
    "overhead",
    "breaker",
    "ratelimit",
    "inbound",
    "auth",
    "e2e",
    "tracing",
    "instructions",
    "backends",
    "balancing",
    "mirror",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks: connectivity's overhead over bare httpx and over peer libraries, in CPU time and "
        "in instructions.",
    )
    parser.add_argument(
        "benchmark",
        nargs="?",
        choices=(*_BENCHMARKS, "all"),
        default="all",
        help="which benchmark to run (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: few rounds, few requests")
    parser.add_argument(
        "--rounds", type=int, help="override the number of measured rounds (instructions: segments per process)"
    )
    parser.add_argument(
        "--count",
        type=int,
        help="override calls (overhead) / requests (e2e, inbound) per round, requests per segment (instructions), "
        "requests per concurrency per round (backends; half at c=1), request pairs per mode per round (mirror)",
    )
    parser.add_argument(
        "--processes", type=int, help="e2e: client processes per client kind, each running --rounds rounds"
    )
    parser.add_argument("--no-trio", action="store_true", help="skip the trio measurements")
    parser.add_argument(
        "--results-dir", type=Path, help="where to write <benchmark>.json (default: bench/results/)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a target is missed or a benchmark is skipped (no valgrind: instructions; "
        "no nginx: backends)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; returns the exit status."""
    args = _parser().parse_args(argv)
    chosen = _BENCHMARKS if args.benchmark == "all" else (args.benchmark,)
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.count is not None and args.count < 1:
        raise SystemExit("--count must be at least 1")
    results: list[dict[str, Any]] = []
    for name in chosen:
        if results:
            print()
        if name == "overhead":
            results.append(
                overhead.run(
                    quick=args.quick,
                    rounds=args.rounds,
                    calls=args.count,
                    trio=not args.no_trio,
                    results_dir=args.results_dir,
                )
            )
        elif name == "e2e":
            results.append(
                e2e.run(
                    quick=args.quick,
                    rounds=args.rounds,
                    requests=args.count,
                    processes=args.processes,
                    results_dir=args.results_dir,
                )
            )
        elif name == "breaker":
            results.append(
                breaker.run(quick=args.quick, rounds=args.rounds, calls=args.count, results_dir=args.results_dir)
            )
        elif name == "ratelimit":
            results.append(
                ratelimit.run(quick=args.quick, rounds=args.rounds, calls=args.count, results_dir=args.results_dir)
            )
        elif name == "inbound":
            results.append(
                inbound.run(
                    quick=args.quick, rounds=args.rounds, requests=args.count, results_dir=args.results_dir
                )
            )
        elif name == "auth":
            results.append(
                auth.run(quick=args.quick, rounds=args.rounds, requests=args.count, results_dir=args.results_dir)
            )
        elif name == "tracing":
            results.append(
                tracing.run(
                    quick=args.quick, rounds=args.rounds, requests=args.count, results_dir=args.results_dir
                )
            )
        elif name == "balancing":
            results.append(
                balancing.run(
                    quick=args.quick, rounds=args.rounds, requests=args.count, results_dir=args.results_dir
                )
            )
        elif name == "mirror":
            results.append(
                mirror.run(quick=args.quick, rounds=args.rounds, requests=args.count, results_dir=args.results_dir)
            )
        elif name == "backends":
            results.append(
                backends.run(
                    quick=args.quick, rounds=args.rounds, requests=args.count, results_dir=args.results_dir
                )
            )
        else:
            results.append(
                instructions.run(
                    quick=args.quick,
                    segments=args.rounds,
                    requests=args.count,
                    results_dir=args.results_dir,
                )
            )
    missed = [result["benchmark"] for result in results if not result["pass"]]
    skipped = [result["benchmark"] for result in results if result.get("skipped")]
    if missed:
        print(f"\ntargets missed in: {', '.join(missed)}")
    if skipped:
        print(f"\nskipped: {', '.join(skipped)}" + (" (a failure under --strict)" if args.strict else ""))
    return 1 if args.strict and (missed or skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
