"""Dialplans: named SIP targets and ordered rules that route an incoming call.

Standard library only, because Kamailio's embedded Python imports this module.
`parse_dialplan` validates the plain data loaded from a YAML file or JSON and
raises `SchemaError` with the key path of the first invalid value. The small
validators below are shared with `b2bua.config`, which adds file and line.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from b2bua.sdp_rewrite import RuleConfigError, compile_rules

KeyPath = tuple[str | int, ...]
Checker = Callable[[Any, KeyPath], Any]

CALL_CLASSES = ("local", "remote", "federation")
SRTP_MODES = ("off", "optional", "required")
BUILTIN_TARGETS = ("echo", "tone")

# Headers that the worker's SIP stack builds for each leg. A second copy
# from a rule would break the dialog or the message framing.
MANAGED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via",
        "v",
        "From",
        "f",
        "To",
        "t",
        "Call-ID",
        "i",
        "CSeq",
        "Contact",
        "m",
        "Content-Length",
        "l",
        "Content-Type",
        "c",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Authorization",
        "Proxy-Authorization",
    )
)

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_TARGET_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")
# RFC 3261 section 25.1: user = 1*( unreserved / escaped / user-unreserved ).
_URI_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_DEFAULT_REASONS = {
    403: "Forbidden",
    404: "Not Found",
    480: "Temporarily Unavailable",
    484: "Address Incomplete",
    486: "Busy Here",
    488: "Not Acceptable Here",
    503: "Service Unavailable",
    603: "Decline",
}


class SchemaError(ValueError):
    """An invalid value, with the key path where it sits in the input data."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(f"{format_key_path(path)}: {message}")
        self.path = path
        self.message = message

    @property
    def key_path(self) -> str:
        return format_key_path(self.path)


def format_key_path(path: KeyPath) -> str:
    """Format ("rules", 3, "target") as "rules[3].target"."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


# --- validators shared with b2bua.config -------------------------------------


def describe(value: Any) -> str:
    """Describe a value of the wrong type for an error message."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


def check_mapping(value: Any, path: KeyPath, allowed: Sequence[str]) -> Mapping:
    """Return `value` as a mapping after rejecting keys not in `allowed`.

    An empty YAML section (None) counts as an empty mapping.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"expected a mapping, got {describe(value)}")
    for key in value:
        if key not in allowed:
            raise SchemaError(
                path + (str(key),),
                f"unknown key {str(key)!r}; allowed: {', '.join(allowed)}",
            )
    return value


def check_str(value: Any, path: KeyPath) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(path, f"expected a non-empty string, got {describe(value)}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise SchemaError(path, "line breaks and NUL are not allowed")
    return value


def check_bool(value: Any, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(path, f"expected true or false, got {describe(value)}")
    return value


def int_checker(minimum: int, maximum: int | None = None) -> Checker:
    """Build a checker for an integer in [minimum, maximum]."""

    def check(value: Any, path: KeyPath) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {describe(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            allowed = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"
            raise SchemaError(path, f"invalid value {value}; allowed: {allowed}")
        return value

    return check


def enum_checker(*allowed: str) -> Checker:
    """Build a checker for one of the `allowed` strings.

    YAML 1.1 reads a bare `off` as false, so false counts as "off" where "off"
    is allowed.
    """

    def check(value: Any, path: KeyPath) -> str:
        if value is False and "off" in allowed:
            return "off"
        if not isinstance(value, str) or value not in allowed:
            value_text = repr(value) if isinstance(value, str) else describe(value)
            raise SchemaError(
                path, f"invalid value {value_text}; allowed: {', '.join(allowed)}"
            )
        return value

    return check


def list_checker(item: Checker, *, allow_single: bool = False) -> Checker:
    """Build a checker for a list whose items pass `item`, returning a tuple.

    With `allow_single`, a lone scalar counts as a list of one.
    """

    def check(value: Any, path: KeyPath) -> tuple:
        if value is None:
            return ()
        if allow_single and isinstance(value, (str, int)):
            value = [value]
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise SchemaError(path, f"expected a list, got {describe(value)}")
        return tuple(item(entry, path + (index,)) for index, entry in enumerate(value))

    return check


def check_cidr(value: Any, path: KeyPath) -> str:
    """Validate an IPv4 or IPv6 network. A bare address counts as /32 or /128."""
    text = check_str(value, path)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise SchemaError(
            path, f"invalid network {text!r}; expected a CIDR such as 10.0.0.0/8"
        ) from None


def check_regex(value: Any, path: KeyPath, flags: int = 0) -> re.Pattern[str]:
    text = check_str(value, path)
    try:
        return re.compile(text, flags)
    except re.error as exc:
        raise SchemaError(path, f"invalid regular expression {text!r}: {exc}") from None


# --- dialplan types ----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a routed call goes: a built-in media endpoint or a SIP URI.

    `ice`, `srtp` and `answer_timeout` apply to the outgoing SIP leg, so the
    built-ins echo and tone ignore them. `answer_timeout` None means the
    config's calls.no_answer_timeout.
    """

    name: str
    kind: str  # "echo" | "tone" | "sip"
    uri: str | None = None
    ice: bool = False
    srtp: str = "off"
    answer_timeout: int | None = None
    # Network service the outgoing leg leaves through; None means the
    # service the call arrived on.
    service: str | None = None
    # SDP rewrite rules (b2bua.sdp_rewrite) for the SDP sent on this leg.
    sdp_rules: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Rewrite:
    """A substitution applied once to the user part (Python `re.sub` syntax)."""

    pattern: re.Pattern[str]
    replacement: str

    def apply(self, user: str) -> str:
        return self.pattern.sub(self.replacement, user, count=1)


