"""Classify a call as local, remote or federation, and record why.

Two questions decide the class. Whose party is it? Ours when the From and
P-Asserted-Identity domains are local domains, another organisation's when a
domain is not local or a trusted edge trust header names a federated source.
Did the request arrive from outside? Yes when a trusted trust header is
present, when an edge server sent or relayed it, or when its source address
is outside the internal networks. Another organisation's party is
federation, our party from outside is remote, and our party from inside is
local.

Standard library only, because the Kamailio edge imports this module in
Debian's embedded Python.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from b2bua.sipmsg import (
    SipMessage,
    SipParseError,
    name_addr_uri,
    parse_sip_uri,
    split_header_list,
)

logger = logging.getLogger(__name__)

CALL_CLASSES = ("local", "remote", "federation")
PUBLIC_CLOUD_CLASSES = ("federation", "remote")

# The edge strips this header from every incoming request and sets it on the
# request it relays to a worker, so no caller can choose its own class.
CLASS_HEADER = "X-B2BUA-Class"
TRUST_HEADER = "ms-edge-proxy-message-trust"

# Lync / Skype for Business edge values (MS-SIPRE) that mark a party of
# another organisation.
FEDERATED_SOURCE_TYPES = frozenset(
    {"directpartner", "autofederation", "authorizedserver"}
)

MAX_REASON_LENGTH = 240
MAX_VALUE_LENGTH = 120

# Signal questions and their answers.
PARTY = "party"
ARRIVAL = "arrival"
OURS = "ours"
OTHER_ORGANISATION = "other-organisation"
PUBLIC_CLOUD = "public-cloud"
INSIDE = "inside"
OUTSIDE = "outside"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Signal:
    """One observation about a request, and how it answers one of two questions.

    `question` is PARTY or ARRIVAL. `answer` is None when the signal does not
    answer its question (a tel: URI, no internal networks configured).
    `counted` is False for a signal that was ignored, and `note` says why.
    """

    name: str
    value: str
    question: str
    answer: str | None
    counted: bool = True
    note: str = ""

    def describe(self) -> str:
        """Format the signal as one line for logs and the CLI."""
        text = f"{self.name} {self.value}"
        if self.answer:
            text += f" -> {self.question} {self.answer}"
        if self.note:
            text += f" ({self.note})"
        if not self.counted:
            text += " [ignored]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "question": self.question,
            "answer": self.answer,
            "counted": self.counted,
            "note": self.note,
        }


@dataclass(frozen=True)
class Rejection:
    """A SIP final response that rejects the request, with its reason text."""

    status: int
    reason: str

    def reason_header(self) -> str:
        """Format the value of a Reason header (RFC 3326) for this rejection."""
        return f'SIP;cause={self.status};text="{_quote(self.reason)}"'


@dataclass(frozen=True)
class Classification:
    """The class of a call, every signal seen, and the ones that decided."""

    call_class: str
    reason: str
    signals: tuple[Signal, ...] = ()
    decided_by: tuple[Signal, ...] = ()
    warnings: tuple[str, ...] = ()
    federation_verdict: Rejection | None = None

    def to_dict(self) -> dict[str, Any]:
        verdict = None
        if self.federation_verdict is not None:
            verdict = {
                "status": self.federation_verdict.status,
                "reason": self.federation_verdict.reason,
            }
        return {
            "class": self.call_class,
            "reason": self.reason,
            "decided_by": [signal.name for signal in self.decided_by],
            "signals": [signal.to_dict() for signal in self.signals],
            "warnings": list(self.warnings),
            "federation_rejection": verdict,
        }


@dataclass(frozen=True)
class ClassifyPolicy:
    """Classification and federation settings, parsed from the config."""

    local_domains: tuple[str, ...] = ()
    internal_networks: tuple[IPNetwork, ...] = ()
    edge_networks: tuple[IPNetwork, ...] = ()
    edge_names: tuple[str, ...] = ()
    trusted_networks: tuple[IPNetwork, ...] = ()
    trusted_names: tuple[str, ...] = ()
    public_cloud: str = "federation"
    federation_allow: tuple[str, ...] = ()
    federation_deny: tuple[str, ...] = ()

    @classmethod
    def from_sections(
        cls,
        classification: Mapping[str, Any] | None,
        federation: Mapping[str, Any] | None,
    ) -> ClassifyPolicy:
        """Build a policy from the `classification` and `federation` sections.

        Missing keys mean empty lists and `public_cloud: federation`. Entries
        of `edge_servers` and `trusted_peers` are addresses, CIDR networks or
        host names. A name matches Via and Record-Route hosts and the TLS
        peer, never a source address. Raise ValueError naming the key path
        and the invalid value.
        """
        section = dict(classification or {})
        federation_section = dict(federation or {})
        edge_networks, edge_names = _parse_peers(section, "edge_servers")
        trusted_networks, trusted_names = _parse_peers(section, "trusted_peers")
        public_cloud = str(section.get("public_cloud") or "federation").lower()
        if public_cloud not in PUBLIC_CLOUD_CLASSES:
            raise ValueError(
                f"classification.public_cloud: invalid value {public_cloud!r}; "
                "expected federation or remote"
            )
        return cls(
            local_domains=_parse_domains(section, "classification", "local_domains"),
            internal_networks=tuple(
                _parse_network(entry, f"classification.internal_networks[{index}]")
                for index, entry in enumerate(
                    _string_list(section, "internal_networks")
                )
            ),
            edge_networks=edge_networks,
            edge_names=edge_names,
            trusted_networks=trusted_networks,
            trusted_names=trusted_names,
            public_cloud=public_cloud,
            federation_allow=_parse_domains(federation_section, "federation", "allow"),
            federation_deny=_parse_domains(federation_section, "federation", "deny"),
        )


def _string_list(section: Mapping[str, Any], key: str) -> list[str]:
    value = section.get(key)
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}: expected a list of strings, got {value!r}")
    result = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(
                f"{key}[{index}]: expected a non-empty string, got {entry!r}"
            )
        result.append(entry.strip())
    return result


def _parse_domains(section: Mapping[str, Any], name: str, key: str) -> tuple[str, ...]:
    try:
        entries = _string_list(section, key)
    except ValueError as exc:
        raise ValueError(f"{name}.{exc}") from None
    return tuple(_normalise_domain(entry) for entry in entries)


def _parse_network(text: str, path: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{path}: invalid network {text!r}; expected an address or CIDR "
            "such as 10.0.0.0/8"
        ) from None


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def _parse_peers(
    section: Mapping[str, Any], key: str
) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
    try:
        entries = _string_list(section, key)
    except ValueError as exc:
        raise ValueError(f"classification.{exc}") from None
    networks: list[IPNetwork] = []
    names: list[str] = []
    for index, entry in enumerate(entries):
        path = f"classification.{key}[{index}]"
        if _HOST_NAME.fullmatch(entry) and not re.fullmatch(r"[0-9.]+", entry):
            names.append(_normalise_domain(entry))
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"{path}: invalid entry {entry!r}; expected an address, a CIDR "
                "network or a host name"
            ) from None
    return tuple(networks), tuple(names)


def _normalise_domain(text: str) -> str:
    return text.strip().lower().rstrip(".")


def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    """Return whether `domain` matches one of `patterns`.

    A pattern is a domain that matches itself only, `*.example.net` that
    matches every subdomain of example.net, or `*` that matches any domain.
    """
    domain = _normalise_domain(domain)
    for pattern in patterns:
        if pattern == "*" or pattern == domain:
            return True
        if pattern.startswith("*.") and domain.endswith(pattern[1:]):
            return True
    return False


def parse_address(text: str | None) -> IPAddress | None:
    """Parse an IP address written bare, with a port, or as [v6]:port."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in_networks(address: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def _clean_text(text: str, limit: int) -> str:
    """Replace control characters (CR and LF included) and cut to `limit`."""
    cleaned = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3].rstrip() + "..."
    return cleaned


