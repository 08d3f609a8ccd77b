"""Select the SDP of a SIP body and fit a message into a worker's limits.

Lync sends `multipart/alternative` offers with a legacy part (Content-
Disposition `ms-proxy-2007fallback`) and an ICE v19 part, in either order.
Other clients put SDP beside ISUP or PIDF in `multipart/mixed`. pjsip
negotiates the first SDP part it finds and cuts messages over about 4 KB, so
the edge hands each worker one `application/sdp` body that fits. Standard
library only, like `b2bua.sdp`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import quopri
import re
from dataclasses import dataclass

from b2bua.sdp import (
    ICE_RFC5245,
    MediaSection,
    SdpError,
    SdpLine,
    SessionDescription,
    drop_invalid_lines,
    parse_candidate_line,
    parse_sdp,
)
from b2bua.sdp_rewrite import reject_section
from b2bua.sipmsg import SipMessage

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
FALLBACK_DISPOSITION = "ms-proxy-2007fallback"
MAX_BODY_PARTS = 16
MAX_MULTIPART_DEPTH = 3

# Lync / SfB attributes that the audio-only workers do not need. They go only
# when a message does not fit otherwise.
OPTIONAL_ATTRIBUTES = frozenset({
    "x-ssrc-range", "rtcp-fb", "rtcp-rsize", "label", "x-source",
    "x-devicecaps", "x-mediabw", "x-bw", "x-mediasettings",
})
# Codecs that only Microsoft clients implement, so the workers cannot decode them.
MICROSOFT_CODECS = frozenset({"SILK", "X-MSRTA", "SIREN", "AAL2-G726-32"})


class MessageTooLarge(SdpError):
    """A message that does not fit the worker's limit even after shrinking.

    `status` is 513 when the headers alone are too large and 488 when the SDP
    cannot shrink enough. `reason` fits a Warning header.
    """


@dataclass(frozen=True)
class BodyPart:
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return ""

    @property
    def media_type(self) -> str:
        return media_type(self.header("Content-Type") or "text/plain")


@dataclass(frozen=True)
class SdpSelection:
    """The SDP chosen from a body and a short description of where it came from."""

    sdp: bytes
    source: str
    ignored_parts: int


@dataclass(frozen=True)
class NormalizedMessage:
    """What the edge changes in a message before a worker sees it.

    `body` and `content_type` replace the message body and its Content-Type
    (None: leave the body alone). `remove_headers` lists header names to
    remove. `size` is the message size in bytes after these changes, and
    `steps` describes each change for logs.
    """

    body: bytes
    content_type: str | None
    remove_headers: tuple[str, ...]
    size: int
    steps: tuple[str, ...]
    sdp: SessionDescription | None

    def apply(self, message: SipMessage) -> SipMessage:
        """Return a copy of `message` with these changes made."""
        return _rebuild(message, self.remove_headers, self.content_type, self.body)


def media_type(content_type: str) -> str:
    """Return the media type of a Content-Type value, lower case, no parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def content_type_parameter(content_type: str, name: str) -> str | None:
    """Return a parameter of a Content-Type value, quotes removed, or None."""
    pattern = re.compile(
        r';\s*' + re.escape(name) + r'\s*=\s*(?:"([^"]*)"|([^;\s]+))', re.IGNORECASE
    )
    match = pattern.search(content_type)
    if not match:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def split_multipart(body: bytes, boundary: str) -> list[BodyPart]:
    """Split a multipart body (RFC 2046) into parts, accepting LF-only line ends."""
    if not boundary or len(boundary) > 70:
        raise SdpError("multipart body needs a boundary of 1-70 characters")
    delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
    pieces = re.split(rb"(?:\r?\n|^)" + re.escape(delimiter), body)
    parts: list[BodyPart] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        if len(parts) == MAX_BODY_PARTS:
            raise SdpError(f"multipart body has more than {MAX_BODY_PARTS} parts")
        # The rest of the delimiter line is transport padding.
        _, _, content = piece.partition(b"\n")
        parts.append(_parse_part(content))
    if not parts:
        raise SdpError(f"multipart body has no part with boundary {boundary!r}")
    return parts


