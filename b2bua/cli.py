"""The `b2bua` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

from b2bua.answer import answer_command
from b2bua.cli_check import check_command
from b2bua.cli_classify import classify_command
from b2bua.cli_sdp import sdp_command
from b2bua.config import ConfigError, check_config_command, load_config
from b2bua.demo import demo_command
from b2bua.dial import dial_command


@click.group()
@click.version_option(package_name="b2bua")
def main() -> None:
    """Edge SIP back-to-back user agent: Kamailio edge, pjsua2 workers."""


@main.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file; without it the built-in default runs "
              "(SIP on 127.0.0.1:5060, dialplans/default.yaml).")
def run_command(config_path: str | None) -> None:
    """Start the edge and the worker pool, and restart what dies."""
    from b2bua.supervisor import SupervisorError, run

    try:
        cfg = load_config(config_path)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        sys.exit(run(cfg))
    except SupervisorError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


# Workers rewrite their status file at least every 2 s.
STALE_STATUS_S = 10.0


@main.command("status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The config `b2bua run` was started with.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_command(config_path: str | None, as_json: bool) -> None:
    """Show each worker's calls, conference ports and sockets."""
    try:
        cfg = load_config(config_path)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    folder = os.path.join(cfg.runtime_dir, "workers")
    workers = []
    names = os.listdir(folder) if os.path.isdir(folder) else []
    # Numeric order: w2 before w10.
    names.sort(key=lambda name: (len(name), name))
    now = time.time()
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as handle:
                worker = json.load(handle)
            worker["status_age_s"] = round(now - os.path.getmtime(path), 1)
        except (OSError, ValueError):
            continue
        workers.append(worker)
    for worker in workers:
        worker["running"] = _pid_alive(int(worker.get("pid", 0)))
        # A worker rewrites its file every few seconds; an old file means
        # its event loop is stuck.
        worker["responding"] = (worker["running"]
                                and worker["status_age_s"] <= STALE_STATUS_S)
    edge_pid = _read_pid(os.path.join(cfg.runtime_dir, "kamailio.pid"))
    edge = {"pid": edge_pid, "running": _pid_alive(edge_pid)}
    healthy = bool(workers) and edge["running"] and all(
        worker["responding"] for worker in workers)
    if as_json:
        click.echo(json.dumps({"edge": edge, "workers": workers,
                               "healthy": healthy}))
        sys.exit(0 if healthy else 1)
    if not workers:
        click.echo(f"no worker status in {folder}; is `b2bua run` running?")
        sys.exit(1)
    click.echo(f"edge: pid {edge_pid}, " + ("running" if edge["running"]
                                             else "NOT RUNNING"))
    for worker in workers:
        if not worker["running"]:
            click.echo(f"{worker['worker']}: not running (stale status of pid "
                       f"{worker.get('pid')})")
            continue
        state = "" if worker["responding"] else (
            f", NOT RESPONDING (status {worker['status_age_s']:.0f} s old)")
        click.echo(
            f"{worker['worker']}: pid {worker['pid']}, "
            f"{worker['bridged_calls']} bridged call(s), "
            f"{worker['pjsua_calls']} pjsua call(s), "
            f"{worker['conference_ports']} conference port(s), "
            f"{worker['open_sockets']} socket(s), "
            f"{worker['calls_handled']} handled{state}"
        )
        for call in worker.get("calls", []):
            click.echo(f"  call {call['call_id']}: {call['class']} to "
                       f"{call['target']}, {call['age_s']} s"
                       + ("" if call["answered"] else ", not answered"))
    sys.exit(0 if healthy else 1)


def _read_pid(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


main.add_command(check_config_command)
main.add_command(check_command)
main.add_command(classify_command)
main.add_command(sdp_command)
main.add_command(dial_command)
main.add_command(answer_command)
main.add_command(demo_command)


if __name__ == "__main__":
    main()
