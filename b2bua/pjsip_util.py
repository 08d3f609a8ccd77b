"""pjsua2 helpers shared by the workers and the dial/answer test tools.

The threading model that works with pjsua2-python 2.15.1: the endpoint runs
with ``uaConfig.threadCnt = 0`` and one Python thread polls
``libHandleEvents``, so every pjsua2 callback arrives on that thread.
:class:`EventLoop` is that poller; other threads hand work to it with
:meth:`EventLoop.call_soon`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import heapq
import ipaddress
import itertools
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pjsua2 as pj

log = logging.getLogger(__name__)
pjsip_log = logging.getLogger("b2bua.pjsip")

# G.711 runs at 8 kHz. A conference bridge at 8 kHz needs no resampling, which
# cuts the media CPU per call to about a third of the 16 kHz default.
CLOCK_RATE = 8000
# G.711 first: every SBC and trunk speaks it, and it needs no transcoding.
PREFERRED_CODECS = ("PCMU/8000", "PCMA/8000")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr, flushing C stdio on both sides."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _set_early_log_level(level: int) -> None:
    """Set pjlib's log level before libCreate, which logs at level 5 by default.

    pjsua2 has no API for this, so it calls pj_log_set_level in the extension
    module, which exports the pjlib symbols in pjsua2-python 2.15.1.
    """
    try:
        lib = ctypes.CDLL(pj._pjsua2.__file__)
        lib.pj_log_set_level(ctypes.c_int(level))
    except (OSError, AttributeError) as exc:
        log.debug("cannot set pjlib's early log level: %s", exc)


def pjsip_log_level(python_level: int) -> int:
    """Map a Python logging level to the pjsip log level (0 none .. 6 trace).

    pjsip's level 4 and above carries every SIP message, so it is only used
    when DEBUG is enabled.
    """
    if python_level <= logging.DEBUG:
        return 5
    if python_level <= logging.INFO:
        return 3
    if python_level <= logging.WARNING:
        return 2
    if python_level <= logging.ERROR:
        return 1
    return 0


def python_log_level(pjsip_level: int) -> int:
    """Map a pjsip log level to the Python logging level its lines are logged at."""
    if pjsip_level <= 1:
        return logging.ERROR
    if pjsip_level == 2:
        return logging.WARNING
    return logging.DEBUG


class _LogWriter(pj.LogWriter):
    """Forward pjsip log lines to the ``b2bua.pjsip`` logger."""

    def write(self, entry: Any) -> None:
        pjsip_log.log(python_log_level(entry.level), "%s", entry.msg.rstrip())


_log_writer: _LogWriter | None = None


def create_endpoint(
    log_level: int | None = None,
    stun_servers: list[str] | None = None,
    max_calls: int = 4,
) -> Any:
    """Create, initialise and start a pjsua2 Endpoint with a null audio device.

    The calling thread becomes the pjsip thread: it must be the one that runs
    the :class:`EventLoop`. log_level is a Python logging level and defaults to
    the effective level of the ``b2bua.pjsip`` logger. Returns the Endpoint.
    """
    global _log_writer
    if log_level is None:
        log_level = pjsip_log.getEffectiveLevel()
    level = pjsip_log_level(log_level)
    _set_early_log_level(level)
    ep = pj.Endpoint()
    # pjlib prints its start-up lines to stdout before libInit applies the log
    # config, and stdout carries dial's JSON, so any that remain go to stderr.
    with _stdout_to_stderr():
        ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = False
    # NOTE: pjsua2-python 2.15.1 clamps maxCalls to its compiled limit of 4.
    cfg.uaConfig.maxCalls = max_calls
    for server in stun_servers or []:
        cfg.uaConfig.stunServer.append(server)
    cfg.medConfig.clockRate = CLOCK_RATE
    cfg.medConfig.sndClockRate = CLOCK_RATE
    cfg.medConfig.channelCount = 1
    _log_writer = _LogWriter()
    cfg.logConfig.writer = _log_writer
    cfg.logConfig.level = level
    cfg.logConfig.consoleLevel = level
    cfg.logConfig.msgLogging = 1 if level >= 4 else 0
    # Keep pjsip's own console output off stdout (dial --json prints there).
    cfg.logConfig.decor = 0
    with _stdout_to_stderr():
        ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    for priority, codec in enumerate(reversed(PREFERRED_CODECS), start=250):
        ep.codecSetPriority(codec, priority)
    ep.libStart()
    log.debug("pjsua2 endpoint started, pjsip log level %d", level)
    return ep


class EventLoop:
    """Poll pjsip's events on one thread and run queued work on that thread.

    Construct and run it on the thread that created the endpoint. Work given
    with :meth:`call_soon` or :meth:`call_later` runs between polls, so it may
    call pjsua2 freely.
    """

    def __init__(self, ep: Any, poll_ms: int = 10) -> None:
        self.ep = ep
        self.poll_ms = poll_ms
        self._ready: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Queue fn to run on the loop thread; safe to call from any thread."""
        self._ready.put(fn)

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        """Run fn on the loop thread after delay seconds (loop thread only)."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def stop(self) -> None:
        """Make :meth:`run` return after the current poll; safe from any thread."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called since the last :meth:`resume`."""
        return self._stop.is_set()

    def resume(self) -> None:
        """Clear a :meth:`stop` request so the loop can run again (to clean up)."""
        self._stop.clear()

    def run_once(self) -> None:
        """Poll pjsip once, then run due timers and queued work."""
        self.ep.libHandleEvents(self.poll_ms)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            self._run(fn)
        while True:
            try:
                fn = self._ready.get_nowait()
            except queue.Empty:
                break
            self._run(fn)

    def clear(self) -> None:
        """Drop all pending work, so no closure keeps a pjsua2 object alive."""
        self._timers.clear()
        while True:
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("callback %r failed", fn)

    def run(self, timeout: float | None = None) -> None:
        """Run until :meth:`stop` is called or timeout seconds have passed."""
        self.run_until(lambda: False, timeout)

    def run_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Run until done() is true; return False on timeout or stop()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if self._stop.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.run_once()
        return True


