"""Namespaces, processes and samplers of one benchmark run.

Two namespaces joined by a veth pair: ``edge`` runs the system under test
(``b2bua run``, or Kamailio with rtpengine as the relay baseline) and
``load`` runs the sipp callers and sipp echo targets. Every process is
started through :class:`b2bua.netns.Lab`, which stops it by pid on close.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from b2bua import coturn
from b2bua.netns import Lab, Namespace

from . import measure

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SIPP_DIR = REPO / "tests" / "data" / "sipp"
EDGE_PORT = 5060
# The B2BUA listens here too, with ICE on the edge leg.
EDGE_ICE_PORT = 5062
TARGET_SIP_PORT = 5200
CALLER_SIP_PORT = 5300
TARGET_MEDIA_PORT = 7000
CALLER_MEDIA_PORT = 10000
# sipp 3.6.1's auto_media_port moves 4 ports up for each new call and does
# not wrap, so each caller gets this many ports from its own base.
CALLER_MEDIA_SPAN = 6000
MEDIA_PORTS_PER_CALL = 4
TURN_USER = "bench"
TURN_PASSWORD = "benchsecret"
READY_TIMEOUT_S = 60.0
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def pcmu_tone(seconds: float = 1.0, hz: float = 440.0) -> bytes:
    """Encode a sine tone as G.711 mu-law, 8 kHz, for sipp's rtp_stream."""
    import math

    out = bytearray()
    for i in range(int(8000 * seconds)):
        sample = int(8000 * math.sin(2 * math.pi * hz * i / 8000))
        sign = 0x80 if sample < 0 else 0
        magnitude = min(abs(sample), 32635) + 0x84
        exponent = 7
        mask = 0x4000
        while exponent > 0 and not magnitude & mask:
            exponent -= 1
            mask >>= 1
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
        out.append(~(sign | exponent << 4 | mantissa) & 0xFF)
    return bytes(out)


@dataclass
class Sample:
    """CPU ticks and memory of a namespace's processes at one moment."""

    at: float
    ticks: dict[int, int]
    rss_kb: int
    pss_kb: int
    link: measure.LinkCounters
    udp: dict[str, int]
    host_busy: int
    host_total: int
    # What each pid is (`process_role`), to split the CPU figure.
    roles: dict[int, str] = field(default_factory=dict)


@dataclass
class Usage:
    """Resource use of the system under test over one window."""

    seconds: float
    cpu_percent: float
    host_cpu_percent: float
    rss_mb: float
    pss_mb: float
    processes: int
    loss: float
    received_packets: int
    udp_errors: int
    # CPU % of one core by process role (workers, kamailio, coturn, ...).
    cpu_by_role: dict[str, float] = field(default_factory=dict)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as handle:
        return handle.read()


def process_role(pid: int) -> str:
    """Name what a process in the edge namespace is, for the CPU split."""
    try:
        command = _read(f"/proc/{pid}/cmdline").split("\0")
        name = _read(f"/proc/{pid}/comm").strip()
    except OSError:
        return "gone"
    # Workers are forked from the supervisor and keep its command line;
    # b2bua/forked.py names them b2bua-<worker id>.
    if name.startswith("b2bua-w") or "b2bua.worker" in command:
        return "workers"
    if "b2bua.cli" in command:
        return "supervisor"
    program = os.path.basename(command[0]) if command and command[0] else "?"
    return {"turnserver": "coturn"}.get(program, program)


