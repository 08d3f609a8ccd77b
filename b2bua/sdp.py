"""Parse and serialize SDP, including the Lync / Skype for Business dialect.

Standard library only, because the Kamailio edge (Debian's embedded Python)
imports this module as well as the workers. Every line is kept verbatim with
its own line end, so a description that no rule changed serializes byte for
byte as it arrived. Typed attributes (rtpmap, candidate, crypto, rtcp) are
parsed on access. An attribute line that does not parse is skipped by the
accessors and listed by `invalid_lines()`. Structural damage (no `v=`, a bad
`m=` line, sizes beyond the limits below) raises `SdpError`.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

# Limits against hostile input. The Skype for Business audio and video offer
# in tests/data/samples is 3.4 KB, 75 lines and 14 candidates per m-line, so
# these leave several times that headroom.
MAX_SDP_BYTES = 32 * 1024
MAX_LINES = 1000
MAX_LINE_LENGTH = 2048
MAX_MEDIA_SECTIONS = 16
MAX_CANDIDATES_PER_MEDIA = 40

ICE_RFC5245 = "rfc5245"
"""Candidate syntax of RFC 5245 and MS-ICE2, which Lync calls ICE v19."""
ICE_V6 = "ice-v6"
"""Legacy Lync candidate syntax from an early ICE draft: ufrag and pwd inline."""

ICE_TRANSPORTS = frozenset({"UDP", "TCP", "TCP-ACT", "TCP-PASS", "TCP-SO"})
BFCP_PROTOS = frozenset({"UDP/BFCP", "TCP/BFCP", "TCP/TLS/BFCP", "UDP/TLS/BFCP"})
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

_LINE_END = re.compile(r"\r\n|\n|\r")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PAYLOAD_TYPE = re.compile(r"^\d{1,3}$")
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]{1,256}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
_RTPMAP = re.compile(r"^(\d{1,3}) ([^/\s]+)/(\d{1,6})(?:/(\d{1,2}))?\s*$")
_CRYPTO = re.compile(r"^(\d{1,9}) ([A-Za-z0-9_]+) (\S+)(?: (.*))?$")
_KEY = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_LIFETIME = re.compile(r"^(?:2\^\d{1,2}|\d{1,20})$")
_MKI = re.compile(r"^(\d{1,10}):(\d{1,3})$")


class SdpError(ValueError):
    """An SDP that cannot be used, with the SIP status to answer it with.

    `reason` is one line, safe to log and to put in a Warning header: it
    never contains key material.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def warning(self, agent: str) -> str:
        """Return a Warning header value (RFC 3261 code 399) naming `agent`."""
        text = self.reason.replace("\\", "\\\\").replace('"', '\\"')
        return f'399 {agent} "{text}"'


@dataclass
class SdpLine:
    """One SDP line as received: its text without the line end, and the end."""

    text: str
    eol: str = "\r\n"

    @property
    def kind(self) -> str:
        """The type letter (`v`, `m`, `a`, ...), or '' for a blank line."""
        return self.text[0] if len(self.text) >= 2 and self.text[1] == "=" else ""

    @property
    def value(self) -> str:
        return self.text[2:]

    @property
    def attribute_name(self) -> str | None:
        """The name of an `a=` line, lower case, or None for other lines."""
        if self.kind != "a":
            return None
        return self.value.partition(":")[0].lower()

    @property
    def attribute_value(self) -> str:
        """The text after the first colon of an `a=` line ('' for a flag)."""
        return self.value.partition(":")[2]


@dataclass(frozen=True)
class MediaLine:
    """The fields of an `m=` line."""

    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]

    def render(self) -> str:
        port = str(self.port)
        if self.port_count is not None:
            port = f"{port}/{self.port_count}"
        return " ".join(["m=" + self.media, port, self.proto, *self.formats])


@dataclass(frozen=True)
class Origin:
    """The fields of the `o=` line."""

    username: str
    session_id: str
    version: str
    nettype: str
    addrtype: str
    address: str

    def render(self) -> str:
        return "o=" + " ".join(
            [self.username, self.session_id, self.version, self.nettype,
             self.addrtype, self.address]
        )


