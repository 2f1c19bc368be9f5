"""``connectivity compare``: the same policy scenarios in-process and through nginx, HAProxy and Caddy sidecars.

Starts a fleet of upstream replicas on ``127.0.0.1`` and, for each scenario (healthy, one replica answering 503s,
one slow, one down, 429 with ``Retry-After``, a burst above the rate limit, mutual TLS to the replicas), drives
the same bounded schedule (open loop at a fixed rate, closed loop at a fixed concurrency) through bare httpx, the
in-process stack and bare httpx through each sidecar available, then the CPU phase behind the CPU verdict.
Shows a live progress display, prints a table per scenario and the verdicts, and writes ``compare.json``
(default ``bench/results/``), ``report.md`` and the PNG plots. A proxy whose binary is missing is skipped with a
message. Every process started is stopped at the end, on failure and
on Ctrl-C (exit status 130). The work is done by :mod:`connectivity.compare.runner`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["HELP", "configure", "run"]

HELP = "in-process policies vs nginx / HAProxy / Caddy sidecars on loopback: same scenarios, side by side"

_RESULTS = Path("bench/results")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the comparison's options."""
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds of few requests (< 3 min)")
    parser.add_argument("--rounds", type=_positive_int, metavar="N", help="rounds per scenario")
    parser.add_argument("--requests", type=_positive_int, metavar="N", help="requests per contender, mode, round")
    parser.add_argument("--rate", type=_positive_float, metavar="RPS", help="open-loop rate (default: 200)")
    parser.add_argument("--concurrency", type=_positive_int, metavar="N", help="closed-loop workers (default: 8)")
    parser.add_argument("--warmup", type=int, metavar="N", help="warm-up requests per contender and scenario")
    parser.add_argument(
        "--cpu-pairs", type=_non_negative_int, metavar="N", help="rounds of the CPU phase (0: none)"
    )
    parser.add_argument("--cpu-requests", type=_positive_int, metavar="N", help="requests per CPU-phase block")
    parser.add_argument("--scenarios", type=_names, default=(), metavar="A,B", help="scenarios to run (all)")
    parser.add_argument(
        "--contenders", type=_names, default=(), metavar="A,B", help="httpx,connectivity,nginx,haproxy,caddy (all)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the replicas' faults (default: 1)")
    parser.add_argument(
        "--results-dir", type=Path, default=_RESULTS, metavar="DIR", help="where compare.json goes (bench/results)"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help="where report.md and the plots go (default: RESULTS_DIR/compare)",
    )


def _progress(console: Console) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    display = Progress(
        TextColumn("{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )

    class _Live:
        task: Any = None

        def start(self, total: int) -> None:
            self.task = display.add_task("starting", total=total)

        def block(self, description: str) -> None:
            display.update(self.task, advance=1, description=description)

        def note(self, message: str) -> None:
            console.print(f"[dim]{message}[/dim]", highlight=False)

    return display, _Live()


def run(args: argparse.Namespace) -> int:
    """``connectivity compare``: 0 when the run completed, 1 when an extra is missing, 130 on Ctrl-C."""
    try:
        import rich  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(
            f"connectivity compare needs the 'compare' extra ({exc.name} is missing): "
            "pip install 'connectivity-sdk[compare]'",
            file=sys.stderr,
        )
        return 1
    from rich.console import Console

    from connectivity.compare import report, runner
    from connectivity.errors import ConfigError

    base = runner.QUICK if args.quick else runner.FULL
    overrides = {
        key: value
        for key, value in (
            ("rounds", args.rounds),
            ("requests", args.requests),
            ("rate", args.rate),
            ("concurrency", args.concurrency),
            ("warmup", args.warmup),
            ("cpu_pairs", args.cpu_pairs),
            ("cpu_requests", args.cpu_requests),
        )
        if value is not None
    }
    settings = replace(base, scenarios=args.scenarios, seed=args.seed, **overrides)
    console = Console()
    display, live = _progress(console)
    console.print(
        f"[bold]connectivity compare[/bold]{' --quick' if args.quick else ''}: {settings.rounds} rounds x "
        f"{settings.requests} requests per contender and mode, open loop at {settings.rate:g}/s and closed loop "
        f"x{settings.concurrency}, upstream replicas and sidecars on 127.0.0.1"
    )
    try:
        with display:
            results = runner.run(settings, progress=live, contenders=args.contenders)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every replica and sidecar was stopped[/yellow]")
        return 130
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    for table in report.rich_tables(results):
        console.print(table)
    json_path = report.write_json(results, args.results_dir / "compare.json")
    report_dir = args.report_dir if args.report_dir is not None else args.results_dir / "compare"
    plots = report.plot(results, report_dir)
    if not plots:
        console.print("plots skipped: matplotlib is not installed (pip install 'connectivity-sdk[compare]')")
    markdown = report_dir / "report.md"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(report.markdown(results, plots, report_dir), encoding="utf-8")
    console.print(f"results: {json_path}\nreport: {markdown}" + "".join(f"\nplot: {path}" for path in plots))
    console.print(f"took {results['elapsed_s']} s")
    return 0
