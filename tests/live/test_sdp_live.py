"""Live SDP on the wire: sipp sends Lync, SfB and BFCP offers to a running B2BUA.

Every offer is built from a sample in tests/data/samples with each address
(Via, Contact, c=, o=, candidates, a=rtcp) replaced by the `far` namespace's
address and each media port by one near sipp's media port. sipp sends it
with CRLF line ends and a Content-Length it computes itself. The tests read
the answer sipp received and, for calls to the `9NNN` trunk rule, the offer
that a sipp target on far:5090 received. Needs root (network namespaces).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from b2bua.sipmsg import SipMessage, parse_message
from tests.live.b2bua_lab import EDGE_PORT, B2buaLab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns")

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = DATA / "samples"
SIPP_DIR = DATA / "sipp"
REMOTE_SAMPLE = SAMPLES / "sfb-remote-invite.sip"
LOCAL_SAMPLE = SAMPLES / "lync-local-invite.sip"
FEDERATION_SAMPLE = SAMPLES / "lync2013-federation-invite.sip"
BFCP_SAMPLE = SAMPLES / "video-bfcp-invite.sip"
APPSHARING_SAMPLE = SAMPLES / "sfb-appsharing-reinvite.sip"

SUBNET = 40
SIPP_PORT = 5080
MEDIA_PORT = 6000
TARGET_PORT = 5090
TARGET_MEDIA_PORT = 6200
SIPP_TIMEOUT_S = 15
TRUNK_USER = "91234"
# The far end gets an IPv6 address too, so that x-candidate-ipv6 lines can
# name a host in the lab. Nothing is sent to it: the edge drops those lines.
FAR_IPV6 = "fd00:99:40::2"

DOC_IPV4 = re.compile(r"\b(?:192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}\b")
DOC_IPV6 = re.compile(r"\b2001:db8:[0-9a-f:]*[0-9a-f]\b", re.IGNORECASE)
# Header lines of a sample that describe hops or a dialog that do not exist
# in the lab, so the test writes its own. A Record-Route or Route of them would
# send in-dialog requests to example.com.
REPLACED_HEADERS = frozenset({
    "via", "route", "record-route", "max-forwards", "call-id", "cseq", "to",
    "contact", "content-length",
})


# ----- turning a sample into a message for the lab ----------------------------


class PortMap:
    """Media ports of a sample mapped one to one onto ports near sipp's."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.ports: dict[str, str] = {}

    def __call__(self, port: str) -> str:
        if port == "0" or not port.isdigit():
            return port
        if port not in self.ports:
            self.ports[port] = str(self.base + len(self.ports))
        return self.ports[port]


def localize_sdp_line(line: str, far_ip: str, ports: PortMap) -> str:
    """Return one SDP line with its addresses and ports moved into the lab."""
    if line.startswith("m="):
        fields = line.split(" ")
        fields[1] = ports(fields[1])
        return " ".join(fields)
    if line.startswith("a=rtcp:"):
        fields = line[len("a=rtcp:"):].split(" ")
        fields[0] = ports(fields[0])
        return "a=rtcp:" + DOC_IPV4.sub(far_ip, " ".join(fields))
    if line.startswith(("a=candidate:", "a=x-candidate-ipv6:")):
        fields = line.split(" ")
        for index, token in enumerate(fields[:-1]):
            is_address = DOC_IPV4.fullmatch(token) or DOC_IPV6.fullmatch(token)
            if is_address or token == "rport":
                fields[index + 1] = ports(fields[index + 1])
        line = " ".join(fields)
    return DOC_IPV6.sub(FAR_IPV6, DOC_IPV4.sub(far_ip, line))


def localize_body(body: str, far_ip: str) -> str:
    ports = PortMap(MEDIA_PORT)
    lines = [localize_sdp_line(line, far_ip, ports) for line in body.split("\n")]
    return "\n".join(lines)


