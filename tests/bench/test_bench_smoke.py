"""The benchmark harness runs and writes its results file (speed is measured by ``python -m bench``, not here)."""

from __future__ import annotations

import json
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
