"""Live tests of `b2bua dial` against `b2bua answer` inside network namespaces.

ICE in this pjsua2 build needs non-loopback addresses, so every call runs
between two namespaces joined by a veth pair (10.99.0.0/16). Needs root.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from b2bua.netns import Lab, Namespace, cleanup_stale, list_namespaces

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns")

REPO = Path(__file__).resolve().parents[2]
ANSWER_ADDR = "10.99.41.1"
DIAL_ADDR = "10.99.41.2"
SIP_PORT = 5070
REPORT_KEYS = {
    "srtp",
    "status",
    "reason",
    "answered",
    "setup_ms",
    "ice",
    "codec",
    "rtp",
    "ended_by",
    "remote_sdp",
}
ICE_KEYS = {"state", "local_type", "remote_type", "transport"}


def cli_argv(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "b2bua.cli", command, *args]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab("tdial") as lab:
        yield lab


@pytest.fixture
def pair(lab: Lab) -> tuple[Namespace, Namespace]:
    answer_ns = lab.add_namespace("ans")
    dial_ns = lab.add_namespace("dial")
    lab.link(answer_ns, f"{ANSWER_ADDR}/24", dial_ns, f"{DIAL_ADDR}/24")
    return answer_ns, dial_ns


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def start_answer(ns: Namespace, report: Path, *args: str) -> subprocess.Popen[str]:
    """Start `b2bua answer` in ns and wait for its "listening" line."""
    argv = cli_argv(
        "answer",
        "--bind",
        ns.address,
        "--port",
        str(SIP_PORT),
        "--report",
        str(report),
        "--max-seconds",
        "60",
        *args,
    )
    proc = ns.popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    assert ready, "answer printed no listening line within 15 s"
    line = proc.stdout.readline()
    assert line.startswith("answer: listening on"), line
    return proc


def run_dial(ns: Namespace, uri: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `b2bua dial --json` in ns; return (exit status, report, stderr)."""
    argv = [
        "ip",
        "netns",
        "exec",
        ns.name,
        *cli_argv("dial", uri, "--json", *args),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=90, env=env(), check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def answer_records(proc: subprocess.Popen[str], report: Path) -> list[dict[str, Any]]:
    proc.wait(timeout=20)
    assert proc.returncode == 0
    return [json.loads(line) for line in report.read_text().splitlines()]


def answer_uri() -> str:
    return f"sip:tone@{ANSWER_ADDR}:{SIP_PORT}"


def test_dial_ice_call(pair: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "1")
    code, report, _ = run_dial(
        dial_ns, answer_uri(), "--bind", DIAL_ADDR, "--duration", "2"
    )

    assert code == 0
    assert REPORT_KEYS <= report.keys()
    assert report["status"] == 200
    assert report["answered"] is True
    assert report["setup_ms"] >= 0
    assert report["codec"] == "PCMU/8000"
    assert report["rtp"]["tx_packets"] > 0
    assert report["rtp"]["rx_packets"] > 0
    assert report["ended_by"] == "local"
    assert "a=ice-ufrag:" in report["remote_sdp"]

    ice = report["ice"]
    assert ice is not None
    assert ICE_KEYS <= ice.keys()
    assert ice["state"] == "completed"
    assert ice["local_type"] == "host"
    assert ice["remote_type"] == "host"
    assert ice["transport"] == "udp"
    assert ice["remote_address"].startswith(ANSWER_ADDR + ":")

    [record] = answer_records(answer, report_path)
    assert record["status"] == 200
    assert record["rtp"]["rx_packets"] > 0
    assert record["rtp"]["tx_packets"] > 0
    assert record["ended_by"] == "remote"
    assert record["ice"]["state"] == "completed"


def test_dial_without_ice(pair: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "1", "--no-ice")
    code, report, _ = run_dial(
        dial_ns, answer_uri(), "--bind", DIAL_ADDR, "--no-ice", "--duration", "1"
    )
    assert code == 0
    assert report["answered"] is True
    assert report["ice"] is None
    assert "a=ice-ufrag:" not in report["remote_sdp"]
    assert report["rtp"]["rx_packets"] > 0
    [record] = answer_records(answer, report_path)
    assert record["ice"] is None


def test_dial_over_tcp(pair: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "1")
    code, report, _ = run_dial(
        dial_ns,
        answer_uri(),
        "--bind",
        DIAL_ADDR,
        "--transport",
        "tcp",
        "--duration",
        "1",
    )
    assert code == 0
    assert report["status"] == 200
    assert report["rtp"]["rx_packets"] > 0
    assert len(answer_records(answer, report_path)) == 1


def test_dial_srtp_required(pair: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "2", "--srtp", "optional")
    code, report, _ = run_dial(
        dial_ns,
        answer_uri(),
        "--bind",
        DIAL_ADDR,
        "--srtp",
        "required",
        "--duration",
        "1",
    )
    assert code == 0
    assert report["srtp"] is not None
    assert "RTP/SAVP" in report["remote_sdp"]
    assert report["rtp"]["rx_packets"] > 0
    code, report, _ = run_dial(
        dial_ns, answer_uri(), "--bind", DIAL_ADDR, "--duration", "1"
    )
    assert code == 0
    assert report["srtp"] is None
    records = answer_records(answer, report_path)
    assert records[0]["srtp"] is not None
    assert records[1]["srtp"] is None


def test_dial_srtp_rejected_488(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    # pjsua rejects the RTP/SAVP offer itself, so the answer process may never
    # see the call; the lab stops it.
    start_answer(answer_ns, report_path)
    code, report, _ = run_dial(
        dial_ns, answer_uri(), "--bind", DIAL_ADDR, "--srtp", "required"
    )
    assert code == 1
    assert report["status"] == 488
    assert report["answered"] is False


def test_dial_no_response_408(pair: tuple[Namespace, Namespace]) -> None:
    _, dial_ns = pair
    # Nothing listens on this port, so the INVITE gets no response at all.
    code, report, _ = run_dial(
        dial_ns, f"sip:x@{ANSWER_ADDR}:5999", "--bind", DIAL_ADDR, "--timeout", "1"
    )
    assert code == 1
    assert report["status"] == 408
    assert report["answered"] is False


def test_dial_busy_486(pair: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "1", "--status", "486")
    code, report, _ = run_dial(dial_ns, answer_uri(), "--bind", DIAL_ADDR)
    assert code == 1
    assert report["status"] == 486
    assert report["answered"] is False
    assert report["setup_ms"] is None
    assert report["rtp"] == {"tx_packets": 0, "rx_packets": 0}
    [record] = answer_records(answer, report_path)
    assert record["status"] == 486


def test_dial_remote_hangup(pair: tuple[Namespace, Namespace], tmp_path: Path) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(
        answer_ns, report_path, "--calls", "1", "--hangup-after", "1.5"
    )
    code, report, _ = run_dial(
        dial_ns,
        answer_uri(),
        "--bind",
        DIAL_ADDR,
        "--hangup",
        "remote",
        "--duration",
        "1",
        "--timeout",
        "10",
    )
    assert code == 0
    assert report["ended_by"] == "remote"
    assert report["rtp"]["rx_packets"] > 0
    [record] = answer_records(answer, report_path)
    assert record["ended_by"] == "local"


def test_dial_early_media_then_answer(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(
        answer_ns, report_path, "--calls", "1", "--early-media", "--ring", "1"
    )
    code, report, _ = run_dial(
        dial_ns, answer_uri(), "--bind", DIAL_ADDR, "--duration", "1"
    )
    assert code == 0
    assert report["answered"] is True
    assert report["setup_ms"] >= 1000
    assert len(answer_records(answer, report_path)) == 1


def test_dial_no_answer_timeout(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    answer_ns, dial_ns = pair
    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "1", "--ring", "30")
    started = time.monotonic()
    code, report, _ = run_dial(
        dial_ns, answer_uri(), "--bind", DIAL_ADDR, "--timeout", "1.5"
    )
    assert code == 1
    assert time.monotonic() - started < 20
    assert report["answered"] is False
    assert "no answer within 1.5 s" in report["error"]
    [record] = answer_records(answer, report_path)
    assert record["answered"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["not-a-uri"],
        ["sip:x@10.99.41.1", "--relay-only"],
        ["sip:x@10.99.41.1", "--turn", "10.99.41.1"],
        ["sip:x@10.99.41.1", "--header", "no colon"],
        ["sip:x@10.99.41.1", "--srtp", "sometimes"],
        ["sip:x@10.99.41.1", "--bind", "127.0.0.1"],
    ],
)
def test_dial_bad_arguments(args: list[str]) -> None:
    done = subprocess.run(
        cli_argv("dial", *args),
        capture_output=True,
        text=True,
        timeout=30,
        env=env(),
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "Error" in done.stderr


def turnserver_argv(listen: str, relay: str, tmp_path: Path) -> list[str]:
    """Return coturn's command line: long-term credentials lab/labsecret, no TLS."""
    options = (
        f"-n --listening-ip {listen} --relay-ip {relay} --listening-port 3478 "
        "--lt-cred-mech --user lab:labsecret --realm lab.test "
        "--no-tls --no-dtls --no-cli --allowed-peer-ip 10.99.0.0-10.99.255.255 "
        "--min-port 49160 --max-port 49200 --log-file stdout --simple-log"
    )
    files = ["--userdb", str(tmp_path / "turndb"), "--pidfile", str(tmp_path / "pid")]
    return ["turnserver", *options.split(), *files]


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} within {timeout} s")


def test_answer_loopback_without_ice(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    answer_ns, _ = pair
    report_path = tmp_path / "answer.jsonl"
    argv = cli_argv(
        "answer",
        "--bind",
        "127.0.0.1",
        "--port",
        str(SIP_PORT),
        "--report",
        str(report_path),
        "--calls",
        "1",
        "--max-seconds",
        "60",
    )
    answer = answer_ns.popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
    )
    assert answer.stdout is not None
    ready, _, _ = select.select([answer.stdout], [], [], 15)
    assert ready, "answer printed no listening line within 15 s"
    answer.stdout.readline()

    code, report, _ = run_dial(
        answer_ns,
        f"sip:tone@127.0.0.1:{SIP_PORT}",
        "--bind",
        "127.0.0.1",
        "--no-ice",
        "--duration",
        "1",
    )

    assert code == 0
    assert report["ice"] is None
    assert "a=ice-ufrag:" not in report["remote_sdp"]
    [record] = answer_records(answer, report_path)
    assert record["ice"] is None


@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn missing")
def test_dial_turn_relay_only(lab: Lab, tmp_path: Path) -> None:
    # dial -- turn -- answer: the TURN namespace routes between the other two,
    # and its relay address is on the answer side.
    answer_ns = lab.add_namespace("ans")
    dial_ns = lab.add_namespace("dial")
    turn_ns = lab.add_namespace("turn")
    lab.link(dial_ns, "10.99.42.2/24", turn_ns, "10.99.42.1/24")
    lab.link(turn_ns, "10.99.43.1/24", answer_ns, "10.99.43.2/24")
    turn_ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    dial_ns.run(["ip", "route", "add", "10.99.43.0/24", "via", "10.99.42.1"])
    answer_ns.run(["ip", "route", "add", "10.99.42.0/24", "via", "10.99.43.1"])
    turn_log_path = tmp_path / "turn.log"
    with turn_log_path.open("w") as turn_log:
        turn_ns.popen(
            turnserver_argv("10.99.42.1", "10.99.43.1", tmp_path),
            stdout=turn_log,
            stderr=subprocess.STDOUT,
        )
    wait_for_text(turn_log_path, "Relay ports initialization done", 10)

    report_path = tmp_path / "answer.jsonl"
    answer = start_answer(answer_ns, report_path, "--calls", "1")
    code, report, stderr = run_dial(
        dial_ns,
        f"sip:tone@10.99.43.2:{SIP_PORT}",
        "--bind",
        "10.99.42.2",
        "--turn",
        "10.99.42.1:3478",
        "--turn-user",
        "lab",
        "--turn-password",
        "labsecret",
        "--relay-only",
        "--duration",
        "2",
    )

    assert code == 0, stderr
    assert report["ice"]["state"] == "completed"
    assert report["ice"]["local_type"] == "relay"
    assert report["ice"]["local_address"].startswith("10.99.43.1:")
    assert report["rtp"]["tx_packets"] > 0
    assert report["rtp"]["rx_packets"] > 0
    assert "labsecret" not in stderr

    [record] = answer_records(answer, report_path)
    assert record["rtp"]["rx_packets"] > 0
    assert record["ice"]["remote_type"] == "relay"


def test_lab_cleanup_leaves_nothing() -> None:
    with Lab("tclean") as lab:
        ns = lab.add_namespace("a")
        proc = ns.popen(["sleep", "300"])
        name = ns.name
        with pytest.raises(RuntimeError):
            lab.add_namespace("a")
    assert name not in list_namespaces()
    assert proc.poll() is not None


def test_lab_cleanup_after_exception() -> None:
    with pytest.raises(ZeroDivisionError), Lab("tclean") as lab:
        ns = lab.add_namespace("b")
        proc = ns.popen(["sleep", "300"])
        name = ns.name
        _ = 1 / 0
    assert name not in list_namespaces()
    assert proc.poll() is not None


def test_lab_rejects_outside_address() -> None:
    with Lab("tclean") as lab:
        a = lab.add_namespace("c")
        b = lab.add_namespace("d")
        with pytest.raises(RuntimeError):
            lab.link(a, "192.168.1.1/24", b, "192.168.1.2/24")


def test_cleanup_stale_removes_dead_runs() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"tstale-{dead.pid}-x"
    live = f"tstale-{os.getpid()}-y"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        deleted = cleanup_stale("tstale")
        names = list_namespaces()
        assert deleted == [stale]
        assert stale not in names
        assert live in names
    finally:
        for name in (stale, live):
            if name in list_namespaces():
                subprocess.run(["ip", "netns", "delete", name], check=True)
