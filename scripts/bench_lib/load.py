"""sipp callers spread over several processes, and their results."""

from __future__ import annotations

import logging
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import measure
from .rig import (
    CALLER_MEDIA_PORT,
    CALLER_MEDIA_SPAN,
    CALLER_SIP_PORT,
    MEDIA_PORTS_PER_CALL,
    SIPP_DIR,
    TARGET_SIP_PORT,
    Rig,
)

log = logging.getLogger(__name__)

# One sipp echo target handles about 16,000 packets/s; a call costs it 100
# (50 in, 50 out), so stay well below that per target process.
CALLS_PER_TARGET = 80


def caller_processes(calls: int, in_flight: int) -> int:
    """Return how many sipp caller/target pairs carry a run.

    ``in_flight`` calls are up at once, ``calls`` are placed in all, and
    each caller's media ports must stay inside its own span.
    """
    by_packets = math.ceil(in_flight / CALLS_PER_TARGET)
    by_ports = math.ceil(calls * MEDIA_PORTS_PER_CALL / CALLER_MEDIA_SPAN)
    processes = max(1, by_packets, by_ports)
    if CALLER_MEDIA_PORT + processes * CALLER_MEDIA_SPAN > 65536:
        raise ValueError(f"{calls} calls need {processes} sipp callers, more "
                         "than the media port space allows; lower the rate "
                         "or the window")
    return processes


@dataclass
class CallerRun:
    """sipp callers started together; each dials its own target t<k>."""

    folder: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def wait(self, timeout: float) -> bool:
        """Wait for every caller to exit; return False when one timed out."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("sipp caller pid %d still running; stopping it",
                            process.pid)
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
                return False
        return True

    def counts(self) -> measure.CallCounts:
        total = measure.CallCounts()
        for path in sorted(self.folder.glob("bench_uac_*_.csv")):
            try:
                total += measure.call_counts(measure.parse_sipp_stats(path.read_text()))
            except ValueError:
                continue
        return total

    def setup_times_ms(self) -> list[float]:
        times: list[float] = []
        for path in sorted(self.folder.glob("bench_uac_*_rtt.csv")):
            times += measure.parse_rtt_csv(path.read_text())
        return times


def start_callers(rig: Rig, folder: Path, remote: str, port: int | None,
                  calls: int, rate: float, hold_s: float,
                  processes: int) -> CallerRun:
    """Start ``processes`` sipp callers sharing ``calls`` at ``rate`` calls/s.

    Caller k dials user t<k> at ``remote:port``. With ``port`` None, caller
    k sends straight to target k's own port (no system in between).
    """
    folder.mkdir(parents=True, exist_ok=True)
    # sipp names its files by pid; results left by an earlier run in the
    # same work folder would be summed with this one's.
    for stale in folder.glob("bench_uac_*"):
        stale.unlink()
    (folder / "bench_tone.pcmu").write_bytes((rig.workdir / "bench_tone.pcmu")
                                             .read_bytes())
    run = CallerRun(folder)
    per_process = [calls // processes + (1 if k < calls % processes else 0)
                   for k in range(processes)]
    for k, count in enumerate(per_process):
        if count == 0:
            continue
        to_port = TARGET_SIP_PORT + k if port is None else port
        argv = [
            "sipp", f"{remote}:{to_port}", "-sf", str(SIPP_DIR / "bench_uac.xml"),
            "-s", f"t{k}", "-i", rig.load_ip, "-p", str(CALLER_SIP_PORT + k),
            "-mi", rig.load_ip, "-mp", str(CALLER_MEDIA_PORT + k * CALLER_MEDIA_SPAN),
            "-m", str(count), "-r", f"{max(rate * count / calls, 0.1):.3f}",
            "-rp", "1000", "-d", str(int(hold_s * 1000)), "-nostdin",
            "-timeout", f"{int(hold_s + count / max(rate, 0.1) + 60)}s",
            "-recv_timeout", "10000", "-trace_stat", "-fd", "1",
            "-trace_rtt", "-rtt_freq", "1", "-trace_err",
            # The workers may send a 183 with SDP just before the 200 OK, and
            # Kamailio can deliver it after the 200; RFC 3261 UAs ignore it.
            # A 503 or a lost response still fails the call, by recv_timeout.
            "-default_behaviors", "all,-abortunexp",
        ]
        run.processes.append(rig.load.popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=str(folder)))
    return run
