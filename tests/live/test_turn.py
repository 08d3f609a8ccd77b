"""Live calls whose media must go through a TURN relay (coturn).

coturn runs in the edge namespace with long-term credentials. The caller
offers relay candidates only, so ICE can succeed only through the relay; the
workers are configured with the same TURN server for the local class, so
their edge leg allocates a relay too. Needs root and coturn.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.b2bua_lab import B2buaLab, read_reports, start_coturn
from tests.live.test_calls import raw_invite, send_raw

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn missing"),
]

SUBNET = 11
TURN_USER = "lab"
TURN_PASSWORD = "labsecret"


def start_turnserver(lab: B2buaLab, tmp: Path) -> Path:
    assert lab.edge is not None
    return start_coturn(lab.edge, lab.edge_ip, tmp, port=3478,
                        relay_ports=(49160, 49299), user=TURN_USER,
                        password=TURN_PASSWORD)


@pytest.fixture(scope="module")
def b2bua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    tmp = tmp_path_factory.mktemp("turn")
    edge_ip = f"10.99.{SUBNET}.1"
    lab = B2buaLab(tmp, subnet=SUBNET, workers=1, config={
        "ice": {"turn": [{"server": f"{edge_ip}:3478", "transport": "udp",
                          "username": TURN_USER, "password": TURN_PASSWORD}]},
        "classes": {"local": {"ice": True, "turn": True, "srtp": "optional"}},
        "expose_class_header": True,
    })
    try:
        lab.create_namespaces()
        lab.turn_log = start_turnserver(lab, tmp)  # type: ignore[attr-defined]
        lab.write_files()
        lab.start_b2bua()
        yield lab
    finally:
        lab.close()


def test_relay_only_caller_gets_media(b2bua: B2buaLab) -> None:
    code, report = b2bua.dial(
        "echo", "--duration", "2", "--turn", f"{b2bua.edge_ip}:3478",
        "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD, "--relay-only",
    )
    assert code == 0, report
    assert report["ice"]["state"] == "completed"
    assert report["ice"]["local_type"] == "relay", report["ice"]
    assert report["rtp"]["tx_packets"] > 50
    assert report["rtp"]["rx_packets"] > 50
    assert report["b2bua_class"] is not None, "X-B2BUA-Class missing on the 200"
    assert report["b2bua_class"].startswith("local;")
    time.sleep(0.5)
    ice_lines = [line for line in b2bua.log_text().splitlines()
                 if report["call_id"] in line and "ICE completed" in line]
    assert ice_lines, "the worker logged no ICE result"
    assert re.search(r"pair \w+ -> relay", ice_lines[0]), ice_lines[0]


def test_worker_offers_relay_candidate(b2bua: B2buaLab) -> None:
    code, report = b2bua.dial("echo", "--duration", "1")
    assert code == 0, report
    answer_sdp = report["remote_sdp"]
    relay = [line for line in answer_sdp.splitlines()
             if "typ relay" in line and f" {b2bua.edge_ip} 49" in line]
    assert relay, f"no relay candidate from the TURN server in:\n{answer_sdp}"
    assert report["rtp"]["rx_packets"] > 25


def test_caller_without_ice_gets_worker_address(b2bua: B2buaLab) -> None:
    # The class has ICE and TURN, but this caller offers no ICE. The SDP
    # answer must name the worker's own media address, not a relay port.
    code, report = b2bua.dial("echo", "--duration", "2", "--no-ice")
    assert code == 0, report
    answer_sdp = report["remote_sdp"]
    assert "a=candidate" not in answer_sdp, answer_sdp
    assert "a=ice-ufrag" not in answer_sdp, answer_sdp
    port = int(re.search(r"^m=audio (\d+)", answer_sdp, re.M).group(1))
    assert not 49160 <= port <= 49299, f"answered with a relay port:\n{answer_sdp}"
    assert f"c=IN IP4 {b2bua.edge_ip}" in answer_sdp
    assert report["rtp"]["tx_packets"] > 50
    assert report["rtp"]["rx_packets"] > 50
    time.sleep(0.5)
    routed = [line for line in b2bua.log_text().splitlines()
              if report["call_id"] in line and "edge-leg policy" in line]
    assert routed and "noice-noturn-optional (the offer has no ICE)" in routed[0], routed


def test_session_update_stays_on_its_leg(b2bua: B2buaLab, tmp_path: Path) -> None:
    # The pjsua2 caller (ICE controlling, with TURN) updates the session
    # once it is answered (codec lock or the ICE-chosen pair). The worker
    # must answer that on the caller's leg alone, with media uninterrupted.
    report_file = tmp_path / "answer.jsonl"
    answer = b2bua.start_answer(5090, report_file, "--no-ice", "--calls", "1")
    code, report = b2bua.dial(
        "91234", "--duration", "3", "--turn", f"{b2bua.edge_ip}:3478",
        "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD,
    )
    answer.wait(15)
    assert code == 0, report
    assert report["ice"]["local_type"] == "host", report["ice"]
    assert report["rtp"]["rx_packets"] > 120, "media interrupted after the update"
    time.sleep(0.5)
    log = b2bua.log_text().splitlines()
    caller_updates = [line for line in log if report["call_id"] in line
                      and re.search(r"in-dialog (INVITE|UPDATE) from udp:", line)]
    assert caller_updates, "the caller sent no session update"
    target_calls = read_reports(report_file)
    assert len(target_calls) == 1
    target_call_id = target_calls[0]["call_id"]
    assert not [line for line in log if target_call_id in line
                and re.search(r"in-dialog (INVITE|UPDATE)", line)], (
        "the session update leaked to the target leg")
    assert target_calls[0]["rtp"]["rx_packets"] > 120
    assert not [line for line in log if report["call_id"] in line
                and "ICE failed" in line]


def test_late_offer_answered_after_gathering(b2bua: B2buaLab, tmp_path: Path) -> None:
    # Without SDP in the INVITE, the worker makes the offer, with ICE and a
    # TURN relay, and pjsua sends the 200 only once gathering is done.
    invite = raw_invite(b2bua, "late-offer-turn", b"").replace(
        b"Content-Type: application/sdp\r\n", b"")
    lines = send_raw(b2bua, tmp_path, invite)
    finals = [line for line in lines if not line.startswith("SIP/2.0 1")]
    assert finals, lines
    assert finals[0].startswith("SIP/2.0 200 "), lines
    time.sleep(0.5)
    calls = [line for line in b2bua.log_text().splitlines()
             if "late-offer-turn" in line]
    assert any("answered (echo" in line for line in calls), calls
    assert not any("answer 200 failed" in line for line in calls), calls
