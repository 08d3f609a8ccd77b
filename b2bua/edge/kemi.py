"""Request routing of the Kamailio edge, run by app_python3 (KEMI).

Every SIP request from outside lands here first. New calls are checked,
classified, routed through the dialplan and dispatched to a pjsua2 worker
with free capacity. Requests from workers (their outgoing legs) are
relayed to the target. The routing decision reaches the worker in `X-B2BUA-*`
headers, which are first stripped from every request from outside so that
no caller can set them.

This runs inside Kamailio's embedded Python (Debian's 3.11, not the
project's virtualenv), so it imports only the standard library and this
package's pure modules. Kamailio forks its children after loading this
file, so state every child must see (setup rates) lives in an htable, and
the call load per worker in dialog profiles, both in shared memory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import KSR  # type: ignore[import-not-found]  # provided by app_python3

from b2bua import policy as media_policy
from b2bua.classify import (
    CLASS_HEADER,
    ClassifyPolicy,
    check_federation,
    classify,
    encode_class_header,
)
from b2bua.dialplan import Dialplan, NoRoute
from b2bua.edge.ratelimit import SetupWindow, setup_window
from b2bua.sdp import SdpError, SessionDescription
from b2bua.sdp_rewrite import (
    OFFER,
    LegContext,
    compile_rules,
    encryption_answer,
)
from b2bua.sipbody import MessageTooLarge, normalize_for_worker, sdp_has_ice
from b2bua.sipmsg import (
    SipMessage,
    SipParseError,
    dialog_address_problem,
    error_response_for_unparsable,
    parse_message,
)

DISPATCHER_SET = 1
BRIDGED_CALLS_PER_WORKER = 2
RETRY_AFTER_S = 2
# The reason phrase of a worker's 503 when it has no room for the call
# (b2bua/legs.py). It comes before any outgoing leg exists, so another worker
# can take the call.
WORKER_FULL_REASON = "Worker Full"
# A worker tears down a call for a moment after the edge's dialog has ended
# (BYE to the target, pjsua freeing the call slots). A new call sent to it
# then gets "503 Worker Full" and a retry elsewhere, so a worker that ended
# a call this recently is picked only when no other worker is free.
CALL_ENDED_COOLDOWN_S = 0.5
WORKER_DIALOG_VAR = "$dlg_var(b2bua_worker)"
# AVPs that follow the INVITE transaction into its failure route.
TRIED_WORKERS_AVP = "$avp(b2bua_tried_workers)"
ALLOWED_METHODS = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, PRACK"
HEADER_PREFIX_RE = "^X-B2BUA-"
IN_DIALOG_METHODS = ("BYE", "UPDATE", "INFO", "PRACK", "REFER", "NOTIFY")
WARNING_AGENT = "b2bua-edge"
# NOTE: pjsip 2.15.1 in the workers cuts messages over about 4,000 bytes,
# and a cut INVITE can abort a worker, so the edge never forwards one.
WORKER_MESSAGE_LIMIT = 3950
# Bytes of the Via and Record-Route headers, and the longer To URI, that the
# edge adds toward a worker (measured about 300; the rest is margin).
EDGE_HEADER_ALLOWANCE = 450
# Larger bodies are refused before any parsing.
MAX_BODY_BYTES = 32768
# Rules for an offer from outside before a worker answers it. Only rules
# that keep every m-line belong here: the worker's answer must mirror the
# caller's m-lines, and pjsua refuses the non-audio ones itself.
INCOMING_OFFER_RULES = [{"rule": "choose_crypto"}]


class KsrLogHandler(logging.Handler):
    """Send the package's Python log records to Kamailio's log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).replace("\n", " ") + "\n"
            if record.levelno >= logging.ERROR:
                KSR.err(text)
            elif record.levelno >= logging.WARNING:
                KSR.warn(text)
            elif record.levelno >= logging.INFO:
                KSR.info(text)
            else:
                KSR.dbg(text)
        except Exception:  # noqa: BLE001 - logging must never break routing
            self.handleError(record)


def create_handler(runtime_file: str) -> EdgeHandler:
    with open(runtime_file, encoding="utf-8") as handle:
        runtime = json.load(handle)
    package_logger = logging.getLogger("b2bua")
    package_logger.addHandler(KsrLogHandler())
    package_logger.setLevel(
        logging.DEBUG if runtime.get("log_level") == "debug" else logging.INFO)
    package_logger.propagate = False
    return EdgeHandler(runtime)


