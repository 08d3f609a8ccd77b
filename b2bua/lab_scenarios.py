"""Scenarios of the lab interop rig, their result lines and the results table.

Each scenario places one call through a rig built by b2bua.labrig and
returns a ScenarioResult. The B2BUA's view (class, ICE pair, setup and ICE
times) comes from its log; whether RTP flowed both ways comes from a packet
capture on the caller's own interface, so it stays valid when the caller
crashes after hangup.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from b2bua import labrig
from b2bua.labrig import Rig, RigError, child_env, cli_argv, netns_argv

log = logging.getLogger(__name__)

CALL_SECONDS = 2.0
# PCMU at 20 ms is 50 packets a second; a working call sends far more than this.
MIN_RTP_PACKETS = 40
CAPTURE_MAX_PACKETS = 20000
BARESIP_ICE_TIMEOUT_S = 12.0

# PCMU RTP (version 2, payload type 0), bare in UDP, in TURN ChannelData over
# UDP, or at the start of a TURN-over-TCP segment.
UDP_RTP_FILTER = (
    "udp and ((udp[8] & 0xc0 = 0x80 and udp[9] & 0x7f = 0) or "
    "(udp[8] & 0xc0 = 0x40 and udp[12] & 0xc0 = 0x80 and udp[13] & 0x7f = 0))"
)
TCP_RTP_FILTER = (
    "tcp and tcp[((tcp[12] & 0xf0) >> 2)] & 0xc0 = 0x40 and "
    "tcp[((tcp[12] & 0xf0) >> 2) + 4] & 0xc0 = 0x80"
)
RTP_FILTER = f"({UDP_RTP_FILTER}) or ({TCP_RTP_FILTER})"
# Logged by each worker whose TURN probe at start found UDP blocked.
TURN_FALLBACK_RE = re.compile(r"TURN server \S+: UDP blocked, using TCP")
_TURN_TCP_CLOSED_RE = re.compile(
    r"session (\d+): TCP socket closed remotely ([\d.]+):\d+")
_TURN_PEER_USAGE_RE = re.compile(
    r"session (\d+): peer usage: .*\brp=(\d+), rb=\d+, sp=(\d+)")
_LOG_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_ICE_RE = re.compile(r"ICE completed, pair (\w+) -> (\w+) over (\w+)")
_CLASS_RE = re.compile(r"classified (\w+)")
_ANSWERED_RE = re.compile(r"answered \(")
_EDGE_RECEIVED_RE = re.compile(r"b2bua\.edge call \S+: received INVITE")


@dataclass
class ScenarioResult:
    """One scenario run: the fields of its result line and whether it passed."""

    scenario: str
    call_class: str = "-"
    pair: str = "-"
    transport: str = "-"
    setup_ms: int | None = None
    ice_ms: int | None = None
    # From `b2bua dial --json`: INVITE sent to ICE completed, at the caller.
    caller_ice_ms: int | None = None
    rtp_sent: int = 0
    rtp_received: int = 0
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    # Scenario-specific conditions by name; every one must hold to pass.
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def checks_hold(self) -> bool:
        return all(self.checks.values())

    @property
    def rtp_both_ways(self) -> bool:
        return (self.rtp_sent >= MIN_RTP_PACKETS
                and self.rtp_received >= MIN_RTP_PACKETS)

    def line(self) -> str:
        """Format the one-line summary printed by `scripts/lab run`."""
        setup = "-" if self.setup_ms is None else f"{self.setup_ms} ms"
        ice = "-" if self.ice_ms is None else f"{self.ice_ms} ms"
        caller_ice = "-" if self.caller_ice_ms is None else f"{self.caller_ice_ms} ms"
        rtp = "yes" if self.rtp_both_ways else "no"
        verdict = "PASS" if self.passed else "FAIL"
        text = (f"{verdict} {self.scenario}: class {self.call_class}, pair "
                f"{self.pair} over {self.transport}, setup {setup}, ICE {ice} "
                f"(caller {caller_ice}), RTP both ways {rtp} "
                f"({self.rtp_sent}/{self.rtp_received})")
        notes = self.notes + self.check_notes()
        if notes:
            text += "; " + "; ".join(notes)
        return text

    def check_notes(self) -> list[str]:
        return [f"{name}: {'yes' if held else 'NO'}"
                for name, held in self.checks.items()]

    def row(self, started: str) -> str:
        cells = [started, self.scenario, self.call_class, self.pair, self.transport,
                 "-" if self.setup_ms is None else str(self.setup_ms),
                 "-" if self.ice_ms is None else str(self.ice_ms),
                 "-" if self.caller_ice_ms is None else str(self.caller_ice_ms),
                 "yes" if self.rtp_both_ways else "no",
                 f"{self.rtp_sent}/{self.rtp_received}",
                 "pass" if self.passed else "FAIL",
                 "; ".join(self.notes + self.check_notes()) or "-"]
        return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"


TABLE_HEADER = (
    "| run | scenario | class | B2BUA pair (local -> remote) | transport "
    "| setup ms | ICE ms | caller ICE ms | RTP both ways | RTP caller tx/rx "
    "| result | notes |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)


def append_results(path: Path, results: list[ScenarioResult]) -> None:
    """Append rows to the Markdown results table, writing its header first."""
    started = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8") as table:
        if new:
            table.write("Setup and ICE times come from the B2BUA worker log "
                        "(INVITE received at the edge to 200 sent by the "
                        "worker, 200 sent to ICE completed). Caller ICE times "
                        "come from `b2bua dial --json` (INVITE sent to ICE "
                        "completed, to the caller's 200 ms sampling). RTP counts "
                        "come from a capture on the caller's interface.\n\n")
            table.write(TABLE_HEADER)
        for result in results:
            table.write(result.row(started) + "\n")


# ----- observation helpers -----------------------------------------------------


class Capture:
    """tcpdump on one namespace interface, counting PCMU RTP of one host."""

    def __init__(self, rig: Rig, short: str, ifname: str, host: str,
                 name: str) -> None:
        self.host = host
        self.path = rig.state_dir / f"{name}.pcap"
        self.path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            netns_argv(short, ["tcpdump", "-i", ifname, "-nn", "-U", "-c",
                               str(CAPTURE_MAX_PACKETS), "-w", str(self.path),
                               f"host {host}"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if "listening on" in line:
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RigError(f"tcpdump did not start on {ifname} in {short}")

    def stop(self) -> None:
        labrig.stop_pid(self.process.pid, None, timeout=3)
        try:
            self.process.wait(3)
        except subprocess.TimeoutExpired:
            log.warning("tcpdump pid %d did not exit", self.process.pid)

    def count(self, direction: str, packet_filter: str = RTP_FILTER) -> int:
        """Count RTP packets `direction` ("src" or "dst") the captured host."""
        if not self.path.exists():
            return 0
        done = subprocess.run(
            ["tcpdump", "-nn", "-r", str(self.path),
             f"{direction} host {self.host} and ({packet_filter})"],
            capture_output=True, text=True, timeout=20, check=False,
        )
        return sum(1 for line in done.stdout.splitlines() if line.strip())

    def finish(self, result: ScenarioResult | None = None) -> None:
        """Stop capturing; with `result`, store the host's RTP counts in it."""
        # Late packets of the call are still on their way after hangup.
        time.sleep(0.3)
        self.stop()
        if result is not None:
            result.rtp_sent = self.count("src")
            result.rtp_received = self.count("dst")


