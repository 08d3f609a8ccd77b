"""A pjsua2 worker process: terminates both legs of up to two bridged calls.

The edge (Kamailio) sends each worker INVITEs that already carry the routing
decision in `X-B2BUA-*` headers and a request-URI whose host names the media
policy (see `policy.py`). The worker accepts the call on the edge leg, places the
outgoing leg toward the target through the edge, and bridges audio through
pjsua's conference bridge. Every pjsua2 call happens on the one thread that
runs the event loop, because this pjsip build aborts otherwise.

Run as `python3 -m b2bua.worker --runtime FILE --index N`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from b2bua import policy as media_policy
from b2bua import probe
from b2bua.legs import WORKER_FULL_REASON, CallPair, Leg, TargetSpec, guarded
from b2bua.sdp_rewrite import RuleSet, compile_rules
from b2bua.sipmsg import SipParseError, name_addr_uri, parse_message

log = logging.getLogger("b2bua.worker")

# pjsua's compiled PJSUA_MAX_CALLS: two bridged calls of two legs each.
MAX_BRIDGED_CALLS = 2
EVENT_LOOP_TIMEOUT_MS = 100
IDLE_EVENT_LOOP_TIMEOUT_MS = 1000
HOUSEKEEPING_INTERVAL_S = 0.1
STATUS_INTERVAL_S = 2.0
# Idle workers write less often; `b2bua status` and the supervisor's
# watchdog allow 10 s and 30 s before they call a worker stuck.
IDLE_STATUS_INTERVAL_S = 5.0
TURN_REPROBE_INTERVAL_S = 60.0
# Worst case of one probe round: three transports, each 1 s x 2 tries.
TURN_STARTUP_PROBE_WAIT_S = 7.0


class WorkerStartError(RuntimeError):
    """A worker cannot start, with the reason and the setting to change."""


@dataclass
class WorkerSettings:
    """Settings of one worker, read from the supervisor's runtime file."""

    index: int
    worker_id: str
    sip_address: str
    sip_port: int
    edge_uri: str
    media_address: str
    media_port: int
    media_port_range: int
    stun: list[str]
    turn: list[dict[str, Any]]
    # Account keys ("service/policy"), one pjsua account each.
    accounts: list[str]
    # Per network service: media address, this worker's ports, TURN servers.
    services: dict[str, dict[str, Any]]
    no_answer_timeout: float
    max_duration: float
    media_timeout: float
    # RTP handled by a pjmedia thread instead of this process's event loop.
    media_thread: bool
    status_file: str
    log_level: str
    # Operator SDP rules (b2bua.sdp_rewrite) per call class and per target.
    class_sdp_rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    target_sdp_rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any], index: int) -> WorkerSettings:
        worker = runtime["workers"][index]
        services = {
            service["name"]: {
                "media_address": service["media_address"],
                "media_port": worker["media"][service["name"]]["port"],
                "media_port_range": worker["media"][service["name"]]["range"],
                "turn": list(service["turn"]),
            }
            for service in runtime["services"]
        }
        first = services[runtime["services"][0]["name"]]
        return cls(
            index=index,
            worker_id=worker["id"],
            sip_address=worker["address"],
            sip_port=worker["port"],
            edge_uri=runtime["edge_internal_uri"],
            media_address=first["media_address"],
            media_port=first["media_port"],
            media_port_range=first["media_port_range"],
            stun=list(runtime["stun"]),
            turn=list(runtime["turn"]),
            accounts=list(runtime["accounts"]),
            services=services,
            class_sdp_rules={
                name: list(policy.get("sdp_rules") or [])
                for name, policy in runtime["classes"].items()
            },
            target_sdp_rules={
                name: list(target.get("sdp_rules") or [])
                for name, target in runtime["dialplan"].get("targets", {}).items()
            },
            no_answer_timeout=float(runtime["no_answer_timeout"]),
            max_duration=float(runtime["max_duration"]),
            media_timeout=float(runtime.get("media_timeout", 60)),
            media_thread=bool(runtime.get("media_thread", False)),
            status_file=worker["status_file"],
            log_level=runtime["log_level"],
        )


