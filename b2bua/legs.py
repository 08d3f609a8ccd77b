"""Call legs and the pair that bridges them, inside a worker.

A `CallPair` is one bridged call: the edge leg (the INVITE the edge
dispatched to this worker) and, for SIP targets, the target leg the worker
places through the edge. Built-in targets (`echo`, `tone`) have no target
leg. All methods run on the worker's event-loop thread.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pjsua2 as pj

from b2bua import pjsip_util
from b2bua.policy import parse_policy_name
from b2bua.sdp import SdpError, SdpLine, SessionDescription, parse_sdp
from b2bua.sdp_rewrite import (
    ANSWER,
    OFFER,
    LegContext,
    RuleSet,
    answer_rejections,
    compile_rules,
)
from b2bua.sipmsg import SipMessage, SipParseError, parse_message

if TYPE_CHECKING:
    from b2bua.worker import PolicyAccount, Worker

log = logging.getLogger("b2bua.worker")

ROUTE_HEADER = "X-B2BUA-Route"
CLASS_HEADER = "X-B2BUA-Class"
SERVICE_HEADER = "X-B2BUA-Service"
TONE_FREQUENCIES = (440, 480)
# A target that never responds to CANCEL must not hold the caller forever.
CANCEL_GRACE_S = 4.0
ICE_CHECK_INTERVAL_S = 0.25
# pjlib's status for "the operation completes later" (PJ_ERRNO_START_STATUS + 2).
PJ_EPENDING = 70002
# pjlib's status when pjsua has no free call slot (PJ_ERRNO_START_STATUS + 10).
PJ_ETOOMANY = 70010
# The reason phrase of a 503 on which the edge sends the call to another worker.
# The edge matches it (WORKER_FULL_REASON in b2bua/edge/kemi.py).
WORKER_FULL_REASON = "Worker Full"
# RTP counters are read every tenth of calls.media_timeout, within these
# bounds: reading them costs a worker more CPU than the rest of its loop.
MEDIA_CHECK_MIN_INTERVAL_S = 1.0
MEDIA_CHECK_MAX_INTERVAL_S = 5.0


@dataclass
class TargetSpec:
    """The edge's routing decision, as carried in X-B2BUA-Route."""

    kind: str  # echo | tone | sip
    name: str
    rule: str
    uri: str | None = None
    policy: str = "noice-noturn-off"
    headers: dict[str, str] = field(default_factory=dict)
    answer_timeout: float | None = None
    # Network service the outgoing leg leaves through; None: the caller's.
    service: str | None = None

    @classmethod
    def from_headers(cls, message: SipMessage) -> TargetSpec | None:
        value = message.header(ROUTE_HEADER)
        if not value:
            return None
        try:
            data = json.loads(value)
            return cls(
                kind=str(data["kind"]),
                name=str(data["target"]),
                rule=str(data.get("rule", "")),
                uri=data.get("uri"),
                policy=str(data.get("policy", "noice-noturn-off")),
                headers={str(k): str(v) for k, v in data.get("headers", {}).items()},
                answer_timeout=data.get("answer_timeout"),
                service=data.get("service"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


CallbackT = TypeVar("CallbackT", bound=Callable[..., None])


def guarded(callback: CallbackT) -> CallbackT:
    """Log an exception escaping a pjsua2 callback instead of letting it out.

    An exception that crosses back into pjsip from a Python callback would
    leave the call half-handled, so one bug costs one log line, not a worker.
    """
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:  # noqa: BLE001 - last line of defence
            log.exception("error in pjsua2 callback %s", callback.__qualname__)

    return wrapper  # type: ignore[return-value]


def sip_headers(headers: list[tuple[str, str]]) -> Any:
    vector = pj.SipHeaderVector()
    for name, value in headers:
        header = pj.SipHeader()
        header.hName = name
        header.hValue = value
        vector.append(header)
    return vector


def reason_header(cause: int, text: str) -> tuple[str, str]:
    safe = text.replace('"', "'").replace("\r", " ").replace("\n", " ")
    return ("Reason", f'SIP;cause={cause};text="{safe}"')


def rewrite_answer(offer_text: str, answer_text: str, policy_name: str,
                   rules: RuleSet | None = None) -> str | None:
    """Return the answer pjsua built, corrected for the offer; None to keep it.

    Refused m-lines mirror the offered media type, proto and formats with
    port 0 and no attributes (pjsua keeps its own attributes there), and an
    `a=encryption` line answers a peer that sent one, as Lync does. The
    operator's `rules` for this leg apply last.
    """
    try:
        offer = parse_sdp(offer_text)
        answer = answer_rejections(offer, parse_sdp(answer_text))
        add_connection_to_rejections(answer)
        if any(section.attribute("encryption") for section in offer.media):
            srtp = parse_policy_name(policy_name).srtp
            encryption = compile_rules([{"rule": "encryption", "policy": srtp}])
            answer = encryption.apply(answer, LegContext(direction=ANSWER, offer=offer))
        if rules is not None:
            answer = rules.apply(answer, LegContext(direction=ANSWER, offer=offer))
    except (SdpError, ValueError) as error:
        log.warning("SDP answer left as pjsua built it: %s", error)
        return None
    return answer.to_text()


def rewrite_offer(offer_text: str, rules: RuleSet, initial: bool) -> str | None:
    """Return our own offer with the operator's rules applied; None to keep it."""
    try:
        offer = rules.apply(parse_sdp(offer_text),
                            LegContext(direction=OFFER, initial=initial))
    except (SdpError, ValueError) as error:
        log.warning("SDP offer left as pjsua built it: %s", error)
        return None
    return offer.to_text()


def add_connection_to_rejections(answer: SessionDescription) -> None:
    """Give the session the c= line of the live audio when refused m-lines need it.

    pjmedia rejects (and this pjsip build asserts on) an SDP where a media
    section has no c= line and the session has none either, port 0 or not.
    A session-level c= keeps the refused m-lines free of any other line.
    """
    if answer.connection_address() is not None:
        return
    if not any(section.is_rejected and not section.connection_address()
               for section in answer.media):
        return
    address_line = None
    for section in answer.media:
        if not section.is_rejected and section.connection_address():
            address_line = next(line for line in section.lines[1:] if line.kind == "c")
            break
    if address_line is None:
        return
    # RFC 4566 order: the session c= goes before b= and t=.
    position = next((index for index, line in enumerate(answer.session)
                     if line.kind in ("b", "t")), len(answer.session))
    answer.session.insert(position, SdpLine(address_line.text, address_line.eol))
    for section in answer.media:
        if section.is_rejected:
            section.remove_lines(lambda line: line.kind == "c")


def sdp_body(whole_msg: str) -> str | None:
    """Return the body of a raw SIP message if it is SDP, else None."""
    try:
        message = parse_message(whole_msg.encode("utf-8", "surrogateescape"))
    except SipParseError:
        return None
    if message.content_type() != "application/sdp" or not message.body.strip():
        return None
    return message.body.decode("utf-8", "replace")


class Leg(pj.Call):
    """One pjsua call; forwards its events to the pair that owns it."""

    def __init__(self, account: PolicyAccount, pair: CallPair | None, role: str,
                 call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.worker = account.worker
        self.policy_name = account.policy_name
        self.service = account.service
        self.pair = pair
        self.role = role  # "edge" or "target"
        self.disconnected = False
        self.confirmed = False
        self.last_status = 0
        self.last_reason = ""
        self.audio: Any = None
        self.ice_reported = False
        # False once the peer's SDP came without ICE: pjsua then keeps its
        # ICE transport but starts no ICE session.
        self.remote_sdp_has_ice = True
        # (status, reason text) of a BYE waiting for the inactive re-INVITE.
        self.pending_bye: tuple[int, str] | None = None
        self.bye_deadline = 0.0
        # The last SDP offer received on this leg, as text.
        self.remote_offer: str | None = None
        # RTP received so far, and when that count last changed.
        self.last_rx_packets = 0
        self.last_rx_change = 0.0

    @staticmethod
    def reject_incoming(account: PolicyAccount, call_id: int, status: int,
                        reason: str) -> None:
        leg = Leg(account, None, "edge", call_id)
        # Held before answering, since the rejection can disconnect the call
        # (and drop it from this list) before answer() returns.
        account.worker.rejected_legs.append(leg)
        prm = pj.CallOpParam()
        prm.statusCode = status
        prm.reason = reason
        try:
            leg.answer(prm)
        except pj.Error as error:
            log.warning("could not reject call: %s", error.info())

    @guarded
    def onCallState(self, prm: Any) -> None:  # noqa: N802 (pjsua2 API)
        info = self.getInfo()
        self.last_status = info.lastStatusCode
        self.last_reason = info.lastReason
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
        if self.pair is not None:
            self.pair.on_leg_state(self, info)
        if self.disconnected:
            self.release()

    def release(self) -> None:
        """Drop every reference to this leg, inside its DISCONNECTED callback.

        pjsua frees the call slot right after this callback and reuses it
        for the next call. pjsua2's Call destructor hangs up whatever call
        occupies the slot it was created for, so a Leg destroyed later could
        decline (603) a new call that took the same slot.
        """
        self.audio = None
        if self.pair is not None:
            self.pair.forget(self)
            self.pair = None
        rejected = self.worker.rejected_legs
        if self in rejected:
            rejected.remove(self)

    @guarded
    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802 (pjsua2 API)
        if self.pair is not None:
            self.pair.on_leg_media(self)

    @guarded
    def onCallMediaTransportState(self, prm: Any) -> None:  # noqa: N802
        if self.pair is not None:
            self.pair.on_leg_transport(self, prm.state, prm.status)

    @guarded
    def onCallRxReinvite(self, prm: Any) -> None:  # noqa: N802 (pjsua2 API)
        self.remote_offer = sdp_body(prm.rdata.wholeMsg) or self.remote_offer

    @guarded
    def onCallTsxState(self, prm: Any) -> None:  # noqa: N802 (pjsua2 API)
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        if (self.pending_bye is not None and self.pair is not None
                and pjsip_util.is_reinvite_answer(event)):
            self.pair.send_pending_bye(self)
            return
        body = event.body.tsxState
        if (body.type == pj.PJSIP_EVENT_RX_MSG and body.tsx.method == "UPDATE"
                and body.tsx.role == pj.PJSIP_ROLE_UAS):
            self.remote_offer = sdp_body(body.src.rdata.wholeMsg) or self.remote_offer

    @guarded
    def onCallSdpCreated(self, prm: Any) -> None:  # noqa: N802 (pjsua2 API)
        # NOTE: pjsua2 hands over an empty remote SDP when it does not fit its
        # print buffer (seen with SfB offers), so keep our own copy.
        remote = prm.remSdp.wholeSdp or self.remote_offer or ""
        rules = self.pair.sdp_rules_for(self) if self.pair is not None else None
        if not remote:
            # The peer's SDP answer may carry ICE, and pjsua does not call
            # this method when it arrives.
            self.remote_sdp_has_ice = True
            # Our own offer: pjsua builds it fresh (audio only, never hold),
            # so nothing of the other leg's SDP leaks into it.
            if rules is not None:
                offer = rewrite_offer(prm.sdp.wholeSdp, rules,
                                      initial=not self.confirmed)
                if offer is not None:
                    prm.sdp.wholeSdp = offer
            return
        # Used once: an offer of our own later on this leg has no remote SDP.
        self.remote_offer = None
        self.remote_sdp_has_ice = "a=ice-ufrag" in remote
        rewritten = rewrite_answer(remote, prm.sdp.wholeSdp, self.policy_name, rules)
        if rewritten is not None:
            prm.sdp.wholeSdp = rewritten


class CallPair:
    """One bridged call: the edge leg, an optional target leg, and media."""

    def __init__(self, worker: Worker, call_id: str, target: TargetSpec,
                 caller_uri: str, call_class: str, no_answer_timeout: float,
                 max_duration: float, media_timeout: float = 0.0) -> None:
        self.worker = worker
        self.call_id = call_id
        self.target = target
        self.caller_uri = caller_uri
        self.call_class = call_class
        self.edge: Leg | None = None
        self.target_leg: Leg | None = None
        self.tone: Any = None
        self.created = time.monotonic()
        self.answer_deadline = self.created + no_answer_timeout
        self.max_duration = max_duration
        self.media_timeout = media_timeout
        self.media_check_interval = min(MEDIA_CHECK_MAX_INTERVAL_S,
                                        max(MEDIA_CHECK_MIN_INTERVAL_S,
                                            media_timeout / 10))
        self.last_media_check = 0.0
        self.answered_at: float | None = None
        self.edge_answer_sent = 0  # highest status sent on the edge leg
        self.timed_out = False
        self.cancel_sent_at: float | None = None
        self.end_reason = ""
        self.bridged = False
        self.finished = False
        self.last_ice_check = 0.0

    def forget(self, leg: Leg) -> None:
        """Stop referring to a disconnected leg (see `Leg.release`).

        The pair ends with its last leg rather than at the next tick, so
        that the worker counts its slot free as soon as pjsua does.
        """
        if self.edge is leg:
            self.edge = None
        if self.target_leg is leg:
            self.target_leg = None
        if self.edge is None and self.target_leg is None:
            self._release()

    def sdp_rules_for(self, leg: Leg) -> RuleSet | None:
        """Return the operator's SDP rules for what this pair sends on `leg`."""
        if leg.role == "edge":
            return self.worker.class_sdp_rules.get(self.class_name)
        return self.worker.target_sdp_rules.get(self.target.name)

    def live_leg_count(self) -> int:
        return sum(1 for leg in (self.edge, self.target_leg)
                   if leg is not None and not leg.disconnected)

    @property
    def class_name(self) -> str:
        return self.call_class.split(";", 1)[0].strip() or "unset"

    # ----- setup -----------------------------------------------------------

    def accept_incoming(self, account: PolicyAccount, pjsua_call_id: int,
                        offer: str | None = None) -> None:
        self.edge = Leg(account, self, "edge", pjsua_call_id)
        self.edge.remote_offer = offer
        log.info("call %s: routed by rule %s to %s (%s)", self.call_id,
                 self.target.rule or "?", self.target.name,
                 self.target.uri or "built-in")
        if self.target.kind in ("echo", "tone"):
            self._answer_edge(200)
            return
        self._place_target_leg()

    def _place_target_leg(self) -> None:
        assert self.edge is not None
        service = self.target.service or self.edge.service
        account = self.worker.account_for(service, self.target.policy)
        if account is None or not self.target.uri:
            log.error("call %s: no account for service %s, policy %s; 500",
                      self.call_id, service, self.target.policy)
            self._reject_edge(500, "No Media Policy")
            return
        self.target_leg = Leg(account, self, "target")
        prm = pj.CallOpParam(True)
        if self.caller_uri:
            prm.txOption.localUri = self.caller_uri
        headers = list(self.target.headers.items())
        # The edge sends the leg out through this service, then removes it.
        headers.append((SERVICE_HEADER, service))
        prm.txOption.headers = sip_headers(headers)
        try:
            self.target_leg.makeCall(self.target.uri, prm)
        except pj.Error as error:
            self.target_leg = None
            if error.status == PJ_ETOOMANY:
                # A call that just ended can hold its pjsua slot a moment
                # longer (media teardown), so the edge tries another worker.
                log.warning("call %s: no free pjsua call slot for the outgoing "
                            "leg; 503 %s", self.call_id, WORKER_FULL_REASON)
                self._reject_edge(503, WORKER_FULL_REASON)
                return
            log.warning("call %s: outgoing leg to %s failed to start: %s",
                        self.call_id, self.target.uri, error.info())
            self._reject_edge(503, "Service Unavailable",
                              reason_header(503, "outgoing leg failed to start"))
            return
        log.info("call %s: outgoing leg calling %s", self.call_id, self.target.uri)

    # ----- answers on the edge leg ------------------------------------------

    def _answer_edge(self, status: int) -> None:
        if self.edge is None or self.edge.disconnected or status <= self.edge_answer_sent:
            return
        prm = pj.CallOpParam()
        prm.statusCode = status
        headers: list[tuple[str, str]] = []
        if status == 200 and self.call_class:
            headers.append((CLASS_HEADER, self.call_class))
        prm.txOption.headers = sip_headers(headers)
        try:
            self.edge.answer(prm)
        except pj.Error as error:
            # For an INVITE without SDP, pjsua sends the answer with its own
            # offer once ICE candidates are gathered, and returns PJ_EPENDING.
            if error.status != PJ_EPENDING:
                log.warning("call %s: answer %d failed: %s", self.call_id, status,
                            error.info())
                return
        self.edge_answer_sent = status
        if status == 200:
            self.answered_at = time.monotonic()
            setup_ms = (self.answered_at - self.created) * 1000
            log.info("call %s: answered (%s, class %s, setup %.0f ms)",
                     self.call_id, self.target.name, self.class_name, setup_ms)

    def _reject_edge(self, status: int, reason: str,
                     header: tuple[str, str] | None = None) -> None:
        if self.edge is None or self.edge.disconnected:
            return
        prm = pj.CallOpParam()
        prm.statusCode = status
        prm.reason = reason
        # The class header marks the response as this worker's decision: the
        # edge retries a 486 without it on another worker, since only pjsua
        # itself sends one when its call slots are full.
        headers = [(CLASS_HEADER, self.call_class or "unset")]
        if header is not None:
            headers.append(header)
        prm.txOption.headers = sip_headers(headers)
        self.end_reason = f"{status} {reason}"
        try:
            self.edge.hangup(prm)
        except pj.Error as error:
            log.warning("call %s: reject %d failed: %s", self.call_id, status,
                        error.info())

    # ----- events ------------------------------------------------------------

    def on_leg_state(self, leg: Leg, info: Any) -> None:
        if leg.role == "target":
            self._on_target_state(leg, info)
        else:
            self._on_edge_state(leg, info)

    def _on_target_state(self, leg: Leg, info: Any) -> None:
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY:
            status = info.lastStatusCode
            if status in (180, 181, 182) and self.edge_answer_sent < 180:
                log.info("call %s: outgoing leg ringing (%d)", self.call_id, status)
                self._answer_edge(180)
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            log.info("call %s: outgoing leg answered", self.call_id)
            self._answer_edge(200)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._on_target_ended(leg, info)

    def _on_target_ended(self, leg: Leg, info: Any) -> None:
        status, reason = info.lastStatusCode, info.lastReason
        edge = self.edge
        if edge is None or edge.disconnected:
            log.info("call %s: outgoing leg ended (%d %s)", self.call_id, status,
                     reason)
            return
        if self.edge_answer_sent >= 200:
            self.end_reason = "target hung up"
            log.info("call %s: target hung up; sending BYE to the caller",
                     self.call_id)
            self._hangup(edge, 200, "")
            return
        if self.timed_out:
            log.info("call %s: no answer within %.0f s; 408", self.call_id,
                     self.answer_deadline - self.created)
            self._reject_edge(408, "Request Timeout",
                              reason_header(408, "no answer from target"))
            return
        if status < 300:
            status, reason = 500, "Outgoing Leg Failed"
        log.info("call %s: outgoing leg failed with %d %s; relaying it",
                 self.call_id, status, reason)
        self._reject_edge(status, reason or "Failed")

    def _on_edge_state(self, leg: Leg, info: Any) -> None:
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            log.info("call %s: edge leg confirmed", self.call_id)
            return
        if info.state != pj.PJSIP_INV_STATE_DISCONNECTED:
            return
        duration = (time.monotonic() - self.answered_at) if self.answered_at else 0
        if not self.end_reason:
            if self.answered_at and not leg.confirmed:
                # pjsua gives up on a 200 that no ACK confirms (status 408).
                self.end_reason = "no ACK from the caller"
            elif self.answered_at:
                self.end_reason = "caller hung up"
            else:
                self.end_reason = "caller cancelled"
        log.info("call %s: ended (%s, status %d, class %s, %.1f s)", self.call_id,
                 self.end_reason, info.lastStatusCode, self.class_name, duration)
        target = self.target_leg
        if target is not None and not target.disconnected:
            self._hangup(target, 487 if not target.confirmed else 200, "")

    def on_leg_media(self, leg: Leg) -> None:
        audio = self._active_audio(leg)
        if audio is None:
            return
        leg.audio = audio
        if leg.role == "target" and self._target_in_early_state(leg):
            # Early media from the target: answer the caller with 183 and our
            # own SDP, so the caller hears the target's ringback or prompts.
            if self.edge_answer_sent < 183:
                log.info("call %s: early media from target; 183", self.call_id)
                self._answer_edge(183)
        self._connect_media()

    @staticmethod
    def _target_in_early_state(leg: Leg) -> bool:
        # pjsua can report the media of a 200 before the CONFIRMED state, so
        # the leg's own state, not our flag, tells early media from an answer.
        try:
            return bool(leg.getInfo().state == pj.PJSIP_INV_STATE_EARLY)
        except pj.Error:
            return False

    def _active_audio(self, leg: Leg) -> Any:
        try:
            info = leg.getInfo()
        except pj.Error:
            return None
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD
            ):
                try:
                    return leg.getAudioMedia(index)
                except pj.Error:
                    return None
        return None

    def _connect_media(self) -> None:
        edge = self.edge
        if edge is None or edge.audio is None:
            return
        if self.target.kind == "echo":
            edge.audio.startTransmit(edge.audio)
            self.bridged = True
            return
        if self.target.kind == "tone":
            if self.tone is None:
                self.tone = pj.ToneGenerator()
                self.tone.createToneGenerator(8000, 1)
                tone = pj.ToneDesc()
                tone.freq1, tone.freq2 = TONE_FREQUENCIES
                tone.on_msec, tone.off_msec = 1000, 200
                tones = pj.ToneDescVector()
                tones.append(tone)
                self.tone.play(tones, True)
            self.tone.startTransmit(edge.audio)
            self.bridged = True
            return
        target = self.target_leg
        if target is None or target.audio is None:
            return
        edge.audio.startTransmit(target.audio)
        target.audio.startTransmit(edge.audio)
        if not self.bridged:
            log.info("call %s: media bridged", self.call_id)
        self.bridged = True

    def on_leg_transport(self, leg: Leg, state: int, status: int) -> None:
        # Ending a call tears down its ICE session, and pjsua reports that as
        # an error. Only a call that is not ending can fail ICE.
        if leg.role != "edge" or leg.ice_reported or self.end_reason:
            return
        if status != 0:
            self._ice_failed(leg, f"status {status}")
            return
        self._check_ice(leg)

    def _check_ice(self, leg: Leg) -> None:
        """Log the ICE result of the edge leg once, and end the call on failure.

        pjsua2 reports ICE progress only through Call.dump() text, so this
        runs from the transport callback and again from `on_tick` until ICE
        reaches a final state.
        """
        if self.end_reason or (leg.audio is None and not leg.confirmed):
            return
        # Call.dump() formats the whole call, so skip it once the peer's SDP
        # shows there is no ICE to wait for.
        pair = (pjsip_util.selected_ice_pair(leg)
                if leg.remote_sdp_has_ice or leg.audio is None else None)
        if pair is None:
            if leg.audio is not None:
                leg.ice_reported = True
                log.info("call %s: no ICE on the edge leg; plain RTP", self.call_id)
            return
        if pair.get("state") == "completed":
            leg.ice_reported = True
            log.info("call %s: ICE completed, pair %s -> %s over %s (%s -> %s)",
                     self.call_id, pair.get("local_type"), pair.get("remote_type"),
                     pair.get("transport"), pair.get("local_address"),
                     pair.get("remote_address"))
        elif pair.get("state") == "failed":
            self._ice_failed(leg, "no candidate pair worked")

    def _ice_failed(self, leg: Leg, detail: str) -> None:
        leg.ice_reported = True
        log.warning("call %s: ICE failed on the edge leg (%s); ending the call",
                    self.call_id, detail)
        self.end_both("ICE negotiation failed", 488)

    # ----- teardown ------------------------------------------------------------

    def _hangup(self, leg: Leg, status: int, reason_text: str) -> None:
        if leg.pending_bye is not None:
            return
        # NOTE: pjnath 2.15.1 can crash at hangup on TURN over TCP; hold first.
        if (leg.confirmed and pjsip_util.needs_hold_before_bye(self._turn_transport(leg))
                and pjsip_util.send_inactive_reinvite(leg)):
            leg.pending_bye = (status, reason_text)
            leg.bye_deadline = time.monotonic() + pjsip_util.HOLD_WAIT_S
            log.info("call %s: holding the %s leg before BYE (TURN over TCP)",
                     self.call_id, leg.role)
            return
        self._send_hangup(leg, status, reason_text)

    def send_pending_bye(self, leg: Leg) -> None:
        """Send the BYE that waited for the leg's inactive re-INVITE."""
        if leg.pending_bye is None or leg.disconnected:
            return
        status, reason_text = leg.pending_bye
        self._send_hangup(leg, status, reason_text)

    def _send_overdue_byes(self, now: float) -> None:
        for leg in (self.edge, self.target_leg):
            if leg is not None and leg.pending_bye is not None and now >= leg.bye_deadline:
                log.info("call %s: no answer to the hold on the %s leg; BYE",
                         self.call_id, leg.role)
                self.send_pending_bye(leg)

    def _turn_transport(self, leg: Leg) -> str | None:
        """Return the TURN transport of the leg's account, or None without TURN."""
        turn_use = self.worker.turn_for(leg.service or "", leg.policy_name)
        return turn_use[2] if turn_use is not None else None

    def _send_hangup(self, leg: Leg, status: int, reason_text: str) -> None:
        leg.pending_bye = None
        prm = pj.CallOpParam()
        if status:
            prm.statusCode = status
        if reason_text:
            prm.txOption.headers = sip_headers([reason_header(status or 200,
                                                              reason_text)])
        try:
            leg.hangup(prm)
        except pj.Error as error:
            log.debug("call %s: hangup of %s leg: %s", self.call_id, leg.role,
                      error.info())

    def end_both(self, reason_text: str, cause: int) -> None:
        """End both legs with a Reason header: BYE if answered, else a final status."""
        self.end_reason = reason_text
        for leg in (self.edge, self.target_leg):
            if leg is None or leg.disconnected:
                continue
            if leg.role == "edge" and self.edge_answer_sent < 200:
                self._reject_edge(cause, reason_text, reason_header(cause, reason_text))
            else:
                self._hangup(leg, 200 if leg.confirmed else 487, reason_text)

    def on_tick(self, now: float) -> None:
        edge, target = self.edge, self.target_leg
        edge_done = edge is None or edge.disconnected
        target_done = target is None or target.disconnected
        if edge_done and target_done:
            self._release()
            return
        self._send_overdue_byes(now)
        if (edge is not None and not edge_done and not edge.ice_reported
                and now - self.last_ice_check >= ICE_CHECK_INTERVAL_S):
            self.last_ice_check = now
            self._check_ice(edge)
        if (target is not None and not target_done and self.edge_answer_sent < 200
                and not self.timed_out and now >= self.answer_deadline):
            self.timed_out = True
            self.cancel_sent_at = now
            log.info("call %s: no answer from target; cancelling", self.call_id)
            self._hangup(target, 487, "")
        if (self.timed_out and self.cancel_sent_at is not None and not edge_done
                and now - self.cancel_sent_at > CANCEL_GRACE_S):
            self._reject_edge(408, "Request Timeout",
                              reason_header(408, "no answer from target"))
        if (self.media_timeout and self.answered_at is not None and not edge_done
                and now - self.last_media_check >= self.media_check_interval):
            self.last_media_check = now
            self._check_media_flow(now)
        if (self.max_duration and self.answered_at is not None and not edge_done
                and now - self.answered_at >= self.max_duration):
            log.info("call %s: maximum duration %.0f s reached", self.call_id,
                     self.max_duration)
            self.end_both("maximum call duration reached", 200)

    def _check_media_flow(self, now: float) -> None:
        """End the call when a party has sent no RTP for media_timeout seconds.

        A caller or target that vanished without a BYE would otherwise hold
        a worker slot forever. Legs on hold are not expected to send.
        """
        for leg in (self.edge, self.target_leg):
            if leg is None or leg.disconnected or not leg.confirmed:
                continue
            if not self._leg_should_receive(leg):
                leg.last_rx_change = now
                continue
            counts = pjsip_util.rtp_counts(leg)
            received = counts[1] if counts is not None else 0
            if received != leg.last_rx_packets or leg.last_rx_change == 0.0:
                leg.last_rx_packets = received
                leg.last_rx_change = now
                continue
            silent = now - leg.last_rx_change
            if silent >= self.media_timeout:
                party = "caller" if leg.role == "edge" else "target"
                log.warning("call %s: no RTP from the %s for %.0f s; ending the call",
                            self.call_id, party, silent)
                self.end_both(f"no RTP from the {party} for {silent:.0f} s", 408)
                return

    @staticmethod
    def _leg_should_receive(leg: Leg) -> bool:
        try:
            info = leg.getInfo()
        except pj.Error:
            return False
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            receiving = bool(media.dir & pj.PJMEDIA_DIR_DECODING)
            return media.status == pj.PJSUA_CALL_MEDIA_ACTIVE and receiving
        return False

    def _release(self) -> None:
        if self.tone is not None:
            try:
                self.tone.stop()
            except pj.Error:
                pass
        self.tone = None
        for leg in (self.edge, self.target_leg):
            if leg is not None:
                leg.audio = None
                leg.pair = None
        self.edge = None
        self.target_leg = None
        self.finished = True
