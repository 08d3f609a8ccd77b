"""`b2bua run`: start and watch the Kamailio edge and the pjsua2 workers.

The supervisor validates the config, writes the edge's files into the
runtime folder, starts Kamailio and N workers, and restarts whatever dies.
When a worker dies its calls are ended at the edge (BYE to the far ends,
through the dialog module) and its load is dropped at once, so new calls do
not wait for the dialogs to time out.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from b2bua import forked
from b2bua import policy as media_policy
from b2bua.config import (
    Config,
    Listener,
    ServiceConfig,
    TurnServer,
    resolve_media_address,
)
from b2bua.edge import kamcfg
from b2bua.edge.dialogs import EdgeDialog, parse_dialog_list

log = logging.getLogger("b2bua.supervisor")

KAMAILIO = "/usr/sbin/kamailio"
KAMCMD = "/usr/sbin/kamcmd"
POLL_INTERVAL_S = 0.2
WAIT_POLL_S = 0.05
# A worker whose status file is older than this is hung and gets killed.
WORKER_STALL_S = 30.0
STOP_TIMEOUT_S = 8.0
# Restarting faster than this after a crash loop would only burn CPU.
MAX_RESTART_BACKOFF_S = 10.0
WORKER_FAILED_REASON = 'SIP;cause=500;text="media worker failed"'
WORKER_FAILED_RETRY_AFTER_S = 2


_KAMAILIO_LINE = re.compile(
    r"^\s*\d+\(\d+\) (?P<level>[A-Z]+): (?:\{[^}]*\} )?(?P<module><[^>]+>|\S+)"
    r" \[[^\]]+\]: (?P<function>\w+\(\): )?(?P<text>.*)$"
)
_KAMAILIO_LEVELS = {
    "ALERT": logging.CRITICAL, "BUG": logging.CRITICAL, "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": logging.INFO,
    "INFO": logging.INFO, "DEBUG": logging.DEBUG,
}


# Kamailio 5.6 logs these at ERROR or WARNING for each request with a header
# line it cannot parse, eight lines for one request. The routing script logs
# one line of its own for such a request, with the call id and the line, so
# these are demoted to DEBUG.
_MALFORMED_REQUEST_NOISE = (
    "invalid header name for",
    "bad header field",
    "bad header",
    "alas, parse_headers failed",
    "failed to parse headers",
    "failed to send 400 reply",
)
# Repeats of the same WARNING or ERROR line from the edge within this many
# seconds are counted instead of logged.
EDGE_REPEAT_WINDOW_S = 10.0


def parse_kamailio_log_line(line: str) -> tuple[int, str] | None:
    """Map one line of Kamailio's stderr to a Python log level and text.

    Lines the routing script logs keep their level. Kamailio's own INFO
    chatter (module start-up, listener lists) and its per-request errors
    about malformed headers are demoted to DEBUG.
    """
    line = line.rstrip()
    if not line:
        return None
    match = _KAMAILIO_LINE.match(line)
    if match is None:
        return logging.DEBUG, line
    level = _KAMAILIO_LEVELS.get(match.group("level"), logging.INFO)
    text = match.group("text")
    from_script = (match.group("function") or "").startswith("sr_kemi_core_")
    if level == logging.INFO and not from_script:
        level = logging.DEBUG
    if not from_script and text.startswith(_MALFORMED_REQUEST_NOISE):
        level = logging.DEBUG
    if not from_script:
        text = f"{match.group('module')}: {text}"
    return level, text


class RepeatLimiter:
    """Count repeats of a log line instead of logging each one.

    The first line of a kind is logged. Identical lines within `window_s`
    are counted, and the next one logged after the window carries the count.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        # text -> (time the text was last logged, repeats since then)
        self.seen: dict[str, tuple[float, int]] = {}

    def admit(self, text: str, now: float) -> str | None:
        """Return the line to log for `text` at `now`, or None to skip it."""
        last = self.seen.get(text)
        if last is not None and now - last[0] < self.window_s:
            self.seen[text] = (last[0], last[1] + 1)
            return None
        repeats = last[1] if last is not None else 0
        self.seen[text] = (now, 0)
        if len(self.seen) > 1000:
            # Lines with unique text (call ids) never repeat, so drop them.
            self.seen = {k: v for k, v in self.seen.items()
                         if now - v[0] < self.window_s}
        if repeats:
            return f"{text} ({repeats} more in the last {now - last[0]:.0f} s)"
        return text


