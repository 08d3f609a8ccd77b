"""Pure parts of the lab rig's scenarios: log parsing, sipp traces, result rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.lab_scenarios import (
    MIN_RTP_PACKETS,
    TURN_FALLBACK_RE,
    ScenarioResult,
    fill_from_log,
    inside_tcp_allocation_usage,
    parse_bfcp_answer,
)

LAB_DATA = Path(__file__).resolve().parent.parent / "data" / "lab"

CALL = "abc123"
LOG = [
    ("2026-01-02 10:00:00,000 INFO b2bua.edge call abc123: received INVITE from "
    "sip:alice@lab.test to sip:echo@10.99.70.1:5060 via udp:10.99.72.1:5060"),
    ("2026-01-02 10:00:00,001 INFO b2bua.edge call abc123: classified remote: "
    "remote: party ours by from-domain=lab.test"),
    ("2026-01-02 10:00:00,012 INFO w0 call abc123: answered (echo, class remote, "
    "setup 1 ms)"),
    ("2026-01-02 10:00:00,312 INFO w0 call abc123: ICE completed, pair relay -> "
    "srflx over udp (10.99.71.1:49242 -> 10.99.72.1:4019)"),
    ("2026-01-02 10:00:02,312 INFO w0 call other: ICE completed, pair host -> "
    "host over udp (10.99.60.1:1 -> 10.99.62.2:2)"),
]


def test_fill_from_log_reads_call_lines() -> None:
    result = ScenarioResult("remote-nat")
    fill_from_log(result, LOG, CALL)
    assert result.call_class == "remote"
    assert result.pair == "relay -> srflx"
    assert result.transport == "udp"
    assert result.setup_ms == 12
    assert result.ice_ms == 300


def test_fill_from_log_without_ice() -> None:
    lines = LOG[:3] + [("2026-01-02 10:00:04,000 INFO w0 call abc123: no ICE on "
                       "the edge leg; plain RTP")]
    result = ScenarioResult("x")
    fill_from_log(result, lines, CALL)
    assert result.pair == "no ICE"
    assert result.ice_ms is None


TRACE_200 = (
    "----- UDP message sent\n\nINVITE sip:echo@10.99.70.1:5060 SIP/2.0\n"
    "CSeq: 1 INVITE\n\nm=application 6010 UDP/BFCP *\n"
    "----- UDP message received\n\nSIP/2.0 100 Trying\nCSeq: 1 INVITE\n\n"
    "----- UDP message received\n\nSIP/2.0 200 OK\nCSeq: 1 INVITE\n"
    "X-B2BUA-Class: federation; reason=\"federation: ...\"\n"
    "Content-Type: application/sdp\n\nv=0\nm=audio 20002 RTP/AVP 0\n"
    "m=application {port} UDP/BFCP *\n"
)


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        (TRACE_200.format(port=0), ("federation", "0")),
        (TRACE_200.format(port=6010), ("federation", "6010")),
        (TRACE_200.replace("X-B2BUA-Class: federation", "X-Other: a").format(
            port=0), ("?", "0")),
        ("SIP/2.0 200 OK\nCSeq: 2 BYE\n\n", ("?", "?")),
        ("", ("?", "?")),
    ],
)
def test_parse_bfcp_answer(trace: str, expected: tuple[str, str]) -> None:
    assert parse_bfcp_answer(trace) == expected


@pytest.mark.parametrize(
    ("sent", "received", "both_ways"),
    [
        (MIN_RTP_PACKETS, MIN_RTP_PACKETS, True),
        (MIN_RTP_PACKETS - 1, 100, False),
        (100, 0, False),
    ],
)
def test_rtp_both_ways_threshold(sent: int, received: int, both_ways: bool) -> None:
    result = ScenarioResult("x", rtp_sent=sent, rtp_received=received)
    assert result.rtp_both_ways is both_ways


def test_result_line_and_row() -> None:
    result = ScenarioResult("local", call_class="local", pair="host -> host",
                            transport="udp", setup_ms=5, ice_ms=250,
                            caller_ice_ms=220, rtp_sent=99, rtp_received=98,
                            passed=True, notes=["a|b"])
    line = result.line()
    assert line.startswith("PASS local: class local, pair host -> host over udp")
    assert ("setup 5 ms, ICE 250 ms (caller 220 ms), RTP both ways yes (99/98); "
            "a|b") in line
    row = result.row("2026-01-02 10:00:00")
    assert row.count("|") == 13, "a note's | must not split the table cell"
    assert ("| local | local | host -> host | udp | 5 | 250 | 220 | yes | 99/98 |"
            in row)


def test_result_without_caller_ice_time() -> None:
    result = ScenarioResult("remote-udp-blocked", ice_ms=260)
    assert "ICE 260 ms (caller -)" in result.line()
    assert "| 260 | - |" in result.row("2026-01-02 10:00:00")


def test_result_checks_in_line_and_row() -> None:
    result = ScenarioResult("x", checks={"fell back": True, "relayed": False})
    assert not result.checks_hold
    assert "fell back: yes; relayed: NO" in result.line()
    assert "fell back: yes; relayed: NO" in result.row("2026-01-02 10:00:00")
    result.checks["relayed"] = True
    assert result.checks_hold


def test_inside_tcp_allocation_usage_from_coturn_log() -> None:
    text = (LAB_DATA / "turn-tcp-session.log").read_text()
    # The caller's TCP allocations (105/103) and the later UDP call's
    # (103/102) do not count: only TCP sessions from the inside address do.
    assert inside_tcp_allocation_usage(text) == (102, 102)


@pytest.mark.parametrize(
    "text",
    [
        "",
        # A TCP session from elsewhere.
        ("7: : session 000000000000000004: TCP socket closed remotely "
         "10.99.73.1:4009\n7: : session 000000000000000004: peer usage: "
         "realm=<lab.test>, username=<lab>, rp=105, rb=1, sp=103, sb=1\n"),
        # A UDP session from the inside logs no TCP close.
        ("7: : session 000000000000000009: peer usage: realm=<lab.test>, "
         "username=<lab>, rp=105, rb=1, sp=103, sb=1\n"),
    ],
)
def test_inside_tcp_allocation_usage_none(text: str) -> None:
    assert inside_tcp_allocation_usage(text) == (0, 0)


FALLBACK_PREFIX = "2026-12-04 17:25:15,505 INFO w1 TURN server 10.99.61.2:3478: "


@pytest.mark.parametrize(
    ("message", "matches"),
    [
        ("UDP blocked, using TCP. The UDP probe failed: timed out", True),
        ("UDP failed, using TCP. The UDP probe failed: 401", False),
        ("UDP works again, using it", False),
    ],
)
def test_turn_fallback_log_line(message: str, matches: bool) -> None:
    assert bool(TURN_FALLBACK_RE.search(FALLBACK_PREFIX + message)) is matches
