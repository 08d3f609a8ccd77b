"""Live call classification: sipp sends Lync-shaped INVITEs to a running B2BUA.

Each INVITE is built from a sample in tests/data/samples with every address
replaced by the sender's own address in the `far` namespace. sipp sends it
from one of several addresses there, which the config calls a trusted peer,
an edge server, inside or outside the internal networks. The tests check
the final status, the class and rule that the edge logged for the Call-ID,
and the X-B2BUA-Class header on the 200. Needs root (network namespaces).

The two labs run one after the other (class-scoped fixtures), because both
create namespaces of the same names.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from b2bua.classify import decode_class_header
from b2bua.sipbody import select_sdp
from b2bua.sipmsg import SipMessage, parse_message
from tests.live.b2bua_lab import EDGE_PORT, B2buaLab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns")

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = DATA / "samples"
SIPP_DIR = DATA / "sipp"
REMOTE_SAMPLE = SAMPLES / "sfb-remote-invite.sip"
LOCAL_SAMPLE = SAMPLES / "lync-local-invite.sip"
FEDERATION_SAMPLE = SAMPLES / "lync2013-federation-invite.sip"

EXPOSED_SUBNET = 30
HIDDEN_SUBNET = 31
SIPP_PORT = 5080
MEDIA_PORT = 6000
SIPP_TIMEOUT_S = 20
LOG_WAIT_S = 5.0
# Log steps that end a call: the worker's end line and the edge's 403.
ENDED = "ended ("
REJECTED = "rejected 403"
USER = "room"

# Last octet of each sender address in the far namespace. The internal
# networks are <subnet>.0/28, so OUTSIDE is on the same link but outside.
TRUSTED_PEER = 2
INSIDE = 3
EDGE_SERVER = 5
OUTSIDE = 40

# Documentation ranges (RFC 5737) used by the samples; none may be sent.
DOC_ADDRESS = re.compile(r"\b(?:192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}\b")
# Header lines of the sample that describe hops which do not exist in the
# lab. A Record-Route of them would send the worker's in-dialog requests
# to example.com.
DROPPED_HEADERS = frozenset(
    {"via", "record-route", "max-forwards", "call-id", "content-length",
     "content-type", "to", "contact"}
)
# SDP attributes that need ICE or SRTP from the peer; sipp does neither.
DROPPED_SDP_ATTRIBUTES = (
    "a=candidate:", "a=x-candidate", "a=ice-", "a=remote-candidates",
    "a=crypto", "a=cryptoscale", "a=encryption",
)
ROUTED_RE = re.compile(r"routed by rule (\S+) to (\S+)")


def classification_section(subnet: int) -> dict[str, Any]:
    base = f"10.99.{subnet}"
    return {
        "local_domains": ["example.com", "lab.test"],
        "internal_networks": [f"{base}.0/28", "127.0.0.0/8"],
        "edge_servers": [f"{base}.{EDGE_SERVER}"],
        "trusted_peers": [f"{base}.{TRUSTED_PEER}"],
    }


def class_dialplan() -> dict[str, Any]:
    """Route the same user to a different built-in target per class."""
    return {
        "rules": [
            {"name": "remote-echo", "match": {"user": f"^{USER}$", "class": "remote"},
             "target": "echo"},
            {"name": "local-tone", "match": {"user": f"^{USER}$", "class": "local"},
             "target": "tone"},
            {"name": "federation-echo",
             "match": {"user": f"^{USER}$", "class": "federation"},
             "target": "echo"},
        ],
    }


# ----- building the INVITE ---------------------------------------------------


def sample_sdp(message: SipMessage, address: str) -> str:
    """Reduce the sample's SDP to its first audio stream, plain RTP, no ICE."""
    selection = select_sdp(message.body, message.header("Content-Type") or "")
    assert selection is not None, "sample carries no SDP"
    lines: list[str] = []
    in_audio = False
    seen_audio = False
    for line in selection.sdp.decode().splitlines():
        if line.startswith("m="):
            in_audio = line.startswith("m=audio") and not seen_audio
            seen_audio = seen_audio or in_audio
            if in_audio:
                fields = line.split()
                line = " ".join(["m=audio", str(MEDIA_PORT), "RTP/AVP", *fields[3:]])
        if seen_audio and not in_audio:
            continue
        if line.startswith(DROPPED_SDP_ATTRIBUTES):
            continue
        if line.startswith("a=rtcp:"):
            line = f"a=rtcp:{MEDIA_PORT + 1}"
        lines.append(line)
    return DOC_ADDRESS.sub(address, "\n".join(lines)) + "\n"


