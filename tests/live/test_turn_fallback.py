"""Live TURN-over-TCP fallback: the edge namespace cannot send UDP to the far side.

coturn runs in the far namespace. An iptables rule inside the edge namespace
drops every UDP packet from the edge to the far address. The worker's TURN
probe over UDP therefore fails and the worker allocates its relay over TCP,
which is then the only media path left. SIP uses TCP for the same reason.
`b2bua check` must report the same picture. Needs root, coturn and iptables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.b2bua_lab import B2buaLab, child_env, start_coturn

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn missing"),
    pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables missing"),
]

SUBNET = 50
TURN_PORT = 3478
TURN_USER = "lab"
TURN_PASSWORD = "labsecret"


def check_argv(*args: str) -> list[str]:
    # The module entry point works whether or not `b2bua check` is registered.
    return [sys.executable, "-m", "b2bua.cli_check", *args]


def start_turnserver(lab: B2buaLab, tmp: Path) -> Path:
    assert lab.far is not None
    return start_coturn(lab.far, lab.far_ip, tmp, port=TURN_PORT,
                        relay_ports=(49300, 49399), user=TURN_USER,
                        password=TURN_PASSWORD)


@pytest.fixture(scope="module")
def b2bua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    tmp = tmp_path_factory.mktemp("turn_fallback")
    far_ip = f"10.99.{SUBNET}.2"
    lab = B2buaLab(tmp, subnet=SUBNET, workers=1, config={
        "ice": {"turn": [{"server": f"{far_ip}:{TURN_PORT}", "transport": "udp",
                          "username": TURN_USER, "password": TURN_PASSWORD}]},
        "classes": {"local": {"ice": True, "turn": True, "srtp": "optional"}},
    })
    try:
        lab.create_namespaces()
        assert lab.edge is not None
        lab.turn_log = start_turnserver(lab, tmp)  # type: ignore[attr-defined]
        lab.edge.run(["iptables", "-A", "OUTPUT", "-p", "udp", "-d", far_ip,
                      "-j", "DROP"])
        lab.write_files()
        lab.start_b2bua()
        yield lab
    finally:
        lab.close()


def wait_for_log(lab: B2buaLab, pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, lab.log_text())
        if match:
            return match.group(0)
        time.sleep(0.2)
    raise AssertionError(f"no log line matching {pattern!r}:\n{lab.log_text()[-3000:]}")


def tcp_media_sessions(lab: B2buaLab) -> set[str]:
    """Return coturn sessions from the edge over TCP that bound a media channel."""
    text = lab.turn_log.read_text(errors="replace")  # type: ignore[attr-defined]
    channel, tcp = set(), set()
    for match in re.finditer(r"session (\d+): ([^\n]*)", text):
        session, rest = match.groups()
        if "CHANNEL_BIND processed, success" in rest:
            channel.add(session)
        if f"remote {lab.edge_ip}:" in rest and "TCP connection" in rest:
            tcp.add(session)
    return channel & tcp


def test_worker_logs_switch_to_tcp(b2bua: B2buaLab) -> None:
    line = wait_for_log(b2bua, r"w0 TURN server \S+: UDP blocked, using TCP[^\n]*")
    assert b2bua.far_ip in line


def test_check_reports_udp_failed_tcp_ok(b2bua: B2buaLab) -> None:
    assert b2bua.edge is not None
    process = b2bua.edge.popen(
        check_argv("--config", str(b2bua.config_path), "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
    )
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["ok"] is True
    [turn] = [server for server in report["servers"] if server["kind"] == "turn"]
    results = {result["transport"]: result for result in turn["results"]}
    assert results["udp"]["ok"] is False
    assert "EPERM" in results["udp"]["error"]
    assert results["tcp"]["ok"] is True
    assert results["tcp"]["detail"] == "allocated and released"
    assert results["tcp"]["relayed_address"].startswith(f"{b2bua.far_ip}:")
    assert results["tls"]["ok"] is False


def test_check_fails_without_any_transport(b2bua: B2buaLab, tmp_path: Path) -> None:
    assert b2bua.edge is not None
    config = dict(b2bua.config)
    config["ice"] = {"stun": [f"{b2bua.far_ip}:3999"]}
    path = tmp_path / "closed.yaml"
    path.write_text(json.dumps(config))
    process = b2bua.edge.popen(
        check_argv("--config", str(path), "--timeout", "0.3", "--tries", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
    )
    out, _ = process.communicate(timeout=30)
    text = out.decode()
    assert process.returncode == 1, text
    assert "FAILED on every transport" in text
    assert "connection refused" in text


def test_call_media_through_tcp_relay(b2bua: B2buaLab) -> None:
    code, report = b2bua.dial("echo", "--duration", "2", transport="tcp")
    assert code == 0, report
    assert report["ice"]["state"] == "completed", report["ice"]
    # The caller's only reachable candidate of the worker is the TURN relay.
    assert report["ice"]["remote_type"] == "relay", report["ice"]
    assert report["rtp"]["tx_packets"] > 50
    assert report["rtp"]["rx_packets"] > 50
    ice_line = wait_for_log(
        b2bua, rf"call {re.escape(report['call_id'])}: ICE completed[^\n]*")
    assert re.search(r"pair relay -> ", ice_line), ice_line
    deadline = time.monotonic() + 5
    while not (sessions := tcp_media_sessions(b2bua)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sessions, "coturn logged no TCP allocation with a channel from the edge"
    assert b2bua.wait_idle()[0]["bridged_calls"] == 0
