"""The generated Kamailio config keeps the per-worker setup rate limit working."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from b2bua.config import load_config
from b2bua.edge import kamcfg
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
    runtime = build_runtime(load_config(path), "192.0.2.10")
    options = htable_options(kamcfg.kamailio_cfg(runtime, PATHS), "setups")
    # sht_inc creates a missing counter only when the table has an initval.
    assert options.get("initval") == "0", options
    # A counter must outlive the second it counts.
    assert int(options["autoexpire"]) >= 2, options
