"""The benchmark harness runs and writes its results files (speed is measured by ``python -m bench``, not here)."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


def test_overhead_quick_writes_json_with_the_expected_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    assert main(["overhead", "--quick", "--rounds", "5", "--count", "200", "--results-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "overhead.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "overhead"
    assert results["quick"] is True
    assert {"config", "machine", "modes", "pass", "target_added_us", "elapsed_s"} <= results.keys()
    assert {"cpu_count", "python", "packages"} <= results["machine"].keys()
    assert {"sync", "asyncio"} <= results["modes"].keys()
    for mode in results["modes"].values():
        assert {"contenders", "added_us", "added_us_paired_median", "ratio", "pass"} <= mode.keys()
        for contender in ("bare", "connectivity"):
            rounds = mode["contenders"][contender]["rounds_ns_per_call"]
            assert len(rounds) == 5
            assert all(value >= 0 for value in rounds)
    output = capsys.readouterr().out
    assert "overhead sync" in output
    assert "overhead asyncio" in output


def test_e2e_quick_writes_json_with_both_connectivity_contenders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("sniffio")
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    main(["e2e", "--quick", "--rounds", "1", "--count", "5", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "e2e.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "e2e"
    assert {"config", "machine", "modes", "pass", "target_ratio", "elapsed_s"} <= results.keys()
    assert {"sync", "async"} <= results["modes"].keys()
    for mode in results["modes"].values():
        contenders = mode["contenders"]
        assert {
            "httpx",
            "connectivity (full)",
            "connectivity (+breaker)",
            "connectivity (+balancer)",
            "connectivity (defaults)",
            "connectivity (retry)",
            "httpx (control)",
        } <= contenders.keys()
        for summary in contenders.values():
            assert {
                "cpu_us_per_request",
                "cpu_ratio_vs_httpx",
                "cpu_added_us_vs_httpx",
                "errors",
            } <= summary.keys()
            assert summary["errors"] == 0
        assert "connectivity (full) <= 1.02x httpx (paired)" in mode["checks"]
        assert "connectivity (+breaker) <= 1.02x httpx (paired)" in mode["checks"]
        assert "connectivity (+balancer) <= 1.03x httpx (paired)" in mode["checks"]
        assert not any(check.startswith("connectivity (defaults)") for check in mode["checks"])
        if "httpx-retries" in contenders:
            assert "connectivity (retry) < httpx-retries (same job)" in mode["checks"]
    assert "noise floor" in capsys.readouterr().out


def test_e2e_pools_the_rounds_of_several_client_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("sniffio")
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    main(["e2e", "--quick", "--rounds", "1", "--count", "5", "--processes", "2", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "e2e.json").read_text(encoding="utf-8"))
    assert results["config"]["client_processes"] == 2
    for mode in results["modes"].values():
        for name, summary in mode["contenders"].items():
            assert len(summary["rounds"]) == 2  # one round from each process
            assert summary["errors"] == 0
            assert len(summary["cpu_ratio_paired_median_by_process"]) == 2, name


def test_instructions_without_valgrind_is_skipped_and_fails_only_under_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    monkeypatch.setattr("bench.instructions.shutil.which", lambda _name: None)

    assert main(["instructions", "--results-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "instructions.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "instructions"
    assert results["pass"] is True
    assert "valgrind not found" in results["skipped"]
    assert results["modes"] == {}
    assert "SKIPPED" in capsys.readouterr().out

    assert main(["instructions", "--strict", "--results-dir", str(tmp_path)]) == 1


def test_instructions_of_chosen_contenders_write_a_partial_file_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.instructions import main

    monkeypatch.setattr("bench.instructions.shutil.which", lambda _name: None)

    chosen = ["--contender", "connectivity (+balancer)", "--mode", "async"]
    assert main([*chosen, "--results-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "instructions.json").exists()  # a partial run never replaces the full one
    results = json.loads((tmp_path / "instructions-partial.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "instructions"
    assert "valgrind not found" in results["skipped"]
    assert results["balanced_target_ratio"] == 1.03
    with pytest.raises(SystemExit):
        main(["--contender", "no such contender"])
    assert "invalid choice" in capsys.readouterr().err


def test_the_balanced_contender_is_addressed_to_its_service() -> None:
    from bench._contenders import BALANCED_STACK, BARE, SERVICE, request_url, sync_get

    upstream = "http://127.0.0.1:8080/"
    assert request_url(BARE, upstream) == upstream
    assert request_url(BALANCED_STACK, upstream) == f"http://{SERVICE}/"
    with contextlib.ExitStack() as stack, pytest.raises(ValueError, match="upstream"):
        sync_get(BALANCED_STACK, stack)


def test_instructions_quick_under_callgrind_writes_json_with_the_expected_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    pytest.importorskip("uvicorn")
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    # Sync only, bare httpx and the full stack, 2 segments of 20 requests each: about 20 s under callgrind.
    main(["instructions", "--quick", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "instructions.json").read_text(encoding="utf-8"))
    if results["skipped"]:
        pytest.skip(f"callgrind cannot count here: {results['skipped']}")
    assert results["benchmark"] == "instructions"
    assert results["quick"] is True
    assert {"config", "machine", "modes", "pass", "target_ratio", "elapsed_s"} <= results.keys()
    assert list(results["modes"]) == ["sync"]
    mode = results["modes"]["sync"]
    assert {"contenders", "checks", "pass"} <= mode.keys()
    assert {"httpx", "connectivity (full)"} <= mode["contenders"].keys()
    for summary in mode["contenders"].values():
        assert {"ir_per_request", "ir_min_max", "added_vs_httpx", "ratio_vs_httpx", "processes"} <= summary.keys()
        assert summary["ir_per_request"] > 0
        (process,) = summary["processes"]
        assert len(process["segments_ir"]) == 2
        assert process["marker_ir"] >= 0
    assert "connectivity (full) <= 1.02x httpx" in mode["checks"]


def test_tracing_quick_writes_json_with_both_measurements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.instrumentation.httpx")
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    main(["tracing", "--quick", "--rounds", "1", "--count", "5", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "tracing.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "tracing"
    assert set(results["no_sdk_in_memory"]) == {"sync", "async"}
    for mode in ("sync", "async"):
        e2e = results["with_sdk_e2e"][mode]
        assert {"httpx", "otel-httpx", "connectivity tracing", "connectivity full"} <= e2e.keys()
        assert e2e["otel-httpx"]["vs_otel_httpx"] == 1.0
    assert len(results["checks"]) == 4
    out = capsys.readouterr().out
    assert "tracing, no SDK, sync" in out
    assert "tracing with the SDK, async" in out