def _quote(text: str) -> str:
    """Escape text for a SIP quoted-string (RFC 3261 section 25.1)."""
    cleaned = _clean_text(text, MAX_REASON_LENGTH)
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')


class _WarningLog:
    """Log warnings at most `limit` times per `window` seconds.

    Callers control the trust header and the From domain, so a flood of
    forged requests must not flood the log. The limit is per process.
    """

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self._limit = limit
        self._window = window
        self._window_start = time.monotonic()
        self._count = 0
        self._suppressed = 0

    def warning(self, call_id: str, text: str) -> None:
        now = time.monotonic()
        if now - self._window_start >= self._window:
            if self._suppressed:
                logger.warning(
                    "%d classification warnings suppressed in the last %.0f s",
                    self._suppressed,
                    now - self._window_start,
                )
            self._window_start = now
            self._count = 0
            self._suppressed = 0
        if self._count < self._limit:
            self._count += 1
            logger.warning("call %s: %s", call_id, text)
        else:
            self._suppressed += 1


_warning_log = _WarningLog()


def _identity_signals(message: SipMessage, policy: ClassifyPolicy) -> list[Signal]:
    signals = []
    sources = [("from-domain", value) for value in message.header_values("From")]
    for header in message.header_values("P-Asserted-Identity"):
        sources.extend(("pai-domain", value) for value in split_header_list(header))
    for name, value in sources:
        uri = name_addr_uri(value)
        printable = _clean_text(uri, MAX_VALUE_LENGTH)
        if uri.lower().startswith("tel:"):
            signals.append(
                Signal(name, printable, PARTY, None, False, "tel URI has no domain")
            )
            continue
        try:
            domain = parse_sip_uri(uri).host
        except SipParseError:
            signals.append(Signal(name, printable, PARTY, None, False, "not a SIP URI"))
            continue
        printable = _clean_text(domain, MAX_VALUE_LENGTH)
        if domain_matches(domain, policy.local_domains):
            signals.append(Signal(name, printable, PARTY, OURS, note="local domain"))
        else:
            signals.append(
                Signal(name, printable, PARTY, OTHER_ORGANISATION, note="not local")
            )
    return signals


