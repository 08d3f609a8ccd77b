"""Table tests for the SDP rewrite rules, their config and the SRTP policy."""

from __future__ import annotations

from typing import Any

import pytest

from b2bua.sdp import SdpError, parse_sdp
from b2bua.sdp_rewrite import (
    ANSWER,
    OFFER,
    LegContext,
    RuleConfigError,
    answer_rejections,
    compile_rules,
    default_rules,
    encryption_answer,
    is_hold_offer,
)

KEY = "VGhpc0lzQU1hZGVVcEtleUZvclRlc3RzMTIzNDU2"


def offer(proto: str = "RTP/SAVP", encryption: str | None = "optional",
          crypto: tuple[str, ...] = ("|2^31",)) -> str:
    lines = [
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
        f"m=audio 4000 {proto} 0", "a=rtpmap:0 PCMU/8000",
    ]
    lines += [f"a=crypto:{i} AES_CM_128_HMAC_SHA1_80 inline:{KEY}{extra}"
              for i, extra in enumerate(crypto, start=1)]
    if encryption:
        lines.append(f"a=encryption:{encryption}")
    return "\r\n".join(lines) + "\r\n"


# (peer offer, policy, expected a=encryption in the answer or the 488 reason)
ENCRYPTION_CASES = [
    (offer(encryption="optional"), "optional", "optional"),
    (offer(encryption="required"), "optional", "required"),
    (offer(encryption="rejected", crypto=()), "optional", "rejected"),
    (offer(encryption="optional"), "required", "required"),
    (offer(encryption="optional"), "off", "rejected"),
    (offer(encryption="rejected", crypto=()), "off", "rejected"),
    (offer(encryption=None), "optional", "required"),  # SAVP means SRTP
    (offer("RTP/AVP", encryption=None, crypto=()), "optional", "rejected"),
    (offer(encryption="optional", crypto=("|2^31|1:1",)), "optional", "rejected"),
    (offer(encryption="required"), "off", "488: peer requires SRTP"),
    (offer(encryption="rejected", crypto=()), "required", "488: SRTP is required"),
    (offer("RTP/AVP", encryption=None, crypto=()), "required",
     "488: SRTP is required"),
    (offer(encryption="required", crypto=("|2^31|1:1",)), "optional",
     "488: peer requires SRTP"),
    (offer(encryption="required", crypto=()), "optional", "488: peer requires SRTP"),
]


@pytest.mark.parametrize("text,policy,expected", ENCRYPTION_CASES)
def test_encryption_answer(text: str, policy: str, expected: str) -> None:
    sdp = parse_sdp(text)
    if expected.startswith("488: "):
        with pytest.raises(SdpError) as caught:
            encryption_answer(sdp, policy)
        assert caught.value.status == 488
        assert caught.value.reason.startswith(expected[5:])
        assert KEY not in caught.value.reason
    else:
        assert encryption_answer(sdp, policy) == expected


def test_encryption_rule_needs_offer_for_answer() -> None:
    rules = compile_rules([{"rule": "encryption", "policy": "optional"}])
    with pytest.raises(SdpError):
        rules.apply(parse_sdp(offer()), LegContext(ANSWER))


def test_encryption_rule_writes_offer_policy() -> None:
    rules = compile_rules([{"rule": "encryption", "policy": "required"}])
    result = rules.apply(parse_sdp(offer(encryption="optional")), LegContext(OFFER))
    assert result.media[0].attributes("encryption")[0].text == "a=encryption:required"
    assert len(result.media[0].attributes("encryption")) == 1


def test_choose_crypto_keeps_key_without_mki() -> None:
    rules = compile_rules([{"rule": "choose_crypto"}])
    sdp = parse_sdp(offer(crypto=("|2^31|1:1", "|2^31", "|2^31|2:1")))
    result = rules.apply(sdp, LegContext(OFFER))
    assert [c.tag for c in result.media[0].crypto()] == [2]


def test_choose_crypto_only_mki_is_488() -> None:
    rules = compile_rules([{"rule": "choose_crypto"}])
    sdp = parse_sdp(offer(crypto=("|2^31|1:1",)))
    with pytest.raises(SdpError) as caught:
        rules.apply(sdp, LegContext(OFFER))
    assert caught.value.status == 488
    assert "MKI" in caught.value.warning("b2bua.example.com")


def test_choose_crypto_answer_with_mki_is_488() -> None:
    rules = compile_rules([{"rule": "choose_crypto"}])
    sdp = parse_sdp(offer(crypto=("|2^31|1:1",)))
    with pytest.raises(SdpError):
        rules.apply(sdp, LegContext(ANSWER))


def test_rules_leave_input_unchanged() -> None:
    sdp = parse_sdp(offer(crypto=("|2^31|1:1", "|2^31")))
    before = sdp.to_text()
    compile_rules(default_rules("ice")).apply(sdp, LegContext(OFFER))
    assert sdp.to_text() == before


def test_no_hold_first_only_initial_offer() -> None:
    text = offer().replace("c=IN IP4 192.0.2.1", "c=IN IP4 0.0.0.0")
    rules = compile_rules([{"rule": "no_hold_first"}])
    reoffer = rules.apply(parse_sdp(text), LegContext(OFFER, initial=False))
    assert is_hold_offer(reoffer)
    initial = rules.apply(parse_sdp(text), LegContext(OFFER, initial=True))
    assert not is_hold_offer(initial)


