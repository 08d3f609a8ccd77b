"""Pure helpers of pjsip_util, dial and answer: dump parsing, mappings, reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import pytest

from b2bua import dial
from b2bua.pjsip_util import (
    is_loopback,
    parse_ice_dump,
    parse_srtp_dump,
    pjsip_log_level,
    python_log_level,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "pjsip"


def read_dump(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "ice-host-controlling.dump",
            {
                "state": "completed",
                "role": "controlling",
                "local_type": "host",
                "remote_type": "host",
                "local_address": "10.99.7.2:4017",
                "remote_address": "10.99.7.1:4013",
                "transport": "udp",
            },
        ),
        (
            "ice-host-controlled.dump",
            {
                "state": "completed",
                "role": "controlled",
                "local_type": "host",
                "remote_type": "host",
                "local_address": "10.99.7.1:4022",
                "remote_address": "10.99.7.2:4028",
                "transport": "udp",
            },
        ),
        (
            "ice-relay-controlling.dump",
            {
                "state": "completed",
                "role": "controlling",
                "local_type": "relay",
                "remote_type": "host",
                "local_address": "10.99.3.1:49185",
                "remote_address": "10.99.3.2:4005",
                "transport": "udp",
            },
        ),
    ],
)
def test_ice_dump_pair(name: str, expected: dict[str, Any]) -> None:
    assert parse_ice_dump(read_dump(name)) == expected


def test_ice_dump_without_ice() -> None:
    assert parse_ice_dump(read_dump("no-ice.dump")) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("srtp-no-ice.dump", "AES_256_CM_HMAC_SHA1_80"),
        ("no-ice.dump", None),
        ("ice-host-controlling.dump", None),
    ],
)
def test_srtp_dump_suite(name: str, expected: str | None) -> None:
    assert parse_srtp_dump(read_dump(name)) == expected


def test_ice_dump_before_pair_selected() -> None:
    text = read_dump("ice-host-controlling.dump")
    head = text.split("[0]:")[0].replace(
        "Negotiation Success", "Negotiation In Progress"
    )
    pair = parse_ice_dump(head)
    assert pair is not None
    assert pair["state"] == "checking"
    assert pair["local_type"] is None
    assert pair["remote_type"] is None


def test_ice_dump_failed_state() -> None:
    text = read_dump("ice-host-controlling.dump").replace(
        "Negotiation Success", "Negotiation Failed"
    )
    pair = parse_ice_dump(text)
    assert pair is not None
    assert pair["state"] == "failed"


@pytest.mark.parametrize(
    ("python_level", "pjsip_level"),
    [
        (logging.DEBUG, 5),
        (logging.INFO, 3),
        (logging.WARNING, 2),
        (logging.ERROR, 1),
        (logging.CRITICAL, 0),
    ],
)
def test_pjsip_log_level(python_level: int, pjsip_level: int) -> None:
    assert pjsip_log_level(python_level) == pjsip_level


@pytest.mark.parametrize(
    ("pjsip_level", "python_level"),
    [
        (0, logging.ERROR),
        (1, logging.ERROR),
        (2, logging.WARNING),
        (3, logging.DEBUG),
        (5, logging.DEBUG),
        (6, logging.DEBUG),
    ],
)
def test_python_log_level(pjsip_level: int, python_level: int) -> None:
    assert python_log_level(pjsip_level) == python_level


@pytest.mark.parametrize(
    ("uri", "transport", "expected"),
    [
        ("sip:echo@10.99.1.1:5070", "udp", "sip:echo@10.99.1.1:5070"),
        ("sip:echo@10.99.1.1:5070", "tcp", "sip:echo@10.99.1.1:5070;transport=tcp"),
        ("sip:echo@10.99.1.1;transport=tcp", "tcp", "sip:echo@10.99.1.1;transport=tcp"),
    ],
)
def test_dial_target_uri(uri: str, transport: str, expected: str) -> None:
    assert dial.target_uri(uri, transport) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("X-Test: 1", ("X-Test", "1")),
        (
            "P-Asserted-Identity:  <sip:1000@lab.test> ",
            ("P-Asserted-Identity", "<sip:1000@lab.test>"),
        ),
    ],
)
def test_dial_header_valid(value: str, expected: tuple[str, str]) -> None:
    assert dial.parse_header(value) == expected


@pytest.mark.parametrize("value", ["NoColon", "Bad Name: x", ": x", "X-A: b\r\nX-B: c"])
def test_dial_header_invalid(value: str) -> None:
    with pytest.raises(click.BadParameter):
        dial.parse_header(value)


@pytest.mark.parametrize("value", ["10.99.0.1:3478", "turn.lab.test:3478"])
def test_host_port_valid(value: str) -> None:
    assert dial.parse_host_port(value, "--turn") == value


@pytest.mark.parametrize(
    "value", ["10.99.0.1", "10.99.0.1:0", "10.99.0.1:70000", ":3478"]
)
def test_host_port_invalid(value: str) -> None:
    with pytest.raises(click.BadParameter):
        dial.parse_host_port(value, "--turn")


def make_report(answered: bool, tx: int, rx: int, ended_by: str) -> dict[str, Any]:
    report = dial.empty_report()
    report.update(
        answered=answered, ended_by=ended_by, rtp={"tx_packets": tx, "rx_packets": rx}
    )
    return report


@pytest.mark.parametrize(
    ("answered", "tx", "rx", "ended_by", "hangup", "code"),
    [
        (True, 150, 150, "local", "local", 0),
        (True, 150, 0, "local", "local", 1),
        (True, 0, 150, "local", "local", 1),
        (False, 0, 0, "remote", "local", 1),
        (True, 150, 150, "remote", "remote", 0),
        (True, 150, 150, "local", "remote", 1),
    ],
)
def test_dial_exit_code(
    answered: bool, tx: int, rx: int, ended_by: str, hangup: str, code: int
) -> None:
    assert dial.exit_code(make_report(answered, tx, rx, ended_by), hangup) == code


def test_dial_text_report_names_failure() -> None:
    report = dial.empty_report()
    report.update(
        status=486,
        reason="Busy Here",
        ended_by="remote",
        error="call failed: 486 Busy Here",
    )
    text = dial.format_text(report)
    assert "status: 486 Busy Here" in text
    assert "answered: no" in text
    assert "error: call failed: 486 Busy Here" in text


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("10.99.41.1", False),
        ("0.0.0.0", False),
        ("lab.test", False),
        (None, False),
    ],
)
def test_is_loopback(address: str | None, expected: bool) -> None:
    assert is_loopback(address) is expected
