"""The mirror benchmark runs and writes its results file (the latency ratio is measured by ``python -m bench``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


def test_mirror_quick_writes_json_with_every_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    main(["mirror", "--quick", "--count", "4", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "mirror.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "mirror"
    assert {"config", "machine", "modes", "checks", "pass", "target_ratio", "elapsed_s"} <= results.keys()
    assert set(results["modes"]) == {"sync", "asyncio", "trio"}
    for mode in results["modes"].values():
        assert mode["plain_ms"] > 0
        assert mode["ratio"] > 0
        assert len(mode["rounds"]) == 1
    assert "mirrored primary latency" in capsys.readouterr().out
