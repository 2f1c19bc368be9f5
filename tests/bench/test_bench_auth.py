"""The auth benchmark runs and writes its results file (speed is measured by ``python -m bench``, not here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


def test_auth_quick_writes_json_with_both_parts_and_their_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main

    from bench import auth

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    main(["auth", "--quick", "--rounds", "1", "--count", "10", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "auth.json").read_text(encoding="utf-8"))
    assert results["benchmark"] == "auth"
    assert results["quick"] is True
    assert isinstance(results["pass"], bool)
    assert (results["target_speedup"], results["target_ratio"]) == (50.0, 1.05)
    assert {"config", "machine", "verification", "middleware", "checks", "skipped", "elapsed_s"} <= results.keys()
    assert auth.KEY_ENV not in os.environ  # the servers' key does not outlive the run

    verification = results["verification"]
    assert set(verification["contenders"]) == {
        "pyjwt RS256 (cold)",
        "pyjwt ES256 (cold)",
        "connectivity RS256 (uncached)",
        "connectivity ES256 (uncached)",
        "connectivity cached (static key)",
        "connectivity cached (JWKS)",
    }
    for summary in verification["contenders"].values():
        assert len(summary["rounds_ns_per_call"]) == 1
        assert summary["ns_per_call"] > 0
    held = [label for label, comparison in verification["comparisons"].items() if comparison["held_to_target"]]
    assert held == [
        "connectivity cached (JWKS) vs pyjwt RS256 (cold)",
        "connectivity cached (JWKS) vs pyjwt ES256 (cold)",
    ]
    assert {f"{label} >= 50x" for label in held} <= results["checks"].keys()

    if results["skipped"]:
        pytest.skip(f"server CPU cannot be read here: {results['skipped']}")
    middleware = results["middleware"]
    contenders = middleware["contenders"]
    stack = "jwt + authz" if results["config"]["authorization_middleware"] else "jwt"
    assert {"bare", "jwt", stack, "bare (control)"} == set(contenders)
    for name, summary in contenders.items():
        assert summary["held_to_target"] is (name == stack)
        assert summary["errors"] == 0
        (round_,) = summary["rounds"]
        assert round_["requests"] == 10
        assert round_["server_ns"] > 0
    assert list(middleware["checks"]) == [f"{stack} <= 1.05x bare"]
    assert middleware["rounds_completed"] == 1
    output = capsys.readouterr().out
    assert "noise floor" in output
    assert f"auth: {stack} <= 1.05x bare" in output
    assert "auth: connectivity cached (JWKS) vs pyjwt RS256 (cold)" in output
