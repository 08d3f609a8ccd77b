"""`b2bua answer`: a test UAS that answers calls with a tone, for labs and tests."""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import IO, Any

import click
import pjsua2 as pj

from b2bua import pjsip_util
from b2bua.pjsip_util import EventLoop, ToneCall

log = logging.getLogger(__name__)

ANSWER_TONE_HZ = 880
DEFAULT_EARLY_MEDIA_SECONDS = 2.0
# Time given to BYEs and their responses before the endpoint is destroyed.
DRAIN_SECONDS = 2.0


def call_record(call: ToneCall) -> dict[str, Any]:
    """Return the JSON-ready report line for one finished call."""
    return {
        "call_id": call.call_id_text,
        "status": call.status,
        "answered": call.answered,
        "rtp": {"tx_packets": call.rtp[0], "rx_packets": call.rtp[1]},
        "ice": call.ice,
        "codec": call.codec,
        "srtp": call.srtp,
        "ended_by": call.ended_by,
        "duration": round(call.duration(), 3),
        "request_uri": call.request_uri,
        "remote_sdp": call.remote_sdp,
    }


class AnswerAccount(pj.Account):
    """Account that passes every incoming INVITE to its AnswerServer."""

    def __init__(self, server: AnswerServer) -> None:
        super().__init__()
        self.server = server

    def onIncomingCall(self, prm: Any) -> None:
        self.server.incoming(self, prm)


class AnswerServer:
    """State of one `b2bua answer` run: options, live calls and counters."""

    def __init__(
        self,
        loop: EventLoop,
        status: int,
        ring: float,
        early_media: bool,
        hangup_after: float | None,
        max_calls: int | None,
        report: IO[str] | None,
    ) -> None:
        self.loop = loop
        self.status = status
        self.ring = ring
        self.early_media = early_media
        self.hangup_after = hangup_after
        self.max_calls = max_calls
        self.report = report
        self.calls: dict[int, ToneCall] = {}
        self.finished = 0

    def incoming(self, account: AnswerAccount, prm: Any) -> None:
        call = ToneCall(account, self.loop, ANSWER_TONE_HZ, prm.callId, self.ended)
        self.calls[id(call)] = call
        call.remote_sdp = pjsip_util.sdp_of_message(prm.rdata.wholeMsg)
        start_line = prm.rdata.wholeMsg.split("\r\n", 1)[0].split(" ")
        call.request_uri = start_line[1] if len(start_line) == 3 else None
        call.call_id_text = call.getInfo().callIdString
        log.info("%s: incoming from %s", call.call_id_text, prm.rdata.srcAddress)
        if self.early_media:
            self._answer(call, 183)
        elif self.ring > 0:
            self._answer(call, 180)
        if self.ring > 0:
            self.loop.call_later(self.ring, lambda: self._final(call))
        else:
            self._final(call)

    def _answer(self, call: ToneCall, code: int) -> None:
        if call.ended:
            return
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        try:
            call.answer(prm)
        except pj.Error as exc:
            log.warning("%s: answer %d failed: %s", call.call_id_text, code, exc.info())

    def _final(self, call: ToneCall) -> None:
        if call.ended:
            return
        if self.status >= 300:
            # A final error response ends the call; record it as ours.
            call.hangup_requested = True
            call.status = self.status
        self._answer(call, self.status)
        if self.status < 300 and self.hangup_after is not None:
            self.loop.call_later(self.hangup_after, call.hangup_local)

    def ended(self, call: ToneCall) -> None:
        self.finished += 1
        record = call_record(call)
        if self.report is not None:
            self.report.write(json.dumps(record) + "\n")
            self.report.flush()
        # Drop the Python reference only after pjsua has let go of the call.
        self.loop.call_later(DRAIN_SECONDS / 4, lambda: self.calls.pop(id(call), None))
        if self.max_calls is not None and self.finished >= self.max_calls:
            log.info("answered %d calls, stopping", self.finished)
            self.loop.call_later(DRAIN_SECONDS / 4, self.loop.stop)

    def hangup_all(self) -> None:
        for call in list(self.calls.values()):
            call.hangup_local()


