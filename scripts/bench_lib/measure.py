"""Pure parsers and arithmetic for benchmark figures (no sockets, no processes).

Inputs are the text of /proc files and of sipp's CSV output, so every
function here is testable with strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile (fraction 0..1), None for no values."""
    if not values:
        return None
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"invalid percentile fraction {fraction}; allowed: 0..1")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def parse_udp_snmp(text: str) -> dict[str, int]:
    """Parse the ``Udp:`` header and value lines of /proc/net/snmp."""
    rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        raise ValueError("no Udp: header and value lines in /proc/net/snmp text")
    names, values = rows[0][1:], rows[1][1:]
    return {name: int(value) for name, value in zip(names, values)}


def cpu_ticks(stat_text: str) -> int:
    """Return utime + stime (clock ticks, all threads) from /proc/PID/stat."""
    # The command name is in brackets and may contain spaces.
    rest = stat_text[stat_text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def smaps_rollup_kb(text: str) -> dict[str, int]:
    """Return the Rss and Pss of /proc/PID/smaps_rollup text, in KiB."""
    result = {"Rss": 0, "Pss": 0}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in result:
            result[key] = int(rest.split()[0])
    return result


def parse_rtt_csv(text: str) -> list[float]:
    """Return the response times (ms) of sipp's -trace_rtt file for rtd 1."""
    times = []
    for line in text.splitlines()[1:]:
        fields = line.strip().split(";")
        if len(fields) >= 3 and fields[2] == "1":
            times.append(float(fields[1]))
    return times


def parse_sipp_stats(text: str) -> dict[str, str]:
    """Return the last row of sipp's -trace_stat CSV as {column: value}."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("sipp statistics file has no data row")
    names = lines[0].split(";")
    return dict(zip(names, lines[-1].split(";")))


@dataclass(frozen=True)
class CallCounts:
    """Call totals of one or more sipp callers."""

    created: int = 0
    succeeded: int = 0
    failed: int = 0

    def __add__(self, other: CallCounts) -> CallCounts:
        return CallCounts(self.created + other.created,
                          self.succeeded + other.succeeded,
                          self.failed + other.failed)

    @property
    def failed_fraction(self) -> float:
        done = self.succeeded + self.failed
        return self.failed / done if done else 0.0


def call_counts(stats: dict[str, str]) -> CallCounts:
    """Extract cumulative call counts from a parsed sipp statistics row."""
    return CallCounts(
        created=int(stats.get("TotalCallCreated", "0")),
        succeeded=int(stats.get("SuccessfulCall(C)", "0")),
        failed=int(stats.get("FailedCall(C)", "0")),
    )


@dataclass(frozen=True)
class LinkCounters:
    """Packet counters of the edge side of the veth link."""

    rx_packets: int
    tx_packets: int
    rx_dropped: int


def udp_receive_errors(before: dict[str, int], after: dict[str, int]) -> int:
    """Count datagrams the namespace's sockets dropped (full buffer or bad sum)."""
    return sum(after.get(key, 0) - before.get(key, 0)
               for key in ("RcvbufErrors", "InErrors"))


def media_loss(before: LinkCounters, after: LinkCounters,
               udp_before: dict[str, int], udp_after: dict[str, int]) -> float:
    """Estimate the fraction of media packets the edge namespace lost.

    Both the B2BUA and a relay send one packet out for each one in, so the
    loss is the shortfall of packets sent against packets received, plus
    the UDP receive-buffer and checksum errors seen in the namespace.
    """
    received = after.rx_packets - before.rx_packets
    if received <= 0:
        return 0.0
    sent = after.tx_packets - before.tx_packets
    dropped = (after.rx_dropped - before.rx_dropped
               + udp_receive_errors(udp_before, udp_after))
    shortfall = max(0, received - sent)
    return max(shortfall, dropped) / received


def cpu_percent(ticks: int, seconds: float, ticks_per_second: int) -> float:
    """Convert clock ticks used over seconds into percent of one core."""
    if seconds <= 0:
        return 0.0
    return 100.0 * ticks / ticks_per_second / seconds
