"""What a comparison run leaves behind: a terminal table, ``compare.json``, PNG plots and a Markdown report.

The plots need matplotlib (the ``compare`` extra), imported only here and only when plotting: without it the
report is written without plots, and says so.

* ``latency.png``: one panel per scenario and load mode, p50 / p90 / p99 latency per contender (log scale; the
  bar is the median over rounds, the whisker its range).
* ``cpu.png``: per scenario, CPU per request: the client's (this process) and the sidecar's, stacked.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot", "rich_tables", "write_json"]

_QUANTILES = ("p50_ms", "p90_ms", "p99_ms")


def _median(summary: Mapping[str, Any], measure: str) -> float | None:
    spread = summary.get(measure)
    return None if spread is None else float(spread["median"])


def _range(summary: Mapping[str, Any], measure: str, fmt: str, scale: float = 1.0) -> str:
    spread = summary.get(measure)
    if spread is None:
        return "-"
    median = format(spread["median"] * scale, fmt)
    if spread["min"] == spread["max"]:
        return median
    return f"{median} ({format(spread['min'] * scale, fmt)}-{format(spread['max'] * scale, fmt)})"


def _row(name: str, summary: Mapping[str, Any], silent: Sequence[str] = ()) -> list[str]:
    events = summary.get("events") or {}
    shown = ", ".join(f"{key.removeprefix('connectivity.')} {count}" for key, count in list(events.items())[:3])
    return [
        name,
        _range(summary, "success_rate", ".1f", 100),
        _range(summary, "p50_ms", ".1f"),
        _range(summary, "p90_ms", ".1f"),
        _range(summary, "p99_ms", ".1f"),
        _range(summary, "max_ms", ".0f"),
        _range(summary, "client_cpu_us", ".0f"),
        _range(summary, "proxy_cpu_us", ".0f"),
        _range(summary, "proxy_rss_mb", ".1f"),
        _range(summary, "upstream_per_request", ".2f"),
        shown or ("not reported" if name in silent else "-"),
    ]


HEADERS = (
    "contender",
    "success %",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "client CPU µs/req",
    "proxy CPU µs/req",
    "proxy RSS MB",
    "upstream req/req",
    "policy events",
)
"""Columns of the per-scenario tables (values: median over rounds, then the range)."""


_TERMINAL = (
    ("ok %", "success_rate", ".1f", 100.0),
    ("p50", "p50_ms", ".1f", 1.0),
    ("p90", "p90_ms", ".1f", 1.0),
    ("p99", "p99_ms", ".1f", 1.0),
    ("max", "max_ms", ".0f", 1.0),
    ("cli µs", "client_cpu_us", ".0f", 1.0),
    ("pxy µs", "proxy_cpu_us", ".0f", 1.0),
    ("RSS MB", "proxy_rss_mb", ".0f", 1.0),
    ("up/req", "upstream_per_request", ".2f", 1.0),
)


def rich_tables(results: Mapping[str, Any]) -> list[Any]:
    """One :class:`rich.table.Table` per scenario and mode (medians only, to fit a terminal: the ranges are in
    the Markdown report), then one of the verdicts."""
    from rich.table import Table

    tables: list[Any] = []
    for name, scenario in results["scenarios"].items():
        for mode, contenders in scenario["modes"].items():
            table = Table(
                title=f"{name} ({mode} loop): {scenario['title']}; latency ms, CPU µs/request, medians",
                title_justify="left",
                pad_edge=False,
            )
            table.add_column("contender", no_wrap=True)
            for header, *_ in _TERMINAL:
                table.add_column(header, justify="right", no_wrap=True)
            for contender, summary in contenders.items():
                cells = []
                for _, measure, fmt, scale in _TERMINAL:
                    value = _median(summary, measure)
                    cells.append("-" if value is None else format(value * scale, fmt))
                table.add_row(contender, *cells)
            tables.append(table)
    verdicts = Table(title="verdicts", title_justify="left")
    for header in ("", "check", "numbers"):
        verdicts.add_column(header)
    for verdict in results.get("verdicts", []):
        verdicts.add_row(_word(verdict), verdict["check"], verdict["detail"])
    tables.append(verdicts)
    return tables


def _word(verdict: Mapping[str, Any]) -> str:
    ok = verdict["pass"]
    if ok is None:
        return "inconclusive" if verdict.get("inconclusive") else "n/a"
    return "PASS" if ok else "FAIL"


def _cpu_phase(results: Mapping[str, Any]) -> list[str]:
    """The CPU phase as Markdown: per mode, each contender's client CPU, added CPU (paired) and hop cost."""
    healthy = results["scenarios"].get("healthy") or {}
    phase = healthy.get("cpu")
    if not phase:
        return []
    settings = results["settings"]
    lines = [
        "## CPU phase (healthy scenario)",
        "",
        f"{settings.get('cpu_pairs')} rounds x {settings.get('cpu_requests')} requests per contender and mode, "
        "every contender once per round in a shuffled order, each block from a fresh connection pool. Medians "
        "over rounds, with a distribution-free 95 % confidence interval for the median in brackets; *added* is "
        "paired per round (the contender's client CPU minus bare httpx's in the same round).",
        "",
    ]

    def cell(spread: Mapping[str, Any] | None) -> str:
        if spread is None:
            return "-"
        return f"{spread['median']:.1f} [{spread['low']:.1f}, {spread['high']:.1f}]"

    for mode, figures in phase.items():
        rows = [
            [
                name,
                cell(spread),
                cell(figures["added_client_cpu_us"].get(name)),
                cell(figures["hop_cpu_us"].get(name)),
            ]
            for name, spread in figures["client_cpu_us"].items()
        ]
        lines += [f"**{mode} loop**", ""]
        lines += [_table(["contender", "client CPU µs/req", "added vs httpx µs/req", "hop CPU µs/req"], rows), ""]
    return lines


