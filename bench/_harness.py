"""What every benchmark shares: round order, CPU pinning, statistics, machine facts, tables and the JSON results
file."""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from connectivity.compare.drive import percentile  # one implementation: the library's (compare ships it)

__all__ = [
    "RESULTS_DIR",
    "cpu_rounds",
    "machine_info",
    "median",
    "percentile",
    "pinned",
    "pinning",
    "publish",
    "schedule",
    "table",
    "verdict",
    "version",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where results go by default (``bench/results/``; ignored by git)."""

_PACKAGES = (
    "connectivity-sdk",
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "h11",
    "anyio",
    "sniffio",
    "trio",
    "uvicorn",
    "httpx-retries",
    "stamina",
    "tenacity",
)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def schedule(names: Sequence[str], count: int, block: int, round_index: int) -> Iterator[tuple[str, int]]:
    """The order of work in one round: ``(contender, items)`` pairs, ``count`` items per contender in all.

    Contenders take turns in blocks of ``block`` items, and the order of the turn rotates every block (and every
    round), so each contender runs in every position equally often. Interleaving this finely means a burst of
    noise (another process on the machine, a frequency change) lands on every contender alike instead of
    spoiling one contender's whole round.
    """
    sizes = [block] * (count // block) + ([count % block] if count % block else [])
    for index, size in enumerate(sizes):
        shift = (round_index + index) % len(names)
        for name in (*names[shift:], *names[:shift]):
            yield name, size


def cpu_rounds(
    timers: Mapping[str, Callable[[int], int]], *, count: int, rounds: int, block: int, warmup: int
) -> dict[str, list[float]]:
    """CPU nanoseconds per item, one value per round, by contender.

    Args:
        timers: Contender name -> a timer that does ``n`` items and returns the CPU nanoseconds they took.
        count: Items per contender per round.
        rounds: Measured rounds.
        block: Items a contender does before handing over to the next (see :func:`schedule`).
        warmup: Untimed items per contender before the first round.
    """
    names = list(timers)
    for timer in timers.values():
        timer(warmup)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        spent = dict.fromkeys(names, 0)
        gc.collect()
        for name, size in schedule(names, count, block, index):
            spent[name] += timers[name](size)
        for name in names:
            measured[name].append(spent[name] / count)
    return measured


def pinning() -> tuple[int | None, int | None]:
    """CPUs for (client, server): two different ones when at least two are usable, else no pinning."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return usable[0], usable[1]


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Pin this process to ``cpu`` for the block (``None``: leave it be), then give it back its CPUs."""
    previous = os.sched_getaffinity(0) if cpu is not None else None
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        yield
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Facts needed to compare two result files: CPUs, Python, OS and the versions of the packages involved."""
    versions = {name: version(name) for name in _PACKAGES}
    if versions["connectivity-sdk"] is None:
        # Run from a source tree (PYTHONPATH=src) rather than an installed distribution.
        import connectivity

        versions["connectivity-sdk"] = f"{connectivity.__version__} (source tree)"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        info.update(extra)
    return info


def write_results(name: str, payload: Mapping[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``payload`` as ``<results_dir>/<name>.json`` (default ``bench/results/``) and return the path."""
    directory = results_dir if results_dir is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def publish(name: str, payload: dict[str, Any], results_dir: Path | None = None) -> dict[str, Any]:
    """Write ``payload`` as ``<name>.json`` (see :func:`write_results`), print where, and return it."""
    print(f"results: {write_results(name, payload, results_dir)}")
    return payload


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1) -> str:
    """A plain-text table for any CI log: the first ``left`` columns left-aligned, the rest right-aligned."""
    body = [list(map(str, row)) for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *body, strict=False)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if index < left else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(list(headers)), rule, *(line(row) for row in body)])


def verdict(ok: bool) -> str:
    """``PASS`` or ``FAIL``."""
    return "PASS" if ok else "FAIL"
