"""Capacity, worker crash and call bursts through a running `b2bua run`.

Three workers of two bridged calls each give six calls. Callers are `b2bua
dial` (pjsua2 with ICE) and sipp (plain RTP offer, one process, bounded in
count and time), all in the `far` namespace. Needs root (network namespaces).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from b2bua.sipmsg import SipMessage, SipParseError, parse_message
from tests.live.b2bua_lab import EDGE_PORT, REPO, B2buaLab, parse_report

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns")

WORKERS = 3
CAPACITY = 2 * WORKERS
SIPP_SCENARIO = REPO / "tests" / "data" / "sipp" / "uac_echo.xml"
SIPP_PORT = 5300
SIPP_MEDIA_PORT = 6100
# A call dialed with --hangup remote waits HOLD_S + BYE_WAIT_S for the far
# end's BYE and then hangs up itself. Calls that should survive end that way.
HOLD_S = 8.0
BYE_WAIT_S = 3.0
# The edge must BYE the callers of a killed worker within this many seconds.
MAX_BYE_DELAY_S = 3.0

_TRACE_SEPARATOR = re.compile(r"^-{20,} (?P<time>\S+ \S+)$", re.MULTILINE)
_WORKER_CALL_LINE = re.compile(r" (?P<worker>w\d+) call (?P<call_id>\S+): received ")


@pytest.fixture(scope="module")
def b2bua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    lab = B2buaLab(tmp_path_factory.mktemp("capacity"), subnet=20, workers=WORKERS)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def no_leaks(b2bua: B2buaLab) -> Iterator[None]:
    yield
    statuses = b2bua.wait_idle(timeout=20)
    assert len(statuses) == WORKERS, statuses
    for status in statuses:
        assert status["bridged_calls"] == 0, status
        assert status["pjsua_calls"] == 0, status
        assert status["conference_ports"] == 0, status


# ----- helpers ---------------------------------------------------------------


def start_calls(b2bua: B2buaLab, count: int, *args: str) -> list[subprocess.Popen[bytes]]:
    return [b2bua.start_dial("echo", *args) for _ in range(count)]


def finish_calls(processes: list[subprocess.Popen[bytes]],
                 timeout: float = 60.0) -> list[tuple[int, dict[str, Any]]]:
    return [(code, report) for code, report, _exited in
            finish_calls_timed(processes, timeout)]


def finish_calls_timed(processes: list[subprocess.Popen[bytes]], timeout: float
                       ) -> list[tuple[int, dict[str, Any], float]]:
    """Wait for every dial; return exit status, report and exit wall time."""
    exited: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(exited) < len(processes) and time.monotonic() < deadline:
        for index, process in enumerate(processes):
            if index not in exited and process.poll() is not None:
                exited[index] = time.time()
        time.sleep(0.05)
    results = []
    for index, process in enumerate(processes):
        out, err = process.communicate(timeout=5)
        results.append((process.returncode, parse_report(out, err),
                        exited.get(index, time.time())))
    return results


def wait_bridged(b2bua: B2buaLab, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(s["bridged_calls"] for s in b2bua.worker_status()) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} calls not bridged: {b2bua.worker_status()}")


def worker_of_calls(b2bua: B2buaLab) -> dict[str, str]:
    """Map each Call-ID to the worker that logged receiving it."""
    workers = {}
    for line in b2bua.log_text().splitlines():
        match = _WORKER_CALL_LINE.search(line)
        if match is not None:
            workers[match["call_id"]] = match["worker"]
    return workers


def worker_pids(b2bua: B2buaLab) -> dict[str, int]:
    return {s["worker"]: s["pid"] for s in b2bua.worker_status()}


def assert_media_both_ways(report: dict[str, Any]) -> None:
    assert report["answered"] is True, report
    assert report["ice"] is not None, report
    assert report["ice"]["state"] == "completed", report
    assert report["rtp"]["tx_packets"] > 50, report
    assert report["rtp"]["rx_packets"] > 50, report


def assert_capacity_free(b2bua: B2buaLab) -> None:
    """Check that six calls fit again: every one connects with media."""
    results = finish_calls(start_calls(b2bua, CAPACITY, "--duration", "2"))
    for code, report in results:
        assert report["status"] == 200, report
        assert code == 0, report
        assert_media_both_ways(report)


# ----- sipp ------------------------------------------------------------------


def run_sipp(b2bua: B2buaLab, folder: Path, calls: int, rate: int,
             hold_ms: int) -> tuple[int, list[tuple[float, str, SipMessage]]]:
    """Run sipp's capacity caller; return its exit status and message trace."""
    assert b2bua.far is not None
    trace = folder / "sipp-messages.log"
    argv = [
        "sipp", f"{b2bua.edge_ip}:{EDGE_PORT}", "-sf", str(SIPP_SCENARIO),
        "-s", "echo", "-i", b2bua.far_ip, "-p", str(SIPP_PORT),
        "-mi", b2bua.far_ip, "-mp", str(SIPP_MEDIA_PORT),
        "-m", str(calls), "-r", str(rate), "-rp", "1000", "-d", str(hold_ms),
        "-timeout", "60s", "-timeout_error", "-recv_timeout", "20000",
        "-nostdin", "-trace_msg", "-message_file", str(trace),
    ]
    process = b2bua.far.popen(argv, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd=str(folder))
    _out, err = process.communicate(timeout=90)
    assert trace.exists(), err.decode("utf-8", "replace")
    return process.returncode, read_sipp_trace(trace)


