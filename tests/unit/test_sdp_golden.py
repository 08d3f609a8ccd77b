"""Golden tests: each rewrite rule turns `<case>.in.sdp` into `<case>.out.sdp`.

Files live in tests/data/sdp. `{ADDR}` and `{PORT}` are the worker's media
address and port, which change per run. The runner fills in fresh values in
the input, in the optional `<case>.offer.sdp` and in the expected output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from b2bua.sdp import parse_sdp
from b2bua.sdp_rewrite import (
    ANSWER,
    OFFER,
    LegContext,
    answer_rejections,
    compile_rules,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "sdp"


@dataclass(frozen=True)
class GoldenCase:
    name: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    direction: str = OFFER
    initial: bool = True


CASES = [
    GoldenCase("block_bfcp_answer", [{"rule": "block_bfcp"}], ANSWER, False),
    GoldenCase("block_bfcp_new_offer", [{"rule": "block_bfcp"}], OFFER, True),
    GoldenCase("block_bfcp_m_stream", [{"rule": "block_bfcp"}], OFFER, False),
    GoldenCase("refuse_non_audio", [{"rule": "refuse_non_audio"}], OFFER, False),
    GoldenCase(
        "strip_attribute",
        [{"rule": "strip_attribute", "name": "x-ssrc-range", "media": "audio"}],
    ),
    GoldenCase("strip_codec", [{"rule": "strip_codec", "codec": "G729"}]),
    GoldenCase(
        "reorder_codecs", [{"rule": "reorder_codecs", "order": ["PCMA", "pcmu"]}]
    ),
    GoldenCase(
        "rewrite_origin",
        [{"rule": "rewrite_origin", "username": "b2bua", "address": "{ADDR}"}],
    ),
    GoldenCase(
        "rewrite_session_name", [{"rule": "rewrite_session_name", "name": "b2bua"}]
    ),
    GoldenCase("choose_crypto", [{"rule": "choose_crypto"}]),
    GoldenCase("no_hold_first", [{"rule": "no_hold_first"}]),
    GoldenCase("encryption", [{"rule": "encryption", "policy": "optional"}], ANSWER),
    GoldenCase("answer_rejections", [], ANSWER),
]


def _values() -> dict[str, str]:
    # A TEST-NET-1 address: the golden tests never send anything.
    return {
        "{ADDR}": f"192.0.2.{random.randint(1, 254)}",
        "{PORT}": str(random.randrange(4000, 65000, 2)),
    }


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _fill_rules(
    rules: list[dict[str, Any]], values: dict[str, str]
) -> list[dict[str, Any]]:
    return [
        {key: _fill(val, values) if isinstance(val, str) else val
         for key, val in rule.items()}
        for rule in rules
    ]


def _read(name: str, values: dict[str, str]) -> str | None:
    path = DATA / name
    if not path.exists():
        return None
    return _fill(path.read_text(), values)


def run_case(case: GoldenCase, values: dict[str, str]) -> str:
    source = _read(f"{case.name}.in.sdp", values)
    assert source is not None, f"missing {case.name}.in.sdp"
    offer_text = _read(f"{case.name}.offer.sdp", values)
    offer = parse_sdp(offer_text) if offer_text else None
    sdp = parse_sdp(source)
    if case.name == "answer_rejections":
        assert offer is not None
        return answer_rejections(offer, sdp).to_text()
    rules = compile_rules(_fill_rules(case.rules, values), where=case.name)
    context = LegContext(case.direction, case.initial, offer)
    return rules.apply(sdp, context).to_text()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_rule_output(case: GoldenCase) -> None:
    values = _values()
    expected = _read(f"{case.name}.out.sdp", values)
    assert expected is not None, f"missing {case.name}.out.sdp"
    assert run_case(case, values) == expected


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_input_changes(case: GoldenCase) -> None:
    # A case whose output equals its input would pass with a rule that does
    # nothing.
    values = _values()
    source = _read(f"{case.name}.in.sdp", values)
    expected = _read(f"{case.name}.out.sdp", values)
    assert source != expected


def test_every_rule_has_golden_case() -> None:
    from b2bua.sdp_rewrite import RULE_NAMES

    covered = {rule["rule"] for case in CASES for rule in case.rules}
    assert covered == set(RULE_NAMES)
