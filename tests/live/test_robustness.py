"""Hangups of calls whose media runs over TURN over TCP (coturn).

pjnath 2.15.1 can crash a process that tears down a TURN-over-TCP
allocation while the peer still sends, so the side that hangs up first holds
the call (inactive re-INVITE) before its BYE. These few calls check that path
end to end; scripts/soak-turn-tcp runs the same calls in bulk. Needs root
and coturn.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.b2bua_lab import B2buaLab, parse_report, read_reports
from tests.live.test_turn import TURN_PASSWORD, TURN_USER, start_turnserver

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn missing"),
]

SUBNET = 100
TARGET_PORT = 5090


@pytest.fixture(scope="module")
def b2bua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    tmp = tmp_path_factory.mktemp("robustness")
    edge_ip = f"10.99.{SUBNET}.1"
    lab = B2buaLab(tmp, subnet=SUBNET, workers=1, config={
        "ice": {"turn": [{"server": f"{edge_ip}:3478", "transport": "tcp",
                          "username": TURN_USER, "password": TURN_PASSWORD}]},
        "classes": {"local": {"ice": True, "turn": True, "srtp": "off"}},
    })
    try:
        lab.create_namespaces()
        start_turnserver(lab, tmp)
        lab.write_files()
        lab.start_b2bua()
        yield lab
    finally:
        lab.close()


def turn_tcp_args(lab: B2buaLab) -> list[str]:
    return ["--turn", f"{lab.edge_ip}:3478", "--turn-user", TURN_USER,
            "--turn-password", TURN_PASSWORD, "--turn-transport", "tcp",
            "--relay-only", "-v"]


def worker_pids(lab: B2buaLab) -> dict[str, int]:
    return {status["worker"]: status["pid"] for status in lab.worker_status()}


def test_caller_holds_before_bye(b2bua: B2buaLab) -> None:
    pids = worker_pids(b2bua)
    for _ in range(3):
        caller = b2bua.start_dial("echo", "--duration", "2", *turn_tcp_args(b2bua))
        stdout, stderr = caller.communicate(timeout=60)
        if caller.returncode < 0:
            # NOTE: pjnath 2.15.1 can still crash the caller while it tears
            # down TURN over TCP after the BYE; only the B2BUA side is checked.
            continue
        report = parse_report(stdout, stderr)
        assert caller.returncode == 0, report
        assert report["ended_by"] == "local", report
        assert report["ice"]["local_type"] == "relay", report["ice"]
        b2bua.wait_idle(timeout=15)
    statuses = b2bua.wait_idle(timeout=15)
    assert all(status["bridged_calls"] == 0 for status in statuses)
    assert "ended (caller hung up" in b2bua.log_text()
    assert worker_pids(b2bua) == pids, "a worker restarted"


def test_worker_holds_before_bye(b2bua: B2buaLab, tmp_path: Path) -> None:
    pids = worker_pids(b2bua)
    report_file = tmp_path / "answer.jsonl"
    answer = b2bua.start_answer(TARGET_PORT, report_file, "--no-ice",
                                "--hangup-after", "2", "--calls", "3")
    try:
        for _ in range(3):
            code, report = b2bua.dial(
                "91234", "--hangup", "remote", "--duration", "3", "--timeout", "5",
                *turn_tcp_args(b2bua))
            assert code == 0, report
            assert report["ended_by"] == "remote", report
            b2bua.wait_idle(timeout=15)
    finally:
        answer.wait(15)
    assert len(read_reports(report_file)) == 3
    time.sleep(0.3)
    holds = [line for line in b2bua.log_text().splitlines()
             if "holding the edge leg before BYE" in line]
    assert len(holds) == 3, "the worker sent BYE without holding the caller"
    assert worker_pids(b2bua) == pids, "a worker restarted"
    assert "exited with status" not in b2bua.log_text()
