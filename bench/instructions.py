"""Instructions: what each way of adding retries costs per request, counted by callgrind instead of timed.

CPU time on a shared 2-core machine wanders by 5-8 µs per request between runs, while the e2e budget (1.02x of a
350-600 µs request) leaves 7-12 µs. Instruction counts do not depend on what else the machine is doing, so they
complement :mod:`bench.e2e` with a deterministic measure of the same thing: the client's work per request.

Every contender of :mod:`bench._contenders`, with :class:`httpx.Client` (``sync``) and with
:class:`httpx.AsyncClient` on asyncio (``async``), runs in a client process of its own (:mod:`bench._ir_client`)
under ``valgrind --tool=callgrind``, against the e2e upstream (uvicorn in another process, not counted). After a
warm-up the client sends ``segments`` segments of ``requests`` sequential requests over one keep-alive connection.
A full garbage collection precedes every segment so each starts from the same collector state, and callgrind zeroes
its counters as a segment starts and dumps them as it ends. A segment's instructions (``Ir``), less what the
segment markers themselves cost, divided by its requests, is one sample; the reported value is a contender's median
sample. Everything outside the segments (interpreter start-up, imports, the warm-up) is never counted.
``PYTHONHASHSEED`` is fixed, so string hashing is the same in every run. ``httpx (control)``, a second bare client
in a process of its own, shows how far two identical contenders land apart: the noise floor of the run.

Targets: ``connectivity (full)`` and ``connectivity (+breaker)`` <= :data:`TARGET_RATIO` x bare httpx,
``connectivity (+balancer)`` <= :data:`BALANCED_TARGET_RATIO` x (``connectivity (defaults)``, with tracing and
request ids, is shown); ``connectivity (retry)`` cheaper than
httpx-retries (the same job: 3 attempts, no budget, no deadline); ``connectivity (full)`` cheaper than stamina.

``python -m bench.instructions [--contender NAME ...] [--mode sync|async] [--segments N] [--requests N]`` counts
a few contenders only (the baseline is always counted), for a quicker look while working on one layer; its JSON
goes to ``--results-dir`` (default: a file of its own, ``instructions-partial.json``, so a partial run never
replaces the full one).

valgrind is optional: without it (or when it cannot run Python here) the benchmark is skipped with a note, and
only ``--strict`` turns that into a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._contenders import (
    BALANCED_STACK,
    BARE,
    BREAKER_STACK,
    CONTENDERS,
    CONTROL,
    DESCRIPTIONS,
    FULL_STACK,
    HTTPX_RETRIES,
    RETRY_ONLY,
    STAMINA,
    available,
)
from bench._harness import machine_info, median, table, verdict, write_results
from bench._ir_client import DUMP_MARKER, MODES, WARMUP, ZERO_MARKER
from bench.e2e import BALANCED_TARGET_RATIO, TARGET_RATIO, upstream

__all__ = ["BALANCED_TARGET_RATIO", "FULL", "QUICK", "TARGET_RATIO", "Settings", "main", "run"]

_ROOT = Path(__file__).resolve().parent.parent
_RUN_TIMEOUT = 1800.0
"""Longest one callgrind process may take (a full one takes 15-25 s on an idle 2-core machine, ten minutes and more
on a busy one: counts do not depend on the machine's load, only the time does)."""
_PROBE_TIMEOUT = 60.0
_SUMMARY = re.compile(r"^summary:\s*(\d+)\s*$", re.MULTILINE)
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
_MODE_TITLES = {"sync": "httpx.Client", "async": "httpx.AsyncClient (asyncio)"}


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        requests: Requests per counted segment.
        segments: Counted segments per process (one sample each).
        processes: callgrind processes per contender and mode.
        modes: ``sync`` and/or ``async``.
        contenders: Which contenders to count (the baseline, ``httpx``, is always included).
        jobs: callgrind processes run at once (at most the usable CPUs).
    """

    requests: int
    segments: int
    processes: int = 1
    modes: tuple[str, ...] = MODES
    contenders: tuple[str, ...] = CONTENDERS
    jobs: int = 2


FULL = Settings(requests=100, segments=4)
QUICK = Settings(requests=20, segments=2, modes=("sync",), contenders=(BARE, FULL_STACK))


@dataclass
class _Run:
    """One callgrind process: a contender in a mode."""

    mode: str
    name: str
    segments_ir: list[int] = field(default_factory=list)
    marker_ir: int = 0
    collected_ir: int | None = None
    seconds: float = 0.0

    def result(self) -> dict[str, Any]:
        return {
            "segments_ir": self.segments_ir,
            "marker_ir": self.marker_ir,
            "collected_ir": self.collected_ir,
            "seconds": round(self.seconds, 1),
        }


# -- valgrind ---------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    return env


def _callgrind(valgrind: str, out_dir: Path, command: Sequence[str]) -> list[str]:
    return [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out_dir / 'callgrind.out'}",
        f"--log-file={out_dir / 'valgrind.log'}",
        f"--zero-before={ZERO_MARKER}",
        f"--dump-before={DUMP_MARKER}",
        *command,
    ]


def _dumps(out_dir: Path) -> list[int]:
    """The ``Ir`` of every numbered dump (``callgrind.out.1``, ``.2``, ...) in order."""
    numbered = sorted(out_dir.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    totals = []
    for path in numbered:
        match = _SUMMARY.search(path.read_text(encoding="utf-8", errors="replace"))
        if match is None:
            raise RuntimeError(f"no 'summary:' line in callgrind dump {path.name}")
        totals.append(int(match.group(1)))
    return totals


def _unusable(valgrind: str | None) -> str | None:
    """Why instructions cannot be counted here, or ``None`` when callgrind runs Python and sees the markers."""
    if valgrind is None:
        return "valgrind not found on PATH (install it, e.g. apt-get install valgrind, to count instructions)"
    probe = f"import os; os.{ZERO_MARKER}(); os.{DUMP_MARKER}()"
    with tempfile.TemporaryDirectory(prefix="bench-ir-") as directory:
        out_dir = Path(directory)
        try:
            completed = subprocess.run(
                _callgrind(valgrind, out_dir, [sys.executable, "-c", probe]),
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"valgrind could not run Python: {error}"
        if completed.returncode != 0:
            log = out_dir / "valgrind.log"
            tail = log.read_text(errors="replace")[-600:] if log.exists() else completed.stderr[-600:]
            return f"valgrind could not run Python (exit status {completed.returncode}):\n{tail}"
        try:
            dumps = len(_dumps(out_dir))
        except (OSError, RuntimeError, ValueError) as error:
            return f"callgrind's output could not be read: {error}"
        if dumps != 1:
            return f"callgrind did not see the libc functions {ZERO_MARKER}/{DUMP_MARKER} used as segment markers"
    return None


def _version(valgrind: str) -> str | None:
    try:
        completed = subprocess.run(
            [valgrind, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def _count(valgrind: str, url: str, settings: Settings, run: _Run) -> _Run:
    """Run one client process under callgrind and fill ``run`` with its counts."""
    command = [
        sys.executable,
        "-m",
        "bench._ir_client",
        url,
        run.mode,
        run.name,
        str(settings.requests),
        str(settings.segments),
    ]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ir-") as directory:
        out_dir = Path(directory)
        completed = subprocess.run(
            _callgrind(valgrind, out_dir, command),
            cwd=_ROOT,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=_RUN_TIMEOUT,
            check=False,
        )
        log = out_dir / "valgrind.log"
        log_text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if completed.returncode != 0:
            raise RuntimeError(
                f"{run.name} ({run.mode}) exited with status {completed.returncode}:\n"
                f"{completed.stderr[-1500:]}{log_text[-1500:]}"
            )
        dumps = _dumps(out_dir)
    if len(dumps) != settings.segments + 1:
        raise RuntimeError(
            f"{run.name} ({run.mode}): expected {settings.segments + 1} callgrind dumps, got "
            f"{len(dumps)} (is {ZERO_MARKER} or {DUMP_MARKER} called somewhere else?)"
        )
    run.marker_ir, run.segments_ir = dumps[0], dumps[1:]
    collected = _COLLECTED.search(log_text)
    run.collected_ir = int(collected.group(1)) if collected else None
    run.seconds = time.perf_counter() - began
    return run


# -- report -----------------------------------------------------------------------------------------------


def _summarise(runs: Sequence[_Run], names: Sequence[str], requests: int) -> dict[str, Any]:
    contenders: dict[str, Any] = {}
    for name in names:
        own = [run for run in runs if run.name == name]
        samples = [(ir - run.marker_ir) / requests for run in own for ir in run.segments_ir]
        contenders[name] = {
            "ir_per_request": round(median(samples)),
            "ir_min_max": [round(min(samples)), round(max(samples))],
            "processes": [run.result() for run in own],
        }
    bare = contenders[BARE]["ir_per_request"]
    for summary in contenders.values():
        summary["added_vs_httpx"] = summary["ir_per_request"] - bare
        summary["ratio_vs_httpx"] = round(summary["ir_per_request"] / bare, 4)

    def cost(name: str) -> int:
        value: int = contenders[name]["ir_per_request"]
        return value

    checks: dict[str, bool] = {}
    for name in (FULL_STACK, BREAKER_STACK):
        if name in contenders:
            checks[f"{name} <= {TARGET_RATIO}x {BARE}"] = cost(name) <= TARGET_RATIO * bare
    if BALANCED_STACK in contenders:
        checks[f"{BALANCED_STACK} <= {BALANCED_TARGET_RATIO}x {BARE}"] = (
            cost(BALANCED_STACK) <= BALANCED_TARGET_RATIO * bare
        )
    if RETRY_ONLY in contenders and HTTPX_RETRIES in contenders:
        checks[f"{RETRY_ONLY} < {HTTPX_RETRIES} (same job)"] = cost(RETRY_ONLY) < cost(HTTPX_RETRIES)
    if FULL_STACK in contenders and STAMINA in contenders:
        checks[f"{FULL_STACK} < {STAMINA}"] = cost(FULL_STACK) < cost(STAMINA)
    result: dict[str, Any] = {"contenders": contenders, "checks": checks, "pass": all(checks.values())}
    if CONTROL in contenders:
        result["noise_floor"] = abs(contenders[CONTROL]["added_vs_httpx"])
    return result


def _print_mode(mode: str, result: dict[str, Any]) -> None:
    rows = []
    for name, summary in result["contenders"].items():
        low, high = summary["ir_min_max"]
        rows.append(
            [
                name,
                f"{summary['ir_per_request']:,}",
                f"{low:,}-{high:,}",
                f"{summary['ratio_vs_httpx']:.4f}x",
                f"{summary['added_vs_httpx']:+,}",
            ]
        )
    print(f"\n{_MODE_TITLES[mode]}")
    print(table(["contender", "instructions/req", "segments min-max", "vs httpx", "added/req"], rows))
    if "noise_floor" in result:
        print(f"noise floor in this run (httpx vs its control twin): {result['noise_floor']:,} instructions/req")
    for check, ok in result["checks"].items():
        print(f"{verdict(ok)}  instructions {mode}: {check}")


def _unmeasured(
    quick: bool,
    results_dir: Path | None,
    began: float,
    *,
    skipped: str | None = None,
    error: str | None = None,
    name: str = "instructions",
) -> dict[str, Any]:
    """Write the results of a run that counted nothing: skipped (no usable valgrind) or failed (``error``)."""
    print(f"instructions: SKIPPED: {skipped}" if skipped else f"instructions: ERROR: {error}")
    payload: dict[str, Any] = {
        "benchmark": "instructions",
        "quick": quick,
        "skipped": skipped,
        "error": error,
        "target_ratio": TARGET_RATIO,
        "balanced_target_ratio": BALANCED_TARGET_RATIO,
        "machine": machine_info(),
        "modes": {},
        "pass": error is None,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    path = write_results(name, payload, results_dir)
    print(f"results: {path}")
    return payload


def run(
    *,
    quick: bool = False,
    segments: int | None = None,
    requests: int | None = None,
    results_dir: Path | None = None,
    settings: Settings | None = None,
    name: str = "instructions",
) -> dict[str, Any]:
    """Count instructions per request, print the tables and verdicts, and write ``instructions.json``.

    Args:
        quick: Sync only, bare httpx and the full stack, two short segments each (a smoke run).
        segments: Override the counted segments per process.
        requests: Override the requests per segment.
        results_dir: Where to write the JSON (default ``bench/results/``).
        settings: Start from these settings instead of :data:`FULL` / :data:`QUICK`.
        name: The results file's name (``<name>.json``).

    Returns:
        The results, as written to the JSON file. When valgrind is missing or cannot run Python here, ``skipped``
        holds the reason and ``pass`` is true (``python -m bench --strict`` counts a skip as a miss). When a client
        process fails or callgrind's output is not as expected, ``error`` says what happened and ``pass`` is false.
    """
    began = time.perf_counter()
    base = settings if settings is not None else (QUICK if quick else FULL)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = Settings(
        requests=requests or base.requests,
        segments=segments or base.segments,
        processes=base.processes,
        modes=base.modes,
        contenders=tuple(name for name in CONTENDERS if name == BARE or name in base.contenders),
        jobs=max(1, min(base.jobs, usable)),
    )
    valgrind = shutil.which("valgrind")
    reason = _unusable(valgrind)
    if reason is not None:
        return _unmeasured(quick, results_dir, began, skipped=reason, name=name)
    assert valgrind is not None
    missing = [name for name in settings.contenders if not available(name)]
    names = [name for name in settings.contenders if name not in missing]
    print(
        f"instructions: callgrind Ir per request, {settings.segments} segments x {settings.requests} sequential "
        f"GETs after {WARMUP} warm-up requests, {settings.processes} process(es) per contender and mode, "
        f"{settings.jobs} at a time; upstream: uvicorn on 127.0.0.1 (not counted)"
    )
    if missing:
        print(f"not installed, left out: {', '.join(missing)}")
    # The async processes are the longer ones: start them first.
    runs = [
        _Run(mode, name) for _ in range(settings.processes) for mode in sorted(settings.modes) for name in names
    ]
    try:
        with upstream() as url, ThreadPoolExecutor(max_workers=settings.jobs) as pool:
            done = list(pool.map(lambda one: _count(valgrind, url, settings, one), runs))
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as failure:
        return _unmeasured(quick, results_dir, began, error=str(failure), name=name)
    modes: dict[str, Any] = {}
    for mode in settings.modes:
        modes[mode] = _summarise([one for one in done if one.mode == mode], names, settings.requests)
        _print_mode(mode, modes[mode])
    payload: dict[str, Any] = {
        "benchmark": "instructions",
        "quick": quick,
        "skipped": None,
        "error": None,
        "target_ratio": TARGET_RATIO,
        "balanced_target_ratio": BALANCED_TARGET_RATIO,
        "config": {
            "tool": f"valgrind --tool=callgrind --zero-before={ZERO_MARKER} --dump-before={DUMP_MARKER}",
            "valgrind": _version(valgrind),
            "warmup_requests": WARMUP,
            "requests_per_segment": settings.requests,
            "segments_per_process": settings.segments,
            "processes_per_contender": settings.processes,
            "parallel_processes": settings.jobs,
            "method": "one process per contender and mode; per request = (segment Ir - marker-only segment Ir) "
            "/ requests; median over segments; gc.collect() before every segment; PYTHONHASHSEED=0",
            "collected_ir": "callgrind's 'Collected' total of a process: what was not zeroed at a segment start",
            "upstream": "uvicorn (h11, asyncio) in a child process, pure ASGI 200 'ok', not under valgrind",
            "contenders": {name: DESCRIPTIONS[name] for name in names},
            "left_out": missing,
        },
        "machine": machine_info(),
        "modes": modes,
        "pass": all(mode["pass"] for mode in modes.values()),
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    path = write_results(name, payload, results_dir)
    print(f"elapsed: {payload['elapsed_s']:.0f} s")
    print(f"results: {path}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.instructions``: count chosen contenders only; returns 0, or 1 when a target is missed."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description="Count a few contenders' instructions per request (the baseline, httpx, is always counted).",
    )
    parser.add_argument(
        "--contender",
        action="append",
        choices=CONTENDERS,
        help="a contender to count (repeat for more; default: all)",
    )
    parser.add_argument("--mode", action="append", choices=MODES, help="sync and/or async (default: both)")
    parser.add_argument("--segments", type=int, help=f"counted segments per process (default {FULL.segments})")
    parser.add_argument("--requests", type=int, help=f"requests per segment (default {FULL.requests})")
    parser.add_argument("--results-dir", type=Path, help="where to write instructions-partial.json")
    args = parser.parse_args(argv)
    if (args.segments is not None and args.segments < 1) or (args.requests is not None and args.requests < 1):
        parser.error("--segments and --requests must be at least 1")
    settings = Settings(
        requests=args.requests or FULL.requests,
        segments=args.segments or FULL.segments,
        modes=tuple(args.mode or MODES),
        contenders=tuple(args.contender or CONTENDERS),
    )
    result = run(settings=settings, results_dir=args.results_dir, name="instructions-partial")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