@dataclass(frozen=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate in either candidate dialect.

    For `ICE_V6` candidates `foundation` is the inline username fragment,
    `password` the inline password, `qvalue` the preference, and `priority`
    and `type` are None.
    """

    dialect: str
    foundation: str
    component: int
    transport: str
    priority: int | None
    address: str
    port: int
    type: str | None = None
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()
    qvalue: float | None = None
    password: str | None = field(default=None, repr=False)
    ipv6_attribute: bool = False

    @property
    def is_udp(self) -> bool:
        return self.transport == "UDP"


@dataclass(frozen=True)
class Crypto:
    """One SDES `a=crypto` line (RFC 4568), first key parameter only."""

    tag: int
    suite: str
    key: str = field(repr=False)
    lifetime: str | None
    mki: tuple[int, int] | None
    session_params: tuple[str, ...]

    @property
    def has_mki(self) -> bool:
        return self.mki is not None


@dataclass(frozen=True)
class Rtcp:
    port: int
    address: str | None


class MediaSection:
    """One `m=` line and the lines after it up to the next `m=` line."""

    def __init__(self, lines: list[SdpLine]) -> None:
        self.lines = lines
        self._m = parse_media_line(lines[0].value)

    @property
    def media(self) -> str:
        return self._m.media

    @property
    def port(self) -> int:
        return self._m.port

    @property
    def port_count(self) -> int | None:
        return self._m.port_count

    @property
    def proto(self) -> str:
        return self._m.proto

    @property
    def formats(self) -> tuple[str, ...]:
        return self._m.formats

    @property
    def is_rejected(self) -> bool:
        """True for a port 0 line, whatever its proto: a rejected stream."""
        return self._m.port == 0

    @property
    def is_rtp(self) -> bool:
        return "RTP" in self._m.proto.upper().split("/")

    @property
    def is_bfcp(self) -> bool:
        return self._m.proto.upper() in BFCP_PROTOS

    def set_media_line(self, **changes: Any) -> None:
        """Rewrite the `m=` line with some fields replaced (keeps its line end)."""
        new = replace(self._m, **changes)
        self.lines[0] = SdpLine(new.render(), self.lines[0].eol)
        self._m = new

    def attributes(self, name: str | None = None) -> list[SdpLine]:
        """Return the `a=` lines of this section, all or those named `name`."""
        wanted = name.lower() if name else None
        return [
            line for line in self.lines[1:]
            if line.kind == "a" and (wanted is None or line.attribute_name == wanted)
        ]

    def attribute(self, name: str) -> str | None:
        """Return the value of the first `a=name` line, or None."""
        found = self.attributes(name)
        return found[0].attribute_value if found else None

    def has_attribute(self, name: str) -> bool:
        return bool(self.attributes(name))

    def remove_lines(self, predicate: Callable[[SdpLine], bool]) -> int:
        """Remove the lines after `m=` that match and return their count."""
        kept = [self.lines[0]] + [ln for ln in self.lines[1:] if not predicate(ln)]
        removed = len(self.lines) - len(kept)
        self.lines = kept
        return removed

    def connection_address(self) -> str | None:
        for line in self.lines[1:]:
            if line.kind == "c":
                return _connection_address(line.value)
        return None

    def direction(self) -> str | None:
        """Return the media-level direction attribute, or None if absent."""
        for line in self.attributes():
            if line.attribute_name in DIRECTIONS:
                return line.attribute_name
        return None

    def rtpmaps(self) -> list[RtpMap]:
        return _parsed(self.attributes("rtpmap"), "rtpmap")

    def encoding_of(self, payload_type: str) -> str | None:
        """Return the upper-case encoding name of a format, static ones included."""
        for rtpmap in self.rtpmaps():
            if str(rtpmap.payload_type) == payload_type:
                return rtpmap.encoding.upper()
        return STATIC_PAYLOAD_TYPES.get(payload_type)

    def candidates(self) -> list[Candidate]:
        """Return the `a=candidate` and `a=x-candidate-ipv6` lines that parse."""
        lines = [
            line for line in self.attributes()
            if line.attribute_name in ("candidate", "x-candidate-ipv6")
        ]
        return _parsed(lines, "candidate")

    def crypto(self) -> list[Crypto]:
        """Return the `a=crypto` lines that parse (never `a=cryptoscale`)."""
        return _parsed(self.attributes("crypto"), "crypto")

    def rtcp(self) -> Rtcp | None:
        found = _parsed(self.attributes("rtcp"), "rtcp")
        return found[0] if found else None


class SessionDescription:
    """A parsed SDP: session-level lines, then the media sections in order."""

    def __init__(self, session: list[SdpLine], media: list[MediaSection]) -> None:
        self.session = session
        self.media = media

    @property
    def eol(self) -> str:
        """The line end of the first line, used for lines a rule adds."""
        return self.session[0].eol or "\r\n"

    def lines(self) -> Iterator[SdpLine]:
        yield from self.session
        for section in self.media:
            yield from section.lines

    def to_text(self) -> str:
        lines = list(self.lines())
        parts = []
        for index, line in enumerate(lines):
            # A rule may have moved the unterminated last line into the middle.
            eol = line.eol or ("" if index == len(lines) - 1 else self.eol)
            parts.append(line.text + eol)
        return "".join(parts)

    def to_bytes(self) -> bytes:
        return self.to_text().encode("utf-8", "surrogateescape")

    def copy(self) -> SessionDescription:
        return copy.deepcopy(self)

    def _session_line(self, kind: str) -> SdpLine | None:
        for line in self.session:
            if line.kind == kind:
                return line
        return None

    @property
    def origin(self) -> Origin:
        line = self._session_line("o")
        assert line is not None  # parse_sdp requires an o= line
        return parse_origin(line.value)

    def set_origin(self, origin: Origin) -> None:
        for index, line in enumerate(self.session):
            if line.kind == "o":
                self.session[index] = SdpLine(origin.render(), line.eol)

    @property
    def session_name(self) -> str | None:
        line = self._session_line("s")
        return line.value if line else None

    def connection_address(self) -> str | None:
        line = self._session_line("c")
        return _connection_address(line.value) if line else None

    def attributes(self, name: str | None = None) -> list[SdpLine]:
        """Return the session-level `a=` lines, all or those named `name`."""
        wanted = name.lower() if name else None
        return [
            line for line in self.session
            if line.kind == "a" and (wanted is None or line.attribute_name == wanted)
        ]

    def direction(self, section: MediaSection) -> str:
        """Return the direction of a section, session-level default applied."""
        found = section.direction()
        if found:
            return found
        for line in self.attributes():
            if line.attribute_name in DIRECTIONS:
                return line.attribute_name or "sendrecv"
        return "sendrecv"

    def media_address(self, section: MediaSection) -> str | None:
        return section.connection_address() or self.connection_address()


# Static RTP payload types (RFC 3551) that offers often list without rtpmap.
STATIC_PAYLOAD_TYPES = {
    "0": "PCMU", "3": "GSM", "4": "G723", "8": "PCMA", "9": "G722",
    "13": "CN", "15": "G728", "18": "G729", "34": "H263",
}


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body, raising SdpError (status 400) if it cannot be used."""
    if isinstance(data, bytes):
        if len(data) > MAX_SDP_BYTES:
            raise SdpError(f"SDP is {len(data)} bytes, max {MAX_SDP_BYTES}")
        text = data.decode("utf-8", "surrogateescape")
    else:
        text = data
        if len(text) > MAX_SDP_BYTES:
            raise SdpError(f"SDP is {len(text)} characters, max {MAX_SDP_BYTES}")
    lines = _split_lines(text)
    while lines and not lines[0].text.strip():
        lines.pop(0)
    if not lines or lines[0].text.strip() != "v=0":
        raise SdpError("SDP does not start with v=0")

    session: list[SdpLine] = []
    sections: list[list[tuple[int, SdpLine]]] = []
    for number, line in enumerate(lines, start=1):
        _check_line(number, line)
        if line.kind == "m":
            if len(sections) == MAX_MEDIA_SECTIONS:
                raise SdpError(f"more than {MAX_MEDIA_SECTIONS} m= lines")
            sections.append([])
        if sections:
            sections[-1].append((number, line))
        else:
            session.append(line)

    kinds = {line.kind for line in session}
    for required in ("o", "t"):
        if required not in kinds:
            raise SdpError(f"SDP has no {required}= line")
    o_line = next(line for line in session if line.kind == "o")
    parse_origin(o_line.value)
    return SessionDescription(session, [_build_section(s) for s in sections])


def _split_lines(text: str) -> list[SdpLine]:
    lines: list[SdpLine] = []
    position = 0
    for match in _LINE_END.finditer(text):
        lines.append(SdpLine(text[position:match.start()], match.group()))
        position = match.end()
        if len(lines) > MAX_LINES:
            raise SdpError(f"SDP has more than {MAX_LINES} lines")
    if position < len(text):
        lines.append(SdpLine(text[position:], ""))
    return lines


def _check_line(number: int, line: SdpLine) -> None:
    if len(line.text) > MAX_LINE_LENGTH:
        raise SdpError(f"line {number} is longer than {MAX_LINE_LENGTH} characters")
    if not line.text.strip():
        return
    if not line.kind or not line.text[0].isalpha():
        raise SdpError(f"line {number} is not '<type>=<value>': {_shown(line.text)}")
    # A bad attribute name makes only that line invalid (see invalid_lines).
    # Control characters anywhere else leave no safe way to read the SDP.
    if line.kind != "a" and _CONTROL.search(line.text):
        raise SdpError(f"line {number} contains a control character")


def _build_section(numbered: list[tuple[int, SdpLine]]) -> MediaSection:
    number, m_line = numbered[0]
    try:
        section = MediaSection([line for _, line in numbered])
    except SdpError as error:
        raise SdpError(f"line {number}: {error.reason}") from None
    candidates = sum(
        1 for line in section.attributes()
        if line.attribute_name in ("candidate", "x-candidate-ipv6")
    )
    if candidates > MAX_CANDIDATES_PER_MEDIA:
        raise SdpError(
            f"m={section.media} (line {number}) has {candidates} candidate lines, "
            f"max {MAX_CANDIDATES_PER_MEDIA}"
        )
    return section


def parse_media_line(value: str) -> MediaLine:
    """Parse the value of an `m=` line. RTP formats must be payload types 0-127."""
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(
            f"m= line needs media, port, proto and formats: {_shown(value)}"
        )
    media, port_text, proto, *formats = parts
    if not _TOKEN.match(media) or not _TOKEN.match(proto.replace("/", "")):
        raise SdpError(f"invalid media or proto in m= line: {_shown(value)}")
    port_part, _, count_part = port_text.partition("/")
    port = _parse_int(port_part, 0, 65535, "port")
    count = _parse_int(count_part, 1, 65535, "port count") if count_part else None
    if "RTP" in proto.upper().split("/"):
        for fmt in formats:
            if not _PAYLOAD_TYPE.match(fmt) or int(fmt) > 127:
                raise SdpError(f"invalid RTP payload type {_shown(fmt)} in m= line")
    return MediaLine(media, port, count, proto, tuple(formats))


def parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"o= line needs 6 fields: {_shown(value)}")
    return Origin(*parts)


