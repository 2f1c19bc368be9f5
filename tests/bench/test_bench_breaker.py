"""The breaker benchmark runs and writes its results file (speed is measured by ``python -m bench``, not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


def test_breaker_quick_writes_json_with_the_expected_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pybreaker")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench import breaker

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    returned = breaker.run(quick=True, rounds=2, calls=300, results_dir=tmp_path)

    results = json.loads((tmp_path / "breaker.json").read_text(encoding="utf-8"))
    assert results == json.loads(json.dumps(returned))
    assert results["benchmark"] == "breaker"
    assert results["quick"] is True
    assert results["skipped"] is None
    assert isinstance(results["pass"], bool)
    assert {"config", "machine", "contenders", "comparisons", "target_ratio", "elapsed_s"} <= results.keys()
    assert {"cpu_count", "python", "packages", "pybreaker"} <= results["machine"].keys()
    assert results["config"]["calls_per_round"] == 300
    assert results["config"]["rounds"] == 2
    assert {"bare", "connectivity (time)", "connectivity (count)", "pybreaker call()"} <= results[
        "contenders"
    ].keys()
    for summary in results["contenders"].values():
        assert len(summary["rounds_ns_per_call"]) == 2
        assert all(value >= 0 for value in summary["rounds_ns_per_call"])
        assert {"median_ns_per_call", "overhead_ns"} <= summary.keys()
    assert set(results["comparisons"]) == {
        "connectivity (time) vs pybreaker call()",
        "connectivity (count) vs pybreaker call()",
    }
    for comparison in results["comparisons"].values():
        assert {"ratio", "overhead_ratio", "overhead_ratio_paired_median", "target_overhead_ratio", "pass"} <= (
            comparison.keys()
        )
    output = capsys.readouterr().out
    assert "breaker connectivity (time) vs pybreaker call()" in output
    assert "breaker connectivity (count) vs pybreaker call()" in output


def test_breaker_without_pybreaker_is_skipped_and_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench import breaker

    monkeypatch.setattr(breaker, "_pybreaker_version", lambda: None)

    breaker.run(quick=True, rounds=1, calls=10, results_dir=tmp_path)

    results = json.loads((tmp_path / "breaker.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "breaker"
    assert results["skipped"] == "pybreaker is not installed"
    assert results["pass"] is True
    assert results["comparisons"] == {}
    assert "SKIPPED" in capsys.readouterr().out