@dataclass(frozen=True)
class Rule:
    """One dialplan rule. Every condition that is set must hold."""

    name: str
    index: int
    target: Target
    user: re.Pattern[str] | None = None
    domain: re.Pattern[str] | None = None
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    classes: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    rewrite: Rewrite | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def matches(
        self,
        user: str,
        domain: str,
        source_ip: str | None,
        call_class: str | None,
        service: str | None = None,
    ) -> bool:
        if self.user is not None and not self.user.fullmatch(user):
            return False
        if self.domain is not None and not self.domain.fullmatch(domain):
            return False
        if self.sources and not _source_in(source_ip, self.sources):
            return False
        if self.classes and call_class not in self.classes:
            return False
        if self.services and service not in self.services:
            return False
        return True


@dataclass(frozen=True)
class Route:
    """A matched rule: the target, the rewritten user and the extra headers.

    `uri` is the target URI with the user filled in, None for built-ins.
    """

    rule_name: str
    rule_index: int
    target: Target
    user: str
    uri: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NoRoute:
    """The final response for a call that no rule routes."""

    status: int
    reason: str


@dataclass(frozen=True)
class Dialplan:
    """Targets and rules parsed from one dialplan file; the first match wins."""

    source_name: str
    targets: dict[str, Target]
    rules: tuple[Rule, ...]
    no_match: NoRoute

    def route(
        self,
        user: str,
        domain: str,
        source_ip: str | None,
        call_class: str | None = None,
        service: str | None = None,
    ) -> Route | NoRoute:
        """Return the route of the first matching rule, or the no_match response.

        `user` and `domain` are the Request-URI user and host as given, so
        %-escapes are matched undecoded. A rule that leads to a SIP target
        whose rewritten user is empty returns 484 Address Incomplete, and a
        user with characters that RFC 3261 forbids in a URI returns 400.
        Rules after it are not tried, because the rule did match.
        """
        for rule in self.rules:
            if not rule.matches(user, domain, source_ip, call_class, service):
                continue
            new_user = rule.rewrite.apply(user) if rule.rewrite else user
            uri = None
            if rule.target.kind == "sip":
                if not new_user:
                    return NoRoute(484, "Address Incomplete")
                if not _URI_USER.fullmatch(new_user):
                    return NoRoute(400, "Invalid User In Request-URI")
                assert rule.target.uri is not None
                uri = rule.target.uri.format(user=new_user)
            return Route(
                rule_name=rule.name,
                rule_index=rule.index,
                target=rule.target,
                user=new_user,
                uri=uri,
                headers=dict(rule.headers),
            )
        return self.no_match

    def to_dict(self) -> dict[str, Any]:
        """Return the dialplan in its file form, as JSON-able plain data."""
        targets = {}
        for name, target in self.targets.items():
            if target.kind != "sip":
                continue
            entry: dict[str, Any] = {
                "uri": target.uri,
                "ice": target.ice,
                "srtp": target.srtp,
            }
            if target.answer_timeout is not None:
                entry["answer_timeout"] = target.answer_timeout
            if target.service is not None:
                entry["service"] = target.service
            if target.sdp_rules:
                entry["sdp_rules"] = [dict(rule) for rule in target.sdp_rules]
            targets[name] = entry
        return {
            "targets": targets,
            "rules": [_rule_to_dict(rule) for rule in self.rules],
            "no_match": {
                "status": self.no_match.status,
                "reason": self.no_match.reason,
            },
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source_name: str = "<dict>"
    ) -> Dialplan:
        return parse_dialplan(data, source_name)


