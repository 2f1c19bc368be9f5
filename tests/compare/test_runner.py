"""The comparison runner: a smoke run through every contender, and no process left behind, whatever happens.

The smoke run uses tiny counts: its numbers are noise, so only the shape of the results is checked (every
scenario, mode and contender measured; verdicts computed; JSON, plots and report written), never a verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")

from connectivity.cli import main
from connectivity.compare import proxies, report, runner
from connectivity.compare.runner import BARE, CONTROL, IN_PROCESS, Settings, run
from connectivity.compare.scenarios import SCENARIOS
from connectivity.testing.system import require_binary

PROXIES = ("nginx", "haproxy", "caddy")


def _children(root: int) -> dict[int, str]:
    """Every live descendant of ``root`` (pid -> command line), from a scan of ``/proc``."""
    parents: dict[int, int] = {}
    states: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)], states[int(entry)] = int(fields[1]), fields[0]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _cmdline(pid)
                frontier.append(pid)
    return {pid: cmd for pid, cmd in found.items() if states.get(pid) != "Z"}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _alive(pids: dict[int, str]) -> dict[int, str]:
    """Those of ``pids`` still running the same command (a recycled pid is someone else's process)."""
    return {pid: cmd for pid, cmd in pids.items() if cmd and _cmdline(pid) == cmd}


class _Recorder:
    """Progress that records notes and blocks, and raises ``error`` at the first block named ``fail_in...``."""

    def __init__(self, fail_in: str | None = None, error: BaseException | None = None) -> None:
        self.blocks: list[str] = []
        self.notes: list[str] = []
        self.total = 0
        self.fail_in = fail_in
        self.error = error
        self.seen: dict[int, str] = {}

    def start(self, total: int) -> None:
        self.total = total

    def block(self, description: str) -> None:
        self.blocks.append(description)
        if self.fail_in is not None and description.startswith(self.fail_in):
            # Everything the run started is alive now: remember it, to check it is gone afterwards.
            self.seen = _children(os.getpid())
            assert self.error is not None
            raise self.error

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fails the test if a process started during it is still running at its end."""
    before = set(_children(os.getpid()))
    yield
    left = {pid: cmd for pid, cmd in _children(os.getpid()).items() if pid not in before}
    assert not left, f"processes left running: {left}"


@pytest.mark.system
@pytest.mark.usefixtures("no_leftovers")
def test_smoke_run_measures_every_scenario_mode_and_contender(tmp_path: Path) -> None:
    for proxy in PROXIES:
        require_binary(proxy)
    recorder = _Recorder()
    settings = Settings(requests=8, rounds=1, warmup=2, rate=400.0, cpu_pairs=2, cpu_requests=4)
    results = run(settings, progress=recorder)

    expected = [BARE, IN_PROCESS, *PROXIES]
    # The healthy scenario also measures a twin of bare httpx (the noise floor), then runs the CPU phase.
    cpu_phase = 2 * settings.cpu_pairs * (len(expected) + 1)
    assert recorder.total == (len(SCENARIOS) * len(expected) + 1) * 2 + cpu_phase == len(recorder.blocks)
    assert list(results["scenarios"]) == [scenario.name for scenario in SCENARIOS]
    for name, scenario in results["scenarios"].items():
        assert set(scenario["modes"]) == {"open", "closed"}, name
        for mode, contenders in scenario["modes"].items():
            twin = [CONTROL] if name == "healthy" else []
            assert list(contenders) == [BARE, *twin, *expected[1:]], (name, mode)
            for contender, summary in contenders.items():
                assert summary["requests"] == 8
                assert 0.0 <= summary["success_rate"]["median"] <= 1.0
                assert summary["p50_ms"]["median"] <= summary["p99_ms"]["median"] <= summary["max_ms"]["median"]
                assert summary["client_cpu_us"]["median"] > 0
                # Retry amplification is counted at the upstreams: at least... nothing for a refused burst.
                assert summary["upstream_per_request"]["median"] >= 0
                sidecar = contender in PROXIES
                assert (summary["proxy_cpu_us"] is not None) is sidecar, (name, contender)
                assert (summary["proxy_rss_mb"] is not None) is sidecar
                if sidecar:
                    assert summary["proxy_rss_mb"]["median"] > 0
                    # What a proxy reports it did: retries, ejections, refusals (Caddy: nothing).
                    assert set(summary["events"]) <= {"retries", "ejections", "rate_limited"}
    # Bare httpx meets the stopped replica on a third of its requests; the replica is back afterwards.
    down = results["scenarios"]["down"]["modes"]["closed"][BARE]
    assert down["failures"].get("ConnectError", 0) > 0
    assert results["scenarios"]["down"]["replica_requests"][-1] is None
    # Mutual TLS on every hop to the replicas: every contender gets every answer, the in-process stack with its
    # own certificate, each sidecar with its own.
    for mode, contenders in results["scenarios"]["mtls"]["modes"].items():
        assert {name: s["success_rate"]["median"] for name, s in contenders.items()} == dict.fromkeys(
            [BARE, *expected[1:]], 1.0
        ), mode
    # The CPU phase: paired rounds, every contender against bare httpx; a hop cost for each sidecar.
    phase = results["scenarios"]["healthy"]["cpu"]
    for mode in ("open", "closed"):
        assert set(phase[mode]["added_client_cpu_us"]) == {CONTROL, *expected[1:]}
        assert set(phase[mode]["hop_cpu_us"]) == set(PROXIES)
        assert phase[mode]["added_client_cpu_us"][IN_PROCESS]["n"] == settings.cpu_pairs
    # Every verdict could be computed (every contender ran); the CPU one may honestly be inconclusive.
    assert results["verdicts"]
    assert all(verdict["pass"] is not None or verdict.get("inconclusive") for verdict in results["verdicts"])
    cpu = [verdict for verdict in results["verdicts"] if "CPU" in verdict["check"]]
    assert len(cpu) == 2
    assert all("control twin" in verdict["detail"] for verdict in cpu)

    path = report.write_json(results, tmp_path / "compare.json")
    assert json.loads(path.read_text(encoding="utf-8"))["benchmark"] == "compare"
    plots = report.plot(results, tmp_path)
    text = report.markdown(results, plots, tmp_path)
    assert "## Verdicts" in text
    assert "## CPU phase" in text
    assert "caddy" in text
    for plot in plots:
        assert plot.read_bytes().startswith(b"\x89PNG")


def _quick(**overrides: Any) -> Settings:
    return Settings(**{"requests": 6, "rounds": 2, "warmup": 1, "scenarios": ("healthy", "down"), **overrides})


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("boom")], ids=["ctrl-c", "failure"])
def test_an_interrupted_or_failing_run_leaves_no_process(error: BaseException) -> None:
    # Interrupted in the "down" scenario, while a replica is stopped and (where installed) sidecars run.
    recorder = _Recorder(fail_in="down closed", error=error)
    with pytest.raises(type(error)):
        run(_quick(rounds=1), progress=recorder)
    assert recorder.seen, "nothing was running when the run was interrupted"
    assert sum("connectivity.compare.fleet" in cmd for cmd in recorder.seen.values()) == 2  # one is down
    for proxy in PROXIES:
        if proxies.binary(proxy) is not None:
            assert any(proxy in cmd for cmd in recorder.seen.values()), proxy
    assert not _alive(recorder.seen), f"still running: {_alive(recorder.seen)}"


@pytest.mark.usefixtures("no_leftovers")
def test_a_failure_inside_a_block_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    real = runner.run_block
    calls = 0
    seen: dict[int, str] = {}

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls, seen
        calls += 1
        if calls == 4:
            seen = _children(os.getpid())
            raise OSError("the network broke")
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_block", failing)
    with pytest.raises(OSError, match="the network broke"):
        run(_quick(scenarios=("healthy",)))
    assert seen
    assert not _alive(seen)


@pytest.mark.usefixtures("no_leftovers")
def test_a_missing_proxy_binary_skips_that_contender_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxies, "binary", lambda proxy: None)
    recorder = _Recorder()
    results = run(_quick(scenarios=("healthy",), rounds=1), progress=recorder)
    assert [f"{proxy}: skipped, its binary is not on PATH" for proxy in proxies.PROXIES] == [
        note for note in recorder.notes if "skipped" in note
    ]
    assert list(results["scenarios"]["healthy"]["modes"]["open"]) == [BARE, CONTROL, IN_PROCESS]
    assert all(verdict["pass"] is None for verdict in results["verdicts"])


@pytest.mark.usefixtures("no_leftovers")
def test_cli_writes_json_report_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "compare",
            "--scenarios",
            "healthy,errors",
            "--contenders",
            "httpx,connectivity",
            "--rounds",
            "1",
            "--requests",
            "6",
            "--warmup",
            "1",
            "--cpu-pairs",
            "2",
            "--cpu-requests",
            "4",
            "--results-dir",
            str(tmp_path),
        ]
    )
    assert status == 0
    output = capsys.readouterr().out
    assert "verdicts" in output
    results = json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))
    assert list(results["scenarios"]) == ["healthy", "errors"]
    assert (tmp_path / "compare" / "report.md").read_text(encoding="utf-8").startswith("# connectivity compare")
    if _has_matplotlib():
        assert (tmp_path / "compare" / "latency.png").exists()
        assert (tmp_path / "compare" / "cpu.png").exists()


def test_cli_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    assert main(["compare", "--scenarios", "nope", "--results-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "compare.json").exists()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("target", ["process", "group"])
def test_ctrl_c_on_the_command_stops_every_process_it_started(tmp_path: Path, target: str) -> None:
    # SIGINT to the command alone (kill -INT), or to its whole process group, as a terminal's Ctrl-C does.
    command = [sys.executable, "-m", "connectivity.cli", "compare", "--scenarios", "down", "--requests", "2000"]
    process = subprocess.Popen(
        [*command, "--rate", "100", "--results-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Wait (bounded) until the run is under way: both live replicas up and every installed sidecar started.
        wanted = [proxy for proxy in PROXIES if proxies.binary(proxy) is not None]
        deadline = time.monotonic() + 30
        seen: dict[int, str] = {}
        while time.monotonic() < deadline:
            seen = _children(process.pid)
            commands = " ".join(seen.values())
            if commands.count("connectivity.compare.fleet") == 2 and all(proxy in commands for proxy in wanted):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the run did not get under way: {seen}")
        if target == "group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, output.decode(errors="replace")[-2000:]
    assert b"interrupted" in output
    assert not _alive(seen), f"still running: {_alive(seen)}"
    assert not (tmp_path / "compare.json").exists()
