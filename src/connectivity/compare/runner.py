"""The comparison run: scenarios x contenders x modes x rounds, against one fleet, with every process cleaned up.

Theory of operation: one :class:`~connectivity.compare.fleet.Fleet` of replicas serves the whole run (and a second
one, serving mutual TLS, the ``mtls`` scenario, with certificates from :mod:`connectivity.compare.pki`). For each
scenario the runner sets the replicas' faults (or stops one), starts a fresh sidecar per available proxy with a
configuration generated from the scenario's policy (so no passive-health state leaks from one scenario into the
next), and builds fresh clients (:mod:`connectivity.compare.contenders`): bare httpx (taking the replica URLs in
turn: it has no balancer), the in-process stack (:meth:`Policy.transport`), and bare httpx through each sidecar.
After a warm-up, each round sends one block per contender and mode (:mod:`connectivity.compare.drive`), each
block starting from a fresh connection pool, the contenders' order rotating every round and mode so that machine
drift lands on all of them alike.

The healthy scenario then runs the *CPU phase*, which the CPU verdict rests on: ``cpu_pairs`` rounds of small
blocks (``cpu_requests`` requests) per mode, every contender once per round in a shuffled order, so that each
round gives one *paired* difference (the in-process stack's client CPU minus bare httpx's, measured seconds
apart) and one hop cost per sidecar; :func:`connectivity.compare.stats.cpu_verdicts` takes the median of the
pairs with a distribution-free confidence interval. Every process started is owned by an exit stack: a failure,
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
import random
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

from connectivity.compare import pki as certificates
from connectivity.compare.contenders import BARE, CONTROL, CONTROL_SCENARIO, IN_PROCESS, build
from connectivity.compare.drive import Contender, Mode, run_block, settle
from connectivity.compare.fleet import HOST, Fleet
from connectivity.compare.scenarios import REPLICAS, Scenario, select
from connectivity.compare.stats import summarise, summarise_cpu, verdicts
from connectivity.errors import ConfigError
from connectivity.telemetry import events as policy_events

__all__ = ["BARE", "CONTROL", "FULL", "IN_PROCESS", "QUICK", "Progress", "Settings", "machine_info", "run"]

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
        seed: Seed of the replicas' fault draws (and of the CPU phase's order).
        quick: Marks the results as a smoke run.
        cpu_pairs: Rounds of the CPU phase (healthy scenario; 0: none, and no CPU verdict).
        cpu_requests: Requests per block of the CPU phase.
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
    cpu_pairs: int = 0
    cpu_requests: int = 60


FULL = Settings(requests=300, rounds=5, warmup=30, cpu_pairs=30, cpu_requests=100)
QUICK = Settings(requests=60, rounds=2, warmup=10, quick=True, cpu_pairs=10, cpu_requests=30)


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
    cpu: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)
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
    pki: certificates.Pki | None,
) -> list[_Sidecar]:
    started: list[_Sidecar] = []
    if module is None:
        return started
    for proxy in names:
        directory = workdir / scenario.name / proxy
        directory.mkdir(parents=True, exist_ok=True)
        tls = pki.clients[proxy] if pki is not None and scenario.mtls else None
        try:
            rendered = module.render(
                proxy, scenario.policy, fleet.addresses, (HOST, _free_port()), directory, tls=tls
            )
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


@dataclass
class _Driver:
    """Sends the blocks of one scenario: the settings, the fleet's counter, the event counter, the progress."""

    scenario: Scenario
    fleet: Fleet
    settings: Settings
    events: Mapping[str, int]
    progress: Progress

    async def block(self, contender: Contender, mode: Mode, count: int, *, timed: bool = True) -> dict[str, Any]:
        settings = self.settings
        rate = (self.scenario.policy.rate_limit or settings.rate) * self.scenario.rate_factor
        gc.collect()
        block = await run_block(
            contender,
            mode=mode,
            count=count,
            rate=rate,
            concurrency=settings.concurrency,
            limit=count / rate + self.scenario.policy.total_timeout + 10.0,
            upstream_requests=self.fleet.requests if timed else lambda: 0,
            events=self.events,
            before=lambda: settle(contender, mode=mode, concurrency=settings.concurrency, replicas=REPLICAS),
        )
        return block.summary()