def parse_rtpmap(value: str) -> RtpMap:
    match = _RTPMAP.match(value)
    if not match or int(match.group(1)) > 127:
        raise SdpError(f"invalid rtpmap {_shown(value)}")
    channels = int(match.group(4)) if match.group(4) else None
    return RtpMap(int(match.group(1)), match.group(2), int(match.group(3)), channels)


def parse_candidate_line(line: SdpLine) -> Candidate:
    """Parse an `a=candidate` or `a=x-candidate-ipv6` line in either dialect."""
    ipv6_attribute = line.attribute_name == "x-candidate-ipv6"
    candidate = parse_candidate(line.attribute_value)
    if ipv6_attribute:
        if candidate.dialect != ICE_RFC5245 or _ip_version(candidate.address) != 6:
            raise SdpError("x-candidate-ipv6 needs an IPv6 RFC 5245 candidate")
        candidate = replace(candidate, ipv6_attribute=True)
    return candidate


def parse_candidate(value: str) -> Candidate:
    """Parse a candidate value (after `a=candidate:`) in either dialect.

    RFC 5245 / MS-ICE2: `foundation component transport priority address
    port typ type [raddr a] [rport p] ...`. Legacy ICE v6: `ufrag component
    pwd transport qvalue address port`, which has no `typ` and carries the
    credentials inline.
    """
    tokens = value.split()
    if len(tokens) >= 3 and tokens[2].upper() in ICE_TRANSPORTS:
        return _parse_rfc5245(tokens)
    if len(tokens) == 7 and tokens[3].upper() in ICE_TRANSPORTS:
        return _parse_ice_v6(tokens)
    raise SdpError(f"invalid or truncated candidate {_shown(value)}")