def _trust_parameters(value: str) -> dict[str, str]:
    params = {}
    for item in value.split(";"):
        key, _, val = item.partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return params


def _trust_header_signals(
    message: SipMessage, trusted_peer: bool, peer: str
) -> list[Signal]:
    signals = []
    for value in message.header_values(TRUST_HEADER):
        params = _trust_parameters(value)
        source_type = params.get("ms-source-type", "")
        network = params.get("ms-source-network", "")
        shown_parts = []
        if source_type:
            shown_parts.append(f"ms-source-type={source_type}")
        if network:
            shown_parts.append(f"ms-source-network={network}")
        printable = _clean_text(";".join(shown_parts) or value, MAX_VALUE_LENGTH)
        if trusted_peer:
            note = f"from trusted peer {peer}"
        else:
            note = f"from untrusted peer {peer}"

        party = None
        if network.lower() == "federation":
            party = OTHER_ORGANISATION
        elif network.lower() == "publiccloud":
            party = PUBLIC_CLOUD
        elif source_type.lower() in FEDERATED_SOURCE_TYPES:
            party = OTHER_ORGANISATION
        if party is not None:
            signals.append(
                Signal("trust-header", printable, PARTY, party, trusted_peer, note)
            )
        signals.append(
            Signal("trust-header", printable, ARRIVAL, OUTSIDE, trusted_peer, note)
        )
    return signals


def _via_hosts(value: str) -> list[str]:
    """Return the sent-by host and the received address of one Via value."""
    parts = value.split(";")
    sent = parts[0].split(None, 1)
    hosts = []
    if len(sent) == 2:
        sent_by = sent[1].strip()
        if sent_by.startswith("["):
            hosts.append(sent_by[1:].split("]", 1)[0])
        else:
            hosts.append(sent_by.split(":", 1)[0])
    for param in parts[1:]:
        key, _, val = param.partition("=")
        if key.strip().lower() == "received" and val.strip():
            hosts.append(val.strip().strip("[]"))
    return [host.lower() for host in hosts if host]


def top_via_source(message: SipMessage) -> str | None:
    """Return the top Via's received address, or its sent-by host."""
    for header in message.header_values("Via"):
        for value in split_header_list(header):
            hosts = _via_hosts(value)
            return hosts[-1] if hosts else None
    return None


