"""STUN/TURN message encoding and decoding in b2bua.probe, without sockets.

The fixed messages are test vectors of RFC 5769. Section 2.1 is a Binding
request with MESSAGE-INTEGRITY (short-term password below) and FINGERPRINT.
Section 2.2 is a Binding success response with XOR-MAPPED-ADDRESS
192.0.2.1:32853, and section 2.3 gives the IPv6 address value used below.
"""

from __future__ import annotations

import hashlib

import pytest

from b2bua import probe

RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)


def test_decode_rfc5769_request() -> None:
    message = probe.decode_message(RFC5769_REQUEST)
    assert message.method == probe.BINDING
    assert message.message_class == probe.REQUEST
    assert message.transaction_id == RFC5769_TRANSACTION_ID
    assert message.get(probe.SOFTWARE) == b"STUN test client"
    assert message.get(probe.USERNAME) == b"evtj:h6vY"
    assert [kind for kind, _ in message.attributes] == [
        probe.SOFTWARE, 0x0024, 0x8029, probe.USERNAME,
        probe.MESSAGE_INTEGRITY, probe.FINGERPRINT,
    ]


def test_verify_rfc5769_request() -> None:
    assert probe.verify_integrity(RFC5769_REQUEST, RFC5769_PASSWORD)
    assert probe.verify_fingerprint(RFC5769_REQUEST)


def test_verify_rejects_wrong_key() -> None:
    assert not probe.verify_integrity(RFC5769_REQUEST, b"wrong password")


def test_verify_rejects_flipped_byte() -> None:
    damaged = bytearray(RFC5769_REQUEST)
    damaged[30] ^= 0x01  # inside SOFTWARE
    assert not probe.verify_integrity(bytes(damaged), RFC5769_PASSWORD)
    assert not probe.verify_fingerprint(bytes(damaged))


def test_decode_rfc5769_ipv4_response() -> None:
    message = probe.decode_message(RFC5769_IPV4_RESPONSE)
    assert message.method == probe.BINDING
    assert message.message_class == probe.SUCCESS
    assert probe.mapped_address(message) == ("192.0.2.1", 32853)
    assert probe.verify_integrity(RFC5769_IPV4_RESPONSE, RFC5769_PASSWORD)
    assert probe.verify_fingerprint(RFC5769_IPV4_RESPONSE)


def test_encode_rfc5769_ipv4_response() -> None:
    # The vector pads SOFTWARE with a space; this encoder pads with NUL, so
    # only that byte, MESSAGE-INTEGRITY and FINGERPRINT may differ.
    message = probe.StunMessage(probe.BINDING, probe.SUCCESS, RFC5769_TRANSACTION_ID)
    message.add(probe.SOFTWARE, b"test vector")
    message.add(
        probe.XOR_MAPPED_ADDRESS,
        probe.encode_xor_address("192.0.2.1", 32853, RFC5769_TRANSACTION_ID),
    )
    encoded = message.encode(key=RFC5769_PASSWORD)
    assert len(encoded) == len(RFC5769_IPV4_RESPONSE)
    assert encoded[:35] == RFC5769_IPV4_RESPONSE[:35]
    assert encoded[35] == 0
    assert encoded[36:48] == RFC5769_IPV4_RESPONSE[36:48]
    assert probe.verify_integrity(encoded, RFC5769_PASSWORD)
    assert probe.verify_fingerprint(encoded)


@pytest.mark.parametrize(
    ("method", "message_class", "message_type"),
    [
        (probe.BINDING, probe.REQUEST, 0x0001),
        (probe.BINDING, probe.SUCCESS, 0x0101),
        (probe.BINDING, probe.ERROR, 0x0111),
        (probe.ALLOCATE, probe.REQUEST, 0x0003),
        (probe.ALLOCATE, probe.SUCCESS, 0x0103),
        (probe.ALLOCATE, probe.ERROR, 0x0113),
        (probe.REFRESH, probe.REQUEST, 0x0004),
        (0x0FFF, probe.INDICATION, 0x3EFF),
    ],
)
def test_message_type_bits(method: int, message_class: int, message_type: int) -> None:
    assert probe.encode_message_type(method, message_class) == message_type
    assert probe.decode_message_type(message_type) == (method, message_class)


@pytest.mark.parametrize(
    ("address", "port", "value_hex"),
    [
        ("192.0.2.1", 32853, "0001a147e112a643"),
        ("10.99.50.1", 3478, "00012c842b719643"),
        (
            "2001:db8:1234:5678:11:2233:4455:6677", 32853,
            "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9",
        ),
    ],
)
def test_xor_address_round_trip(address: str, port: int, value_hex: str) -> None:
    value = probe.encode_xor_address(address, port, RFC5769_TRANSACTION_ID)
    assert value.hex() == value_hex
    assert probe.decode_xor_address(value, RFC5769_TRANSACTION_ID) == (address, port)


