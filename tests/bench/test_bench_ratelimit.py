"""The rate limit benchmark runs and writes its results file (speed is measured by ``python -m bench``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ratelimit_bench(monkeypatch: pytest.MonkeyPatch) -> object:
    pytest.importorskip("limits")
    pytest.importorskip("aiolimiter")
    # The bench package lives at the repository root, next to tests/, and is not installed.
    monkeypatch.syspath_prepend(str(_ROOT))
    from bench import ratelimit

    return ratelimit


def _check_contenders(contenders: dict[str, dict[str, object]], rounds: int, *, server: bool) -> None:
    for summary in contenders.values():
        values = summary["rounds_ns_per_decision"]
        assert isinstance(values, list)
        assert len(values) == rounds
        assert all(value >= 0 for value in values)
        keys = {"median_ns_per_decision", "decisions_per_cpu_s", "median_wall_ns_per_decision"}
        if server:
            keys |= {"median_server_ns_per_decision", "decisions_per_cpu_s_with_server"}
        assert keys <= summary.keys()


def test_ratelimit_quick_writes_json_with_the_expected_keys(
    ratelimit_bench: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Quick numbers are noise: only the shape of the results is checked, never a verdict.
    returned = ratelimit_bench.run(quick=True, rounds=2, calls=300, results_dir=tmp_path)  # type: ignore[attr-defined]

    results = json.loads((tmp_path / "ratelimit.json").read_text(encoding="utf-8"))
    assert results == json.loads(json.dumps(returned))
    assert results["benchmark"] == "ratelimit"
    assert results["quick"] is True
    assert results["skipped"] is None
    assert isinstance(results["pass"], bool)
    assert {"config", "machine", "local", "redis", "comparisons", "targets", "elapsed_s"} <= results.keys()
    assert {"cpu_count", "python", "packages", "limits", "aiolimiter"} <= results["machine"].keys()
    assert results["config"]["calls_per_round"] == 300
    assert results["config"]["redis_calls_per_round"] == 30
    assert results["config"]["rounds"] == 2
    local = results["local"]
    assert set(local["contenders"]) == {
        "connectivity RateLimiter.try_acquire",
        "limits MovingWindowRateLimiter.hit (memory)",
        "aiolimiter AsyncLimiter.acquire",
    }
    _check_contenders(local["contenders"], 2, server=False)
    for comparison in results["comparisons"].values():
        assert {"ratio", "ratio_paired_median", "target_ratio", "pass"} <= comparison.keys()
    output = capsys.readouterr().out
    assert (
        "ratelimit connectivity RateLimiter.try_acquire vs limits MovingWindowRateLimiter.hit (memory)" in output
    )
    if shutil.which("redis-server") is None:
        assert results["redis"]["skipped"] == "redis-server is not on PATH"
        return
    redis_part = results["redis"]
    assert redis_part["skipped"] is None
    assert set(redis_part["contenders"]) == {
        "connectivity RedisRateLimiter.atry_acquire",
        "connectivity RedisRateLimiter.try_acquire (sync)",
        "limits aio MovingWindowRateLimiter.hit (Redis)",
    }
    _check_contenders(redis_part["contenders"], 2, server=True)
    assert set(redis_part["comparisons"]) == {
        "connectivity RedisRateLimiter.atry_acquire vs limits aio MovingWindowRateLimiter.hit (Redis)"
    }
    assert len(results["comparisons"]) == 3


def test_ratelimit_without_redis_server_skips_that_part_with_a_note(
    ratelimit_bench: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ratelimit_bench.shutil, "which", lambda name: None)  # type: ignore[attr-defined]

    ratelimit_bench.run(quick=True, rounds=1, calls=100, results_dir=tmp_path)  # type: ignore[attr-defined]

    results = json.loads((tmp_path / "ratelimit.json").read_text(encoding="utf-8"))
    assert results["redis"] == {
        "skipped": "redis-server is not on PATH",
        "contenders": {},
        "comparisons": {},
        "pass": True,
    }
    assert len(results["comparisons"]) == 2
    assert "Redis part skipped" in capsys.readouterr().out


def test_ratelimit_without_the_peer_libraries_is_skipped(
    ratelimit_bench: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit_bench, "_version", lambda name: None)  # type: ignore[attr-defined]

    ratelimit_bench.run(quick=True, rounds=1, calls=10, results_dir=tmp_path)  # type: ignore[attr-defined]

    results = json.loads((tmp_path / "ratelimit.json").read_text(encoding="utf-8"))
    assert results["skipped"] == "not installed: limits, aiolimiter"
    assert results["pass"] is True
    assert results["comparisons"] == {}