def _matches_edge(host: str, policy: ClassifyPolicy) -> bool:
    address = parse_address(host)
    if address is not None:
        return _in_networks(address, policy.edge_networks)
    return domain_matches(host, policy.edge_names)


def _edge_signals(
    message: SipMessage,
    source: IPAddress | None,
    tls_peer: str | None,
    policy: ClassifyPolicy,
) -> list[Signal]:
    signals = []
    if _in_networks(source, policy.edge_networks):
        signals.append(Signal("edge-source", str(source), ARRIVAL, OUTSIDE))
    if tls_peer and _matches_edge(tls_peer, policy):
        printable = _clean_text(tls_peer, MAX_VALUE_LENGTH)
        signals.append(Signal("edge-tls-peer", printable, ARRIVAL, OUTSIDE))
    seen: set[tuple[str, str]] = set()
    for header in message.header_values("Via"):
        for value in split_header_list(header):
            for host in _via_hosts(value):
                if _matches_edge(host, policy) and ("edge-via", host) not in seen:
                    seen.add(("edge-via", host))
                    printable = _clean_text(host, MAX_VALUE_LENGTH)
                    signals.append(Signal("edge-via", printable, ARRIVAL, OUTSIDE))
    for header in message.header_values("Record-Route"):
        for value in split_header_list(header):
            try:
                host = parse_sip_uri(name_addr_uri(value)).host.strip("[]")
            except SipParseError:
                continue
            if _matches_edge(host, policy) and ("edge-rr", host) not in seen:
                seen.add(("edge-rr", host))
                printable = _clean_text(host, MAX_VALUE_LENGTH)
                signals.append(Signal("edge-record-route", printable, ARRIVAL, OUTSIDE))
    return signals


def _source_signal(
    source_text: str | None, source: IPAddress | None, policy: ClassifyPolicy
) -> Signal:
    if not source_text:
        return Signal("source-address", "unknown", ARRIVAL, None, False, "not given")
    printable = _clean_text(source_text, MAX_VALUE_LENGTH)
    if source is None:
        return Signal(
            "source-address", printable, ARRIVAL, None, False, "not an IP address"
        )
    if not policy.internal_networks:
        note = "no internal networks configured"
        return Signal("source-address", printable, ARRIVAL, None, False, note)
    if _in_networks(source, policy.internal_networks):
        return Signal(
            "source-address", printable, ARRIVAL, INSIDE, note="internal network"
        )
    return Signal(
        "source-address", printable, ARRIVAL, OUTSIDE, note="outside internal networks"
    )


def sdp_host_addresses(body: bytes) -> list[IPAddress]:
    """Return the addresses of host candidates and c= lines in an SDP body.

    Every line of the body is read, so each SDP part of a multipart body
    counts. Unspecified addresses and host names are skipped.
    """
    # NOTE: candidates in the MS ICE draft 6 form have no "typ" field, so
    # this hint skips them.
    addresses: list[IPAddress] = []
    for raw_line in body.decode("utf-8", "replace").splitlines():
        line = raw_line.strip()
        text = None
        if line.startswith(("a=candidate:", "a=x-candidate-ipv6:")):
            fields = line.split(":", 1)[1].split()
            if (
                len(fields) >= 8
                and fields[6].lower() == "typ"
                and fields[7].lower() == "host"
            ):
                text = fields[4]
        elif line.startswith("c="):
            fields = line[2:].split()
            if len(fields) >= 3:
                text = fields[2].split("/", 1)[0]
        address = parse_address(text)
        if (
            address is not None
            and not address.is_unspecified
            and address not in addresses
        ):
            addresses.append(address)
    return addresses


def _sdp_hint_signal(
    message: SipMessage, policy: ClassifyPolicy, needed: bool
) -> Signal | None:
    content_type = message.content_type()
    if content_type != "application/sdp" and not content_type.startswith("multipart/"):
        return None
    addresses = sdp_host_addresses(message.body)
    if not addresses:
        return None
    printable = _clean_text(
        ",".join(str(address) for address in addresses), MAX_VALUE_LENGTH
    )
    if not policy.internal_networks:
        note = "no internal networks configured"
        return Signal("sdp-host-addresses", printable, ARRIVAL, None, False, note)
    inside = all(
        _in_networks(address, policy.internal_networks) for address in addresses
    )
    answer = INSIDE if inside else OUTSIDE
    note = "hint" if needed else "hint, not needed"
    return Signal("sdp-host-addresses", printable, ARRIVAL, answer, needed, note)


