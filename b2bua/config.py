"""Load and validate the B2BUA configuration file and the dialplan it names.

The file is YAML. Every section is described by a schema table (`_SCHEMA`):
each key has a checker and a default, so a new section is a new table entry.
Errors become `ConfigError` with the file, the line of the YAML node and the
key path. `Config.to_dict` and `Config.from_dict` carry a loaded config to
the edge and the workers as JSON.
"""

from __future__ import annotations

import copy
import fcntl
import ipaddress
import logging
import os
import re
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from b2bua.dialplan import (
    CALL_CLASSES,
    SRTP_MODES,
    Checker,
    Dialplan,
    KeyPath,
    SchemaError,
    check_bool,
    check_cidr,
    check_mapping,
    check_str,
    enum_checker,
    format_key_path,
    int_checker,
    check_sdp_rules,
    check_service_name,
    list_checker,
    parse_dialplan,
)

log = logging.getLogger(__name__)

# NOTE: only a source checkout contains dialplans/; an installed package lacks it.
DEFAULT_DIALPLAN = Path(__file__).resolve().parent.parent / "dialplans" / "default.yaml"
DEFAULT_RUNTIME_DIR = "/tmp/b2bua-run"


class ConfigError(Exception):
    """An invalid configuration or dialplan, located by file, line and key path."""

    def __init__(
        self, file: str, line: int | None, key_path: str, message: str
    ) -> None:
        self.file = file
        self.line = line
        self.key_path = key_path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key_path:
            return f"{where}: {self.key_path}: {self.message}"
        return f"{where}: {self.message}"


# --- typed sections ----------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """One SIP listener of the edge. `ice` applies to calls arriving here."""

    address: str
    port: int
    transports: tuple[str, ...]
    ice: bool
    # "host:port" to put in Record-Route and Via instead of the bound
    # address, for an edge behind a NAT or a port forward.
    advertise: str | None = None


@dataclass(frozen=True)
class MediaConfig:
    """RTP address ("auto" until `resolve_media_address`) and UDP port range."""

    address: str
    port_min: int
    port_max: int


@dataclass(frozen=True)
class TurnServer:
    server: str  # "host:port"
    transport: str
    username: str
    password: str = field(repr=False)
    # Check the server's TLS certificate against the system CAs.
    tls_verify: bool = True


@dataclass(frozen=True)
class IceConfig:
    stun: tuple[str, ...]  # "host:port" each
    turn: tuple[TurnServer, ...]


@dataclass(frozen=True)
class ServiceConfig:
    """One network the B2BUA serves: edge listeners, media, STUN/TURN, classification.

    A call is handled by the service whose listener received it.
    """

    name: str
    listen: tuple[Listener, ...]
    media: MediaConfig
    ice: IceConfig
    classification: dict[str, Any]


@dataclass(frozen=True)
class WorkersConfig:
    """Worker pool. A `count` of auto in the file is resolved at load time."""

    count: int
    sip_port_base: int
    max_setups_per_second: float
    # RTP on a pjmedia thread of its own instead of the worker's event loop.
    media_thread: bool = False


@dataclass(frozen=True)
class EdgeConfig:
    internal_address: str
    internal_port: int


@dataclass(frozen=True)
class CallsConfig:
    """Call timers in seconds. A max_duration of 0 means unlimited."""

    no_answer_timeout: int
    max_duration: int
    # Seconds without RTP from a party before the call ends; 0 disables.
    media_timeout: int = 60


@dataclass(frozen=True)
class ClassPolicy:
    """Media policy for one call class on the edge leg."""

    ice: bool
    turn: bool
    srtp: str
    # SDP rewrite rules for the SDP the B2BUA sends to callers of this class.
    sdp_rules: tuple[dict[str, Any], ...] = ()
    # Callers whose offer has no ICE get the TURN relay as their media
    # address instead of the worker's own.
    plain_callers_via_turn: bool = False


