r"""Build and tear down the lab interop rig: NAT topologies in network namespaces.

The rig models a site and the internet around it, all inside 10.99.0.0/16:

    desk --- inside --- border --- wan --- rnat --- remote  (our user at home)
               |                    |  \-- cnat --- closed  (NAT that drops UDP)
               +------ relay -------+  \-- fnat --- fed     (another domain)

`inside` runs `b2bua run` and the trunk target, and `desk` is a phone on the
inside LAN. The B2BUA has two network services: `outside` on the link to the
border, which advertises the border's address, and `inside` on the LAN.
`relay` runs coturn with one leg inside and one on the wan, as an A/V edge
relay does. `border` forwards the B2BUA's SIP port (DNAT) and masquerades the
rest of the site. `rnat`, `cnat` and `fnat` masquerade their
one host each, and `cnat` also drops all UDP. No namespace has a default
route: every route covers 10.99.0.0/16 or less, so nothing reaches the host
or beyond.

Namespace names are fixed (`b2blab-<name>`) because `up`, `run` and `down`
are separate invocations. `up` writes a state file with the pids it started
and refuses to build over leftovers; `down` removes them all, also after a
failed `up`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from b2bua import coturn

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
LAB_DATA = REPO / "tests" / "data" / "lab"
DEFAULT_STATE_DIR = Path("/run/b2bua-lab")
PREFIX = "b2blab"
STATE_FILE = "state.json"
READY_TIMEOUT_S = 25.0
STOP_TIMEOUT_S = 5.0
B2BUA_PROCESS = "b2bua run"

# Fixed addresses of the topology. Subnets 10.99.60-89 belong to the rig.
INSIDE_IP = "10.99.60.1"
BORDER_INSIDE_IP = "10.99.60.254"
RELAY_INSIDE_IP = "10.99.61.2"
BORDER_WAN_IP = "10.99.70.1"
RELAY_WAN_IP = "10.99.71.1"
LAN_IP = "10.99.62.1"
DESK_IP = "10.99.62.2"
REMOTE_IP = "10.99.80.2"
CLOSED_IP = "10.99.81.2"
FED_IP = "10.99.82.2"
SIP_PORT = 5060
TURN_PORT = 3478
TRUNK_PORT = 5090
SIPP_PORT = 5080
LAB_ROUTE = "10.99.0.0/16"

NAMESPACES = ("inside", "desk", "border", "wan", "relay", "rnat", "remote",
              "cnat", "closed", "fnat", "fed")
ROUTERS = ("border", "wan", "rnat", "cnat", "fnat")


@dataclass(frozen=True)
class Link:
    """A veth pair: namespace, address/prefix on each end."""

    a: str
    a_cidr: str
    b: str
    b_cidr: str


LINKS = (
    Link("inside", f"{INSIDE_IP}/24", "border", f"{BORDER_INSIDE_IP}/24"),
    Link("inside", "10.99.61.1/24", "relay", f"{RELAY_INSIDE_IP}/24"),
    Link("desk", f"{DESK_IP}/24", "inside", f"{LAN_IP}/24"),
    Link("border", f"{BORDER_WAN_IP}/24", "wan", "10.99.70.254/24"),
    Link("relay", f"{RELAY_WAN_IP}/24", "wan", "10.99.71.254/24"),
    Link("rnat", "10.99.72.1/24", "wan", "10.99.72.254/24"),
    Link("cnat", "10.99.73.1/24", "wan", "10.99.73.254/24"),
    Link("fnat", "10.99.74.1/24", "wan", "10.99.74.254/24"),
    Link("remote", f"{REMOTE_IP}/24", "rnat", "10.99.80.1/24"),
    Link("closed", f"{CLOSED_IP}/24", "cnat", "10.99.81.1/24"),
    Link("fed", f"{FED_IP}/24", "fnat", "10.99.82.1/24"),
)

# (namespace, destination, gateway). Connected subnets need no entry.
ROUTES = (
    ("inside", LAB_ROUTE, BORDER_INSIDE_IP),
    ("desk", LAB_ROUTE, LAN_IP),
    ("border", LAB_ROUTE, "10.99.70.254"),
    ("relay", "10.99.60.0/24", "10.99.61.1"),
    ("relay", LAB_ROUTE, "10.99.71.254"),
    ("rnat", LAB_ROUTE, "10.99.72.254"),
    ("cnat", LAB_ROUTE, "10.99.73.254"),
    ("fnat", LAB_ROUTE, "10.99.74.254"),
    ("remote", LAB_ROUTE, "10.99.80.1"),
    ("closed", LAB_ROUTE, "10.99.81.1"),
    ("fed", LAB_ROUTE, "10.99.82.1"),
)


def _home_nat(name: str, drop_udp: bool = False) -> list[list[str]]:
    rules = [["-t", "nat", "-A", "POSTROUTING", "-o", "to-wan", "-j", "MASQUERADE"],
             ["-P", "FORWARD", "DROP"],
             ["-A", "FORWARD", "-m", "conntrack", "--ctstate",
              "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
    if drop_udp:
        rules.append(["-A", "FORWARD", "-p", "udp", "-j", "DROP"])
    rules.append(["-A", "FORWARD", "-i", f"to-{name}", "-o", "to-wan",
                  "-j", "ACCEPT"])
    return rules


def _border_rules() -> list[list[str]]:
    rules = []
    for proto in ("udp", "tcp"):
        rules.append(["-t", "nat", "-A", "PREROUTING", "-i", "to-wan", "-d",
                      BORDER_WAN_IP, "-p", proto, "--dport", str(SIP_PORT),
                      "-j", "DNAT", "--to-destination", f"{INSIDE_IP}:{SIP_PORT}"])
    rules += [
        ["-t", "nat", "-A", "POSTROUTING", "-o", "to-wan", "-j", "MASQUERADE"],
        ["-P", "FORWARD", "DROP"],
        ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
         "-j", "ACCEPT"],
        ["-A", "FORWARD", "-i", "to-inside", "-o", "to-wan", "-j", "ACCEPT"],
    ]
    for proto in ("udp", "tcp"):
        rules.append(["-A", "FORWARD", "-i", "to-wan", "-d", INSIDE_IP, "-p", proto,
                      "--dport", str(SIP_PORT), "-j", "ACCEPT"])
    return rules


FIREWALLS: dict[str, list[list[str]]] = {
    "border": _border_rules(),
    "rnat": _home_nat("remote"),
    "cnat": _home_nat("closed", drop_udp=True),
    "fnat": _home_nat("fed"),
}
# Added in the relay namespace while a scenario needs the site's firewall to
# drop UDP from the inside to the relay, TURN included.
RELAY_UDP_BLOCK = ["INPUT", "-i", "to-inside", "-p", "udp", "-j", "DROP"]


class RigError(RuntimeError):
    """The rig could not be built, used or removed. The message names the cause."""


def ns_name(short: str) -> str:
    return f"{PREFIX}-{short}"


def netns_argv(short: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns_name(short), *argv]


def run_cmd(argv: list[str], timeout: float = 15.0) -> str:
    """Run a command to completion and return stdout; raise RigError on failure."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RigError(f"{' '.join(argv)} failed: {exc}") from exc
    if done.returncode != 0:
        raise RigError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def existing_namespaces() -> list[str]:
    """Return the rig's namespaces that exist now."""
    names = [line.split()[0] for line in run_cmd(["ip", "netns", "list"]).splitlines()
             if line.strip()]
    ours = {ns_name(short) for short in NAMESPACES}
    return [name for name in names if name in ours]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "b2bua.cli", *args]


