"""`b2bua dial URI`: place one call as a real SIP UA and report what happened."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import click
import pjsua2 as pj

from b2bua import pjsip_util
from b2bua.pjsip_util import EventLoop, ToneCall
from b2bua.sipmsg import SipParseError, parse_sip_uri

log = logging.getLogger(__name__)

DIAL_TONE_HZ = 440
# Time given to the BYE or CANCEL transaction before the endpoint is destroyed.
DRAIN_SECONDS = 3.0
EXIT_OK = 0
EXIT_CALL_FAILED = 1

HOST_PORT_RE = re.compile(
    r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$"
)
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!%*_+`'~.\-]+$")


@dataclass
class DialOptions:
    """Validated `b2bua dial` options."""

    uri: str
    ice: bool = True
    stun: str | None = None
    turn: str | None = None
    turn_user: str = ""
    turn_password: str = ""
    turn_transport: str = "udp"
    relay_only: bool = False
    transport: str = "udp"
    duration: float = 3.0
    bind: str | None = None
    from_uri: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    srtp: str = "off"
    timeout: float = 30.0
    hangup: str = "local"


def parse_host_port(value: str, option: str) -> str:
    """Check a HOST:PORT option value and return it unchanged."""
    match = HOST_PORT_RE.match(value)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise click.BadParameter(
            f"invalid address {value!r}: expected HOST:PORT", param_hint=option
        )
    return value


def parse_header(value: str) -> tuple[str, str]:
    """Split a 'Name: value' option into (name, value)."""
    name, sep, body = value.partition(":")
    name = name.strip()
    if not sep or not HEADER_NAME_RE.match(name) or "\r" in body or "\n" in body:
        raise click.BadParameter(
            f"invalid header {value!r}: expected 'Name: value' on one line",
            param_hint="--header",
        )
    return name, body.strip()


def target_uri(uri: str, transport: str) -> str:
    """Return the request URI, with ;transport=tcp added when dialing over TCP.

    pjsip picks the transport from the URI, so without the parameter a TCP
    dial would go out over UDP.
    """
    parsed = parse_sip_uri(uri)
    if transport == "tcp" and "transport" not in parsed.params:
        return uri + ";transport=tcp"
    return uri


def exit_code(report: dict[str, Any], hangup: str) -> int:
    """Return 0 only for an answered call with RTP both ways (and the BYE awaited)."""
    if not report["answered"]:
        return EXIT_CALL_FAILED
    rtp = report["rtp"]
    if rtp["tx_packets"] <= 0 or rtp["rx_packets"] <= 0:
        return EXIT_CALL_FAILED
    if hangup == "remote" and report["ended_by"] != "remote":
        return EXIT_CALL_FAILED
    return EXIT_OK


def format_text(report: dict[str, Any]) -> str:
    """Render the report as a few human-readable lines."""
    lines = [
        f"status: {report['status']} {report['reason']}".rstrip(),
        f"answered: {'yes' if report['answered'] else 'no'}",
    ]
    if report["setup_ms"] is not None:
        lines.append(f"setup: {report['setup_ms']} ms")
    if report["codec"]:
        lines.append(f"codec: {report['codec']}")
    lines.append(f"srtp: {report['srtp'] or 'off'}")
    rtp = report["rtp"]
    lines.append(f"rtp: tx {rtp['tx_packets']} rx {rtp['rx_packets']} packets")
    ice = report["ice"]
    if ice:
        lines.append(
            f"ice: {ice['state']}, {ice['local_type']} -> {ice['remote_type']} "
            f"over {ice['transport']}"
        )
    else:
        lines.append("ice: none")
    if report["ended_by"]:
        lines.append(f"ended by: {report['ended_by']}")
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    return "\n".join(lines)


def empty_report() -> dict[str, Any]:
    """Return the report of a call that never got anywhere."""
    return {
        "status": 0,
        "reason": "",
        "answered": False,
        "setup_ms": None,
        "ice": None,
        "codec": None,
        "rtp": {"tx_packets": 0, "rx_packets": 0},
        "ended_by": None,
        "duration": 0.0,
        "call_id": None,
        "remote_sdp": None,
        "srtp": None,
        "b2bua_class": None,
    }


def call_report(call: ToneCall) -> dict[str, Any]:
    """Return the report of a finished call."""
    report = empty_report()
    setup_ms = None
    if call.answered_at is not None:
        setup_ms = round((call.answered_at - call.started) * 1000)
    ice = None
    if call.ice is not None:
        ice = dict(call.ice)
    report.update(
        status=call.status,
        reason=call.reason,
        answered=call.answered,
        setup_ms=setup_ms,
        ice=ice,
        codec=call.codec,
        rtp={"tx_packets": call.rtp[0], "rx_packets": call.rtp[1]},
        ended_by=call.ended_by,
        duration=round(call.duration(), 3),
        call_id=call.call_id_text or None,
        remote_sdp=call.remote_sdp,
        srtp=call.srtp,
        b2bua_class=call.b2bua_class,
    )
    if not call.answered and call.received_status == 0:
        # pjsip ends an INVITE that got no response at all with a locally made
        # status (487 after our CANCEL). SIP reports a timeout as 408.
        report.update(status=408, reason="Request Timeout (no response received)")
    return report


def place_call(opts: DialOptions,
               emit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Place one call, play a tone, hang up and return the report dict.

    `emit` receives the report before pjsip shuts down, so that a crash in
    pjsip's teardown cannot lose it. Raises pj.Error when pjsip rejects the
    setup (bad transport, bad URI).
    """
    stun = [opts.stun] if opts.stun else []
    ep = pjsip_util.create_endpoint(stun_servers=stun)
    loop = EventLoop(ep)
    holders: dict[str, Any] = {}
    account = call = None
    previous = {
        sig: signal.signal(sig, lambda *_: loop.stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        transport_id = pjsip_util.create_transport(ep, opts.transport, opts.bind)
        host = opts.bind or ep.transportGetInfo(transport_id).localName
        from_uri = opts.from_uri or f"sip:dial@{host}"
        cfg = pjsip_util.account_config(
            from_uri,
            transport_id=transport_id,
            bind=opts.bind,
            ice=opts.ice,
            stun=bool(opts.stun),
            turn_server=opts.turn,
            turn_user=opts.turn_user,
            turn_password=opts.turn_password,
            turn_transport=opts.turn_transport,
            relay_only=opts.relay_only,
            srtp=opts.srtp,
        )
        account = pj.Account()
        account.create(cfg)
        holders["account"] = account
        call = ToneCall(account, loop, DIAL_TONE_HZ)
        call.hold_before_bye = opts.turn is not None and (
            pjsip_util.needs_hold_before_bye(opts.turn_transport)
        )
        holders["call"] = call
        report = _run_call(opts, loop, call)
        if emit is not None:
            # pjsip's teardown can still abort the process (see ToneCall).
            emit(report)
        return report
    except pj.Error as exc:
        # Turned into a report here, because a live exception keeps the call
        # object alive past libDestroy through its traceback.
        report = empty_report()
        report["error"] = f"pjsip failed: {exc.info()}"
        return report
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Every reference to the call and account must be gone before
        # libDestroy, or the process aborts.
        account = call = None
        pjsip_util.shutdown(ep, [loop, holders])


def _run_call(opts: DialOptions, loop: EventLoop, call: ToneCall) -> dict[str, Any]:
    prm = pj.CallOpParam(True)
    for name, value in opts.headers:
        header = pj.SipHeader()
        header.hName = name
        header.hValue = value
        prm.txOption.headers.append(header)
    uri = target_uri(opts.uri, opts.transport)
    call.started = time.monotonic()
    call.makeCall(uri, prm)
    log.info("calling %s", uri)
    error = _wait_for_end(opts, loop, call)
    if loop.stopped:
        error = "interrupted by a signal"
        # Run the loop again so the BYE or CANCEL below goes out.
        loop.resume()
    if not call.ended:
        call.hangup_local()
        loop.run_until(lambda: call.ended, DRAIN_SECONDS)
    # Let the last BYE/CANCEL response arrive before the endpoint goes away.
    loop.run(0.2)
    report = call_report(call)
    if error is not None:
        report["error"] = error
    elif not call.answered:
        report["error"] = f"call failed: {call.status} {call.reason}".strip()
    return report


def _wait_for_end(opts: DialOptions, loop: EventLoop, call: ToneCall) -> str | None:
    """Run the call to its end by the --hangup rule; return an error or None."""
    if not loop.run_until(lambda: call.answered or call.ended, opts.timeout):
        return f"no answer within {opts.timeout:g} s"
    if not call.answered:
        return None
    if opts.hangup == "local":
        loop.run_until(lambda: call.ended, opts.duration)
        return None
    wait = opts.duration + opts.timeout
    if not loop.run_until(lambda: call.ended, wait):
        return f"far end did not hang up within {wait:g} s"
    return None


@click.command("dial")
@click.argument("uri")
@click.option(
    "--ice/--no-ice", default=True, show_default=True, help="Offer ICE candidates."
)
@click.option(
    "--stun",
    metavar="HOST:PORT",
    default=None,
    help="STUN server for server-reflexive candidates.",
)
@click.option(
    "--turn",
    metavar="HOST:PORT",
    default=None,
    help="TURN server for relay candidates.",
)
@click.option("--turn-user", default="", help="TURN long-term credential user.")
@click.option("--turn-password", default="", help="TURN long-term credential password.")
@click.option(
    "--turn-transport",
    type=click.Choice(["udp", "tcp"]),
    default="udp",
    show_default=True,
    help="Transport to the TURN server.",
)
@click.option(
    "--relay-only",
    is_flag=True,
    help="Offer only TURN relay candidates (needs --turn).",
)
@click.option(
    "--transport",
    type=click.Choice(["udp", "tcp"]),
    default="udp",
    show_default=True,
    help="SIP transport.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0, 3600),
    default=3.0,
    show_default=True,
    help="Seconds to keep the call up after answer.",
)
@click.option(
    "--bind",
    default=None,
    help="Local address for SIP and media (default: all addresses).",
)
@click.option(
    "--from",
    "from_uri",
    default=None,
    metavar="URI",
    help="From URI (default: sip:dial@<local address>).",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Extra header on the INVITE; repeatable.",
)
@click.option(
    "--srtp",
    type=click.Choice(["off", "optional", "required"]),
    default="off",
    show_default=True,
    help="SRTP use on media.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@click.option(
    "--hangup",
    type=click.Choice(["local", "remote"]),
    default="local",
    show_default=True,
    help="Who ends the call: local sends BYE after --duration; remote "
    "waits up to --duration plus --timeout seconds for the far end's BYE.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logs.")
def dial_command(
    uri: str,
    ice: bool,
    stun: str | None,
    turn: str | None,
    turn_user: str,
    turn_password: str,
    turn_transport: str,
    relay_only: bool,
    transport: str,
    duration: float,
    bind: str | None,
    from_uri: str | None,
    headers: tuple[str, ...],
    srtp: str,
    timeout: float,
    hangup: str,
    as_json: bool,
    verbose: int,
) -> None:
    """Call URI, play a tone, hang up and print a report.

    Exit status: 0 when the call was answered and RTP flowed both ways, 1 when
    the call failed, 2 for invalid options.
    """
    pjsip_util.configure_cli_logging(verbose)
    try:
        parse_sip_uri(uri)
        if from_uri is not None:
            parse_sip_uri(from_uri)
    except SipParseError as exc:
        raise click.BadParameter(str(exc)) from exc
    if stun is not None:
        parse_host_port(stun, "--stun")
    if turn is not None:
        parse_host_port(turn, "--turn")
    if relay_only and turn is None:
        raise click.UsageError("--relay-only needs --turn")
    if relay_only and not ice:
        raise click.UsageError("--relay-only needs ICE; drop --no-ice")
    if ice and pjsip_util.is_loopback(bind):
        raise click.UsageError(pjsip_util.ICE_LOOPBACK_ERROR)
    if turn is not None and not ice:
        raise click.UsageError("--turn needs ICE; drop --no-ice")
    opts = DialOptions(
        uri=uri,
        ice=ice,
        stun=stun,
        turn=turn,
        turn_user=turn_user,
        turn_password=turn_password,
        turn_transport=turn_transport,
        relay_only=relay_only,
        transport=transport,
        duration=duration,
        bind=bind,
        from_uri=from_uri,
        headers=[parse_header(h) for h in headers],
        srtp=srtp,
        timeout=timeout,
        hangup=hangup,
    )
    emitted: list[dict[str, Any]] = []

    def emit(report: dict[str, Any]) -> None:
        code = exit_code(report, hangup)
        click.echo(json.dumps(report) if as_json else format_text(report))
        sys.stdout.flush()
        emitted.append({"code": code})

    try:
        report = place_call(opts, emit)
    except pj.Error as exc:
        report = empty_report()
        report["error"] = f"pjsip failed: {exc.info()}"
    except Exception as exc:
        log.debug("dial failed", exc_info=True)
        report = empty_report()
        report["error"] = f"dial failed: {exc}"
    code = exit_code(report, hangup)
    if not emitted:
        click.echo(json.dumps(report) if as_json else format_text(report))
    sys.exit(code)


if __name__ == "__main__":
    dial_command()