def _source_in(
    source_ip: str | None,
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    if not source_ip:
        return False
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _rule_to_dict(rule: Rule) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if rule.user is not None:
        match["user"] = rule.user.pattern
    if rule.domain is not None:
        match["domain"] = rule.domain.pattern
    if rule.sources:
        match["source"] = [str(network) for network in rule.sources]
    if rule.classes:
        match["class"] = list(rule.classes)
    if rule.services:
        match["service"] = list(rule.services)
    entry: dict[str, Any] = {
        "name": rule.name,
        "match": match,
        "target": rule.target.name,
    }
    if rule.rewrite is not None:
        entry["rewrite"] = {
            "pattern": rule.rewrite.pattern.pattern,
            "replacement": rule.rewrite.replacement,
        }
    if rule.headers:
        entry["headers"] = dict(rule.headers)
    return entry


# --- parsing -----------------------------------------------------------------

_TOP_KEYS = ("targets", "rules", "no_match")
_TARGET_KEYS = ("uri", "ice", "srtp", "answer_timeout", "service", "sdp_rules")
_RULE_KEYS = ("name", "match", "target", "rewrite", "headers")
_MATCH_KEYS = ("user", "domain", "source", "class", "service")
_REWRITE_KEYS = ("pattern", "replacement")
_NO_MATCH_KEYS = ("status", "reason")

_check_srtp = enum_checker(*SRTP_MODES)
_check_class = enum_checker(*CALL_CLASSES)
_check_timeout = int_checker(1, 3600)
_check_status = int_checker(400, 699)


def parse_dialplan(data: Any, source_name: str) -> Dialplan:
    """Validate dialplan data (a loaded YAML file or `to_dict` output).

    Raises SchemaError naming the key path of the first invalid value.
    """
    top = check_mapping(data, (), _TOP_KEYS)
    targets = _parse_targets(top.get("targets"), ("targets",))
    raw_rules = list_checker(lambda value, path: value)(top.get("rules"), ("rules",))
    rules = tuple(
        _parse_rule(raw, index, targets) for index, raw in enumerate(raw_rules)
    )
    return Dialplan(
        source_name=source_name,
        targets=targets,
        rules=rules,
        no_match=_parse_no_match(top.get("no_match"), ("no_match",)),
    )


def _parse_targets(value: Any, path: KeyPath) -> dict[str, Target]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"expected a mapping, got {describe(value)}")
    targets = {name: Target(name=name, kind=name) for name in BUILTIN_TARGETS}
    for name, raw in value.items():
        name_path = path + (str(name),)
        if not isinstance(name, str) or not _TARGET_NAME.fullmatch(name):
            raise SchemaError(
                name_path, "invalid target name; allowed: letters, digits, _ . -"
            )
        if name in BUILTIN_TARGETS:
            raise SchemaError(name_path, f"target name {name!r} is built in")
        entry = check_mapping(raw, name_path, _TARGET_KEYS)
        if "uri" not in entry:
            raise SchemaError(
                name_path + ("uri",), "missing key; a SIP target needs a uri"
            )
        timeout = entry.get("answer_timeout")
        targets[name] = Target(
            name=name,
            kind="sip",
            uri=_check_target_uri(entry["uri"], name_path + ("uri",)),
            ice=check_bool(entry.get("ice", False), name_path + ("ice",)),
            srtp=_check_srtp(entry.get("srtp", "off"), name_path + ("srtp",)),
            answer_timeout=(
                None
                if timeout is None
                else _check_timeout(timeout, name_path + ("answer_timeout",))
            ),
            service=(
                None
                if entry.get("service") is None
                else check_service_name(entry["service"], name_path + ("service",))
            ),
            sdp_rules=check_sdp_rules(entry.get("sdp_rules"), name_path + ("sdp_rules",)),
        )
    return targets


def check_sdp_rules(value: Any, path: KeyPath) -> tuple[dict[str, Any], ...]:
    """Check a list of SDP rewrite rules as b2bua.sdp_rewrite compiles them."""
    if value is None:
        return ()
    try:
        compile_rules(value, where="rules")
    except RuleConfigError as exc:
        message = str(exc)
        if message.startswith("rules"):
            message = message[len("rules"):].lstrip(":. ")
        raise SchemaError(path, message) from None
    return tuple(dict(rule) for rule in value)


def check_service_name(value: Any, path: KeyPath) -> str:
    """Check a network service name: a DNS label, as it becomes part of a host."""
    text = check_str(value, path)
    if not _SERVICE_NAME.fullmatch(text):
        raise SchemaError(
            path,
            f"invalid service name {text!r}; allowed: 1-20 lowercase letters, "
            "digits and -, starting with a letter",
        )
    return text


