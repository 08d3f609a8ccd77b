"""Network-namespace lab: isolated namespaces joined by veth pairs, for tests.

Standard library only, run as root. Every namespace is named
``<prefix>-<pid>-<short>`` so that :func:`cleanup_stale` can tell the leftovers of
a dead test run from the namespaces of a live one. Traffic stays inside the
namespaces: each link is a veth pair created directly inside its two namespaces,
so no interface or address is ever added to the host's own namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

NETNS_DIR = "/var/run/netns"
LAB_NETWORK = ipaddress.ip_network("10.99.0.0/16")
# Linux interface names are at most 15 bytes (IFNAMSIZ minus the NUL).
IFNAME_MAX = 15
SHORT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,15}$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


class LabError(RuntimeError):
    """A lab command failed or a request would leave the lab's boundaries."""


def _ip(argv: Sequence[str], timeout: float = 10.0) -> str:
    """Run one ``ip`` command and return its stdout, raising LabError on failure."""
    cmd = ["ip", *argv]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(cmd)} failed: {exc}") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


def list_namespaces() -> list[str]:
    """Return the names of all named network namespaces on this host."""
    names = []
    for line in _ip(["netns", "list"]).splitlines():
        if line.strip():
            names.append(line.split()[0])
    return names


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, timeout: float) -> None:
    """Send SIGTERM to one pid, then SIGKILL if it is still there after timeout."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _delete_namespace(name: str, timeout: float) -> None:
    """Stop every process still inside the namespace, then delete it."""
    try:
        pids = [int(p) for p in _ip(["netns", "pids", name]).split()]
    except LabError as exc:
        log.warning("cannot list processes in namespace %s: %s", name, exc)
        pids = []
    for pid in pids:
        log.info("stopping pid %d left in namespace %s", pid, name)
        _stop_pid(pid, timeout)
    _ip(["netns", "delete", name])
    log.info("deleted namespace %s", name)


def cleanup_stale(prefix: str, timeout: float = 3.0) -> list[str]:
    """Delete namespaces named ``<prefix>-<pid>-*`` whose creating pid is gone.

    Processes still running inside such a namespace are stopped first, by pid.
    Returns the names of the namespaces deleted.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-[a-z0-9_]+$")
    deleted = []
    for name in list_namespaces():
        match = pattern.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        _delete_namespace(name, timeout)
        deleted.append(name)
    return deleted


class Namespace:
    """One network namespace created by a :class:`Lab`."""

    def __init__(self, lab: Lab, short: str, name: str) -> None:
        self.lab = lab
        self.short = short
        self.name = name
        self.addresses: list[str] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def address(self) -> str:
        """First address given to this namespace by :meth:`Lab.link`."""
        if not self.addresses:
            raise LabError(f"namespace {self.name} has no address; link it first")
        return self.addresses[0]

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace; the lab stops it on close.

        ``ip netns exec`` replaces itself with the command, so the pid of the
        returned Popen is the command's own pid.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(argv), **kwargs)
        self.lab.processes.append(proc)
        log.debug("started pid %d in %s: %s", proc.pid, self.name, " ".join(argv))
        return proc

    def run(
        self, argv: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion and capture its output.

        Raises subprocess.CalledProcessError on a non-zero exit status and
        subprocess.TimeoutExpired (after killing it) when it runs past timeout.
        """
        return subprocess.run(
            self._argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


class Lab:
    """Namespaces, veth links and processes that are all removed on close.

    Use it as a context manager so that :meth:`close` runs after exceptions too.
    Addresses handed to :meth:`link` must lie inside ``network``.
    """

    def __init__(
        self,
        prefix: str,
        network: str = str(LAB_NETWORK),
        stop_timeout: float = 3.0,
    ) -> None:
        if not PREFIX_RE.match(prefix):
            raise LabError(
                f"invalid lab prefix {prefix!r}: expected 1-16 lowercase letters "
                "or digits, starting with a letter"
            )
        self.prefix = prefix
        self.network = ipaddress.ip_network(network)
        self.stop_timeout = stop_timeout
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self._links = 0
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_namespace(self, short: str) -> Namespace:
        """Create namespace ``<prefix>-<pid>-<short>`` with its loopback up.

        Raises LabError when a namespace of that name already exists.
        """
        if not SHORT_NAME_RE.match(short):
            raise LabError(
                f"invalid namespace name {short!r}: expected 1-16 lowercase "
                "letters, digits or underscores"
            )
        name = f"{self.prefix}-{os.getpid()}-{short}"
        if name in list_namespaces() or os.path.exists(os.path.join(NETNS_DIR, name)):
            raise LabError(f"namespace {name} already exists; not reusing it")
        _ip(["netns", "add", name])
        ns = Namespace(self, short, name)
        self.namespaces.append(ns)
        ns.run(["ip", "link", "set", "lo", "up"], timeout=10)
        log.info("created namespace %s", name)
        return ns

    def _check_address(self, cidr: str) -> ipaddress.IPv4Interface:
        try:
            iface = ipaddress.ip_interface(cidr)
        except ValueError as exc:
            raise LabError(f"invalid interface address {cidr!r}: {exc}") from exc
        if not isinstance(iface, ipaddress.IPv4Interface):
            raise LabError(f"invalid interface address {cidr!r}: IPv4 only")
        if iface.ip not in self.network:
            raise LabError(f"address {cidr} is outside the lab network {self.network}")
        return iface

    def link(
        self, ns_a: Namespace, cidr_a: str, ns_b: Namespace, cidr_b: str
    ) -> tuple[str, str]:
        """Join two namespaces with a veth pair and give each end an address.

        Both ends are created directly inside their namespaces. Returns the
        interface names (in ns_a, in ns_b).
        """
        for ns in (ns_a, ns_b):
            if ns not in self.namespaces:
                raise LabError(f"{ns.name} does not belong to this lab")
        iface_a = self._check_address(cidr_a)
        iface_b = self._check_address(cidr_b)
        self._links += 1
        name_a = f"v{self._links}-{ns_b.short}"[:IFNAME_MAX]
        name_b = f"v{self._links}-{ns_a.short}"[:IFNAME_MAX]
        _ip(
            [
                "link",
                "add",
                name_a,
                "netns",
                ns_a.name,
                "type",
                "veth",
                "peer",
                "name",
                name_b,
                "netns",
                ns_b.name,
            ]
        )
        for ns, ifname, iface in ((ns_a, name_a, iface_a), (ns_b, name_b, iface_b)):
            ns.run(["ip", "addr", "add", str(iface), "dev", ifname], timeout=10)
            ns.run(["ip", "link", "set", ifname, "up"], timeout=10)
            ns.addresses.append(str(iface.ip))
        log.info("linked %s %s <-> %s %s", ns_a.name, iface_a, ns_b.name, iface_b)
        return name_a, name_b

    def close(self) -> None:
        """Stop every tracked process, then delete the namespaces (and veths)."""
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            if proc.poll() is None:
                _stop_pid(proc.pid, self.stop_timeout)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not exit after SIGKILL", proc.pid)
        errors = []
        # Deleting a namespace destroys the veth ends inside it, and a veth
        # pair goes away with either of its ends.
        for ns in reversed(self.namespaces):
            try:
                _delete_namespace(ns.name, self.stop_timeout)
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))
