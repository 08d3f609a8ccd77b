"""A running B2BUA inside network namespaces, for live tests.

Two namespaces joined by a veth pair: `edge` runs `b2bua run` (Kamailio and
the workers) on 10.99.<n>.1, and `far` runs the callers (`b2bua dial`) and
the SIP targets (`b2bua answer`, sipp) on 10.99.<n>.2. ICE in this pjsua2
build needs non-loopback addresses, hence the namespaces; no packet leaves
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from b2bua import coturn
from b2bua.netns import Lab, Namespace

REPO = Path(__file__).resolve().parents[2]
EDGE_PORT = 5060
READY_TIMEOUT_S = 20.0


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "b2bua.cli", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


class B2buaLab:
    """Namespaces, a config, a running `b2bua run` and helpers to call it."""

    def __init__(self, tmp: Path, subnet: int, workers: int = 2,
                 config: dict[str, Any] | None = None,
                 dialplan: dict[str, Any] | None = None,
                 prefix: str = "tb2b") -> None:
        self.tmp = tmp
        self.subnet = subnet
        self.edge_ip = f"10.99.{subnet}.1"
        self.far_ip = f"10.99.{subnet}.2"
        self.workers = workers
        # Namespaces are <prefix>-<pid>-edge and -far; scripts outside the
        # test suite pass their own prefix to keep clear of its cleanup.
        self.lab = Lab(prefix)
        self.edge: Namespace | None = None
        self.far: Namespace | None = None
        self.run_process: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "b2bua.log"
        self.runtime_dir = tmp / "run"
        self.config_path = tmp / "b2bua.yaml"
        self.dialplan_path = tmp / "dialplan.yaml"
        self.config = self._config(config or {})
        self.dialplan = dialplan or self.default_dialplan()

    def default_dialplan(self) -> dict[str, Any]:
        far = self.far_ip
        return {
            "targets": {
                "trunk": {"uri": f"sip:{{user}}@{far}:5090"},
                "busy": {"uri": f"sip:{{user}}@{far}:5091"},
                "slow": {"uri": f"sip:{{user}}@{far}:5092", "answer_timeout": 3},
                "dead": {"uri": f"sip:{{user}}@{far}:5093"},
            },
            "rules": [
                {"name": "echo", "match": {"user": "^echo$"}, "target": "echo"},
                {"name": "tone", "match": {"user": "^tone$"}, "target": "tone"},
                {"name": "trunk", "match": {"user": r"^9(\d+)$"},
                 "rewrite": {"pattern": r"^9(\d+)$", "replacement": r"\1"},
                 "target": "trunk", "headers": {"X-Lab-Route": "trunk"}},
                {"name": "busy", "match": {"user": "^busy$"}, "target": "busy"},
                {"name": "slow", "match": {"user": "^slow$"}, "target": "slow"},
                {"name": "dead", "match": {"user": "^dead$"}, "target": "dead"},
            ],
        }

    def _config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "listen": [{"address": self.edge_ip, "port": EDGE_PORT,
                        "transports": ["udp", "tcp"], "ice": True}],
            "media": {"address": self.edge_ip, "port_min": 20000,
                      "port_max": 20999},
            "workers": {"count": self.workers, "sip_port_base": 5100,
                        "max_setups_per_second": 4},
            "edge": {"internal_address": "127.0.0.1", "internal_port": 5070},
            "calls": {"no_answer_timeout": 30},
            "classification": {
                "local_domains": ["lab.test", self.edge_ip, self.far_ip],
                "internal_networks": ["10.99.0.0/16", "127.0.0.0/8"],
            },
            "dialplan": str(self.dialplan_path),
            "runtime_dir": str(self.runtime_dir),
            "log_level": "info",
        }
        config.update(overrides)
        return config

    # ----- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self.create_namespaces()
        self.write_files()
        self.start_b2bua()

    def create_namespaces(self) -> None:
        self.edge = self.lab.add_namespace("edge")
        self.far = self.lab.add_namespace("far")
        self.lab.link(self.edge, f"{self.edge_ip}/24", self.far, f"{self.far_ip}/24")

    def write_files(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.dialplan_path.write_text(yaml.safe_dump(self.dialplan))

    def start_b2bua(self) -> None:
        assert self.edge is not None
        log = open(self.log_path, "ab")
        self.run_process = self.edge.popen(
            cli_argv("run", "--config", str(self.config_path)),
            stdout=log, stderr=subprocess.STDOUT, env=child_env(),
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.run_process is not None
            if self.run_process.poll() is not None:
                raise RuntimeError(f"b2bua run exited early:\n{self.log_text()[-3000:]}")
            statuses = self.worker_status()
            ctl = self.runtime_dir / "kamailio.ctl"
            if len(statuses) == self.workers and ctl.exists():
                time.sleep(0.5)
                return
            time.sleep(0.2)
        raise RuntimeError(f"b2bua not ready in time:\n{self.log_text()[-3000:]}")

    def stop(self) -> int | None:
        process = self.run_process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.run_process = None
        return process.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.lab.close()

    # ----- observation -------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().replace(b"\0", b"").decode(
                "utf-8", "replace")
        except OSError:
            return ""

    def worker_status(self) -> list[dict[str, Any]]:
        folder = self.runtime_dir / "workers"
        result = []
        if not folder.is_dir():
            return result
        for path in sorted(folder.glob("*.json")):
            try:
                result.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return result

    def wait_idle(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until every worker reports no calls; return the last status."""
        deadline = time.monotonic() + timeout
        statuses: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            statuses = self.worker_status()
            if statuses and all(s["bridged_calls"] == 0 and s["pjsua_calls"] == 0
                                and s["conference_ports"] == 0 for s in statuses):
                return statuses
            time.sleep(0.3)
        return statuses

    # ----- peers -------------------------------------------------------------

    def dial_argv(self, user: str, *args: str, transport: str = "udp") -> list[str]:
        return cli_argv(
            "dial", f"sip:{user}@{self.edge_ip}:{EDGE_PORT}", "--bind", self.far_ip,
            "--from", f"sip:caller@{self.far_ip}", "--json",
            "--transport", transport, *args,
        )

    def dial(self, user: str, *args: str, timeout: float = 60.0,
             transport: str = "udp") -> tuple[int, dict[str, Any]]:
        assert self.far is not None
        process = self.far.popen(self.dial_argv(user, *args, transport=transport),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=child_env())
        out, err = process.communicate(timeout=timeout)
        return process.returncode, parse_report(out, err)

    def start_dial(self, user: str, *args: str) -> subprocess.Popen[bytes]:
        assert self.far is not None
        return self.far.popen(self.dial_argv(user, *args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=child_env())

    def start_answer(self, port: int, report: Path, *args: str) -> subprocess.Popen[str]:
        """Start `b2bua answer` in the far namespace and wait until it listens."""
        assert self.far is not None
        process = self.far.popen(
            cli_argv("answer", "--bind", self.far_ip, "--port", str(port),
                     "--report", str(report), "--max-seconds", "120", *args),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=child_env(),
        )
        assert process.stdout is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if "listening" in line:
                return process
            if not line and process.poll() is not None:
                break
        raise RuntimeError(f"b2bua answer on port {port} did not start")


def start_coturn(namespace: Namespace, address: str, tmp: Path, *, port: int,
                 relay_ports: tuple[int, int], user: str, password: str) -> Path:
    """Start coturn with long-term credentials in `namespace`; return its log.

    Relaying is allowed only to the lab network, and the log is verbose so
    tests can read allocations from it.
    """
    log_path = tmp / "turn.log"
    argv = coturn.coturn_argv(
        listen_ips=(address,), relay_ip=address, port=port, user=user,
        password=password, realm="lab.test", relay_ports=relay_ports,
        state_dir=tmp, verbose=True,
    )
    with log_path.open("w") as log:
        process = namespace.popen(argv, stdout=log, stderr=subprocess.STDOUT)
    if not coturn.wait_until_ready(log_path, process, 10):
        raise AssertionError(f"coturn did not start: {log_path.read_text()[-2000:]}")
    return log_path


def parse_report(out: bytes, err: bytes) -> dict[str, Any]:
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(
        f"no JSON report from b2bua dial; stdout={out[-500:]!r} stderr={err[-1500:]!r}"
    )


def read_reports(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