def _is_trusted_peer(
    source: IPAddress | None, tls_peer: str | None, policy: ClassifyPolicy
) -> bool:
    if _in_networks(source, policy.trusted_networks):
        return True
    if not tls_peer:
        return False
    peer_address = parse_address(tls_peer)
    if peer_address is not None:
        return _in_networks(peer_address, policy.trusted_networks)
    return _normalise_domain(tls_peer) in policy.trusted_names


def _decide_party(
    signals: list[Signal], warnings: list[str]
) -> tuple[str, list[Signal]]:
    counted = [s for s in signals if s.question == PARTY and s.counted and s.answer]
    trust = [s for s in counted if s.name == "trust-header"]
    domains = [s for s in counted if s.name != "trust-header"]
    if len({s.answer for s in counted}) > 1:
        listing = ", ".join(f"{s.name} {s.value} -> {s.answer}" for s in counted)
        warnings.append(f"party signals disagree: {listing}")
    for answer in (OTHER_ORGANISATION, PUBLIC_CLOUD):
        deciding = [s for s in trust if s.answer == answer]
        if deciding:
            return answer, deciding
    foreign = [s for s in domains if s.answer == OTHER_ORGANISATION]
    if foreign:
        return OTHER_ORGANISATION, foreign
    if domains:
        return OURS, domains
    warnings.append(
        "no From or P-Asserted-Identity domain to check, so the party is "
        "treated as another organisation's"
    )
    return OTHER_ORGANISATION, []


def _decide_arrival(
    signals: list[Signal], warnings: list[str]
) -> tuple[str, list[Signal]]:
    counted = [s for s in signals if s.question == ARRIVAL and s.counted and s.answer]
    outside = [s for s in counted if s.answer == OUTSIDE]
    if outside:
        return OUTSIDE, outside
    if counted:
        return INSIDE, counted
    warnings.append(
        "no signal shows where the request came from, so it is assumed outside"
    )
    return OUTSIDE, []


def _reason_step(question: str, answer: str, deciders: list[Signal]) -> str:
    if not deciders:
        return f"{question} {answer} by default"
    listed = ", ".join(f"{signal.name}={signal.value}" for signal in deciders)
    return f"{question} {answer} by {listed}"


def classify(
    message: SipMessage,
    source: str | None,
    policy: ClassifyPolicy,
    *,
    tls_peer: str | None = None,
) -> Classification:
    """Classify a request from its headers, its source address and the policy.

    `source` is the address the request came from (as `host` or
    `host:port`), `tls_peer` the verified name or address of the TLS peer.
    The trust header counts only when one of them is a trusted peer.
    """
    call_id = _clean_text(message.header("Call-ID") or "-", MAX_VALUE_LENGTH)
    source_address = parse_address(source)
    trusted_peer = _is_trusted_peer(source_address, tls_peer, policy)
    peer_text = _clean_text(tls_peer or source or "unknown", MAX_VALUE_LENGTH)
    warnings: list[str] = []

    signals = _identity_signals(message, policy)
    trust_signals = _trust_header_signals(message, trusted_peer, peer_text)
    if trust_signals and not trusted_peer:
        warnings.append(f"{TRUST_HEADER} ignored: {peer_text} is not a trusted peer")
    signals += trust_signals
    signals += _edge_signals(message, source_address, tls_peer, policy)
    signals.append(_source_signal(source, source_address, policy))
    answered = any(
        s.question == ARRIVAL and s.counted and s.answer is not None for s in signals
    )
    hint = _sdp_hint_signal(message, policy, needed=not answered)
    if hint is not None:
        signals.append(hint)

    party, party_deciders = _decide_party(signals, warnings)
    decided_by = list(party_deciders)
    steps = [_reason_step(PARTY, party, party_deciders)]
    if party == OTHER_ORGANISATION:
        call_class = "federation"
    elif party == PUBLIC_CLOUD:
        call_class = policy.public_cloud
    else:
        arrival, arrival_deciders = _decide_arrival(signals, warnings)
        decided_by += arrival_deciders
        steps.append(_reason_step(ARRIVAL, arrival, arrival_deciders))
        call_class = "remote" if arrival == OUTSIDE else "local"

    reason = _clean_text(f"{call_class}: {'; '.join(steps)}", MAX_REASON_LENGTH)
    classification = Classification(
        call_class=call_class,
        reason=reason,
        signals=tuple(signals),
        decided_by=tuple(decided_by),
        warnings=tuple(warnings),
    )
    verdict = check_federation(classification, message, policy)
    classification = replace(classification, federation_verdict=verdict)

    for warning in warnings:
        _warning_log.warning(call_id, warning)
    logger.debug("call %s classified %s", call_id, reason)
    if verdict is not None:
        logger.debug(
            "call %s: federation rejected with %d: %s",
            call_id,
            verdict.status,
            verdict.reason,
        )
    return classification


