"""coturn as the lab, the tests and the benchmark run it.

Each caller starts the process its own way (in a test namespace, as a
daemon that outlives `b2bua lab up`), so this module only builds the
command line and waits for the server to be ready.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# coturn 4.6.1 logs this once its listeners and relay ports are set up.
READY_LINE = "Relay ports initialization done"
# Relays go only to lab addresses: a relay is a way out of the namespace.
LAB_PEER_RANGE = "10.99.0.0-10.99.255.255"


def coturn_argv(*, listen_ips: Sequence[str], relay_ip: str, port: int,
                user: str, password: str, realm: str,
                relay_ports: tuple[int, int], state_dir: Path,
                verbose: bool = False) -> list[str]:
    """Return the turnserver command line for a plain-UDP/TCP lab relay.

    Long-term credentials with one user, no TLS or DTLS listeners, no CLI,
    the log on stdout. `verbose` adds a line per session with its
    transport and peer.
    """
    argv = ["turnserver", "-n"]
    for address in listen_ips:
        argv += ["--listening-ip", address]
    argv += [
        "--relay-ip", relay_ip, "--listening-port", str(port),
        "--lt-cred-mech", "--user", f"{user}:{password}", "--realm", realm,
        "--no-tls", "--no-dtls", "--no-cli",
        "--allowed-peer-ip", LAB_PEER_RANGE,
        "--min-port", str(relay_ports[0]), "--max-port", str(relay_ports[1]),
        "--log-file", "stdout", "--simple-log",
        "--userdb", str(state_dir / "turndb"),
        "--pidfile", str(state_dir / "turn.pid"),
    ]
    if verbose:
        argv.append("--verbose")
    return argv


def wait_until_ready(log_path: Path, process: subprocess.Popen[bytes],
                     timeout: float) -> bool:
    """Wait for coturn's ready line in `log_path`.

    Returns False when the process exits or `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if READY_LINE in log_path.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False