def shutdown(ep: Any, holders: list[Any] | None = None) -> None:
    """Destroy the endpoint after dropping every pjsua2 object we hold.

    pjsua2-python aborts the process in libDestroy when Python objects that
    wrap pjsua calls, accounts or media ports are still alive, so the caller
    passes the containers (lists, dicts, objects with ``__dict__``) that hold
    them and this clears those first.
    """
    global _log_writer
    for holder in holders or []:
        if isinstance(holder, EventLoop):
            holder.clear()
            continue
        if isinstance(holder, (list, dict, set)):
            holder.clear()
        elif hasattr(holder, "__dict__"):
            holder.__dict__.clear()
    gc.collect()
    try:
        ep.libDestroy()
    except pj.Error as exc:
        log.warning("libDestroy failed: %s", exc.info())
    _log_writer = None


# --- ICE pair and RTP counters ------------------------------------------------

# pjsua's call dump shows ICE like this (pjsip 2.15.1):
#   ICE role: Controlling, state: Negotiation Success, comp_cnt: 2
#      [0]: L:10.99.7.2:4017 (h) --> R:10.99.7.1:4013 (h)
# where [0] is the RTP component and the letter is the candidate type.
_ICE_LINE_RE = re.compile(
    r"ICE role:\s*(?P<role>\w+),\s*state:\s*(?P<state>[^,\n]+?)\s*(?:,|$)", re.MULTILINE
)
_PAIR_RE = re.compile(
    r"^\s*\[0\]:\s*L:(?P<local>\S+)\s*\((?P<local_type>\w+)\)\s*"
    r"-->\s*R:(?P<remote>\S+)\s*\((?P<remote_type>\w+)\)",
    re.MULTILINE,
)
_CANDIDATE_TYPES = {
    "h": "host",
    "host": "host",
    "s": "srflx",
    "srflx": "srflx",
    "p": "prflx",
    "prflx": "prflx",
    "r": "relay",
    "relay": "relay",
    "relayed": "relay",
}
_ICE_STATES = {
    "negotiation success": "completed",
    "negotiation failed": "failed",
    "negotiation in progress": "checking",
    "candidate gathering": "gathering",
    "candidate gathering complete": "gathered",
}