def log_time(line: str) -> float | None:
    match = _LOG_TIME_RE.match(line)
    if match is None:
        return None
    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def read_new_log(rig: Rig, offset: int) -> list[str]:
    with rig.log_path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    return data.replace(b"\0", b"").decode("utf-8", "replace").splitlines()


def wait_for_log(rig: Rig, offset: int, pattern: str,
                 timeout: float = 5.0) -> list[str]:
    """Return the log lines written since `offset` once one matches `pattern`."""
    deadline = time.monotonic() + timeout
    lines = read_new_log(rig, offset)
    while time.monotonic() < deadline:
        if any(re.search(pattern, line) for line in lines):
            break
        time.sleep(0.2)
        lines = read_new_log(rig, offset)
    return lines


def fill_from_log(result: ScenarioResult, lines: list[str],
                  call_id: str | None) -> None:
    """Set class, pair, transport, setup and ICE times from B2BUA log lines."""
    if call_id is not None:
        lines = [line for line in lines if call_id in line]
    received_at = answered_at = None
    for line in lines:
        if _EDGE_RECEIVED_RE.search(line) and received_at is None:
            received_at = log_time(line)
        elif match := _CLASS_RE.search(line):
            result.call_class = match.group(1)
        elif _ANSWERED_RE.search(line) and answered_at is None:
            answered_at = log_time(line)
            if received_at is not None and answered_at is not None:
                result.setup_ms = round((answered_at - received_at) * 1000)
        elif match := _ICE_RE.search(line):
            result.pair = f"{match.group(1)} -> {match.group(2)}"
            result.transport = match.group(3)
            done_at = log_time(line)
            if answered_at is not None and done_at is not None:
                result.ice_ms = round((done_at - answered_at) * 1000)
        elif "no ICE on the edge leg" in line:
            result.pair = "no ICE"


