"""The `b2bua classify` command: classify a captured SIP request."""

from __future__ import annotations

import json
from pathlib import Path

import click

from b2bua.classify import (
    Classification,
    ClassifyPolicy,
    classify,
    top_via_source,
)
from b2bua.sipmsg import SipMessage, SipParseError, parse_message

# Exit status for a file that is not a SIP request, as for a usage error.
EXIT_NOT_A_REQUEST = 2


def _load_policy(config_path: str | None) -> ClassifyPolicy:
    if config_path is None:
        return ClassifyPolicy()
    try:
        # Imported here so that the rest of the command works without it.
        from b2bua.config import ConfigError, load_config
    except ImportError as exc:
        raise click.ClickException(
            f"--config needs b2bua.config, which failed to import: {exc}"
        ) from None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return ClassifyPolicy.from_sections(config.classification, config.federation)
    except ValueError as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None


def _read_request(path: str) -> SipMessage:
    try:
        message = parse_message(Path(path).read_bytes())
    except SipParseError as exc:
        click.echo(f"{path}: not a SIP request: {exc}", err=True)
        raise SystemExit(EXIT_NOT_A_REQUEST) from None
    if not message.is_request:
        click.echo(
            f"{path}: not a SIP request: it is a response "
            f"({message.status} {message.reason})",
            err=True,
        )
        raise SystemExit(EXIT_NOT_A_REQUEST)
    return message


def _echo_text(result: Classification, source: str | None) -> None:
    click.echo(f"class: {result.call_class}")
    click.echo(f"reason: {result.reason}")
    click.echo(f"source: {source or 'unknown'}")
    decided = ", ".join(signal.name for signal in result.decided_by) or "(default)"
    click.echo(f"decided by: {decided}")
    click.echo("signals:")
    for signal in result.signals:
        click.echo(f"  {signal.describe()}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    if result.call_class == "federation":
        verdict = result.federation_verdict
        if verdict is None:
            click.echo("federation: allowed")
        else:
            click.echo(f"federation: rejected with {verdict.status}: {verdict.reason}")


@click.command("classify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Config file with the classification and federation sections "
    "(default: empty policy, so every call is federation).",
)
@click.option(
    "--source",
    help="Address the request came from (default: the top Via's received "
    "parameter, else its host).",
)
@click.option(
    "--tls-peer",
    help="Verified name or address of the TLS peer that sent the request.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def classify_command(
    file: str,
    config_path: str | None,
    source: str | None,
    tls_peer: str | None,
    as_json: bool,
) -> None:
    """Classify the SIP request in FILE as local, remote or federation.

    FILE contains one request as captured: LF or CRLF line ends and any
    Content-Length. Prints the class, the reason and every signal seen.
    Exits with status 2 when FILE is not a SIP request.
    """
    policy = _load_policy(config_path)
    message = _read_request(file)
    if source is None:
        source = top_via_source(message)
    result = classify(message, source, policy, tls_peer=tls_peer)
    if as_json:
        report = result.to_dict()
        report["source"] = source
        click.echo(json.dumps(report, indent=2))
    else:
        _echo_text(result, source)