def parse_ice_dump(text: str) -> dict[str, Any] | None:
    """Parse the ICE state and RTP pair of the first media in Call.dump() text.

    Returns a dict with state (completed, failed, checking, gathering or
    pjsua's own words in lower case), role, local_type, remote_type,
    local_address, remote_address and transport, or None when the text
    shows no ICE session. The pair fields are None before a pair is valid.
    """
    ice_match = _ICE_LINE_RE.search(text)
    if ice_match is None:
        return None
    raw_state = ice_match["state"].strip().lower()
    pair: dict[str, Any] = {
        "state": _ICE_STATES.get(raw_state, raw_state),
        "role": ice_match["role"].lower(),
        "local_type": None,
        "remote_type": None,
        "local_address": None,
        "remote_address": None,
        # NOTE: pjnath 2.15.1 has no ICE-TCP, so every pair it selects is UDP.
        "transport": "udp",
    }
    pair_match = _PAIR_RE.search(text, ice_match.end())
    if pair_match is not None:
        pair.update(
            local_type=_CANDIDATE_TYPES.get(
                pair_match["local_type"], pair_match["local_type"]
            ),
            remote_type=_CANDIDATE_TYPES.get(
                pair_match["remote_type"], pair_match["remote_type"]
            ),
            local_address=pair_match["local"],
            remote_address=pair_match["remote"],
        )
    return pair


_SRTP_RE = re.compile(
    r"SRTP status:\s*(?P<status>Active|Not active)"
    r"\s*Crypto-suite:\s*(?P<suite>\S*)"
)


def parse_srtp_dump(text: str) -> str | None:
    """Return the active SRTP crypto suite of the first media, or None.

    None means plain RTP (or a dump without media).
    """
    match = _SRTP_RE.search(text)
    if match is None or match["status"] != "Active":
        return None
    return match["suite"] or "unknown"


def selected_ice_pair(call: Any) -> dict[str, Any] | None:
    """Return the selected ICE pair of the call's first audio media, or None.

    pjsua2 exposes no ICE fields in CallInfo, so the pair comes from the
    Call.dump() text; the addresses in use come from getMedTransportInfo.
    """
    try:
        text = call.dump(True, "")
    except pj.Error as exc:
        log.debug("call dump failed: %s", exc.info())
        return None
    pair = parse_ice_dump(text)
    if pair is None:
        return None
    media_index = _audio_index(call)
    if media_index is not None:
        try:
            info = call.getMedTransportInfo(media_index)
        except pj.Error:
            info = None
        if info is not None and info.localRtpName:
            pair["rtp_local"] = info.localRtpName
            pair["rtp_source"] = info.srcRtpName
    return pair


def _audio_index(call: Any) -> int | None:
    try:
        info = call.getInfo()
    except pj.Error:
        return None
    for media in info.media:
        if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status in (
            pj.PJSUA_CALL_MEDIA_ACTIVE,
            pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
            pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
        ):
            return int(media.index)
    return None


def rtp_counts(call: Any) -> tuple[int, int] | None:
    """Return (tx_packets, rx_packets) of the call's audio stream, or None.

    None means there is no active audio stream (not answered, or torn down).
    """
    media_index = _audio_index(call)
    if media_index is None:
        return None
    try:
        stat = call.getStreamStat(media_index)
    except pj.Error:
        return None
    return int(stat.rtcp.txStat.pkt), int(stat.rtcp.rxStat.pkt)


def audio_codec(call: Any) -> str | None:
    """Return the audio codec as ``name/clock_rate`` (e.g. ``PCMU/8000``)."""
    media_index = _audio_index(call)
    if media_index is None:
        return None
    try:
        info = call.getStreamInfo(media_index)
    except pj.Error:
        return None
    return f"{info.codecName}/{info.codecClockRate}"


def audio_media(call: Any) -> Any | None:
    """Return the call's active AudioMedia for conference connections, or None."""
    media_index = _audio_index(call)
    if media_index is None:
        return None
    try:
        return call.getAudioMedia(media_index)
    except pj.Error:
        return None


def make_tone(frequency: int) -> Any:
    """Create a ToneGenerator that plays one continuous sine tone in a loop."""
    tone = pj.ToneGenerator()
    tone.createToneGenerator(CLOCK_RATE, 1)
    desc = pj.ToneDesc()
    desc.freq1 = frequency
    desc.freq2 = 0
    desc.on_msec = 1000
    desc.off_msec = 0
    tones = pj.ToneDescVector()
    tones.append(desc)
    tone.play(tones, True)
    return tone


