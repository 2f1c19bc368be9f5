"""``connectivity demo``: three faulty replicas, bare httpx against the connectivity stack, side by side.

Three :class:`~connectivity.testing.upstream.FaultyUpstream` replicas run under uvicorn on ``127.0.0.1``:

* ``healthy`` answers everything at once;
* ``flaky`` answers ``503`` to 30 % of requests;
* ``slow`` has a slow tail: a quarter of its answers take 200-300 ms.

The same batch of ``GET`` requests, spread round-robin over the three URLs (there is no load balancer in this
demo, so a retry or a hedge goes back to the same replica), is sent once by a bare ``httpx.AsyncClient`` and once
through :func:`build_transport`. Each client kind gets its own fresh replicas seeded identically, so both face the
same sequence of faults. Retries absorb the 503s, hedging and the per-try timeout cut the slow tail, and the retry
budget caps the extra load. Every run stops by itself: after ``--requests`` requests or ``--time-limit`` seconds
per client kind, whichever comes first.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

import connectivity as cx
from connectivity._http import httpx

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from connectivity.testing.server import RunningServer
    from connectivity.testing.upstream import FaultyUpstream

__all__ = ["HELP", "KindResult", "build_transport", "configure", "run", "run_demo"]

HELP = "three faulty replicas on loopback: bare httpx vs the connectivity stack, side by side"

DEFAULT_REQUESTS = 150
DEFAULT_SEED = 1
DEFAULT_CONCURRENCY = 4
DEFAULT_TIME_LIMIT = 20.0

FLAKY_ERROR_RATE = 0.3
SLOW_FRACTION = 0.25
SLOW_SECONDS = (0.2, 0.3)

BARE = "httpx"
CONNECTIVITY = "httpx + connectivity"


def build_transport() -> cx.transports.Layer:
    """The stack the demo shows: 1 s total, 150 ms per try, 3 attempts under a budget, 2 hedges 50 ms apart, a
    circuit breaker per replica and a bulkhead of 32 calls in flight."""
    return cx.transport(
        timeout=cx.Timeout(total=1.0, per_try=0.15),
        retry=cx.Retry(
            attempts=3,
            backoff=cx.Backoff.exponential(base=0.01, cap=0.05),
            budget=cx.RetryBudget(ratio=0.2, min_per_second=10),
        ),
        hedge=cx.Hedge(delay=0.05, max_extra=2),
        breaker=cx.CircuitBreaker(name="demo", failure_ratio=0.5, minimum_calls=20, open_for=1.0),
        breaker_scope="host",
        bulkhead=cx.Bulkhead(name="demo", max_concurrent=32, max_queued=64, queue_timeout=0.5),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options."""
    parser.add_argument(
        "--requests",
        type=_positive_int,
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests per client kind (default: {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the replicas' faults (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at once (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        metavar="SECONDS",
        help=f"stop sending after this long, per client kind (default: {DEFAULT_TIME_LIMIT:g})",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclass
class KindResult:
    """What one client kind got from the replicas.

    Attributes:
        label: ``"httpx"`` or ``"httpx + connectivity"``.
        latencies: Seconds per request, successful or not.
        attempts: Attempts per request, from the :class:`~connectivity.CallRecord` (1 for bare httpx).
        hedges: Hedged attempts per request, from the :class:`~connectivity.CallRecord`.
        ok: Requests answered with a 2xx status.
        errors: Failed requests by cause (``"503"``, ``"PerTryTimeoutError"``, ...).
        wall: Seconds the whole batch took.
        connections: TCP connections the replicas accepted (keep-alive reuse keeps this low; a cancelled hedge
            or a discarded unread response costs a new one).
    """

    label: str
    latencies: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    hedges: list[int] = field(default_factory=list)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    connections: int = 0

    @property
    def sent(self) -> int:
        """Requests sent."""
        return len(self.latencies)

    @property
    def success_rate(self) -> float:
        """Fraction of requests answered with a 2xx status (0 when nothing was sent)."""
        return self.ok / self.sent if self.sent else 0.0

    def record(self, seconds: float, outcome: httpx.Response | Exception) -> None:
        """Add one request's latency and outcome."""
        self.latencies.append(seconds)
        if isinstance(outcome, httpx.Response):
            call = outcome.extensions.get(cx.transports.EXTENSION)
            self.attempts.append(call.attempts if isinstance(call, cx.CallRecord) else 1)
            self.hedges.append(call.hedges if isinstance(call, cx.CallRecord) else 0)
            if outcome.is_success:
                self.ok += 1
            else:
                self.errors[str(outcome.status_code)] += 1
        else:
            self.attempts.append(max(1, getattr(outcome, "attempts", 1)))
            self.hedges.append(0)
            self.errors[type(outcome).__name__] += 1


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _replicas(seed: int) -> list[FaultyUpstream]:
    from connectivity.testing.upstream import Faults, FaultyUpstream

    tail = random.Random(f"{seed}:slow-tail")

    def slow_tail() -> float:
        if tail.random() < SLOW_FRACTION:
            return tail.uniform(*SLOW_SECONDS)
        return 0.0

    return [
        FaultyUpstream(name="healthy", rng=random.Random(f"{seed}:healthy")),
        FaultyUpstream(
            name="flaky",
            faults=Faults(error_rate=FLAKY_ERROR_RATE, error_status=503),
            rng=random.Random(f"{seed}:flaky"),
        ),
        FaultyUpstream(name="slow", faults=Faults(latency=slow_tail), rng=random.Random(f"{seed}:slow")),
    ]


@contextlib.contextmanager
def _serving(seed: int) -> Iterator[list[RunningServer[FaultyUpstream]]]:
    """Start fresh, identically seeded replicas; yields their servers (healthy, flaky, slow)."""
    from connectivity.testing.server import serve

    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(replica, name=replica.name)) for replica in _replicas(seed)]


async def _send_batch(
    client: httpx.AsyncClient,
    urls: Sequence[str],
    result: KindResult,
    *,
    requests: int,
    concurrency: int,
    time_limit: float,
    advance: Callable[[], None],
) -> None:
    """Send ``requests`` GETs round-robin over ``urls`` from ``concurrency`` workers; stop at ``time_limit``."""
    began = time.monotonic()
    stop_at = began + time_limit
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests and time.monotonic() < stop_at:
            url = urls[next_index % len(urls)]
            next_index += 1
            start = time.perf_counter()
            outcome: httpx.Response | Exception
            try:
                outcome = await client.get(url)
            except httpx.HTTPError as exc:
                outcome = exc
            result.record(time.perf_counter() - start, outcome)
            advance()

    # A request already in flight at the limit may finish; none is allowed to outlive it by more than 5 s.
    with anyio.move_on_after(time_limit + 5.0):
        async with anyio.create_task_group() as group:
            for _ in range(min(concurrency, requests)):
                group.start_soon(worker)
    result.wall = time.monotonic() - began


def run_demo(
    *,
    requests: int = DEFAULT_REQUESTS,
    seed: int = DEFAULT_SEED,
    concurrency: int = DEFAULT_CONCURRENCY,
    time_limit: float = DEFAULT_TIME_LIMIT,
    console: Console | None = None,
) -> tuple[KindResult, KindResult]:
    """Run both client kinds against fresh replicas, showing progress, and print the comparison table.

    Args:
        requests: Requests per client kind.
        seed: Seed of the replicas' faults.
        concurrency: Requests in flight at once.
        time_limit: Seconds after which no new request is sent, per client kind.
        console: Where to print (default: a console on standard output).

    Returns:
        The results of bare httpx and of httpx with connectivity.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console if console is not None else Console()
    console.print(_scenario(requests, seed, concurrency))
    results = (KindResult(BARE), KindResult(CONNECTIVITY))
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = [progress.add_task(result.label, total=requests) for result in results]
        for result, task in zip(results, tasks, strict=True):
            with _serving(seed) as servers:
                anyio.run(
                    _run_kind,
                    result,
                    [server.url + "/" for server in servers],
                    requests,
                    concurrency,
                    time_limit,
                    progress,
                    task,
                    backend="asyncio",
                )
                result.connections = sum(server.connections_opened for server in servers)
    console.print(_table(*results))
    return results


async def _run_kind(
    result: KindResult,
    urls: Sequence[str],
    requests: int,
    concurrency: int,
    time_limit: float,
    progress: Progress,
    task: TaskID,
) -> None:
    transport = build_transport() if result.label == CONNECTIVITY else None
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        await _send_batch(
            client,
            urls,
            result,
            requests=requests,
            concurrency=concurrency,
            time_limit=time_limit,
            advance=lambda: progress.advance(task),
        )


def _scenario(requests: int, seed: int, concurrency: int) -> str:
    slow_low, slow_high = (int(seconds * 1000) for seconds in SLOW_SECONDS)
    return (
        "[bold]connectivity demo[/bold]: three replicas on 127.0.0.1, "
        f"{requests} GETs per client kind, {concurrency} in flight, round-robin by URL (seed {seed})\n"
        "  healthy  answers at once\n"
        f"  flaky    answers 503 to {FLAKY_ERROR_RATE:.0%} of requests\n"
        f"  slow     {SLOW_FRACTION:.0%} of answers take {slow_low}-{slow_high} ms\n"
        "connectivity: Timeout(total=1.0, per_try=0.15), Retry(attempts=3, budget=RetryBudget(ratio=0.2)), "
        "Hedge(delay=0.05, max_extra=2), CircuitBreaker(failure_ratio=0.5) per replica, Bulkhead(32)"
    )


def _errors(result: KindResult) -> str:
    if not result.errors:
        return "0"
    causes = ", ".join(f"{count} x {cause}" for cause, count in result.errors.most_common())
    return f"{sum(result.errors.values())} ({causes})"


def _table(bare: KindResult, ours: KindResult) -> Table:
    from rich.table import Table

    def ms(values: Sequence[float], q: float) -> str:
        return f"{_percentile(values, q) * 1000:.1f} ms" if values else "-"

    def mean(values: Sequence[int]) -> str:
        return f"{sum(values) / len(values):.2f}" if values else "-"

    def rate(result: KindResult) -> str:
        return f"{result.sent / result.wall:.0f} req/s" if result.wall > 0 else "-"

    table = Table(title="bare httpx vs httpx + connectivity", title_justify="left")
    table.add_column("metric")
    table.add_column(BARE, justify="right")
    table.add_column(CONNECTIVITY, justify="right")
    rows = [
        ("requests", str(bare.sent), str(ours.sent)),
        ("success rate", f"{bare.success_rate:.1%}", f"{ours.success_rate:.1%}"),
        ("p50 latency", ms(bare.latencies, 50), ms(ours.latencies, 50)),
        ("p99 latency", ms(bare.latencies, 99), ms(ours.latencies, 99)),
        ("attempts / request", mean(bare.attempts), mean(ours.attempts)),
        ("hedges / request", mean(bare.hedges), mean(ours.hedges)),
        ("errors", _errors(bare), _errors(ours)),
        ("wall time", f"{bare.wall:.2f} s", f"{ours.wall:.2f} s"),
        ("throughput", rate(bare), rate(ours)),
        ("connections opened", str(bare.connections), str(ours.connections)),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def run(args: argparse.Namespace) -> int:
    """``connectivity demo``: returns 0, or 1 when the ``demo`` extra is not installed."""
    try:
        import rich  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(
            f"connectivity demo needs the 'demo' extra ({exc.name} is missing): "
            "pip install 'connectivity-sdk[demo]'",
            file=sys.stderr,
        )
        return 1
    run_demo(
        requests=args.requests,
        seed=args.seed,
        concurrency=args.concurrency,
        time_limit=args.time_limit,
    )
    return 0
