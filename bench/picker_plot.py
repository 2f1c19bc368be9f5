"""The slow-replica plot of the load-balancing guide: each picker's traffic share to a slow replica over time.

``python -m bench.picker_plot [--out PATH]`` simulates three endpoints answering in 5 ms, 5 ms and 200 ms (the slow
replica, each latency jittered by +-10 %) behind ``RoundRobin``, ``Random``, ``LeastRequest`` and ``EWMA``, and
writes ``docs/img/picker-traffic-share.svg``: the slow replica's share of the picks in each one-second bucket.

The simulation is a closed loop of :data:`CLIENTS` virtual clients, each sending its next request as soon as the
previous one is answered, for :data:`DURATION` seconds of virtual time. It uses the real pickers and the real
:class:`~connectivity.balancing.EndpointSet` / :class:`~connectivity.balancing.EndpointStats` (in-flight counts,
peak EWMA) on a :class:`~connectivity.testing.FakeClock`, exactly as ``LoadBalancingTransport`` drives them:
``pick_stats()``, ``start()`` when the request is sent, ``finish()`` when it is answered. No network, no event
loop, no wall clock; every random draw comes from a seeded :class:`random.Random`, so the output is the same on
every run. The chart is plain SVG text (no plotting library), on a white background so that it reads in light and
dark themes alike.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from connectivity.balancing import EWMA, EndpointSet, EndpointStats, LeastRequest, Picker, Random, RoundRobin
from connectivity.discovery import Endpoint
from connectivity.testing import FakeClock

__all__ = ["CLIENTS", "DURATION", "LATENCIES", "OUTPUT", "PICKERS", "Run", "main", "render", "simulate"]

LATENCIES = (0.005, 0.005, 0.200)
"""Seconds each endpoint takes to answer; the last one is the slow replica."""
CLIENTS = 8
"""Virtual clients, each with one request in flight at a time (a closed loop)."""
DURATION = 60
"""Virtual seconds simulated (one bucket per second)."""
JITTER = 0.10
"""Each latency is drawn uniformly within +-10 % of the endpoint's."""
SEED = 7
MAX_EVENTS = 2_000_000
"""A bound on the loop, far above what 60 virtual seconds need (about 100,000 requests per picker)."""
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "picker-traffic-share.svg"

PICKERS: dict[str, Callable[[random.Random], Picker]] = {
    "RoundRobin": lambda rng: RoundRobin(rng=rng),
    "Random": lambda rng: Random(rng=rng),
    "LeastRequest": lambda rng: LeastRequest(rng=rng),
    "EWMA": lambda rng: EWMA(rng=rng),
}

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), plus a dash pattern each.
_STYLES = {
    "RoundRobin": ("#0072B2", ""),
    "Random": ("#E69F00", "7 4"),
    "LeastRequest": ("#009E73", "2 3"),
    "EWMA": ("#D55E00", ""),
}


@dataclass(frozen=True)
class Run:
    """One picker's simulation.

    Attributes:
        picker: The picker's name.
        slow: Picks of the slow replica per one-second bucket.
        total: Picks per one-second bucket.
    """

    picker: str
    slow: tuple[int, ...]
    total: tuple[int, ...]

    @property
    def shares(self) -> list[float]:
        """The slow replica's share of each bucket's picks."""
        return [s / t if t else 0.0 for s, t in zip(self.slow, self.total, strict=True)]

    def share(self, start: int = 0) -> float:
        """The slow replica's share of all picks from second ``start`` on."""
        total = sum(self.total[start:])
        return sum(self.slow[start:]) / total if total else 0.0

    @property
    def rate(self) -> float:
        """Requests per virtual second, all endpoints together."""
        return sum(self.total) / len(self.total)


def simulate(name: str, *, seed: int = SEED) -> Run:
    """Run the closed loop for one picker; see the module docstring."""
    clock = FakeClock()
    endpoints = [Endpoint(f"10.0.0.{index + 1}", 8080) for index in range(len(LATENCIES))]
    pool = EndpointSet(endpoints, clock=clock)
    picker = PICKERS[name](random.Random(seed))
    draw = random.Random(seed + 1)
    latency = {endpoint.key: seconds for endpoint, seconds in zip(endpoints, LATENCIES, strict=True)}
    slow_key = endpoints[-1].key
    slow = [0] * DURATION
    total = [0] * DURATION
    answers: list[tuple[float, int, EndpointStats, float]] = []  # (answered at, tie-break, stats, started)
    order = itertools.count()

    def send(now: float) -> None:
        stats = picker.pick_stats(pool)
        if stats is None:  # pragma: no cover - three healthy endpoints: never
            raise RuntimeError("no endpoint picked")
        started = stats.start()
        bucket = int(now)
        total[bucket] += 1
        slow[bucket] += stats.key == slow_key
        took = latency[stats.key] * draw.uniform(1.0 - JITTER, 1.0 + JITTER)
        heapq.heappush(answers, (now + took, next(order), stats, started))

    for _ in range(CLIENTS):
        send(0.0)
    for _ in range(MAX_EVENTS):
        answered_at, _, stats, started = heapq.heappop(answers)
        if answered_at >= DURATION:
            break
        clock.advance(answered_at - clock.now())
        stats.finish(started)
        send(answered_at)  # the client sends its next request at once
    else:  # pragma: no cover - the bound is far above what the loop needs
        raise RuntimeError(f"{name}: more than {MAX_EVENTS} events")
    return Run(name, tuple(slow), tuple(total))


