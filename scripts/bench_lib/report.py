"""Render benchmark results as the Markdown page docs/benchmarks.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

from .measure import percentile
from .phases import HoldResult, IceResult, RateResult, capacity
from .rig import Usage


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              check=False)
    except OSError:
        return "not found"
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


def machine() -> list[str]:
    """Describe this machine and the versions of every part measured."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        pjsua2 = importlib.metadata.version("pjsua2-python")
    except importlib.metadata.PackageNotFoundError:
        pjsua2 = "not installed"
    return [
        f"- CPU: {model}, {os.cpu_count()} cores; memory {pages / 2**30:.1f} GiB",
        f"- Kernel: {platform.release()}; Python {platform.python_version()}",
        f"- pjsua2-python {pjsua2}",
        f"- Kamailio: {_version(['/usr/sbin/kamailio', '-v'])}",
        f"- sipp: {_version(['sipp', '-v'])}",
        f"- rtpengine: {_version(['rtpengine', '--version'])}",
        f"- coturn: {_version(['turnserver', '--version'])}",
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def hold_table(results: list[HoldResult], idle: dict[str, Usage]) -> list[str]:
    """Tabulate held-call steps; per-call figures are above the system's idle."""
    lines = [
        ("| system | calls | held | failed | loss % | UDP receive errors | "
        "CPU % of one core | CPU % per call | PSS MB | PSS MB per call | RSS MB | "
        "CPU % by process |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        u = r.usage
        base = idle["relay" if r.system.startswith("relay") else "b2bua"]
        calls = r.calls or 1
        lines.append(
            f"| {r.system} | {r.calls} | {r.counts.succeeded} | {r.counts.failed} | "
            f"{u.loss * 100:.3f} | {u.udp_errors} | {u.cpu_percent:.1f} | "
            f"{(u.cpu_percent - base.cpu_percent) / calls:.3f} | {u.pss_mb:.0f} | "
            f"{(u.pss_mb - base.pss_mb) / calls:.2f} | {u.rss_mb:.0f} | "
            f"{cpu_split(u)} |")
    return lines


def cpu_split(usage: Usage) -> str:
    """Show the CPU of each kind of process, largest first (e.g. workers 80.1)."""
    parts = sorted(usage.cpu_by_role.items(), key=lambda item: -item[1])
    return ", ".join(f"{role} {cpu:.1f}" for role, cpu in parts if cpu >= 0.05) or "-"


def rate_table(results: list[RateResult]) -> list[str]:
    lines = [
        ("| system | calls/s | calls | failed | setup p50 ms | p95 ms | p99 ms | "
        "CPU % of one core | CPU % by process |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.rate:.0f} | {r.counts.succeeded + r.counts.failed} | "
            f"{r.counts.failed} | {_ms(percentile(r.setup_ms, 0.5))} | "
            f"{_ms(percentile(r.setup_ms, 0.95))} | "
            f"{_ms(percentile(r.setup_ms, 0.99))} | {r.usage.cpu_percent:.1f} | "
            f"{cpu_split(r.usage)} |")
    return lines


def ice_table(results: list[IceResult]) -> list[str]:
    lines = [
        ("| caller candidates | calls | answered | ICE completed | "
        "setup p50 ms | setup p95 ms | ICE p50 ms | ICE p95 ms |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        setup = [float(x["setup_ms"]) for x in r.reports if x.get("setup_ms")]
        ice_ms = [float(x["ice"]["completed_ms"]) for x in r.reports
                  if (x.get("ice") or {}).get("completed_ms") is not None]
        completed = sum(1 for x in r.reports
                        if (x.get("ice") or {}).get("state") == "completed")
        answered = sum(1 for x in r.reports if x.get("answered"))
        lines.append(
            f"| {r.mode} | {len(r.reports)} | {answered} | {completed} | "
            f"{_ms(percentile(setup, 0.5))} | {_ms(percentile(setup, 0.95))} | "
            f"{_ms(percentile(ice_ms, 0.5))} | {_ms(percentile(ice_ms, 0.95))} |")
    return lines


def max_rate(results: list[RateResult]) -> float:
    passed = [r.rate for r in results if r.ok]
    return max(passed) if passed else 0.0


RUNNING = [
    "## Running it",
    "",
    ("As root, on a machine with nothing else busy: `scripts/bench` for the "
    "record (writes this page; 60 s windows, 30 minutes or more), or "
    "`scripts/bench --quick` for a developer's loop (about 80 s; writes "
    "`benchmarks.md` into its work folder). `--workdir DIR` keeps the "
    "configs, the B2BUA, Kamailio, rtpengine and coturn logs and sipp's "
    "files; `--setups-per-worker N` sets `workers.max_setups_per_second`. "
    "Everything runs in two namespaces on 10.99.90.0/24 (`--subnet`), "
    "removed at the end."),
]


def render(data: dict[str, Any]) -> str:
    """Build the whole page from the results collected by the runner."""
    b2bua = data["b2bua_hold"]
    ice = data["ice_hold"]
    relay = data["relay_hold"]
    idle = {"b2bua": data["idle"], "relay": data["relay_idle"]}
    out = [
        "# Benchmarks",
        "",
        (f"Recorded by `{data['command']}` on {data['date']}"
        f"{' (quick mode: short windows, small loads, not a record)' if data['quick'] else ''}."),
        "",
        *RUNNING,
        "",
        "## Machine and versions",
        "",
        *machine(),
        "",
        "## How it is measured",
        "",
        ("Two network namespaces joined by a veth pair: `edge` runs the system "
        "under test, `load` runs sipp callers (PCMU RTP at 50 packets/s from "
        "each caller) and sipp echo targets (`-rtp_echo`), one target per "
        f"{data['calls_per_target']} calls. CPU and memory are summed over every "
        "process in `edge` (CPU as % of one core, PSS and RSS at the end of the "
        "window). Loss is the shortfall of packets the edge sent against packets "
        "it received on its veth, or its UDP receive errors if higher. A step "
        f"passes with no failed call and loss under {0.1}%. Setup time is sipp's "
        "INVITE-to-200 response time (1 ms resolution). The B2BUA terminates "
        "both legs of every call and decodes and re-encodes its media in a "
        "conference bridge; the Kamailio + rtpengine relay only rewrites SDP "
        "and forwards packets (userspace, no kernel module), so it is a "
        "ceiling, not a peer. The `b2bua+ICE` rows dial the listener with ICE. "
        "sipp offers no ICE, which the B2BUA answers without ICE by default; "
        "the generated config sets `plain_callers_via_turn`, so every such "
        "call still gathers candidates, allocates on coturn (in `edge`, so "
        "counted) and sends its media through the relay."),
        "",
        "## Summary",
        "",
        (f"- Concurrent bridged G.711 calls held for {data['hold_window_s']:.0f} s: "
        f"B2BUA {capacity(b2bua)}, B2BUA with ICE and TURN on the edge leg "
        f"{capacity(ice)}, relay {capacity(relay)} (largest step tried: "
        f"{data['max_step']})."),
        (f"- Setup rate with < 0.1% failed over {data['setup_window_s']:.0f} s: "
        f"B2BUA {max_rate(data['b2bua_rate']):.0f}/s, with ICE "
        f"{max_rate(data['ice_rate']):.0f}/s, relay "
        f"{max_rate(data['relay_rate']):.0f}/s, direct sipp to sipp "
        f"{max_rate(data['direct_rate']):.0f}/s (largest rate tried: "
        f"{data['max_rate']:.0f}/s)."),
        (f"- Idle: {data['idle'].cpu_percent:.2f}% of one core and "
        f"{data['idle'].pss_mb:.0f} MB PSS for Kamailio, the supervisor and "
        f"{data['workers']} workers ({data['idle'].cpu_percent / data['workers']:.3f}%"
        " per worker, an upper bound since Kamailio is included); the relay "
        f"{data['relay_idle'].cpu_percent:.2f}% and "
        f"{data['relay_idle'].pss_mb:.0f} MB."),
        "",
        "## Concurrent calls",
        "",
        ("Per-call CPU and PSS are the increase over the idle system (B2BUA: "
        "Kamailio, supervisor and workers with no calls; relay: Kamailio and "
        "rtpengine with no calls) divided by the calls held."),
        "",
        *hold_table(b2bua + ice + relay, idle),
        "",
        "## Growth",
        "",
        *(hold_table(data["growth"], idle) if data["growth"] else
          ["Not measured in quick mode; the steps above show the slope."]),
        "",
        "## Call setup rate",
        "",
        *rate_table(data["direct_rate"] + data["b2bua_rate"] + data["ice_rate"]
                    + data["relay_rate"]),
        "",
        "## ICE callers",
        "",
        ("Calls from `b2bua dial` with ICE to the B2BUA, whose edge leg gathers "
        "host and TURN relay candidates. Setup is INVITE to 200; ICE is INVITE "
        "to ICE completed at the caller (`ice.completed_ms`, sampled every "
        "0.2 s)."),
        "",
        *ice_table(data["ice_dials"]),
        "",
    ]
    return "\n".join(out)
