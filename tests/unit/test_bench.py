"""Pure parts of the benchmark: /proc and sipp parsers, loss and percentiles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "bench"
sys.path.insert(0, str(REPO / "scripts"))

from bench_lib import load, measure, phases
from bench_lib.rig import pcmu_tone


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([7.0], 0.99, 7.0),
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),
        ([float(v) for v in range(1, 101)], 0.95, 95.0),
        ([float(v) for v in range(1, 101)], 0.99, 99.0),
        ([1.0, 2.0, 3.0], 0.0, 1.0),
        ([1.0, 2.0, 3.0], 1.0, 3.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], fraction: float,
                                 expected: float | None) -> None:
    assert measure.percentile(values, fraction) == expected


def test_percentile_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="allowed: 0..1"):
        measure.percentile([1.0], 95)


def test_udp_snmp_counters() -> None:
    text = "Ip: Forwarding\nIp: 1\n" + (DATA / "proc_net_snmp.txt").read_text()
    counters = measure.parse_udp_snmp(text)
    assert counters["InDatagrams"] == 4222
    assert counters["RcvbufErrors"] == 193
    assert counters["InErrors"] == 193


def test_udp_snmp_without_udp_lines() -> None:
    with pytest.raises(ValueError, match="no Udp"):
        measure.parse_udp_snmp("Ip: Forwarding\nIp: 1\n")


def test_udp_receive_errors_delta() -> None:
    before = {"InDatagrams": 10, "RcvbufErrors": 3, "InErrors": 3}
    after = {"InDatagrams": 90, "RcvbufErrors": 10, "InErrors": 11}
    assert measure.udp_receive_errors(before, after) == 15
    assert measure.udp_receive_errors(after, after) == 0


@pytest.mark.parametrize(
    ("stat", "ticks"),
    [
        (("1234 (python3) S 1 1234 1234 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 "
         "3 0 100 1000 200 18446744073709551615"), 175),
        # A command name with spaces and a closing bracket inside.
        ("77 (ip netns (x)) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 1 1", 10),
    ],
)
def test_cpu_ticks(stat: str, ticks: int) -> None:
    assert measure.cpu_ticks(stat) == ticks


def test_smaps_rollup_kb() -> None:
    text = ("55ca0000-7ffd0000 ---p 00000000 00:00 0   [rollup]\n"
            "Rss:                1612 kB\nPss:                 199 kB\n"
            "Pss_Anon:            100 kB\n")
    assert measure.smaps_rollup_kb(text) == {"Rss": 1612, "Pss": 199}


def test_rtt_csv_setup_times() -> None:
    times = measure.parse_rtt_csv((DATA / "sipp_rtt.csv").read_text())
    assert len(times) == 40
    assert times[:3] == [8.0, 8.0, 8.0]
    assert all(t >= 0 for t in times)


def test_rtt_csv_other_timers_ignored() -> None:
    text = "Date_ms;response_time_ms;rtd_no\n1;5;1\n2;900;2\n"
    assert measure.parse_rtt_csv(text) == [5.0]


def test_sipp_stats_last_row_counts() -> None:
    stats = measure.parse_sipp_stats((DATA / "sipp_stats.csv").read_text())
    counts = measure.call_counts(stats)
    assert counts == measure.CallCounts(created=40, succeeded=39, failed=1)
    assert counts.failed_fraction == pytest.approx(1 / 40)


def test_sipp_stats_header_only() -> None:
    with pytest.raises(ValueError, match="no data row"):
        measure.parse_sipp_stats("StartTime;TotalCallCreated\n")


def test_call_counts_add() -> None:
    total = measure.CallCounts(10, 9, 1) + measure.CallCounts(5, 5, 0)
    assert total == measure.CallCounts(15, 14, 1)
    assert measure.CallCounts().failed_fraction == 0.0


LINK_0 = measure.LinkCounters(rx_packets=1000, tx_packets=1000, rx_dropped=0)


@pytest.mark.parametrize(
    ("after", "udp_after", "loss"),
    [
        # Every packet received was sent on: no loss.
        (measure.LinkCounters(11000, 11000, 0), {}, 0.0),
        # 20 of 10,000 packets never left the edge.
        (measure.LinkCounters(11000, 10980, 0), {}, 0.002),
        # Socket buffer overflows count even when the sent count matches,
        # because a worker's own packets (RTCP) can fill the gap.
        (measure.LinkCounters(11000, 11000, 0), {"RcvbufErrors": 5}, 0.0005),
        # More sent than received (SIP, RTCP from the edge) is not a gain.
        (measure.LinkCounters(11000, 11500, 0), {}, 0.0),
        # No traffic at all.
        (LINK_0, {}, 0.0),
    ],
)
def test_media_loss(after: measure.LinkCounters, udp_after: dict[str, int],
                    loss: float) -> None:
    assert measure.media_loss(LINK_0, after, {}, udp_after) == pytest.approx(loss)


def test_cpu_percent() -> None:
    assert measure.cpu_percent(250, 10.0, 100) == pytest.approx(25.0)
    assert measure.cpu_percent(250, 0.0, 100) == 0.0


def test_pcmu_tone_is_one_second() -> None:
    tone = pcmu_tone()
    assert len(tone) == 8000
    # A sine wave must use many code words, and mu-law silence is 0xFF.
    assert len(set(tone)) > 50
    assert tone[0] == 0xFF


@pytest.mark.parametrize(
    ("calls", "in_flight", "processes"),
    [
        (1, 1, 1),
        (8, 8, 1),
        # 80 calls up at once fill one sipp echo target.
        (81, 81, 2),
        (500, 500, 7),
        # A long setup-rate run needs more callers for media ports alone.
        (9000, 300, 6),
    ],
)
def test_caller_processes(calls: int, in_flight: int, processes: int) -> None:
    assert load.caller_processes(calls, in_flight) == processes


def test_caller_processes_port_space() -> None:
    with pytest.raises(ValueError, match="media port space"):
        load.caller_processes(100_000, 10)


@pytest.mark.parametrize("quick", [True, False])
def test_settings_fit_config_limits(quick: bool) -> None:
    settings = phases.Settings.for_mode(quick, setups_per_worker=4.0)
    # workers.count allows 1..256, and every step needs 2 calls per worker.
    assert 1 <= settings.workers_needed() <= 256
    assert settings.workers_needed() * 2 >= max(settings.ramp_steps)
    assert settings.sipp_pairs() >= 1


def test_ice_table_reports_completion_times() -> None:
    from bench_lib.report import ice_table

    class Result:
        mode = "host candidates"
        reports = [
            {"setup_ms": 20, "answered": True,
             "ice": {"state": "completed", "completed_ms": 240}},
            {"setup_ms": 30, "answered": True, "ice": {"state": "completed"}},
        ]

    row = ice_table([Result()])[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3] == "2"
    assert cells[6] == "240"
    assert cells[7] == "240"


def test_cpu_split_by_process_role() -> None:
    from bench_lib.rig import Sample, usage_between

    from bench_lib.report import cpu_split
    from bench_lib.rig import TICKS_PER_SECOND

    link = measure.LinkCounters(0, 0, 0)
    first = Sample(0.0, {1: 0, 2: 0, 3: 0}, 0, 0, link, {}, 0, 1,
                   {1: "workers", 2: "workers", 3: "coturn"})
    last = Sample(10.0, {1: 500, 2: 300, 3: 100, 4: 50}, 0, 0, link, {}, 0, 2,
                  {1: "workers", 2: "workers", 3: "coturn", 4: "kamailio"})
    usage = usage_between(first, last)
    scale = 100.0 / TICKS_PER_SECOND / 10.0
    assert usage.cpu_by_role == pytest.approx(
        {"coturn": 100 * scale, "kamailio": 50 * scale, "workers": 800 * scale})
    assert cpu_split(usage).split(", ")[0].startswith("workers ")