def test_no_hold_first_without_address_is_488() -> None:
    text = offer().replace("192.0.2.1", "0.0.0.0")
    rules = compile_rules([{"rule": "no_hold_first"}])
    with pytest.raises(SdpError) as caught:
        rules.apply(parse_sdp(text), LegContext(OFFER))
    assert caught.value.status == 488


@pytest.mark.parametrize(
    "change,hold",
    [
        ("", False),
        ("a=sendonly\r\n", True),
        ("a=inactive\r\n", True),
        ("a=recvonly\r\n", True),
        ("a=sendrecv\r\n", False),
    ],
)
def test_is_hold_offer(change: str, hold: bool) -> None:
    assert is_hold_offer(parse_sdp(offer() + change)) is hold


def test_strip_codec_last_codec_is_488() -> None:
    rules = compile_rules([{"rule": "strip_codec", "codec": "pcmu"}])
    with pytest.raises(SdpError) as caught:
        rules.apply(parse_sdp(offer()), LegContext(OFFER))
    assert caught.value.status == 488


def test_refuse_non_audio_keeps_audio() -> None:
    text = offer() + "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    rules = compile_rules([{"rule": "refuse_non_audio"}])
    result = rules.apply(parse_sdp(text), LegContext(ANSWER))
    assert result.media[0].port == 4000
    assert result.media[1].lines[0].text == "m=video 0 RTP/AVP 96"
    assert len(result.media[1].lines) == 1


def test_answer_rejections_adds_missing_lines() -> None:
    sent = parse_sdp(offer() + "m=application 4010 UDP/BFCP *\r\na=floorctrl:c-s\r\n")
    answer = parse_sdp(offer())
    fixed = answer_rejections(sent, answer)
    assert [m.lines[0].text for m in fixed.media] == [
        "m=audio 4000 RTP/SAVP 0", "m=application 0 UDP/BFCP *",
    ]


def test_answer_rejections_too_many_lines() -> None:
    answer = parse_sdp(offer() + "m=video 0 RTP/AVP 0\r\n")
    with pytest.raises(SdpError):
        answer_rejections(parse_sdp(offer()), answer)


def test_answer_rejections_odd_proto_is_rejection() -> None:
    sent = parse_sdp(offer() + "m=video 4002 RTP/SAVP 122\r\n")
    answer = parse_sdp(offer() + "m=video 0 UDP/BFCP *\r\n")
    fixed = answer_rejections(sent, answer)
    assert fixed.media[1].is_rejected
    assert fixed.media[1].lines[0].text == "m=video 0 RTP/SAVP 122"


BAD_RULES: list[tuple[Any, str]] = [
    ({"rule": "block_bfcp"}, "rules: expected a list of rules, got dict"),
    (["block_bfcp"], "rules[0]: expected a mapping with a 'rule' key"),
    ([{"rule": "strip_codecs"}],
     "rules[0].rule: unknown rule 'strip_codecs'; known: "),
    ([{"rule": "strip_codec"}], "rules[0].codec: missing, strip_codec needs it"),
    ([{"rule": "strip_codec", "codec": ""}], "rules[0].codec: expected one word"),
    ([{"rule": "strip_codec", "codec": 18}], "rules[0].codec: expected one word"),
    ([{"rule": "strip_codec", "codec": "G729", "media": "audio"}],
     "rules[0].media: unknown parameter for strip_codec; allowed: codec"),
    ([{"rule": "block_bfcp", "codec": "x"}],
     "rules[0].codec: unknown parameter for block_bfcp; allowed: none"),
    ([{"rule": "reorder_codecs", "order": []}],
     "rules[0].order: expected a non-empty"),
    ([{"rule": "reorder_codecs", "order": ["PCMA", 8]}],
     "rules[0].order[1]: expected a codec name"),
    ([{"rule": "choose_crypto"}, {"rule": "encryption", "policy": "maybe"}],
     "rules[1].policy: unknown policy 'maybe'; known: off, optional, required"),
    ([{"rule": "rewrite_session_name", "name": "a\r\nb"}],
     "rules[0].name: expected one word"),
]


@pytest.mark.parametrize("specs,message", BAD_RULES)
def test_compile_rules_errors(specs: Any, message: str) -> None:
    with pytest.raises(RuleConfigError) as caught:
        compile_rules(specs)
    assert str(caught.value).startswith(message)


def test_compile_rules_error_names_source() -> None:
    with pytest.raises(RuleConfigError) as caught:
        compile_rules([{"rule": "nope"}], where="b2bua.yaml: legs.ice.sdp")
    assert str(caught.value).startswith("b2bua.yaml: legs.ice.sdp[0].rule:")


@pytest.mark.parametrize("policy", ["ice", "plain"])
def test_default_rules_compile(policy: str) -> None:
    rules = compile_rules(default_rules(policy))
    assert ("block_bfcp" in rules.names) == (policy == "ice")
    assert "refuse_non_audio" in rules.names
