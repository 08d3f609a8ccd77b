"""scripts/make-certs: a lab CA and a server certificate that chains to it."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make-certs"
FILES = ("ca.crt", "ca.key", "server.crt", "server.key")


def make_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=30
    )


def server_text(folder: Path) -> str:
    result = openssl("x509", "-in", str(folder / "server.crt"), "-noout", "-text")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("key_type", "key_text"),
    [("ec", "Public-Key: (256 bit)"), ("rsa", "Public-Key: (2048 bit)")],
)
def test_chain_verifies(tmp_path: Path, key_type: str, key_text: str) -> None:
    out = tmp_path / "certs"
    result = make_certs("--out", str(out), "--key-type", key_type)
    assert result.returncode == 0, result.stderr
    for name in FILES:
        assert (out / name).is_file(), name
    verify = openssl(
        "verify", "-CAfile", str(out / "ca.crt"), "-purpose", "sslserver",
        str(out / "server.crt"),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip().endswith(": OK")
    assert key_text in server_text(out)


def test_private_keys_owner_only(tmp_path: Path) -> None:
    assert make_certs("--out", str(tmp_path)).returncode == 0
    for name in ("ca.key", "server.key"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"


def test_key_matches_certificate(tmp_path: Path) -> None:
    assert make_certs("--out", str(tmp_path)).returncode == 0
    from_key = openssl("pkey", "-in", str(tmp_path / "server.key"), "-pubout")
    from_cert = openssl("x509", "-in", str(tmp_path / "server.crt"), "-noout",
                        "-pubkey")
    assert from_key.returncode == 0, from_key.stderr
    assert from_cert.returncode == 0, from_cert.stderr
    assert from_key.stdout == from_cert.stdout


def test_subject_alt_names(tmp_path: Path) -> None:
    result = make_certs("--out", str(tmp_path), "sip.example.test", "10.99.7.1")
    assert result.returncode == 0, result.stderr
    text = server_text(tmp_path)
    assert "IP Address:127.0.0.1" in text
    assert "DNS:localhost" in text
    assert "DNS:sip.example.test" in text
    assert "IP Address:10.99.7.1" in text
    assert "CN = sip.example.test" in text


def test_verify_by_name(tmp_path: Path) -> None:
    assert make_certs("--out", str(tmp_path), "sip.example.test").returncode == 0
    common = ["verify", "-CAfile", str(tmp_path / "ca.crt")]
    good = openssl(*common, "-verify_hostname", "sip.example.test",
                   str(tmp_path / "server.crt"))
    assert good.returncode == 0, good.stdout + good.stderr
    local = openssl(*common, "-verify_ip", "127.0.0.1", str(tmp_path / "server.crt"))
    assert local.returncode == 0, local.stdout + local.stderr
    wrong = openssl(*common, "-verify_hostname", "other.example.test",
                    str(tmp_path / "server.crt"))
    assert wrong.returncode != 0


def test_no_overwrite_without_force(tmp_path: Path) -> None:
    assert make_certs("--out", str(tmp_path)).returncode == 0
    before = (tmp_path / "server.crt").read_bytes()
    again = make_certs("--out", str(tmp_path))
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert (tmp_path / "server.crt").read_bytes() == before
    forced = make_certs("--out", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "server.crt").read_bytes() != before


@pytest.mark.parametrize(
    "args",
    [
        ["--key-type", "dsa"],
        ["--days", "0"],
        ["--days", "soon"],
        ["bad name"],
        ["host,DNS:evil.example.test"],
        ["--unknown"],
    ],
)
def test_invalid_arguments_rejected(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "certs"
    result = make_certs("--out", str(out), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert not out.exists(), "nothing may be written for invalid arguments"