class SupervisorError(RuntimeError):
    """A start-up failure with a message an operator can act on."""


def build_runtime(cfg: Config, media_addresses: dict[str, str]) -> dict[str, Any]:
    """Describe everything the edge and the workers need, as plain JSON.

    `media_addresses` maps each network service to its resolved media
    address. The first service's media, STUN and TURN also appear at the
    top level, where the worker's TURN probe reads them.
    """
    count = cfg.workers.count
    status_dir = os.path.join(cfg.runtime_dir, "workers")
    workers: list[dict[str, Any]] = []
    for index in range(count):
        workers.append({
            "id": f"w{index}",
            "address": cfg.edge.internal_address,
            "port": cfg.workers.sip_port_base + index,
            "media": {},
            "status_file": os.path.join(status_dir, f"w{index}.json"),
        })
    services = []
    account_keys: list[str] = []
    for service in cfg.services:
        media = service.media
        span = media.port_max - media.port_min + 1
        per_worker = span // count
        if per_worker < 8:
            raise SupervisorError(
                f"service {service.name}: media ports {media.port_min}-"
                f"{media.port_max} give each of {count} workers only {per_worker}"
                " ports; widen port_min/port_max or lower workers.count (each "
                "worker needs at least 8)"
            )
        for index, worker in enumerate(workers):
            worker["media"][service.name] = {
                "port": media.port_min + index * per_worker,
                "range": per_worker,
            }
        policies = service_policies(cfg, service)
        account_keys += [media_policy.account_key(service.name, name)
                         for name in policies]
        services.append({
            "name": service.name,
            "listeners": [_listener_dict(service.name, l) for l in service.listen],
            "media_address": media_addresses[service.name],
            "stun": list(service.ice.stun),
            "turn": [_turn_dict(t) for t in service.ice.turn],
            "classification": service.classification,
            "policies": policies,
        })
    if len(account_keys) > media_policy.MAX_ACCOUNTS:
        raise SupervisorError(
            f"the config needs {len(account_keys)} pjsua accounts per worker "
            f"({', '.join(account_keys)}) but a worker holds at most "
            f"{media_policy.MAX_ACCOUNTS}; use fewer services, or make the "
            "classes: and targets: policies share ice/turn/srtp settings"
        )
    first = services[0]
    classes = {
        name: {"ice": p.ice, "turn": p.turn, "srtp": p.srtp,
               "sdp_rules": [dict(rule) for rule in p.sdp_rules],
               "plain_callers_via_turn": p.plain_callers_via_turn}
        for name, p in cfg.classes.items()
    }
    internal = {"address": cfg.edge.internal_address, "port": cfg.edge.internal_port}
    # STUN servers are global to a pjsua endpoint, so workers use them all.
    stun_servers = sorted({server for service in services for server in service["stun"]})
    return {
        "config_file": cfg.source_file,
        "log_level": cfg.log_level,
        "services": services,
        "listeners": [l for service in services for l in service["listeners"]],
        "edge_internal": internal,
        "edge_internal_uri": f"sip:{internal['address']}:{internal['port']};lr",
        "workers": workers,
        "media_address": first["media_address"],
        "stun": stun_servers,
        "turn": first["turn"],
        "accounts": account_keys,
        "srtp": cfg.srtp,
        "no_answer_timeout": cfg.calls.no_answer_timeout,
        "max_duration": cfg.calls.max_duration,
        "media_timeout": cfg.calls.media_timeout,
        "max_setups_per_second": cfg.workers.max_setups_per_second,
        "media_thread": cfg.workers.media_thread,
        "expose_class_header": cfg.expose_class_header,
        "dialplan": cfg.dialplan.to_dict(),
        "classification": first["classification"],
        "federation": cfg.federation,
        "classes": classes,
    }