def build_invite(lab: B2buaLab, sample: Path, user: str,
                 edit_body: Callable[[str], str] | None = None,
                 extra_headers: tuple[str, ...] = ()) -> str:
    """Turn a sample INVITE into the text sipp sends from the far namespace.

    sipp fills in the Via branch, the Call-ID and the Content-Length (of the
    whole body, multipart included), and ends every line with CRLF.
    """
    message = parse_message(sample.read_bytes())
    request_uri = f"sip:{user}@{lab.edge_ip}:{EDGE_PORT}"
    head = [
        f"INVITE {request_uri} SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{lab.edge_ip}>",
        "Call-ID: [call_id]",
        "CSeq: 1 INVITE",
        "Contact: <sip:caller@[local_ip]:[local_port]>",
    ]
    for name, value in message.headers:
        if name.lower() not in REPLACED_HEADERS:
            head.append(f"{name}: {value}")
    head += list(extra_headers)
    head.append("Content-Length: [len]")
    body = message.body.decode().replace("\r\n", "\n").strip("\n")
    body = localize_body(body, lab.far_ip)
    if edit_body is not None:
        body = edit_body(body)
    text = DOC_IPV4.sub(lab.far_ip, "\n".join(head)) + "\n\n" + body
    assert not DOC_IPV4.search(text), "a sample address would be sent"
    assert not DOC_IPV6.search(text), "a sample IPv6 address would be sent"
    return text


def sdp_of_sample(lab: B2buaLab, sample: Path) -> str:
    message = parse_message(sample.read_bytes())
    body = message.body.decode().replace("\r\n", "\n").strip("\n")
    return localize_body(body, lab.far_ip)


# ----- running sipp and reading what it saw -----------------------------------


@dataclass
class SippRun:
    exit_code: int
    stderr: str
    call_id: str
    sent: list[SipMessage] = field(default_factory=list)
    received: list[SipMessage] = field(default_factory=list)
    trace: str = ""

    def responses(self, method: str = "INVITE") -> list[SipMessage]:
        return [m for m in self.received if m.status is not None
                and (m.header("CSeq") or "").split()[-1:] == [method]]

    def final(self, cseq: int = 1) -> SipMessage:
        finals = [m for m in self.responses()
                  if m.status is not None and m.status >= 200
                  and (m.header("CSeq") or "").split()[0] == str(cseq)]
        assert finals, f"no final response to INVITE {cseq}:\n{self.trace[-3000:]}"
        return finals[0]

    def requests(self, method: str) -> list[SipMessage]:
        return [m for m in self.received if m.method == method]


def read_trace(trace: Path) -> tuple[list[SipMessage], list[SipMessage], str]:
    """Parse the messages sipp logged as sent and as received with -trace_msg."""
    if not trace.exists():
        return [], [], ""
    text = trace.read_text(errors="replace")
    sent: list[SipMessage] = []
    received: list[SipMessage] = []
    for block in re.split(r"^-{20,}.*$", text, flags=re.MULTILINE):
        header, _, raw = block.strip("\n").partition("\n\n")
        if not raw.strip():
            continue
        # sipp writes a message as sent, CRLF included, after a blank line.
        data = raw.lstrip("\n").rstrip("\n")
        if not data.endswith("\r"):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
        else:
            data += "\n"
        try:
            message = parse_message(data.encode())
        except ValueError:
            continue
        if "received" in header:
            received.append(message)
        elif "sent" in header:
            sent.append(message)
    return sent, received, text


