"""How the supervisor relays Kamailio's log lines."""

from __future__ import annotations

import logging

import pytest

from b2bua.supervisor import RepeatLimiter, parse_kamailio_log_line

SCRIPT_LINE = (" 7(1234) INFO: {1 1 INVITE c1} app_python3 [apy_kemi.c:1]: "
               "sr_kemi_core_info(): call c1: received INVITE\n")


def core_line(level: str, module: str, text: str) -> str:
    return f" 7(1234) {level}: {module} [receive.c:100]: some_function(): {text}\n"


def test_script_line_keeps_level() -> None:
    assert parse_kamailio_log_line(SCRIPT_LINE) == (
        logging.INFO, "call c1: received INVITE")


@pytest.mark.parametrize(("module", "text"), [
    ("<core>", "invalid header name for [ThisLineHasNoColon"),
    ("<core>", "bad header field [ThisLineHasNoColon"),
    ("<core>", "alas, parse_headers failed"),
    ("sanity", "failed to parse headers"),
    ("sanity", "failed to send 400 reply"),
])
def test_malformed_request_errors_demoted(module: str, text: str) -> None:
    parsed = parse_kamailio_log_line(core_line("ERROR", module, text))
    assert parsed == (logging.DEBUG, f"{module}: {text}")


def test_other_core_errors_kept() -> None:
    parsed = parse_kamailio_log_line(
        core_line("ERROR", "<core>", "required headers not found in request"))
    assert parsed == (logging.ERROR, "<core>: required headers not found in request")


def test_core_info_demoted() -> None:
    parsed = parse_kamailio_log_line(core_line("INFO", "<core>", "listening on"))
    assert parsed is not None
    assert parsed[0] == logging.DEBUG


def test_repeats_counted_within_window() -> None:
    limiter = RepeatLimiter(window_s=10.0)
    assert limiter.admit("boom", now=100.0) == "boom"
    assert limiter.admit("boom", now=101.0) is None
    assert limiter.admit("boom", now=105.0) is None
    assert limiter.admit("other", now=105.0) == "other"
    assert limiter.admit("boom", now=111.0) == "boom (2 more in the last 11 s)"
    assert limiter.admit("boom", now=122.0) == "boom"
