"""Config loading: defaults, every key, located errors, JSON round trip, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from b2bua.config import (
    ClassPolicy,
    Config,
    ConfigError,
    Listener,
    TurnServer,
    check_config_command,
    interface_ipv4_addresses,
    load_config,
    resolve_media_address,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "config"
REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "b2bua.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def test_builtin_default_values() -> None:
    config = load_config(None)
    assert config.source_file is None
    assert config.listen == (Listener("127.0.0.1", 5060, ("udp", "tcp"), True),)
    assert config.media.address == "auto"
    assert (config.media.port_min, config.media.port_max) == (20000, 29999)
    assert config.ice.stun == ()
    assert config.ice.turn == ()
    assert config.srtp == "optional"

    assert config.workers.count == max(2, 8 * (os.cpu_count() or 1))
    assert config.workers.sip_port_base == 5100
    assert config.workers.max_setups_per_second == 4.0
    assert config.workers.media_thread is False
    assert config.edge.internal_address == "127.0.0.1"
    assert config.edge.internal_port == 5070
    assert config.calls.no_answer_timeout == 30
    assert config.calls.max_duration == 0

    assert config.classification == {
        "local_domains": ("localhost", "127.0.0.1"),
        "internal_networks": ("127.0.0.0/8",),
        "edge_servers": (),
        "trusted_peers": (),
        "public_cloud": "federation",
    }
    assert config.federation == {"allow": (), "deny": ()}
    assert config.classes == {
        "local": ClassPolicy(ice=True, turn=False, srtp="optional"),
        "remote": ClassPolicy(ice=True, turn=True, srtp="optional"),
        "federation": ClassPolicy(ice=True, turn=True, srtp="optional"),
    }
    assert config.expose_class_header is False
    assert config.dialplan_file == str(REPO / "dialplans" / "default.yaml")
    assert config.runtime_dir == "/tmp/b2bua-run"
    assert config.log_level == "info"


def test_empty_file_equals_builtin_default(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing set\n")
    from_file = load_config(path)
    builtin = load_config(None)
    assert from_file.listen == builtin.listen
    assert from_file.workers == builtin.workers
    assert from_file.classes == builtin.classes
    assert from_file.dialplan.rules == builtin.dialplan.rules
    assert from_file.runtime_dir == "/tmp/b2bua-run"


def test_full_config_every_key() -> None:
    config = load_config(str(DATA / "full.yaml"))
    assert config.source_file == str(DATA / "full.yaml")
    assert config.listen == (
        Listener("127.0.0.1", 5062, ("udp",), False),
        Listener("127.0.0.2", 5062, ("tcp", "udp"), True),
    )
    assert config.media.address == "127.0.0.1"
    assert (config.media.port_min, config.media.port_max) == (30000, 30999)
    assert config.ice.stun == ("127.0.0.1:3478", "127.0.0.1:3479", "[::1]:3480")
    assert config.ice.turn == (
        TurnServer("127.0.0.1:3478", "tcp", "alice", "secret"),
        TurnServer("localhost:5349", "tls", "bob", "hunter2"),
    )
    assert config.srtp == "required"

    assert config.workers.count == 3
    assert config.workers.sip_port_base == 6100
    assert config.workers.max_setups_per_second == 2.5
    assert config.workers.media_thread is True
    assert config.edge.internal_port == 6070
    assert config.calls.no_answer_timeout == 20
    assert config.calls.max_duration == 3600

    assert config.classification["local_domains"] == ("example.com",)
    assert config.classification["internal_networks"] == (
        "10.0.0.0/8",
        "192.168.1.7/32",
    )
    assert config.classification["edge_servers"] == (
        "edge.example.com",
        "192.0.2.10/32",
        "198.51.100.0/24",
    )
    assert config.classification["trusted_peers"] == (
        "192.0.2.10/32",
        "proxy.example.com",
    )
    assert config.classification["public_cloud"] == "remote"
    assert config.federation == {
        "allow": ("partner.example.net",),
        "deny": ("blocked.example.org",),
    }

    # A bare `off` is YAML false, which must still mean srtp off.
    assert config.classes["local"] == ClassPolicy(ice=False, turn=False, srtp="off")
    assert config.classes["remote"] == ClassPolicy(ice=True, turn=True, srtp="required")
    assert config.expose_class_header is True

    assert config.dialplan_file == str(DATA / "trunk.yaml")
    assert config.runtime_dir == str(DATA / "run")
    assert config.log_level == "debug"
    assert len(config.dialplan.rules) == 1


def test_turn_password_not_in_repr() -> None:
    config = load_config(str(DATA / "full.yaml"))
    assert "secret" not in repr(config)
    assert "hunter2" not in repr(config.ice.turn)


def test_to_dict_from_dict_round_trip() -> None:
    config = load_config(str(DATA / "full.yaml"))
    data = json.loads(json.dumps(config.to_dict()))
    rebuilt = Config.from_dict(data)
    assert rebuilt == config
    assert rebuilt.dialplan.route("9555", "x", None).uri == (
        "sip:555@127.0.0.1:5080;transport=tcp"
    )


def test_from_dict_rejects_bad_value() -> None:
    data = load_config(None).to_dict()
    data["workers"]["count"] = 0
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert str(info.value) == (
        "<dict>: workers.count: invalid value 0; allowed: auto or 1..256"
    )


# Each case: config text, then the exact error; FILE stands for the path.
ERROR_CASES = [
    (
        "unknown top key",
        "listen: []\nmedai: {}\n",
        "FILE:2: medai: unknown key 'medai'; allowed: listen, media, ice, srtp, "
        "workers, edge, calls, classification, federation, classes, "
        "expose_class_header, dialplan, runtime_dir, log_level, services",
    ),
    (
        "unknown nested key",
        "media:\n  address: auto\n  port_mn: 1\n",
        "FILE:3: media.port_mn: unknown key 'port_mn'; allowed: address, "
        "port_min, port_max",
    ),
    (
        "wrong type",
        "workers:\n  sip_port_base: '5100'\n",
        "FILE:2: workers.sip_port_base: expected an integer, got string '5100'",
    ),
    (
        "port out of range",
        "listen:\n  - port: 5060\n  - port: 70000\n",
        "FILE:3: listen[1].port: invalid value 70000; allowed: 1..65535",
    ),
    (
        "bad enum",
        "srtp: mandatory\n",
        "FILE:1: srtp: invalid value 'mandatory'; allowed: off, optional, required",
    ),
    (
        "yaml on is not an srtp mode",
        "srtp: on\n",
        "FILE:1: srtp: invalid value boolean true; allowed: off, optional, required",
    ),
    (
        "tls transport",
        "listen:\n  - transports: [udp, tls]\n",
        "FILE:2: listen[0].transports: tls is not supported yet; allowed: udp, tcp",
    ),
    (
        "no listener",
        "listen: []\n",
        "FILE:1: listen: at least one listener is required",
    ),
    (
        "bad listen address",
        "listen:\n  - address: localhost\n",
        "FILE:2: listen[0].address: invalid IP address 'localhost'",
    ),
    (
        "media address wildcard",
        "media: {address: 0.0.0.0}\n",
        "FILE:1: media.address: 0.0.0.0 cannot be sent in SDP; give an interface "
        "address or auto",
    ),
    (
        "port range reversed",
        "media:\n  port_min: 30000\n  port_max: 20000\n",
        "FILE:3: media.port_max: must be >= media.port_min (30000)",
    ),
    (
        "bad cidr",
        "classification:\n  internal_networks:\n    - 10.0.0.0/8\n    - 10.0.0/33\n",
        "FILE:4: classification.internal_networks[1]: invalid network '10.0.0/33'; "
        "expected a CIDR such as 10.0.0.0/8",
    ),
    (
        "bad stun port",
        "ice:\n  stun: ['127.0.0.1:99999']\n",
        "FILE:2: ice.stun[0]: invalid port in '127.0.0.1:99999'; allowed: 1..65535",
    ),
    (
        "turn without password",
        "ice:\n  turn:\n    - server: 127.0.0.1\n      username: u\n",
        "FILE:3: ice.turn[0].password: missing key; a TURN server needs server, "
        "username and password",
    ),
    (
        "unknown class",
        "classes:\n  guest: {ice: true}\n",
        "FILE:2: classes.guest: unknown key 'guest'; allowed: local, remote, "
        "federation",
    ),
    (
        "worker count",
        "workers: {count: many}\n",
        "FILE:1: workers.count: invalid value 'many'; allowed: auto or 1..256",
    ),
    (
        "worker ports past 65535",
        "workers: {count: 4, sip_port_base: 65534}\n",
        "FILE:1: workers.sip_port_base: 4 workers need ports up to 65537; the "
        "maximum is 65535",
    ),
    (
        "worker port clash",
        "listen:\n  - port: 5101\nworkers:\n  count: 2\n  sip_port_base: 5100\n",
        "FILE:5: workers.sip_port_base: port 5101 is already used by listen[0]",
    ),
    (
        "duplicate listener",
        "listen:\n  - port: 5060\n  - address: 0.0.0.0\n    port: 5060\n",
        "FILE:4: listen[1].port: port 5060 is already used by listen[0]",
    ),
    (
        "edge port clash",
        "listen:\n  - port: 5070\n",
        "FILE:1: edge.internal_port: port 5070 is already used by listen[0]",
    ),
    (
        "federation allow and deny",
        "federation:\n  allow: [a.example]\n  deny: [A.example]\n",
        "FILE:3: federation.deny: domain 'a.example' is in both allow and deny",
    ),
    (
        "bad peer",
        "classification:\n  trusted_peers: [10.0.0.0/8, 'not a host']\n",
        "FILE:2: classification.trusted_peers[1]: invalid peer 'not a host'; "
        "expected an address, CIDR or DNS name",
    ),
    (
        "bad domain",
        "classification:\n  local_domains: ['exa mple.com']\n",
        "FILE:2: classification.local_domains[0]: invalid domain 'exa mple.com'; "
        "expected a DNS name",
    ),
    (
        "duplicate key",
        "log_level: info\nsrtp: off\nlog_level: debug\n",
        "FILE:3: log_level: duplicate key",
    ),
    (
        "broken yaml",
        "media:\n  address: auto\n port_min: 1\n",
        "FILE:3: invalid YAML: expected <block end>, but found '<block mapping "
        "start>' (while parsing a block mapping)",
    ),
    (
        "top level not a mapping",
        "- listen\n",
        "FILE:1: (top level): expected a mapping, got a list",
    ),
    (
        "missing dialplan",
        "log_level: info\ndialplan: nowhere.yaml\n",
        "FILE:2: dialplan: dialplan file '{DIR}/nowhere.yaml' not found",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_config_error_message(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected.replace("FILE", path).replace(
        "{DIR}", str(tmp_path)
    )


def test_error_attributes(tmp_path: Path) -> None:
    path = write(tmp_path, "calls:\n  max_duration: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.file == path
    assert error.line == 2
    assert error.key_path == "calls.max_duration"
    assert error.message == "invalid value -1; allowed: >= 0"


def test_missing_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: file not found"
    assert info.value.line is None


def test_dialplan_error_names_dialplan_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(DATA / "uses-bad-target.yaml"))
    assert str(info.value) == (
        "bad-target.yaml:15: rules[3].target: unknown target 'trunk2'; "
        "known: trunk, echo, tone"
    )
    assert info.value.line == 15


@pytest.mark.parametrize("name", ["default.yaml", "example-trunk.yaml"])
def test_shipped_dialplan_loads(tmp_path: Path, name: str) -> None:
    shutil.copy(REPO / "dialplans" / name, tmp_path / name)
    config = load_config(write(tmp_path, f"dialplan: {name}\n"))
    assert config.dialplan.rules


def test_media_address_explicit() -> None:
    config = load_config(str(DATA / "full.yaml"))
    assert resolve_media_address(config) == "127.0.0.1"


def test_media_address_auto_skips_loopback() -> None:
    addresses = interface_ipv4_addresses()
    if not addresses:
        pytest.skip("this host has no non-loopback IPv4 interface")
    resolved = resolve_media_address(load_config(None))
    assert resolved == addresses[0][1]
    assert not resolved.startswith("127.")


def test_media_address_auto_fails_without_interface() -> None:
    # A fresh network namespace has only a loopback interface, and it is down.
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    code = (
        "from b2bua.config import load_config, resolve_media_address\n"
        "resolve_media_address(load_config(None))\n"
    )
    result = subprocess.run(
        [unshare, "--net", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip("no permission to create a network namespace")
    assert result.returncode == 1
    assert (
        "<built-in default>: media.address: auto found no interface with a "
        "non-loopback IPv4 address; set an address" in result.stderr
    )


def test_check_config_ok() -> None:
    result = CliRunner().invoke(
        check_config_command, ["--config", str(DATA / "full.yaml")]
    )
    assert result.exit_code == 0
    assert result.output == "config OK: 2 listeners, 1 rules, 3 workers\n"


def test_check_config_builtin_default() -> None:
    result = CliRunner().invoke(check_config_command, [])
    workers = max(2, 8 * (os.cpu_count() or 1))
    assert result.exit_code == 0
    assert result.output == f"config OK: 1 listeners, 2 rules, {workers} workers\n"


def test_check_config_error_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: loud\n")
    result = CliRunner().invoke(check_config_command, ["--config", path])
    assert result.exit_code == 2
    assert result.output == (
        f"{path}:1: log_level: invalid value 'loud'; allowed: debug, info, "
        "warning, error\n"
    )
    assert "Traceback" not in result.output


def test_federation_patterns_deny_wins(tmp_path: Path) -> None:
    from b2bua.classify import ClassifyPolicy, check_federation, classify
    from b2bua.sipmsg import parse_message

    path = tmp_path / "fed.yaml"
    path.write_text(
        "federation:\n  allow: ['*.partner.example']\n"
        "  deny: [bad.partner.example]\n"
    )
    config = load_config(str(path))
    assert config.federation["allow"] == ("*.partner.example",)
    policy = ClassifyPolicy.from_sections(config.classification, config.federation)
    verdicts = {}
    for domain in ("ok.partner.example", "bad.partner.example"):
        message = parse_message(
            f"INVITE sip:room@localhost SIP/2.0\r\n"
            f"From: <sip:bob@{domain}>;tag=1\r\nTo: <sip:room@localhost>\r\n"
            "Call-ID: fed\r\nCSeq: 1 INVITE\r\n\r\n".encode()
        )
        result = classify(message, "203.0.113.9", policy)
        assert result.call_class == "federation"
        verdicts[domain] = check_federation(result, message, policy)
    assert verdicts["ok.partner.example"] is None
    rejection = verdicts["bad.partner.example"]
    assert rejection is not None
    assert rejection.status == 403


def test_federation_pattern_invalid(tmp_path: Path) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text("federation:\n  allow: ['*bad*']\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "federation.allow[0]" in str(caught.value)
    assert "*.name for its subdomains" in str(caught.value)


def test_plain_callers_get_noice_policy(tmp_path: Path) -> None:
    from b2bua.supervisor import service_policies

    path = write(tmp_path, """
        listen: [{address: 127.0.0.1, port: 5060, ice: true}]
        ice: {turn: [{server: "127.0.0.1:3478", username: u, password: p}]}
        classes:
          local: {ice: true, turn: false, srtp: optional}
          remote: {ice: true, turn: true, srtp: optional}
          federation: {ice: true, turn: true, srtp: required,
                       plain_callers_via_turn: true}
    """)
    config = load_config(path)
    assert config.classes["federation"].plain_callers_via_turn is True
    assert config.classes["local"].plain_callers_via_turn is False
    # Federation keeps ICE and TURN for every caller, so it adds no
    # noice-noturn-required account.
    assert service_policies(config, config.services[0]) == [
        "ice-noturn-optional", "ice-turn-optional", "ice-turn-required",
        "noice-noturn-optional",
    ]


def test_plain_callers_via_turn_must_be_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, "classes: {remote: {plain_callers_via_turn: maybe}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "classes.remote.plain_callers_via_turn" in str(info.value)


@pytest.mark.parametrize("policy", ["ice: false, turn: true", "ice: true, turn: false"])
def test_plain_callers_via_turn_needs_ice_and_turn(tmp_path: Path, policy: str) -> None:
    path = write(tmp_path, "classes:\n"
                           "  remote: {ice: true}\n"
                           f"  federation: {{{policy}, plain_callers_via_turn: true}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert ":3: classes.federation.plain_callers_via_turn:" in message
    assert "needs ice: true and turn: true" in message


def test_plain_callers_via_turn_needs_turn_server(tmp_path: Path) -> None:
    path = write(tmp_path, "classes:\n"
                           "  remote: {ice: true}\n"
                           "  federation: {ice: true, turn: true, "
                           "plain_callers_via_turn: true}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert ":3: classes.federation.plain_callers_via_turn:" in message
    assert "ice.turn is empty" in message