# ----- processes ---------------------------------------------------------------


def _pid_namespace(pid: int) -> str | None:
    try:
        out = run_cmd(["ip", "netns", "identify", str(pid)], timeout=5)
    except RigError:
        return None
    return out.strip() or None


def stop_pid(pid: int, namespace: str | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop one process we started: SIGTERM, then SIGKILL after `timeout`.

    When `namespace` is given, a pid that now lives elsewhere was reused by
    another process and is left alone.
    """
    if namespace is not None and _pid_namespace(pid) != namespace:
        log.info("pid %d is gone or outside %s; not stopping it", pid, namespace)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.05)
    log.warning("pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status of our own child so that it does not linger."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ----- the rig -----------------------------------------------------------------


class Rig:
    """The namespaces, their config and the daemons of one rig, found by state_dir."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR,
                 config_file: Path = LAB_DATA / "b2bua.yaml") -> None:
        self.state_dir = state_dir
        self.source_config = config_file
        self.state_path = state_dir / STATE_FILE
        self.config_path = state_dir / "b2bua.yaml"
        self.runtime_dir = state_dir / "b2bua-run"
        self.log_path = state_dir / "b2bua.log"
        self.turn_log = state_dir / "turn.log"
        self.results_path = state_dir / "results.md"
        self.config = self._load_config()

    def _load_config(self) -> dict[str, Any]:
        try:
            config = yaml.safe_load(self.source_config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RigError(f"cannot read rig config {self.source_config}: {exc}") from exc
        if not isinstance(config, dict):
            raise RigError(f"{self.source_config}: expected a mapping")
        dialplan = config.get("dialplan")
        if dialplan is not None:
            config["dialplan"] = str((self.source_config.parent / dialplan).resolve())
        config["runtime_dir"] = str(self.runtime_dir)
        return config

    @property
    def turn_credentials(self) -> tuple[str, str]:
        """The (username, password) of the first service's first TURN server."""
        try:
            entry = self.config["services"][0]["ice"]["turn"][0]
            return str(entry["username"]), str(entry["password"])
        except (KeyError, IndexError, TypeError) as exc:
            raise RigError(
                f"{self.source_config}: services[0].ice.turn[0] with username and "
                "password is missing; the rig's coturn takes its credentials "
                "from it"
            ) from exc

    @property
    def worker_count(self) -> int:
        return int(self.config.get("workers", {}).get("count", 2))

    # ----- state ---------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("state file %s is unreadable (%s); ignoring it",
                        self.state_path, exc)
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    def _record(self, key: str, value: Any) -> None:
        state = self.read_state()
        if isinstance(state.get(key), list):
            state[key].append(value)
        else:
            state[key] = value
        self._write_state(state)

    def is_up(self) -> bool:
        return bool(self.read_state().get("ready"))

    # ----- up ------------------------------------------------------------------

    def up(self) -> None:
        """Build the topology and start coturn and `b2bua run`.

        Raises RigError when namespaces or a state file of an earlier rig
        exist; `down` clears them. On any failure the partial rig is removed.
        """
        leftovers = existing_namespaces()
        if leftovers or self.state_path.exists():
            raise RigError(
                f"a lab rig already exists ({', '.join(leftovers) or self.state_path}); "
                "run `scripts/lab down` first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_state({"namespaces": [], "processes": [], "ready": False})
        try:
            self._build_network()
            self._start_turn()
            self.log_path.write_text("")
            self._start_b2bua()
        except BaseException:
            log.error("rig start failed; removing what was built")
            self.down()
            raise
        self._record("ready", True)
        log.info("rig up; state in %s", self.state_path)

    def _build_network(self) -> None:
        for short in NAMESPACES:
            run_cmd(["ip", "netns", "add", ns_name(short)])
            self._record("namespaces", ns_name(short))
            run_cmd(netns_argv(short, ["ip", "link", "set", "lo", "up"]))
        for link in LINKS:
            if_a, if_b = f"to-{link.b}", f"to-{link.a}"
            run_cmd(["ip", "link", "add", if_a, "netns", ns_name(link.a), "type",
                     "veth", "peer", "name", if_b, "netns", ns_name(link.b)])
            for short, ifname, cidr in ((link.a, if_a, link.a_cidr),
                                        (link.b, if_b, link.b_cidr)):
                run_cmd(netns_argv(short, ["ip", "addr", "add", cidr, "dev", ifname]))
                run_cmd(netns_argv(short, ["ip", "link", "set", ifname, "up"]))
        for short, destination, gateway in ROUTES:
            run_cmd(netns_argv(short, ["ip", "route", "add", destination,
                                       "via", gateway]))
        for short in ROUTERS:
            run_cmd(netns_argv(short, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
        for short, rules in FIREWALLS.items():
            for rule in rules:
                run_cmd(netns_argv(short, ["iptables", "-w", "5", *rule]))
        log.info("built %d namespaces and %d links", len(NAMESPACES), len(LINKS))

    def spawn(self, short: str, name: str, argv: list[str],
              log_path: Path) -> subprocess.Popen[bytes]:
        """Start a daemon in a namespace that outlives this process; record its pid."""
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                netns_argv(short, argv), stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=child_env(), start_new_session=True,
            )
        self._record("processes", {"name": name, "pid": process.pid,
                                   "namespace": ns_name(short)})
        log.info("started %s as pid %d in %s", name, process.pid, ns_name(short))
        return process

    def _start_turn(self) -> None:
        user, password = self.turn_credentials
        argv = coturn.coturn_argv(
            listen_ips=(RELAY_INSIDE_IP, RELAY_WAN_IP), relay_ip=RELAY_WAN_IP,
            port=TURN_PORT, user=user, password=password, realm="lab.test",
            relay_ports=(49160, 49399), state_dir=self.state_dir,
            # Verbose logs name each session's transport and peer, which
            # the TURN-over-TCP scenario checks.
            verbose=True,
        )
        self.turn_log.write_text("")
        process = self.spawn("relay", "coturn", argv, self.turn_log)
        if not coturn.wait_until_ready(self.turn_log, process, READY_TIMEOUT_S):
            raise RigError(f"coturn did not start; see {self.turn_log}")

    def _start_b2bua(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        ctl = self.runtime_dir / "kamailio.ctl"
        # A restart must not take the files of the stopped run as ready.
        ctl.unlink(missing_ok=True)
        for status in (self.runtime_dir / "workers").glob("*.json"):
            status.unlink()
        process = self.spawn("inside", B2BUA_PROCESS,
                             cli_argv("run", "--config", str(self.config_path)),
                             self.log_path)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RigError(f"b2bua run exited early; see {self.log_path}")
            workers = list((self.runtime_dir / "workers").glob("*.json"))
            if len(workers) == self.worker_count and ctl.exists():
                # The edge's dispatcher marks workers usable after its first probe.
                time.sleep(1.0)
                return
            time.sleep(0.2)
        raise RigError(f"b2bua run not ready in {READY_TIMEOUT_S:.0f} s; "
                       f"see {self.log_path}")

    def restart_b2bua(self) -> None:
        """Stop `b2bua run` and start it again, appending to the same log."""
        state = self.read_state()
        kept = []
        for entry in state.get("processes", []):
            if entry["name"] == B2BUA_PROCESS:
                stop_pid(int(entry["pid"]), entry.get("namespace"))
            else:
                kept.append(entry)
        state["processes"] = kept
        self._write_state(state)
        # Kamailio's children exit after their parent; the new edge needs
        # their ports.
        namespace = ns_name("inside")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        pids = self._namespace_pids(namespace)
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = self._namespace_pids(namespace)
        for pid in pids:
            log.warning("pid %d still in %s after b2bua run stopped; stopping it",
                        pid, namespace)
            stop_pid(pid, namespace)
        self._start_b2bua()

    @staticmethod
    def _namespace_pids(name: str) -> list[int]:
        return [int(pid) for pid in run_cmd(["ip", "netns", "pids", name]).split()]

    # ----- relay firewall ------------------------------------------------------

    def relay_udp_blocked(self) -> bool:
        """Return whether the relay drops UDP from the inside now."""
        done = subprocess.run(
            netns_argv("relay", ["iptables", "-w", "5", "-C", *RELAY_UDP_BLOCK]),
            capture_output=True, timeout=15, check=False)
        return done.returncode == 0

    def set_relay_udp_blocked(self, blocked: bool) -> None:
        """Drop or admit UDP from the inside to the relay, then restart the B2BUA.

        The workers choose their TURN transport by a probe at start and
        re-probe only every 60 s, so the restart applies the change at once.
        Does nothing when the relay is in that state already.
        """
        if self.relay_udp_blocked() == blocked:
            return
        action = "-A" if blocked else "-D"
        run_cmd(netns_argv("relay", ["iptables", "-w", "5", action,
                                     *RELAY_UDP_BLOCK]))
        log.info("relay %s UDP from the inside; restarting b2bua run",
                 "drops" if blocked else "admits")
        self.restart_b2bua()

    # ----- down ----------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every recorded process, then delete the rig's namespaces.

        Processes still inside a namespace (children of a killed daemon) are
        stopped by pid first. Returns the namespaces deleted.
        """
        state = self.read_state()
        for entry in reversed(state.get("processes", [])):
            stop_pid(int(entry["pid"]), entry.get("namespace"))
        deleted = []
        for name in existing_namespaces():
            try:
                pids = [int(p) for p in run_cmd(["ip", "netns", "pids", name]).split()]
            except RigError as exc:
                log.warning("cannot list processes in %s: %s", name, exc)
                pids = []
            for pid in pids:
                log.info("stopping pid %d left in %s", pid, name)
                stop_pid(pid, name)
            # Deleting a namespace destroys the veth ends inside it, and a
            # veth pair goes away with either end.
            run_cmd(["ip", "netns", "delete", name])
            deleted.append(name)
        self.state_path.unlink(missing_ok=True)
        log.info("rig down; deleted %d namespaces", len(deleted))
        return deleted


# ----- command line ------------------------------------------------------------


@click.group(help="Lab interop rig: NAT topologies in network namespaces (root).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_STATE_DIR, show_default=True,
              help="Folder for the state file, logs and results table.")
@click.option("-v", "--verbose", is_flag=True, help="Log each step.")
@click.pass_context
def main(ctx: click.Context, state_dir: Path, verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = state_dir


def _rig(ctx: click.Context) -> Rig:
    try:
        return Rig(ctx.obj)
    except RigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("up")
@click.pass_context
def up_command(ctx: click.Context) -> None:
    """Build the namespaces, then start coturn and `b2bua run`."""
    rig = _rig(ctx)
    try:
        rig.up()
    except RigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rig up; logs in {rig.state_dir}")


@main.command("down")
@click.pass_context
def down_command(ctx: click.Context) -> None:
    """Stop the rig's processes and delete its namespaces."""
    try:
        deleted = _rig(ctx).down()
    except RigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rig down; deleted {len(deleted)} namespaces")


@main.command("list")
def list_command() -> None:
    """List the scenarios."""
    from b2bua import lab_scenarios

    for name, function in lab_scenarios.SCENARIOS.items():
        summary = (function.__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name}: {summary}")


@main.command("run")
@click.argument("scenarios", nargs=-1)
@click.pass_context
def run_command(ctx: click.Context, scenarios: tuple[str, ...]) -> None:
    """Run SCENARIOS (default: all) on a rig that is up.

    Prints one result line per scenario and appends them to results.md in
    the state folder. Exit status 1 when a scenario failed.
    """
    from b2bua import lab_scenarios

    rig = _rig(ctx)
    unknown = [name for name in scenarios if name not in lab_scenarios.SCENARIOS]
    if unknown:
        raise click.BadParameter(
            f"unknown scenario {', '.join(unknown)}; known: "
            f"{', '.join(lab_scenarios.SCENARIOS)}", param_hint="SCENARIO")
    if not rig.is_up():
        raise click.ClickException("the rig is not up; run `scripts/lab up` first")
    try:
        results = lab_scenarios.run_all(rig, list(scenarios), click.echo)
    except RigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"results appended to {rig.results_path}")
    if not all(result.passed for result in results):
        ctx.exit(1)


if __name__ == "__main__":
    main(prog_name="scripts/lab")
