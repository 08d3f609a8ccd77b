"""Parse SIP messages as operators capture and paste them.

Pure functions over bytes, standard library only, so that the Kamailio edge
(Debian's embedded Python) and the workers can both import this module.
Captures arrive with LF or CRLF line ends, folded headers, compact header
names and a Content-Length that no longer matches the body. All of these
parse. Anything that is not a SIP start line raises `SipParseError`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

# RFC 3261 section 7.3.3 compact forms, plus the ones RFC 3515 / 3891 / 4028
# and RFC 6086 add.
COMPACT_HEADER_NAMES = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_REQUEST_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9.!%*_+`'~-]*) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")


class SipParseError(ValueError):
    """A message that cannot be read as SIP, with the reason."""


@dataclass
class SipMessage:
    """One SIP request or response, headers in wire order."""

    start_line: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    method: str | None = None
    request_uri: str | None = None
    status: int | None = None
    reason: str | None = None

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        """Return the first value of header `name` (any case, compact or long)."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        wanted = canonical_header_name(name).lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def content_type(self) -> str:
        """Return the media type without parameters, lower case, or ''."""
        value = self.header("Content-Type") or ""
        return value.split(";", 1)[0].strip().lower()

    def to_bytes(self) -> bytes:
        """Serialize with CRLF line ends and a Content-Length that matches."""
        lines = [self.start_line]
        for name, value in self.headers:
            if name.lower() != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


def canonical_header_name(name: str) -> str:
    """Return the long form of a compact header name; other names unchanged."""
    stripped = name.strip()
    return COMPACT_HEADER_NAMES.get(stripped.lower(), stripped)


def parse_message(data: bytes, *, trust_content_length: bool = False) -> SipMessage:
    """Parse one SIP message.

    The body is everything after the blank line, because pasted captures
    often carry a stale Content-Length. With `trust_content_length`, as on a
    stream transport, the body is cut to the declared length instead.
    """
    if not data.strip():
        raise SipParseError("empty input: expected a SIP request or response")
    if b"\x00" in data.split(b"\n", 1)[0]:
        raise SipParseError("NUL byte in the start line")

    head, body = _split_head_and_body(data)
    text = head.decode("utf-8", "surrogateescape")
    raw_lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in raw_lines]
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise SipParseError("no start line")

    message = SipMessage(start_line=lines[0].strip())
    _parse_start_line(message)
    message.headers = _parse_headers(lines[1:])

    if trust_content_length:
        declared = message.header("Content-Length")
        if declared is not None and declared.strip().isdigit():
            body = body[: int(declared.strip())]
    message.body = body
    return message


def _split_head_and_body(data: bytes) -> tuple[bytes, bytes]:
    # The first empty line ends the headers, whatever the line ends are.
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        return data, b""
    return data[: match.start()], data[match.end():]


def _parse_start_line(message: SipMessage) -> None:
    line = message.start_line
    status = _STATUS_LINE.match(line)
    if status:
        message.status = int(status.group(1))
        message.reason = status.group(2) or ""
        return
    request = _REQUEST_LINE.match(line)
    if request:
        message.method = request.group(1).upper()
        message.request_uri = request.group(2)
        return
    shown = line[:80].encode("unicode_escape").decode("ascii")
    raise SipParseError(
        f"not a SIP start line: {shown!r} "
        "(expected 'METHOD URI SIP/2.0' or 'SIP/2.0 CODE REASON')"
    )


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        if line[0] in " \t":
            # Folded continuation of the previous header (RFC 3261 7.3.1).
            if not headers:
                raise SipParseError(f"line {number}: continuation before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME.match(name):
            shown = line[:60].encode("unicode_escape").decode("ascii")
            raise SipParseError(f"line {number}: invalid header line {shown!r}")
        headers.append((canonical_header_name(name), value.strip()))
    return headers


_NAME_ADDR = re.compile(r'^(?:"(?:[^"\\]|\\.)*"\s*|[^"<]*)<([^<>]*)>(.*)$', re.DOTALL)
_URI_SYNTAX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>]+$")


def address_syntax_problem(value: str) -> str | None:
    """Check one From, To or Contact value (RFC 3261 name-addr or addr-spec).

    Returns what is wrong, or None. Header parameters are not checked
    beyond starting with a semicolon, because Lync and Skype for Business
    put quoted URNs with angle brackets into them.
    """
    text = value.strip()
    if _opens_name_addr(text):
        match = _NAME_ADDR.match(text)
        if match is None:
            return "unbalanced angle brackets or quotes"
        uri, rest = match.group(1).strip(), match.group(2).strip()
        if rest and not rest.startswith(";"):
            return f"unexpected text {rest[:40]!r} after the URI"
    else:
        uri = text.split(";", 1)[0].strip()
    if not _URI_SYNTAX.match(uri):
        return f"invalid URI {uri[:60]!r}"
    return None