# --- Hold before BYE on TURN over TCP --------------------------------------------

# Seconds to wait for the answer to the inactive re-INVITE before the BYE.
HOLD_WAIT_S = 1.0
# Seconds between that answer and the BYE, for media already in flight.
HOLD_DRAIN_S = 0.5


def needs_hold_before_bye(turn_transport: str | None) -> bool:
    """Return True when media over this TURN transport must be held before BYE.

    pjnath 2.15.1 can dereference a freed TURN session when the answer to
    its deallocation and the peer's media arrive in one TCP read. TLS uses
    the same stream framing, so it is treated the same way (not soak-tested).
    """
    return turn_transport in ("tcp", "tls")


def send_inactive_reinvite(call: Any) -> bool:
    """Send a re-INVITE that sets every media stream inactive.

    Once the peer accepts it, the peer stops sending RTP and RTCP, so nothing
    but our own TURN traffic arrives on the allocation when the BYE tears it
    down. Returns False when pjsua cannot send it (for example while another
    INVITE transaction is pending).
    """
    prm = pj.CallOpParam(True)
    prm.opt.flag |= pj.PJSUA_CALL_SET_MEDIA_DIR
    directions = pj.IntVector()
    directions.append(pj.PJMEDIA_DIR_NONE)
    prm.opt.mediaDir = directions
    try:
        call.reinvite(prm)
    except pj.Error as exc:
        log.debug("inactive re-INVITE not sent: %s", exc.info())
        return False
    return True


def is_reinvite_answer(event: Any) -> bool:
    """Return True when a pjsua2 transaction event is a final answer to our INVITE.

    Used after an inactive re-INVITE, when the initial INVITE's client
    transaction is long gone, so any final answer belongs to the re-INVITE.
    """
    if event.type != pj.PJSIP_EVENT_TSX_STATE:
        return False
    tsx_state = event.body.tsxState
    if tsx_state.type != pj.PJSIP_EVENT_RX_MSG:
        return False
    tsx = tsx_state.tsx
    return bool(
        tsx.role == pj.PJSIP_ROLE_UAC
        and tsx.method == "INVITE"
        and tsx.statusCode >= 200
    )


# --- A call that plays a tone and records what happened ------------------------

SAMPLE_INTERVAL = 0.2


def header_of_message(whole_msg: str, name: str) -> str | None:
    """Return the first value of header `name` in a raw SIP message, or None."""
    head = whole_msg.split("\r\n\r\n", 1)[0]
    wanted = name.lower()
    for line in head.split("\r\n")[1:]:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == wanted:
            return value.strip()
    return None


def sdp_of_message(whole_msg: str) -> str | None:
    """Return the SDP body of a SIP message, or None when it carries none."""
    from b2bua.sipmsg import SipParseError, parse_message

    try:
        msg = parse_message(whole_msg.encode("utf-8", "surrogateescape"))
    except SipParseError:
        return None
    if msg.content_type() != "application/sdp" or not msg.body:
        return None
    return msg.body.decode("utf-8", "replace")