def write_json(results: Mapping[str, Any], path: Path) -> Path:
    """Write ``results`` as indented JSON to ``path`` (directories created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _contenders(results: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for scenario in results["scenarios"].values():
        for contenders in scenario["modes"].values():
            names.extend(name for name in contenders if name not in names)
    return names


def plot(results: Mapping[str, Any], directory: Path) -> list[Path]:
    """Draw ``latency.png`` and ``cpu.png`` into ``directory``; returns their paths (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    scenarios = results["scenarios"]
    names = _contenders(results)
    modes = list(dict.fromkeys(mode for scenario in scenarios.values() for mode in scenario["modes"]))
    colours = {"p50_ms": "#4c72b0", "p90_ms": "#dd8452", "p99_ms": "#c44e52"}
    width = 0.26
    figure, axes = plt.subplots(
        len(scenarios), len(modes), figsize=(6.5 * len(modes), 2.8 * len(scenarios)), squeeze=False
    )
    for row, (scenario_name, scenario) in enumerate(scenarios.items()):
        for column, mode in enumerate(modes):
            axis = axes[row][column]
            contenders = scenario["modes"].get(mode, {})
            for offset, quantile in enumerate(_QUANTILES):
                xs, heights, low, high = [], [], [], []
                for index, name in enumerate(names):
                    spread = contenders.get(name, {}).get(quantile)
                    if spread is None:
                        continue
                    xs.append(index + (offset - 1) * width)
                    heights.append(spread["median"])
                    low.append(spread["median"] - spread["min"])
                    high.append(spread["max"] - spread["median"])
                axis.bar(
                    xs,
                    heights,
                    width,
                    yerr=[low, high],
                    capsize=2,
                    color=colours[quantile],
                    label=quantile.removesuffix("_ms"),
                )
            axis.set_yscale("log")
            axis.set_xticks(range(len(names)), names, fontsize=8)
            axis.set_ylabel("ms")
            axis.set_title(f"{scenario_name} ({mode} loop)", fontsize=9)
            axis.grid(axis="y", alpha=0.3)
            if row == 0 and column == 0:
                axis.legend(fontsize=7)
    figure.suptitle("client-observed latency: median over rounds, whiskers = range", fontsize=10)
    figure.tight_layout()
    latency = directory / "latency.png"
    figure.savefig(latency, dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.2), squeeze=False)
    for column, mode in enumerate(modes):
        axis = axes[0][column]
        group = len(names) + 1
        for s_index, scenario in enumerate(scenarios.values()):
            contenders = scenario["modes"].get(mode, {})
            for index, name in enumerate(names):
                summary = contenders.get(name)
                if summary is None:
                    continue
                x = s_index * group + index
                client = _median(summary, "client_cpu_us") or 0.0
                proxy = _median(summary, "proxy_cpu_us") or 0.0
                colour = f"C{index}"
                axis.bar(x, client, 0.8, color=colour, alpha=0.55, label=name if s_index == 0 else None)
                axis.bar(x, proxy, 0.8, bottom=client, color=colour, hatch="//", edgecolor="white")
        axis.set_xticks(
            [s_index * group + (len(names) - 1) / 2 for s_index in range(len(scenarios))], list(scenarios)
        )
        axis.set_ylabel("CPU µs per request")
        axis.set_title(f"{mode} loop: client CPU (plain) + sidecar CPU (hatched)", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    cpu = directory / "cpu.png"
    figure.savefig(cpu, dpi=110)
    plt.close(figure)
    return [latency, cpu]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: Mapping[str, Any], plots: Sequence[Path], directory: Path) -> str:
    """The Markdown report: machine, settings, verdicts, one table per scenario and mode, plots, notes."""
    machine = results.get("machine", {})
    settings = results["settings"]
    lines = [
        "# connectivity compare: in-process vs. sidecar",
        "",
        f"Run {machine.get('timestamp', '?')} on {machine.get('cpu_model', '?')} "
        f"({machine.get('cpus_usable', '?')} usable CPUs), {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}; took {results.get('elapsed_s', '?')} s.",
        "",
        f"Settings: {settings['rounds']} rounds x {settings['requests']} requests per contender and mode; "
        f"open loop at {settings['rate']:g} requests/s (the burst scenario: twice its rate limit), "
        f"closed loop with {settings['concurrency']} workers; {settings['warmup']} warm-up requests; "
        f"fault seed {settings['seed']}"
        + (" (**quick run: the numbers are a smoke test, not a measurement**)." if settings["quick"] else "."),
        "",
        "Values are medians over rounds, with the range (min-max) in brackets. CPU is per client request: the "
        "client's is this process's CPU time during the block, the proxy's its processes' on-CPU time "
        "(`/proc/<pid>/task/*/schedstat`). *upstream req/req* counts requests at the replicas per client request "
        "(retry amplification). Every block starts from a fresh client connection pool. *policy events*: the "
        "in-process stack's from `connectivity.telemetry.events`; nginx's from its log of retried requests "
        "(`$upstream_addr`) and its error log (replicas disabled, requests refused by `limit_req`); HAProxy's "
        "from its stats socket (`wretr`, `chkdown`, the frontend's `dreq`); Caddy reports none.",
        "",
        "## Verdicts",
        "",
        _table(
            ["", "check", "numbers"],
            [[_word(v), v["check"], v["detail"]] for v in results.get("verdicts", [])],
        ),
        "",
        *_cpu_phase(results),
    ]
    for name, scenario in results["scenarios"].items():
        lines += [f"## {name}: {scenario['title']}", ""]
        for mode, contenders in scenario["modes"].items():
            lines += [f"**{mode} loop**", ""]
            silent = scenario.get("events_not_reported") or ()
            lines += [_table(HEADERS, [_row(contender, s, silent) for contender, s in contenders.items()]), ""]
        unsupported = {proxy: items for proxy, items in scenario.get("unsupported", {}).items() if items}
        if unsupported:
            lines += ["What the sidecars could not express of this scenario's policy:", ""]
            for proxy, items in unsupported.items():
                lines += [f"- **{proxy}**: " + "; ".join(items)]
            lines.append("")
    if plots:
        lines += ["## Plots", ""]
        for path in plots:
            lines += [f"![{path.stem}]({path.relative_to(directory).as_posix()})", ""]
    else:
        lines += ["(No plots: matplotlib is not installed; `pip install 'connectivity-sdk[compare]'`.)", ""]
    if results.get("notes"):
        lines += ["## Notes from the run", ""] + [f"- {note}" for note in results["notes"]] + [""]
    packages = machine.get("packages") or {}
    if packages:
        lines += ["## Machine", "", "```json", json.dumps(machine, indent=2), "```", ""]
    return "\n".join(lines)