def _host_cpu() -> tuple[int, int]:
    fields = [int(v) for v in _read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Rig:
    """The lab of one benchmark run and the processes started in it."""

    def __init__(self, workdir: Path, subnet: int) -> None:
        if not 90 <= subnet <= 99:
            raise ValueError(f"invalid subnet {subnet}; allowed: 90..99")
        self.workdir = workdir
        self.edge_ip = f"10.99.{subnet}.1"
        self.load_ip = f"10.99.{subnet}.2"
        self.lab = Lab("bench")
        self.edge: Namespace
        self.load: Namespace
        self.edge_if = ""
        self.system: subprocess.Popen[bytes] | None = None
        self.targets: list[subprocess.Popen[bytes]] = []
        self.runtime_dir = workdir / "run"
        self._roles: dict[int, str] = {}

    # ----- lab ---------------------------------------------------------------

    def open(self) -> None:
        self.edge = self.lab.add_namespace("edge")
        self.load = self.lab.add_namespace("load")
        self.edge_if, _ = self.lab.link(self.edge, f"{self.edge_ip}/24",
                                        self.load, f"{self.load_ip}/24")
        (self.workdir / "bench_tone.pcmu").write_bytes(pcmu_tone())

    def close(self) -> None:
        self.lab.close()

    def stop(self, process: subprocess.Popen[Any] | None,
             timeout: float = 20.0) -> None:
        """Stop one process started here: SIGTERM, then SIGKILL after timeout."""
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it",
                        process.pid, timeout)
            process.kill()
            process.wait(5)

    def stop_system(self) -> None:
        self.stop(self.system)
        self.system = None
        for target in self.targets:
            self.stop(target, 5)
        self.targets = []

    # ----- systems under test ----------------------------------------------

    def start_targets(self, count: int) -> None:
        """Start ``count`` sipp echo targets t0..t(count-1) in the load namespace."""
        for index in range(count):
            argv = [
                "sipp", "-sf", str(SIPP_DIR / "bench_uas.xml"),
                "-i", self.load_ip, "-p", str(TARGET_SIP_PORT + index),
                "-mi", self.load_ip, "-mp", str(TARGET_MEDIA_PORT + 4 * index),
                "-rtp_echo", "-nostdin", "-timeout", "3600s",
            ]
            self.targets.append(self.load.popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=str(self.workdir)))

    def b2bua_config(self, workers: int, setups_per_worker: float,
                     targets: int) -> dict[str, Any]:
        """Build a config with a plain listener and an ICE + TURN listener.

        Every class allows ICE with TURN, so calls to EDGE_ICE_PORT gather
        and allocate on coturn while calls to EDGE_PORT use plain RTP.
        """
        # sipp does no ICE. Without plain_callers_via_turn the workers would
        # skip ICE for its calls, and the ICE rows would measure no ICE.
        policy = {"ice": True, "turn": True, "srtp": "off",
                  "plain_callers_via_turn": True}
        config: dict[str, Any] = {
            "listen": [
                {"address": self.edge_ip, "port": EDGE_PORT, "transports": ["udp"],
                 "ice": False},
                {"address": self.edge_ip, "port": EDGE_ICE_PORT,
                 "transports": ["udp"], "ice": True},
            ],
            "media": {"address": self.edge_ip, "port_min": 20000,
                      "port_max": 39999},
            "workers": {"count": workers, "sip_port_base": 5100,
                        "max_setups_per_second": setups_per_worker},
            "edge": {"internal_address": "127.0.0.1", "internal_port": 5070},
            "srtp": "off",
            "classes": {"local": policy, "remote": policy, "federation": policy},
            "classification": {
                "local_domains": [self.edge_ip, self.load_ip],
                "internal_networks": ["10.99.0.0/16", "127.0.0.0/8"],
            },
            "dialplan": str(self.workdir / "dialplan.yaml"),
            "runtime_dir": str(self.runtime_dir),
            "log_level": "warning",
        }
        config["ice"] = {"turn": [{
            "server": f"{self.edge_ip}:3478", "username": TURN_USER,
            "password": TURN_PASSWORD}]}
        dialplan = {
            "targets": {
                f"t{k}": {"uri": f"sip:{{user}}@{self.load_ip}:{TARGET_SIP_PORT + k}"}
                for k in range(targets)
            },
            "rules": [
                {"name": f"t{k}", "match": {"user": f"^t{k}$"}, "target": f"t{k}"}
                for k in range(targets)
            ],
        }
        (self.workdir / "dialplan.yaml").write_text(yaml.safe_dump(dialplan))
        return config

    def start_b2bua(self, config: dict[str, Any]) -> None:
        """Start ``b2bua run`` in the edge namespace and wait for every worker."""
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        path = self.workdir / "b2bua.yaml"
        path.write_text(yaml.safe_dump(config))
        logpath = self.workdir / "b2bua.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(logpath, "ab") as logfile:
            self.system = self.edge.popen(
                [sys.executable, "-m", "b2bua.cli", "run", "--config", str(path)],
                stdout=logfile, stderr=subprocess.STDOUT, env=env)
        count = config["workers"]["count"]
        deadline = time.monotonic() + READY_TIMEOUT_S + count * 0.5
        while time.monotonic() < deadline:
            if self.system.poll() is not None:
                raise RuntimeError(f"b2bua run exited early; see {logpath}")
            ready = len(list((self.runtime_dir / "workers").glob("*.json"))) \
                if (self.runtime_dir / "workers").is_dir() else 0
            if ready == count and (self.runtime_dir / "kamailio.ctl").exists():
                # The edge marks workers active after its first OPTIONS probe.
                time.sleep(3.0)
                return
            time.sleep(0.3)
        raise RuntimeError(f"b2bua not ready in time; see {logpath}")

    def worker_status(self) -> list[dict[str, Any]]:
        result = []
        for path in sorted((self.runtime_dir / "workers").glob("*.json")):
            try:
                result.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return result

    def start_turn(self) -> subprocess.Popen[bytes]:
        argv = coturn.coturn_argv(
            listen_ips=(self.edge_ip,), relay_ip=self.edge_ip, port=3478,
            user=TURN_USER, password=TURN_PASSWORD, realm="bench.test",
            relay_ports=(40000, 49999), state_dir=self.workdir,
        )
        logpath = self.workdir / "turn.log"
        with logpath.open("w") as logfile:
            process = self.edge.popen(argv, stdout=logfile, stderr=subprocess.STDOUT)
        if not coturn.wait_until_ready(logpath, process, 10):
            raise RuntimeError(f"coturn did not start; see {logpath}")
        return process

    # ----- sampling ----------------------------------------------------------

    def edge_pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.edge.name],
                              capture_output=True, text=True, timeout=10, check=True)
        return [int(p) for p in done.stdout.split()]

    def link_counters(self) -> measure.LinkCounters:
        done = self.edge.run(["ip", "-s", "-j", "link", "show", "dev", self.edge_if])
        stats = json.loads(done.stdout)[0]["stats64"]
        return measure.LinkCounters(stats["rx"]["packets"], stats["tx"]["packets"],
                                    stats["rx"]["dropped"])

    def sample(self) -> Sample:
        """Read CPU ticks and memory of every process in the edge namespace."""
        ticks: dict[int, int] = {}
        roles: dict[int, str] = {}
        rss = pss = 0
        for pid in self.edge_pids():
            try:
                ticks[pid] = measure.cpu_ticks(_read(f"/proc/{pid}/stat"))
                roles[pid] = self._roles.get(pid) or process_role(pid)
                self._roles[pid] = roles[pid]
                memory = measure.smaps_rollup_kb(_read(f"/proc/{pid}/smaps_rollup"))
            except (OSError, ValueError):
                continue
            rss += memory["Rss"]
            pss += memory["Pss"]
        udp = measure.parse_udp_snmp(self.edge.run(["cat", "/proc/net/snmp"]).stdout)
        busy, total = _host_cpu()
        return Sample(time.monotonic(), ticks, rss, pss, self.link_counters(), udp,
                      busy, total, roles)


