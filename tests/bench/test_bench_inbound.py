"""The inbound benchmark runs and writes its results file (speed is measured by ``python -m bench``, not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


def test_inbound_quick_writes_json_with_every_contender_and_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    main(["inbound", "--quick", "--rounds", "1", "--count", "10", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "inbound.json").read_text(encoding="utf-8"))
    if results["skipped"]:
        pytest.skip(f"server CPU cannot be read here: {results['skipped']}")
    assert results["benchmark"] == "inbound"
    assert results["quick"] is True
    assert isinstance(results["pass"], bool)
    assert {"config", "machine", "contenders", "checks", "target_ratio", "noise_floor_us", "elapsed_s"} <= (
        results.keys()
    )
    assert {"cpu_count", "python", "packages", "pinning", "starlette"} <= results["machine"].keys()
    assert results["config"]["requests_per_round"] == 10
    assert results["config"]["rounds_completed"] == 1
    contenders = results["contenders"]
    assert set(contenders) == {"bare", "ratelimit", "ratelimit (headers=True)", "bare (control)"}
    for name, summary in contenders.items():
        assert {
            "held_to_target",
            "server_us_per_request",
            "ratio_vs_bare",
            "added_us_vs_bare",
            "ratio_paired_median",
            "added_us_paired_median",
            "errors",
        } <= summary.keys()
        assert summary["held_to_target"] is (name == "ratelimit")
        assert summary["errors"] == 0
        (round_,) = summary["rounds"]
        assert round_["requests"] == 10
        assert round_["server_ns"] > 0
    assert contenders["bare"]["ratio_vs_bare"] == 1.0
    assert list(results["checks"]) == ["ratelimit <= 1.05x bare"]
    output = capsys.readouterr().out
    assert "noise floor" in output
    assert "inbound: ratelimit <= 1.05x bare" in output
