"""Tests for `b2bua sdp FILE`, run through click's runner on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from b2bua.cli_sdp import sdp_command

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
GOLDEN = Path(__file__).resolve().parent.parent / "data" / "sdp"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(sdp_command, list(args))
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize("content_length", [b"0", b"99999", b"12"])
def test_sip_file_as_pasted(tmp_path: Path, eol: bytes, content_length: bytes) -> None:
    data = (SAMPLES / "lync2013-federation-invite.sip").read_bytes()
    data = data.replace(b"Content-Length: 0", b"Content-Length: " + content_length)
    file = write(tmp_path, "invite.sip", data.replace(b"\n", eol))
    code, out, err = run(file)
    assert code == 0
    assert "m=audio 51210 RTP/SAVP 114 9 0 8 101\n" in out
    assert "0.830" not in out
    assert "\r" not in out
    assert "# selected multipart/alternative SDP part 2 of 2" in err


def test_sdp_file(tmp_path: Path) -> None:
    file = str(GOLDEN / "block_bfcp_answer.in.sdp")
    code, out, _ = run(file, "--direction", "answer")
    assert code == 0
    assert out.endswith("m=video 0 RTP/AVP 98\nm=application 0 UDP/BFCP *\n")


def test_ice_offer_drops_bfcp(tmp_path: Path) -> None:
    file = str(SAMPLES / "video-bfcp-invite.sip")
    _, ice, _ = run(file, "--policy", "ice", "--direction", "offer")
    _, plain, _ = run(file, "--policy", "plain", "--direction", "offer")
    assert "BFCP" not in ice
    assert "m=application 0 UDP/BFCP *" in plain


def test_mki_only_offer_exit_1(tmp_path: Path) -> None:
    data = (SAMPLES / "lync-local-invite.sip").read_bytes()
    lines = [ln for ln in data.split(b"\n") if not ln.startswith(b"a=crypto:3")]
    file = write(tmp_path, "mki.sip", b"\n".join(lines))
    code, out, err = run(file)
    assert code == 1
    assert out == ""
    assert err.startswith(f"{file}: the B2BUA would answer 488: ")


@pytest.mark.parametrize(
    "data,problem",
    [
        (b"", "file is empty"),
        (b"hello\n", "invalid SIP message: not a SIP start line"),
        (b"v=0\nm=audio 1 RTP/AVP 0\n", "invalid SDP: SDP has no o= line"),
        (
            b"BYE sip:a@example.com SIP/2.0\nCall-ID: x\n\n",
            "the message carries no SDP",
        ),
    ],
)
def test_bad_file_exit_2(tmp_path: Path, data: bytes, problem: str) -> None:
    file = write(tmp_path, "bad.txt", data)
    code, out, err = run(file)
    assert code == 2
    assert out == ""
    assert err.startswith(f"{file}: {problem}")
    assert err.count("\n") == 1


def test_missing_file_exit_2(tmp_path: Path) -> None:
    file = str(tmp_path / "missing.sdp")
    code, _, err = run(file)
    assert code == 2
    assert err == f"{file}: cannot read the file: No such file or directory\n"