def build_invite(sample: Path, source: str, edge_ip: str,
                 replace: dict[str, str | None] | None = None,
                 extra: tuple[tuple[str, str], ...] = ()) -> str:
    """Turn a sample INVITE into the message sipp sends from `source`.

    `replace` sets (or with None removes) headers of the sample by name, and
    `extra` adds headers. sipp fills in its Via branch and the
    Content-Length, and sends every line with CRLF.
    """
    message = parse_message(sample.read_bytes())
    replace = {name.lower(): value for name, value in (replace or {}).items()}
    target = f"sip:{USER}@{edge_ip}:{EDGE_PORT}"
    head = [
        f"INVITE {target} SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        "Max-Forwards: 70",
        "Call-ID: [call_id]",
        f"To: <{target}>",
        "Contact: <sip:[service]@[local_ip]:[local_port]>",
    ]
    for name, value in message.headers:
        key = name.lower()
        if key in DROPPED_HEADERS:
            continue
        if key in replace:
            replacement = replace.pop(key)
            if replacement is None:
                continue
            value = replacement
        head.append(f"{name}: {value}")
    head += [f"{name}: {value}" for name, value in replace.items() if value]
    head += [f"{name}: {value}" for name, value in extra]
    head += ["Content-Type: application/sdp", "Content-Length: [len]"]
    text = DOC_ADDRESS.sub(source, "\n".join(head))
    text += "\n\n" + sample_sdp(message, source)
    assert DOC_ADDRESS.search(text) is None, "a sample address would be sent"
    assert "example.com:" not in text.split("\n\n", 1)[1]
    return text


# ----- running sipp ----------------------------------------------------------


@dataclass
class SippResult:
    exit_code: int
    call_id: str
    responses: list[SipMessage] = field(default_factory=list)

    @property
    def final(self) -> SipMessage:
        finals = [r for r in self.responses
                  if r.status is not None and r.status >= 200]
        assert finals, f"no final response; sipp exit {self.exit_code}"
        return finals[0]


def received_messages(trace: Path) -> list[SipMessage]:
    """Parse the messages sipp logged as received in its -trace_msg file."""
    if not trace.exists():
        return []
    text = trace.read_text(errors="replace")
    messages = []
    for block in re.split(r"^-{20,}.*$", text, flags=re.MULTILINE):
        header, _, raw = block.strip("\n").partition("\n\n")
        if "received" not in header:
            continue
        data = raw.strip().replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
        messages.append(parse_message(data.encode()))
    return messages


def add_sender_addresses(lab: B2buaLab) -> None:
    """Give the far end of the veth link the extra sender addresses."""
    assert lab.far is not None
    listing = lab.far.run(["ip", "-o", "-4", "addr", "show"]).stdout
    device = next(line.split()[1] for line in listing.splitlines()
                  if f" {lab.far_ip}/" in line)
    for octet in (INSIDE, EDGE_SERVER, OUTSIDE):
        lab.far.run(["ip", "addr", "add", f"10.99.{lab.subnet}.{octet}/24",
                     "dev", device])