def _party_domains(message: SipMessage) -> list[str]:
    domains: list[str] = []
    values = list(message.header_values("From"))
    for header in message.header_values("P-Asserted-Identity"):
        values.extend(split_header_list(header))
    for value in values:
        uri = name_addr_uri(value)
        if uri.lower().startswith("tel:"):
            continue
        try:
            domain = _normalise_domain(parse_sip_uri(uri).host)
        except SipParseError:
            continue
        if domain not in domains:
            domains.append(domain)
    return domains


def check_federation(
    classification: Classification, message: SipMessage, policy: ClassifyPolicy
) -> Rejection | None:
    """Return a 403 Rejection for a federation call that the policy does not allow.

    Every From and P-Asserted-Identity domain must be on the allow list and
    off the deny list. The deny list wins, and an empty allow list allows no
    federation. Calls of other classes return None.
    """
    if classification.call_class != "federation":
        return None
    domains = _party_domains(message)
    if not domains:
        return Rejection(403, "federation request has no From domain to check")
    for domain in domains:
        printable = _clean_text(domain, MAX_VALUE_LENGTH)
        if domain_matches(domain, policy.federation_deny):
            return Rejection(403, f"federation domain {printable} is on the deny list")
        if not policy.federation_allow:
            return Rejection(403, "federation is not allowed: the allow list is empty")
        if not domain_matches(domain, policy.federation_allow):
            return Rejection(
                403, f"federation domain {printable} is not on the allow list"
            )
    return None


def encode_class_header(classification: Classification) -> str:
    """Format the CLASS_HEADER value, such as `remote; reason="..."`."""
    return f'{classification.call_class}; reason="{_quote(classification.reason)}"'


_REASON_PARAM = re.compile(
    r'(?:^|;)\s*reason\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^;]*))', re.I
)


def decode_class_header(value: str) -> tuple[str, str]:
    """Parse a CLASS_HEADER value into (call_class, reason).

    Raise ValueError when the class is not local, remote or federation. The
    reason comes back unescaped, without control characters and bounded in
    length, and is "" when the parameter is missing.
    """
    text = _clean_text(value, 4 * MAX_REASON_LENGTH)
    token, _, params = text.partition(";")
    call_class = token.strip().lower()
    if call_class not in CALL_CLASSES:
        printable = _clean_text(token, 40)
        raise ValueError(
            f"invalid call class {printable!r} in {CLASS_HEADER}; "
            "expected local, remote or federation"
        )
    match = _REASON_PARAM.search(params)
    if match is None:
        return call_class, ""
    if match.group(1) is not None:
        reason = re.sub(r"\\(.)", r"\1", match.group(1))
    else:
        reason = match.group(2).strip()
    return call_class, _clean_text(reason, MAX_REASON_LENGTH)


__all__ = [
    "CALL_CLASSES",
    "CLASS_HEADER",
    "TRUST_HEADER",
    "Classification",
    "ClassifyPolicy",
    "Rejection",
    "Signal",
    "check_federation",
    "classify",
    "decode_class_header",
    "domain_matches",
    "encode_class_header",
    "parse_address",
    "sdp_host_addresses",
    "top_via_source",
]