def _parse_rfc5245(tokens: list[str]) -> Candidate:
    if len(tokens) < 8 or tokens[6] != "typ" or len(tokens) % 2:
        raise SdpError(f"invalid or truncated candidate {_shown(' '.join(tokens))}")
    if not _ICE_CHARS.match(tokens[0]) or len(tokens[0]) > 32:
        raise SdpError(f"invalid candidate foundation {_shown(tokens[0])}")
    extensions = []
    related_address = None
    related_port = None
    for key, val in zip(tokens[8::2], tokens[9::2]):
        if key == "raddr":
            related_address = _check_address(val)
        elif key == "rport":
            related_port = _parse_int(val, 0, 65535, "candidate rport")
        else:
            extensions.append((key, val))
    return Candidate(
        dialect=ICE_RFC5245,
        foundation=tokens[0],
        component=_parse_int(tokens[1], 1, 256, "candidate component"),
        transport=tokens[2].upper(),
        priority=_parse_int(tokens[3], 1, 2**31 - 1, "candidate priority"),
        address=_check_address(tokens[4]),
        port=_parse_int(tokens[5], 0, 65535, "candidate port"),
        type=tokens[7].lower(),
        related_address=related_address,
        related_port=related_port,
        extensions=tuple(extensions),
    )


def _parse_ice_v6(tokens: list[str]) -> Candidate:
    ufrag, component, password, transport, qvalue, address, port = tokens
    if not _ICE_CHARS.match(ufrag) or not _ICE_CHARS.match(password):
        raise SdpError("invalid ICE v6 candidate credentials")
    if not re.match(r"^[01](?:\.\d{1,3})?$", qvalue) or float(qvalue) > 1:
        raise SdpError(f"invalid ICE v6 candidate preference {_shown(qvalue)}")
    return Candidate(
        dialect=ICE_V6,
        foundation=ufrag,
        component=_parse_int(component, 1, 256, "candidate component"),
        transport=transport.upper(),
        priority=None,
        address=_check_address(address),
        port=_parse_int(port, 0, 65535, "candidate port"),
        qvalue=float(qvalue),
        password=password,
    )


