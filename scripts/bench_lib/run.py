"""Command line of ``scripts/bench``: run every phase and write the page."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import load, phases, relay, report
from .rig import REPO, Rig

log = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure concurrent calls, setup rate, ICE cost and a "
        "Kamailio + rtpengine relay in network namespaces (needs root).")
    parser.add_argument("--quick", action="store_true",
                        help="small loads and 5 s windows, under 2 minutes")
    parser.add_argument("--output", type=Path,
                        help="Markdown file to write (default: "
                        "docs/benchmarks.md, or the work folder with --quick)")
    parser.add_argument("--subnet", type=int, default=90,
                        help="lab subnet 10.99.N.0/24, N in 90..99 (default 90)")
    parser.add_argument("--setups-per-worker", type=float, default=4.0,
                        help="workers.max_setups_per_second in the generated "
                        "config, calls per second and worker (default 4)")
    parser.add_argument("--workdir", type=Path,
                        help="folder for configs, logs and sipp files "
                        "(default: a new temporary folder)")
    return parser.parse_args(argv)


def b2bua_phase(rig: Rig, settings: phases.Settings, data: dict[str, Any],
                workers: int) -> None:
    """Measure the B2BUA on its plain listener, then with ICE and TURN."""
    turn = rig.start_turn()
    rig.start_b2bua(rig.b2bua_config(workers, settings.setups_per_worker,
                                     targets=data["targets"]))
    data["idle"] = phases.idle_cost(rig, 2.0 if settings.quick else 20.0)
    data["b2bua_hold"] = phases.ramp(rig, "b2bua", settings.ramp_steps, settings,
                                     rig.workdir / "hold")
    top = phases.capacity(data["b2bua_hold"])
    data["growth"] = []
    for fraction in settings.growth_fractions if top else []:
        calls = max(2, round(top * fraction))
        data["growth"].append(phases.hold_step(
            rig, f"b2bua {fraction:.0%}", calls, settings,
            rig.workdir / "growth" / f"{calls}"))
        phases.wait_idle(rig, "b2bua")
    data["b2bua_rate"] = phases.rate_sweep(rig, "b2bua", settings,
                                           rig.workdir / "rate")
    data["ice_hold"] = phases.ramp(rig, "b2bua+ICE", settings.ramp_steps, settings,
                                   rig.workdir / "hold")
    data["ice_rate"] = phases.rate_sweep(rig, "b2bua+ICE", settings,
                                         rig.workdir / "rate")
    data["ice_dials"] = [phases.ice_dials(rig, settings.ice_dials, relay_only=False),
                         phases.ice_dials(rig, settings.ice_dials, relay_only=True)]
    rig.stop(rig.system)
    rig.stop(turn, 5)


def relay_phase(rig: Rig, settings: phases.Settings, data: dict[str, Any]) -> None:
    """Measure Kamailio + rtpengine under the same load."""
    processes = relay.start_relay(rig, rig.workdir / "relay")
    data["relay_idle"] = phases.idle_cost(rig, 2.0 if settings.quick else 10.0)
    data["relay_hold"] = phases.ramp(rig, "relay", settings.ramp_steps, settings,
                                     rig.workdir / "hold")
    data["relay_rate"] = phases.rate_sweep(rig, "relay", settings,
                                           rig.workdir / "rate")
    for process in reversed(processes):
        rig.stop(process, 10)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the page and write it; return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = phases.Settings.for_mode(args.quick, args.setups_per_worker)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="b2bua-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler(),
                  logging.FileHandler(workdir / "bench.log")])

    output = args.output or (workdir / "benchmarks.md" if args.quick
                             else REPO / "docs" / "benchmarks.md")
    workers = settings.workers_needed()
    data: dict[str, Any] = {
        "command": shlex.join(["scripts/bench", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "workers": workers,
        "calls_per_target": load.CALLS_PER_TARGET,
        "hold_window_s": settings.hold_window_s,
        "setup_window_s": settings.setup_window_s,
        "max_step": max(settings.ramp_steps),
        "max_rate": max(settings.setup_rates),
        "targets": settings.sipp_pairs(),
    }

    started = time.monotonic()
    rig = Rig(workdir, args.subnet)
    try:
        rig.open()
        rig.start_targets(data["targets"])
        data["direct_rate"] = phases.rate_sweep(rig, "direct", settings,
                                                workdir / "rate")
        b2bua_phase(rig, settings, data, workers)
        relay_phase(rig, settings, data)
    finally:
        rig.stop_system()
        rig.close()

    page = report.render(data)
    output.write_text(page)
    sys.stdout.write(page + "\n")
    log.info("wrote %s in %.0f s; logs in %s", output, time.monotonic() - started,
             workdir)
    return 0