def _listener_dict(service: str, listener: Listener) -> dict[str, Any]:
    return {
        "service": service, "address": listener.address, "port": listener.port,
        "transports": list(listener.transports), "ice": listener.ice,
        "advertise": listener.advertise,
    }


def _turn_dict(turn: TurnServer) -> dict[str, Any]:
    return {"server": turn.server, "transport": turn.transport,
            "username": turn.username, "password": turn.password,
            "tls_verify": turn.tls_verify}


def service_policies(cfg: Config, service: ServiceConfig) -> list[str]:
    """List the media policies calls on a service can need, one account each.

    Edge legs take the policy of their listener and call class. Outgoing
    legs take their target's; a target without a service leaves through
    the service the call arrived on, so every service needs its policy.
    """
    names: set[str] = set()
    turn_configured = bool(service.ice.turn)
    for listener in service.listen:
        for class_policy in cfg.classes.values():
            ice = listener.ice and class_policy.ice
            names.add(media_policy.MediaPolicy(
                ice=ice, turn=ice and turn_configured and class_policy.turn,
                srtp=class_policy.srtp,
            ).name)
            if ice and not class_policy.plain_callers_via_turn:
                # For callers whose offer has no ICE (see the edge).
                names.add(media_policy.MediaPolicy(
                    ice=False, turn=False, srtp=class_policy.srtp).name)
    for target in cfg.dialplan.targets.values():
        if target.kind == "sip" and target.service in (None, service.name):
            names.add(media_policy.MediaPolicy(
                ice=target.ice, turn=False, srtp=target.srtp).name)
    return sorted(names)


ChildProcess = subprocess.Popen[bytes] | forked.ForkedWorker