def parse_crypto(value: str) -> Crypto:
    """Parse an `a=crypto` value: `tag suite inline:key[|lifetime][|mki:len]`."""
    match = _CRYPTO.match(value.strip())
    if not match:
        raise SdpError("invalid crypto attribute")
    tag, suite, key_params, session_params = match.groups()
    first = key_params.split(";", 1)[0]
    method, _, key_info = first.partition(":")
    if method.lower() != "inline":
        raise SdpError("crypto key method is not inline")
    key, *extras = key_info.split("|")
    if not key or not _KEY.match(key):
        raise SdpError("crypto key is empty or not base64")
    lifetime = None
    mki = None
    if len(extras) > 2:
        raise SdpError("crypto key parameter has too many '|' fields")
    for extra in extras:
        mki_match = _MKI.match(extra)
        if mki_match and mki is None:
            mki = (int(mki_match.group(1)), int(mki_match.group(2)))
        elif _LIFETIME.match(extra) and lifetime is None and mki is None:
            lifetime = extra
        else:
            raise SdpError("invalid crypto lifetime or MKI field")
    params = tuple((session_params or "").split())
    return Crypto(int(tag), suite.upper(), key, lifetime, mki, params)


def parse_rtcp(value: str) -> Rtcp:
    """Parse `a=rtcp:port [IN IP4|IP6 address]` (RFC 3605)."""
    parts = value.split()
    if len(parts) not in (1, 4):
        raise SdpError(f"invalid rtcp attribute {_shown(value)}")
    port = _parse_int(parts[0], 0, 65535, "rtcp port")
    address = None
    if len(parts) == 4:
        if parts[1] != "IN" or parts[2] not in ("IP4", "IP6"):
            raise SdpError(f"invalid rtcp attribute {_shown(value)}")
        address = _check_address(parts[3])
    return Rtcp(port, address)


