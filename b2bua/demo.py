"""`b2bua demo`: the built-in default, run in a namespace, with a call through it.

ICE in this pjsua2 build needs a non-loopback media address, and a demo must
not send packets anywhere else. So the demo creates a network namespace
whose only links are its loopback and a veth pair into a second, idle
namespace. It runs `b2bua run` with the built-in default there (SIP on the
namespace's 127.0.0.1:5060, media on the veth address), places one ICE call
to `echo` with `b2bua dial`, prints the report, and removes everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import click

from b2bua.netns import Lab, LabError, cleanup_stale

DEMO_PREFIX = "b2bdemo"
DEMO_ADDRESS = "10.99.250.1/24"
PEER_ADDRESS = "10.99.250.2/24"
READY_TIMEOUT_S = 30.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "b2bua.cli", *args]


def _env() -> dict[str, str]:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": package_parent}


def _wait_ready(run: subprocess.Popen[bytes], runtime_dir: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    workers = os.path.join(runtime_dir, "workers")
    ctl = os.path.join(runtime_dir, "kamailio.ctl")
    while time.monotonic() < deadline:
        if run.poll() is not None:
            raise click.ClickException(
                f"b2bua run exited with status {run.returncode}; see its log above")
        if os.path.exists(ctl) and os.path.isdir(workers) and os.listdir(workers):
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise click.ClickException(f"b2bua run was not ready within {READY_TIMEOUT_S:.0f} s")


@click.command("demo")
@click.option("--target", default="echo", show_default=True,
              help="Number to call: echo or tone in the default dialplan.")
@click.option("--duration", default=3.0, show_default=True,
              help="Seconds the demo call stays up.")
@click.option("--hold", is_flag=True,
              help="Keep the B2BUA running after the call until Ctrl-C, and "
              "print how to place more calls.")
def demo_command(target: str, duration: float, hold: bool) -> None:
    """Run the built-in default in a namespace and place a call through it."""
    if os.geteuid() != 0:
        raise click.ClickException(
            "the demo creates network namespaces: run it as root (b2bua demo as root)")
    for stale in cleanup_stale(DEMO_PREFIX):
        click.echo(f"removed namespace {stale} left by an earlier demo")
    runtime_dir = "/tmp/b2bua-run"
    try:
        with Lab(DEMO_PREFIX) as lab:
            node = lab.add_namespace("b2bua")
            peer = lab.add_namespace("peer")
            lab.link(node, DEMO_ADDRESS, peer, PEER_ADDRESS)
            click.echo(f"namespace {node.name}: SIP 127.0.0.1:5060, media "
                       f"{DEMO_ADDRESS.split('/')[0]}")
            run = node.popen(_cli("run"), env=_env())
            _wait_ready(run, runtime_dir)
            dial = node.popen(
                _cli("dial", f"sip:{target}@127.0.0.1:5060", "--json",
                     "--from", "sip:demo@localhost",
                     "--duration", str(duration)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=_env(),
            )
            stdout, stderr = dial.communicate(timeout=duration + 60)
            report = _report(stdout, stderr)
            click.echo(json.dumps(report, indent=2))
            ok = bool(report.get("answered")) and report["rtp"]["rx_packets"] > 0
            click.echo(
                f"demo call to {target}: "
                + ("answered, RTP both ways" if ok else "FAILED")
            )
            if hold and ok:
                click.echo(
                    "B2BUA running; place calls with:\n"
                    f"  ip netns exec {node.name} b2bua dial "
                    "sip:tone@127.0.0.1:5060 --from sip:demo@localhost\n"
                    "Ctrl-C stops it."
                )
                try:
                    run.wait()
                except KeyboardInterrupt:
                    pass
            run.terminate()
            run.wait(20)
    except LabError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(0 if ok else 1)


def _report(stdout: str, stderr: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.strip().startswith("{"):
            return dict(json.loads(line))
    raise click.ClickException(
        f"b2bua dial printed no report: {stderr.strip()[-500:]}")