@dataclass
class Child:
    """A process the supervisor runs and restarts."""

    name: str
    argv: list[str]
    process: ChildProcess | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.runtime_dir = cfg.runtime_dir
        self.stopping = False
        self.children: list[Child] = []
        self.edge: Child | None = None
        self.paths: dict[str, str] = {}
        self.lock_file: Any = None
        self.runtime: dict[str, Any] = {}
        # The edge's log pipe is read in the main loop rather than by a
        # thread, so that the supervisor can fork workers safely.
        self.edge_log = selectors.DefaultSelector()
        self.edge_log_partial = b""
        self.edge_repeats = RepeatLimiter(EDGE_REPEAT_WINDOW_S)

    # ----- start -------------------------------------------------------------

    def prepare(self) -> None:
        for tool in (KAMAILIO, KAMCMD):
            if not os.access(tool, os.X_OK):
                raise SupervisorError(
                    f"{tool} not found; install Kamailio with "
                    "'apt-get install kamailio kamailio-python3-modules'"
                )
        media_addresses = {
            service.name: resolve_media_address(self.cfg, service)
            for service in self.cfg.services
        }
        self.runtime = build_runtime(self.cfg, media_addresses)
        try:
            os.makedirs(os.path.join(self.runtime_dir, "workers"), exist_ok=True)
        except OSError as error:
            raise SupervisorError(
                f"runtime_dir {self.runtime_dir}: cannot create it ({error.strerror}); "
                "set runtime_dir to a writable folder"
            ) from None
        self._lock_runtime_dir()
        for stale in os.listdir(os.path.join(self.runtime_dir, "workers")):
            os.unlink(os.path.join(self.runtime_dir, "workers", stale))
        runtime_file = os.path.join(self.runtime_dir, "runtime.json")
        with open(runtime_file, "w", encoding="utf-8") as handle:
            json.dump(self.runtime, handle, indent=1)
        os.chmod(runtime_file, 0o600)  # it contains TURN passwords
        self.paths = kamcfg.write_edge_files(self.runtime, self.runtime_dir,
                                             runtime_file)
        self.paths["runtime"] = runtime_file
        check = subprocess.run(
            [KAMAILIO, "-c", "-f", self.paths["cfg"]],
            capture_output=True, text=True, timeout=30,
        )
        if check.returncode != 0:
            lines = [l for l in check.stderr.splitlines() if "ERROR" in l]
            raise SupervisorError(
                "Kamailio rejected the generated config "
                f"{self.paths['cfg']}: {lines[-1] if lines else check.stderr[-300:]}"
            )
        self.edge = Child("edge", [
            KAMAILIO, "-f", self.paths["cfg"], "-DD", "-E", "-w", self.runtime_dir,
            "-P", os.path.join(self.runtime_dir, "kamailio.pid"),
            # The default allocator (qm) took a tenth of Kamailio's CPU at
            # 25 call setups a second. TLSF serves both shm and pkg memory.
            "-x", "tlsf",
        ])
        for index, worker in enumerate(self.runtime["workers"]):
            # The command line that runs this worker on its own; the
            # supervisor forks it instead (see b2bua/forked.py).
            child = Child(worker["id"], [
                sys.executable, "-m", "b2bua.worker", "--runtime", runtime_file,
                "--index", str(index),
            ])
            child.extra["index"] = index
            child.extra["uri"] = f"sip:{worker['address']}:{worker['port']}"
            child.extra["status_file"] = worker["status_file"]
            self.children.append(child)

    def start(self) -> None:
        assert self.edge is not None
        for service in self.runtime["services"]:
            log.info(
                "service %s: edge on %s, media on %s",
                service["name"],
                ", ".join(f"{'/'.join(l['transports'])}:{l['address']}:{l['port']}"
                          for l in service["listeners"]),
                service["media_address"],
            )
        log.info("starting %d workers, dialplan %s", len(self.children),
                 self.cfg.dialplan_file)
        forked.freeze_shared_objects()
        for child in self.children:
            self._spawn(child)
        self._spawn(self.edge)

    def _lock_runtime_dir(self) -> None:
        """Hold a lock on runtime_dir, so a second `b2bua run` cannot share it.

        Two supervisors on one runtime_dir would overwrite each other's
        Kamailio config, control socket and worker status files.
        """
        path = os.path.join(self.runtime_dir, "supervisor.lock")
        self.lock_file = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.seek(0)
            owner = self.lock_file.read().strip() or "?"
            raise SupervisorError(
                f"runtime_dir {self.runtime_dir} is in use by another b2bua run "
                f"(pid {owner}); stop it, or give this one another runtime_dir"
            ) from None
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(f"{os.getpid()}\n")
        self.lock_file.flush()

    def _spawn(self, child: Child) -> None:
        if child is self.edge:
            self._spawn_edge(child)
            return
        # The edge's log pipes and their selector, and the runtime_dir lock.
        inherited = [self.edge_log.fileno()]
        inherited += [key.fd for key in self.edge_log.get_map().values()]
        if self.lock_file:
            inherited.append(self.lock_file.fileno())
        child.process = forked.fork_worker(child.name, self.paths["runtime"],
                                           child.extra["index"], inherited)
        child.started_at = time.monotonic()
        log.debug("started %s pid %d", child.name, child.process.pid)

    def _spawn_edge(self, child: Child) -> None:
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
        # Kamailio prints its listener table on stdout and logs on stderr;
        # both go through the relay so that only the script's lines show.
        # Kamailio runs in its own process group so that all of its children
        # can be stopped together, and it dies with the supervisor.
        process = subprocess.Popen(
            child.argv, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=forked.die_with_parent,
        )
        child.process = process
        child.started_at = time.monotonic()
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.edge_log.register(process.stdout, selectors.EVENT_READ)
        self.edge_log_partial = b""
        log.debug("started %s pid %d", child.name, process.pid)

    def _relay_edge_log(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for Kamailio's output and log it."""
        if not self.edge_log.get_map():
            time.sleep(timeout)
            return
        for key, _events in self.edge_log.select(timeout):
            stream = key.fileobj
            try:
                data = os.read(stream.fileno(), 65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                self.edge_log.unregister(stream)
                stream.close()  # type: ignore[union-attr]
                continue
            lines = (self.edge_log_partial + data).split(b"\n")
            self.edge_log_partial = lines.pop()
            for raw in lines:
                self._log_edge_line(raw)

    def _log_edge_line(self, raw: bytes) -> None:
        parsed = parse_kamailio_log_line(raw.decode("utf-8", "replace"))
        if parsed is None:
            return
        level, text = parsed
        if self.stopping:
            # Kamailio's children report the closed pipes of a normal
            # shutdown as CRITICAL "EOF on N".
            level = logging.DEBUG
        if level >= logging.WARNING:
            admitted = self.edge_repeats.admit(text, time.monotonic())
            if admitted is None:
                return
            text = admitted
        logging.getLogger("b2bua.edge").log(level, "%s", text)

    # ----- watch -------------------------------------------------------------

    def run(self) -> int:
        while not self.stopping:
            self._relay_edge_log(POLL_INTERVAL_S)
            for child in [*self.children, self.edge]:
                if child is None or self.stopping:
                    continue
                self._check(child)
        return self._stop_all()

    def _check(self, child: Child) -> None:
        process = child.process
        now = time.monotonic()
        if process is None:
            if now >= child.next_start:
                self._spawn(child)
            return
        code = process.poll()
        if code is None:
            if child is not self.edge:
                self._watch_worker(child, process, now)
            return
        uptime = now - child.started_at
        log.warning("%s (pid %d) exited with status %s after %.1f s; restarting",
                    child.name, process.pid, code, uptime)
        child.process = None
        if child is self.edge:
            # Kamailio's children outlive a killed main process and keep
            # its ports, so the restart would fail to bind.
            _kill_group(process.pid)
        else:
            self._drop_worker_calls(child)
        child.restarts += 1
        backoff = 0.0 if uptime > 30 else min(MAX_RESTART_BACKOFF_S,
                                              0.5 * 2 ** min(child.restarts, 5))
        child.next_start = now + backoff

    def _watch_worker(self, child: Child, process: ChildProcess,
                      now: float) -> None:
        """Kill a worker whose event loop stopped, so that it is restarted.

        A live worker rewrites its status file every 2 s; a file older than
        WORKER_STALL_S means the process hangs (stopped, deadlocked).
        """
        if now - child.started_at < WORKER_STALL_S:
            return
        try:
            age = time.time() - os.path.getmtime(child.extra["status_file"])
        except OSError:
            age = now - child.started_at
        if age < WORKER_STALL_S:
            return
        log.warning("%s (pid %d) has not updated its status for %.0f s; killing it",
                    child.name, process.pid, age)
        _signal(process, signal.SIGKILL)

    def _drop_worker_calls(self, child: Child) -> None:
        """End a dead worker's dialogs at the edge and stop sending it calls.

        Confirmed calls get a BYE to their far ends from the dialog module.
        A caller whose call is still being set up gets 503 with Retry-After,
        because the dialog module cannot end unconfirmed dialogs and the
        caller would otherwise wait for tm's INVITE timer.
        """
        uri = child.extra["uri"]
        self._rpc("dispatcher.set_state", "ip", "1", uri)
        worker = self.runtime["workers"][self.children.index(child)]
        ended = rejected = failed = 0
        for dialog in self._worker_dialogs(child.name):
            if dialog.confirmed:
                done = self._rpc("dlg.end_dlg", str(dialog.h_entry),
                                 str(dialog.h_id),
                                 f"Reason: {WORKER_FAILED_REASON}\r\n")
                ended += done
            elif dialog.in_setup and not dialog.caller_is(worker["address"],
                                                          int(worker["port"])):
                # kamcmd turns numeric arguments into integers; "s:" keeps
                # them strings, and the empty body keeps the RPC from failing.
                done = self._rpc(
                    "tm.reply_callid", "503", "Worker Failed",
                    f"s:{dialog.call_id}", f"s:{dialog.caller_cseq}",
                    f"s:edge{dialog.h_entry}x{dialog.h_id}",
                    f"s:Retry-After: {WORKER_FAILED_RETRY_AFTER_S}\r\n"
                    f"Reason: {WORKER_FAILED_REASON}\r\n", "s:")
                rejected += done
            else:
                # NOTE: the dead worker's ringing outgoing legs ring on until
                # tm's INVITE timer, because tm.reply_callid fails on them.
                continue
            if not done:
                failed += 1
                log.warning("%s: could not end call %s (dialog state %d) at the "
                            "edge", child.name, dialog.call_id, dialog.state)
        if ended or rejected or failed:
            log.warning("%s: ended %d call(s) and rejected %d call setup(s) of "
                        "the failed worker at the edge; %d failed",
                        child.name, ended, rejected, failed)

    def _worker_dialogs(self, worker_id: str) -> list[EdgeDialog]:
        output = self._rpc_output("dlg.profile_list", "worker_any", worker_id)
        return parse_dialog_list(output)

    def _rpc_output(self, *args: str) -> str:
        ok, output = self._rpc_call(args)
        return output if ok else ""

    def _rpc(self, *args: str) -> bool:
        ok, _output = self._rpc_call(args)
        return ok

    def _rpc_call(self, args: tuple[str, ...]) -> tuple[bool, str]:
        try:
            result = subprocess.run(
                [KAMCMD, "-s", f"unix:{self.paths['ctl_socket']}", *args],
                capture_output=True, text=True, timeout=5,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("edge RPC %s failed: %s", args[0], error)
            return False, ""
        if result.returncode != 0:
            log.debug("edge RPC %s: %s", args[0], result.stderr.strip())
            return False, ""
        # kamcmd exits 0 when the RPC itself fails and prints the error.
        if result.stdout.startswith("error:"):
            log.debug("edge RPC %s: %s", args[0], result.stdout.strip())
            return False, ""
        return True, result.stdout

    # ----- stop --------------------------------------------------------------

    def request_stop(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("signal %d: stopping", signum)
        self.stopping = True

    def _stop_all(self) -> int:
        workers = [c.process for c in self.children if c.process is not None]
        for process in workers:
            _signal(process, signal.SIGTERM)
        self._wait_all(workers, STOP_TIMEOUT_S)
        if self.edge is not None and self.edge.process is not None:
            _signal(self.edge.process, signal.SIGTERM)
            self._wait_all([self.edge.process], STOP_TIMEOUT_S)
            _kill_group(self.edge.process.pid)
        log.info("stopped")
        return 0

    def _wait_all(self, processes: list[ChildProcess], timeout: float) -> None:
        """Wait for processes to exit, relaying the edge's log meanwhile.

        Kamailio blocks once its log pipe is full, so the pipe is read while
        waiting. What is still running at the deadline gets SIGKILL.
        """
        deadline = time.monotonic() + timeout
        running = list(processes)
        while running and time.monotonic() < deadline:
            self._relay_edge_log(WAIT_POLL_S)
            running = [p for p in running if p.poll() is None]
        for process in running:
            log.warning("pid %d did not stop in %.0f s; killing it", process.pid,
                        timeout)
            process.kill()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                log.error("pid %d survived SIGKILL for 5 s", process.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(process: ChildProcess, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass


def run(cfg: Config) -> int:
    supervisor = Supervisor(cfg)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    supervisor.prepare()
    supervisor.start()
    return supervisor.run()