def _check_target_uri(value: Any, path: KeyPath) -> str:
    text = check_str(value, path)
    if not text.lower().startswith(("sip:", "sips:")):
        raise SchemaError(path, f"invalid URI {text!r}; expected sip: or sips:")
    if any(char in text for char in ' \t<>"'):
        raise SchemaError(
            path, f'invalid URI {text!r}; spaces, <, > and " are not allowed'
        )
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise SchemaError(path, f"invalid URI template {text!r}: {exc}") from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name != "user" or spec or conversion:
            raise SchemaError(
                path, f"invalid placeholder {{{name}}}; allowed: {{user}} ({{{{ for {{)"
            )
    return text


def _parse_rule(raw: Any, index: int, targets: Mapping[str, Target]) -> Rule:
    path: KeyPath = ("rules", index)
    entry = check_mapping(raw, path, _RULE_KEYS)
    name = check_str(entry.get("name", f"rule[{index}]"), path + ("name",))

    if "target" not in entry:
        raise SchemaError(path + ("target",), "missing key; every rule needs a target")
    target_name = check_str(entry["target"], path + ("target",))
    if target_name not in targets:
        known = ", ".join(
            [*(t for t in targets if t not in BUILTIN_TARGETS), *BUILTIN_TARGETS]
        )
        raise SchemaError(
            path + ("target",), f"unknown target {target_name!r}; known: {known}"
        )

    match_path = path + ("match",)
    match = check_mapping(entry.get("match"), match_path, _MATCH_KEYS)
    user = domain = None
    if "user" in match:
        user = check_regex(match["user"], match_path + ("user",))
    if "domain" in match:
        domain = check_regex(match["domain"], match_path + ("domain",), re.IGNORECASE)
    sources = list_checker(check_cidr, allow_single=True)(
        match.get("source"), match_path + ("source",)
    )
    classes = list_checker(_check_class, allow_single=True)(
        match.get("class"), match_path + ("class",)
    )
    services = list_checker(check_service_name, allow_single=True)(
        match.get("service"), match_path + ("service",)
    )

    rewrite = None
    if "rewrite" in entry:
        rewrite = _parse_rewrite(entry["rewrite"], path + ("rewrite",))

    return Rule(
        name=name,
        index=index,
        target=targets[target_name],
        user=user,
        domain=domain,
        sources=tuple(ipaddress.ip_network(cidr) for cidr in sources),
        classes=classes,
        services=services,
        rewrite=rewrite,
        headers=_parse_headers(entry.get("headers"), path + ("headers",)),
    )


def _parse_rewrite(value: Any, path: KeyPath) -> Rewrite:
    entry = check_mapping(value, path, _REWRITE_KEYS)
    for key in _REWRITE_KEYS:
        if key not in entry:
            raise SchemaError(
                path + (key,), "missing key; a rewrite needs pattern and replacement"
            )
    pattern = check_regex(entry["pattern"], path + ("pattern",))
    replacement = entry["replacement"]
    if not isinstance(replacement, str):
        raise SchemaError(
            path + ("replacement",), f"expected a string, got {describe(replacement)}"
        )
    # re compiles the replacement template before it searches, so substituting
    # into an empty string rejects references to groups the pattern lacks.
    try:
        pattern.sub(replacement, "", count=1)
    except (re.error, IndexError) as exc:
        raise SchemaError(
            path + ("replacement",),
            f"invalid replacement {replacement!r}: {exc}; "
            f"the pattern has {pattern.groups} group(s)",
        ) from None
    return Rewrite(pattern=pattern, replacement=replacement)


def _parse_headers(value: Any, path: KeyPath) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"expected a mapping, got {describe(value)}")
    headers = []
    for name, raw in value.items():
        header_path = path + (str(name),)
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise SchemaError(header_path, "invalid header name; expected a SIP token")
        if name.lower() in MANAGED_HEADERS:
            raise SchemaError(
                header_path, f"header {name!r} is set by the B2BUA and cannot be added"
            )
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise SchemaError(header_path, f"expected a string, got {describe(raw)}")
        text = str(raw)
        if "\r" in text or "\n" in text or "\0" in text:
            raise SchemaError(header_path, "line breaks and NUL are not allowed")
        headers.append((name, text))
    return tuple(headers)


def _parse_no_match(value: Any, path: KeyPath) -> NoRoute:
    entry = check_mapping(value, path, _NO_MATCH_KEYS)
    status = _check_status(entry.get("status", 404), path + ("status",))
    if "reason" in entry:
        reason = check_str(entry["reason"], path + ("reason",))
    elif status in _DEFAULT_REASONS:
        reason = _DEFAULT_REASONS[status]
    else:
        raise SchemaError(
            path + ("reason",), f"missing key; status {status} needs a reason phrase"
        )
    return NoRoute(status=status, reason=reason)