def usage_between(first: Sample, last: Sample) -> Usage:
    """Compute CPU, memory and media loss of the edge namespace over a window."""
    seconds = last.at - first.at
    used = sum(last.ticks[pid] - first.ticks.get(pid, 0) for pid in last.ticks)
    by_role: dict[str, int] = {}
    for pid, ticks in last.ticks.items():
        role = last.roles.get(pid, "?")
        by_role[role] = by_role.get(role, 0) + ticks - first.ticks.get(pid, 0)
    host_total = last.host_total - first.host_total
    host = 100.0 * (last.host_busy - first.host_busy) / host_total if host_total else 0
    return Usage(
        seconds=seconds,
        cpu_percent=measure.cpu_percent(used, seconds, TICKS_PER_SECOND),
        host_cpu_percent=host * (os.cpu_count() or 1),
        rss_mb=last.rss_kb / 1024,
        pss_mb=last.pss_kb / 1024,
        processes=len(last.ticks),
        loss=measure.media_loss(first.link, last.link, first.udp, last.udp),
        received_packets=last.link.rx_packets - first.link.rx_packets,
        udp_errors=measure.udp_receive_errors(first.udp, last.udp),
        cpu_by_role={role: measure.cpu_percent(ticks, seconds, TICKS_PER_SECOND)
                     for role, ticks in sorted(by_role.items())},
    )
