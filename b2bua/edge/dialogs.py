"""Read the edge's dialog listings (kamcmd `dlg.list`, `dlg.profile_list`).

The supervisor ends a dead worker's calls through Kamailio's RPC interface.
How it ends one depends on the dialog's state: a confirmed dialog gets BYEs
from the dialog module, but one still being set up has only a pending INVITE
transaction, which needs a final response instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.sipmsg import SipParseError, parse_sip_uri

# Dialog states as `dlg.list` prints them (Kamailio 5.6 dialog module).
STATE_UNCONFIRMED = 1
STATE_EARLY = 2
STATE_CONFIRMED_NO_ACK = 3
STATE_CONFIRMED = 4
STATE_DELETED = 5


@dataclass(frozen=True)
class EdgeDialog:
    """The fields of an edge dialog that the supervisor needs to end it."""

    h_entry: int
    h_id: int
    call_id: str
    state: int
    caller_cseq: str
    caller_contact: str = ""

    @property
    def confirmed(self) -> bool:
        return self.state in (STATE_CONFIRMED_NO_ACK, STATE_CONFIRMED)

    @property
    def in_setup(self) -> bool:
        return self.state in (STATE_UNCONFIRMED, STATE_EARLY)

    def caller_is(self, host: str, port: int) -> bool:
        """Tell whether the dialog's caller Contact is host:port.

        A worker is the caller of its outgoing legs, so this separates them
        from the calls the worker receives.
        """
        try:
            contact = parse_sip_uri(self.caller_contact)
        except SipParseError:
            return False
        return contact.host == host and (contact.port or 5060) == port


def parse_dialog_list(output: str) -> list[EdgeDialog]:
    """Parse kamcmd's text form of a dialog listing.

    Each dialog is a brace block of `key: value` lines with nested blocks
    (caller, callee, profiles, variables). A block missing h_entry, h_id or
    state is skipped, because it cannot be acted on.
    """
    dialogs = []
    depth = 0
    nested = ""
    fields: dict[str, str] = {}
    for raw in output.splitlines():
        line = raw.strip()
        if line.endswith("{"):
            depth += 1
            if depth == 1:
                fields = {}
            elif depth == 2:
                nested = line[:-1].rstrip().rstrip(":").strip()
            continue
        if line == "}":
            if depth == 1:
                dialog = _dialog_from_fields(fields)
                if dialog is not None:
                    dialogs.append(dialog)
            depth = max(depth - 1, 0)
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if depth == 1:
            fields[key.strip()] = value.strip()
        elif depth == 2 and nested == "caller":
            fields[f"caller.{key.strip()}"] = value.strip()
    return dialogs


def _dialog_from_fields(fields: dict[str, str]) -> EdgeDialog | None:
    try:
        return EdgeDialog(
            h_entry=int(fields["h_entry"]),
            h_id=int(fields["h_id"]),
            call_id=fields.get("call-id", ""),
            state=int(fields["state"]),
            caller_cseq=fields.get("caller.cseq", ""),
            caller_contact=fields.get("caller.contact", ""),
        )
    except (KeyError, ValueError):
        return None