@dataclass(frozen=True)
class WorkerBody:
    """The SDP a worker gets once the edge has fitted the request, if any."""

    sdp: SessionDescription | None


class EdgeHandler:
    """The object app_python3 calls for each request, reply and failure."""

    def __init__(self, runtime: dict[str, Any]) -> None:
        self.runtime = runtime
        self.workers = runtime["workers"]
        self.worker_by_source = {
            f"{w['address']}:{w['port']}": w for w in self.workers
        }
        internal = runtime["edge_internal"]
        self.internal_socket = f"udp:{internal['address']}:{internal['port']}"
        self.internal_key = (internal["address"], int(internal["port"]))
        self.listeners = runtime["listeners"]
        self.dialplan = Dialplan.from_dict(runtime["dialplan"])
        self.services = {service["name"]: service for service in runtime["services"]}
        self.default_service = runtime["services"][0]["name"]
        # Each service classifies by its own domains and networks; the
        # federation allow and deny lists are shared.
        self.classify_policies = {
            name: ClassifyPolicy.from_sections(
                service.get("classification") or {},
                runtime.get("federation") or {},
            )
            for name, service in self.services.items()
        }
        self.classes = runtime["classes"]
        self.max_setups = int(runtime.get("max_setups_per_second", 4))
        self.expose_class = bool(runtime.get("expose_class_header", False))
        self.rotation = 0
        self.incoming_offer_rules = compile_rules(INCOMING_OFFER_RULES)

    # app_python3 calls these for every process it forks.
    def child_init(self, rank: int) -> int:
        return 0

    # ----- entry points -----------------------------------------------------

    def ksr_request_route(self, msg: Any) -> int:
        try:
            self._route_request()
        except UnicodeDecodeError as error:
            # app_python3 decodes pseudo-variables as UTF-8 before this code
            # gets them, so a header with other bytes fails on the first read.
            KSR.info(f"edge: {KSR.pv.get('$rm')} from {self._source()} is not "
                     f"UTF-8 ({error.reason} at byte {error.start}); 400\n")
            self._reply_error(400, "Bad Request", "message has bytes that are not UTF-8")
        except Exception as error:  # noqa: BLE001 - a request must get an answer
            KSR.err(f"edge: routing failed: {type(error).__name__}: {error}\n")
            if KSR.tm.t_check_trans() <= 0 and KSR.pv.get("$rm") != "ACK":
                KSR.sl.sl_send_reply(500, "Edge Routing Error")
        return 1

    def ksr_reply_route(self, msg: Any) -> int:
        if not self.expose_class:
            KSR.hdr.remove("X-B2BUA-Class")
        return 1

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1

    def ksr_dialog_event(self, msg: Any, event: str) -> int:
        """Note when a worker's call ends, for `_pick_worker`'s cooldown."""
        if event in ("dialog:end", "dialog:failed"):
            worker_id = KSR.pv.get(WORKER_DIALOG_VAR)
            if worker_id:
                KSR.htable.sht_sets("callended", worker_id, f"{time.time():.3f}")
        return 1

    def ksr_failure_to_worker(self, msg: Any) -> int:
        """Turn a worker that never replied into a 503 the caller can retry."""
        if KSR.tm.t_is_canceled() > 0:
            return 1
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            call_id = KSR.pv.get("$ci")
            # The worker is not marked inactive here: pjsip drops a request it
            # cannot parse without a reply, so one malformed INVITE would
            # take a healthy worker out of service. The dispatcher's OPTIONS
            # probes (every 2 s) take out a worker that is really down.
            KSR.warn(f"call {call_id}: worker {KSR.pv.get('$du')} did not answer "
                     "the INVITE; 503\n")
            KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER_S}\r\n")
            KSR.tm.t_reply(503, "Worker Unavailable")
            return 1
        if (KSR.tm.t_check_status("503") > 0
                and KSR.pv.get("$T_reply_reason") == WORKER_FULL_REASON):
            self._redispatch_from_full_worker()
        elif (KSR.tm.t_check_status("486") > 0
              and KSR.pv.get(f"$T_rpl($hdr({CLASS_HEADER}))") is None):
            # pjsua's own 486 when all four call slots are taken: the worker
            # marks every failure it relays with the class header.
            self._redispatch_from_full_worker()
        return 1

    def _redispatch_from_full_worker(self) -> None:
        """Send a call a worker rejected as full to another worker, or 503.

        A worker frees its slot a moment after the edge's dialog of an ended
        call is gone, so a new INVITE in that gap finds it still full.
        """
        call_id = KSR.pv.get("$ci")
        tried = [w for w in (KSR.pv.get(TRIED_WORKERS_AVP) or "").split(",") if w]
        if tried:
            KSR.dialog.unset_dlg_profile("worker_load", tried[-1])
            KSR.dialog.unset_dlg_profile("worker_any", tried[-1])
        worker = self._pick_worker(exclude=set(tried))
        if worker is None:
            KSR.info(f"call {call_id}: worker {','.join(tried)} full and no other "
                     "worker free; 503\n")
            KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER_S}\r\n")
            KSR.tm.t_reply(503, "Service Unavailable")
            return
        KSR.info(f"call {call_id}: worker {','.join(tried)} full; trying "
                 f"{worker['id']}\n")
        KSR.pv.sets("$du", f"sip:{worker['address']}:{worker['port']}")
        KSR.pv.sets("$fs", self.internal_socket)
        KSR.tm.t_on_failure("ksr_failure_to_worker")
        if KSR.tm.t_relay() < 0:
            KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER_S}\r\n")
            KSR.tm.t_reply(503, "Service Unavailable")

    def ksr_failure_to_target(self, msg: Any) -> int:
        """Report an unreachable target to the worker as 503 with a Reason."""
        if KSR.tm.t_is_canceled() > 0:
            return 1
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            call_id = KSR.pv.get("$ci")
            KSR.info(f"call {call_id}: target {KSR.pv.get('$ru')} unreachable\n")
            KSR.hdr.append_to_reply(
                'Reason: SIP;cause=408;text="target did not respond"\r\n'
            )
            KSR.tm.t_reply(503, "Target Unreachable")
        return 1

    # ----- routing ------------------------------------------------------------

    def _route_request(self) -> None:
        method = KSR.pv.get("$rm")
        max_forwards = KSR.maxfwd.process_maxfwd(10)
        if max_forwards == -1:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return
        if max_forwards < 0:
            # The module failed to read the headers, and sl would fail too.
            KSR.info(f"edge: {method} from {self._source()}: Max-Forwards "
                     "processing failed\n")
            self._reply_to_unparsable("invalid Max-Forwards header")
            return
        if KSR.sanity.sanity_check(17895, 7) < 0:
            # sanity has already replied with the reason (400, 420, ...),
            # unless a header line could not be parsed.
            KSR.info(f"edge: {method} from {self._source()} failed sanity checks\n")
            self._reply_to_unparsable(None)
            return
        worker = self._worker_for_source()
        if KSR.siputils.has_totag() > 0:
            self._route_in_dialog(method)
            return
        if method == "CANCEL":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            else:
                KSR.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")
            return
        if method == "ACK":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return
        if KSR.tm.t_check_trans() == 0:
            return  # retransmission, absorbed by tm
        if method == "OPTIONS" and not KSR.pv.get("$rU"):
            KSR.hdr.append_to_reply(f"Allow: {ALLOWED_METHODS}\r\n")
            KSR.sl.sl_send_reply(200, "OK")
            return
        if method in IN_DIALOG_METHODS:
            # Only valid inside a dialog, and this one carries no To tag.
            KSR.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")
            return
        if method != "INVITE":
            KSR.hdr.append_to_reply(f"Allow: {ALLOWED_METHODS}\r\n")
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return
        if worker is not None:
            self._route_outgoing_leg(worker)
        else:
            self._route_new_call()

    def _route_in_dialog(self, method: str) -> None:
        worker = self._worker_for_source()
        # Before loose_route: the dialog module ends the dialog of any BYE it
        # routes, even one the edge then rejects as too large.
        if worker is None and not self._normalize_for_worker(None, None, initial=False):
            return
        if KSR.rr.loose_route() > 0:
            if worker is None and (method == "OPTIONS"
                                   or (method == "INFO" and not KSR.pv.get("$rb"))):
                # pjsua rejects these with "500 Unhandled by dialog usages".
                # They are keepalives and capability queries, so the edge
                # replies 200 itself.
                KSR.hdr.append_to_reply(f"Allow: {ALLOWED_METHODS}\r\n")
                KSR.sl.sl_send_reply(200, "OK")
                return
            if method in ("INVITE", "UPDATE"):
                KSR.info(f"call {KSR.pv.get('$ci')}: in-dialog {method} from "
                         f"{worker['id'] if worker else self._source()}\n")
            if method == "INVITE":
                KSR.rr.record_route()
            KSR.tm.t_relay()
            return
        if method == "ACK":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return
        KSR.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")

    def _route_outgoing_leg(self, worker: dict[str, Any]) -> None:
        call_id = KSR.pv.get("$ci")
        service = KSR.hdr.get("X-B2BUA-Service") or self.default_service
        KSR.textops.remove_hf_re(HEADER_PREFIX_RE)
        socket = self._send_socket(service)
        if socket is not None:
            KSR.pv.sets("$fs", socket)
        KSR.dialog.dlg_manage()
        KSR.dialog.set_dlg_profile("worker_any", worker["id"])
        KSR.rr.record_route()
        KSR.info(f"call {call_id}: outgoing leg from {worker['id']} to "
                 f"{KSR.pv.get('$ru')} via service {service}\n")
        KSR.tm.t_on_failure("ksr_failure_to_target")
        if KSR.tm.t_relay() < 0:
            KSR.hdr.append_to_reply(
                'Reason: SIP;cause=503;text="target address could not be used"\r\n'
            )
            KSR.sl.sl_send_reply(503, "Target Unreachable")

    def _route_new_call(self) -> None:
        call_id = KSR.pv.get("$ci")
        source_ip = KSR.pv.get("$si")
        KSR.textops.remove_hf_re(HEADER_PREFIX_RE)
        KSR.textopsx.msg_apply_changes()
        try:
            message = parse_message(KSR.pv.get("$mb").encode("utf-8", "replace"))
        except SipParseError as error:
            KSR.info(f"call {call_id}: unreadable INVITE ({error}); 400\n")
            KSR.sl.sl_send_reply(400, "Bad Request")
            return
        user = KSR.pv.get("$rU") or ""
        domain = KSR.pv.get("$rd") or ""
        KSR.info(f"call {call_id}: received INVITE from {KSR.pv.get('$fu')} "
                 f"to {KSR.pv.get('$ru')} via {self._source()}\n")
        address_problem = dialog_address_problem(message)
        if address_problem is not None:
            KSR.info(f"call {call_id}: {address_problem}; 400\n")
            self._reply_error(400, "Bad Request", address_problem)
            return

        listener = self._listener()
        service = listener["service"] if listener else self.default_service
        classify_policy = self.classify_policies[service]
        classification = classify(message, source_ip, classify_policy)
        class_header = encode_class_header(classification)
        call_class = classification.call_class
        # classify() logs its own warnings, rate-limited, through KsrLogHandler.
        KSR.info(f"call {call_id}: classified {call_class}: "
                 f"{classification.reason}\n")
        rejection = check_federation(classification, message, classify_policy)
        if rejection is not None:
            KSR.info(f"call {call_id}: class {call_class}: rejected "
                     f"{rejection.status} {rejection.reason}\n")
            KSR.hdr.append_to_reply(f"Reason: {rejection.reason_header()}\r\n")
            KSR.sl.sl_send_reply(rejection.status, rejection.reason)
            return

        route = self.dialplan.route(user, domain, source_ip, call_class, service)
        if isinstance(route, NoRoute):
            KSR.info(f"call {call_id}: class {call_class}: no dialplan rule "
                     f"matches {user}@{domain}; {route.status} {route.reason}\n")
            KSR.sl.sl_send_reply(route.status, route.reason)
            return
        srtp = self._class_srtp(call_class)
        target = route.target
        target_policy = media_policy.MediaPolicy(
            ice=bool(target.ice), turn=False, srtp=target.srtp or "off"
        ).name
        route_header = json.dumps({
            "rule": route.rule_name,
            "target": target.name,
            "kind": target.kind,
            "uri": route.uri,
            "policy": target_policy,
            "headers": dict(route.headers),
            "answer_timeout": target.answer_timeout,
            "service": target.service or service,
        }, separators=(",", ":"))
        added_headers = (
            f"X-B2BUA-Route: {route_header}\r\n"
            f"X-B2BUA-Class: {class_header}\r\n"
            f"X-B2BUA-Source: {self._source()}\r\n"
        )
        body = self._normalize_for_worker(message, srtp, initial=True,
                                          added_bytes=len(added_headers))
        if body is None:
            return
        edge_policy, policy_note = self._edge_policy(call_class, listener, service,
                                                     body.sdp)

        worker = self._pick_worker()
        if worker is None:
            KSR.info(f"call {call_id}: class {call_class}: every worker is busy or "
                     "down; 503\n")
            KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER_S}\r\n")
            KSR.sl.sl_send_reply(503, "Service Unavailable")
            return
        KSR.info(f"call {call_id}: class {call_class}: routed by rule "
                 f"{route.rule_name} to {target.name}; worker {worker['id']}, "
                 f"service {service}, edge-leg policy {edge_policy}"
                 f"{policy_note}\n")
        KSR.hdr.append(added_headers)
        # pjsua picks the account, and so the media policy, by the To URI.
        # The uac module restores the caller's To in every reply and later
        # request of the dialog.
        to_user = KSR.pv.get("$tU") or "b2bua"
        KSR.uac.uac_replace_to_uri(
            f"sip:{to_user}@{media_policy.policy_host(edge_policy, service)}"
        )
        KSR.pv.sets("$du", f"sip:{worker['address']}:{worker['port']}")
        KSR.pv.sets("$fs", self.internal_socket)
        KSR.rr.record_route()
        KSR.tm.t_on_failure("ksr_failure_to_worker")
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_send_reply(500, "Could Not Reach Worker")

    def _normalize_for_worker(self, message: SipMessage | None, srtp: str | None,
                              initial: bool, added_bytes: int = 0) -> WorkerBody | None:
        """Fit the request to what a worker can parse and answer.

        Selects the SDP part of a multipart body, shrinks the message under
        the worker's size limit (counting the `added_bytes` of headers the
        edge adds, and its Via and Record-Route), drops SRTP keys with an
        MKI and checks the SRTP policy. Returns what the worker gets, or
        replies with the error itself and returns None when the request
        cannot go on.
        """
        limit = WORKER_MESSAGE_LIMIT - EDGE_HEADER_ALLOWANCE - added_bytes
        if (message is None and not KSR.pv.get("$rb")
                and KSR.pv.geti("$ml") <= limit):
            # A small request without a body (BYE, ACK, CANCEL) fits as it is.
            return WorkerBody(None)
        call_id = KSR.pv.get("$ci")
        method = KSR.pv.get("$rm")
        try:
            if message is None:
                message = parse_message(KSR.pv.get("$mb").encode("utf-8", "replace"))
            if len(message.body) > MAX_BODY_BYTES:
                raise MessageTooLarge(
                    f"body of {len(message.body)} bytes, max {MAX_BODY_BYTES}", 513)
            normalized = normalize_for_worker(message, limit)
            sdp = normalized.sdp
            if sdp is not None and method != "ACK":
                sdp = self.incoming_offer_rules.apply(
                    sdp, LegContext(direction=OFFER, initial=initial), in_place=True)
                if srtp is not None:
                    encryption_answer(sdp, srtp)
        except SipParseError as error:
            KSR.info(f"call {call_id}: unreadable {method} ({error}); 400\n")
            self._reply_error(400, "Bad Request", str(error))
            return None
        except MessageTooLarge as error:
            KSR.info(f"call {call_id}: {method} too large for a worker "
                     f"({error.reason}); {error.status}\n")
            phrase = "Message Too Large" if error.status == 513 else "Not Acceptable Here"
            self._reply_error(error.status, phrase, error.reason)
            return None
        except SdpError as error:
            reason = "Not Acceptable Here" if error.status == 488 else "Bad SDP"
            KSR.info(f"call {call_id}: SDP of {method} rejected ({error.reason}); "
                     f"{error.status}\n")
            self._reply_error(error.status, reason, error.reason)
            return None
        for name in normalized.remove_headers:
            KSR.hdr.remove(name)
        if sdp is not None:
            body = sdp.to_bytes()
            if body != message.body or normalized.content_type is not None:
                KSR.textops.set_body(body.decode("utf-8", "replace"),
                                     "application/sdp")
        if normalized.steps:
            KSR.info(f"call {call_id}: {method} normalised for the worker: "
                     f"{'; '.join(normalized.steps)}\n")
        return WorkerBody(sdp)

    def _reply_error(self, status: int, reason: str, warning_text: str) -> None:
        text = warning_text.replace("\\", "\\\\").replace('"', "'")
        text = " ".join(text.split())[:200]
        KSR.hdr.append_to_reply(f'Warning: 399 {WARNING_AGENT} "{text}"\r\n')
        if KSR.pv.get("$rm") == "ACK":
            return
        # send_reply answers statefully when a transaction exists.
        KSR.sl.send_reply(status, reason)

    # ----- helpers --------------------------------------------------------------

    def _reply_to_unparsable(self, parsed_problem: str | None) -> None:
        """Send 400 to a request whose header lines Kamailio cannot parse.

        Kamailio's reply builder parses every header, so sanity cannot
        reply to such a request and the caller would retransmit until its
        timer fires. The response is built from the raw bytes instead.
        When the edge's own parser reads the request, the failing Kamailio
        module has already replied. The exception is `parsed_problem`: it
        names what the module failed on, and the 400 goes out through sl
        with it as the Warning.
        """
        data = (KSR.pv.get("$mb") or "").encode("utf-8", "surrogateescape")
        try:
            parse_message(data)
            if parsed_problem is not None:
                self._reply_error(400, "Bad Request", parsed_problem)
            return
        except SipParseError as error:
            problem = str(error)
        call_id = KSR.pv.get("$ci") or "?"
        if KSR.pv.get("$rm") == "ACK":
            KSR.info(f"call {call_id}: unparsable ACK from {self._source()} "
                     f"({problem}); dropped\n")
            return
        reply = error_response_for_unparsable(data, 400, "Bad Request", problem,
                                              WARNING_AGENT)
        if reply is None:
            KSR.info(f"call {call_id}: unparsable request from {self._source()} "
                     f"({problem}) lacks the headers a response needs; dropped\n")
            return
        address = KSR.pv.get("$Ri") or ""
        if ":" in address:
            address = f"[{address}]"
        socket = f"{KSR.pv.get('$pr')}:{address}:{KSR.pv.get('$Rp')}"
        KSR.info(f"call {call_id}: unparsable request from {self._source()} "
                 f"({problem}); 400\n")
        KSR.corex.sendx(KSR.pv.get("$su"), socket, reply.decode("utf-8"))

    def _source(self) -> str:
        return (f"{KSR.pv.get('$pr')}:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}")

    def _worker_for_source(self) -> dict[str, Any] | None:
        received = (KSR.pv.get("$Ri"), int(KSR.pv.get("$Rp") or 0))
        if received != self.internal_key:
            return None
        return self.worker_by_source.get(f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}")

    def _listener(self) -> dict[str, Any] | None:
        """Return the listener that received the request, or None."""
        address, port = KSR.pv.get("$Ri"), int(KSR.pv.get("$Rp") or 0)
        for listener in self.listeners:
            if listener["port"] == port and listener["address"] in (address, "0.0.0.0"):
                return listener
        return None

    def _send_socket(self, service: str) -> str | None:
        """Return the socket an outgoing leg of `service` leaves from."""
        uri = (KSR.pv.get("$ru") or "").lower()
        wanted = "tcp" if "transport=tcp" in uri else "udp"
        entry = self.services.get(service)
        if entry is None:
            KSR.warn(f"edge: unknown service {service!r} on an outgoing leg\n")
            return None
        for listener in entry["listeners"]:
            if wanted in listener["transports"]:
                return f"{wanted}:{listener['address']}:{listener['port']}"
        return None

    def _edge_policy(self, call_class: str, listener: dict[str, Any] | None,
                     service: str,
                     offer: SessionDescription | None) -> tuple[str, str]:
        """Return the edge leg's policy name and a note for the log line.

        `offer` is the SDP the worker gets, None for an INVITE without one.
        """
        class_policy = self.classes.get(call_class) or {}
        listener_ice = bool(listener.get("ice", True)) if listener else True
        ice = listener_ice and bool(class_policy.get("ice", True))
        turn_configured = bool(self.services[service].get("turn"))
        turn = ice and turn_configured and bool(class_policy.get("turn", False))
        srtp = self._class_srtp(call_class)
        note = ""
        if (ice and offer is not None
                and not class_policy.get("plain_callers_via_turn", False)):
            # pjsua would reply to such an offer with its TURN relay as the
            # media address. Media to the worker's own address skips that
            # hop, and a NATed caller's RTP would not match the relay's
            # permission anyway.
            if not sdp_has_ice(offer):
                ice = turn = False
                note = " (the offer has no ICE)"
        return media_policy.MediaPolicy(ice=ice, turn=turn, srtp=srtp).name, note

    def _class_srtp(self, call_class: str) -> str:
        """Return the SRTP mode of a call class's edge legs."""
        return str((self.classes.get(call_class) or {}).get("srtp", "optional"))

    def _profile_size(self, worker_id: str) -> int:
        KSR.dialog.get_profile_size("worker_load", worker_id, "$var(load)")
        return int(KSR.pv.geti("$var(load)") or 0)

    def _pick_worker(self, exclude: set[str] | None = None) -> dict[str, Any] | None:
        """Pick a live worker with a free slot that is under its setup rate.

        Workers that already bridge a call come first: a second call costs
        a worker far less CPU than a first call costs an idle one, whose
        conference clock then starts ticking. A worker whose call ended in
        the last CALL_ENDED_COOLDOWN_S comes after all others. Counts the
        call in the worker's dialog profiles and adds the worker to the
        call's tried list. Runs under an htable lock so that two Kamailio
        children cannot both see the same free slot.
        """
        now = time.time()
        window = setup_window(float(self.runtime.get("max_setups_per_second", 4)))
        KSR.htable.sht_lock("workerlock", "pick")
        try:
            candidates = []
            count = len(self.workers)
            self.rotation = (self.rotation + 1) % max(count, 1)
            for offset in range(count):
                worker = self.workers[(self.rotation + offset) % count]
                if exclude and worker["id"] in exclude:
                    continue
                load = self._profile_size(worker["id"])
                if load >= BRIDGED_CALLS_PER_WORKER:
                    continue
                candidates.append((load, offset, worker))
            candidates.sort(key=lambda item: (-item[0], item[1]))
            cooling = []
            for load, _offset, worker in candidates:
                # An idle worker has room for a call even while it tears down
                # the last one.
                if load and self._ended_call_recently(worker["id"], now):
                    cooling.append(worker)
                elif self._claim_worker(worker, window, now):
                    return worker
            for worker in cooling:
                if self._claim_worker(worker, window, now):
                    return worker
            return None
        finally:
            KSR.htable.sht_unlock("workerlock", "pick")

    def _ended_call_recently(self, worker_id: str, now: float) -> bool:
        ended = KSR.htable.sht_get("callended", worker_id)
        if not ended:
            return False
        try:
            return now - float(ended) < CALL_ENDED_COOLDOWN_S
        except ValueError:
            return False

    def _claim_worker(self, worker: dict[str, Any], window: SetupWindow,
                      now: float) -> bool:
        """Count the call on `worker` if it is active and under its setup rate."""
        # Checked last: the dispatcher searches its whole set per URI.
        uri = f"sip:{worker['address']}:{worker['port']}"
        if KSR.dispatcher.ds_is_active_uri(DISPATCHER_SET, uri) < 0:
            return False
        key = window.key(worker["id"], now)
        # NOTE: the rate limit keeps pjlib's 64-entry socket table from
        # running dry; see docs/limitations.md.
        setups = KSR.htable.sht_inc("setups", key)
        if setups < 1:
            # sht_inc returns -255 when it cannot count; a worker
            # without a working rate limit is not safe to use.
            KSR.err(f"edge: setup counter {key} failed ({setups})\n")
            return False
        if setups > window.limit:
            return False
        if KSR.dialog.is_known_dlg() < 0:
            KSR.dialog.dlg_manage()
        KSR.dialog.set_dlg_profile("worker_load", worker["id"])
        KSR.dialog.set_dlg_profile("worker_any", worker["id"])
        KSR.pv.sets(WORKER_DIALOG_VAR, worker["id"])
        tried = KSR.pv.get(TRIED_WORKERS_AVP) or ""
        KSR.pv.sets(TRIED_WORKERS_AVP, f"{tried},{worker['id']}".lstrip(","))
        return True
