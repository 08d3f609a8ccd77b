"""Dialplan parsing and routing, on plain data without files or sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from b2bua.config import load_dialplan
from b2bua.dialplan import Dialplan, NoRoute, Route, SchemaError, parse_dialplan

REPO = Path(__file__).resolve().parents[2]

PLAN: dict[str, Any] = {
    "targets": {
        "trunk": {
            "uri": "sip:{user}@127.0.0.1:5080",
            "srtp": "off",
            "answer_timeout": 45,
        },
        "lab": {"uri": "sips:{user}@127.0.0.2:5061", "ice": True, "srtp": "required"},
    },
    "rules": [
        {"name": "echo", "match": {"user": "echo"}, "target": "echo"},
        {"match": {"user": "tone", "domain": "example\\.com"}, "target": "tone"},
        {
            "name": "lab-only",
            "match": {"user": "7\\d+", "source": ["10.0.0.0/8", "2001:db8::/32"]},
            "target": "lab",
            "headers": {"X-Route": "lab", "X-Lab-Bench": 3},
        },
        {
            "name": "trunk-local",
            "match": {"user": "9\\d+", "class": ["local", "remote"]},
            "target": "trunk",
            "rewrite": {"pattern": "^9(\\d+)$", "replacement": "\\1"},
        },
        {
            "name": "strip-all",
            "match": {"user": "0+"},
            "target": "trunk",
            "rewrite": {"pattern": "0+", "replacement": ""},
        },
        {"name": "catch-echo", "match": {"class": "federation"}, "target": "echo"},
    ],
    "no_match": {"status": 480},
}

# Each case: user, domain, source, class, then rule name, user and URI expected.
ROUTE_CASES = [
    ("echo", "any.example", None, None, "echo", "echo", None),
    # Regexes must match the whole user, so "echo2" falls through.
    ("echo2", "any.example", None, "federation", "catch-echo", "echo2", None),
    ("tone", "EXAMPLE.com", None, None, "rule[1]", "tone", None),
    ("7001", "x", "10.1.2.3", None, "lab-only", "7001", "sips:7001@127.0.0.2:5061"),
    ("7001", "x", "2001:db8::5", None, "lab-only", "7001", "sips:7001@127.0.0.2:5061"),
    (
        "91234",
        "x",
        "10.1.2.3",
        "local",
        "trunk-local",
        "1234",
        "sip:1234@127.0.0.1:5080",
    ),
    ("91234", "x", None, "remote", "trunk-local", "1234", "sip:1234@127.0.0.1:5080"),
]

NO_ROUTE_CASES = [
    # user, domain, source, class, then status and reason expected.
    ("tone", "example.org", None, None, 480, "Temporarily Unavailable"),
    ("7001", "x", "192.0.2.1", None, 480, "Temporarily Unavailable"),
    ("7001", "x", None, None, 480, "Temporarily Unavailable"),
    ("7001", "x", "not-an-ip", None, 480, "Temporarily Unavailable"),
    ("91234", "x", None, None, 480, "Temporarily Unavailable"),
    ("nobody", "x", None, "local", 480, "Temporarily Unavailable"),
    # The rewrite leaves nothing of the user, so the trunk URI cannot be built.
    ("000", "x", None, None, 484, "Address Incomplete"),
]


@pytest.fixture(scope="module")
def plan() -> Dialplan:
    return parse_dialplan(PLAN, "test-plan")


@pytest.mark.parametrize(
    ("user", "domain", "source", "call_class", "rule", "new_user", "uri"),
    ROUTE_CASES,
)
def test_route_table(
    plan: Dialplan,
    user: str,
    domain: str,
    source: str | None,
    call_class: str | None,
    rule: str,
    new_user: str,
    uri: str | None,
) -> None:
    route = plan.route(user, domain, source, call_class)
    assert isinstance(route, Route)
    assert route.rule_name == rule
    assert route.user == new_user
    assert route.uri == uri


@pytest.mark.parametrize(
    ("user", "domain", "source", "call_class", "status", "reason"),
    NO_ROUTE_CASES,
)
def test_no_route_table(
    plan: Dialplan,
    user: str,
    domain: str,
    source: str | None,
    call_class: str | None,
    status: int,
    reason: str,
) -> None:
    assert plan.route(user, domain, source, call_class) == NoRoute(status, reason)


def test_route_carries_target_and_headers(plan: Dialplan) -> None:
    route = plan.route("7001", "x", "10.0.0.1")
    assert isinstance(route, Route)
    assert route.rule_index == 2
    assert route.target.name == "lab"
    assert route.target.kind == "sip"
    assert route.target.ice is True
    assert route.target.srtp == "required"
    assert route.target.answer_timeout is None
    assert route.headers == {"X-Route": "lab", "X-Lab-Bench": "3"}


def test_first_match_wins() -> None:
    plan = parse_dialplan(
        {
            "rules": [
                {"name": "first", "match": {"user": "1.*"}, "target": "tone"},
                {"name": "second", "match": {"user": "100"}, "target": "echo"},
            ]
        },
        "order",
    )
    route = plan.route("100", "x", None)
    assert isinstance(route, Route)
    assert route.rule_name == "first"


def test_invalid_user_for_sip_target() -> None:
    plan = parse_dialplan(
        {"targets": {"t": {"uri": "sip:{user}@127.0.0.1"}}, "rules": [{"target": "t"}]},
        "any",
    )
    assert plan.route("a>b", "x", None) == NoRoute(400, "Invalid User In Request-URI")
    route = plan.route("%41lice", "x", None)
    assert isinstance(route, Route)
    assert route.uri == "sip:%41lice@127.0.0.1"


def test_empty_dialplan_rejects_all() -> None:
    plan = parse_dialplan(None, "empty")
    assert plan.route("echo", "x", None) == NoRoute(404, "Not Found")


def test_round_trip_through_json(plan: Dialplan) -> None:
    data = json.loads(json.dumps(plan.to_dict()))
    rebuilt = Dialplan.from_dict(data, "test-plan")
    assert rebuilt == plan
    for case in ROUTE_CASES:
        assert rebuilt.route(*case[:4]) == plan.route(*case[:4])


def test_shipped_default_dialplan() -> None:
    plan = load_dialplan(REPO / "dialplans" / "default.yaml")
    assert set(plan.targets) == {"echo", "tone"}
    for user, target in [
        ("echo", "echo"),
        ("1000", "echo"),
        ("tone", "tone"),
        ("1001", "tone"),
    ]:
        route = plan.route(user, "example.com", "127.0.0.1", "local")
        assert isinstance(route, Route)
        assert route.target.kind == target
    assert plan.route("1002", "example.com", None) == NoRoute(404, "Not Found")


def test_shipped_trunk_dialplan() -> None:
    plan = load_dialplan(REPO / "dialplans" / "example-trunk.yaml")
    route = plan.route("95551234", "example.com", "127.0.0.1", "local")
    assert isinstance(route, Route)
    assert route.uri == "sip:5551234@127.0.0.1:5080"
    assert route.target.answer_timeout == 45
    assert route.target.srtp == "off"
    assert route.headers == {"X-Route": "trunk"}
    assert plan.route("95551234", "example.com", None, "remote") == NoRoute(
        404, "Not Found"
    )


def rules(*entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "targets": {"trunk": {"uri": "sip:{user}@127.0.0.1"}},
        "rules": list(entries),
        **extra,
    }


# Each case: id, dialplan data, then key path and message expected.
ERROR_CASES = [
    (
        "unknown top key",
        {"rule": []},
        "rule",
        "unknown key 'rule'; allowed: targets, rules, no_match",
    ),
    (
        "unknown rule key",
        rules({"target": "echo", "action": "x"}),
        "rules[0].action",
        "unknown key 'action'; allowed: name, match, target, rewrite, headers",
    ),
    (
        "unknown match key",
        rules({"target": "echo", "match": {"uri": "x"}}),
        "rules[0].match.uri",
        "unknown key 'uri'; allowed: user, domain, source, class, service",
    ),
    (
        "unknown target",
        rules({"target": "echo"}, {"target": "trunk2"}),
        "rules[1].target",
        "unknown target 'trunk2'; known: trunk, echo, tone",
    ),
    (
        "missing target",
        rules({"name": "x"}),
        "rules[0].target",
        "missing key; every rule needs a target",
    ),
    (
        "bad user regex",
        rules({"target": "echo", "match": {"user": "9(\\d+"}}),
        "rules[0].match.user",
        "invalid regular expression '9(\\\\d+': missing ), unterminated subpattern "
        "at position 1",
    ),
    (
        "bad cidr",
        rules({"target": "echo", "match": {"source": ["10.0.0.0/40"]}}),
        "rules[0].match.source[0]",
        "invalid network '10.0.0.0/40'; expected a CIDR such as 10.0.0.0/8",
    ),
    (
        "bad class",
        rules({"target": "echo", "match": {"class": ["guest"]}}),
        "rules[0].match.class[0]",
        "invalid value 'guest'; allowed: local, remote, federation",
    ),
    (
        "replacement group missing",
        rules(
            {
                "target": "trunk",
                "rewrite": {"pattern": "^9(\\d+)$", "replacement": "\\2"},
            }
        ),
        "rules[0].rewrite.replacement",
        "invalid replacement '\\\\2': invalid group reference 2 at position 1; "
        "the pattern has 1 group(s)",
    ),
    (
        "replacement name missing",
        rules(
            {
                "target": "trunk",
                "rewrite": {"pattern": "(?P<n>\\d+)", "replacement": "\\g<m>"},
            }
        ),
        "rules[0].rewrite.replacement",
        "invalid replacement '\\\\g<m>': unknown group name 'm'; "
        "the pattern has 1 group(s)",
    ),
    (
        "rewrite without pattern",
        rules({"target": "trunk", "rewrite": {"replacement": "x"}}),
        "rules[0].rewrite.pattern",
        "missing key; a rewrite needs pattern and replacement",
    ),
    (
        "header name not a token",
        rules({"target": "echo", "headers": {"X Route": "a"}}),
        "rules[0].headers.X Route",
        "invalid header name; expected a SIP token",
    ),
    (
        "header value with line break",
        rules({"target": "echo", "headers": {"X-Route": "a\r\nVia: evil"}}),
        "rules[0].headers.X-Route",
        "line breaks and NUL are not allowed",
    ),
    (
        "managed header",
        rules({"target": "echo", "headers": {"call-id": "x"}}),
        "rules[0].headers.call-id",
        "header 'call-id' is set by the B2BUA and cannot be added",
    ),
    (
        "status too low",
        rules(no_match={"status": 302, "reason": "Moved"}),
        "no_match.status",
        "invalid value 302; allowed: 400..699",
    ),
    (
        "status without reason",
        rules(no_match={"status": 499}),
        "no_match.reason",
        "missing key; status 499 needs a reason phrase",
    ),
    (
        "target shadows built-in",
        {"targets": {"echo": {"uri": "sip:x@127.0.0.1"}}},
        "targets.echo",
        "target name 'echo' is built in",
    ),
    (
        "target without uri",
        {"targets": {"t": {"ice": True}}},
        "targets.t.uri",
        "missing key; a SIP target needs a uri",
    ),
    (
        "target uri scheme",
        {"targets": {"t": {"uri": "tel:+1555"}}},
        "targets.t.uri",
        "invalid URI 'tel:+1555'; expected sip: or sips:",
    ),
    (
        "target uri placeholder",
        {"targets": {"t": {"uri": "sip:{number}@h"}}},
        "targets.t.uri",
        "invalid placeholder {number}; allowed: {user} ({{ for {)",
    ),
    (
        "target srtp",
        {"targets": {"t": {"uri": "sip:h", "srtp": "always"}}},
        "targets.t.srtp",
        "invalid value 'always'; allowed: off, optional, required",
    ),
    (
        "target timeout",
        {"targets": {"t": {"uri": "sip:h", "answer_timeout": 0}}},
        "targets.t.answer_timeout",
        "invalid value 0; allowed: 1..3600",
    ),
    (
        "rules not a list",
        {"rules": {"target": "echo"}},
        "rules",
        "expected a list, got a mapping",
    ),
]


@pytest.mark.parametrize(
    ("data", "key_path", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_dialplan_error(data: Any, key_path: str, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_dialplan(data, "test")
    assert info.value.key_path == key_path
    assert info.value.message == message


def test_error_path_parts() -> None:
    with pytest.raises(SchemaError) as info:
        parse_dialplan(rules({"target": "echo"}, {"target": "x"}), "test")
    assert info.value.path == ("rules", 1, "target")
