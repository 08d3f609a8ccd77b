"""The generated Kamailio config keeps the per-worker setup rate limit working."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from b2bua.config import load_config
from b2bua.edge import kamcfg
from b2bua.edge.ratelimit import setup_window
from b2bua.supervisor import build_runtime

DATA = Path(__file__).resolve().parents[1] / "data" / "config"
PATHS = {
    "ctl_socket": "/run/b2bua/kamailio.ctl",
    "dispatcher_list": "/run/b2bua/dispatcher.list",
    "kemi_entry": "/run/b2bua/kemi_entry.py",
}


def htable_options(cfg_text: str, name: str) -> dict[str, str]:
    match = re.search(rf'modparam\("htable", "htable", "{name}=>([^"]*)"\)', cfg_text)
    assert match is not None, f"htable {name} is not declared"
    options = {}
    for item in match.group(1).split(";"):
        key, _, value = item.partition("=")
        if key:
            options[key] = value
    return options


@pytest.mark.parametrize("config_file", [None, "full.yaml"])
def test_setup_counters_start_at_zero(config_file: str | None) -> None:
    path = None if config_file is None else str(DATA / config_file)
    config = load_config(path)
    runtime = build_runtime(config, {s.name: "192.0.2.10" for s in config.services})
    options = htable_options(kamcfg.kamailio_cfg(runtime, PATHS), "setups")
    # sht_inc creates a missing counter only when the table has an initval.
    assert options.get("initval") == "0", options
    # A counter must outlive the second it counts.
    assert int(options["autoexpire"]) >= 2, options


@pytest.mark.parametrize(("rate", "seconds", "limit"), [
    (4, 1, 4),
    (4.0, 1, 4),
    (2.5, 1, 2),
    (1, 1, 1),
    (0.5, 2, 1),
    (0.3, 4, 1),
    (0.1, 10, 1),
    (0.001, 60, 1),
])
def test_setup_window_stays_under_rate(rate: float, seconds: int, limit: int) -> None:
    window = setup_window(rate)
    assert (window.seconds, window.limit) == (seconds, limit)


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_setup_window_rejects_invalid_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="invalid setup rate"):
        setup_window(rate)


def test_setup_window_keys_change_per_window() -> None:
    window = setup_window(0.5)
    assert window.key("w1", 100.0) == window.key("w1", 101.9)
    assert window.key("w1", 101.9) != window.key("w1", 102.0)
    assert window.key("w1", 100.0) != window.key("w2", 100.0)


def test_setup_counters_outlive_slow_windows() -> None:
    config = load_config(str(DATA / "full.yaml"))
    runtime = build_runtime(config, {s.name: "192.0.2.10" for s in config.services})
    runtime["max_setups_per_second"] = 0.1
    options = htable_options(kamcfg.kamailio_cfg(runtime, PATHS), "setups")
    assert int(options["autoexpire"]) > 10, options