async def _scenario_rounds(
    driver: _Driver, sidecars: Sequence[_Sidecar], wanted: Sequence[str], pki: certificates.Pki | None
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, dict[str, list[dict[str, Any]]]]]:
    scenario, settings, progress = driver.scenario, driver.settings, driver.progress
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    cpu: dict[str, dict[str, list[dict[str, Any]]]] = {}
    contenders = build(scenario, driver.fleet, [(s.name, s.url, s.sidecar) for s in sidecars], wanted, pki)
    for mode in settings.modes:  # tables list the contenders in this order, whatever order a round ran them in
        rounds[mode] = {contender.name: [] for contender in contenders}
    try:
        for contender in contenders:
            await driver.block(contender, "closed", settings.warmup, timed=False)
        for index in range(settings.rounds):
            for mode_index, mode in enumerate(settings.modes):
                shift = (index + mode_index) % len(contenders)
                for contender in (*contenders[shift:], *contenders[:shift]):
                    summary = await driver.block(contender, mode, settings.requests)
                    summary["round"] = index
                    rounds[mode][contender.name].append(summary)
                    progress.block(f"{scenario.name} {mode} r{index + 1} {contender.name}")
        if scenario.name == CONTROL_SCENARIO and settings.cpu_pairs:
            # The CPU phase: many small blocks, every contender once per round in a shuffled order, so that each
            # round is one paired comparison taken within seconds (see connectivity.compare.stats).
            shuffle = random.Random(f"{settings.seed}:cpu")
            for mode in settings.modes:
                cpu[mode] = {contender.name: [] for contender in contenders}
                for index in range(settings.cpu_pairs):
                    for contender in shuffle.sample(contenders, len(contenders)):
                        summary = await driver.block(contender, mode, settings.cpu_requests)
                        summary["round"] = index
                        cpu[mode][contender.name].append(summary)
                        progress.block(f"cpu {mode} p{index + 1} {contender.name}")
    finally:
        with anyio.CancelScope(shield=True):
            for contender in contenders:
                await contender.client.aclose()
    return rounds, cpu


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
    pki: certificates.Pki | None,
) -> _Scenario:
    result = _Scenario()
    for index in range(REPLICAS):
        fleet.set_faults(index, scenario.faults.get(index))
    for index in scenario.down:
        fleet.stop(index)
    try:
        with contextlib.ExitStack() as stack:
            sidecars = _start_sidecars(stack, module, proxies, scenario, fleet, workdir, progress, pki)
            result.unsupported = {sidecar.name: list(sidecar.unsupported) for sidecar in sidecars}
            # A proxy with nothing to read reports no policy events at all, which is not the same as zero of them.
            result.silent = [sidecar.name for sidecar in sidecars if not sidecar.sidecar.counters()]
            before = fleet.requests_by_replica()
            driver = _Driver(scenario, fleet, settings, events, progress)
            result.rounds, result.cpu = anyio.run(
                _scenario_rounds, driver, sidecars, wanted, pki, backend="asyncio"
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
    healthy = any(s.name == CONTROL_SCENARIO for s in scenarios)
    cpu_blocks = len(settings.modes) * settings.cpu_pairs * (contender_count + controls) if healthy else 0
    hears.start((len(scenarios) * contender_count + controls) * per_scenario + cpu_blocks)
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
            pki: certificates.Pki | None = None
            tls_fleet: Fleet | None = None
            for scenario in scenarios:
                noting.note(f"scenario {scenario.name}: {scenario.title}")
                serving = fleet
                if scenario.mtls:
                    if tls_fleet is None:
                        (directory / "pki").mkdir(parents=True, exist_ok=True)
                        pki = certificates.make(directory / "pki", [BARE, IN_PROCESS, "fleet", *proxies])
                        tls_fleet = stack.enter_context(
                            Fleet(REPLICAS, seed=settings.seed, tls=pki.server, control=pki.clients["fleet"])
                        )
                    serving = tls_fleet
                measured = _run_scenario(
                    scenario, serving, settings, module, proxies, directory, events, noting, wanted, pki
                )
                results[scenario.name] = summarise(scenario, measured.rounds, measured.unsupported)
                results[scenario.name]["replica_requests"] = measured.replica_requests
                results[scenario.name]["events_not_reported"] = measured.silent
                if measured.cpu:
                    results[scenario.name]["cpu"] = summarise_cpu(measured.cpu)
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
        "cpu_pairs": settings.cpu_pairs,
        "cpu_requests": settings.cpu_requests,
    }
