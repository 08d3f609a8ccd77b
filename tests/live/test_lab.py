"""The lab interop rig end to end: one test per scenario, as CI runs it.

Builds the rig's fixed namespaces (b2blab-*), so it cannot run while a rig
started by hand with `scripts/lab up` exists. Results go to a Markdown table
in the test's temporary folder. Needs root, coturn, sipp, baresip, tcpdump.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from b2bua import lab_scenarios, labrig
from b2bua.labrig import Rig, RigError

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns"),
    pytest.mark.skipif(
        any(shutil.which(tool) is None
            for tool in ("turnserver", "sipp", "baresip", "tcpdump", "iptables")),
        reason="needs coturn, sipp, baresip, tcpdump and iptables",
    ),
]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if labrig.existing_namespaces():
        pytest.fail("a lab rig is up (b2blab-* namespaces); run `scripts/lab down`")
    lab = Rig(tmp_path_factory.mktemp("lab"))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def run_scenario(rig: Rig, name: str) -> lab_scenarios.ScenarioResult:
    result = lab_scenarios.SCENARIOS[name](rig)
    lab_scenarios.append_results(rig.results_path, [result])
    print(result.line())
    return result


def test_local_call_uses_host_pair(rig: Rig) -> None:
    result = run_scenario(rig, "local")
    assert result.call_class == "local", result.line()
    assert result.pair == "host -> host", result.line()
    assert result.rtp_both_ways, result.line()
    assert result.caller_ice_ms is not None, result.line()
    assert result.passed, result.line()


def test_remote_nat_gets_media(rig: Rig) -> None:
    result = run_scenario(rig, "remote-nat")
    assert result.call_class == "remote", result.line()
    local_type, remote_type = result.pair.split(" -> ")
    assert local_type == "relay", result.line()
    assert remote_type in ("srflx", "prflx", "relay"), result.line()
    assert result.rtp_both_ways, result.line()
    assert result.caller_ice_ms is not None, result.line()


def test_udp_blocked_both_sides_use_turn_tcp(rig: Rig) -> None:
    # Either pjsip process may crash at hangup on TURN over TCP, so nothing
    # here reads an exit status or needs the caller's report.
    result = run_scenario(rig, "remote-udp-blocked")
    assert result.call_class == "remote", result.line()
    assert result.pair == "relay -> relay", result.line()
    assert result.rtp_both_ways, result.line()
    assert "B2BUA logged no hangup by the caller" not in result.notes
    for name, held in result.checks.items():
        assert held, f"{name}: {result.line()}"
    assert not rig.relay_udp_blocked(), "the scenario must admit UDP again"


def test_federation_ice_and_bfcp_refused(rig: Rig) -> None:
    result = run_scenario(rig, "federation")
    assert result.call_class == "federation", result.line()
    assert result.pair not in ("-", "no ICE"), result.line()
    assert result.rtp_both_ways, result.line()
    assert "BFCP offer: class federation, answered port 0" in result.notes, \
        result.line()


def test_baresip_ice_interop(rig: Rig) -> None:
    result = run_scenario(rig, "baresip-ice")
    assert result.call_class == "remote", result.line()
    assert result.pair not in ("-", "no ICE"), result.line()
    assert result.rtp_sent >= lab_scenarios.MIN_RTP_PACKETS, result.line()
    assert result.rtp_received >= lab_scenarios.MIN_RTP_PACKETS, result.line()


def test_results_table_has_every_scenario(rig: Rig) -> None:
    text = rig.results_path.read_text()
    for name in lab_scenarios.SCENARIOS:
        assert f"| {name} |" in text, f"{name} missing from {rig.results_path}"


def test_up_rejects_existing_rig(rig: Rig, tmp_path: Path) -> None:
    with pytest.raises(RigError, match="already exists"):
        Rig(tmp_path).up()
    assert rig.is_up(), "a rejected up must leave the running rig alone"


def test_down_removes_everything(rig: Rig) -> None:
    pids = [entry["pid"] for entry in rig.read_state()["processes"]]
    rig.down()
    assert labrig.existing_namespaces() == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), pid
    assert not rig.state_path.exists()


def _is_zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
