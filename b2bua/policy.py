"""Media policies of the edge leg, and how the edge names them to a worker.

pjsua fixes ICE, TURN and SRTP per account, and picks the account for an
incoming INVITE by the host of the To URI. So each worker holds one account
per policy, and the edge rewrites the To URI host to name the policy the
call needs (for example `ice-turn-optional.inside.policy.b2bua.invalid` for
the network service `inside`), restoring
the caller's To on the way back. Standard library only: the edge imports
this module too.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICY_DOMAIN = "policy.b2bua.invalid"
SRTP_MODES = ("off", "optional", "required")

# NOTE: PJSUA_MAX_ACC (8 upstream; not measured in this wheel) caps accounts.
MAX_ACCOUNTS = 8


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


def policy_host(name: str, service: str = "default") -> str:
    """Return the To URI host that selects the account of a policy and service."""
    return f"{name}.{service}.{POLICY_DOMAIN}"


def account_key(service: str, policy_name: str) -> str:
    """Return the key of one worker account: a network service and a policy."""
    return f"{service}/{policy_name}"


def split_account_key(key: str) -> tuple[str, str]:
    """Return (service, policy name) of an `account_key`; raise ValueError."""
    service, slash, policy_name = key.partition("/")
    if not slash or not service:
        raise ValueError(f"invalid account key {key!r}; expected service/policy")
    parse_policy_name(policy_name)
    return service, policy_name
