"""Two network services: calls arrive outside and leave inside.

The edge namespace has an inside network (toward `far`, where the trunk
target runs) and an outside network (toward `out`, where remote callers
are). Each service has its own listener, media address and classification.
A dialplan rule sends calls from the outside service to a target that
leaves through the inside service. Needs root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.b2bua_lab import EDGE_PORT, B2buaLab, child_env, cli_argv, parse_report
from tests.live.b2bua_lab import read_reports

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns")

INSIDE = 14
OUTSIDE_EDGE = "10.99.15.1"
OUTSIDE_CALLER = "10.99.15.2"


@pytest.fixture(scope="module")
def b2bua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    tmp = tmp_path_factory.mktemp("services")
    inside_edge = f"10.99.{INSIDE}.1"
    far = f"10.99.{INSIDE}.2"
    lab = B2buaLab(tmp, subnet=INSIDE, workers=1, config={
        "services": [
            {"name": "inside",
             "listen": [{"address": inside_edge, "port": EDGE_PORT}],
             "media": {"address": inside_edge, "port_min": 20000,
                       "port_max": 20999},
             "classification": {"local_domains": ["lab.test"],
                                "internal_networks": [f"10.99.{INSIDE}.0/24"]}},
            {"name": "outside",
             "listen": [{"address": OUTSIDE_EDGE, "port": EDGE_PORT}],
             "media": {"address": OUTSIDE_EDGE, "port_min": 21000,
                       "port_max": 21999},
             "classification": {"local_domains": ["lab.test"],
                                "internal_networks": [f"10.99.{INSIDE}.0/24"]}},
        ],
    }, dialplan={
        "targets": {"trunk": {"uri": f"sip:{{user}}@{far}:5090",
                              "service": "inside"}},
        "rules": [
            {"name": "outside-to-trunk",
             "match": {"user": r"^9(\d+)$", "service": "outside"},
             "rewrite": {"pattern": r"^9(\d+)$", "replacement": r"\1"},
             "target": "trunk"},
            {"name": "inside-echo", "match": {"service": "inside"},
             "target": "echo"},
        ],
    })
    lab.config.pop("listen")
    lab.config.pop("media")
    lab.config.pop("classification")
    try:
        lab.create_namespaces()
        lab.out = lab.lab.add_namespace("out")  # type: ignore[attr-defined]
        assert lab.edge is not None
        lab.lab.link(lab.edge, f"{OUTSIDE_EDGE}/24", lab.out,  # type: ignore[attr-defined]
                     f"{OUTSIDE_CALLER}/24")
        lab.write_files()
        lab.start_b2bua()
        yield lab
    finally:
        lab.close()


def dial_from_outside(lab: B2buaLab, user: str) -> tuple[int, dict]:
    out = lab.out  # type: ignore[attr-defined]
    process = out.popen(
        cli_argv("dial", f"sip:{user}@{OUTSIDE_EDGE}:{EDGE_PORT}", "--bind",
                 OUTSIDE_CALLER, "--from", "sip:alice@lab.test", "--json",
                 "--duration", "2"),
        stdout=-1, stderr=-1, env=child_env(),
    )
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, parse_report(stdout, stderr)


def sdp_address(sdp: str) -> str:
    match = re.search(r"^c=IN IP4 (\S+)", sdp, re.MULTILINE)
    assert match, sdp
    return match.group(1)


def test_outside_call_leaves_inside(b2bua: B2buaLab, tmp_path: Path) -> None:
    report_file = tmp_path / "answer.jsonl"
    answer = b2bua.start_answer(5090, report_file, "--no-ice", "--calls", "1")
    code, report = dial_from_outside(b2bua, "91234")
    answer.wait(15)
    assert code == 0, report
    assert report["ice"] is not None and report["ice"]["state"] == "completed"
    assert report["rtp"]["rx_packets"] > 50
    assert sdp_address(report["remote_sdp"]) == OUTSIDE_EDGE, (
        "the outside leg must use the outside media address")
    target_calls = read_reports(report_file)
    assert len(target_calls) == 1
    assert target_calls[0]["rtp"]["rx_packets"] > 50
    assert sdp_address(target_calls[0]["remote_sdp"]) == b2bua.edge_ip, (
        "the inside leg must use the inside media address")
    lines = [line for line in b2bua.log_text().splitlines()
             if report["call_id"] in line]
    assert any("classified remote" in line for line in lines), lines
    assert any("service outside" in line and "routed by rule outside-to-trunk"
               in line for line in lines), lines
    assert any("via service inside" in line for line in b2bua.log_text().splitlines())


def test_inside_call_uses_inside_rules(b2bua: B2buaLab) -> None:
    code, report = b2bua.dial("echo", "--duration", "1",
                              "--from", "sip:bob@lab.test")
    assert code == 0, report
    assert sdp_address(report["remote_sdp"]) == b2bua.edge_ip
    lines = [line for line in b2bua.log_text().splitlines()
             if report["call_id"] in line]
    assert any("classified local" in line for line in lines), lines
    assert any("routed by rule inside-echo" in line for line in lines), lines