# -- the chart -------------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 56, 112  # margins around the plot area
TITLE = "Share of requests sent to the slow replica (200 ms; the other two: 5 ms)"
SUBTITLE = f"{CLIENTS} clients in a closed loop, virtual time, one point per second"
_FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif\""


def _text(x: float, y: float, text: str, *, size: int = 13, anchor: str = "start", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="#222"{extra}>'
        f"{escape(text)}</text>"
    )


def render(runs: Sequence[Run]) -> str:
    """The SVG line chart of ``runs`` (one polyline per picker), as text."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max(max(run.shares) for run in runs)
    y_max = max(0.1, -(-peak * 10 // 1) / 10)  # the next multiple of 10 %

    def x_at(second: float) -> float:
        return LEFT + second / DURATION * plot_w

    def y_at(share: float) -> float:
        return TOP + plot_h - share / y_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="title desc" {_FONT}>',
        '<title id="title">Share of requests sent to a slow replica, per picker, over time</title>',
        '<desc id="desc">Three replicas answer in 5 ms, 5 ms and 200 ms; 8 clients send requests in a closed '
        "loop. Round robin and random send the slow replica about a third of the requests; least request a few "
        "percent; EWMA almost none.</desc>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        _text(WIDTH / 2, 26, TITLE, size=16, anchor="middle", extra=' font-weight="600"'),
        _text(WIDTH / 2, 44, SUBTITLE, size=12, anchor="middle"),
    ]
    steps = round(y_max * 10)
    for step in range(steps + 1):  # horizontal grid lines and y labels every 10 %
        y = y_at(step / 10)
        colour = "#444" if step == 0 else "#ddd"
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="{colour}"/>')
        parts.append(_text(LEFT - 8, y + 4, f"{step * 10} %", size=12, anchor="end"))
    for second in range(0, DURATION + 1, 10):  # x ticks every 10 s
        x = x_at(second)
        bottom = TOP + plot_h
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#444"/>')
        parts.append(_text(x, TOP + plot_h + 20, str(second), size=12, anchor="middle"))
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#444"/>')
    parts.append(_text(LEFT + plot_w / 2, TOP + plot_h + 42, "virtual time (s)", anchor="middle"))
    mid = TOP + plot_h / 2
    rotated = f' transform="rotate(-90 18 {mid})"'
    parts.append(_text(18, mid, "slow replica's share of requests", anchor="middle", extra=rotated))
    for run in runs:
        colour, dash = _STYLES[run.picker]
        points = " ".join(f"{x_at(i + 0.5):.1f},{y_at(share):.1f}" for i, share in enumerate(run.shares))
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        width = 2.5 if run.picker == "EWMA" else 2
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{width}"'
            f' stroke-linejoin="round"{dashes}/>'
        )
    slot = plot_w / len(runs)  # the legend: one row under the x-axis label
    legend_y = HEIGHT - 28
    for index, run in enumerate(runs):
        colour, dash = _STYLES[run.picker]
        x = LEFT + index * slot
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{x:.1f}" y1="{legend_y - 4}" x2="{x + 28:.1f}" y2="{legend_y - 4}" stroke="{colour}"'
            f' stroke-width="2.5"{dashes}/>'
        )
        share = run.share()
        shown = f"{share:.1%}" if share >= 0.01 else f"{share:.2%}"
        parts.append(_text(x + 34, legend_y, f"{run.picker} ({shown})", size=12))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Simulate every picker, print the shares and write the SVG."""
    parser = argparse.ArgumentParser(prog="python -m bench.picker_plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"where to write the SVG (default: {OUTPUT})")
    args = parser.parse_args(argv)
    runs = [simulate(name) for name in PICKERS]
    print(f"slow replica's share of requests ({CLIENTS} clients, {DURATION} virtual seconds, seed {SEED}):")
    print(f"{'picker':<14}{'whole run':>10}{'last 10 s':>11}{'requests/s':>12}")
    for run in runs:
        print(f"{run.picker:<14}{run.share():>10.2%}{run.share(DURATION - 10):>11.2%}{run.rate:>12.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(runs), encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