class ToneCall(pj.Call):
    """A pjsua2 call that plays a tone into the call and records its outcome.

    All methods run on the event-loop thread. While the call has media, the
    RTP counters, the codec and the ICE pair are sampled every
    SAMPLE_INTERVAL seconds, because the stream and its statistics are gone
    by the time the DISCONNECTED callback runs.
    """

    def __init__(
        self,
        account: Any,
        loop: EventLoop,
        tone_hz: int,
        call_id: int = pj.PJSUA_INVALID_ID,
        on_end: Callable[[ToneCall], None] | None = None,
    ) -> None:
        super().__init__(account, call_id)
        self.loop = loop
        self.tone_hz = tone_hz
        self.on_end = on_end
        self.tone: Any | None = None
        self.started = time.monotonic()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.call_id_text = ""
        self.status = 0
        self.reason = ""
        self.answered = False
        self.ended = False
        self.ended_by: str | None = None
        self.hangup_requested = False
        self.rtp: tuple[int, int] = (0, 0)
        self.ice: dict[str, Any] | None = None
        self.codec: str | None = None
        self.remote_sdp: str | None = None
        # The B2BUA's call class, when its 200 OK carries X-B2BUA-Class.
        self.b2bua_class: str | None = None
        # Request-URI of an incoming call's INVITE.
        self.request_uri: str | None = None
        self.srtp: str | None = None
        # Status of the last response received to our INVITE (0: none yet).
        self.received_status = 0
        # Set when the media may run over TURN over TCP: hangup_local then
        # holds the call before its BYE (see needs_hold_before_bye).
        self.hold_before_bye = False
        self._holding = False
        self._hangup_status = 0
        self._hangup_sent = False
        self._sampling = False

    def onCallState(self, prm: Any) -> None:
        # pjsua2 reports a final failure response here, not in onCallTsxState.
        self._note_received(prm.e)
        info = self.getInfo()
        self.call_id_text = info.callIdString
        if info.lastStatusCode:
            self.status = int(info.lastStatusCode)
            self.reason = info.lastReason
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.answered:
            self.answered = True
            self.answered_at = time.monotonic()
            log.info(
                "%s: answered (%d %s)", self.call_id_text, self.status, self.reason
            )
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.ended_at = time.monotonic()
        self.ended_by = "local" if self.hangup_requested else "remote"
        if self.tone is not None:
            # Stop the tone now so no conference port outlives the call.
            self.tone = None
        log.info(
            "%s: ended by %s, status %d %s, rtp tx %d rx %d",
            self.call_id_text,
            self.ended_by,
            self.status,
            self.reason,
            *self.rtp,
        )
        if self.on_end is not None:
            on_end = self.on_end
            self.loop.call_soon(lambda: on_end(self))

    def onCallMediaState(self, prm: Any) -> None:
        media = audio_media(self)
        if media is None:
            return
        if self.tone is None:
            self.tone = make_tone(self.tone_hz)
        self.tone.startTransmit(media)
        if not self._sampling:
            self._sampling = True
            self.loop.call_later(SAMPLE_INTERVAL, self.sample)

    def onCallTsxState(self, prm: Any) -> None:
        self._note_received(prm.e)
        if self._holding and is_reinvite_answer(prm.e):
            self._holding = False
            log.info("%s: hold answered; BYE in %.1f s", self.call_id_text,
                     HOLD_DRAIN_S)
            self.loop.call_later(HOLD_DRAIN_S, self._send_hangup)

    def _note_received(self, event: Any) -> None:
        """Record the status and SDP of a message received on the INVITE."""
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx_body = event.body.tsxState
        if tsx_body.type != pj.PJSIP_EVENT_RX_MSG:
            return
        if tsx_body.tsx.method != "INVITE":
            return
        if tsx_body.tsx.role == pj.PJSIP_ROLE_UAC and tsx_body.tsx.statusCode:
            self.received_status = int(tsx_body.tsx.statusCode)
        whole_msg = tsx_body.src.rdata.wholeMsg
        sdp = sdp_of_message(whole_msg)
        if sdp is not None:
            self.remote_sdp = sdp
        class_value = header_of_message(whole_msg, "X-B2BUA-Class")
        if class_value is not None:
            self.b2bua_class = class_value

    def sample(self) -> None:
        """Record the current RTP counters, codec and ICE pair."""
        # After our hangup starts, a hold may restart the stream's counters.
        if self.ended or self.hangup_requested:
            return
        counts = rtp_counts(self)
        if counts is not None:
            self.rtp = counts
        if self.codec is None:
            self.codec = audio_codec(self)
            try:
                self.srtp = parse_srtp_dump(self.dump(True, ""))
            except pj.Error as exc:
                log.debug("%s: call dump failed: %s", self.call_id_text, exc.info())
        pair = selected_ice_pair(self)
        if pair is not None:
            if self.ice is not None and self.ice.get("completed_ms") is not None:
                pair["completed_ms"] = self.ice["completed_ms"]
            if pair["state"] == "completed" and (
                self.ice is None or self.ice["state"] != "completed"
            ):
                # Measured from the INVITE, to the sampling interval's precision.
                pair["completed_ms"] = round((time.monotonic() - self.started) * 1000)
                log.info(
                    "%s: ICE completed, %s -> %s",
                    self.call_id_text,
                    pair["local_type"],
                    pair["remote_type"],
                )
                log.debug("%s: call dump:\n%s", self.call_id_text, self.dump(True, ""))
            self.ice = pair
        self.loop.call_later(SAMPLE_INTERVAL, self.sample)

    def hangup_local(self, status: int = 0) -> None:
        """End the call from this side (CANCEL, BYE or a final response)."""
        if self.ended or self.hangup_requested:
            return
        self.sample()
        self.hangup_requested = True
        self._hangup_status = status
        # NOTE: pjnath 2.15.1 can crash at hangup on TURN over TCP; hold first.
        if self.hold_before_bye and self.answered and send_inactive_reinvite(self):
            self._holding = True
            log.info("%s: holding the call before BYE", self.call_id_text)
            self.loop.call_later(HOLD_WAIT_S, self._send_hangup)
            return
        self._send_hangup()

    def _send_hangup(self) -> None:
        if self.ended or self._hangup_sent:
            return
        self._hangup_sent = True
        self._holding = False
        prm = pj.CallOpParam(True)
        if self._hangup_status:
            prm.statusCode = self._hangup_status
        try:
            self.hangup(prm)
        except pj.Error as exc:
            log.warning("%s: hangup failed: %s", self.call_id_text, exc.info())

    def duration(self) -> float:
        """Seconds from answer to end (0 when never answered)."""
        if self.answered_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return end - self.answered_at


