"""STUN Binding and TURN Allocate probes over UDP, TCP and TLS.

Standard library only, so the edge and the `b2bua check` command can use it
without pjsua2. Message encoding follows RFC 5389 (STUN) and RFC 5766
(TURN): a 20-byte header with the magic cookie, attributes padded to 4 bytes,
MESSAGE-INTEGRITY as HMAC-SHA1 with the long-term key MD5(user:realm:pass),
and FINGERPRINT as CRC-32 XOR 0x5354554E.

A TURN probe first sends an Allocate without credentials and expects
401 with REALM and NONCE, which proves that a TURN server responds without
using any credentials. With credentials it then completes the allocation and
releases it at once with a Refresh of lifetime 0.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Self

log = logging.getLogger(__name__)

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_TRIES = 2

# Methods (RFC 5389 section 18.1, RFC 5766 section 13).
BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004

# Classes, already placed in the C1/C0 bits of the message type.
REQUEST = 0x000
INDICATION = 0x010
SUCCESS = 0x100
ERROR = 0x110

# Attributes (RFC 5389 section 18.2, RFC 5766 section 14).
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
LIFETIME = 0x000D
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028

FINGERPRINT_XOR = 0x5354554E
# IANA protocol number of UDP, the only relay transport RFC 5766 defines.
PROTOCOL_UDP = 17
SOFTWARE_NAME = b"b2bua-probe"


class StunError(ValueError):
    """Bytes that are not a well-formed STUN message."""


# --- messages -----------------------------------------------------------------


@dataclass
class StunMessage:
    """A STUN message: method, class, 12-byte transaction id and attributes.

    Attributes stay in wire order as (type, value) pairs, values unpadded.
    """

    method: int
    message_class: int
    transaction_id: bytes = field(default_factory=lambda: os.urandom(12))
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def message_type(self) -> int:
        return encode_message_type(self.method, self.message_class)

    def add(self, attribute_type: int, value: bytes) -> None:
        self.attributes.append((attribute_type, value))

    def get(self, attribute_type: int) -> bytes | None:
        """Return the value of the first attribute of that type, or None."""
        for kind, value in self.attributes:
            if kind == attribute_type:
                return value
        return None

    def encode(self, key: bytes | None = None, fingerprint: bool = True) -> bytes:
        """Serialise the message, appending MESSAGE-INTEGRITY when a key is given.

        MESSAGE-INTEGRITY and FINGERPRINT already in `attributes` are dropped
        and recomputed, because they depend on everything before them.
        """
        if len(self.transaction_id) != 12:
            raise StunError("a transaction id is 12 bytes")
        body = b"".join(
            _encode_attribute(kind, value)
            for kind, value in self.attributes
            if kind not in (MESSAGE_INTEGRITY, FINGERPRINT)
        )
        if key is not None:
            # The HMAC covers the header with a length that already counts
            # the MESSAGE-INTEGRITY attribute (24 bytes) itself.
            header = self._header(len(body) + 24)
            digest = hmac.new(key, header + body, hashlib.sha1).digest()
            body += _encode_attribute(MESSAGE_INTEGRITY, digest)
        if fingerprint:
            header = self._header(len(body) + 8)
            crc = zlib.crc32(header + body) ^ FINGERPRINT_XOR
            body += _encode_attribute(FINGERPRINT, struct.pack("!I", crc))
        return self._header(len(body)) + body

    def _header(self, length: int) -> bytes:
        return struct.pack("!HHI", self.message_type, length, MAGIC_COOKIE) + (
            self.transaction_id
        )


def encode_message_type(method: int, message_class: int) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 5389 fig. 3)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | (message_class & 0x0110)
    )


def decode_message_type(message_type: int) -> tuple[int, int]:
    """Split a message type into (method, class)."""
    method = (
        (message_type & 0x000F)
        | ((message_type & 0x00E0) >> 1)
        | ((message_type & 0x3E00) >> 2)
    )
    return method, message_type & 0x0110


def _encode_attribute(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + padding


def decode_message(data: bytes) -> StunMessage:
    """Parse one STUN message; raise StunError when the bytes are not one."""
    if len(data) < HEADER_LENGTH:
        raise StunError(f"{len(data)} bytes is shorter than a STUN header")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000:
        raise StunError("the first two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"invalid magic cookie 0x{cookie:08x}")
    if length % 4:
        raise StunError(f"message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != len(data):
        raise StunError(
            f"invalid message length {length}: {len(data) - 20} attribute bytes follow"
        )
    method, message_class = decode_message_type(message_type)
    message = StunMessage(method, message_class, data[8:20], [])
    offset = HEADER_LENGTH
    while offset < len(data):
        if offset + 4 > len(data):
            raise StunError("truncated attribute header")
        kind, size = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        if start + size > len(data):
            raise StunError(f"attribute 0x{kind:04x} runs past the message end")
        message.add(kind, data[start:start + size])
        offset = start + size + (-size % 4)
    return message


def message_length(header: bytes) -> int:
    """Return the full length of the message whose first 20 bytes are given."""
    (length,) = struct.unpack_from("!H", header, 2)
    return HEADER_LENGTH + length


def _attribute_offset(data: bytes, wanted: int) -> int | None:
    """Return the byte offset of the first attribute of type `wanted`."""
    offset = HEADER_LENGTH
    while offset + 4 <= len(data):
        kind, size = struct.unpack_from("!HH", data, offset)
        if kind == wanted:
            return offset
        offset += 4 + size + (-size % 4)
    return None


def verify_integrity(data: bytes, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY of raw message bytes with `key`."""
    offset = _attribute_offset(data, MESSAGE_INTEGRITY)
    if offset is None or offset + 24 > len(data):
        return False
    # The HMAC input ends before the attribute, and its header length stops
    # right after MESSAGE-INTEGRITY, as if FINGERPRINT were not there.
    header = data[:2] + struct.pack("!H", offset + 24 - HEADER_LENGTH) + data[4:20]
    digest = hmac.new(key, header + data[20:offset], hashlib.sha1).digest()
    return hmac.compare_digest(digest, data[offset + 4:offset + 24])


