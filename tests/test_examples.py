"""Every script in examples/ runs to completion against its own loopback upstream and reports success."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# The last line an example prints: "ok: <successes>/<total> ...", both counted by the example itself.
OK_LINE = re.compile(r"ok: (\d+)/(\d+)\b")


def run(example: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(example), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{example.name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def assert_ok(example: Path, stdout: str) -> None:
    lines = stdout.strip().splitlines()
    match = OK_LINE.match(lines[-1]) if lines else None
    assert match, f"{example.name} did not end with an 'ok: <successes>/<total>' line:\n{stdout}"
    successes, total = int(match.group(1)), int(match.group(2))
    assert 0 < successes <= total, lines[-1]


def test_there_are_examples() -> None:
    assert EXAMPLES, "no examples/*.py found"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(example: Path) -> None:
    pytest.importorskip("uvicorn")
    assert_ok(example, run(example))


@pytest.mark.parametrize(
    "example", [path for path in EXAMPLES if "--backend" in path.read_text()], ids=lambda path: path.name
)
def test_async_example_runs_on_trio(example: Path) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("trio")
    assert_ok(example, run(example, "--backend", "trio"))