class PolicyAccount(pj.Account):
    """One pjsua account per media policy; incoming calls pick it by host."""

    def __init__(self, worker: Worker, key: str) -> None:
        super().__init__()
        self.worker = worker
        self.key = key
        self.service, self.policy_name = media_policy.split_account_key(key)

    @guarded
    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802 (pjsua2 API)
        self.worker.on_incoming_call(self, prm)


class Worker:
    """The worker's state: endpoint, accounts, and the call pairs it bridges."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.endpoint = pj.Endpoint()
        self.accounts: dict[str, PolicyAccount] = {}
        self.pairs: list[CallPair] = []
        # Operator SDP rules per call class (edge leg) and per target name.
        self.class_sdp_rules: dict[str, RuleSet] = {
            name: compile_rules(list(rules), where=f"classes.{name}.sdp_rules")
            for name, rules in settings.class_sdp_rules.items() if rules
        }
        self.target_sdp_rules: dict[str, RuleSet] = {
            name: compile_rules(list(rules), where=f"targets.{name}.sdp_rules")
            for name, rules in settings.target_sdp_rules.items() if rules
        }
        # Legs rejected before a pair existed; kept until pjsua disconnects them.
        self.rejected_legs: list[Leg] = []
        self.stopping = False
        self.started_at = time.monotonic()
        self.calls_handled = 0
        self._last_status = 0.0
        self._last_status_text = ""
        self.turn_monitor: probe.TurnTransportMonitor | None = None
        if settings.turn:
            turn = settings.turn[0]
            self.turn_monitor = probe.TurnTransportMonitor(
                turn["server"], turn.get("transport", "udp"),
                tls_verify=bool(turn.get("tls_verify", True)),
                interval=TURN_REPROBE_INTERVAL_S,
            )

    # ----- lifecycle -------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        if self.turn_monitor is not None:
            # Runs while pjsua starts up; the accounts wait for its result.
            self.turn_monitor.probe_now()
        ep_cfg = pj.EpConfig()
        ep_cfg.uaConfig.threadCnt = 0
        ep_cfg.uaConfig.mainThreadOnly = False
        ep_cfg.uaConfig.maxCalls = 2 * MAX_BRIDGED_CALLS
        ep_cfg.uaConfig.userAgent = "b2bua-worker"
        ep_cfg.uaConfig.stunServer = pj.StringVector(s.stun)
        ep_cfg.uaConfig.stunIgnoreFailure = True
        debug = s.log_level == "debug"
        ep_cfg.logConfig.level = 5 if debug else 1
        ep_cfg.logConfig.consoleLevel = 4 if debug else 1
        ep_cfg.logConfig.msgLogging = 1 if debug else 0
        ep_cfg.logConfig.decor = 0x2 | 0x8 | 0x40  # time, sender, newline
        # G.711 needs no resampling at 8 kHz, which costs a third of the CPU.
        ep_cfg.medConfig.clockRate = 8000
        ep_cfg.medConfig.sndClockRate = 8000
        # Without a media thread, RTP sockets join pjsip's I/O queue, which
        # this loop polls (ICE sockets are there in any case). A media thread
        # cost an idle worker about 0.15% of a core (docs/performance.md).
        ep_cfg.medConfig.hasIoqueue = s.media_thread
        ep_cfg.medConfig.threadCnt = 1 if s.media_thread else 0
        ep_cfg.medConfig.noVad = True
        ep_cfg.medConfig.ecTailLen = 0
        self.endpoint.libCreate()
        self.endpoint.libInit(ep_cfg)

        tp_cfg = pj.TransportConfig()
        tp_cfg.boundAddress = s.sip_address
        tp_cfg.port = s.sip_port
        try:
            self.endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, tp_cfg)
        except pj.Error as error:
            raise WorkerStartError(
                f"worker {s.worker_id}: cannot listen on UDP {s.sip_address}:"
                f"{s.sip_port} ({error.reason}); free the port or change "
                "workers.sip_port_base"
            ) from None
        self.endpoint.audDevManager().setNullDev()
        self.endpoint.libStart()
        self._set_codec_priorities()

        if self.turn_monitor is not None:
            self.turn_monitor.wait(TURN_STARTUP_PROBE_WAIT_S)
            change = self.turn_monitor.take_change()
            if change is not None:
                self.turn_monitor.applied(change)
        for key in s.accounts:
            self.accounts[key] = self._create_account(key)
        log.debug(
            "worker %s ready on %s:%d, media %s:%d-%d, accounts %s",
            s.worker_id, s.sip_address, s.sip_port, s.media_address,
            s.media_port, s.media_port + s.media_port_range - 1,
            ", ".join(s.accounts),
        )
        self.write_status(force=True)

    def _set_codec_priorities(self) -> None:
        # G.711 first; the bridge runs at 8 kHz and wideband codecs would make
        # it resample every frame.
        wanted = {"PCMU/8000": 255, "PCMA/8000": 254, "G722/16000": 120,
                  "telephone-event/8000": 100}
        for codec in self.endpoint.codecEnum2():
            codec_id = codec.codecId
            short = codec_id.rsplit("/", 1)[0] if codec_id.count("/") > 1 else codec_id
            self.endpoint.codecSetPriority(codec_id, wanted.get(short, 0))

    def _create_account(self, key: str) -> PolicyAccount:
        account = PolicyAccount(self, key)
        account.create(self._account_config(key))
        return account

    def _account_config(self, key: str) -> Any:
        s = self.settings
        service_name, policy_name = media_policy.split_account_key(key)
        service = s.services[service_name]
        policy = media_policy.parse_policy_name(policy_name)
        cfg = pj.AccountConfig()
        cfg.idUri = f"sip:b2bua@{media_policy.policy_host(policy_name, service_name)}"
        cfg.regConfig.registrarUri = ""
        cfg.regConfig.registerOnAdd = False
        cfg.sipConfig.proxies = pj.StringVector([s.edge_uri])
        cfg.mediaConfig.transportConfig.port = service["media_port"]
        cfg.mediaConfig.transportConfig.portRange = service["media_port_range"]
        cfg.mediaConfig.transportConfig.boundAddress = service["media_address"]
        cfg.mediaConfig.srtpUse = {
            "off": pj.PJMEDIA_SRTP_DISABLED,
            "optional": pj.PJMEDIA_SRTP_OPTIONAL,
            "required": pj.PJMEDIA_SRTP_MANDATORY,
        }[policy.srtp]
        cfg.mediaConfig.srtpSecureSignaling = 0
        nat = cfg.natConfig
        nat.iceEnabled = policy.ice
        nat.sdpNatRewriteUse = 0
        nat.viaRewriteUse = 0
        nat.contactRewriteUse = 0
        nat.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        nat.mediaStunUse = (
            pj.PJSUA_STUN_USE_DEFAULT if policy.ice and s.stun
            else pj.PJSUA_STUN_USE_DISABLED
        )
        turn_use = self.turn_for(service_name, policy_name)
        if turn_use is not None:
            turn, server, transport = turn_use
            nat.turnEnabled = True
            nat.turnServer = server
            nat.turnConnType = {
                "udp": pj.PJ_TURN_TP_UDP,
                "tcp": pj.PJ_TURN_TP_TCP,
                "tls": pj.PJ_TURN_TP_TLS,
            }[transport]
            nat.turnUserName = turn.get("username", "")
            nat.turnPasswordType = 0
            nat.turnPassword = turn.get("password", "")
        return cfg

    def turn_for(self, service_name: str,
                 policy_name: str) -> tuple[dict[str, Any], str, str] | None:
        """Return (TURN entry, server, transport) an account uses, or None.

        The transport is the configured one, or the TURN monitor's current
        choice when the monitor watches that server.
        """
        policy = media_policy.parse_policy_name(policy_name)
        service = self.settings.services.get(service_name)
        if not (policy.ice and policy.turn and service and service["turn"]):
            return None
        # NOTE: pjsua takes one TURN server per account: the service's first.
        turn = service["turn"][0]
        transport = str(turn.get("transport", "udp"))
        server = str(turn["server"])
        monitored = bool(self.settings.turn) and self.settings.turn[0]["server"] == server
        if self.turn_monitor is not None and monitored:
            transport = str(self.turn_monitor.current)
            server = self.turn_monitor.server_for(transport)
        return turn, server, transport

    def _update_turn_transport(self, now: float) -> None:
        """Re-probe the TURN server when due, and apply a change between calls.

        Account.modify would disturb the media of a running call, so a new
        transport waits until the worker has no calls.
        """
        monitor = self.turn_monitor
        if monitor is None:
            return
        monitor.probe_if_due(now)
        change = monitor.take_change()
        if change is None or self.pairs or self.rejected_legs:
            return
        previous = monitor.current
        monitor.current = change
        try:
            for key, account in self.accounts.items():
                if media_policy.parse_policy_name(account.policy_name).turn:
                    account.modify(self._account_config(key))
        except pj.Error as error:
            log.warning("worker %s: switching TURN to %s failed: %s",
                        self.settings.worker_id, change.upper(), error.info())
            monitor.discard_change()
            return
        finally:
            monitor.current = previous
        monitor.applied(change)

    def run(self) -> None:
        next_housekeeping = 0.0
        while True:
            # pjsip returns early for every SIP event and timer, so a long
            # wait only delays this loop's own checks, which idle workers
            # do not need.
            busy = bool(self.pairs or self.rejected_legs or self.stopping)
            self.endpoint.libHandleEvents(
                EVENT_LOOP_TIMEOUT_MS if busy else IDLE_EVENT_LOOP_TIMEOUT_MS)
            now = time.monotonic()
            # Without a media thread, incoming RTP returns here too, up to 100
            # times a second per bridged call. The checks below run ten times
            # a second, which is precise enough for their timers.
            if now < next_housekeeping:
                continue
            next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
            self.rejected_legs = [leg for leg in self.rejected_legs
                                  if not leg.disconnected]
            for pair in list(self.pairs):
                try:
                    pair.on_tick(now)
                except Exception:  # noqa: BLE001 - one call's bug must not stop the loop
                    log.exception("call %s: error in timer handling", pair.call_id)
                    pair.end_both("internal error", 500)
                if pair.finished:
                    self.pairs.remove(pair)
                    self.write_status(force=True)
                    if self.turn_monitor is not None and "ICE" in pair.end_reason:
                        # A failed TURN allocation shows up as failed ICE.
                        self.turn_monitor.probe_now()
            self._update_turn_transport(now)
            self.write_status()
            if self.stopping:
                if not self.pairs:
                    break
                if now - self._stop_requested > 5.0:
                    log.warning("worker %s: calls did not end within 5 s; exiting",
                                self.settings.worker_id)
                    break

    def request_stop(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._stop_requested = time.monotonic()
        log.log(logging.INFO if self.pairs else logging.DEBUG,
                "worker %s: signal %d, ending %d call(s)",
                self.settings.worker_id, signum, len(self.pairs))
        for pair in self.pairs:
            pair.end_both("worker shutting down", 503)

    def shutdown(self) -> None:
        self.pairs.clear()
        self.rejected_legs.clear()
        for account in self.accounts.values():
            account.shutdown()
        self.accounts.clear()
        gc.collect()
        self.endpoint.libDestroy()

    # ----- calls -----------------------------------------------------------

    def on_incoming_call(self, account: PolicyAccount, prm: Any) -> None:
        s = self.settings
        call_id = "?"
        try:
            message = parse_message(prm.rdata.wholeMsg.encode("utf-8", "replace"))
            call_id = message.header("Call-ID") or "?"
        except SipParseError as error:
            log.warning("call ?: unreadable INVITE from the edge (%s); 400", error)
            Leg.reject_incoming(account, prm.callId, 400, "Bad Request")
            return
        active = [pair for pair in self.pairs if not pair.finished]
        if self.stopping or len(active) >= MAX_BRIDGED_CALLS:
            log.warning("call %s: worker %s full (%d bridged calls); 503",
                        call_id, s.worker_id, len(active))
            Leg.reject_incoming(account, prm.callId, 503, WORKER_FULL_REASON)
            return
        target = TargetSpec.from_headers(message)
        if target is None:
            log.warning("call %s: no X-B2BUA-Route from the edge; 500", call_id)
            Leg.reject_incoming(account, prm.callId, 500, "Missing Route")
            return
        call_class = message.header("X-B2BUA-Class") or ""
        caller = name_addr_uri(message.header("From") or "")
        source = message.header("X-B2BUA-Source") or prm.rdata.srcAddress
        pair = CallPair(
            worker=self,
            call_id=call_id,
            target=target,
            caller_uri=caller,
            call_class=call_class,
            no_answer_timeout=target.answer_timeout or s.no_answer_timeout,
            max_duration=s.max_duration,
            media_timeout=s.media_timeout,
        )
        self.pairs.append(pair)
        self.calls_handled += 1
        log.info("call %s: received from %s (%s) to %s, class %s, service %s, "
                 "policy %s", call_id, caller, source, message.request_uri,
                 call_class.split(";", 1)[0] or "unset", account.service,
                 account.policy_name)
        offer = None
        if message.content_type() == "application/sdp" and message.body.strip():
            offer = message.body.decode("utf-8", "replace")
        pair.accept_incoming(account, prm.callId, offer)
        self.write_status(force=True)

    def account_for(self, service: str, policy_name: str) -> PolicyAccount | None:
        return self.accounts.get(media_policy.account_key(service, policy_name))

    # ----- status ----------------------------------------------------------

    def write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        interval = STATUS_INTERVAL_S if self.pairs else IDLE_STATUS_INTERVAL_S
        if not force and now - self._last_status < interval:
            return
        self._last_status = now
        status = {
            "worker": self.settings.worker_id,
            "pid": os.getpid(),
            "bridged_calls": len([p for p in self.pairs if not p.finished]),
            "pjsua_calls": sum(p.live_leg_count() for p in self.pairs)
            + len(self.rejected_legs),
            # Slot 0 of the conference bridge is the null sound device.
            "conference_ports": int(self.endpoint.mediaActivePorts()) - 1,
            "open_sockets": count_open_sockets(),
            "calls_handled": self.calls_handled,
            "uptime_s": round(now - self.started_at, 1),
            "stopping": self.stopping,
            "calls": [
                {"call_id": pair.call_id, "class": pair.class_name,
                 "target": pair.target.name,
                 "age_s": round(now - pair.created),
                 "answered": pair.answered_at is not None}
                for pair in self.pairs if not pair.finished
            ],
        }
        text = json.dumps(status, sort_keys=True)
        if text == self._last_status_text and not force:
            return
        self._last_status_text = text
        tmp = self.settings.status_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, self.settings.status_file)


def count_open_sockets() -> int:
    count = 0
    try:
        for entry in os.scandir("/proc/self/fd"):
            try:
                if os.readlink(entry.path).startswith("socket:"):
                    count += 1
            except OSError:
                continue
    except OSError:
        return -1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="b2bua pjsua2 worker")
    parser.add_argument("--runtime", required=True, help="runtime JSON file")
    parser.add_argument("--index", type=int, required=True, help="worker index")
    args = parser.parse_args(argv)
    with open(args.runtime, encoding="utf-8") as handle:
        runtime = json.load(handle)
    settings = WorkerSettings.from_runtime(runtime, args.index)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {settings.worker_id} %(message)s",
        stream=sys.stderr,
        # A worker forked from the supervisor inherits its handlers.
        force=True,
    )
    if settings.log_level != "debug":
        # pjlib prints its start-up banner to stdout before any log level
        # applies; at the default level the operator wants only our lines.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        try:
            worker.start()
        except WorkerStartError as error:
            log.error("%s", error)
            return 1
        worker.run()
    finally:
        worker.shutdown()
    log.debug("worker %s stopped", settings.worker_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
