"""Rewrite SDP per call leg by named rules that config can describe.

A rule set is a list of dicts such as `{"rule": "strip_codec", "codec":
"G729"}`. `compile_rules` validates it once and `RuleSet.apply` runs it on a
copy of a SessionDescription, for one leg and one role (offer or answer).
Rules that find the SDP unusable raise `SdpError` with status 488 and a
reason fit for a Warning header. Standard library only, like `b2bua.sdp`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

from b2bua.sdp import (
    Crypto,
    MediaSection,
    SdpError,
    SdpLine,
    SessionDescription,
    parse_crypto,
)

logger = logging.getLogger(__name__)

OFFER = "offer"
ANSWER = "answer"
ENCRYPTION_POLICIES = ("off", "optional", "required")
_HOLD_DIRECTIONS = frozenset({"sendonly", "recvonly", "inactive"})


@dataclass(frozen=True)
class LegContext:
    """The role of an SDP on one leg, and for an answer the offer it answers.

    `initial` is True for the first offer of a dialog. A new offer may drop
    m-lines, while a re-offer must keep every m-line of the session.
    """

    direction: str = OFFER
    initial: bool = True
    offer: SessionDescription | None = None


class RuleConfigError(ValueError):
    """An invalid rule list; the message names the item, key and allowed values."""


Rule = Callable[[SessionDescription, LegContext], None]


@dataclass(frozen=True)
class RuleSet:
    names: tuple[str, ...]
    rules: tuple[Rule, ...]

    def apply(
        self, sdp: SessionDescription, context: LegContext, in_place: bool = False
    ) -> SessionDescription:
        """Return a rewritten copy of `sdp`, raising SdpError (488) if unusable.

        With `in_place`, rewrite and return `sdp` itself, which saves a deep
        copy when the caller has no further use for the original.
        """
        result = sdp if in_place else sdp.copy()
        for name, rule in zip(self.names, self.rules):
            rule(result, context)
            logger.debug("SDP rule %s applied to %s", name, context.direction)
        return result


def reject_section(section: MediaSection) -> None:
    """Turn a section into a rejection: port 0, media, proto and formats kept.

    All other lines go. A `*` format stays `*`, as BFCP offers it.
    """
    section.set_media_line(port=0, port_count=None)
    section.remove_lines(lambda line: True)


def is_bfcp_controlled_video(sdp: SessionDescription, section: MediaSection) -> bool:
    """Return True for content video (slides) or video that a BFCP floor controls."""
    if section.media.lower() != "video":
        return False
    if (section.attribute("content") or "").strip().lower() == "slides":
        return True
    label = (section.attribute("label") or "").strip()
    return bool(label) and label in bfcp_stream_labels(sdp)


def bfcp_stream_labels(sdp: SessionDescription) -> set[str]:
    """Return the `a=label` values that BFCP floors control.

    RFC 4583 writes `a=floorid:1 mstrm:3`, and older endpoints `m-stream:3`.
    """
    labels: set[str] = set()
    for section in sdp.media:
        if not section.is_bfcp:
            continue
        for value in (line.attribute_value for line in section.attributes("floorid")):
            for token in value.split()[1:]:
                key, _, label = token.partition(":")
                if key.lower() in ("mstrm", "m-stream") and label:
                    labels.add(label)
    return labels


def _block_bfcp(sdp: SessionDescription, context: LegContext) -> None:
    blocked = [
        section for section in sdp.media
        if section.is_bfcp or is_bfcp_controlled_video(sdp, section)
    ]
    if context.direction == OFFER and context.initial:
        sdp.media = [section for section in sdp.media if section not in blocked]
        return
    for section in blocked:
        reject_section(section)


def _refuse_non_audio(sdp: SessionDescription, context: LegContext) -> None:
    for section in sdp.media:
        audio = section.media.lower() == "audio" and section.is_rtp
        if not audio and not (section.is_rejected and len(section.lines) == 1):
            reject_section(section)


def _strip_attribute(name: str, media: str | None) -> Rule:
    wanted = name.lower()

    def rule(sdp: SessionDescription, context: LegContext) -> None:
        def matches(line: SdpLine) -> bool:
            return line.attribute_name == wanted

        if media is None:
            sdp.session = [line for line in sdp.session if not matches(line)]
        for section in sdp.media:
            if media is None or section.media.lower() == media:
                section.remove_lines(matches)

    return rule


def _payload_types_of(section: MediaSection, codec: str) -> set[str]:
    return {fmt for fmt in section.formats if section.encoding_of(fmt) == codec}


def _drop_format_lines(section: MediaSection, dropped: set[str]) -> None:
    def describes_dropped(line: SdpLine) -> bool:
        if line.attribute_name not in ("rtpmap", "fmtp", "rtcp-fb"):
            return False
        return line.attribute_value.split(" ", 1)[0] in dropped

    section.remove_lines(describes_dropped)


def _strip_codec(codec: str) -> Rule:
    wanted = codec.upper()

    def rule(sdp: SessionDescription, context: LegContext) -> None:
        for index, section in enumerate(sdp.media, start=1):
            if not section.is_rtp or section.is_rejected:
                continue
            dropped = _payload_types_of(section, wanted)
            if not dropped:
                continue
            kept = tuple(fmt for fmt in section.formats if fmt not in dropped)
            if not kept:
                raise SdpError(
                    f"strip_codec {codec} leaves m={section.media} (m-line {index}) "
                    "with no codec",
                    status=488,
                )
            section.set_media_line(formats=kept)
            _drop_format_lines(section, dropped)

    return rule


def _reorder_codecs(order: list[str]) -> Rule:
    ranks = {name.upper(): rank for rank, name in enumerate(order)}

    def rule(sdp: SessionDescription, context: LegContext) -> None:
        for section in sdp.media:
            if not section.is_rtp or section.is_rejected:
                continue
            last = len(ranks)

            def rank(fmt: str, section: MediaSection = section) -> int:
                return ranks.get(section.encoding_of(fmt) or "", last)

            # sorted() is stable, so unlisted codecs keep their relative order.
            section.set_media_line(formats=tuple(sorted(section.formats, key=rank)))

    return rule


def _rewrite_origin(username: str | None, address: str | None) -> Rule:
    def rule(sdp: SessionDescription, context: LegContext) -> None:
        origin = sdp.origin
        changes: dict[str, str] = {}
        if username is not None:
            changes["username"] = username
        if address is not None:
            changes["address"] = address
            changes["addrtype"] = "IP6" if ":" in address else "IP4"
        sdp.set_origin(replace(origin, **changes))

    return rule


def _rewrite_session_name(name: str) -> Rule:
    def rule(sdp: SessionDescription, context: LegContext) -> None:
        for index, line in enumerate(sdp.session):
            if line.kind == "s":
                sdp.session[index] = SdpLine("s=" + name, line.eol)

    return rule


def select_crypto(section: MediaSection) -> Crypto | None:
    """Return the first crypto line without an MKI, or None if there is none."""
    for crypto in section.crypto():
        if not crypto.has_mki:
            return crypto
    return None


def _choose_crypto(sdp: SessionDescription, context: LegContext) -> None:
    # NOTE: MKI keys are rejected because pjmedia 2.15.1 ignores the MKI.
    for index, section in enumerate(sdp.media, start=1):
        offered = section.crypto()
        if section.is_rejected or not offered:
            continue
        if context.direction == ANSWER:
            if any(crypto.has_mki for crypto in offered):
                raise SdpError(
                    f"answer m-line {index} selects an SRTP key with an MKI, "
                    "which is not supported",
                    status=488,
                )
            continue
        chosen = select_crypto(section)
        if chosen is None:
            raise SdpError(
                f"m={section.media} (m-line {index}) offers only SRTP keys with "
                "an MKI, which is not supported",
                status=488,
            )
        section.remove_lines(
            lambda line: line.attribute_name == "crypto" and _has_mki_line(line)
        )


def _has_mki_line(line: SdpLine) -> bool:
    # An unreadable crypto line counts as one, so it never reaches pjmedia.
    try:
        return parse_crypto(line.attribute_value).has_mki
    except SdpError:
        return True


def is_hold_offer(sdp: SessionDescription) -> bool:
    """Return True if an offer puts any live stream on hold."""
    for section in sdp.media:
        if section.is_rejected:
            continue
        if sdp.direction(section) in _HOLD_DIRECTIONS:
            return True
        if sdp.media_address(section) in ("0.0.0.0", "::"):
            return True
    return False


def _no_hold_first(sdp: SessionDescription, context: LegContext) -> None:
    if context.direction != OFFER or not context.initial:
        return
    origin_address = sdp.origin.address
    for line_list in [sdp.session] + [section.lines for section in sdp.media]:
        for index, line in enumerate(line_list):
            if line.attribute_name in _HOLD_DIRECTIONS:
                line_list[index] = SdpLine("a=sendrecv", line.eol)
            elif line.kind == "c" and line.value.split()[-1:] in (["0.0.0.0"], ["::"]):
                if origin_address in ("0.0.0.0", "::"):
                    raise SdpError(
                        "initial offer has no media address (c= and o= are "
                        "unspecified), so it cannot be offered as active media",
                        status=488,
                    )
                parts = line.value.split()
                parts[-1] = origin_address
                line_list[index] = SdpLine("c=" + " ".join(parts), line.eol)


def encryption_answer(offer: SessionDescription, policy: str) -> str:
    """Return the `a=encryption` value to answer `offer` with under `policy`.

    Raise SdpError (488) when the offer and the policy cannot agree: the peer
    requires SRTP and the policy is off, or the policy requires SRTP and the
    peer rejects it or offers no usable key (a crypto line without an MKI).
    """
    for index, section in enumerate(offer.media, start=1):
        if section.is_rejected or section.media.lower() != "audio":
            continue
        peer = (section.attribute("encryption") or "").strip().lower()
        secure_proto = "SAVP" in section.proto.upper()
        if not peer:
            peer = "required" if secure_proto else "rejected"
        usable = select_crypto(section) is not None
        if policy == "off":
            if peer == "required":
                raise SdpError(
                    f"peer requires SRTP on m-line {index} but SRTP is off here",
                    status=488,
                )
            return "rejected"
        if policy == "required" and (peer == "rejected" or not usable):
            raise SdpError(
                f"SRTP is required here but m-line {index} offers no usable "
                "SDES key without an MKI",
                status=488,
            )
        if peer == "required" and not usable:
            raise SdpError(
                f"peer requires SRTP on m-line {index} but offers no usable "
                "SDES key without an MKI",
                status=488,
            )
        if not usable:
            return "rejected"
        return "required" if policy == "required" else peer
    return "rejected" if policy == "off" else policy


def _encryption(policy: str) -> Rule:
    def rule(sdp: SessionDescription, context: LegContext) -> None:
        if context.direction == OFFER:
            # In an offer the attribute states this side's own policy.
            value = "rejected" if policy == "off" else policy
            if policy != "off":
                encryption_answer(sdp, policy)
        else:
            if context.offer is None:
                raise SdpError("encryption rule on an answer needs the offer", 500)
            value = encryption_answer(context.offer, policy)
        for section in sdp.media:
            if section.is_rejected or section.media.lower() != "audio":
                continue
            section.remove_lines(lambda line: line.attribute_name == "encryption")
            section.lines.append(SdpLine("a=encryption:" + value, sdp.eol))

    return rule


def answer_rejections(
    offer: SessionDescription, answer: SessionDescription
) -> SessionDescription:
    """Return a copy of `answer` whose port-0 lines mirror the offered lines.

    Each rejected line keeps the media type, proto and formats of the offer,
    with port 0 and no other lines, as RFC 3264 section 6 expects. Offered
    m-lines that the answer lacks are added as rejections.
    """
    if len(answer.media) > len(offer.media):
        raise SdpError(
            f"answer has {len(answer.media)} m-lines but the offer has "
            f"{len(offer.media)}",
            status=500,
        )
    fixed = answer.copy()
    eol = fixed.eol
    for index, offered in enumerate(offer.media):
        if index < len(fixed.media) and not fixed.media[index].is_rejected:
            continue
        mirror = MediaSection([SdpLine(offered.lines[0].text, eol)])
        reject_section(mirror)
        if index < len(fixed.media):
            fixed.media[index] = mirror
        else:
            fixed.media.append(mirror)
    return fixed


_RULES: dict[str, tuple[dict[str, type], set[str], Callable[..., Rule]]] = {
    # name: (parameter types, required parameters, factory)
    "block_bfcp": ({}, set(), lambda: _block_bfcp),
    "refuse_non_audio": ({}, set(), lambda: _refuse_non_audio),
    "strip_attribute": ({"name": str, "media": str}, {"name"}, _strip_attribute),
    "strip_codec": ({"codec": str}, {"codec"}, _strip_codec),
    "reorder_codecs": ({"order": list}, {"order"}, _reorder_codecs),
    "rewrite_origin": (
        {"username": str, "address": str}, set(), _rewrite_origin
    ),
    "rewrite_session_name": ({"name": str}, {"name"}, _rewrite_session_name),
    "choose_crypto": ({}, set(), lambda: _choose_crypto),
    "no_hold_first": ({}, set(), lambda: _no_hold_first),
    "encryption": ({"policy": str}, {"policy"}, _encryption),
}
RULE_NAMES = tuple(sorted(_RULES))


def compile_rules(specs: Any, where: str = "rules") -> RuleSet:
    """Validate a rule list from config and return it as a RuleSet.

    `where` prefixes error messages, for example `config.yaml: legs.ice.sdp`.
    """
    if not isinstance(specs, list):
        raise RuleConfigError(
            f"{where}: expected a list of rules, got {type(specs).__name__}"
        )
    names: list[str] = []
    rules: list[Rule] = []
    for index, spec in enumerate(specs):
        item = f"{where}[{index}]"
        if not isinstance(spec, dict):
            raise RuleConfigError(f"{item}: expected a mapping with a 'rule' key")
        name = spec.get("rule")
        if name not in _RULES:
            raise RuleConfigError(
                f"{item}.rule: unknown rule {name!r}; known: {', '.join(RULE_NAMES)}"
            )
        types, required, factory = _RULES[name]
        params = {key: value for key, value in spec.items() if key != "rule"}
        for key in params:
            if key not in types:
                allowed = ", ".join(sorted(types)) or "none"
                raise RuleConfigError(
                    f"{item}.{key}: unknown parameter for {name}; allowed: {allowed}"
                )
        for key in sorted(required - set(params)):
            raise RuleConfigError(f"{item}.{key}: missing, {name} needs it")
        for key, value in params.items():
            _check_parameter(f"{item}.{key}", value, types[key])
        if name == "encryption" and params["policy"] not in ENCRYPTION_POLICIES:
            raise RuleConfigError(
                f"{item}.policy: unknown policy {params['policy']!r}; "
                f"known: {', '.join(ENCRYPTION_POLICIES)}"
            )
        if name == "strip_attribute" and "media" in params:
            params["media"] = params["media"].lower()
        names.append(name)
        rules.append(factory(**params))
    return RuleSet(tuple(names), tuple(rules))


def _check_parameter(where: str, value: Any, expected: type) -> None:
    if expected is list:
        if not isinstance(value, list) or not value:
            raise RuleConfigError(f"{where}: expected a non-empty list of names")
        for position, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise RuleConfigError(f"{where}[{position}]: expected a codec name")
        return
    if not isinstance(value, str) or not value.strip() or any(
        char in value for char in "\r\n\x00 "
    ):
        raise RuleConfigError(
            f"{where}: expected one word without spaces, got {value!r}"
        )


def default_rules(policy: str) -> list[dict[str, Any]]:
    """Return the rule list for an `ice` or `plain` leg as config would write it.

    The workers carry audio only, so both policies reject every other stream.
    """
    if policy not in ("ice", "plain"):
        raise ValueError(f"unknown leg policy {policy!r}; known: ice, plain")
    rules: list[dict[str, Any]] = [{"rule": "choose_crypto"}]
    if policy == "ice":
        rules.append({"rule": "block_bfcp"})
    rules += [{"rule": "refuse_non_audio"}, {"rule": "no_hold_first"}]
    return rules
