"""The ``connectivity`` command: ``--version``, the console script, and ``connectivity demo`` end to end."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import connectivity
from connectivity.cli import main

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def _row(output: str, label: str) -> str:
    for line in _ANSI.sub("", output).splitlines():
        if label in line:
            return line
    raise AssertionError(f"no {label!r} row in the demo output:\n{output}")


def test_version_exits_zero_and_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert connectivity.__version__ in capsys.readouterr().out


def test_no_subcommand_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_console_script_resolves_to_main() -> None:
    try:
        distribution = metadata.distribution("connectivity-sdk")
    except metadata.PackageNotFoundError:
        # Run from a source tree: check what pyproject.toml declares instead of the installed metadata.
        tomllib = pytest.importorskip("tomllib")
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        target = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]["connectivity"]
        module, _, attribute = target.partition(":")
        __import__(module)
        assert getattr(sys.modules[module], attribute) is main
        return
    (entry_point,) = [ep for ep in distribution.entry_points if ep.group == "console_scripts"]
    assert entry_point.name == "connectivity"
    assert entry_point.load() is main


def test_demo_prints_both_columns_and_connectivity_succeeds_more(capsys: pytest.CaptureFixture[str]) -> None:
    # Seeded: every replica draws its faults from its own seeded generator, and bare httpx sends each request
    # once, so with seed 1 its 10 requests to the flaky replica meet the same 503s in every run.
    assert main(["demo", "--requests", "30", "--seed", "1", "--time-limit", "8"]) == 0
    output = capsys.readouterr().out

    header = _row(output, "metric")
    assert "httpx" in header
    assert "httpx + connectivity" in header
    bare, ours = (float(value) for value in _PERCENT.findall(_row(output, "success rate")))
    assert bare < 100.0, "the flaky replica should have failed some bare requests"
    assert ours > bare
    for label in ("p50 latency", "p99 latency", "attempts / request", "errors"):
        _row(output, label)
