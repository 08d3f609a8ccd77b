"""Call classification, federation checks, the class header and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from b2bua.classify import (
    CALL_CLASSES,
    MAX_REASON_LENGTH,
    Classification,
    ClassifyPolicy,
    check_federation,
    classify,
    decode_class_header,
    encode_class_header,
    sdp_host_addresses,
    top_via_source,
)
from b2bua.cli_classify import classify_command
from b2bua.sipmsg import parse_message

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLES = DATA / "samples"
OWN = DATA / "classify"

CLASSIFICATION = {
    "local_domains": ["example.com"],
    "internal_networks": ["192.0.2.0/24", "10.0.0.0/8"],
    "edge_servers": ["edge.example.com", "192.0.2.20"],
    "trusted_peers": ["192.0.2.10", "fe01.example.com"],
}
FEDERATION = {
    "allow": ["partner.example.net", "*.allowed.example.org"],
    "deny": ["blocked.allowed.example.org"],
}
POLICY = ClassifyPolicy.from_sections(CLASSIFICATION, FEDERATION)

DIRECT_PARTNER = "ms-source-type=DirectPartner;ms-ep-fqdn=edge.example.com"
INTERNET_USER = "ms-source-type=InternetUser;ms-ep-fqdn=edge.example.com"


def build_invite(
    *,
    from_uri: str = "sip:carol@example.com",
    pai: str | None = None,
    trust: str | None = None,
    via: str = "SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKt1",
    record_route: str | None = None,
    body: str = "",
    content_type: str = "application/sdp",
) -> bytes:
    lines = [
        "INVITE sip:4410@example.com SIP/2.0",
        f"Via: {via}",
        f"From: <{from_uri}>;tag=t1",
        "To: <sip:4410@example.com>",
        "Call-ID: table-case",
        "CSeq: 1 INVITE",
    ]
    if pai is not None:
        lines.append(f"P-Asserted-Identity: {pai}")
    if trust is not None:
        lines.append(f"ms-edge-proxy-message-trust: {trust}")
    if record_route is not None:
        lines.append(f"Record-Route: {record_route}")
    if body:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def sdp_with_host(address: str) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\n"
        f"a=candidate:1 1 UDP 2130706431 {address} 4000 typ host\r\n"
    )


def names(signals: tuple[object, ...]) -> list[str]:
    return [signal.name for signal in signals]  # type: ignore[attr-defined]


# (sample file, source or None for the top Via, class, deciding signals)
SAMPLE_CASES = [
    (
        "lync-local-invite.sip",
        None,
        "local",
        ["from-domain", "pai-domain", "source-address"],
    ),
    (
        "sfb-remote-invite.sip",
        None,
        "remote",
        ["from-domain", "pai-domain", "trust-header", "edge-record-route"],
    ),
    ("lync2013-federation-invite.sip", None, "federation", ["trust-header"]),
    ("video-bfcp-invite.sip", None, "federation", ["from-domain"]),
    ("lync-ice-final-reinvite.sip", None, "remote", ["from-domain", "trust-header"]),
    ("sfb-appsharing-reinvite.sip", None, "local", ["from-domain", "source-address"]),
    # The client's own address, not the trusted front end: the trust header is
    # ignored, but the edge in Record-Route and the outside source still count.
    (
        "sfb-remote-invite.sip",
        "198.51.100.25",
        "remote",
        ["from-domain", "pai-domain", "edge-record-route", "source-address"],
    ),
    ("lync2013-federation-invite.sip", "203.0.113.90", "federation", ["from-domain"]),
    (
        "lync-local-invite.sip",
        "198.51.100.5:5061",
        "remote",
        ["from-domain", "pai-domain", "source-address"],
    ),
    ("publiccloud-invite.sip", None, "federation", ["trust-header"]),
    (
        "untrusted-trust-header-invite.sip",
        None,
        "remote",
        ["from-domain", "source-address"],
    ),
    ("disagreeing-identity-invite.sip", None, "federation", ["pai-domain"]),
    (
        "local-domain-outside-invite.sip",
        None,
        "remote",
        ["from-domain", "source-address"],
    ),
]


def load(name: str) -> bytes:
    path = SAMPLES / name
    if not path.exists():
        path = OWN / name
    return path.read_bytes()


@pytest.mark.parametrize(("name", "source", "expected", "deciders"), SAMPLE_CASES)
def test_classify_samples(
    name: str, source: str | None, expected: str, deciders: list[str]
) -> None:
    message = parse_message(load(name))
    if source is None:
        source = top_via_source(message)
    result = classify(message, source, POLICY)
    assert result.call_class == expected
    assert names(result.decided_by) == deciders
    assert result.reason.startswith(f"{expected}: ")


def test_untrusted_trust_header_warns() -> None:
    message = parse_message(load("untrusted-trust-header-invite.sip"))
    result = classify(message, "198.51.100.99", POLICY)
    trust = [s for s in result.signals if s.name == "trust-header"]
    assert trust
    assert not any(signal.counted for signal in trust)
    assert any("not a trusted peer" in warning for warning in result.warnings)


def test_disagreeing_identity_warns() -> None:
    message = parse_message(load("disagreeing-identity-invite.sip"))
    result = classify(message, "192.0.2.10", POLICY)
    assert any("disagree" in warning for warning in result.warnings)
    tel = [s for s in result.signals if s.value.startswith("tel:")]
    assert len(tel) == 1
    assert not tel[0].counted


# (case id, build_invite arguments, source, tls_peer, class, deciding signals)
BUILT_CASES = [
    (
        "no-trust-inside",
        {},
        "192.0.2.10",
        None,
        "local",
        ["from-domain", "source-address"],
    ),
    (
        "internet-user-trusted",
        {"trust": INTERNET_USER},
        "192.0.2.10",
        None,
        "remote",
        ["from-domain", "trust-header"],
    ),
    (
        "direct-partner-local-domain",
        {"trust": DIRECT_PARTNER},
        "192.0.2.10",
        None,
        "federation",
        ["trust-header"],
    ),
    (
        "direct-partner-untrusted",
        {"trust": DIRECT_PARTNER},
        "192.0.2.99",
        None,
        "local",
        ["from-domain", "source-address"],
    ),
    (
        "authorized-server",
        {"trust": "ms-source-type=AuthorizedServer"},
        "192.0.2.10",
        None,
        "federation",
        ["trust-header"],
    ),
    (
        "network-federation-beats-type",
        {"trust": "ms-source-type=InternetUser;ms-source-network=federation"},
        "192.0.2.10",
        None,
        "federation",
        ["trust-header"],
    ),
    (
        "auto-federation-lower-case",
        {"trust": "MS-Source-Type=autofederation"},
        "192.0.2.10",
        None,
        "federation",
        ["trust-header"],
    ),
    (
        "publiccloud-untrusted",
        {"trust": "ms-source-type=AutoFederation;ms-source-network=publiccloud"},
        "192.0.2.50",
        None,
        "local",
        ["from-domain", "source-address"],
    ),
    (
        "unknown-source-type",
        {"trust": "ms-source-type=SomethingNew"},
        "192.0.2.10",
        None,
        "remote",
        ["from-domain", "trust-header"],
    ),
    (
        "local-domain-outside-address",
        {},
        "203.0.113.5",
        None,
        "remote",
        ["from-domain", "source-address"],
    ),
    (
        "edge-by-source-address",
        {},
        "192.0.2.20:5061",
        None,
        "remote",
        ["from-domain", "edge-source"],
    ),
    (
        "edge-by-via-fqdn",
        {"via": "SIP/2.0/TLS edge.example.com:5061;branch=z9hG4bKe"},
        "192.0.2.10",
        None,
        "remote",
        ["from-domain", "edge-via"],
    ),
    (
        "edge-by-via-received",
        {"via": "SIP/2.0/UDP 10.1.1.1;received=192.0.2.20;branch=z9hG4bKe"},
        "192.0.2.10",
        None,
        "remote",
        ["from-domain", "edge-via"],
    ),
    (
        "edge-by-record-route",
        {"record_route": "<sip:EDGE.example.com:5061;transport=tls;lr>"},
        "10.2.3.4",
        None,
        "remote",
        ["from-domain", "edge-record-route"],
    ),
    (
        "edge-by-tls-peer",
        {},
        "10.2.3.4",
        "edge.example.com",
        "remote",
        ["from-domain", "edge-tls-peer"],
    ),
    (
        "trusted-by-tls-peer",
        {"trust": DIRECT_PARTNER, "from_uri": "sip:bob@partner.example.net"},
        "10.9.9.9",
        "fe01.example.com",
        "federation",
        ["trust-header"],
    ),
    (
        "untrusted-tls-peer",
        {"trust": INTERNET_USER},
        "10.9.9.9",
        "someone.example.org",
        "local",
        ["from-domain", "source-address"],
    ),
    (
        "pai-foreign-from-local",
        {"pai": "<sip:erin@partner.example.net>"},
        "192.0.2.10",
        None,
        "federation",
        ["pai-domain"],
    ),
    (
        "pai-tel-only",
        {"pai": "<tel:+15550100001>"},
        "192.0.2.10",
        None,
        "local",
        ["from-domain", "source-address"],
    ),
    (
        "ipv6-source-outside",
        {},
        "[2001:db8::5]:5061",
        None,
        "remote",
        ["from-domain", "source-address"],
    ),
    (
        "sdp-hint-inside",
        {"body": sdp_with_host("10.20.30.40")},
        None,
        None,
        "local",
        ["from-domain", "sdp-host-addresses"],
    ),
    (
        "sdp-hint-outside",
        {"body": sdp_with_host("198.51.100.40")},
        None,
        None,
        "remote",
        ["from-domain", "sdp-host-addresses"],
    ),
    (
        "sdp-hint-unused-when-source-known",
        {"body": sdp_with_host("198.51.100.40")},
        "192.0.2.10",
        None,
        "local",
        ["from-domain", "source-address"],
    ),
    (
        "sdp-hint-in-multipart",
        {
            "body": "--b\r\nContent-Type: application/sdp\r\n\r\n"
            + sdp_with_host("10.20.30.40")
            + "--b--\r\n",
            "content_type": 'multipart/alternative;boundary="b"',
        },
        "not-an-address",
        None,
        "local",
        ["from-domain", "sdp-host-addresses"],
    ),
    ("no-signal-at-all", {}, None, None, "remote", ["from-domain"]),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "source", "tls_peer", "expected", "deciders"),
    BUILT_CASES,
    ids=[case[0] for case in BUILT_CASES],
)
def test_classify_built_invites(
    case: str,
    kwargs: dict[str, str],
    source: str | None,
    tls_peer: str | None,
    expected: str,
    deciders: list[str],
) -> None:
    message = parse_message(build_invite(**kwargs))
    result = classify(message, source, POLICY, tls_peer=tls_peer)
    assert result.call_class == expected
    assert names(result.decided_by) == deciders


def test_no_signal_assumes_outside() -> None:
    result = classify(parse_message(build_invite()), None, POLICY)
    assert any("assumed outside" in warning for warning in result.warnings)


def test_publiccloud_follows_policy() -> None:
    message = parse_message(load("publiccloud-invite.sip"))
    as_remote = ClassifyPolicy.from_sections(
        {**CLASSIFICATION, "public_cloud": "remote"}, FEDERATION
    )
    assert classify(message, "192.0.2.10", POLICY).call_class == "federation"
    assert classify(message, "192.0.2.10", as_remote).call_class == "remote"
    assert classify(message, "192.0.2.10", as_remote).federation_verdict is None


def test_every_signal_is_listed() -> None:
    message = parse_message(
        build_invite(trust=INTERNET_USER, body=sdp_with_host("10.20.30.40"))
    )
    result = classify(message, "192.0.2.10", POLICY)
    assert names(result.signals) == [
        "from-domain",
        "trust-header",
        "source-address",
        "sdp-host-addresses",
    ]
    hint = result.signals[-1]
    assert hint.counted is False
    assert hint.answer == "inside"


def test_empty_policy_is_federation() -> None:
    result = classify(parse_message(build_invite()), "192.0.2.10", ClassifyPolicy())
    assert result.call_class == "federation"
    assert result.federation_verdict is not None
    assert result.federation_verdict.status == 403


def test_reason_bounded_without_line_breaks() -> None:
    long_domain = "a" * 300 + ".example.org"
    raw = build_invite(from_uri=f"sip:x@evil\rX-Injected: 1\x0b{long_domain}")
    message = parse_message(raw)
    result = classify(message, "192.0.2.10", POLICY)
    assert "\r" not in result.reason
    assert "\n" not in result.reason
    assert "\x0b" not in result.reason
    assert len(result.reason) <= MAX_REASON_LENGTH
    for signal in result.signals:
        assert "\r" not in signal.value


def test_sdp_host_addresses_skip_non_host() -> None:
    body = load("sfb-remote-invite.sip").split(b"\n\n", 1)[1]
    found = [str(address) for address in sdp_host_addresses(body)]
    assert found == ["203.0.113.40", "192.0.2.77", "2001:db8:10::77"]


def test_top_via_source_prefers_received() -> None:
    message = parse_message(load("local-domain-outside-invite.sip"))
    assert top_via_source(message) == "203.0.113.8"
    message = parse_message(load("video-bfcp-invite.sip"))
    assert top_via_source(message) == "198.51.100.80"


# (case id, From URI, PAI or None, federation section, expected 403 reason part)
FEDERATION_CASES = [
    ("allowed", "sip:bob@partner.example.net", None, FEDERATION, None),
    ("allowed-wildcard", "sip:bob@a.allowed.example.org", None, FEDERATION, None),
    ("not-allowed", "sip:bob@other.example.net", None, FEDERATION, "not on the allow"),
    (
        "deny-wins",
        "sip:bob@blocked.allowed.example.org",
        None,
        FEDERATION,
        "on the deny list",
    ),
    ("empty-allow", "sip:bob@partner.example.net", None, {}, "allow list is empty"),
    (
        "deny-only",
        "sip:bob@partner.example.net",
        None,
        {"deny": ["x.example"]},
        "allow list is empty",
    ),
    (
        "pai-denied",
        "sip:bob@partner.example.net",
        "<sip:bob@blocked.allowed.example.org>",
        FEDERATION,
        "on the deny list",
    ),
    (
        "allow-all-but-denied",
        "sip:bob@partner.example.net",
        None,
        {"allow": ["*"], "deny": ["partner.example.net"]},
        "on the deny list",
    ),
]


@pytest.mark.parametrize(
    ("case", "from_uri", "pai", "federation", "rejected"),
    FEDERATION_CASES,
    ids=[case[0] for case in FEDERATION_CASES],
)
def test_check_federation(
    case: str,
    from_uri: str,
    pai: str | None,
    federation: dict[str, list[str]],
    rejected: str | None,
) -> None:
    policy = ClassifyPolicy.from_sections(CLASSIFICATION, federation)
    message = parse_message(build_invite(from_uri=from_uri, pai=pai))
    result = classify(message, "203.0.113.9", policy)
    assert result.call_class == "federation"
    verdict = check_federation(result, message, policy)
    assert verdict == result.federation_verdict
    if rejected is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert verdict.status == 403
        assert rejected in verdict.reason


def test_check_federation_ignores_local_calls() -> None:
    message = parse_message(build_invite())
    result = classify(
        message, "192.0.2.10", ClassifyPolicy.from_sections(CLASSIFICATION, {})
    )
    assert result.call_class == "local"
    assert check_federation(result, message, POLICY) is None


def test_rejection_reason_header() -> None:
    message = parse_message(build_invite(from_uri='sip:x@bad"domain.example'))
    result = classify(message, "203.0.113.9", POLICY)
    assert result.federation_verdict is not None
    header = result.federation_verdict.reason_header()
    assert header.startswith('SIP;cause=403;text="')
    assert '\\"' in header


def test_class_header_round_trip() -> None:
    for name in ("lync-local-invite.sip", "sfb-remote-invite.sip"):
        message = parse_message(load(name))
        result = classify(message, top_via_source(message), POLICY)
        encoded = encode_class_header(result)
        assert "\r" not in encoded
        assert "\n" not in encoded
        assert decode_class_header(encoded) == (result.call_class, result.reason)


def test_class_header_escapes_quotes() -> None:
    tricky = Classification("remote", 'said "hi" \\ then; reason="local"')
    encoded = encode_class_header(tricky)
    assert encoded == 'remote; reason="said \\"hi\\" \\\\ then; reason=\\"local\\""'
    assert decode_class_header(encoded) == ("remote", tricky.reason)


# (header value, expected class, expected reason)
DECODE_CASES = [
    ("local", "local", ""),
    (" Remote ;reason=plain-token", "remote", "plain-token"),
    ('federation; reason="a\r\nX-Evil: 1"', "federation", "a X-Evil: 1"),
    ('remote; reason="unterminated', "remote", "unterminated"),
    ('local; other=1; reason="x"', "local", "x"),
]


@pytest.mark.parametrize(("value", "call_class", "reason"), DECODE_CASES)
def test_decode_class_header(value: str, call_class: str, reason: str) -> None:
    assert decode_class_header(value) == (call_class, reason)


def test_decode_class_header_bounds_reason() -> None:
    _, reason = decode_class_header('remote; reason="' + "x" * 5000 + '"')
    assert len(reason) <= MAX_REASON_LENGTH


@pytest.mark.parametrize("value", ["", "trusted", "local\r\nremote", "federal; x"])
def test_decode_class_header_rejects_unknown(value: str) -> None:
    with pytest.raises(ValueError, match="invalid call class"):
        decode_class_header(value)


def test_policy_defaults() -> None:
    policy = ClassifyPolicy.from_sections({}, None)
    assert policy.public_cloud == "federation"
    assert policy.local_domains == ()
    assert policy.federation_allow == ()
    assert set(CALL_CLASSES) == {"local", "remote", "federation"}


# (classification section, federation section, expected error part)
POLICY_ERRORS = [
    (
        {"internal_networks": ["10.0.0/33"]},
        {},
        "classification.internal_networks[0]",
    ),
    ({"public_cloud": "cloudy"}, {}, "classification.public_cloud"),
    ({"local_domains": "example.com"}, {}, "classification.local_domains"),
    ({"trusted_peers": ["192.0.2.1/40"]}, {}, "classification.trusted_peers[0]"),
    ({"edge_servers": ["bad name!"]}, {}, "classification.edge_servers[0]"),
    ({}, {"allow": [""]}, "federation.allow[0]"),
]


@pytest.mark.parametrize(("classification", "federation", "path"), POLICY_ERRORS)
def test_policy_errors_name_key(
    classification: dict[str, object], federation: dict[str, object], path: str
) -> None:
    with pytest.raises(ValueError) as error:
        ClassifyPolicy.from_sections(classification, federation)
    assert path in str(error.value)


def test_cli_prints_class_and_signals() -> None:
    result = CliRunner().invoke(
        classify_command, [str(SAMPLES / "sfb-remote-invite.sip")]
    )
    assert result.exit_code == 0
    assert "class: federation" in result.output
    assert "source: 192.0.2.10" in result.output
    assert "trust-header" in result.output
    assert "federation: rejected with 403" in result.output


def test_cli_json_with_source() -> None:
    path = OWN / "publiccloud-invite.sip"
    result = CliRunner().invoke(
        classify_command, [str(path), "--json", "--source", "198.51.100.1"]
    )
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["class"] == "federation"
    assert report["source"] == "198.51.100.1"
    assert report["decided_by"] == ["from-domain"]
    assert report["federation_rejection"]["status"] == 403
    assert any("not a trusted peer" in warning for warning in report["warnings"])


def test_cli_reads_lf_capture() -> None:
    path = OWN / "disagreeing-identity-invite.sip"
    result = CliRunner().invoke(classify_command, [str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["source"] == "192.0.2.10"


@pytest.mark.parametrize(
    ("name", "message"),
    [("http-request.txt", "not a SIP start line"), ("response-200.sip", "response")],
)
def test_cli_rejects_non_request(name: str, message: str) -> None:
    result = CliRunner().invoke(classify_command, [str(OWN / name)])
    assert result.exit_code == 2
    assert "not a SIP request" in result.output
    assert message in result.output


def test_cli_config_sets_policy() -> None:
    sample = SAMPLES / "lync2013-federation-invite.sip"
    config = OWN / "policy.yaml"
    result = CliRunner().invoke(
        classify_command, [str(sample), "--config", str(config), "--json"]
    )
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["class"] == "federation"
    assert report["decided_by"] == ["trust-header"]
    assert report["federation_rejection"] is None


def test_cli_invalid_config_names_file() -> None:
    sample = SAMPLES / "lync-local-invite.sip"
    config = OWN / "response-200.sip"
    result = CliRunner().invoke(
        classify_command, [str(sample), "--config", str(config)]
    )
    assert result.exit_code == 1
    assert "response-200.sip" in result.output
