"""The benchmark's measurements: held calls, setup rate, ICE, relay, growth."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import load, measure
from .rig import (
    EDGE_ICE_PORT,
    EDGE_PORT,
    REPO,
    TURN_PASSWORD,
    TURN_USER,
    Rig,
    Usage,
    usage_between,
)

log = logging.getLogger(__name__)

MAX_LOSS = 0.001
MAX_FAILED = 0.001
# Calls take this long past their own setup to be bridged and streaming.
SETTLE_S = 3.0
# Edge port that the callers of each system under test send INVITEs to. None
# means "direct": each caller sends to its own sipp target's port.
SYSTEM_PORTS: dict[str, int | None] = {
    "direct": None, "b2bua": EDGE_PORT, "b2bua+ICE": EDGE_ICE_PORT,
    "relay": EDGE_PORT,
}


def caller_address(rig: Rig, system: str) -> tuple[str, int | None]:
    """Return the address and port the callers of ``system`` dial."""
    base = system.split(" ")[0]
    remote = rig.load_ip if base == "direct" else rig.edge_ip
    return remote, SYSTEM_PORTS[base]


@dataclass
class Settings:
    """Sizes and durations of one run (``quick`` for a developer's loop)."""

    quick: bool
    hold_window_s: float
    ramp_steps: list[int]
    ramp_rate: float
    growth_fractions: list[float]
    setup_rates: list[float]
    setup_window_s: float
    setup_hold_s: float
    setups_per_worker: float
    ice_dials: int

    @classmethod
    def for_mode(cls, quick: bool, setups_per_worker: float) -> Settings:
        if quick:
            return cls(True, 4.0, [8], 8.0, [], [8.0], 4.0, 1.0,
                       setups_per_worker, 2)
        # Sized to finish in about half an hour on a 2-core machine: the
        # ramp stops at the first step that fails, and each rate runs 30 s.
        return cls(False, 60.0, [100, 200, 300, 400], 25.0,
                   [0.25, 0.5, 0.75, 1.0], [25.0, 50.0, 100.0], 30.0, 1.0,
                   setups_per_worker, 20)

    def workers_needed(self) -> int:
        """Size the pool for the top step and the top rate (2 calls a worker)."""
        held = math.ceil(max(self.ramp_steps) / 2)
        top_rate = max(self.setup_rates)
        by_rate = math.ceil(top_rate / self.setups_per_worker * 1.25)
        in_flight = math.ceil(self.in_flight(top_rate) / 2)
        return min(256, max(held, by_rate, in_flight) + 2)

    def in_flight(self, rate: float) -> int:
        """Estimate the calls up at once in a setup-rate run (1 s for setup)."""
        return math.ceil(rate * (self.setup_hold_s + 1.0))

    def sipp_pairs(self) -> int:
        """Return how many sipp targets the largest run needs."""
        top = max(self.ramp_steps)
        top_rate = max(self.setup_rates)
        return max(load.caller_processes(top, top),
                   load.caller_processes(int(top_rate * self.setup_window_s),
                                         self.in_flight(top_rate)))


@dataclass
class HoldResult:
    """One step of held calls: how many were asked for, held, and their cost."""

    system: str
    calls: int
    counts: measure.CallCounts
    usage: Usage
    bridged: int | None
    ok: bool


@dataclass
class RateResult:
    """One call-setup rate run and its setup times."""

    system: str
    rate: float
    counts: measure.CallCounts
    setup_ms: list[float]
    usage: Usage

    @property
    def ok(self) -> bool:
        return self.counts.failed_fraction < MAX_FAILED and self.counts.succeeded > 0


@dataclass
class IceResult:
    """Calls placed by ICE-capable `b2bua dial` processes."""

    mode: str
    reports: list[dict[str, Any]] = field(default_factory=list)


def hold_step(rig: Rig, system: str, calls: int, settings: Settings,
              folder: Path) -> HoldResult:
    """Hold ``calls`` calls with RTP both ways and measure one window."""
    processes = load.caller_processes(calls, calls)
    ramp_s = calls / settings.ramp_rate
    hold_s = ramp_s + SETTLE_S + settings.hold_window_s + 2.0
    log.info("%s: holding %d calls (%d sipp callers)", system, calls, processes)
    remote, port = caller_address(rig, system)
    run = load.start_callers(rig, folder, remote, port, calls, settings.ramp_rate,
                             hold_s, processes)
    time.sleep(ramp_s + SETTLE_S)
    bridged = None
    if system.startswith("b2bua"):
        bridged = sum(s.get("bridged_calls", 0) for s in rig.worker_status())
    first = rig.sample()
    time.sleep(settings.hold_window_s)
    last = rig.sample()
    run.wait(hold_s + 60)
    counts = run.counts()
    usage = usage_between(first, last)
    ok = (counts.failed == 0 and counts.succeeded == calls
          and usage.loss < MAX_LOSS)
    log.info("%s: %d calls: %d ok, %d failed, loss %.4f%%, cpu %.1f%%", system,
             calls, counts.succeeded, counts.failed, usage.loss * 100,
             usage.cpu_percent)
    return HoldResult(system, calls, counts, usage, bridged, ok)


def ramp(rig: Rig, system: str, steps: list[int], settings: Settings,
         folder: Path) -> list[HoldResult]:
    """Hold more calls step by step until one step fails."""
    results = []
    for calls in steps:
        result = hold_step(rig, system, calls, settings, folder / f"{system}-{calls}")
        results.append(result)
        cores = os.cpu_count() or 1
        if not result.ok or result.usage.host_cpu_percent > 95 * cores:
            break
        wait_idle(rig, system)
    return results


def capacity(results: list[HoldResult]) -> int:
    """Return the largest call count held without failures or loss, 0 if none."""
    passed = [r.calls for r in results if r.ok]
    return max(passed) if passed else 0


def wait_idle(rig: Rig, system: str, timeout: float = 30.0) -> None:
    """Wait until the workers report no calls, so steps do not overlap."""
    if not system.startswith("b2bua"):
        time.sleep(2.0)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = rig.worker_status()
        if statuses and all(s.get("pjsua_calls", 0) == 0 for s in statuses):
            # The edge's per-second setup counters start afresh.
            time.sleep(1.1)
            return
        time.sleep(0.5)
    log.warning("%s: workers still report calls after %.0f s", system, timeout)


def setup_rate(rig: Rig, system: str, rate: float, settings: Settings,
               folder: Path) -> RateResult:
    """Place calls at ``rate`` per second for one window; short hold, RTP on."""
    calls = max(1, int(rate * settings.setup_window_s))
    processes = load.caller_processes(calls, settings.in_flight(rate))
    log.info("%s: %d calls at %.0f/s", system, calls, rate)
    remote, port = caller_address(rig, system)
    run = load.start_callers(rig, folder, remote, port, calls, rate,
                             settings.setup_hold_s, processes)
    first = rig.sample()
    run.wait(settings.setup_window_s + settings.setup_hold_s + 60)
    last = rig.sample()
    result = RateResult(system, rate, run.counts(), run.setup_times_ms(),
                        usage_between(first, last))
    log.info("%s: %.0f/s: %d ok, %d failed, p95 %s ms", system, rate,
             result.counts.succeeded, result.counts.failed,
             measure.percentile(result.setup_ms, 0.95))
    wait_idle(rig, system)
    return result


def rate_sweep(rig: Rig, system: str, settings: Settings,
               folder: Path) -> list[RateResult]:
    """Raise the setup rate until a run fails more than the allowed fraction."""
    results = []
    for rate in settings.setup_rates:
        result = setup_rate(rig, system, rate, settings,
                            folder / f"{system}-rate-{rate:.0f}")
        results.append(result)
        if not result.ok:
            break
    return results


def idle_cost(rig: Rig, seconds: float) -> Usage:
    """Measure the edge namespace with no calls (Kamailio, supervisor, workers)."""
    first = rig.sample()
    time.sleep(seconds)
    return usage_between(first, rig.sample())


def ice_dials(rig: Rig, count: int, relay_only: bool) -> IceResult:
    """Place ``count`` ICE calls with `b2bua dial`, 4 at a time, and collect reports."""
    mode = "TURN relay" if relay_only else "host candidates"
    result = IceResult(mode)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    extra = ["--turn", f"{rig.edge_ip}:3478", "--turn-user", TURN_USER,
             "--turn-password", TURN_PASSWORD, "--relay-only"] if relay_only else []
    remaining = count
    while remaining > 0:
        batch = []
        for _ in range(min(4, remaining)):
            argv = [sys.executable, "-m", "b2bua.cli", "dial",
                    f"sip:t0@{rig.edge_ip}:{EDGE_ICE_PORT}", "--bind", rig.load_ip,
                    "--from", f"sip:ice@{rig.load_ip}", "--json", "--ice",
                    "--duration", "1", "--timeout", "10", *extra]
            batch.append(rig.load.popen(argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env))
        for process in batch:
            try:
                out, _ = process.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate(timeout=5)
            result.reports.append(last_json(out))
        remaining -= len(batch)
    return result


def last_json(out: bytes) -> dict[str, Any]:
    """Return the last JSON object line of a `b2bua dial --json` output."""
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {"status": 0, "answered": False, "setup_ms": None, "ice": None}
