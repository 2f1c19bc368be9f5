"""The comparison run: scenarios x contenders x modes x rounds, against one fleet, with every process cleaned up.

Theory of operation: one :class:`~connectivity.compare.fleet.Fleet` of replicas serves the whole run. For each
scenario the runner sets the replicas' faults (or stops one), starts a fresh sidecar per available proxy with a
configuration generated from the scenario's policy (so no passive-health state leaks from one scenario into the
next), and builds fresh clients: bare httpx (taking the replica URLs in turn: it has no balancer), the in-process
stack (:meth:`Policy.transport`), and bare httpx through each sidecar. After a warm-up, each round sends one
block per contender and mode (:mod:`connectivity.compare.drive`), the contenders' order rotating every round and
mode so that machine drift lands on all of them alike. Every process started is owned by an exit stack: a failure,
``KeyboardInterrupt`` (Ctrl-C) or a bug in the middle of a block unwinds it, stopping sidecars and replicas.

Proxies are optional: without :mod:`connectivity.compare.proxies`, or without a proxy's binary on ``PATH``, that
contender is skipped with a note saying why.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import anyio

from connectivity._http import httpx
from connectivity.compare.drive import Contender, Mode, run_block
from connectivity.compare.fleet import HOST, Fleet
from connectivity.compare.scenarios import REPLICAS, Scenario, select
from connectivity.compare.stats import summarise, verdicts
from connectivity.errors import ConfigError
from connectivity.telemetry import events as policy_events

__all__ = ["BARE", "CONTROL", "FULL", "IN_PROCESS", "QUICK", "Progress", "Settings", "machine_info", "run"]

BARE = "httpx"
"""The bare httpx contender: no policy at all."""
IN_PROCESS = "connectivity"
"""The in-process contender: the policy as a :func:`connectivity.transport` stack."""

CONTROL = "httpx (control)"
"""A second bare httpx client, in the healthy scenario only: the noise floor."""
CONTROL_SCENARIO = "healthy"

MODES: tuple[Mode, ...] = ("open", "closed")


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        requests: Requests per contender, mode and round.
        rounds: Measured rounds per scenario (reported values are medians over them, with their range).
        rate: Open-loop rate, requests per second (a scenario with a rate limit uses a multiple of the limit).
        concurrency: Closed-loop workers.
        warmup: Untimed requests per contender before a scenario's first round.
        scenarios: Scenario names to run (empty: all).
        proxies: Proxies to try (empty: every one :mod:`connectivity.compare.proxies` knows).
        modes: Load modes to run.
        seed: Seed of the replicas' fault draws.
        quick: Marks the results as a smoke run.
    """

    requests: int
    rounds: int
    rate: float = 200.0
    concurrency: int = 8
    warmup: int = 20
    scenarios: tuple[str, ...] = ()
    proxies: tuple[str, ...] = ()
    modes: tuple[Mode, ...] = MODES
    seed: int = 1
    quick: bool = False


FULL = Settings(requests=300, rounds=5, warmup=30)
QUICK = Settings(requests=60, rounds=2, warmup=10, quick=True)


class Progress(Protocol):
    """Who hears about the run as it goes (the CLI's live display; tests)."""

    def start(self, total: int) -> None:
        """The run will send ``total`` measured blocks."""

    def block(self, description: str) -> None:
        """One more block is done."""

    def note(self, message: str) -> None:
        """Something worth telling (a skipped contender, a scenario starting)."""


