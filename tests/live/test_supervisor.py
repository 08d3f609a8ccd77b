"""`b2bua run` as a process supervisor: restarts, locking, orphans.

Runs on loopback with ICE off (no namespaces needed), on ports of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.live.b2bua_lab import child_env, cli_argv, parse_report

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts Kamailio")

EDGE_PORT = 5460


def write_config(tmp: Path) -> Path:
    path = tmp / "b2bua.yaml"
    path.write_text(yaml.safe_dump({
        "listen": [{"address": "127.0.0.1", "port": EDGE_PORT, "ice": False}],
        "media": {"address": "127.0.0.1", "port_min": 31000, "port_max": 31999},
        "workers": {"count": 2, "sip_port_base": 5480},
        "edge": {"internal_address": "127.0.0.1", "internal_port": 5470},
        "runtime_dir": str(tmp / "run"),
    }))
    return path


def processes_using(tmp: Path) -> list[int]:
    """Return pids whose command line mentions the test's folder."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if str(tmp).encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def wait_ready(tmp: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "b2bua run exited early"
        statuses = list((tmp / "run" / "workers").glob("*.json"))
        if len(statuses) == 2 and (tmp / "run" / "kamailio.ctl").exists():
            time.sleep(0.5)
            return
        time.sleep(0.2)
    raise AssertionError("b2bua run not ready")


def dial_echo() -> tuple[int, dict]:
    process = subprocess.run(
        cli_argv("dial", f"sip:echo@127.0.0.1:{EDGE_PORT}", "--no-ice", "--bind",
                 "127.0.0.1", "--json", "--duration", "1"),
        capture_output=True, env=child_env(), timeout=60,
    )
    return process.returncode, parse_report(process.stdout, process.stderr)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    config = write_config(tmp_path)
    log = open(tmp_path / "run.log", "wb")
    process = subprocess.Popen(cli_argv("run", "--config", str(config)),
                               stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        wait_ready(tmp_path, process)
        yield tmp_path, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)
        for pid in processes_using(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_second_run_same_runtime_dir(running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    tmp, _ = running
    second = subprocess.run(cli_argv("run", "--config", str(tmp / "b2bua.yaml")),
                            capture_output=True, text=True, env=child_env(), timeout=30)
    assert second.returncode == 2
    assert "in use by another b2bua run" in second.stderr
    code, report = dial_echo()
    assert code == 0, report


def test_killed_kamailio_restarts(running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    tmp, process = running
    kamailio_pid = int((tmp / "run" / "kamailio.pid").read_text())
    os.kill(kamailio_pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    code, report = 1, {}
    while time.monotonic() < deadline:
        time.sleep(1)
        code, report = dial_echo()
        if code == 0:
            break
    assert code == 0, report
    process.terminate()
    process.wait(20)
    time.sleep(1)
    assert processes_using(tmp) == [], "processes left after stop"


def test_killed_supervisor_leaves_nothing(
        running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    tmp, process = running
    process.kill()
    process.wait(5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and processes_using(tmp):
        time.sleep(0.2)
    assert processes_using(tmp) == [], "children outlived the supervisor"


def test_status_reports_edge_and_calls(
        running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    tmp, _ = running
    caller = subprocess.Popen(
        cli_argv("dial", f"sip:echo@127.0.0.1:{EDGE_PORT}", "--no-ice", "--bind",
                 "127.0.0.1", "--json", "--duration", "4"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    time.sleep(2.5)
    status = subprocess.run(cli_argv("status", "--config", str(tmp / "b2bua.yaml")),
                            capture_output=True, text=True, env=child_env(), timeout=30)
    caller.communicate(timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("edge: pid")
    assert lines[0].endswith("running")
    assert any(line.startswith("  call ") and "to echo" in line for line in lines), lines


def test_hung_worker_restarted(running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    tmp, _ = running
    status_file = tmp / "run" / "workers" / "w0.json"
    old_pid = json.loads(status_file.read_text())["pid"]
    os.kill(old_pid, signal.SIGSTOP)
    deadline = time.monotonic() + 60
    new_pid = old_pid
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            new_pid = json.loads(status_file.read_text())["pid"]
        except (OSError, ValueError):
            continue
        if new_pid != old_pid:
            break
    assert new_pid != old_pid, "the hung worker was not replaced"
    log = (tmp / "run.log").read_text(errors="replace")
    assert "has not updated its status" in log
    code, report = dial_echo()
    assert code == 0, report


def test_workers_forked_and_named(running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    tmp, process = running
    for worker_id in ("w0", "w1"):
        pid = json.loads((tmp / "run" / "workers" / f"{worker_id}.json").read_text())["pid"]
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent_pid = int(stat.rsplit(")", 1)[1].split()[1])
        assert parent_pid == process.pid, f"{worker_id} is not the supervisor's child"
        assert Path(f"/proc/{pid}/comm").read_text().strip() == f"b2bua-{worker_id}"
    code, report = dial_echo()
    assert code == 0, report