def start_sipp(lab: B2buaLab, tmp: Path, scenario: str,
               replacements: dict[str, str], *, port: int = SIPP_PORT,
               media_port: int = MEDIA_PORT, uas: bool = False,
               call_id_format: str = "") -> subprocess.Popen[str]:
    """Start sipp in the far namespace on `port` with one call of `scenario`.

    A UAC calls the edge; a UAS (`uas`) waits for one call. The -trace_msg
    file is `<port>-messages.log` in `tmp`.
    """
    assert lab.far is not None
    text = (SIPP_DIR / scenario).read_text()
    for marker, value in replacements.items():
        text = text.replace(marker, value)
    path = tmp / f"{port}-{scenario}"
    path.write_text(text)
    trace = tmp / f"{port}-messages.log"
    argv = ["sipp", "-sf", str(path), "-i", lab.far_ip, "-p", str(port),
            "-mi", lab.far_ip, "-mp", str(media_port), "-m", "1", "-nostdin",
            "-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error",
            "-trace_msg", "-message_file", str(trace)]
    if not uas:
        argv.insert(1, f"{lab.edge_ip}:{EDGE_PORT}")
    if call_id_format:
        argv += ["-cid_str", call_id_format]
    return lab.far.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)


def finish_sipp(process: subprocess.Popen[str], trace: Path,
                call_id: str = "") -> SippRun:
    try:
        _, err = process.communicate(timeout=SIPP_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=5)
    sent, received, text = read_trace(trace)
    return SippRun(process.returncode, err, call_id, sent, received, text)


def call_sipp(lab: B2buaLab, tmp: Path, invite: str, scenario: str = "sdp_offer.xml",
              user: str = "echo", reoffer: str = "") -> SippRun:
    """Send `invite` with sipp and return what it sent and received."""
    # sipp matches responses to its call by Call-ID, so it must generate the
    # Call-ID; -cid_str makes it one the test knows (%u is the call number).
    token = uuid.uuid4().hex
    replacements = {
        "@INVITE@": invite,
        "@REQUEST_URI@": f"sip:{user}@{lab.edge_ip}:{EDGE_PORT}",
        "@REOFFER@": reoffer,
    }
    process = start_sipp(lab, tmp, scenario, replacements,
                         call_id_format=f"{token}-%u@%s")
    return finish_sipp(process, tmp / f"{SIPP_PORT}-messages.log",
                       f"{token}-1@{lab.far_ip}")


# ----- reading SDP without the product's parser --------------------------------


@dataclass
class Media:
    line: str
    attributes: list[str]

    @property
    def fields(self) -> list[str]:
        return self.line[2:].split(" ")

    @property
    def kind(self) -> str:
        return self.fields[0]

    @property
    def port(self) -> int:
        return int(self.fields[1].split("/")[0])

    @property
    def proto(self) -> str:
        return self.fields[2]

    @property
    def formats(self) -> list[str]:
        return self.fields[3:]

    def values(self, name: str) -> list[str]:
        prefix = f"a={name}:"
        return [a[len(prefix):] for a in self.attributes if a.startswith(prefix)]


def split_sdp(text: str) -> tuple[list[str], list[Media]]:
    session: list[str] = []
    media: list[Media] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            media.append(Media(line, []))
        elif media:
            media[-1].attributes.append(line)
        else:
            session.append(line)
    return session, media


def answer_sdp(response: SipMessage) -> tuple[list[str], list[Media]]:
    content_type = (response.content_type() or "").split(";")[0].strip().lower()
    assert content_type == "application/sdp", response.to_bytes()[:600]
    return split_sdp(response.body.decode())


def offer_crypto_tag(media: Media, mki: bool) -> str:
    for value in media.values("crypto"):
        if value.count("|") >= 2 and mki:
            return value.split()[0]
        if value.count("|") < 2 and not mki:
            return value.split()[0]
    raise AssertionError(f"offer has no crypto line with mki={mki}")


# ----- the lab ---------------------------------------------------------------


@pytest.fixture(scope="module")
def b2bua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    tmp = tmp_path_factory.mktemp("sdp")
    # The samples' From domains are the lab's own, so every call is local.
    config: dict[str, Any] = {"classification": {
        "local_domains": ["lab.test", "example.com", "partner.example.net",
                          "video.example.net"],
        "internal_networks": ["10.99.0.0/16", "127.0.0.0/8"],
    }}
    lab = B2buaLab(tmp, subnet=SUBNET, workers=2, config=config)
    try:
        lab.start()
        assert lab.far is not None
        device = next(line.split()[1] for line in
                      lab.far.run(["ip", "-o", "-4", "addr", "show"]).stdout
                      .splitlines() if f" {lab.far_ip}/" in line)
        lab.far.run(["ip", "-6", "addr", "add", f"{FAR_IPV6}/64", "dev", device,
                     "nodad"])
        yield lab
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def no_leaks(b2bua: B2buaLab) -> Iterator[None]:
    yield
    for status in b2bua.wait_idle():
        assert status["bridged_calls"] == 0, status
        assert status["pjsua_calls"] == 0, status



