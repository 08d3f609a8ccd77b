"""`b2bua sdp FILE`: show what the B2BUA would send for a captured SDP.

The file contains an SDP body or a whole SIP message, pasted as operators
paste them: LF or CRLF line ends, a wrong or zero Content-Length. The
rewritten SDP goes to stdout, and notes on what changed go to stderr as
`# ...` lines. Exit status: 0 when the SDP is usable, 1 when the B2BUA would
reject it (the status and reason are printed), 2 when the file cannot be read
or is not a valid SIP message or SDP.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from b2bua.sdp import SdpError, parse_sdp
from b2bua.sdp_rewrite import (
    ANSWER,
    OFFER,
    LegContext,
    compile_rules,
    default_rules,
    encryption_answer,
)
from b2bua.sipbody import normalize_for_worker
from b2bua.sipmsg import SipParseError, parse_message

MAX_FILE_BYTES = 256 * 1024


@click.command("sdp")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--policy",
    type=click.Choice(["ice", "plain"]),
    default="ice",
    show_default=True,
    help="Rule set of the leg: ice also blocks BFCP and content video.",
)
@click.option(
    "--direction",
    type=click.Choice([OFFER, ANSWER]),
    default=OFFER,
    show_default=True,
    help="Role of the SDP in the file: an offer or an answer.",
)
def sdp_command(file: str, policy: str, direction: str) -> None:
    """Print the SDP the B2BUA would send for the SDP or SIP message in FILE."""
    data = _read(file)
    notes: list[str] = []
    try:
        if _looks_like_sdp(data):
            sdp = parse_sdp(data)
        else:
            message = parse_message(data)
            normalized = normalize_for_worker(message)
            notes += normalized.steps
            if normalized.sdp is None:
                _fail(file, "the message carries no SDP body")
            sdp = normalized.sdp
        rules = compile_rules(default_rules(policy), where=f"default {policy} rules")
        result = rules.apply(sdp, LegContext(direction=direction, initial=True))
        if direction == OFFER:
            value = encryption_answer(sdp, "optional")
            notes.append(f"answer would carry a=encryption:{value} (policy optional)")
    except SipParseError as error:
        _fail(file, f"invalid SIP message: {error}")
    except SdpError as error:
        if error.status == 400:
            _fail(file, f"invalid SDP: {error.reason}")
        click.echo(f"{file}: the B2BUA would answer {error.status}: {error.reason}",
                   err=True)
        sys.exit(1)
    for note in notes:
        click.echo(f"# {note}", err=True)
    text = result.to_text().replace("\r\n", "\n")
    click.echo(text, nl=not text.endswith("\n"))


def _read(file: str) -> bytes:
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(file, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        _fail(file, f"cannot read the file: {error.strerror}")
    if len(data) > MAX_FILE_BYTES:
        _fail(file, f"file is larger than {MAX_FILE_BYTES} bytes")
    if not data.strip():
        _fail(file, "file is empty")
    return data


def _looks_like_sdp(data: bytes) -> bool:
    return data.lstrip().startswith(b"v=")


def _fail(file: str, problem: str) -> NoReturn:
    click.echo(f"{file}: {problem}", err=True)
    sys.exit(2)