class _Silent:
    def start(self, total: int) -> None:
        pass

    def block(self, description: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass
class _Sidecar:
    name: str
    url: str
    sidecar: Any
    unsupported: tuple[str, ...] = ()


@dataclass
class _Scenario:
    """Everything measured in one scenario: rounds of block summaries by mode and contender."""

    rounds: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    replica_requests: list[int | None] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _proxies_module(progress: Progress) -> ModuleType | None:
    try:
        from connectivity.compare import proxies
    except ImportError as exc:
        progress.note(f"sidecars skipped: connectivity.compare.proxies is not available ({exc})")
        return None
    return proxies


def _available_proxies(module: ModuleType | None, wanted: Sequence[str], progress: Progress) -> list[str]:
    if module is None:
        return []
    names: list[str] = []
    for proxy in wanted or module.PROXIES:
        if proxy not in module.PROXIES:
            progress.note(f"{proxy}: skipped, not a proxy this harness knows ({', '.join(module.PROXIES)})")
        elif module.binary(proxy) is None:
            progress.note(f"{proxy}: skipped, its binary is not on PATH")
        else:
            names.append(proxy)
    return names


def _start_sidecars(
    stack: contextlib.ExitStack,
    module: ModuleType | None,
    names: Sequence[str],
    scenario: Scenario,
    fleet: Fleet,
    workdir: Path,
    progress: Progress,
) -> list[_Sidecar]:
    started: list[_Sidecar] = []
    if module is None:
        return started
    for proxy in names:
        directory = workdir / scenario.name / proxy
        directory.mkdir(parents=True, exist_ok=True)
        try:
            rendered = module.render(proxy, scenario.policy, fleet.addresses, (HOST, _free_port()), directory)
            module.validate(rendered)
            sidecar = stack.enter_context(module.Sidecar.start(rendered, timeout=10.0))
        except (module.ProxyConfigError, module.ProxyStartError, ConfigError) as exc:
            # One proxy failing to configure or start must not sink the others' measurements: say so loudly.
            first = str(exc).strip().splitlines()
            progress.note(f"{proxy}: skipped in scenario {scenario.name}: {' / '.join(first[:3])}")
            continue
        url = str(sidecar.url)
        started.append(_Sidecar(proxy, url if url.endswith("/") else url + "/", sidecar, rendered.unsupported))
        if rendered.unsupported:
            progress.note(f"{proxy} cannot express: {', '.join(rendered.unsupported)}")
    return started


def _clients(
    scenario: Scenario, fleet: Fleet, sidecars: Sequence[_Sidecar], wanted: Sequence[str]
) -> list[Contender]:
    """Fresh clients for one scenario: bare, in-process, and through each sidecar (the caller closes them)."""
    policy = scenario.policy
    timeout = httpx.Timeout(policy.total_timeout)
    contenders: list[Contender] = []
    clients: list[httpx.AsyncClient] = []

    def client(**options: Any) -> httpx.AsyncClient:
        made = httpx.AsyncClient(trust_env=False, timeout=timeout, **options)
        clients.append(made)
        return made

    if not wanted or BARE in wanted:
        urls = [f"http://{h}:{p}/" for h, p in fleet.addresses]
        contenders.append(Contender(BARE, client(), urls))
        if scenario.name == CONTROL_SCENARIO:
            # A twin of the baseline, measured like everyone else: how far it lands from bare httpx is the noise
            # floor of the run, against which the in-process stack's added CPU is read.
            contenders.append(Contender(CONTROL, client(), urls))
    if not wanted or IN_PROCESS in wanted:
        endpoints = [f"{h}:{p}" for h, p in fleet.addresses]
        stack = policy.transport(endpoints, service="upstream", telemetry=False, request_id=False)
        contenders.append(Contender(IN_PROCESS, client(transport=stack), ["http://upstream/"]))
    contenders.extend(
        Contender(sidecar.name, client(), [sidecar.url], sidecar.sidecar.cpu_ns, sidecar.sidecar.rss_bytes)
        for sidecar in sidecars
    )
    return contenders


async def _scenario_rounds(
    scenario: Scenario,
    fleet: Fleet,
    sidecars: Sequence[_Sidecar],
    settings: Settings,
    wanted: Sequence[str],
    events: Mapping[str, int],
    progress: Progress,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    rate = (scenario.policy.rate_limit or settings.rate) * scenario.rate_factor
    limit = settings.requests / rate + scenario.policy.total_timeout + 10.0
    contenders = _clients(scenario, fleet, sidecars, wanted)
    for mode in settings.modes:  # tables list the contenders in this order, whatever order a round ran them in
        rounds[mode] = {contender.name: [] for contender in contenders}
    try:
        for contender in contenders:
            await run_block(
                contender,
                mode="closed",
                count=settings.warmup,
                rate=rate,
                concurrency=settings.concurrency,
                limit=limit,
                upstream_requests=lambda: 0,
                events=events,
            )
        for index in range(settings.rounds):
            for mode_index, mode in enumerate(settings.modes):
                shift = (index + mode_index) % len(contenders)
                for contender in (*contenders[shift:], *contenders[:shift]):
                    gc.collect()
                    block = await run_block(
                        contender,
                        mode=mode,
                        count=settings.requests,
                        rate=rate,
                        concurrency=settings.concurrency,
                        limit=limit,
                        upstream_requests=fleet.requests,
                        events=events,
                    )
                    summary = block.summary()
                    summary["round"] = index
                    rounds[mode][contender.name].append(summary)
                    progress.block(f"{scenario.name} {mode} r{index + 1} {contender.name}")
    finally:
        with anyio.CancelScope(shield=True):
            for contender in contenders:
                await contender.client.aclose()
    return rounds


def _run_scenario(
    scenario: Scenario,
    fleet: Fleet,
    settings: Settings,
    module: ModuleType | None,
    proxies: Sequence[str],
    workdir: Path,
    events: Mapping[str, int],
    progress: Progress,
    wanted: Sequence[str],
) -> _Scenario:
    result = _Scenario()
    for index in range(REPLICAS):
        fleet.set_faults(index, scenario.faults.get(index))
    for index in scenario.down:
        fleet.stop(index)
    try:
        with contextlib.ExitStack() as stack:
            sidecars = _start_sidecars(stack, module, proxies, scenario, fleet, workdir, progress)
            result.unsupported = {sidecar.name: list(sidecar.unsupported) for sidecar in sidecars}
            before = fleet.requests_by_replica()
            result.rounds = anyio.run(
                _scenario_rounds,
                scenario,
                fleet,
                sidecars,
                settings,
                wanted,
                events,
                progress,
                backend="asyncio",
            )
            after = fleet.requests_by_replica()
            result.replica_requests = [
                None if b is None or a is None else a - b for b, a in zip(before, after, strict=True)
            ]
    finally:
        for index in scenario.down:
            fleet.start(index)
        for index in scenario.faults:
            fleet.set_faults(index, None)
    return result


def run(
    settings: Settings,
    *,
    progress: Progress | None = None,
    contenders: Sequence[str] = (),
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the comparison and return its results (as written to ``compare.json`` by the caller).

    Args:
        settings: How much work to do, and which scenarios and proxies.
        progress: Hears about every block and every skipped contender.
        contenders: Contender names to run (empty: all available).
        workdir: Where sidecar configurations and logs go (default: a temporary directory, removed at the end).

    Returns:
        Settings, per-scenario summaries, verdicts, notes, and the elapsed time.

    Raises:
        ConfigError: An unknown scenario name.
        FleetError: An upstream replica did not start.
    """
    hears: Progress = progress if progress is not None else _Silent()
    scenarios = select(settings.scenarios)
    notes: list[str] = []

    class _Noting:
        def start(self, total: int) -> None:
            hears.start(total)

        def block(self, description: str) -> None:
            hears.block(description)

        def note(self, message: str) -> None:
            # Each proxy says what it cannot express once per scenario; the same sentence is worth hearing once.
            if message in notes:
                return
            notes.append(message)
            hears.note(message)

    noting = _Noting()
    wanted = list(contenders)
    module = None if wanted and not (set(wanted) - {BARE, IN_PROCESS}) else _proxies_module(noting)
    proxy_names = [name for name in (settings.proxies or ()) if not wanted or name in wanted] or [
        name for name in (getattr(module, "PROXIES", ()) if module else ()) if not wanted or name in wanted
    ]
    proxies = _available_proxies(module, proxy_names, noting)
    per_scenario = len(settings.modes) * settings.rounds
    contender_count = sum(1 for name in (BARE, IN_PROCESS) if not wanted or name in wanted) + len(proxies)
    controls = sum(1 for s in scenarios if s.name == CONTROL_SCENARIO) if not wanted or BARE in wanted else 0
    hears.start((len(scenarios) * contender_count + controls) * per_scenario)
    events: Counter[str] = Counter()
    lock = threading.Lock()

    def listen(name: str, attributes: Mapping[str, Any]) -> None:
        with lock:
            events[name] += 1

    began = time.monotonic()
    results: dict[str, Any] = {}
    unsubscribe = policy_events.subscribe(listen)
    try:
        with contextlib.ExitStack() as stack:
            directory = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cx-compare-")))
            fleet = stack.enter_context(Fleet(REPLICAS, seed=settings.seed))
            for scenario in scenarios:
                noting.note(f"scenario {scenario.name}: {scenario.title}")
                measured = _run_scenario(
                    scenario, fleet, settings, module, proxies, directory, events, noting, wanted
                )
                results[scenario.name] = summarise(scenario, measured.rounds, measured.unsupported)
                results[scenario.name]["replica_requests"] = measured.replica_requests
    finally:
        unsubscribe()
    return {
        "benchmark": "compare",
        "settings": {**_settings_dict(replace(settings, proxies=tuple(proxies)))},
        "machine": machine_info(proxies),
        "scenarios": results,
        "verdicts": verdicts(results),
        "notes": notes,
        "elapsed_s": round(time.monotonic() - began, 1),
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _proxy_version(proxy: str) -> str | None:
    from connectivity.compare import proxies as module

    path = module.binary(proxy)
    if path is None:
        return None
    flag = {"nginx": ["-v"], "haproxy": ["-v"], "caddy": ["version"]}[proxy]
    try:
        done = subprocess.run([path, *flag], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).decode(errors="replace").strip().splitlines()
    return text[0] if text else None


def machine_info(proxies: Sequence[str] = ()) -> dict[str, Any]:
    """What is needed to compare two runs: CPUs, OS, Python, package and proxy versions, and the time.

    The same facts as the benchmarks' ``bench._harness.machine_info`` (which ships with the repository, not the
    package), plus the proxies' versions.
    """
    model = platform.processor() or None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    import connectivity

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {
            "connectivity-sdk": connectivity.__version__,
            **{name: _version(name) for name in ("httpx", "httpcore", "anyio", "uvicorn", "h11")},
        },
        "proxies": {proxy: _proxy_version(proxy) for proxy in proxies},
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return {
        "requests": settings.requests,
        "rounds": settings.rounds,
        "rate": settings.rate,
        "concurrency": settings.concurrency,
        "warmup": settings.warmup,
        "scenarios": list(settings.scenarios),
        "proxies": list(settings.proxies),
        "modes": list(settings.modes),
        "seed": settings.seed,
        "quick": settings.quick,
    }