def answered(run: SippRun) -> SipMessage:
    final = run.final()
    warning = final.header("Warning")
    assert final.status == 200, f"{final.status} {final.reason}: {warning}"
    assert run.exit_code == 0, f"sipp failed: {run.stderr[-1500:]}"
    return final


def offered_sdp(run: SippRun) -> str:
    """Return the SDP (or multipart) body sipp really sent in its INVITE."""
    invite = next(m for m in run.sent if m.method == "INVITE")
    length = int(invite.header("Content-Length") or -1)
    assert length == len(invite.body), "sipp sent a wrong Content-Length"
    return invite.body.decode()


# ----- answers to the samples --------------------------------------------------


def test_bfcp_and_slides_refused(b2bua: B2buaLab, tmp_path: Path) -> None:
    run = call_sipp(b2bua, tmp_path, build_invite(b2bua, BFCP_SAMPLE, "echo"))
    _, offer = split_sdp(offered_sdp(run))
    _, answer = answer_sdp(answered(run))
    assert [m.kind for m in answer] == [m.kind for m in offer]
    audio, main_video, slides, bfcp = answer
    assert audio.port != 0
    assert bfcp.port == 0
    assert bfcp.proto == "UDP/BFCP"
    assert bfcp.formats == ["*"]
    assert bfcp.attributes == []
    assert slides.port == 0
    assert slides.formats == offer[2].formats
    assert slides.attributes == []
    assert main_video.port == 0
    assert main_video.formats == offer[1].formats


@pytest.mark.parametrize("sample", [
    REMOTE_SAMPLE,
    LOCAL_SAMPLE,
], ids=["sfb-remote", "lync-local"])
def test_lync_offer_answered(b2bua: B2buaLab, tmp_path: Path, sample: Path) -> None:
    run = call_sipp(b2bua, tmp_path, build_invite(b2bua, sample, "echo"))
    _, offer = split_sdp(offered_sdp(run))
    _, answer = answer_sdp(answered(run))
    assert [m.kind for m in answer] == [m.kind for m in offer]
    assert [m.proto for m in answer] == [m.proto for m in offer]
    assert answer[0].port != 0
    chosen = [value.split()[0] for value in answer[0].values("crypto")]
    assert chosen == [offer_crypto_tag(offer[0], mki=False)]
    assert all(value.count("|") < 2 for value in answer[0].values("crypto"))
    assert answer[0].values("encryption"), "offer had a=encryption, answer has none"
    for media in answer[1:]:
        assert media.port == 0


@pytest.mark.parametrize("fallback_first", [True, False],
                         ids=["fallback-first", "fallback-last"])
def test_dual_sdp_gives_one_answer(b2bua: B2buaLab, tmp_path: Path,
                                   fallback_first: bool) -> None:
    def order_parts(body: str) -> str:
        boundary = "------=_NextPart_000_0042_01D5A1B2.C3D4E5F6"
        preamble, first, second, closing = body.split(boundary)
        if not fallback_first:
            first, second = second, first
        return boundary.join([preamble, first, second, closing])

    invite = build_invite(b2bua, FEDERATION_SAMPLE, "echo", order_parts)
    run = call_sipp(b2bua, tmp_path, invite)
    sent = offered_sdp(run)
    assert (sent.index("ms-proxy-2007fallback") < sent.index("a=ice-ufrag")) \
        == fallback_first
    final = answered(run)
    _, answer = answer_sdp(final)
    assert len(answer) == 1
    assert answer[0].kind == "audio"
    assert answer[0].port != 0
    # The ICE v19 part offers tag 3 without MKI; the legacy part has the
    # same tags, so the ICE attributes tell which part was answered.
    chosen = [value.split()[0] for value in answer[0].values("crypto")]
    assert chosen == ["3"]
    assert answer[0].values("encryption") == ["required"]
    assert answer[0].values("ice-ufrag"), "answer is not for the ICE v19 part"