@dataclass(frozen=True)
class Config:
    """A validated configuration with its dialplan loaded.

    `classification` and `federation` are plain dicts of validated lists and
    strings, interpreted by b2bua.classify. Paths are absolute.
    """

    source_file: str | None
    listen: tuple[Listener, ...]
    media: MediaConfig
    ice: IceConfig
    srtp: str
    workers: WorkersConfig
    edge: EdgeConfig
    calls: CallsConfig
    classification: dict[str, Any]
    federation: dict[str, Any]
    classes: dict[str, ClassPolicy]
    expose_class_header: bool
    dialplan: Dialplan
    dialplan_file: str
    runtime_dir: str
    log_level: str
    # Every network service. Without `services:` in the file there is one,
    # named "default", made of the top-level listen, media, ice and
    # classification; `listen` then lists every service's listeners.
    services: tuple[ServiceConfig, ...] = ()

    def service(self, name: str) -> ServiceConfig:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-able data that `from_dict` turns back into this."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "dialplan":
                data[item.name] = value.to_dict()
            else:
                data[item.name] = _plain(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Rebuild a Config from `to_dict` output, validating it again."""
        own = ("source_file", "dialplan", "dialplan_file")
        rest = {key: value for key, value in data.items() if key not in own}
        if rest.get("services"):
            # `listen` is derived from the services in to_dict output.
            rest.pop("listen", None)
        source = data.get("source_file")
        name = source or "<dict>"
        try:
            values = _check_top(rest, ())
            _resolve_services(values)
            _check_consistency(values)
            dialplan = Dialplan.from_dict(
                data.get("dialplan") or {}, data.get("dialplan_file") or name
            )
        except SchemaError as exc:
            raise ConfigError(name, None, exc.key_path, exc.message) from None
        values.pop("dialplan")
        return cls(
            source_file=source,
            dialplan=dialplan,
            dialplan_file=str(data.get("dialplan_file") or ""),
            **values,
        )


def _plain(value: Any) -> Any:
    """Turn dataclasses and tuples into dicts and lists, recursively, for JSON."""
    if is_dataclass(value) and not isinstance(value, type):
        return {item.name: _plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# --- checkers ----------------------------------------------------------------

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_check_port = int_checker(1, 65535)


def _check_ip(value: Any, path: KeyPath) -> str:
    text = check_str(value, path)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SchemaError(path, f"invalid IP address {text!r}") from None


def _check_host(value: Any, path: KeyPath) -> str:
    """Validate an IP address or a DNS name, and return names lowercased."""
    text = check_str(value, path)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(text):
        raise SchemaError(
            path, f"invalid host {text!r}; expected an IP address or DNS name"
        )
    return text.lower()


def _check_peer(value: Any, path: KeyPath) -> str:
    """Validate an address, a CIDR or a DNS name, as b2bua.classify accepts."""
    text = check_str(value, path)
    if _HOSTNAME.fullmatch(text) and not text.replace(".", "").isdigit():
        return text.lower()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise SchemaError(
            path, f"invalid peer {text!r}; expected an address, CIDR or DNS name"
        ) from None


def _check_domain(value: Any, path: KeyPath) -> str:
    text = check_str(value, path)
    if not _HOSTNAME.fullmatch(text):
        raise SchemaError(path, f"invalid domain {text!r}; expected a DNS name")
    return text.lower()


def _check_domain_pattern(value: Any, path: KeyPath) -> str:
    """Accept a domain, `*.domain` (its subdomains) or `*` (every domain)."""
    text = check_str(value, path)
    if text == "*":
        return text
    name = text[2:] if text.startswith("*.") else text
    if not _HOSTNAME.fullmatch(name):
        raise SchemaError(
            path,
            f"invalid domain pattern {text!r}; expected a DNS name, "
            "*.name for its subdomains, or * for every domain",
        )
    return text.lower()


def _host_port(value: Any, path: KeyPath, default_port: int) -> str:
    """Normalise "host", "host:port" or "[v6]:port" to "host:port"."""
    text = check_str(value, path)
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    host = _check_host(host, path)
    if port_text is None:
        port = default_port
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise SchemaError(path, f"invalid port in {text!r}; allowed: 1..65535")
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _check_stun(value: Any, path: KeyPath) -> str:
    return _host_port(value, path, 3478)


_TURN_KEYS = ("server", "transport", "username", "password", "tls_verify")
_check_turn_transport = enum_checker("udp", "tcp", "tls")


def _check_turn(value: Any, path: KeyPath) -> TurnServer:
    entry = check_mapping(value, path, _TURN_KEYS)
    for key in ("server", "username", "password"):
        if key not in entry:
            raise SchemaError(
                path + (key,),
                "missing key; a TURN server needs server, username and password",
            )
    transport = _check_turn_transport(
        entry.get("transport", "udp"), path + ("transport",)
    )
    default_port = 5349 if transport == "tls" else 3478
    return TurnServer(
        server=_host_port(entry["server"], path + ("server",), default_port),
        transport=transport,
        username=check_str(entry["username"], path + ("username",)),
        password=check_str(entry["password"], path + ("password",)),
        tls_verify=check_bool(entry.get("tls_verify", True), path + ("tls_verify",)),
    )


def _check_media_address(value: Any, path: KeyPath) -> str:
    if value == "auto":
        return "auto"
    text = check_str(value, path)
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise SchemaError(
            path, f"invalid value {text!r}; allowed: auto or an IPv4 address"
        ) from None
    if address.is_unspecified:
        raise SchemaError(
            path, "0.0.0.0 cannot be sent in SDP; give an interface address or auto"
        )
    return str(address)


# A worker with two bridged G.711 calls costs about 1% of a core and 12 MB
# (measured in a pool on a 2-core machine). So 8 per core gives 16
# concurrent calls per core and leaves most of the CPU to spare.
WORKERS_PER_CPU = 8


def auto_worker_count() -> int:
    return max(2, WORKERS_PER_CPU * (os.cpu_count() or 1))


def _check_worker_count(value: Any, path: KeyPath) -> int:
    if value == "auto":
        return auto_worker_count()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise SchemaError(path, f"invalid value {value!r}; allowed: auto or 1..256")
    return value


def _check_rate(value: Any, path: KeyPath) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SchemaError(path, f"invalid value {value!r}; allowed: a number > 0")
    return float(value)


def _check_transports(value: Any, path: KeyPath) -> tuple[str, ...]:
    if value == "tls" or (isinstance(value, list) and "tls" in value):
        raise SchemaError(path, "tls is not supported yet; allowed: udp, tcp")
    transports = list_checker(enum_checker("udp", "tcp"), allow_single=True)(
        value, path
    )
    if not transports:
        raise SchemaError(path, "at least one transport is required; allowed: udp, tcp")
    if len(set(transports)) != len(transports):
        raise SchemaError(path, "duplicate transport")
    return transports


def _check_optional_str(value: Any, path: KeyPath) -> str | None:
    return None if value is None else check_str(value, path)


# --- the schema --------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    check: Checker
    default: Any


def _section(keys: dict[str, _Key], build: Callable[..., Any] = dict) -> Checker:
    """Build a checker for a mapping with `keys`. Missing keys take defaults."""

    def check(value: Any, path: KeyPath) -> Any:
        entry = check_mapping(value, path, tuple(keys))
        values = {}
        for name, key in keys.items():
            raw = entry[name] if name in entry else copy.deepcopy(key.default)
            values[name] = key.check(raw, path + (name,))
        return build(**values)

    return check


def _non_empty(check: Checker, item_name: str) -> Checker:
    def wrapped(value: Any, path: KeyPath) -> Any:
        result = check(value, path)
        if not result:
            raise SchemaError(path, f"at least one {item_name} is required")
        return result

    return wrapped


def _class_policy(turn: bool) -> _Key:
    keys = {
        "ice": _Key(check_bool, True),
        "turn": _Key(check_bool, turn),
        "srtp": _Key(enum_checker(*SRTP_MODES), "optional"),
        "sdp_rules": _Key(check_sdp_rules, None),
        "plain_callers_via_turn": _Key(check_bool, False),
    }
    return _Key(_section(keys, ClassPolicy), {})


def _check_advertise(value: Any, path: KeyPath) -> str | None:
    if value is None:
        return None
    return _host_port(value, path, 5060)


_LISTENER = {
    "address": _Key(_check_ip, "127.0.0.1"),
    "port": _Key(_check_port, 5060),
    "transports": _Key(_check_transports, ["udp", "tcp"]),
    "ice": _Key(check_bool, True),
    "advertise": _Key(_check_advertise, None),
}
_check_listeners = _non_empty(list_checker(_section(_LISTENER, Listener)), "listener")
_domains = list_checker(_check_domain)
_domain_patterns = list_checker(_check_domain_pattern)

_check_media = _section(
    {
        "address": _Key(_check_media_address, "auto"),
        "port_min": _Key(int_checker(1024, 65535), 20000),
        "port_max": _Key(int_checker(1024, 65535), 29999),
    },
    MediaConfig,
)
_check_ice = _section(
    {
        "stun": _Key(list_checker(_check_stun), []),
        "turn": _Key(list_checker(_check_turn), []),
    },
    IceConfig,
)
_check_classification = _section(
    {
        # Loopback can only be this machine, so the built-in default
        # treats it as our own network and places calls from it.
        "local_domains": _Key(_domains, ["localhost", "127.0.0.1"]),
        "internal_networks": _Key(list_checker(check_cidr), ["127.0.0.0/8"]),
        "edge_servers": _Key(list_checker(_check_peer), []),
        "trusted_peers": _Key(list_checker(_check_peer), []),
        "public_cloud": _Key(enum_checker("federation", "remote"), "federation"),
    }
)

_SCHEMA: dict[str, _Key] = {
    "listen": _Key(_check_listeners, [{}]),
    "media": _Key(_check_media, {}),
    "ice": _Key(_check_ice, {}),
    "srtp": _Key(enum_checker(*SRTP_MODES), "optional"),
    "workers": _Key(
        _section(
            {
                "count": _Key(_check_worker_count, "auto"),
                "sip_port_base": _Key(int_checker(1024, 65535), 5100),
                "max_setups_per_second": _Key(_check_rate, 4),
                "media_thread": _Key(check_bool, False),
            },
            WorkersConfig,
        ),
        {},
    ),
    "edge": _Key(
        _section(
            {
                "internal_address": _Key(_check_ip, "127.0.0.1"),
                "internal_port": _Key(_check_port, 5070),
            },
            EdgeConfig,
        ),
        {},
    ),
    "calls": _Key(
        _section(
            {
                "no_answer_timeout": _Key(int_checker(1, 3600), 30),
                "max_duration": _Key(int_checker(0), 0),
                "media_timeout": _Key(int_checker(0, 3600), 60),
            },
            CallsConfig,
        ),
        {},
    ),
    "classification": _Key(_check_classification, {}),
    "federation": _Key(
        _section({
            "allow": _Key(_domain_patterns, []),
            "deny": _Key(_domain_patterns, []),
        }),
        {},
    ),
    "classes": _Key(
        _section({name: _class_policy(turn=name != "local") for name in CALL_CLASSES}),
        {},
    ),
    "expose_class_header": _Key(check_bool, False),
    "dialplan": _Key(_check_optional_str, None),
    "runtime_dir": _Key(check_str, DEFAULT_RUNTIME_DIR),
    "log_level": _Key(enum_checker("debug", "info", "warning", "error"), "info"),
}
_SERVICE_KEYS = ("name", "listen", "media", "ice", "classification")


def _check_services(value: Any, path: KeyPath) -> tuple[dict[str, Any], ...] | None:
    """Check `services:`; sections a service leaves out are filled in later."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise SchemaError(path, "expected a non-empty list of services")
    services = []
    names: set[str] = set()
    for index, raw in enumerate(value):
        item = path + (index,)
        entry = check_mapping(raw, item, _SERVICE_KEYS)
        for key in ("name", "listen"):
            if key not in entry:
                raise SchemaError(
                    item + (key,), "missing key; a service needs name and listen"
                )
        name = check_service_name(entry["name"], item + ("name",))
        if name in names:
            raise SchemaError(item + ("name",), f"duplicate service name {name!r}")
        names.add(name)
        service = {"name": name, "listen": _check_listeners(entry["listen"],
                                                           item + ("listen",))}
        checks = {"media": _check_media, "ice": _check_ice,
                  "classification": _check_classification}
        for key, check in checks.items():
            service[key] = check(entry[key], item + (key,)) if key in entry else None
        services.append(service)
    return tuple(services)


_SCHEMA["services"] = _Key(_check_services, None)
_check_top = _section(_SCHEMA)


def _resolve_services(values: dict[str, Any]) -> None:
    """Build values["services"] and the combined values["listen"].

    A service inherits the top-level media, ice and classification sections
    it does not set itself.
    """
    raw = values["services"]
    if raw is None:
        services = (ServiceConfig(
            name="default", listen=values["listen"], media=values["media"],
            ice=values["ice"], classification=values["classification"],
        ),)
    else:
        services = tuple(
            ServiceConfig(
                name=entry["name"],
                listen=entry["listen"],
                media=entry["media"] or values["media"],
                ice=entry["ice"] or values["ice"],
                classification=entry["classification"] or values["classification"],
            )
            for entry in raw
        )
    values["services"] = services
    values["listen"] = tuple(
        listener for service in services for listener in service.listen
    )


def _check_consistency(values: dict[str, Any]) -> None:
    """Reject values that are valid alone but clash with another key."""
    media: MediaConfig = values["media"]
    if media.port_min > media.port_max:
        raise SchemaError(
            ("media", "port_max"), f"must be >= media.port_min ({media.port_min})"
        )
    ranges: list[tuple[str, MediaConfig]] = []
    for index, service in enumerate(values["services"]):
        inherited = service.media is values["media"]
        where: KeyPath = ("media",) if inherited else ("services", index, "media")
        if service.media.port_min > service.media.port_max:
            raise SchemaError(where + ("port_max",), "must be >= port_min")
        for other_name, other in ranges:
            overlap = (service.media.port_min <= other.port_max
                       and other.port_min <= service.media.port_max)
            if overlap and service.media.address == other.address:
                raise SchemaError(
                    where + ("port_min",),
                    f"media ports overlap those of service {other_name!r} on "
                    f"the same address; give each service its own range",
                )
        ranges.append((service.name, service.media))

    # Ports in use per address. The key "*" is any wildcard address.
    used_ports: dict[tuple[str, int], str] = {}

    def claim(address: str, port: int, owner: str, path: KeyPath) -> None:
        wildcard = ipaddress.ip_address(address).is_unspecified
        for (other_address, other_port), other in used_ports.items():
            same_host = wildcard or other_address in ("*", address)
            if other_port == port and same_host:
                raise SchemaError(path, f"port {port} is already used by {other}")
        used_ports[("*" if wildcard else address, port)] = owner

    for service_index, service in enumerate(values["services"]):
        for index, listener in enumerate(service.listen):
            if len(values["services"]) == 1 and service.name == "default":
                where: KeyPath = ("listen", index, "port")
                owner = f"listen[{index}]"
            else:
                where = ("services", service_index, "listen", index, "port")
                owner = f"services[{service_index}].listen[{index}]"
            claim(listener.address, listener.port, owner, where)
    edge: EdgeConfig = values["edge"]
    claim(
        edge.internal_address,
        edge.internal_port,
        "edge.internal_port",
        ("edge", "internal_port"),
    )

    workers: WorkersConfig = values["workers"]
    last = workers.sip_port_base + workers.count - 1
    if last > 65535:
        raise SchemaError(
            ("workers", "sip_port_base"),
            f"{workers.count} workers need ports up to {last}; the maximum is 65535",
        )
    # The supervisor binds the workers to the edge's internal address.
    for index in range(workers.count):
        claim(
            edge.internal_address,
            workers.sip_port_base + index,
            f"worker {index}",
            ("workers", "sip_port_base"),
        )

    classes: dict[str, ClassPolicy] = values["classes"]
    for name, policy in classes.items():
        if policy.plain_callers_via_turn and not (policy.ice and policy.turn):
            raise SchemaError(
                ("classes", name, "plain_callers_via_turn"),
                "needs ice: true and turn: true in the same class, because "
                "the relay address comes from the edge leg's TURN allocation; "
                "set both or remove this key",
            )
        if policy.plain_callers_via_turn and not any(
                service.ice.turn for service in values["services"]):
            raise SchemaError(
                ("classes", name, "plain_callers_via_turn"),
                "needs a TURN server, and ice.turn is empty; add one under "
                "ice.turn or remove this key",
            )

    federation = values["federation"]
    both = sorted(set(federation["allow"]) & set(federation["deny"]))
    if both:
        raise SchemaError(
            ("federation", "deny"), f"domain {both[0]!r} is in both allow and deny"
        )


# --- loading -----------------------------------------------------------------


def _read_yaml(path: Path, display_name: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document and return its data and node tree."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(display_name, None, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            display_name, None, "", f"failed to read file: {exc}"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _reject_duplicate_keys(node, (), display_name)
        return loader.construct_document(node), node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "syntax error"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(display_name, line, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(display_name, None, "", f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _reject_duplicate_keys(node: yaml.Node, path: KeyPath, display_name: str) -> None:
    # PyYAML keeps the last of two equal keys silently.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            if isinstance(key, yaml.ScalarNode) and name in seen:
                raise ConfigError(
                    display_name,
                    key.start_mark.line + 1,
                    format_key_path(path + (name,)),
                    "duplicate key",
                )
            seen.add(name)
            _reject_duplicate_keys(value, path + (name,), display_name)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, path + (index,), display_name)


def _node_line(root: yaml.Node | None, path: KeyPath) -> int | None:
    """Return the line of the deepest node on `path` (the key's line in maps)."""
    if root is None:
        return None
    node = root
    line = root.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and str(key.value) == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _located(
    exc: SchemaError, display_name: str, root: yaml.Node | None
) -> ConfigError:
    return ConfigError(
        display_name, _node_line(root, exc.path), exc.key_path, exc.message
    )


def load_dialplan(
    path: str | os.PathLike[str],
    display_name: str | None = None,
    services: list[str] | None = None,
) -> Dialplan:
    """Load and validate one dialplan file, or raise ConfigError.

    With `services`, the service names that targets and rules use must be
    among them.
    """
    display_name = display_name or str(path)
    data, root = _read_yaml(Path(path), display_name)
    try:
        dialplan = parse_dialplan(data, str(Path(path).resolve()))
        if services is not None:
            _check_dialplan_services(dialplan, services)
        return dialplan
    except SchemaError as exc:
        raise _located(exc, display_name, root) from None


def _check_dialplan_services(dialplan: Dialplan, services: list[str]) -> None:
    known = ", ".join(services)
    for name, target in dialplan.targets.items():
        if target.service is not None and target.service not in services:
            raise SchemaError(
                ("targets", name, "service"),
                f"unknown service {target.service!r}; known: {known}",
            )
    for rule in dialplan.rules:
        for service in rule.services:
            if service not in services:
                raise SchemaError(
                    ("rules", rule.index, "match", "service"),
                    f"unknown service {service!r}; known: {known}",
                )


def load_config(path: str | None) -> Config:
    """Load the config file at `path`, or the built-in default for None.

    Relative paths inside (dialplan, runtime_dir) are relative to the
    config file's folder. Raises ConfigError for every problem found.
    """
    data: Any = {}
    root: yaml.Node | None = None
    if path is None:
        display_name, base = "<built-in default>", Path.cwd()
    else:
        display_name = path
        data, root = _read_yaml(Path(path), display_name)
        base = Path(path).resolve().parent
    try:
        if isinstance(data, dict) and "services" in data and "listen" in data:
            raise SchemaError(
                ("listen",),
                "listen and services are both set; move these listeners into "
                "a service's listen list",
            )
        values = _check_top(data, ())
        _resolve_services(values)
        _check_consistency(values)
    except SchemaError as exc:
        raise _located(exc, display_name, root) from None

    if values["dialplan"] is None:
        dialplan_path = DEFAULT_DIALPLAN
    else:
        dialplan_path = base / values["dialplan"]
    if path is not None and values["dialplan"] is not None:
        dialplan_name = values["dialplan"]
        if not dialplan_path.is_file():
            raise ConfigError(
                display_name,
                _node_line(root, ("dialplan",)),
                "dialplan",
                f"dialplan file {str(dialplan_path)!r} not found",
            )
    else:
        dialplan_name = str(dialplan_path)
    dialplan = load_dialplan(
        dialplan_path, dialplan_name,
        services=[service.name for service in values["services"]],
    )

    values.pop("dialplan")
    values["runtime_dir"] = str(base / values["runtime_dir"])
    config = Config(
        source_file=str(Path(path).resolve()) if path is not None else None,
        dialplan=dialplan,
        dialplan_file=str(dialplan_path.resolve()),
        **values,
    )
    log.info(
        "loaded config %s: %d listeners, %d workers, dialplan %s with %d rules",
        display_name,
        len(config.listen),
        config.workers.count,
        dialplan_name,
        len(dialplan.rules),
    )
    return config


# --- media address -----------------------------------------------------------

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def interface_ipv4_addresses() -> list[tuple[str, str]]:
    """Return (interface, IPv4 address) for each interface that is up.

    Loopback interfaces and interfaces without an IPv4 address are left out.
    Order is the kernel's interface index order.
    """
    # NOTE: Linux ioctls; they return only the first IPv4 address per interface.
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags_reply = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
                address_reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue
            flags = struct.unpack("H", flags_reply[16:18])[0]
            if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                continue
            address = socket.inet_ntoa(address_reply[20:24])
            if not ipaddress.IPv4Address(address).is_loopback:
                found.append((name, address))
    return found


def resolve_media_address(cfg: Config, service: ServiceConfig | None = None) -> str:
    """Return the media address, resolving auto to the first non-loopback IPv4.

    Without `service`, the top-level media.address is resolved.
    """
    media = service.media if service is not None else cfg.media
    if media.address != "auto":
        return media.address
    addresses = interface_ipv4_addresses()
    if not addresses:
        raise ConfigError(
            cfg.source_file or "<built-in default>",
            None,
            "media.address",
            "auto found no interface with a non-loopback IPv4 address; set an address",
        )
    name, address = addresses[0]
    log.info("media address auto resolved to %s (interface %s)", address, name)
    return address


# --- CLI ---------------------------------------------------------------------


@click.command("check-config")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (YAML). Without it, the built-in default is checked.",
)
def check_config_command(config_path: str | None) -> None:
    """Validate a config file and its dialplan. Exit with status 2 if invalid."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
    click.echo(
        f"config OK: {len(config.listen)} listeners, "
        f"{len(config.dialplan.rules)} rules, {config.workers.count} workers"
    )