def _parse_part(content: bytes) -> BodyPart:
    match = re.search(rb"(?:^|\r?\n)\r?\n", content)
    if match is None:
        head, body = content, b""
    else:
        head, body = content[: match.start()], content[match.end():]
    headers: list[tuple[str, str]] = []
    for raw in head.decode("utf-8", "replace").splitlines():
        if raw[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {raw.strip()}")
        elif ":" in raw:
            name, _, value = raw.partition(":")
            headers.append((name.strip(), value.strip()))
    encoding = dict((k.lower(), v) for k, v in headers).get(
        "content-transfer-encoding", ""
    ).lower()
    try:
        if encoding == "base64":
            body = base64.b64decode(body, validate=False)
        elif encoding == "quoted-printable":
            body = quopri.decodestring(body)
    except (binascii.Error, ValueError):
        raise SdpError(f"body part is not valid {encoding}") from None
    return BodyPart(tuple(headers), body)


def select_sdp(body: bytes, content_type: str) -> SdpSelection | None:
    """Return the SDP to negotiate from a body, or None if it carries no SDP.

    In `multipart/alternative` with several SDP parts, the part whose
    Content-Disposition lacks `ms-proxy-2007fallback` wins whatever the
    order, and the fallback part is never parsed, so damage there is
    harmless. Any other multipart body gives its first SDP part.
    """
    kind = media_type(content_type)
    if kind == SDP_TYPE:
        return SdpSelection(body, "body", 0)
    if not kind.startswith("multipart/"):
        return None
    sdp_parts, total = _sdp_parts(body, content_type, depth=1)
    if not sdp_parts:
        return None
    chosen = sdp_parts[0]
    if kind == "multipart/alternative" and len(sdp_parts) > 1:
        primary = [
            part for part in sdp_parts
            if FALLBACK_DISPOSITION not in part.header("Content-Disposition").lower()
        ]
        # RFC 2046 orders alternatives from least to most preferred.
        chosen = primary[-1] if primary else sdp_parts[-1]
    position = sdp_parts.index(chosen) + 1
    source = f"{kind} SDP part {position} of {len(sdp_parts)}"
    return SdpSelection(chosen.body, source, total - 1)


def sdp_has_ice(sdp: SessionDescription) -> bool:
    """Say whether any line of `sdp` is `a=ice-ufrag` or `a=candidate`."""
    return any(line.text.startswith(("a=ice-ufrag:", "a=candidate:"))
               for line in sdp.lines())


def _sdp_parts(
    body: bytes, content_type: str, depth: int
) -> tuple[list[BodyPart], int]:
    if depth > MAX_MULTIPART_DEPTH:
        raise SdpError(f"multipart bodies nested deeper than {MAX_MULTIPART_DEPTH}")
    boundary = content_type_parameter(content_type, "boundary")
    if boundary is None:
        raise SdpError("multipart Content-Type has no boundary parameter")
    found: list[BodyPart] = []
    total = 0
    for part in split_multipart(body, boundary):
        if part.media_type.startswith("multipart/"):
            nested_type = part.header("Content-Type")
            nested, count = _sdp_parts(part.body, nested_type, depth + 1)
            found += nested
            total += count
        else:
            total += 1
            if part.media_type == SDP_TYPE:
                found.append(part)
    return found, total


def noisy_headers(message: SipMessage) -> tuple[str, ...]:
    """Return the Microsoft `ms-*` header names of a message, which workers ignore."""
    names: list[str] = []
    for name, _ in message.headers:
        if name.lower().startswith("ms-") and name not in names:
            names.append(name)
    return tuple(names)


def normalize_for_worker(message: SipMessage, limit: int = 3800) -> NormalizedMessage:
    """Return the single-SDP body and header changes that fit a worker.

    The m-lines keep their number and order. Always dropped: attribute lines
    that do not parse, TCP and ICE v6 candidates, `a=x-candidate-ipv6`,
    `a=cryptoscale`, and everything but the m= line of streams the audio-only
    worker rejects (which get port 0). Dropped only if the message is still
    over `limit` bytes: optional Lync attributes, then Microsoft-only codecs.
    Raise MessageTooLarge (513 or 488) if it still does not fit, and SdpError
    (400) for a body that cannot be read.
    """
    # NOTE: pjsip 2.15.1 cuts messages over about 4,000 bytes (measured).
    # The default limit leaves an estimated 200 bytes for the Via and
    # Record-Route headers that Kamailio adds on the way to the worker.
    remove = noisy_headers(message)
    steps = [f"removed header {name}" for name in remove]
    selection = select_sdp(message.body, message.header("Content-Type") or "")
    if selection is None:
        size = len(_rebuild(message, remove, None, message.body).to_bytes())
        _check_head(size, len(message.body), limit)
        if size > limit:
            raise MessageTooLarge(
                f"message is {size} bytes and its body is not SDP, max {limit}", 513
            )
        return NormalizedMessage(message.body, None, remove, size, tuple(steps), None)
    if selection.source != "body":
        steps.append(f"selected {selection.source}")

    sdp = parse_sdp(selection.sdp)
    steps += _drop_unusable(sdp)

    def measure() -> int:
        rebuilt = _rebuild(message, remove, SDP_TYPE, sdp.to_bytes())
        return len(rebuilt.to_bytes())

    size = measure()
    for shrink in (_drop_optional_attributes, _drop_microsoft_codecs):
        if size <= limit:
            break
        steps += shrink(sdp)
        size = measure()
    if size > limit:
        _check_head(size, len(sdp.to_bytes()), limit)
        raise MessageTooLarge(
            f"SDP too large for the media worker: message is {size} bytes after "
            f"shrinking, max {limit}",
            488,
        )
    return NormalizedMessage(sdp.to_bytes(), SDP_TYPE, remove, size, tuple(steps), sdp)


def _check_head(size: int, body_size: int, limit: int) -> None:
    head = size - body_size
    if head > limit:
        raise MessageTooLarge(
            f"SIP headers are {head} bytes without the body, max {limit}", 513
        )


def _rebuild(
    message: SipMessage,
    remove: tuple[str, ...],
    content_type: str | None,
    body: bytes,
) -> SipMessage:
    removed = {name.lower() for name in remove}
    headers = [(n, v) for n, v in message.headers if n.lower() not in removed]
    if content_type is not None:
        headers = [
            (name, content_type if name.lower() == "content-type" else value)
            for name, value in headers
        ]
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", content_type))
    return SipMessage(
        start_line=message.start_line,
        headers=headers,
        body=body,
        method=message.method,
        request_uri=message.request_uri,
        status=message.status,
        reason=message.reason,
    )


def _is_unusable_candidate(line: SdpLine) -> bool:
    if line.attribute_name == "x-candidate-ipv6":
        return True
    if line.attribute_name != "candidate":
        return False
    try:
        candidate = parse_candidate_line(line)
    except SdpError:
        return True
    return candidate.dialect != ICE_RFC5245 or not candidate.is_udp


def _drop_unusable(sdp: SessionDescription) -> list[str]:
    steps = []
    lines = list(sdp.lines())
    if not lines[-1].eol:
        # A multipart delimiter takes the CRLF before it, so the part may end
        # without one. SDP needs every line terminated.
        lines[-1].eol = sdp.eol
    invalid = drop_invalid_lines(sdp)
    if invalid:
        steps.append(f"dropped {invalid} invalid attribute lines")
    candidates = 0
    for index, section in enumerate(sdp.media, start=1):
        if _worker_rejects(section):
            if not (section.is_rejected and len(section.lines) == 1):
                reject_section(section)
                steps.append(f"rejected m={section.media} (m-line {index})")
            continue
        candidates += section.remove_lines(_is_unusable_candidate)
        section.remove_lines(lambda line: line.attribute_name == "cryptoscale")
    if candidates:
        steps.append(f"dropped {candidates} TCP, IPv6 or ICE v6 candidates")
    return steps


def _worker_rejects(section: MediaSection) -> bool:
    return section.media.lower() != "audio" or not section.is_rtp


def _drop_optional_attributes(sdp: SessionDescription) -> list[str]:
    def optional(line: SdpLine) -> bool:
        return line.attribute_name in OPTIONAL_ATTRIBUTES

    count = len(sdp.session)
    sdp.session = [line for line in sdp.session if not optional(line)]
    count -= len(sdp.session)
    for section in sdp.media:
        count += section.remove_lines(optional)
    return [f"dropped {count} optional attribute lines"] if count else []


def _drop_microsoft_codecs(sdp: SessionDescription) -> list[str]:
    steps = []
    for index, section in enumerate(sdp.media, start=1):
        if section.is_rejected or not section.is_rtp:
            continue
        dropped = {
            fmt for fmt in section.formats
            if section.encoding_of(fmt) in MICROSOFT_CODECS
        }
        kept = tuple(fmt for fmt in section.formats if fmt not in dropped)
        if not dropped or not kept:
            continue
        section.set_media_line(formats=kept)
        section.remove_lines(
            lambda line: line.attribute_name in ("rtpmap", "fmtp")
            and line.attribute_value.split(" ", 1)[0] in dropped
        )
        steps.append(f"dropped {len(dropped)} Microsoft-only codecs on m-line {index}")
    return steps
