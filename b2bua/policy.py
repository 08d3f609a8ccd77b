"""Media policies of the edge leg, and how the edge names them to a worker.

pjsua fixes ICE, TURN and SRTP per account, and picks the account for an
incoming INVITE by the host of the To URI. So each worker holds one account
per policy, and the edge rewrites the To URI host to name the policy the
call needs (for example `ice-turn-optional.policy.b2bua.invalid`), restoring
the caller's To on the way back. Standard library only: the edge imports
this module too.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICY_DOMAIN = "policy.b2bua.invalid"
SRTP_MODES = ("off", "optional", "required")

# NOTE: PJSUA_MAX_ACC (8 upstream; not measured in this wheel) caps policies.
MAX_POLICIES = 8


@dataclass(frozen=True)
class MediaPolicy:
    """ICE, TURN and SRTP settings of one leg."""

    ice: bool
    turn: bool
    srtp: str

    @property
    def name(self) -> str:
        ice = "ice" if self.ice else "noice"
        turn = "turn" if self.ice and self.turn else "noturn"
        return f"{ice}-{turn}-{self.srtp}"


def parse_policy_name(name: str) -> MediaPolicy:
    """Parse a name made by `MediaPolicy.name`; raise ValueError otherwise."""
    parts = name.split("-")
    if (
        len(parts) != 3
        or parts[0] not in ("ice", "noice")
        or parts[1] not in ("turn", "noturn")
        or parts[2] not in SRTP_MODES
    ):
        raise ValueError(f"invalid media policy name {name!r}")
    return MediaPolicy(ice=parts[0] == "ice", turn=parts[1] == "turn", srtp=parts[2])


def policy_host(name: str) -> str:
    return f"{name}.{POLICY_DOMAIN}"


def policy_from_host(host: str) -> str | None:
    """Return the policy name a To URI host carries, or None."""
    suffix = "." + POLICY_DOMAIN
    if not host.lower().endswith(suffix):
        return None
    return host[: -len(suffix)].lower()
