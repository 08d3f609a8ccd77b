"""Table tests for choosing the SDP of a body and fitting messages to a worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.sdp import SdpError, parse_sdp
from b2bua.sipbody import (
    MessageTooLarge,
    content_type_parameter,
    normalize_for_worker,
    sdp_has_ice,
    select_sdp,
    split_multipart,
)
from b2bua.sipmsg import SipMessage, parse_message

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
FEDERATION = "lync2013-federation-invite.sip"
BOUNDARY = "----=_NextPart_000_0042_01D5A1B2.C3D4E5F6"

SIMPLE_SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
ISUP = "Content-Type: application/ISUP;version=itu-t92+\r\n\r\n\x01\x10\x60\x01\r\n"
PIDF = (
    "Content-Type: application/pidf+xml\r\n\r\n"
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com"/>\r\n'
)


def load(name: str) -> SipMessage:
    return parse_message((SAMPLES / name).read_bytes())


def federation_parts() -> tuple[str, str]:
    """Return the fallback (ICE v6) part and the ICE v19 part, headers included."""
    body = load(FEDERATION).body.decode()
    pieces = body.split("--" + BOUNDARY)
    return pieces[1].strip("\n") + "\n", pieces[2].strip("\n") + "\n"


def multipart(kind: str, parts: list[str], eol: str = "\n") -> tuple[bytes, str]:
    text = "".join(f"--{BOUNDARY}\n{part}" for part in parts) + f"--{BOUNDARY}--\n"
    text = text.replace("\r\n", "\n").replace("\n", eol)
    return text.encode(), f'{kind};boundary="{BOUNDARY}"'


def sdp_part(sdp: str) -> str:
    return f"Content-Type: application/sdp\r\n\r\n{sdp}"


def chosen_port(body: bytes, content_type: str) -> int:
    selection = select_sdp(body, content_type)
    assert selection is not None
    return parse_sdp(selection.sdp).media[0].port


def test_federation_sample_selects_ice_v19_part() -> None:
    message = load(FEDERATION)
    selection = select_sdp(message.body, message.header("Content-Type") or "")
    assert selection is not None
    assert selection.source == "multipart/alternative SDP part 2 of 2"
    assert selection.ignored_parts == 1
    assert parse_sdp(selection.sdp).media[0].port == 51210


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("order", ["fallback-first", "fallback-last"])
def test_ice_v19_part_whatever_order(order: str, eol: str) -> None:
    fallback, primary = federation_parts()
    parts = [fallback, primary] if order == "fallback-first" else [primary, fallback]
    body, content_type = multipart("multipart/alternative", parts, eol)
    assert chosen_port(body, content_type) == 51210


@pytest.mark.parametrize("damage", ["v=0\n", "t=0 0\n", "m=audio 51200 RTP/SAVP "])
def test_malformed_fallback_part_ignored(damage: str) -> None:
    fallback, primary = federation_parts()
    body, content_type = multipart(
        "multipart/alternative", [fallback.replace(damage, "", 1), primary]
    )
    assert chosen_port(body, content_type) == 51210
    message = load(FEDERATION)
    message.headers = [
        (n, content_type if n == "Content-Type" else v) for n, v in message.headers
    ]
    message.body = body
    normalized = normalize_for_worker(message)
    assert normalized.sdp is not None
    assert normalized.sdp.media[0].port == 51210


@pytest.mark.parametrize(
    "kind,parts",
    [
        ("multipart/mixed", [sdp_part(SIMPLE_SDP), ISUP]),
        ("multipart/mixed", [ISUP, sdp_part(SIMPLE_SDP)]),
        ("multipart/related", [PIDF, sdp_part(SIMPLE_SDP)]),
        ("multipart/alternative", [sdp_part(SIMPLE_SDP), PIDF]),
    ],
)
def test_sdp_part_beside_other_bodies(kind: str, parts: list[str]) -> None:
    body, content_type = multipart(kind, parts, "\r\n")
    assert chosen_port(body, content_type) == 4000


def test_nested_multipart() -> None:
    inner, inner_type = multipart(
        "multipart/alternative", [sdp_part(SIMPLE_SDP)], "\r\n"
    )
    nested = f"Content-Type: {inner_type}\r\n\r\n" + inner.decode()
    outer_boundary = "outer-1"
    text = (
        f"--{outer_boundary}\r\n{ISUP}--{outer_boundary}\r\n{nested}"
        f"--{outer_boundary}--\r\n"
    )
    content_type = f"multipart/mixed; boundary={outer_boundary}"
    assert chosen_port(text.encode(), content_type) == 4000


def test_no_sdp_part_gives_none() -> None:
    body, content_type = multipart("multipart/mixed", [ISUP, PIDF], "\r\n")
    assert select_sdp(body, content_type) is None
    assert select_sdp(b"\x01\x10", "application/ISUP") is None


@pytest.mark.parametrize(
    "content_type",
    ["multipart/mixed", "multipart/mixed;boundary=", "multipart/mixed;boundary=nope"],
)
def test_bad_multipart_raises(content_type: str) -> None:
    body, _ = multipart("multipart/mixed", [sdp_part(SIMPLE_SDP)])
    with pytest.raises(SdpError):
        select_sdp(body, content_type)


def test_too_many_parts_raises() -> None:
    body, content_type = multipart("multipart/mixed", [PIDF] * 17)
    with pytest.raises(SdpError):
        select_sdp(body, content_type)


def test_base64_part_decoded() -> None:
    import base64

    encoded = base64.b64encode(SIMPLE_SDP.encode()).decode()
    part = (
        "Content-Type: application/sdp\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded + "\r\n"
    )
    body, content_type = multipart("multipart/mixed", [part], "\r\n")
    assert chosen_port(body, content_type) == 4000


def test_split_multipart_part_headers() -> None:
    fallback, primary = federation_parts()
    body, _ = multipart("multipart/alternative", [fallback, primary])
    parts = split_multipart(body, BOUNDARY)
    assert len(parts) == 2
    assert "ms-proxy-2007fallback" in parts[0].header("content-disposition")
    assert parts[1].media_type == "application/sdp"


@pytest.mark.parametrize(
    "value,expected",
    [
        ('multipart/alternative;boundary="a b"', "a b"),
        ("multipart/mixed; Boundary=xyz; charset=utf-8", "xyz"),
        ("multipart/mixed", None),
    ],
)
def test_content_type_parameter(value: str, expected: str | None) -> None:
    assert content_type_parameter(value, "boundary") == expected


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.sip")))
def test_normalize_keeps_m_lines(name: str) -> None:
    message = load(name)
    selection = select_sdp(message.body, message.header("Content-Type") or "")
    assert selection is not None
    original = parse_sdp(selection.sdp)
    normalized = normalize_for_worker(message)
    assert normalized.sdp is not None
    assert [m.media for m in normalized.sdp.media] == [m.media for m in original.media]
    assert [m.proto for m in normalized.sdp.media] == [m.proto for m in original.media]
    assert normalized.content_type == "application/sdp"
    assert normalized.size <= 3800
    assert len(normalized.apply(message).to_bytes()) == normalized.size


def test_normalize_sfb_remote_invite() -> None:
    message = load("sfb-remote-invite.sip")
    normalized = normalize_for_worker(message)
    sdp = normalized.sdp
    assert sdp is not None
    candidates = sdp.media[0].candidates()
    assert len(candidates) == 6
    assert all(c.is_udp and not c.ipv6_attribute for c in candidates)
    assert sdp.media[0].attributes("cryptoscale") == []
    assert sdp.media[1].lines[0].text == "m=video 0 RTP/SAVP 122 121 123"
    assert len(sdp.media[1].lines) == 1
    assert set(normalized.remove_headers) == {
        "ms-subnet", "ms-endpoint-location-data", "ms-keep-alive",
        "Ms-Conversation-ID", "ms-edge-proxy-message-trust",
    }
    rebuilt = normalized.apply(message)
    assert rebuilt.header("ms-subnet") is None
    assert rebuilt.header("Call-ID") == message.header("Call-ID")


def test_normalize_federation_drops_legacy_part() -> None:
    normalized = normalize_for_worker(load(FEDERATION))
    assert b"ms-proxy-2007fallback" not in normalized.body
    assert b"0.830" not in normalized.body
    assert b"x-candidate-ipv6" not in normalized.body
    assert normalized.body.endswith(b"\n")


def test_normalize_shrinks_to_limit() -> None:
    message = load("sfb-remote-invite.sip")
    relaxed = normalize_for_worker(message)
    tight = normalize_for_worker(message, limit=relaxed.size - 100)
    assert tight.size <= relaxed.size - 100
    assert tight.sdp is not None
    assert tight.sdp.media[0].attributes("x-ssrc-range") == []
    assert len(tight.sdp.media) == 2
    encodings = {r.encoding.upper() for r in tight.sdp.media[0].rtpmaps()}
    assert "SILK" in encodings


def test_normalize_drops_microsoft_codecs_last() -> None:
    message = load("sfb-remote-invite.sip")
    relaxed = normalize_for_worker(message)
    tightest = normalize_for_worker(message, limit=relaxed.size - 300)
    assert tightest.sdp is not None
    encodings = {r.encoding.upper() for r in tightest.sdp.media[0].rtpmaps()}
    assert "SILK" not in encodings
    assert "PCMU" in encodings


def test_normalize_too_large_sdp_is_488() -> None:
    with pytest.raises(MessageTooLarge) as caught:
        normalize_for_worker(load("sfb-remote-invite.sip"), limit=1500)
    assert caught.value.status == 488
    assert "1500" in caught.value.reason


def test_normalize_counts_headers() -> None:
    message = load("lync-ice-final-reinvite.sip")
    before = normalize_for_worker(message)
    message.headers.append(("X-Padding", "p" * 100))
    after = normalize_for_worker(message)
    assert after.size == before.size + len("X-Padding: \r\n") + 100
    message.headers.append(("X-Padding", "p" * (3800 - after.size + 300)))
    with pytest.raises(MessageTooLarge) as caught:
        normalize_for_worker(message)
    assert caught.value.status == 488


def test_normalize_huge_headers_is_513() -> None:
    message = load("lync-ice-final-reinvite.sip")
    message.headers.append(("X-Padding", "p" * 4000))
    with pytest.raises(MessageTooLarge) as caught:
        normalize_for_worker(message)
    assert caught.value.status == 513


def test_normalize_without_sdp_keeps_body() -> None:
    message = parse_message(
        b"INFO sip:a@example.com SIP/2.0\r\nCall-ID: x\r\n"
        b"Content-Type: application/dtmf-relay\r\n\r\nSignal=5\r\nDuration=160\r\n"
    )
    normalized = normalize_for_worker(message)
    assert normalized.content_type is None
    assert normalized.sdp is None
    assert normalized.body == message.body


def test_normalize_drops_invalid_lines() -> None:
    message = load("lync-local-invite.sip")
    message.body += b"a=rt\x00pmap:0 PCMU/8000\n"
    message.body += b"a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:\n"
    normalized = normalize_for_worker(message)
    assert b"\x00" not in normalized.body
    assert b"a=crypto:9" not in normalized.body


def test_normalize_bad_sdp_is_400() -> None:
    message = load("lync-local-invite.sip")
    message.body = message.body.replace(b"RTP/SAVP 104", b"RTP/SAVP 4294967296")
    with pytest.raises(SdpError) as caught:
        normalize_for_worker(message)
    assert caught.value.status == 400


def test_mutated_samples_raise_only_sdp_errors() -> None:
    # Seeded and bounded: the same 2,000 mutations on every run.
    import random

    from b2bua.sdp_rewrite import LegContext, compile_rules, default_rules
    from b2bua.sipmsg import SipParseError

    rng = random.Random(7)
    messages = [path.read_bytes() for path in sorted(SAMPLES.glob("*.sip"))]
    rules = compile_rules(default_rules("ice"))
    inserts = [b"\x00", b"4294967296", b" ", b":", b"|", b"\n", b"m=", b"a=", b"\xff"]
    checked = 0
    for _ in range(2000):
        data = bytearray(rng.choice(messages))
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(data))
            if rng.random() < 0.5:
                del data[position:position + rng.randint(1, 20)]
            else:
                data[position:position] = rng.choice(inserts)
        try:
            message = parse_message(bytes(data))
        except SipParseError:
            continue
        try:
            normalized = normalize_for_worker(message)
            if normalized.sdp is not None:
                rules.apply(normalized.sdp, LegContext("answer", False))
        except SdpError:
            pass
        checked += 1
    assert checked > 1000


def invite_with(body: str, content_type: str) -> SipMessage:
    head = (
        "INVITE sip:echo@192.0.2.10 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-ice\r\n"
        "From: <sip:a@example.com>;tag=1\r\nTo: <sip:echo@192.0.2.10>\r\n"
        "Call-ID: ice-check\r\nCSeq: 1 INVITE\r\n"
    )
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return parse_message(f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode())


def worker_sdp_has_ice(message: SipMessage) -> bool | None:
    """Judge ICE as the edge does: on the SDP the worker gets, None without SDP."""
    sdp = normalize_for_worker(message).sdp
    return None if sdp is None else sdp_has_ice(sdp)


@pytest.mark.parametrize("name", ["lync-local-invite.sip", "sfb-remote-invite.sip",
                                  FEDERATION])
def test_lync_offers_have_ice(name: str) -> None:
    assert worker_sdp_has_ice(load(name)) is True


def test_plain_offer_has_no_ice() -> None:
    assert worker_sdp_has_ice(invite_with(SIMPLE_SDP, "application/sdp")) is False


def test_ice_in_media_section_counts() -> None:
    sdp = SIMPLE_SDP + "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n"
    assert worker_sdp_has_ice(invite_with(sdp, "application/sdp")) is True


def test_late_offer_has_no_sdp() -> None:
    assert worker_sdp_has_ice(invite_with("", "")) is None


def test_ice_judged_on_worker_part() -> None:
    fallback, _ = federation_parts()
    body, content_type = multipart("multipart/alternative",
                                   [fallback, sdp_part(SIMPLE_SDP)])
    # The ICE v6 fallback part carries candidates, but the worker negotiates
    # the plain part.
    assert worker_sdp_has_ice(invite_with(body.decode(), content_type)) is False


def test_ice_on_refused_stream_ignored() -> None:
    sdp = SIMPLE_SDP + (
        "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n"
        "a=candidate:1 1 UDP 2130706431 192.0.2.1 4002 typ host\r\n"
    )
    assert worker_sdp_has_ice(invite_with(sdp, "application/sdp")) is False


def test_tcp_candidates_only_is_no_ice() -> None:
    sdp = SIMPLE_SDP + "a=candidate:1 1 TCP 1 192.0.2.1 9 typ host tcptype active\r\n"
    assert worker_sdp_has_ice(invite_with(sdp, "application/sdp")) is False