# ----- rejected offers -------------------------------------------------------------


def drop_lines(prefix: str) -> Callable[[str], str]:
    def edit(body: str) -> str:
        return "\n".join(line for line in body.split("\n")
                         if not line.startswith(prefix))
    return edit


def test_mki_only_offer_gets_488(b2bua: B2buaLab, tmp_path: Path) -> None:
    invite = build_invite(b2bua, LOCAL_SAMPLE, "echo", drop_lines("a=crypto:3 "))
    run = call_sipp(b2bua, tmp_path, invite)
    assert "a=crypto:2 " in offered_sdp(run)
    final = run.final()
    assert final.status == 488
    assert final.header("Warning"), "488 without a Warning header"
    assert run.exit_code == 0, run.stderr[-1500:]


def test_oversized_headers_get_513(b2bua: B2buaLab, tmp_path: Path) -> None:
    padding = tuple(f"X-Padding-{i}: {'p' * 200}" for i in range(20))
    invite = build_invite(b2bua, LOCAL_SAMPLE, "echo", extra_headers=padding)
    run = call_sipp(b2bua, tmp_path, invite)
    final = run.final()
    assert final.status == 513
    assert final.header("Warning")


def test_oversized_sdp_gets_488(b2bua: B2buaLab, tmp_path: Path) -> None:
    def add_codecs(body: str) -> str:
        extra = "\n".join(f"a=fmtp:0 x-padding-{i}={'f' * 60}" for i in range(60))
        return body + "\n" + extra

    run = call_sipp(b2bua, tmp_path,
                    build_invite(b2bua, LOCAL_SAMPLE, "echo", add_codecs))
    final = run.final()
    assert final.status in (488, 513)
    assert final.header("Warning")


# ----- hostile SDP -------------------------------------------------------------------


def replace_line(prefix: str, new: str) -> Callable[[str], str]:
    def edit(body: str) -> str:
        lines = body.split("\n")
        index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
        lines[index] = new
        return "\n".join(lines)
    return edit


def many_candidates(body: str) -> str:
    lines = body.split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith("a=candidate"))
    extra = [f"a=candidate:{9 + n} 1 UDP {2130706000 - n} 10.99.{SUBNET}.2 "
             f"{MEDIA_PORT + 10 + n} typ host" for n in range(300)]
    return "\n".join(lines[:index] + extra + lines[index:])


HOSTILE_CASES = {
    "payload-type-overflow": replace_line(
        "m=audio", f"m=audio {MEDIA_PORT} RTP/SAVP 4294967296 0 101"),
    "truncated-candidate": replace_line("a=candidate:1 1", "a=candidate:1 1 UDP 21"),
    "empty-crypto-key": replace_line(
        "a=crypto:3", "a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:|2^31"),
    "300-candidates": many_candidates,
    "bad-rtcp": lambda body: body.replace(
        "a=maxptime:200", "a=maxptime:200\na=rtcp:99999999 IN IP9 nowhere"),
}


def test_hostile_sdp_survived(b2bua: B2buaLab, tmp_path: Path) -> None:
    pids_before = sorted(s["pid"] for s in b2bua.worker_status())
    outcomes = {}
    for case, edit in HOSTILE_CASES.items():
        folder = tmp_path / case
        folder.mkdir()
        run = call_sipp(b2bua, folder, build_invite(b2bua, LOCAL_SAMPLE, "echo", edit))
        final = run.final()
        outcomes[case] = final.status
        assert final.status == 200 or 400 <= final.status < 500, (case, final.status)
        if 400 <= final.status < 500:
            assert final.header("Warning"), f"{case}: {final.status} without Warning"
        assert run.exit_code == 0, (case, run.stderr[-1500:])
    # A normal call still works and no worker was restarted.
    run = call_sipp(b2bua, tmp_path, build_invite(b2bua, LOCAL_SAMPLE, "echo"))
    answered(run)
    assert sorted(s["pid"] for s in b2bua.worker_status()) == pids_before, outcomes