def dialog_address_problem(message: SipMessage) -> str | None:
    """Check From, To and Contact of a dialog-creating request.

    Returns a message naming the header and what is wrong, or None. pjsip
    drops a request whose address headers it cannot parse without any
    response, so the edge checks them first.
    """
    for name in ("From", "To"):
        values = message.header_values(name)
        if len(values) != 1:
            return f"expected one {name} header, found {len(values)}"
        problem = address_syntax_problem(values[0])
        if problem is not None:
            return f"invalid {name} header: {problem}"
    contacts = [item for value in message.header_values("Contact")
                for item in split_header_list(value)]
    if not contacts:
        return "missing Contact header"
    for contact in contacts:
        problem = address_syntax_problem(contact)
        if problem is None:
            # RFC 3261 section 8.1.1.8: a SIP or SIPS URI, which pjsip
            # parses strictly (an empty host, a port that is not a number).
            uri = name_addr_uri(contact)
            try:
                parsed = parse_sip_uri(uri)
                if not parsed.host or "@" in parsed.host:
                    problem = f"no host in {uri[:60]!r}"
            except SipParseError:
                problem = f"expected a SIP or SIPS URI, found {uri[:60]!r}"
        if problem is not None:
            return f"invalid Contact header: {problem}"
    return None


# The headers a response copies from its request (RFC 3261 section 8.2.6.2).
_RESPONSE_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")


def error_response_for_unparsable(data: bytes, status: int, reason: str,
                                  warning: str = "", agent: str = "-") -> bytes | None:
    """Build a final response to a request that `parse_message` rejects.

    Kamailio cannot reply to a request once one header line fails to parse,
    because its reply builder parses every header. This reads the start line
    and the Via, From, To, Call-ID and CSeq lines and skips any line it cannot
    read. Returns None for a response, for an ACK (which gets no response),
    and for a request that lacks one of those headers. `warning` goes into a
    Warning header with code 399 and `agent` as the warn-agent.
    """
    head, _body = _split_head_and_body(data)
    lines = [line.rstrip("\r") for line in
             head.decode("utf-8", "replace").split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    request = _REQUEST_LINE.match(lines[0].strip()) if lines else None
    if request is None or request.group(1).upper() == "ACK":
        return None
    found: dict[str, list[str]] = {name: [] for name in _RESPONSE_HEADERS}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = canonical_header_name(name)
        if colon and name in found and value.strip():
            found[name].append(value.strip())
    if any(not values for values in found.values()):
        return None
    to_value = found["To"][0]
    if ";tag=" not in to_value.replace(" ", "").lower():
        seed = f"{found['Call-ID'][0]}|{found['Via'][0]}|{found['CSeq'][0]}"
        to_value += ";tag=" + hashlib.sha1(seed.encode()).hexdigest()[:16]
    out = [f"SIP/2.0 {status} {reason}"]
    out += [f"Via: {value}" for value in found["Via"]]
    out += [f"From: {found['From'][0]}", f"To: {to_value}",
            f"Call-ID: {found['Call-ID'][0]}", f"CSeq: {found['CSeq'][0]}"]
    if warning:
        # A quoted-string cannot hold a bare double quote or a line end.
        text = " ".join(warning.replace('"', "'").split())
        out.append(f'Warning: 399 {agent} "{text}"')
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8")


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value, keeping commas inside quotes and <>."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    angle_depth = 0
    escaped = False
    for char in value:
        if escaped:
            # The character after a backslash in a quoted string is literal.
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"' and angle_depth == 0:
            in_quotes = not in_quotes
        elif char == "<" and not in_quotes:
            angle_depth += 1
        elif char == ">" and not in_quotes and angle_depth:
            angle_depth -= 1
        elif char == "," and not in_quotes and angle_depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


_URI_IN_ANGLES = re.compile(r"<([^>]*)>")


def name_addr_uri(value: str) -> str:
    """Return the URI of a From/To/Contact style value, without header params.

    A quoted display name may contain angle brackets, so it is skipped.
    """
    if _opens_name_addr(value):
        match = _NAME_ADDR.match(value.strip())
        if match:
            return match.group(1).strip()
        match = _URI_IN_ANGLES.search(value)
        if match:
            return match.group(1).strip()
    return value.split(";", 1)[0].strip()


def _opens_name_addr(value: str) -> bool:
    """Tell whether a "<" outside quotes comes before any ";" outside quotes.

    Without one the value is an addr-spec, whose quoted parameters (a
    Lync +sip.instance URN) may still contain angle brackets.
    """
    in_quotes = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif not in_quotes and char == "<":
            return True
        elif not in_quotes and char == ";":
            return False
    return False


@dataclass(frozen=True)
class SipUri:
    """The parts of a sip: or sips: URI that routing and classification use."""

    scheme: str
    user: str
    host: str
    port: int | None
    params: dict[str, str]


_SIP_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@;?]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:;?>]+)(?::(?P<port>\d{1,5}))?"
    r"(?P<params>;[^?]*)?(?:\?.*)?$",
    re.IGNORECASE,
)


def parse_sip_uri(uri: str) -> SipUri:
    """Parse a sip:/sips: URI; raise SipParseError naming the URI otherwise."""
    match = _SIP_URI.match(uri.strip())
    if not match:
        raise SipParseError(f"invalid SIP URI {uri[:120]!r}")
    params: dict[str, str] = {}
    for item in (match.group("params") or "").split(";"):
        if item:
            key, _, val = item.partition("=")
            params[key.lower()] = val
    user = match.group("user") or ""
    # The user part may carry its own ;params (RFC 3261 telephone-subscriber).
    user = user.split(";", 1)[0]
    port = match.group("port")
    return SipUri(
        scheme=match.group("scheme").lower(),
        user=user,
        host=match.group("host").lower(),
        port=int(port) if port else None,
        params=params,
    )
