"""Responses built from raw bytes for requests that do not parse."""

from __future__ import annotations

import pytest

from b2bua.sipmsg import SipParseError, error_response_for_unparsable, parse_message

BROKEN_BYE = (
    b"BYE sip:w0@127.0.0.1:5100 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKa1;rport\r\n"
    b"v: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bKb2\r\n"
    b"From: <sip:alice@example.com>;tag=f1\r\n"
    b"t: <sip:bob@example.com>;tag=t1\r\n"
    b"Call-ID: c1@10.0.0.2\r\n"
    b"CSeq: 2 BYE\r\n"
    b"ThisHeaderLineHasNoColon\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def response_lines(data: bytes) -> list[str]:
    return data.decode().split("\r\n")


def test_broken_bye_fails_to_parse() -> None:
    with pytest.raises(SipParseError, match="line 8: invalid header line"):
        parse_message(BROKEN_BYE)


def test_response_copies_dialog_headers() -> None:
    reply = error_response_for_unparsable(BROKEN_BYE, 400, "Bad Request")
    assert reply is not None
    lines = response_lines(reply)
    assert lines[0] == "SIP/2.0 400 Bad Request"
    assert lines[1] == "Via: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKa1;rport"
    assert lines[2] == "Via: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bKb2"
    assert "From: <sip:alice@example.com>;tag=f1" in lines
    assert "To: <sip:bob@example.com>;tag=t1" in lines
    assert "Call-ID: c1@10.0.0.2" in lines
    assert "CSeq: 2 BYE" in lines
    assert reply.endswith(b"Content-Length: 0\r\n\r\n")
    assert not any(line.startswith("Warning:") for line in lines)


def test_response_parses_as_sip() -> None:
    reply = error_response_for_unparsable(BROKEN_BYE, 400, "Bad Request",
                                          warning='line 8: "bad"', agent="edge")
    assert reply is not None
    message = parse_message(reply)
    assert message.status == 400
    assert message.header("Warning") == "399 edge \"line 8: 'bad'\""


def test_to_tag_added_when_missing() -> None:
    invite = BROKEN_BYE.replace(b"BYE sip:", b"INVITE sip:").replace(
        b"CSeq: 2 BYE", b"CSeq: 1 INVITE").replace(b";tag=t1", b"")
    first = error_response_for_unparsable(invite, 400, "Bad Request")
    second = error_response_for_unparsable(invite, 400, "Bad Request")
    assert first is not None
    to_line = next(l for l in response_lines(first) if l.startswith("To: "))
    assert to_line.startswith("To: <sip:bob@example.com>;tag=")
    # A retransmission gets the same tag.
    assert first == second


@pytest.mark.parametrize("names", [(b"Via", b"v"), (b"From",), (b"t",), (b"Call-ID",),
                                   (b"CSeq",)])
def test_no_response_without_header(names: tuple[bytes, ...]) -> None:
    lines = [line for line in BROKEN_BYE.split(b"\r\n")
             if line.split(b":", 1)[0] not in names]
    assert error_response_for_unparsable(b"\r\n".join(lines), 400, "x") is None


def test_no_response_to_ack_or_response() -> None:
    ack = BROKEN_BYE.replace(b"BYE sip:", b"ACK sip:").replace(b"2 BYE", b"2 ACK")
    assert error_response_for_unparsable(ack, 400, "x") is None
    response = b"SIP/2.0 200 OK\r\n" + BROKEN_BYE.split(b"\r\n", 1)[1]
    assert error_response_for_unparsable(response, 400, "x") is None