def run_dial(rig: Rig, short: str, target: str, bind: str, from_uri: str,
             *args: str, timeout: float = 40.0) -> tuple[int, dict[str, Any] | None]:
    """Run `b2bua dial --json` in a namespace; return exit status and report.

    The report is None when the caller printed none (it crashed).
    """
    argv = cli_argv("dial", target, "--bind", bind, "--from", from_uri, "--json",
                    "--duration", str(CALL_SECONDS), *args)
    done = subprocess.run(netns_argv(short, argv), capture_output=True, text=True,
                          timeout=timeout, env=child_env(), check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return done.returncode, dict(json.loads(line))
    log.warning("b2bua dial exited %d without a report: %s", done.returncode,
                done.stderr[-500:])
    return done.returncode, None


def dial_scenario(rig: Rig, name: str, short: str, ifname: str, bind: str,
                  from_uri: str, target: str, *args: str) -> ScenarioResult:
    """Place one `b2bua dial` call from a namespace and observe it."""
    result = ScenarioResult(name)
    offset = rig.log_path.stat().st_size
    capture = Capture(rig, short, ifname, bind, name)
    try:
        code, report = run_dial(rig, short, target, bind, from_uri, *args)
    finally:
        capture.finish(result)
    call_id = report.get("call_id") if report else None
    lines = wait_for_log(rig, offset, r"ended \(")
    fill_from_log(result, lines, call_id)
    if report is None:
        result.notes.append(f"caller exited {code} without a report")
    elif report.get("status") != 200:
        result.notes.append(f"caller got {report.get('status')} {report.get('reason')}")
    elif report.get("ice"):
        ice = report["ice"]
        result.notes.append(f"caller pair {ice['local_type']} -> {ice['remote_type']}")
        if ice.get("completed_ms") is not None:
            result.caller_ice_ms = int(ice["completed_ms"])
    if not any("ended (caller hung up" in line for line in lines
               if call_id is None or call_id in line):
        result.notes.append("B2BUA logged no hangup by the caller")
    return result


# ----- the scenarios -----------------------------------------------------------


def relay_args(rig: Rig, transport: str = "udp") -> list[str]:
    user, password = rig.turn_credentials
    relay = f"{labrig.RELAY_WAN_IP}:{labrig.TURN_PORT}"
    return ["--turn", relay, "--turn-user", user, "--turn-password", password,
            "--turn-transport", transport]


def edge_uri(user: str, transport: str = "udp") -> str:
    uri = f"sip:{user}@{labrig.BORDER_WAN_IP}:{labrig.SIP_PORT}"
    return uri if transport == "udp" else f"{uri};transport={transport}"


def scenario_local(rig: Rig) -> ScenarioResult:
    """Call the trunk from a desk phone on the inside LAN: host pair, no relay."""
    report = rig.state_dir / "trunk.jsonl"
    report.unlink(missing_ok=True)
    answer = subprocess.Popen(
        netns_argv("inside", cli_argv(
            "answer", "--bind", labrig.LAN_IP, "--port", str(labrig.TRUNK_PORT),
            "--report", str(report), "--no-ice", "--calls", "1",
            "--max-seconds", "30")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env(),
    )
    try:
        _wait_listening(answer)
        result = dial_scenario(
            rig, "local", "desk", "to-inside", labrig.DESK_IP, "sip:desk@lab.test",
            f"sip:91234@{labrig.LAN_IP}:{labrig.SIP_PORT}")
        answer.wait(10)
    finally:
        labrig.stop_pid(answer.pid, None, timeout=3)
        answer.wait(5)
    result.passed = (result.call_class == "local" and result.pair == "host -> host"
                     and result.rtp_both_ways)
    return result


def _wait_listening(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "listening" in line:
            return
        if not line and process.poll() is not None:
            break
    raise RigError("the trunk target (b2bua answer) did not start listening "
                   "within 15 s")


def scenario_remote_nat(rig: Rig) -> ScenarioResult:
    """Call echo as our user behind a home NAT, with STUN and TURN on the relay."""
    relay = f"{labrig.RELAY_WAN_IP}:{labrig.TURN_PORT}"
    result = dial_scenario(
        rig, "remote-nat", "remote", "to-rnat", labrig.REMOTE_IP, "sip:alice@lab.test",
        edge_uri("echo"), "--stun", relay, *relay_args(rig))
    types = set(result.pair.split(" -> "))
    result.passed = (result.call_class == "remote" and bool(types & {"srflx", "relay"})
                     and result.rtp_both_ways)
    return result


def scenario_remote_tcp(rig: Rig) -> ScenarioResult:
    """Call echo with UDP blocked on both sides: TURN over TCP on both legs.

    The caller's NAT drops all UDP, so it sends SIP over TCP and requests
    TURN over TCP. The relay drops UDP from the inside, and the B2BUA is
    restarted so that its workers find that out at start and switch to TURN
    over TCP by themselves. The B2BUA is restarted again with UDP admitted
    afterwards. Pass or fail comes from logs and captures only, because
    pjnath 2.15.1 can crash a process at hangup on TURN over TCP.
    """
    offset = rig.log_path.stat().st_size
    turn_offset = rig.turn_log.stat().st_size
    rig.set_relay_udp_blocked(True)
    try:
        fallbacks = _count_fallbacks(rig, offset)
        relay_capture = Capture(rig, "relay", "to-inside", labrig.RELAY_INSIDE_IP,
                                "relay-inside")
        try:
            result = dial_scenario(
                rig, "remote-udp-blocked", "closed", "to-cnat", labrig.CLOSED_IP,
                "sip:carol@lab.test", edge_uri("echo", "tcp"), "--transport", "tcp",
                "--relay-only", *relay_args(rig, "tcp"))
        finally:
            relay_capture.finish()
    finally:
        rig.set_relay_udp_blocked(False)
    # The captured host is the relay, so packets to it are what the B2BUA sent.
    b2bua_sent = relay_capture.count("dst", TCP_RTP_FILTER)
    b2bua_received = relay_capture.count("src", TCP_RTP_FILTER)
    result.notes.append(f"B2BUA TURN/TCP RTP tx/rx {b2bua_sent}/{b2bua_received}")
    from_peer, to_peer = inside_tcp_allocation_usage(read_turn_log(rig, turn_offset))
    result.notes.append(f"coturn inside TCP allocation peer rx/tx {from_peer}/{to_peer}")
    result.checks["workers fell back to TURN over TCP"] = (
        fallbacks == rig.worker_count)
    result.checks["coturn relayed an inside TCP allocation both ways"] = (
        from_peer >= MIN_RTP_PACKETS and to_peer >= MIN_RTP_PACKETS)
    result.checks["B2BUA RTP both ways over TURN/TCP"] = (
        b2bua_sent >= MIN_RTP_PACKETS and b2bua_received >= MIN_RTP_PACKETS)
    result.passed = (result.call_class == "remote" and result.pair == "relay -> relay"
                     and result.rtp_both_ways and result.checks_hold)
    return result


def _count_fallbacks(rig: Rig, offset: int) -> int:
    """Return how many workers logged the TURN fallback since `offset`.

    Waits up to 5 s for one line per worker, because the supervisor relays
    the workers' output into the log.
    """
    deadline = time.monotonic() + 5
    while True:
        lines = read_new_log(rig, offset)
        count = sum(1 for line in lines if TURN_FALLBACK_RE.search(line))
        if count >= rig.worker_count or time.monotonic() >= deadline:
            return count
        time.sleep(0.2)


def read_turn_log(rig: Rig, offset: int) -> str:
    with rig.turn_log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace")


def inside_tcp_allocation_usage(turn_log: str) -> tuple[int, int]:
    """Return the peer packet counts (received, sent) of the B2BUA's TCP allocation.

    Picks the busiest TCP allocation that coturn served to the B2BUA's
    inside address, or returns (0, 0) when there is none. Reads the log of
    `turnserver --verbose` (coturn 4.6.1): a TCP session logs "TCP socket
    closed remotely" with the client's address when it ends, then its
    "peer usage" counters.
    """
    inside_sessions = {
        match.group(1) for match in _TURN_TCP_CLOSED_RE.finditer(turn_log)
        if match.group(2) == labrig.INSIDE_IP
    }
    best = (0, 0)
    for match in _TURN_PEER_USAGE_RE.finditer(turn_log):
        if match.group(1) not in inside_sessions:
            continue
        usage = (int(match.group(2)), int(match.group(3)))
        if min(usage) > min(best):
            best = usage
    return best


def scenario_federation(rig: Rig) -> ScenarioResult:
    """Call echo from another domain behind its NAT, then offer BFCP with sipp."""
    relay = f"{labrig.RELAY_WAN_IP}:{labrig.TURN_PORT}"
    result = dial_scenario(
        rig, "federation", "fed", "to-fnat", labrig.FED_IP, "sip:bob@partner.test",
        edge_uri("echo"), "--stun", relay)
    bfcp_class, bfcp_port = sipp_bfcp_offer(rig)
    result.notes.append(f"BFCP offer: class {bfcp_class}, answered port {bfcp_port}")
    result.passed = (result.call_class == "federation" and result.pair != "-"
                     and result.pair != "no ICE" and result.rtp_both_ways
                     and bfcp_class == "federation" and bfcp_port == "0")
    return result


def sipp_bfcp_offer(rig: Rig) -> tuple[str, str]:
    """Send an audio + BFCP offer with sipp from `fed`; return class and BFCP port.

    Either value is "?" when the answer did not carry it.
    """
    trace = rig.state_dir / "sipp-bfcp-messages.log"
    trace.unlink(missing_ok=True)
    argv = ["sipp", "-sf", str(labrig.LAB_DATA / "federation_bfcp.xml"),
            "-i", labrig.FED_IP, "-p", str(labrig.SIPP_PORT), "-m", "1",
            "-timeout", "20s", "-timeout_error", "-trace_msg",
            "-message_file", str(trace), "-nostdin",
            f"{labrig.BORDER_WAN_IP}:{labrig.SIP_PORT}"]
    done = subprocess.run(netns_argv("fed", argv), capture_output=True, text=True,
                          timeout=30, check=False, cwd=rig.state_dir)
    if done.returncode != 0:
        log.warning("sipp exited %d: %s", done.returncode, done.stderr[-500:])
    text = trace.read_text(errors="replace") if trace.exists() else ""
    return parse_bfcp_answer(text)


def parse_bfcp_answer(trace_text: str) -> tuple[str, str]:
    """Return (class, BFCP m-line port) from the 200 to INVITE in a sipp trace."""
    start = trace_text.find("SIP/2.0 200 OK")
    while start >= 0 and "CSeq: 1 INVITE" not in trace_text[start:start + 2000]:
        start = trace_text.find("SIP/2.0 200 OK", start + 1)
    if start < 0:
        return "?", "?"
    answer = trace_text[start:]
    class_match = re.search(r"^X-B2BUA-Class:\s*(\w+)", answer, re.MULTILINE)
    port_match = re.search(r"^m=application (\d+) ", answer, re.MULTILINE)
    return (class_match.group(1) if class_match else "?",
            port_match.group(1) if port_match else "?")


def scenario_baresip(rig: Rig) -> ScenarioResult:
    """Call echo with baresip, an independent ICE stack, from behind the home NAT."""
    result = ScenarioResult("baresip-ice")
    folder = rig.state_dir / "baresip"
    folder.mkdir(exist_ok=True)
    stun = f"{labrig.RELAY_WAN_IP}:{labrig.TURN_PORT}"
    config = (labrig.LAB_DATA / "baresip.conf").read_text()
    config = (config.replace("@LISTEN@", f"{labrig.REMOTE_IP}:5070")
              .replace("@IFNAME@", "to-rnat")
              .replace("@RX_FILE@", str(folder / "received.wav")))
    (folder / "config").write_text(config)
    accounts = (labrig.LAB_DATA / "baresip.accounts").read_text()
    (folder / "accounts").write_text(accounts.replace("@STUN@", stun))
    offset = rig.log_path.stat().st_size
    capture = Capture(rig, "remote", "to-rnat", labrig.REMOTE_IP, "baresip")

    output = (folder / "baresip.log").open("w")
    process = subprocess.Popen(
        netns_argv("remote", ["baresip", "-f", str(folder)]),
        stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdin is not None
        time.sleep(1.0)
        process.stdin.write(f"/dial {edge_uri('echo')}\n")
        process.stdin.flush()

        wait_for_log(rig, offset, r"ICE completed|ICE failed",
                             timeout=BARESIP_ICE_TIMEOUT_S)
        # Let media flow for a while on the pair ICE selected.
        time.sleep(CALL_SECONDS)

        process.stdin.write("/hangup\n")
        process.stdin.flush()
        wait_for_log(rig, offset, r"ended \(", timeout=5)
        process.stdin.write("/quit\n")
        process.stdin.flush()
        process.wait(5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result.notes.append(f"baresip did not stop cleanly: {exc}")
    finally:
        labrig.stop_pid(process.pid, None, timeout=3)
        process.wait(5)
        output.close()
        capture.finish(result)
    lines = read_new_log(rig, offset)
    fill_from_log(result, lines, None)
    if not any("ended (caller hung up" in line for line in lines):
        result.notes.append("B2BUA logged no hangup by the caller")
    result.passed = (result.call_class == "remote" and result.pair not in ("-", "no ICE")
                     and result.rtp_both_ways)
    return result


SCENARIOS: dict[str, Callable[[Rig], ScenarioResult]] = {
    "local": scenario_local,
    "remote-nat": scenario_remote_nat,
    "remote-udp-blocked": scenario_remote_tcp,
    "federation": scenario_federation,
    "baresip-ice": scenario_baresip,
}


def run_all(rig: Rig, names: list[str],
            report: Callable[[str], Any]) -> list[ScenarioResult]:
    """Run scenarios by name (all when empty), report each line, append the table."""
    results = []
    for name in names or list(SCENARIOS):
        result = SCENARIOS[name](rig)
        report(result.line())
        results.append(result)
    append_results(rig.results_path, results)
    return results