def verify_fingerprint(data: bytes) -> bool:
    """Check that the last attribute is a FINGERPRINT matching the bytes before."""
    if len(data) < HEADER_LENGTH + 8:
        return False
    kind, size = struct.unpack_from("!HH", data, len(data) - 8)
    if kind != FINGERPRINT or size != 4:
        return False
    (value,) = struct.unpack_from("!I", data, len(data) - 4)
    return value == zlib.crc32(data[:-8]) ^ FINGERPRINT_XOR


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Return the long-term credential key MD5(username:realm:password).

    NOTE: the password is used as UTF-8 without SASLprep, which matches
    every ASCII password.
    """
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


def encode_xor_address(address: str, port: int, transaction_id: bytes) -> bytes:
    """Encode an XOR-MAPPED-ADDRESS style value (also XOR-RELAYED-ADDRESS)."""
    ip = ipaddress.ip_address(address)
    xport = port ^ (MAGIC_COOKIE >> 16)
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
    raw = ip.packed
    xored = bytes(a ^ b for a, b in zip(raw, mask))
    family = 1 if ip.version == 4 else 2
    return struct.pack("!BBH", 0, family, xport) + xored


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """Decode an XOR-MAPPED-ADDRESS style value into (address, port)."""
    if len(value) < 8:
        raise StunError("XOR address attribute shorter than 8 bytes")
    _, family, xport = struct.unpack_from("!BBH", value)
    size = {1: 4, 2: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise StunError(f"invalid address family {family} or length {len(value)}")
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
    raw = bytes(a ^ b for a, b in zip(value[4:], mask))
    return str(ipaddress.ip_address(raw)), xport ^ (MAGIC_COOKIE >> 16)


def decode_plain_address(value: bytes) -> tuple[str, int]:
    """Decode a MAPPED-ADDRESS value into (address, port)."""
    if len(value) not in (8, 20):
        raise StunError(f"MAPPED-ADDRESS of {len(value)} bytes")
    _, _family, port = struct.unpack_from("!BBH", value)
    return str(ipaddress.ip_address(value[4:])), port


def error_code(message: StunMessage) -> tuple[int, str] | None:
    """Return (code, reason) of an ERROR-CODE attribute, or None."""
    value = message.get(ERROR_CODE)
    if value is None or len(value) < 4:
        return None
    code = (value[2] & 0x07) * 100 + value[3]
    return code, value[4:].decode("utf-8", "replace")


def mapped_address(message: StunMessage) -> tuple[str, int] | None:
    """Return the reflexive address of a Binding response, or None."""
    value = message.get(XOR_MAPPED_ADDRESS)
    if value is not None:
        return decode_xor_address(value, message.transaction_id)
    value = message.get(MAPPED_ADDRESS)
    if value is not None:
        return decode_plain_address(value)
    return None


# --- transports ---------------------------------------------------------------


class ProbeFailure(Exception):
    """A probe step that failed, with the text shown to the operator."""


def split_server(server: str, transport: str = "udp") -> tuple[str, int]:
    """Split "host:port", "host" or "[v6]:port" into (host, port)."""
    default_port = 5349 if transport == "tls" else 3478
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif server.count(":") == 1:
        host, port_text = server.split(":")
    else:
        host, port_text = server, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in {server!r}")
    return host, int(port_text)


class Channel:
    """One socket to a STUN/TURN server that carries request/response pairs.

    A TURN allocation belongs to its 5-tuple (and, over TCP, to the
    connection), so every request of one probe goes through one channel.
    """

    def __init__(self, host: str, port: int, transport: str, timeout: float,
                 tls_verify: bool = True) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"invalid transport {transport!r}; allowed: udp, tcp, tls")
        self.host = host
        self.port = port
        self.transport = transport
        self.timeout = timeout
        self.tls_verify = tls_verify
        self.sock: socket.socket | None = None

    def open(self) -> None:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=kind)
        except socket.gaierror as error:
            raise ProbeFailure(f"cannot resolve {self.host}: {error}") from None
        family, _, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
            if self.transport == "tls":
                sock = self._wrap_tls(sock)
        except BaseException as error:
            sock.close()
            if isinstance(error, OSError):
                raise ProbeFailure(describe_os_error(error)) from None
            raise
        self.sock = sock

    def _wrap_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        context = ssl.create_default_context()
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            ipaddress.ip_address(self.host)
            server_name = None
        except ValueError:
            server_name = self.host
        return context.wrap_socket(sock, server_hostname=server_name)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def transact(self, request: StunMessage, data: bytes,
                 tries: int) -> tuple[StunMessage, bytes, float]:
        """Send a request until its response arrives; return it with the RTT in ms.

        UDP retransmits the same bytes up to `tries` times. A stream waits the
        whole budget once, because TCP already retransmits.
        """
        assert self.sock is not None
        attempts = tries if self.transport == "udp" else 1
        budget = self.timeout if self.transport == "udp" else self.timeout * tries
        for _ in range(max(1, attempts)):
            started = time.monotonic()
            try:
                self.sock.sendall(data)
                raw = self._receive(request.transaction_id, started + budget)
            except TimeoutError:
                continue
            except OSError as error:
                raise ProbeFailure(describe_os_error(error)) from None
            rtt = (time.monotonic() - started) * 1000.0
            return decode_message(raw), raw, rtt
        raise ProbeFailure("timed out")

    def _receive(self, transaction_id: bytes, deadline: float) -> bytes:
        """Read until a message with this transaction id arrives or time runs out."""
        assert self.sock is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            if self.transport == "udp":
                raw = self.sock.recv(2048)
            else:
                header = self._read_exact(HEADER_LENGTH)
                raw = header + self._read_exact(message_length(header) - HEADER_LENGTH)
            # Responses to earlier retransmissions and non-STUN bytes are skipped.
            if len(raw) >= HEADER_LENGTH and raw[8:20] == transaction_id:
                return raw

    def _read_exact(self, size: int) -> bytes:
        assert self.sock is not None
        chunks = b""
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionResetError("connection closed by the server")
            chunks += chunk
        return chunks


def describe_os_error(error: OSError) -> str:
    """Turn a socket error into the short text an operator reads."""
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, PermissionError):
        # Linux returns EPERM when a local firewall rule drops the packet.
        return "sending blocked by a local firewall rule (EPERM)"
    return error.strerror or str(error)


# --- probes -------------------------------------------------------------------


@dataclass
class ProbeResult:
    """The outcome of one probe of one server over one transport."""

    kind: str  # "stun" or "turn"
    server: str
    transport: str
    ok: bool
    rtt_ms: float | None = None
    error: str = ""
    mapped_address: str | None = None
    relayed_address: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.rtt_ms is not None:
            data["rtt_ms"] = round(self.rtt_ms, 1)
        return data


def probe_stun(server: str, transport: str = "udp", *,
               timeout: float = DEFAULT_TIMEOUT_S, tries: int = DEFAULT_TRIES,
               tls_verify: bool = True) -> ProbeResult:
    """Send a STUN Binding request and report the mapped address and RTT."""
    result = ProbeResult("stun", server, transport, ok=False)
    try:
        host, port = split_server(server, transport)
        with Channel(host, port, transport, timeout, tls_verify) as channel:
            request = StunMessage(BINDING, REQUEST)
            request.add(SOFTWARE, SOFTWARE_NAME)
            response, _, rtt = channel.transact(request, request.encode(), tries)
        result.rtt_ms = rtt
        if response.message_class != SUCCESS:
            code = error_code(response)
            raise ProbeFailure(f"error response {code[0] if code else '?'}")
        address = mapped_address(response)
        if address is not None:
            result.mapped_address = _format_address(*address)
        result.ok = True
    except (ProbeFailure, StunError, ValueError) as error:
        result.error = str(error)
    log.debug("STUN probe %s over %s: %s", server, transport, result)
    return result


def probe_turn(server: str, transport: str = "udp", *,
               username: str = "", password: str = "",
               timeout: float = DEFAULT_TIMEOUT_S, tries: int = DEFAULT_TRIES,
               tls_verify: bool = True) -> ProbeResult:
    """Probe a TURN server with an Allocate request.

    Without credentials the probe succeeds on a 401 that carries REALM and
    NONCE. With them it completes the allocation, reports the relayed
    address, and releases the allocation with a Refresh of lifetime 0.
    """
    result = ProbeResult("turn", server, transport, ok=False)
    try:
        host, port = split_server(server, transport)
        with Channel(host, port, transport, timeout, tls_verify) as channel:
            _allocate(channel, result, username, password, tries)
    except (ProbeFailure, StunError, ValueError) as error:
        result.error = str(error)
    log.debug("TURN probe %s over %s: ok=%s rtt=%s error=%s", server, transport,
              result.ok, result.rtt_ms, result.error)
    return result


def _allocate_request(transaction_id: bytes | None = None) -> StunMessage:
    request = StunMessage(ALLOCATE, REQUEST)
    if transaction_id is not None:
        request.transaction_id = transaction_id
    request.add(REQUESTED_TRANSPORT, bytes([PROTOCOL_UDP, 0, 0, 0]))
    request.add(SOFTWARE, SOFTWARE_NAME)
    return request


def _allocate(channel: Channel, result: ProbeResult, username: str,
              password: str, tries: int) -> None:
    request = _allocate_request()
    response, _, rtt = channel.transact(request, request.encode(), tries)
    result.rtt_ms = rtt
    if response.message_class == SUCCESS:
        # The server requires no authentication, so the allocation exists now.
        result.detail = "allocated without authentication"
        _read_relayed(response, result)
        _release(channel, None, tries)
        result.ok = True
        return
    code = error_code(response)
    realm = response.get(REALM)
    nonce = response.get(NONCE)
    if code is None or code[0] != 401 or realm is None or nonce is None:
        described = f"{code[0]} {code[1]}" if code else "no ERROR-CODE"
        raise ProbeFailure(f"unexpected Allocate response: {described}")
    realm_text = realm.decode("utf-8", "replace")
    result.detail = f"401 with realm {realm_text!r}"
    if not username:
        result.ok = True
        return
    key = long_term_key(username, realm_text, password)
    for _ in range(2):
        request = _allocate_request()
        _add_credentials(request, username, realm, nonce)
        response, raw, rtt = channel.transact(request, request.encode(key), tries)
        result.rtt_ms = rtt
        code = error_code(response)
        # 438 Stale Nonce carries a new nonce, so the request is retried once.
        if code is not None and code[0] == 438 and response.get(NONCE):
            nonce = response.get(NONCE) or nonce
            continue
        break
    if response.message_class != SUCCESS:
        described = f"{code[0]} {code[1]}".strip() if code else "no ERROR-CODE"
        if code is not None and code[0] == 401:
            raise ProbeFailure("credentials rejected (401)")
        raise ProbeFailure(f"authenticated Allocate failed: {described}")
    if not verify_integrity(raw, key):
        raise ProbeFailure("Allocate response failed MESSAGE-INTEGRITY check")
    _read_relayed(response, result)
    result.detail = "allocated and released"
    _release(channel, (key, username, realm, nonce), tries)
    result.ok = True


def _add_credentials(request: StunMessage, username: str, realm: bytes,
                     nonce: bytes) -> None:
    request.add(USERNAME, username.encode())
    request.add(REALM, realm)
    request.add(NONCE, nonce)


def _read_relayed(response: StunMessage, result: ProbeResult) -> None:
    relayed = response.get(XOR_RELAYED_ADDRESS)
    if relayed is not None:
        result.relayed_address = _format_address(
            *decode_xor_address(relayed, response.transaction_id)
        )
    mapped = mapped_address(response)
    if mapped is not None:
        result.mapped_address = _format_address(*mapped)


def _release(channel: Channel, credentials: tuple[bytes, str, bytes, bytes] | None,
             tries: int) -> None:
    """Delete the allocation with a Refresh of lifetime 0 (RFC 5766 7.1)."""
    request = StunMessage(REFRESH, REQUEST)
    request.add(LIFETIME, struct.pack("!I", 0))
    key = None
    if credentials is not None:
        key, username, realm, nonce = credentials
        _add_credentials(request, username, realm, nonce)
    try:
        response, _, _ = channel.transact(request, request.encode(key), tries)
    except ProbeFailure as error:
        # The server frees the allocation when its lifetime ends anyway.
        log.warning("TURN %s:%d: releasing the probe allocation failed: %s",
                    channel.host, channel.port, error)
        return
    if response.message_class != SUCCESS:
        log.warning("TURN %s:%d: Refresh with lifetime 0 failed with %s",
                    channel.host, channel.port, error_code(response))


def _format_address(address: str, port: int) -> str:
    if ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


# --- transport choice ---------------------------------------------------------


def server_for_transport(server: str, configured: str, transport: str) -> str:
    """Return the "host:port" to probe a configured server over `transport`.

    The configured port belongs to the configured transport. Other transports
    use the standard ports: 3478 for UDP and TCP, 5349 for TLS.
    """
    host, port = split_server(server, configured)
    if transport != configured and (transport == "tls" or configured == "tls"):
        port = 5349 if transport == "tls" else 3478
    return _format_address(host, port)


def transport_order(configured: str) -> list[str]:
    """List the transports to try: the configured one, then UDP, TCP, TLS."""
    return [configured] + [t for t in TRANSPORTS if t != configured]


def select_turn_transport(server: str, configured: str, *,
                          timeout: float = DEFAULT_TIMEOUT_S,
                          tries: int = DEFAULT_TRIES,
                          tls_verify: bool = True,
                          ) -> tuple[str | None, list[ProbeResult]]:
    """Return the first transport over which the TURN server responds to Allocate.

    Uses the unauthenticated probe, so no credentials are spent. Returns
    (None, results) when no transport works.
    """
    results = []
    for transport in transport_order(configured):
        target = server_for_transport(server, configured, transport)
        result = probe_turn(target, transport, timeout=timeout, tries=tries,
                            tls_verify=tls_verify)
        results.append(result)
        if result.ok:
            return transport, results
    return None, results


class TurnTransportMonitor:
    """The TURN transport a worker should use, re-probed in a background thread.

    Only `probe_now`'s thread touches sockets. The owner calls the other
    methods from its own thread (the pjsua event loop), takes a change with
    `take_change`, applies it and confirms it with `applied`.
    """

    def __init__(self, server: str, configured: str, *, tls_verify: bool = True,
                 interval: float = 60.0, timeout: float = DEFAULT_TIMEOUT_S,
                 tries: int = DEFAULT_TRIES) -> None:
        self.server = server
        self.configured = configured
        self.current = configured
        self.tls_verify = tls_verify
        self.interval = interval
        self.timeout = timeout
        self.tries = tries
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._selected: str | None = None
        self._errors: dict[str, str] = {}
        self._last_started = float("-inf")
        self._all_failed_logged = False

    def server_for(self, transport: str) -> str:
        """Return the "host:port" of this server for `transport`."""
        return server_for_transport(self.server, self.configured, transport)

    def probe_now(self) -> None:
        """Start a probe thread unless one is running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._last_started = time.monotonic()
            self._thread = threading.Thread(
                target=self._probe, name="turn-probe", daemon=True
            )
            self._thread.start()

    def probe_if_due(self, now: float) -> None:
        if now - self._last_started >= self.interval:
            self.probe_now()

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a running probe to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _probe(self) -> None:
        selected, results = select_turn_transport(
            self.server, self.configured, timeout=self.timeout, tries=self.tries,
            tls_verify=self.tls_verify,
        )
        with self._lock:
            self._errors = {r.transport: r.error for r in results if not r.ok}
            self._selected = selected
        if selected is None:
            if not self._all_failed_logged:
                log.warning("TURN server %s: no transport works (%s); keeping %s",
                            self.server, self._describe_errors(), self.current.upper())
            self._all_failed_logged = True
        else:
            self._all_failed_logged = False

    def take_change(self) -> str | None:
        """Return a transport that differs from `current`, or None."""
        with self._lock:
            selected = self._selected
        if selected is None or selected == self.current:
            return None
        return selected

    def discard_change(self) -> None:
        """Forget the probed transport until the next probe selects one again."""
        with self._lock:
            self._selected = None

    def applied(self, transport: str) -> None:
        """Record that the accounts now use `transport`, and log the switch."""
        previous, self.current = self.current, transport
        if transport == self.configured:
            log.info("TURN server %s: %s works again, using it",
                     self.server, transport.upper())
            return
        with self._lock:
            error = self._errors.get(previous) or "no response"
        blocked = "blocked" if "timed out" in error or "EPERM" in error else "failed"
        log.info("TURN server %s: %s %s, using %s. The %s probe failed: %s",
                 self.server, previous.upper(), blocked, transport.upper(),
                 previous.upper(), error)

    def _describe_errors(self) -> str:
        with self._lock:
            errors = dict(self._errors)
        return ", ".join(f"{name.upper()} {text}" for name, text in errors.items())
