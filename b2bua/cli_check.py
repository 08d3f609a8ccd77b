"""The `b2bua check` command: probe the configured STUN and TURN servers.

Each server is probed over UDP, TCP and TLS, so an operator sees a blocked
port before calls fail. Exit status: 0 when every configured server responds
over at least one transport, 1 when one does not, 2 for an invalid config.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click

from b2bua import probe
from b2bua.config import ConfigError, load_config

EXIT_OK = 0
EXIT_SERVER_FAILED = 1
EXIT_BAD_CONFIG = 2


@dataclass
class ServerCheck:
    """All probes of one configured server."""

    kind: str  # "stun" or "turn"
    server: str
    configured_transport: str
    results: list[probe.ProbeResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return any(result.ok for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "server": self.server,
            "configured_transport": self.configured_transport,
            "ok": self.ok,
            "results": [result.to_dict() for result in self.results],
        }


def check_stun(server: str, timeout: float, tries: int) -> ServerCheck:
    check = ServerCheck("stun", server, "udp")
    for transport in probe.TRANSPORTS:
        target = probe.server_for_transport(server, "udp", transport)
        check.results.append(
            probe.probe_stun(target, transport, timeout=timeout, tries=tries)
        )
    return check


def check_turn(turn: Any, timeout: float, tries: int, allocate: bool) -> ServerCheck:
    check = ServerCheck("turn", turn.server, turn.transport)
    # NOTE: the config schema has no tls_verify key yet, so TLS is verified.
    tls_verify = bool(getattr(turn, "tls_verify", True))
    for transport in probe.TRANSPORTS:
        target = probe.server_for_transport(turn.server, turn.transport, transport)
        check.results.append(probe.probe_turn(
            target, transport,
            username=turn.username if allocate else "",
            password=turn.password if allocate else "",
            timeout=timeout, tries=tries, tls_verify=tls_verify,
        ))
    return check


def _echo_text(checks: list[ServerCheck]) -> None:
    if not checks:
        click.echo("no STUN or TURN servers configured (ice.stun, ice.turn)")
        return
    for check in checks:
        verdict = "ok" if check.ok else "FAILED on every transport"
        click.echo(f"{check.kind.upper()} {check.server} "
                   f"(configured {check.configured_transport}): {verdict}")
        for result in check.results:
            click.echo("  " + _result_line(result))


def _result_line(result: probe.ProbeResult) -> str:
    head = f"{result.transport:<4} {result.server:<22}"
    if not result.ok:
        return f"{head} failed  {result.error}"
    parts = [f"{head} ok      {result.rtt_ms:6.1f} ms"]
    if result.detail:
        parts.append(result.detail)
    if result.relayed_address:
        parts.append(f"relay {result.relayed_address}")
    if result.mapped_address:
        parts.append(f"mapped {result.mapped_address}")
    return ", ".join(parts)


@click.command("check")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file; without it the built-in default is used.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--timeout", type=click.FloatRange(0.1, 10.0), default=1.0,
              show_default=True, help="Seconds to wait for each try.")
@click.option("--tries", type=click.IntRange(1, 5), default=2, show_default=True,
              help="Requests per probe (UDP retransmits; TCP and TLS wait "
              "tries x timeout once).")
@click.option("--no-allocate", is_flag=True,
              help="Only check that TURN servers respond with 401; do not allocate a "
              "relay with the configured credentials.")
def check_command(config_path: str | None, as_json: bool, timeout: float,
                  tries: int, no_allocate: bool) -> None:
    """Probe each configured STUN and TURN server over UDP, TCP and TLS."""
    try:
        cfg = load_config(config_path)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_BAD_CONFIG)
    jobs = [lambda s=s: check_stun(s, timeout, tries) for s in cfg.ice.stun]
    jobs += [lambda t=t: check_turn(t, timeout, tries, not no_allocate)
             for t in cfg.ice.turn]
    # Servers run in parallel, so one blocked server costs its own timeouts
    # only once.
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(jobs)))) as pool:
        checks = list(pool.map(lambda job: job(), jobs))
    all_ok = all(check.ok for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": all_ok,
                               "servers": [check.to_dict() for check in checks]}))
    else:
        _echo_text(checks)
    sys.exit(EXIT_OK if all_ok else EXIT_SERVER_FAILED)


if __name__ == "__main__":
    check_command()
