"""Checks and responses for requests the edge cannot pass to a worker."""

from __future__ import annotations

import pytest

from b2bua.sipmsg import (
    SipMessage,
    SipParseError,
    address_syntax_problem,
    dialog_address_problem,
    error_response_for_unparsable,
    name_addr_uri,
    parse_message,
    split_header_list,
)

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


@pytest.mark.parametrize(("value", "problem"), [
    ("<sip:alice@10.0.0.2:5062>", None),
    ("sip:alice@10.0.0.2;tag=f1", None),
    ('"Alice <home>" <sip:alice@example.com>;tag=f1', None),
    ('"A \\" quote" <sip:a@example.com>', None),
    (" <tel:+15551234>", None),
    # Lync and Skype for Business Contact parameters.
    ('<sip:bob@example.com;gruu;opaque=srvr:x>;+sip.instance="<urn:uuid:1a>"', None),
    ("<sip:c@10.0.0.2:5060> junk-continuation",
     "unexpected text 'junk-continuation' after the URI"),
    # An addr-spec whose quoted parameter contains angle brackets.
    ('sip:c@10.0.0.2:5062;+sip.instance="<urn:uuid:1a>"', None),
    ("<sip:c@10.0.0.2", "unbalanced angle brackets or quotes"),
    ("junk", "invalid URI 'junk'"),
    ("<>", "invalid URI ''"),
    ("*", "invalid URI '*'"),
])
def test_address_syntax(value: str, problem: str | None) -> None:
    assert address_syntax_problem(value) == problem


def invite_with(headers: str) -> SipMessage:
    return parse_message(
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKa\r\n"
        + headers.encode() +
        b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(("headers", "problem"), [
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
     "Contact: <sip:a@10.0.0.2>, <sip:a@10.0.0.3>\r\n", None),
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n",
     "missing Contact header"),
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
     "Contact: <sip:a@10.0.0.2>\r\n\tjunk\r\n",
     "invalid Contact header: unexpected text 'junk' after the URI"),
    ("From: <sip:a@example.com>;tag=1\r\nTo: bob\r\nContact: <sip:a@10.0.0.2>\r\n",
     "invalid To header: invalid URI 'bob'"),
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
     'Contact: "a \\"x, y\\" b" <sip:a@10.0.0.2>\r\n', None),
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
     "Contact: <sip:@>\r\n", "invalid Contact header: no host in 'sip:@'"),
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
     "Contact: <mailto:a@example.com>\r\n",
     "invalid Contact header: expected a SIP or SIPS URI, found "
     "'mailto:a@example.com'"),
    ("From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
     "Contact: <sip:a@10.0.0.2:port>\r\n",
     "invalid Contact header: expected a SIP or SIPS URI, found "
     "'sip:a@10.0.0.2:port'"),
    ("From: <sip:a@example.com>;tag=1\r\nf: <sip:b@example.com>;tag=2\r\n"
     "To: <sip:bob@example.com>\r\nContact: <sip:a@10.0.0.2>\r\n",
     "expected one From header, found 2"),
])
def test_dialog_addresses(headers: str, problem: str | None) -> None:
    assert dialog_address_problem(invite_with(headers)) == problem


@pytest.mark.parametrize(("value", "uri"), [
    ('"Smith, J <jr> \\"Q\\"" <sip:caller@10.0.0.2>;tag=a2', "sip:caller@10.0.0.2"),
    ('"<sip:boss@lab.test>" <sip:m@foreign.example>', "sip:m@foreign.example"),
    ("Bob <sip:bob@example.com>;tag=1", "sip:bob@example.com"),
    ('sip:c@10.0.0.2;+sip.instance="<urn:uuid:1a>"', "sip:c@10.0.0.2"),
])
def test_uri_skips_quoted_display_name(value: str, uri: str) -> None:
    assert name_addr_uri(value) == uri


def test_header_list_keeps_escaped_quotes() -> None:
    value = '"a \\"x, y\\" b" <sip:a@h>, <sip:b@h>'
    assert split_header_list(value) == ['"a \\"x, y\\" b" <sip:a@h>', "<sip:b@h>"]