def read_sipp_trace(path: Path) -> list[tuple[float, str, SipMessage]]:
    """Parse sipp's -trace_msg file into (time, "sent"/"received", message)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    parts = _TRACE_SEPARATOR.split(text)
    entries = []
    # split() yields [before, time1, chunk1, time2, chunk2, ...].
    for stamp, chunk in zip(parts[1::2], parts[2::2]):
        heading, _, raw = chunk.strip("\n").partition("\n")
        direction = "sent" if " sent " in heading else "received"
        wire = raw.strip("\n").replace("\r\n", "\n").replace("\n", "\r\n")
        try:
            message = parse_message((wire + "\r\n").encode("utf-8"))
        except SipParseError:
            continue
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
        entries.append((when.timestamp(), direction, message))
    return entries


def invite_finals(trace: list[tuple[float, str, SipMessage]]) -> dict[str, SipMessage]:
    """Return the final response to each INVITE sipp sent, by Call-ID."""
    finals: dict[str, SipMessage] = {}
    for _stamp, direction, message in trace:
        if direction != "received" or message.status is None:
            continue
        if message.status < 200 or "INVITE" not in (message.header("CSeq") or ""):
            continue
        finals.setdefault(message.header("Call-ID") or "", message)
    return finals


def sent_invites(trace: list[tuple[float, str, SipMessage]]) -> dict[str, float]:
    """Return the time each new INVITE was first sent, by Call-ID."""
    sent: dict[str, float] = {}
    for stamp, direction, message in trace:
        if direction == "sent" and message.method == "INVITE":
            sent.setdefault(message.header("Call-ID") or "", stamp)
    return sent


# ----- tests -----------------------------------------------------------------


def test_six_calls_fit_seventh_gets_503(b2bua: B2buaLab, tmp_path: Path) -> None:
    calls = start_calls(b2bua, CAPACITY, "--duration", str(HOLD_S))
    wait_bridged(b2bua, CAPACITY)
    busy = {s["worker"]: s["bridged_calls"] for s in b2bua.worker_status()}
    assert busy == {f"w{i}": 2 for i in range(WORKERS)}, busy

    code, trace = run_sipp(b2bua, tmp_path, calls=1, rate=1, hold_ms=0)
    finals = invite_finals(trace)
    assert len(finals) == 1, trace
    rejection = next(iter(finals.values()))
    assert rejection.status == 503, rejection.to_bytes()
    retry_after = rejection.header("Retry-After") or ""
    assert retry_after.strip().isdigit(), rejection.to_bytes()
    assert int(retry_after) > 0
    assert code == 0, "sipp did not accept the 503 as a final answer"

    code, report = b2bua.dial("echo", "--duration", "1")
    assert report["status"] == 503, report
    assert code == 1

    for code, report in finish_calls(calls):
        assert report["status"] == 200, report
        assert code == 0, report
        assert_media_both_ways(report)
        assert report["duration"] >= HOLD_S - 0.5, "a call up was cut short"


def test_killed_worker_ends_only_its_calls(b2bua: B2buaLab) -> None:
    # Every call waits for a BYE: the killed worker's callers get one from
    # the edge, the others hang up themselves after HOLD_S + BYE_WAIT_S.
    calls = start_calls(b2bua, CAPACITY, "--hangup", "remote", "--duration",
                        str(HOLD_S), "--timeout", str(BYE_WAIT_S))
    wait_bridged(b2bua, CAPACITY)
    time.sleep(1.0)
    victim = b2bua.worker_status()[0]
    pids_before = worker_pids(b2bua)
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    results = finish_calls_timed(calls, timeout=60)

    workers = worker_of_calls(b2bua)
    bye_delays = []
    for code, report, exited_at in results:
        assert report["answered"] is True, report
        worker = workers.get(report["call_id"])
        assert worker is not None, f"no worker logged call {report['call_id']}"
        if worker == victim["worker"]:
            assert report["ended_by"] == "remote", report
            assert code == 0, report
            # The dial exits about 0.3 s after its call ends, so this is an
            # upper bound of the time from the kill to the caller's BYE.
            bye_delays.append(exited_at - killed_at)
        else:
            assert report["ended_by"] == "local", f"call on {worker} was ended"
            assert report["duration"] >= HOLD_S + BYE_WAIT_S - 0.5, report
            assert_media_both_ways(report)
            assert report["rtp"]["rx_packets"] > 40 * report["duration"], (
                "media of a surviving call stopped", report)
    assert len(bye_delays) == 2, results
    for delay in bye_delays:
        assert delay < MAX_BYE_DELAY_S, bye_delays

    wait_restarted(b2bua, victim)
    pids = worker_pids(b2bua)
    survivors = {w: p for w, p in pids_before.items() if w != victim["worker"]}
    assert {w: pids[w] for w in survivors} == survivors, "another worker restarted"
    assert_capacity_free(b2bua)


def test_killed_worker_rejects_ringing_call(b2bua: B2buaLab, tmp_path: Path) -> None:
    answer = b2bua.start_answer(5092, tmp_path / "answer.jsonl", "--no-ice",
                                "--ring", "60", "--calls", "1")
    try:
        call = b2bua.start_dial("slow", "--timeout", "30")
        wait_bridged(b2bua, 1)
        time.sleep(0.5)  # the slow target answers 408 after 3 s
        victim = next(s for s in b2bua.worker_status() if s["bridged_calls"])
        killed_at = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        [(code, report, exited_at)] = finish_calls_timed([call], timeout=45)
    finally:
        answer.terminate()
        answer.wait(10)
    assert code == 1
    assert report["answered"] is False
    assert report["status"] == 503, report
    assert report["reason"] == "Worker Failed", report
    assert exited_at - killed_at < MAX_BYE_DELAY_S, "the caller waited for a timeout"
    wait_restarted(b2bua, victim)


def wait_restarted(b2bua: B2buaLab, victim: dict[str, Any]) -> None:
    """Wait until the killed worker runs again and the edge probed it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pid = worker_pids(b2bua).get(victim["worker"], victim["pid"])
        if pid != victim["pid"]:
            break
        time.sleep(0.3)
    assert worker_pids(b2bua)[victim["worker"]] != victim["pid"], (
        "the worker was not restarted")
    # The edge marks a worker active again after its next OPTIONS probe
    # (every 2 s).
    time.sleep(3.0)