# ----- the target leg -------------------------------------------------------------


def start_target(b2bua: B2buaLab, tmp: Path) -> subprocess.Popen[str]:
    process = start_sipp(b2bua, tmp, "sdp_target.xml", {}, port=TARGET_PORT,
                         media_port=TARGET_MEDIA_PORT, uas=True)
    return process


def make_hold_offer(body: str) -> str:
    """Turn an offer into a hold offer: c=0.0.0.0 and a=sendonly on every m-line."""
    body = body.replace(f"c=IN IP4 10.99.{SUBNET}.2", "c=IN IP4 0.0.0.0")
    body = body.replace("a=sendrecv\n", "")
    lines = []
    for line in body.split("\n"):
        if line.startswith("m=") and lines:
            lines.append("a=sendonly")
        lines.append(line)
    return "\n".join([*lines, "a=sendonly"])


@pytest.mark.parametrize("sample,edit", [
    pytest.param(BFCP_SAMPLE, None),
    (LOCAL_SAMPLE, make_hold_offer),
], ids=["bfcp-video", "lync-hold"])
def test_target_gets_audio_only(b2bua: B2buaLab, tmp_path: Path, sample: Path,
                                edit: Callable[[str], str] | None) -> None:
    target = start_target(b2bua, tmp_path)
    invite = build_invite(b2bua, sample, TRUNK_USER, edit)
    run = call_sipp(b2bua, tmp_path, invite, user=TRUNK_USER)
    if edit is not None:
        assert "c=IN IP4 0.0.0.0" in offered_sdp(run)
    answered(run)
    target_run = finish_sipp(target, tmp_path / f"{TARGET_PORT}-messages.log")
    invites = target_run.requests("INVITE")
    assert len(invites) == 1, target_run.trace[-2000:]
    session, media = split_sdp(invites[0].body.decode())
    assert [m.kind for m in media] == ["audio"]
    assert media[0].port != 0
    lines = session + [line for m in media for line in m.attributes]
    assert "c=IN IP4 0.0.0.0" not in lines
    assert "a=sendonly" not in lines
    assert "a=inactive" not in lines
    assert not any("BFCP" in m.proto for m in media)
    assert target_run.exit_code == 0, target_run.stderr[-1500:]


def test_appsharing_reinvite_stays_on_leg(b2bua: B2buaLab, tmp_path: Path) -> None:
    target = start_target(b2bua, tmp_path)
    invite = build_invite(b2bua, LOCAL_SAMPLE, TRUNK_USER)
    reoffer = sdp_of_sample(b2bua, APPSHARING_SAMPLE)
    run = call_sipp(b2bua, tmp_path, invite, "sdp_reinvite.xml", TRUNK_USER,
                    reoffer)
    target_run = finish_sipp(target, tmp_path / f"{TARGET_PORT}-messages.log")
    answered(run)
    reanswer = run.final(cseq=2)
    assert reanswer.status == 200, reanswer.status
    _, answer = answer_sdp(reanswer)
    assert [m.kind for m in answer] == ["audio", "applicationsharing"]
    assert answer[0].port != 0
    assert answer[1].port == 0
    assert answer[1].proto == "TCP/RTP/AVP"
    assert answer[1].formats == ["127"]
    assert [a for a in answer[1].attributes if a.startswith("a=")] == []
    assert len(target_run.requests("INVITE")) == 1, "re-INVITE reached the target"
    assert target_run.exit_code == 0, target_run.stderr[-1500:]
