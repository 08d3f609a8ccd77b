"""Table tests for the SDP model: parsing, accessors, serializing, hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.sdp import (
    ICE_RFC5245,
    ICE_V6,
    MAX_CANDIDATES_PER_MEDIA,
    SdpError,
    SdpLine,
    drop_invalid_lines,
    invalid_lines,
    parse_candidate,
    parse_crypto,
    parse_sdp,
)
from b2bua.sipbody import select_sdp
from b2bua.sipmsg import parse_message

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"

AUDIO = (
    "v=0\n"
    "o=- 1 1 IN IP4 192.0.2.1\n"
    "s=-\n"
    "c=IN IP4 192.0.2.1\n"
    "t=0 0\n"
    "m=audio 4000 RTP/AVP 0 101\n"
    "a=rtpmap:0 PCMU/8000\n"
    "a=rtpmap:101 telephone-event/8000\n"
)


def sample_sdp(name: str) -> bytes:
    message = parse_message((SAMPLES / name).read_bytes())
    selection = select_sdp(message.body, message.header("Content-Type") or "")
    assert selection is not None
    return selection.sdp


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_serialize_unchanged_byte_exact(eol: str) -> None:
    text = AUDIO.replace("\n", eol)
    assert parse_sdp(text.encode()).to_bytes() == text.encode()


def test_serialize_mixed_line_ends() -> None:
    text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\ns=-\r\nt=0 0\nm=audio 4000 RTP/AVP 0"
    assert parse_sdp(text).to_text() == text


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.sip")))
def test_samples_serialize_byte_exact(name: str) -> None:
    body = sample_sdp(name)
    assert parse_sdp(body).to_bytes() == body


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.sip")))
def test_samples_have_no_invalid_lines(name: str) -> None:
    assert invalid_lines(parse_sdp(sample_sdp(name))) == []


def test_media_line_fields() -> None:
    sdp = parse_sdp(sample_sdp("video-bfcp-invite.sip"))
    fields = [(m.media, m.port, m.proto, m.formats) for m in sdp.media]
    assert fields == [
        ("audio", 49170, "RTP/AVP", ("9", "0", "8", "101")),
        ("video", 49172, "RTP/AVP", ("96", "97")),
        ("video", 49174, "RTP/AVP", ("98",)),
        ("application", 49176, "UDP/BFCP", ("*",)),
    ]
    assert [m.is_bfcp for m in sdp.media] == [False, False, False, True]


def test_port_count_parsed() -> None:
    sdp = parse_sdp(AUDIO.replace("m=audio 4000 ", "m=audio 4000/2 "))
    assert sdp.media[0].port == 4000
    assert sdp.media[0].port_count == 2


def test_unknown_media_and_proto_parse() -> None:
    text = AUDIO + "m=data 5000 x-unknown/proto *\nm=message 0 TCP/MSRP *\n"
    sdp = parse_sdp(text)
    assert [m.media for m in sdp.media] == ["audio", "data", "message"]
    assert sdp.media[1].proto == "x-unknown/proto"
    assert sdp.media[2].is_rejected


def test_rtpmap_accessor() -> None:
    sdp = parse_sdp(sample_sdp("sfb-remote-invite.sip"))
    rtpmaps = {
        r.payload_type: (r.encoding, r.clock_rate) for r in sdp.media[0].rtpmaps()
    }
    assert rtpmaps[104] == ("SILK", 16000)
    assert rtpmaps[101] == ("telephone-event", 8000)
    assert sdp.media[0].encoding_of("0") == "PCMU"


def test_static_payload_type_without_rtpmap() -> None:
    sdp = parse_sdp(AUDIO.replace("RTP/AVP 0 101", "RTP/AVP 18 0 101"))
    assert sdp.media[0].encoding_of("18") == "G729"


def test_session_accessors() -> None:
    sdp = parse_sdp(sample_sdp("video-bfcp-invite.sip"))
    assert sdp.origin.username == "room"
    assert sdp.origin.address == "198.51.100.80"
    assert sdp.session_name == "-"
    assert sdp.connection_address() == "198.51.100.80"
    assert sdp.direction(sdp.media[0]) == "sendrecv"


def test_sfb_candidates_all_transports() -> None:
    sdp = parse_sdp(sample_sdp("sfb-remote-invite.sip"))
    candidates = sdp.media[0].candidates()
    assert len(candidates) == 14
    assert {c.dialect for c in candidates} == {ICE_RFC5245}
    transports = sorted({c.transport for c in candidates})
    assert transports == ["TCP-ACT", "TCP-PASS", "UDP"]
    ipv6 = [c for c in candidates if c.ipv6_attribute]
    assert [c.address for c in ipv6] == ["2001:db8:10::77", "2001:db8:10::77"]
    udp = [c for c in candidates if c.is_udp and not c.ipv6_attribute]
    assert len(udp) == 6


def test_legacy_candidates_recognised() -> None:
    sdp = parse_sdp(
        [
            part for part in _federation_parts()
            if b"ms-proxy-2007fallback" in part
        ][0].split(b"\n\n", 1)[1]
    )
    candidates = sdp.media[0].candidates()
    assert len(candidates) == 6
    assert {c.dialect for c in candidates} == {ICE_V6}
    assert all(c.type is None and c.priority is None for c in candidates)


def _federation_parts() -> list[bytes]:
    message = parse_message((SAMPLES / "lync2013-federation-invite.sip").read_bytes())
    return message.body.split(b"------=_NextPart_000_0042_01D5A1B2.C3D4E5F6")[1:3]


CANDIDATES = [
    # (value, dialect, transport, address, port, type)
    ("1 1 UDP 2130706431 192.0.2.51 21440 typ host",
     ICE_RFC5245, "UDP", "192.0.2.51", 21440, "host"),
    ("2 2 TCP-ACT 1684798462 192.0.2.51 21442 typ host",
     ICE_RFC5245, "TCP-ACT", "192.0.2.51", 21442, "host"),
    ("3 1 tcp-pass 174455807 203.0.113.91 51890 typ relay "
     "raddr 198.51.100.60 rport 49800",
     ICE_RFC5245, "TCP-PASS", "203.0.113.91", 51890, "relay"),
    ("4 1 UDP 1694234111 198.51.100.25 15004 typ srflx raddr 192.0.2.77 rport 15004 "
     "generation 0", ICE_RFC5245, "UDP", "198.51.100.25", 15004, "srflx"),
    ("Qk9CY2FuZDE 1 Ym9icHdkMDAxMjM0NTY3OA UDP 0.830 198.51.100.60 14010",
     ICE_V6, "UDP", "198.51.100.60", 14010, None),
    ("Qk9CY2FuZDM 2 Ym9icHdkMDAzNDU2Nzg5MA TCP 0.190 203.0.113.91 443",
     ICE_V6, "TCP", "203.0.113.91", 443, None),
]


@pytest.mark.parametrize("value,dialect,transport,address,port,kind", CANDIDATES)
def test_parse_candidate(
    value: str, dialect: str, transport: str, address: str, port: int, kind: str | None
) -> None:
    candidate = parse_candidate(value)
    assert candidate.dialect == dialect
    assert candidate.transport == transport
    assert candidate.address == address
    assert candidate.port == port
    assert candidate.type == kind


def test_legacy_candidate_fields() -> None:
    candidate = parse_candidate(
        "Qk9CY2FuZDE 1 Ym9icHdkMDAxMjM0NTY3OA UDP 0.830 198.51.100.60 14010"
    )
    assert candidate.foundation == "Qk9CY2FuZDE"
    assert candidate.password == "Ym9icHdkMDAxMjM0NTY3OA"
    assert candidate.qvalue == 0.83
    assert "Ym9icHdk" not in repr(candidate)


def test_related_address_parsed() -> None:
    candidate = parse_candidate(CANDIDATES[2][0])
    assert candidate.related_address == "198.51.100.60"
    assert candidate.related_port == 49800


BAD_CANDIDATES = [
    "1 1 UDP 2130706431 192.0.2.51",  # truncated
    "1 1 UDP 2130706431 192.0.2.51 21440 typ",  # truncated after typ
    "1 1 UDP 2130706431 192.0.2.51 21440 host",  # no typ
    "1 1 UDP 4294967296 192.0.2.51 21440 typ host",  # priority over 2^31-1
    "1 0 UDP 2130706431 192.0.2.51 21440 typ host",  # component 0
    "1 1 UDP 2130706431 192.0.2.51 70000 typ host",  # port
    "1 1 SCTP 2130706431 192.0.2.51 21440 typ host",  # transport
    "1 1 UDP 2130706431 bad_host! 21440 typ host",  # address
    "Qk9C 1 cHdk UDP 1.5 198.51.100.60 14010",  # ICE v6 q-value over 1
    "Qk9C 1 cHdk UDP 0.830 198.51.100.60",  # truncated ICE v6
    "",
]


@pytest.mark.parametrize("value", BAD_CANDIDATES)
def test_bad_candidate_raises(value: str) -> None:
    with pytest.raises(SdpError):
        parse_candidate(value)


CRYPTO = [
    # (value, tag, lifetime, mki)
    ("2 AES_CM_128_HMAC_SHA1_80 "
     "inline:U0VDUkVUa2V5bm90cmVhbDEyMzQ1Njc4OTBhYmNk|2^31|1:1",
     2, "2^31", (1, 1)),
    ("3 AES_CM_128_HMAC_SHA1_80 inline:VGhpc0lzQU1hZGVVcEtleUZvclRlc3RzMTIzNDU2|2^31",
     3, "2^31", None),
    ("1 AES_CM_128_HMAC_SHA1_32 inline:VGhpc0lzQU1hZGVVcEtleUZvclRlc3RzMTIzNDU2",
     1, None, None),
    ("4 AES_CM_128_HMAC_SHA1_80 inline:VGhpc0lzQU1hZGVVcEtleUZvclRlc3RzMTIzNDU2|5:4",
     4, None, (5, 4)),
    ("5 AES_CM_128_HMAC_SHA1_80 inline:VGhpc0lzQU1hZGVVcEtleUZvclRlc3RzMTIzNDU2 "
     "UNENCRYPTED_SRTCP", 5, None, None),
]


@pytest.mark.parametrize("value,tag,lifetime,mki", CRYPTO)
def test_parse_crypto(
    value: str, tag: int, lifetime: str | None, mki: tuple[int, int] | None
) -> None:
    crypto = parse_crypto(value)
    assert crypto.tag == tag
    assert crypto.lifetime == lifetime
    assert crypto.mki == mki
    assert crypto.has_mki == (mki is not None)
    assert crypto.key not in repr(crypto)


@pytest.mark.parametrize(
    "value",
    [
        "1 AES_CM_128_HMAC_SHA1_80 inline:",  # empty key
        "1 AES_CM_128_HMAC_SHA1_80 inline:|2^31",  # empty key with lifetime
        "1 AES_CM_128_HMAC_SHA1_80 inline:a$b",  # not base64
        "1 AES_CM_128_HMAC_SHA1_80 uri:https://example.com/key",  # not inline
        "1 AES_CM_128_HMAC_SHA1_80 inline:QUJD|2^31|1:1|9",  # too many fields
        "x AES_CM_128_HMAC_SHA1_80 inline:QUJD",  # tag
        "1 AES_CM_128_HMAC_SHA1_80",  # no key
    ],
)
def test_bad_crypto_raises(value: str) -> None:
    with pytest.raises(SdpError):
        parse_crypto(value)


def test_cryptoscale_not_crypto() -> None:
    sdp = parse_sdp(sample_sdp("sfb-remote-invite.sip"))
    assert [c.tag for c in sdp.media[0].crypto()] == [2, 3]


def test_rtcp_accessor() -> None:
    sdp = parse_sdp(AUDIO + "a=rtcp:4001 IN IP4 192.0.2.1\n")
    rtcp = sdp.media[0].rtcp()
    assert rtcp is not None
    assert (rtcp.port, rtcp.address) == (4001, "192.0.2.1")


# Hostile inputs that make the whole SDP unusable: SdpError, status 400.
HOSTILE_FATAL = [
    ("payload type 2^32", AUDIO.replace("RTP/AVP 0 101", "RTP/AVP 4294967296")),
    ("payload type 128", AUDIO.replace("RTP/AVP 0 101", "RTP/AVP 128")),
    ("port over 65535", AUDIO.replace("audio 4000", "audio 65536")),
    ("no v= line", AUDIO.replace("v=0\n", "")),
    ("no t= line", AUDIO.replace("t=0 0\n", "")),
    ("no o= line", AUDIO.replace("o=- 1 1 IN IP4 192.0.2.1\n", "")),
    ("short o= line", AUDIO.replace("o=- 1 1 IN IP4 192.0.2.1", "o=- 1")),
    ("short m= line", AUDIO.replace("m=audio 4000 RTP/AVP 0 101", "m=audio 4000")),
    ("NUL in c= line", AUDIO.replace("c=IN IP4", "c=IN\x00IP4")),
    ("not a type line", AUDIO + "garbage\n"),
    ("empty", ""),
    ("too many candidates", AUDIO + "".join(
        f"a=candidate:{i} 1 UDP 2130706431 192.0.2.1 {4000 + i} typ host\n"
        for i in range(300)
    )),
    ("too many m= lines", AUDIO + "m=audio 0 RTP/AVP 0\n" * 20),
    ("too many lines", AUDIO + "a=x-filler\n" * 1200),
    ("too many bytes", AUDIO + "a=x-filler:" + "x" * 40000 + "\n"),
    ("too long line", AUDIO + "a=fmtp:101 " + "0" * 3000 + "\n"),
]


@pytest.mark.parametrize("name,text", HOSTILE_FATAL, ids=[c[0] for c in HOSTILE_FATAL])
def test_hostile_sdp_raises_sdp_error(name: str, text: str) -> None:
    with pytest.raises(SdpError) as caught:
        parse_sdp(text.encode("utf-8", "surrogateescape"))
    assert caught.value.status == 400
    assert caught.value.reason


def test_candidate_limit_counts_per_media() -> None:
    lines = "".join(
        f"a=candidate:{i} 1 UDP 2130706431 192.0.2.1 {4000 + i} typ host\n"
        for i in range(MAX_CANDIDATES_PER_MEDIA)
    )
    sdp = parse_sdp(AUDIO + lines)
    assert len(sdp.media[0].candidates()) == MAX_CANDIDATES_PER_MEDIA


# Hostile lines that only make themselves invalid: skipped by accessors,
# listed by invalid_lines, removed by drop_invalid_lines.
HOSTILE_LINES = [
    ("NUL in attribute name", "a=rt\x00pmap:0 PCMU/8000"),
    ("rtpmap payload type 2^32", "a=rtpmap:4294967296 PCMU/8000"),
    ("truncated candidate", "a=candidate:1 1 UDP 2130706431 192.0.2.1"),
    ("empty crypto key", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
    ("bad rtcp", "a=rtcp:notaport IN IP4 192.0.2.1"),
    ("rtcp port over 65535", "a=rtcp:99999"),
    ("ipv6 candidate with IPv4",
     "a=x-candidate-ipv6:7 1 UDP 2130706431 192.0.2.1 1 typ host"),
]


@pytest.mark.parametrize("name,line", HOSTILE_LINES, ids=[c[0] for c in HOSTILE_LINES])
def test_hostile_line_ignored(name: str, line: str) -> None:
    sdp = parse_sdp(AUDIO + line + "\n")
    section = sdp.media[0]
    assert [r.payload_type for r in section.rtpmaps()] == [0, 101]
    assert section.candidates() == []
    assert section.crypto() == []
    assert section.rtcp() is None
    assert len(invalid_lines(sdp)) == 1
    assert drop_invalid_lines(sdp) == 1
    assert sdp.to_text() == AUDIO


def test_line_kind_and_attribute() -> None:
    line = SdpLine("a=rtpmap:0 PCMU/8000", "\n")
    assert line.kind == "a"
    assert line.attribute_name == "rtpmap"
    assert line.attribute_value == "0 PCMU/8000"
    assert SdpLine("c=IN IP4 192.0.2.1").attribute_name is None


def test_warning_header_quotes_reason() -> None:
    error = SdpError('bad "value"', 488)
    assert error.warning("b2bua.example.com") == (
        '399 b2bua.example.com "bad \\"value\\""'
    )