def test_burst_of_100_calls(b2bua: B2buaLab, tmp_path: Path) -> None:
    pids_before = worker_pids(b2bua)
    handled_before = calls_handled(b2bua)
    exits_before = b2bua.log_text().count("exited with status")
    # No hold time: answered calls end at once and free their slot, so only
    # the edge's setup rate limit keeps the burst from reaching the workers.
    code, trace = run_sipp(b2bua, tmp_path, calls=100, rate=100, hold_ms=0)

    sent = sent_invites(trace)
    assert len(sent) == 100
    assert max(sent.values()) - min(sent.values()) < 1.5, "burst took too long"
    finals = invite_finals(trace)
    missing = set(sent) - set(finals)
    assert not missing, f"{len(missing)} attempts got no final answer"
    statuses = {call_id: m.status for call_id, m in finals.items()}
    assert set(statuses.values()) <= {200, 503}, statuses
    assert list(statuses.values()).count(200) >= CAPACITY, statuses
    for message in finals.values():
        if message.status == 503:
            assert message.header("Retry-After"), message.to_bytes()
    assert code == 0, "sipp reported failed calls"

    assert worker_pids(b2bua) == pids_before, "a worker died during the burst"
    assert b2bua.log_text().count("exited with status") == exits_before
    # The setup counters are per wall-clock second.
    seconds = int(max(sent.values())) - int(min(sent.values())) + 1
    max_setups = b2bua.config["workers"]["max_setups_per_second"]
    handled = calls_handled(b2bua)
    for worker, before in handled_before.items():
        assert handled[worker] - before <= max_setups * seconds, (
            f"{worker} took {handled[worker] - before} calls in {seconds} s")

    idle = b2bua.wait_idle(timeout=20)
    assert all(s["bridged_calls"] == 0 for s in idle), idle
    # New calls in the burst's last second would meet its full setup count.
    time.sleep(1.1)
    assert_capacity_free(b2bua)


def test_overlapping_short_calls_no_retry(b2bua: B2buaLab, tmp_path: Path) -> None:
    # Calls of 400 ms at 8/s overlap by about three. The edge fills a worker's
    # second slot first, so without a cooldown each new call tends to go to
    # the worker that is still tearing down the call that just ended there.
    full_before = b2bua.log_text().count("full (2 bridged calls)")
    code, trace = run_sipp(b2bua, tmp_path, calls=40, rate=8, hold_ms=400)

    statuses = [m.status for m in invite_finals(trace).values()]
    assert len(statuses) == 40
    assert statuses.count(200) == 40, statuses
    assert code == 0, "sipp reported failed calls"
    retries = b2bua.log_text().count("full (2 bridged calls)") - full_before
    assert retries == 0, f"{retries} calls were sent to a full worker first"


def calls_handled(b2bua: B2buaLab) -> dict[str, int]:
    return {s["worker"]: s["calls_handled"] for s in b2bua.worker_status()}
