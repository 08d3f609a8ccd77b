"""Parsing kamcmd dialog listings, as the supervisor does for a dead worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.edge.dialogs import (
    STATE_CONFIRMED,
    STATE_EARLY,
    EdgeDialog,
    parse_dialog_list,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "edge"


def load(name: str) -> list[EdgeDialog]:
    return parse_dialog_list((DATA / name).read_text())


def test_mixed_listing_keeps_state_and_cseq() -> None:
    dialogs = load("profile-list-confirmed-and-early.txt")
    assert [(d.call_id, d.state, d.caller_cseq) for d in dialogs] == [
        ("AhQzT6mshtrkOm7oAq7i192sPOUaLGRL", STATE_CONFIRMED, "19277"),
        (".PDCBQl7rfpf.Lez9AmNTJ0jhC10.Ck1", STATE_EARLY, "8435"),
        ("1rtjnfMTBqFDKUo228..WSBHaBFnWylw", STATE_EARLY, "23095"),
    ]


def test_worker_is_caller_of_its_outgoing_leg() -> None:
    incoming, outgoing = load("profile-list-confirmed-and-early.txt")[1:]
    assert not incoming.caller_is("127.0.0.1", 5100)
    assert outgoing.caller_is("127.0.0.1", 5100)
    assert not outgoing.caller_is("127.0.0.1", 5101)


@pytest.mark.parametrize(("state", "confirmed", "in_setup"), [
    (1, False, True),
    (2, False, True),
    (3, True, False),
    (4, True, False),
    (5, False, False),
])
def test_state_classes(state: int, confirmed: bool, in_setup: bool) -> None:
    dialog = EdgeDialog(1, 2, "c", state, "1")
    assert dialog.confirmed is confirmed
    assert dialog.in_setup is in_setup


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("error: 404 - Not found\n", []),
    # A block without h_id cannot be ended and is skipped.
    ("{\n\th_entry: 1\n\tstate: 4\n}\n", []),
    ("{\n\th_entry: 1\n\th_id: x\n\tstate: 4\n}\n", []),
    (("{\n\th_entry: 7\n\th_id: 9\n\tcall-id: a:b\n\tstate: 2\n"
     "\tcaller: {\n\t\tcseq: 12\n\t\tcontact: sip:u@192.0.2.1\n\t}\n"
     "\tcallee: {\n\t\tcseq: 99\n\t}\n}\n"),
     [EdgeDialog(7, 9, "a:b", 2, "12", "sip:u@192.0.2.1")]),
])
def test_listing_edge_cases(text: str, expected: list[EdgeDialog]) -> None:
    assert parse_dialog_list(text) == expected
