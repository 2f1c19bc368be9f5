"""The balancing benchmark runs and writes its results file (speed is measured by ``python -m bench``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]

PICKS = {f"{name} n={size}" for name in ("LeastRequest", "EWMA", "RoundRobin") for size in (10, 10_000)}
E2E = {
    "httpx",
    "balanced (EWMA)",
    "balanced (EWMA, pool per endpoint)",
    "balanced (EWMA + outlier)",
    "balanced (round robin)",
    "httpx (control)",
}


def test_balancing_quick_writes_json_with_the_expected_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    assert main(["balancing", "--quick", "--rounds", "2", "--count", "10", "--results-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "balancing.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "balancing"
    assert results["quick"] is True
    assert isinstance(results["pass"], bool)
    assert {"config", "targets", "machine", "picks", "e2e", "elapsed_s"} <= results.keys()
    assert results["targets"] == {"pick_scaling": 1.5, "e2e_ratio": 1.03}
    assert results["config"]["rounds"] == 2
    assert results["config"]["requests_per_round"] == 10
    assert results["config"]["sizes"] == [10, 10_000]
    picks = results["picks"]
    assert set(picks["contenders"]) == PICKS
    for summary in picks["contenders"].values():
        assert len(summary["rounds_ns_per_pick"]) == 2
        assert summary["median_ns_per_pick"] > 0
    assert set(picks["comparisons"]) == {
        f"{name} n=10000 vs n=10" for name in ("LeastRequest", "EWMA", "RoundRobin")
    }
    assert picks["comparisons"]["RoundRobin n=10000 vs n=10"]["target_ratio"] is None
    for mode in ("async", "sync"):
        summary = results["e2e"]["modes"][mode]
        assert set(summary["contenders"]) == E2E
        assert summary["checks"]["no request failed"] is True
        for contender in summary["contenders"].values():
            assert len(contender["rounds"]) == 2
            assert {
                "cpu_us_per_request",
                "cpu_ratio_paired_median",
                "cpu_added_us_paired_median",
            } <= contender.keys()
    output = capsys.readouterr().out
    assert "balancing pick EWMA n=10000 vs n=10" in output
    assert "balancing e2e httpx.Client: balanced (EWMA + outlier)" in output


def test_balancing_picks_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench import balancing

    returned = balancing.run(quick=True, rounds=1, picks=200, e2e=False, results_dir=tmp_path)

    assert returned["e2e"] is None
    assert json.loads((tmp_path / "balancing.json").read_text(encoding="utf-8")) == json.loads(
        json.dumps(returned)
    )
