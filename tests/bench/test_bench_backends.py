"""The backends benchmark runs and writes its results file (speed is measured by ``python -m bench``, not here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from connectivity.testing.system import require_binary

_ROOT = Path(__file__).resolve().parents[2]
_CONTENDERS = {
    "httpx",
    "httpx + stack",
    "aiohttp backend",
    "aiohttp + stack",
    "auto backend",
    "auto + stack",
    "raw aiohttp",
    "httpx via sidecar",
} | ({"httpx2"} if importlib.util.find_spec("httpx2") is not None else set())


def test_backends_quick_writes_json_with_every_contender_level_and_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("httpx_aiohttp")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench.__main__ import main
    from bench.backends import find_nginx

    if find_nginx() is None:
        require_binary("nginx")  # skips, or fails under CONNECTIVITY_REQUIRE_SYSTEM_DEPS=1

    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    main(["backends", "--quick", "--rounds", "1", "--count", "80", "--results-dir", str(tmp_path)])

    results = json.loads((tmp_path / "backends.json").read_text(encoding="utf-8"))
    if results["skipped"]:
        pytest.skip(f"not measurable here: {results['skipped']}")
    assert results["error"] is None, results["error"]
    assert results["benchmark"] == "backends"
    assert results["quick"] is True
    assert isinstance(results["pass"], bool)
    assert {
        "config",
        "machine",
        "levels",
        "client_cpu_us_per_request",
        "sidecar_proxy_cpu_us_per_request",
        "check_values",
        "checks",
        "elapsed_s",
    } <= results.keys()
    assert {"cpu_count", "python", "packages", "pinning", "nginx"} <= results["machine"].keys()
    assert {"httpx", "httpcore", "aiohttp", "httpx-aiohttp"} <= results["machine"]["packages"].keys()
    config = results["config"]
    assert config["requests_per_round"] == 80
    assert config["requests_per_round_c1"] == 40
    assert config["rounds_completed"] == 1
    assert all(choice == {"asyncio": "aiohttp"} for choice in config["auto_selected"].values())

    assert set(results["levels"]) == {"1", "8", "32", "64"}
    for level in results["levels"].values():
        assert set(level["contenders"]) == _CONTENDERS
        assert set(level["stack_added_cpu_us"]) == {"httpcore", "aiohttp", "auto"}
        assert level["sidecar_proxy_cpu_us_per_request"] > 0
        for summary in level["contenders"].values():
            assert {"requests_per_s", "cpu_us_per_request", "p50_ms", "p99_ms", "errors"} <= summary.keys()
            assert summary["errors"] == 0
            assert summary["requests_per_s"] > 0
            (round_,) = summary["rounds"]
            assert round_["requests"] in (40, 80)
    assert set(results["client_cpu_us_per_request"]) == _CONTENDERS
    assert set(results["sidecar_proxy_cpu_us_per_request"]) == {"1", "8", "32", "64"}

    assert list(results["checks"]) == [
        "auto + stack >= 2.0x httpx requests/s at c=32",
        "auto + stack p99 <= 0.2x httpx p99 at c=64",
        "stack's added CPU on aiohttp <= on httpcore + 10 µs at c=1",
    ]
    assert all(isinstance(ok, bool) for ok in results["checks"].values())
    values = results["check_values"]
    assert {"requests_per_s_ratio_c32", "p99_ratio_c64", "stack_added_cpu_us_c1"} <= values.keys()
    assert values["stack_added_cpu_us_c1"]["allowance_us"] == 10.0

    output = capsys.readouterr().out
    assert "c = 64" in output
    assert "sidecar hop" in output
    assert "backends: auto + stack >= 2.0x httpx requests/s at c=32" in output