# --- Transports and accounts ---------------------------------------------------

SRTP_MODES = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "required": pj.PJMEDIA_SRTP_MANDATORY,
}
TRANSPORT_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
}


def create_transport(ep: Any, kind: str, bind: str | None, port: int = 0) -> int:
    """Create a SIP transport ("udp" or "tcp") and return its transport id.

    port 0 lets the operating system pick a free port.
    """
    cfg = pj.TransportConfig()
    if bind:
        cfg.boundAddress = bind
    cfg.port = port
    return int(ep.transportCreate(TRANSPORT_TYPES[kind], cfg))


def account_config(
    id_uri: str,
    *,
    transport_id: int | None = None,
    bind: str | None = None,
    ice: bool = True,
    stun: bool = False,
    turn_server: str | None = None,
    turn_user: str = "",
    turn_password: str = "",
    turn_transport: str = "udp",
    relay_only: bool = False,
    srtp: str = "off",
) -> Any:
    """Build an AccountConfig for a local account that never registers.

    relay_only keeps only TURN relay candidates: no host candidates and no
    STUN, so ICE has to go through the relay.
    """
    cfg = pj.AccountConfig()
    cfg.idUri = id_uri
    if transport_id is not None:
        cfg.sipConfig.transportId = transport_id
    if bind:
        cfg.mediaConfig.transportConfig.boundAddress = bind
    nat = cfg.natConfig
    nat.iceEnabled = ice
    use_stun = pj.PJSUA_STUN_USE_DEFAULT if stun else pj.PJSUA_STUN_USE_DISABLED
    nat.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    nat.mediaStunUse = use_stun
    if turn_server:
        nat.turnEnabled = True
        nat.turnServer = turn_server
        nat.turnConnType = (
            pj.PJ_TURN_TP_TCP if turn_transport == "tcp" else pj.PJ_TURN_TP_UDP
        )
        nat.turnUserName = turn_user
        # 0 is PJ_STUN_PASSWD_PLAIN: a plain long-term credential password.
        nat.turnPasswordType = 0
        nat.turnPassword = turn_password
    if relay_only:
        nat.iceMaxHostCands = 0
        nat.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
    cfg.mediaConfig.srtpUse = SRTP_MODES[srtp]
    # 0: offer and accept SRTP over any SIP transport, not only over TLS.
    cfg.mediaConfig.srtpSecureSignaling = 0
    return cfg


def is_loopback(address: str | None) -> bool:
    """Return True when address is an IP address in 127.0.0.0/8 (or ::1)."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# NOTE: pjsua2-python 2.15.1 fails calls with PJ_EINVAL when ICE media is
# bound to a loopback address, so ICE needs a non-loopback address.
ICE_LOOPBACK_ERROR = (
    "ICE does not work on a loopback address in this pjsua2 build; "
    "use --no-ice or bind to a non-loopback address (for example in a "
    "network namespace)"
)


def configure_cli_logging(verbosity: int) -> None:
    """Send log lines to stderr: warnings by default, -v info, -vv debug."""
    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    root.setLevel(level)