def test_transaction_ids_are_random() -> None:
    ids = {probe.StunMessage(probe.BINDING, probe.REQUEST).transaction_id
           for _ in range(50)}
    assert len(ids) == 50
    assert all(len(tid) == 12 for tid in ids)


def test_encoded_request_keeps_transaction_id() -> None:
    message = probe.StunMessage(probe.BINDING, probe.REQUEST)
    data = message.encode()
    assert data[8:20] == message.transaction_id
    assert probe.decode_message(data).transaction_id == message.transaction_id


def test_long_term_key() -> None:
    expected = hashlib.md5(b"lab:lab.test:labsecret").digest()
    assert probe.long_term_key("lab", "lab.test", "labsecret") == expected


def test_long_term_integrity_round_trip() -> None:
    key = probe.long_term_key("lab", "lab.test", "labsecret")
    message = probe.StunMessage(probe.ALLOCATE, probe.REQUEST)
    message.add(probe.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
    message.add(probe.USERNAME, b"lab")
    message.add(probe.REALM, b"lab.test")
    message.add(probe.NONCE, b"abcdef0123")
    data = message.encode(key=key)
    assert probe.verify_integrity(data, key)
    assert probe.verify_fingerprint(data)
    other = probe.long_term_key("lab", "lab.test", "other")
    assert not probe.verify_integrity(data, other)


def test_integrity_without_fingerprint() -> None:
    message = probe.StunMessage(probe.BINDING, probe.REQUEST)
    data = message.encode(key=b"k", fingerprint=False)
    assert probe.verify_integrity(data, b"k")
    assert not probe.verify_fingerprint(data)
    assert len(data) == 20 + 24


@pytest.mark.parametrize(
    ("value_hex", "expected"),
    [
        ("00000401556e617574686f72697a6564", (401, "Unauthorized")),
        ("000004265374616c65204e6f6e6365", (438, "Stale Nonce")),
        ("00000500", (500, "")),
    ],
)
def test_error_code(value_hex: str, expected: tuple[int, str]) -> None:
    message = probe.StunMessage(probe.ALLOCATE, probe.ERROR)
    message.add(probe.ERROR_CODE, bytes.fromhex(value_hex))
    decoded = probe.decode_message(message.encode())
    assert probe.error_code(decoded) == expected


@pytest.mark.parametrize(
    ("data_hex", "message"),
    [
        ("0001", "shorter than a STUN header"),
        ("000100002112a443" + "00" * 12, "invalid magic cookie"),
        ("c00100002112a442" + "00" * 12, "first two bits"),
        ("000100032112a442" + "00" * 12, "not a multiple of 4"),
        ("000100042112a442" + "00" * 12, "invalid message length 4"),
        ("000100042112a442" + "00" * 12 + "00060008", "runs past the message end"),
    ],
)
def test_decode_rejects(data_hex: str, message: str) -> None:
    with pytest.raises(probe.StunError, match=message):
        probe.decode_message(bytes.fromhex(data_hex))


@pytest.mark.parametrize(
    ("server", "transport", "expected"),
    [
        ("10.0.0.1:3479", "udp", ("10.0.0.1", 3479)),
        ("10.0.0.1", "udp", ("10.0.0.1", 3478)),
        ("10.0.0.1", "tls", ("10.0.0.1", 5349)),
        ("turn.example.org:443", "tls", ("turn.example.org", 443)),
        ("[2001:db8::1]:3478", "tcp", ("2001:db8::1", 3478)),
    ],
)
def test_split_server(server: str, transport: str, expected: tuple[str, int]) -> None:
    assert probe.split_server(server, transport) == expected


def test_split_server_rejects_bad_port() -> None:
    with pytest.raises(ValueError, match="invalid port"):
        probe.split_server("10.0.0.1:99999")


def test_probe_result_rounds_rtt() -> None:
    result = probe.ProbeResult("stun", "10.0.0.1:3478", "udp", ok=True, rtt_ms=1.23456)
    assert result.to_dict()["rtt_ms"] == 1.2


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("udp", ["udp", "tcp", "tls"]),
        ("tcp", ["tcp", "udp", "tls"]),
        ("tls", ["tls", "udp", "tcp"]),
    ],
)
def test_transport_order(configured: str, expected: list[str]) -> None:
    assert probe.transport_order(configured) == expected


@pytest.mark.parametrize(
    ("server", "configured", "transport", "expected"),
    [
        ("10.0.0.1:3479", "udp", "udp", "10.0.0.1:3479"),
        ("10.0.0.1:3479", "udp", "tcp", "10.0.0.1:3479"),
        ("10.0.0.1:3479", "udp", "tls", "10.0.0.1:5349"),
        ("10.0.0.1:443", "tls", "tls", "10.0.0.1:443"),
        ("10.0.0.1:443", "tls", "udp", "10.0.0.1:3478"),
        ("[2001:db8::1]:3478", "tcp", "tls", "[2001:db8::1]:5349"),
    ],
)
def test_server_for_transport(server: str, configured: str, transport: str,
                              expected: str) -> None:
    assert probe.server_for_transport(server, configured, transport) == expected