def _check_status(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if not (200 <= value <= 299 or 400 <= value <= 699):
        raise click.BadParameter(
            f"{value} is not a final status this UAS can send; use 200-299 or 400-699"
        )
    return value


@click.command("answer")
@click.option(
    "--bind", default="127.0.0.1", show_default=True, help="Address for SIP and media."
)
@click.option(
    "--port",
    default=5090,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="SIP port (UDP and TCP).",
)
@click.option(
    "--status",
    default=200,
    show_default=True,
    type=int,
    callback=_check_status,
    help="Final response to every INVITE.",
)
@click.option(
    "--ring",
    type=click.FloatRange(0, 3600),
    default=None,
    help="Seconds to send 180 (or 183 with --early-media) before the final response.",
)
@click.option(
    "--early-media",
    is_flag=True,
    help="Send 183 with SDP and play the tone before the final "
    f"response (for --ring seconds, default {DEFAULT_EARLY_MEDIA_SECONDS}).",
)
@click.option(
    "--ice/--no-ice",
    default=None,
    help="Include ICE candidates in SDP answers (default: on, but off when "
    "--bind is a loopback address).",
)
@click.option(
    "--srtp",
    type=click.Choice(sorted(pjsip_util.SRTP_MODES)),
    default="off",
    show_default=True,
    help="SRTP use on media.",
)
@click.option(
    "--hangup-after",
    type=click.FloatRange(0, 86400),
    default=None,
    help="Seconds after answering to send BYE (default: wait for the caller).",
)
@click.option(
    "--calls",
    "max_calls",
    type=click.IntRange(1),
    default=None,
    help="Exit after this many calls have ended.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append one JSON line per finished call here.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(1),
    default=None,
    help="Exit after this many seconds even if calls remain.",
)
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logs.")
def answer_command(
    bind: str,
    port: int,
    status: int,
    ring: float | None,
    early_media: bool,
    ice: bool | None,
    srtp: str,
    hangup_after: float | None,
    max_calls: int | None,
    report_path: str | None,
    max_seconds: float | None,
    verbose: int,
) -> None:
    """Answer incoming calls with a tone (a test UAS; sends no echo).

    Prints one "listening" line on stdout once SIP is ready. Runs until
    --calls calls have ended, --max-seconds pass, or SIGTERM/SIGINT.
    """
    pjsip_util.configure_cli_logging(verbose)
    if ice is None:
        ice = not pjsip_util.is_loopback(bind)
    elif ice and pjsip_util.is_loopback(bind):
        raise click.UsageError(pjsip_util.ICE_LOOPBACK_ERROR)
    if ring is None:
        ring = DEFAULT_EARLY_MEDIA_SECONDS if early_media else 0.0
    if report_path is None:
        sys.exit(
            _serve(
                bind,
                port,
                status,
                ring,
                early_media,
                ice,
                srtp,
                hangup_after,
                max_calls,
                None,
                max_seconds,
            )
        )
    try:
        report = open(report_path, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        click.echo(f"answer: cannot open report file {report_path}: {exc}", err=True)
        sys.exit(1)
    with report:
        code = _serve(
            bind,
            port,
            status,
            ring,
            early_media,
            ice,
            srtp,
            hangup_after,
            max_calls,
            report,
            max_seconds,
        )
    sys.exit(code)


def _serve(
    bind: str,
    port: int,
    status: int,
    ring: float,
    early_media: bool,
    ice: bool,
    srtp: str,
    hangup_after: float | None,
    max_calls: int | None,
    report: IO[str] | None,
    max_seconds: float | None,
) -> int:
    ep = pjsip_util.create_endpoint()
    loop = EventLoop(ep)
    server = AnswerServer(
        loop, status, ring, early_media, hangup_after, max_calls, report
    )
    holders: list[Any] = []
    previous = {
        sig: signal.signal(sig, lambda *_: loop.stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        pjsip_util.create_transport(ep, "udp", bind, port)
        pjsip_util.create_transport(ep, "tcp", bind, port)
        account = AnswerAccount(server)
        # No transportId: the account answers on whichever transport the
        # INVITE came in on.
        cfg = pjsip_util.account_config(
            f"sip:answer@{bind}:{port}", bind=bind, ice=ice, srtp=srtp
        )
        account.create(cfg)
        holders.append(account)
        click.echo(f"answer: listening on sip:answer@{bind}:{port} (udp, tcp)")
        sys.stdout.flush()
        loop.run(max_seconds)
        server.hangup_all()
        loop.run_until(
            lambda: not any(not c.ended for c in server.calls.values()), DRAIN_SECONDS
        )
        return 0
    except pj.Error as exc:
        click.echo(f"answer: pjsip failed: {exc.info()}", err=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.calls.clear()
        shutdown_holders: list[Any] = [loop, holders, server.__dict__]
        pjsip_util.shutdown(ep, shutdown_holders)


if __name__ == "__main__":
    answer_command()
