"""`b2bua run` and `check-config` on broken files: one error line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "config"

BROKEN_FILES = {
    "syntax.yaml": ("listen: [\n  - address: 127.0.0.1\n", "syntax.yaml:"),
    "unknown-key.yaml": ("lisen: []\n", "lisen"),
    "wrong-type.yaml": ("workers:\n  count: many\n", "workers.count"),
    "bad-srtp.yaml": ("srtp: sometimes\n", "srtp"),
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "b2bua.cli", *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("command", ["run", "check-config"])
@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_broken_config_one_line(tmp_path: Path, command: str, name: str) -> None:
    text, expected = BROKEN_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0], "the error must name the file"


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bad_dialplan_target_named(command: str) -> None:
    result = run_cli(command, "--config", str(DATA / "uses-bad-target.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown target 'trunk2'" in result.stderr
    assert "bad-target.yaml:" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "absent.yaml" in result.stderr