def send_invite(lab: B2buaLab, tmp: Path, sample: Path, sender: int,
                expect: int, replace: dict[str, str | None] | None = None,
                extra: tuple[tuple[str, str], ...] = ()) -> SippResult:
    """Send one INVITE with sipp from 10.99.<subnet>.<sender>.

    With `expect` 200 the scenario also sends ACK and BYE along the route
    set; otherwise it expects that final status and ACKs it.
    """
    assert lab.far is not None
    source = f"10.99.{lab.subnet}.{sender}"
    # sipp matches responses to its calls by Call-ID, so sipp generates the
    # Call-ID. With -cid_str it is predictable (%u is the call number, 1).
    token = uuid.uuid4().hex
    call_id = f"{token}-1@{source}"
    invite = build_invite(sample, source, lab.edge_ip, replace, extra)
    name = "invite_answered.xml" if expect == 200 else "invite_rejected.xml"
    scenario = (SIPP_DIR / name).read_text()
    scenario = scenario.replace("@INVITE@", invite)
    scenario = scenario.replace("@STATUS@", str(expect))
    scenario = scenario.replace("@REQUEST_URI@", f"sip:{USER}@{lab.edge_ip}:{EDGE_PORT}")
    scenario_path = tmp / name
    scenario_path.write_text(scenario)
    trace = tmp / "sipp-messages.log"
    process = lab.far.popen(
        ["sipp", f"{lab.edge_ip}:{EDGE_PORT}", "-sf", str(scenario_path),
         "-i", source, "-p", str(SIPP_PORT), "-mp", str(MEDIA_PORT),
         "-m", "1", "-cid_str", f"{token}-%u@%s", "-nostdin", "-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error",
         "-trace_msg", "-message_file", str(trace)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = process.communicate(timeout=SIPP_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise
    result = SippResult(process.returncode, call_id, received_messages(trace))
    assert result.exit_code == 0, (
        f"sipp failed ({result.exit_code}): {err[-800:]}\n"
        f"{trace.read_text(errors='replace')[-2000:] if trace.exists() else ''}"
    )
    return result


# ----- observing the B2BUA ---------------------------------------------------


def call_lines(lab: B2buaLab, call_id: str, last_step: str) -> list[str]:
    """Return the log lines of one call once its `last_step` line is written.

    Kamailio's lines reach the log through a relay thread, so they can lag
    behind the response that sipp has already received.
    """
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        lines = [line for line in lab.log_text().splitlines() if call_id in line]
        if any(last_step in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def logged_class(lines: list[str]) -> str | None:
    for line in lines:
        match = re.search(r"classified (local|remote|federation)", line)
        if match:
            return match.group(1)
    return None


def routed_rules(lines: list[str]) -> set[str]:
    return {m.group(1) for line in lines if (m := ROUTED_RE.search(line))}


def assert_idle(lab: B2buaLab) -> None:
    for status in lab.wait_idle():
        assert status["bridged_calls"] == 0, status
        assert status["pjsua_calls"] == 0, status
        assert status["conference_ports"] == 0, status


def start_lab(tmp: Path, subnet: int, **config: Any) -> B2buaLab:
    lab = B2buaLab(tmp, subnet=subnet, workers=1,
                   config={"classification": classification_section(subnet),
                           **config},
                   dialplan=class_dialplan())
    try:
        lab.start()
        add_sender_addresses(lab)
    except BaseException:
        lab.close()
        raise
    return lab


# ----- lab with X-B2BUA-Class exposed ----------------------------------------


@pytest.fixture(scope="class")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    federation = {"allow": ["partner.example.net", "sub.example.org"],
                  "deny": ["blocked.example.org"]}
    lab = start_lab(tmp_path_factory.mktemp("classify"), EXPOSED_SUBNET,
                    federation=federation, expose_class_header=True)
    try:
        yield lab
    finally:
        lab.close()


def exposed_class(response: SipMessage) -> str:
    value = response.header("X-B2BUA-Class")
    assert value, f"no X-B2BUA-Class on the {response.status}"
    return decode_class_header(value)[0]


ANSWERED_CASES = [
    # (case, sample, sender, header changes, class, rule)
    ("trusted InternetUser", REMOTE_SAMPLE, TRUSTED_PEER, {}, "remote",
     "remote-echo"),
    ("trusted DirectPartner", FEDERATION_SAMPLE, TRUSTED_PEER, {}, "federation",
     "federation-echo"),
    ("untrusted trust header", REMOTE_SAMPLE, INSIDE, {}, "local", "local-tone"),
    ("local domain inside", LOCAL_SAMPLE, INSIDE, {}, "local", "local-tone"),
    ("local domain outside", LOCAL_SAMPLE, OUTSIDE, {}, "remote", "remote-echo"),
    ("local domain from edge server", LOCAL_SAMPLE, EDGE_SERVER, {}, "remote",
     "remote-echo"),
    ("foreign domain without trust header", LOCAL_SAMPLE, INSIDE,
     {"From": "<sip:dan@sub.example.org>;tag=77aa",
      "P-Asserted-Identity": None}, "federation", "federation-echo"),
]


@pytest.mark.usefixtures("exposed")
class TestExposedClass:
    @pytest.fixture(autouse=True)
    def no_leaks(self, exposed: B2buaLab) -> Iterator[None]:
        yield
        assert_idle(exposed)

    @pytest.mark.parametrize(
        "sample,sender,replace,call_class,rule",
        [case[1:] for case in ANSWERED_CASES],
        ids=[case[0] for case in ANSWERED_CASES],
    )
    def test_class_picks_rule(self, exposed: B2buaLab, tmp_path: Path,
                              sample: Path, sender: int,
                              replace: dict[str, str | None], call_class: str,
                              rule: str) -> None:
        result = send_invite(exposed, tmp_path, sample, sender, 200, replace)
        assert result.final.status == 200
        assert exposed_class(result.final) == call_class
        lines = call_lines(exposed, result.call_id, ENDED)
        assert logged_class(lines) == call_class, lines
        assert routed_rules(lines) == {rule}, lines

    def test_untrusted_trust_header_warns(self, exposed: B2buaLab,
                                          tmp_path: Path) -> None:
        result = send_invite(exposed, tmp_path, REMOTE_SAMPLE, INSIDE, 200)
        lines = call_lines(exposed, result.call_id, ENDED)
        warnings = [line for line in lines if "WARNING" in line]
        assert any("ms-edge-proxy-message-trust ignored" in line
                   for line in warnings), lines

    def test_trusted_partner_with_local_domain(self, exposed: B2buaLab,
                                               tmp_path: Path) -> None:
        # The trust header decides the party even though the From domain is
        # local, and example.com is not on the federation allow list.
        trust = ("ms-source-type=DirectPartner;ms-ep-fqdn=edge.example.com;"
                 "ms-source-verified-user=verified")
        result = send_invite(exposed, tmp_path, REMOTE_SAMPLE, TRUSTED_PEER, 403,
                             {"ms-edge-proxy-message-trust": trust})
        lines = call_lines(exposed, result.call_id, REJECTED)
        assert logged_class(lines) == "federation", lines
        reason = result.final.header("Reason") or ""
        assert "example.com is not on the allow list" in reason

    def test_denied_domain_gets_403(self, exposed: B2buaLab, tmp_path: Path) -> None:
        result = send_invite(
            exposed, tmp_path, FEDERATION_SAMPLE, TRUSTED_PEER, 403,
            {"From": '"Eve" <sip:eve@blocked.example.org>;tag=4c2b1a0f9e'},
        )
        final = result.final
        assert final.status == 403
        reason = final.header("Reason") or ""
        assert reason.startswith("SIP;cause=403"), reason
        assert "blocked.example.org is on the deny list" in reason
        assert final.header("X-B2BUA-Class") is None
        lines = call_lines(exposed, result.call_id, REJECTED)
        assert logged_class(lines) == "federation", lines
        assert not routed_rules(lines), lines

    def test_domain_off_allow_list_gets_403(self, exposed: B2buaLab,
                                            tmp_path: Path) -> None:
        result = send_invite(
            exposed, tmp_path, FEDERATION_SAMPLE, TRUSTED_PEER, 403,
            {"From": '"Mal" <sip:mal@other.example.net>;tag=4c2b1a0f9e'},
        )
        reason = result.final.header("Reason") or ""
        assert "other.example.net is not on the allow list" in reason

    def test_caller_route_headers_stripped(self, exposed: B2buaLab,
                                           tmp_path: Path) -> None:
        forged_route = ('{"rule":"forged","target":"tone","kind":"tone",'
                        '"uri":null,"policy":"noice-noturn-off","headers":{}}')
        forged = (("X-B2BUA-Class", 'local; reason="forged by the caller"'),
                  ("X-B2BUA-Route", forged_route))
        result = send_invite(exposed, tmp_path, LOCAL_SAMPLE, OUTSIDE, 200,
                             extra=forged)
        assert exposed_class(result.final) == "remote"
        class_values = result.final.header_values("X-B2BUA-Class")
        assert len(class_values) == 1, class_values
        assert "forged" not in class_values[0]
        lines = call_lines(exposed, result.call_id, ENDED)
        # The worker logs the rule it read from X-B2BUA-Route, the edge the
        # rule it chose; both must be the edge's own.
        assert routed_rules(lines) == {"remote-echo"}, lines
        assert not any("forged" in line for line in lines), lines


# ----- lab with the defaults: no class header, no federation ----------------


@pytest.fixture(scope="class")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    lab = start_lab(tmp_path_factory.mktemp("classify_hidden"), HIDDEN_SUBNET)
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.usefixtures("hidden")
class TestHiddenClass:
    def test_class_header_absent(self, hidden: B2buaLab, tmp_path: Path) -> None:
        result = send_invite(hidden, tmp_path, REMOTE_SAMPLE, TRUSTED_PEER, 200)
        assert result.final.header("X-B2BUA-Class") is None
        lines = call_lines(hidden, result.call_id, ENDED)
        assert logged_class(lines) == "remote", lines
        assert_idle(hidden)

    def test_empty_allow_list_gets_403(self, hidden: B2buaLab,
                                       tmp_path: Path) -> None:
        result = send_invite(hidden, tmp_path, FEDERATION_SAMPLE, TRUSTED_PEER, 403)
        reason = result.final.header("Reason") or ""
        assert "the allow list is empty" in reason
        lines = call_lines(hidden, result.call_id, REJECTED)
        assert logged_class(lines) == "federation", lines