_ATTRIBUTE_PARSERS: dict[str, Callable[[SdpLine], object]] = {
    "rtpmap": lambda line: parse_rtpmap(line.attribute_value),
    "candidate": parse_candidate_line,
    "x-candidate-ipv6": parse_candidate_line,
    "crypto": lambda line: parse_crypto(line.attribute_value),
    "rtcp": lambda line: parse_rtcp(line.attribute_value),
}


def check_attribute(line: SdpLine) -> None:
    """Raise SdpError if an `a=` line has an invalid name or typed value."""
    name = line.value.partition(":")[0]
    if not _TOKEN.match(name):
        raise SdpError(f"invalid attribute name {_shown(name)}")
    if _CONTROL.search(line.text):
        raise SdpError(f"control character in a={name}")
    parser = _ATTRIBUTE_PARSERS.get(name.lower())
    if parser is not None:
        parser(line)


def invalid_lines(sdp: SessionDescription) -> list[tuple[int, str]]:
    """Return (line number, reason) for each attribute line that does not parse."""
    found = []
    for number, line in enumerate(sdp.lines(), start=1):
        if line.kind != "a":
            continue
        try:
            check_attribute(line)
        except SdpError as error:
            found.append((number, error.reason))
    return found


def drop_invalid_lines(sdp: SessionDescription) -> int:
    """Remove the attribute lines that do not parse and return their count."""

    def invalid(line: SdpLine) -> bool:
        if line.kind != "a":
            return False
        try:
            check_attribute(line)
        except SdpError as error:
            logger.debug("dropping invalid SDP line: %s", error.reason)
            return True
        return False

    removed = len(sdp.session)
    sdp.session = [sdp.session[0]] + [ln for ln in sdp.session[1:] if not invalid(ln)]
    removed -= len(sdp.session)
    for section in sdp.media:
        removed += section.remove_lines(invalid)
    return removed


def _parsed(lines: list[SdpLine], name: str) -> list[Any]:
    parser = _ATTRIBUTE_PARSERS[name]
    results = []
    for line in lines:
        try:
            results.append(parser(line))
        except SdpError as error:
            logger.debug(
                "ignoring SDP line a=%s: %s", line.attribute_name, error.reason
            )
    return results


def _connection_address(value: str) -> str | None:
    parts = value.split()
    if len(parts) != 3:
        return None
    return parts[2].split("/", 1)[0]


def _parse_int(text: str, low: int, high: int, what: str) -> int:
    if not text.isdigit() or len(text) > 10 or not low <= int(text) <= high:
        raise SdpError(f"invalid {what} {_shown(text)} (allowed {low}-{high})")
    return int(text)


def _check_address(text: str) -> str:
    if _ip_version(text) or _HOSTNAME.match(text):
        return text
    raise SdpError(f"invalid address {_shown(text)}")


def _ip_version(text: str) -> int:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def _shown(text: str) -> str:
    """Return a short, printable form of untrusted text for messages."""
    return repr(text[:60].encode("unicode_escape").decode("ascii"))
