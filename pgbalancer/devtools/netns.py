"""A throw-away network lab of Linux network namespaces on one bridge, for cluster tests and benchmarks.

Layout: one namespace holds a bridge ``br0``; each member namespace gets a veth ``eth0`` with a
private address ``SUBNET.N/24`` whose peer sits on that bridge. Cutting a member off ("link down")
sets its bridge-side veth down, which the member sees as lost carrier. Nothing here ever creates,
changes or reads an interface of the root namespace: every command is ``ip -n NS ...`` or
``ip netns exec NS ...`` on a namespace this lab created.

Namespaces are named ``<tag><owner pid>-<member>`` so that a later run can delete the leftovers of a
run that was SIGKILLed (:func:`reap_orphaned_labs`); :meth:`NetnsLab.destroy` deletes everything
(also registered with atexit). Blocking and trio-free, like the PostgreSQL launcher. Needs root.
"""

from __future__ import annotations

import array
import atexit
import ctypes
import fcntl
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pgbalancer.devtools.pgcluster import process_alive

DEFAULT_TAG = "pgbt"
DEFAULT_SUBNET = "10.77.0"
BRIDGE = "br0"
MEMBER_IF = "eth0"
_CLONE_NEWNET = 0x40000000
_SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union
_MAX_ADDRESSES = 64
T = TypeVar("T")
_NAME_RE = re.compile(r"(?P<tag>[a-z]+)(?P<pid>[0-9]+)-(?P<member>[a-z0-9]+)")


class NetnsError(RuntimeError):
    """An ip command failed; the message shows the command and its error."""


@dataclass(frozen=True)
class Member:
    """One namespace on the lab's bridge."""

    name: str
    netns: str
    address: str  # on eth0, /24


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def call_in_netns(netns: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
    """Run ``fn()`` on a fresh thread that has entered namespace ``netns``; return its result.

    A network namespace belongs to a thread (setns(2)), so only that thread moves and it ends with
    ``fn``; sockets it opens stay in ``netns`` and may be used from any thread afterwards. This is
    how the tests, which run in the root namespace, talk to nodes and clients inside the lab
    without starting a process per request.
    """
    outcome: list[T] = []
    errors: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            finally:
                os.close(fd)
            outcome.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter_and_run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"a call inside namespace {netns} did not finish within {timeout:g}s")
    if errors:
        raise errors[0]
    return outcome[0]


def ipv4_addresses(sock: socket.socket) -> set[str]:
    """Every IPv4 address of every interface in the namespace ``sock`` was created in (SIOCGIFCONF)."""
    buffer = array.array("B", bytes(_IFREQ_SIZE * _MAX_ADDRESSES))
    pointer, _ = buffer.buffer_info()
    request = struct.pack("iL", len(buffer), pointer)
    length, _ = struct.unpack("iL", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, request))
    raw = buffer.tobytes()[:length]
    return {socket.inet_ntoa(raw[offset + 20 : offset + 24]) for offset in range(0, length, _IFREQ_SIZE)}


def list_namespaces() -> list[str]:
    result = ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


class NetnsLab:
    """Namespaces on one bridge. ``add(name, host)`` makes a member at SUBNET.host."""

    def __init__(self, *, tag: str = DEFAULT_TAG, subnet: str = DEFAULT_SUBNET) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root: run the cluster tests as root")
        self.prefix = f"{tag}{os.getpid()}-"
        self.subnet = subnet
        self.members: dict[str, Member] = {}
        self.bridge_ns = self.prefix + "br"
        self._created: list[str] = []
        self._sockets: list[socket.socket] = []
        atexit.register(self.destroy)
        self._add_namespace(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", BRIDGE, "up")

    def add(self, name: str, host: int) -> Member:
        if not re.fullmatch(r"[a-z0-9]{1,8}", name) or name in self.members:
            raise ValueError(f"member name {name!r} must be new, short, lowercase letters and digits")
        netns = self.prefix + name
        member = Member(name, netns, f"{self.subnet}.{host}")
        self._add_namespace(netns)
        peer = f"v{name}"
        ip(
            "-n",
            self.bridge_ns,
            "link",
            "add",
            peer,
            "type",
            "veth",
            "peer",
            "name",
            MEMBER_IF,
            "netns",
            netns,
        )
        ip("-n", self.bridge_ns, "link", "set", peer, "master", BRIDGE, "up")
        ip("-n", netns, "addr", "add", f"{member.address}/24", "dev", MEMBER_IF)
        ip("-n", netns, "link", "set", MEMBER_IF, "up")
        self.members[name] = member
        return member

    def add_address(self, name: str, address: str) -> None:
        """One more /24 address on the member's eth0."""
        ip("-n", self.members[name].netns, "addr", "add", f"{address}/24", "dev", MEMBER_IF)

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside member ``name``'s namespace."""
        return ["ip", "netns", "exec", self.members[name].netns, *argv]

    def call(self, name: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
        """``fn()`` run inside member ``name``'s namespace (see :func:`call_in_netns`)."""
        return call_in_netns(self.members[name].netns, fn, timeout)

    def set_link(self, name: str, up: bool) -> None:
        """Connect (up) or cut off (down) a member at the bridge."""
        ip("-n", self.bridge_ns, "link", "set", f"v{name}", "up" if up else "down")

    def addresses(self, name: str) -> set[str]:
        """IPv4 addresses on the member's eth0 (one ``ip -n NS addr`` call)."""
        result = ip("-n", self.members[name].netns, "-o", "-4", "addr", "show", "dev", MEMBER_IF, check=False)
        found: set[str] = set()
        for line in result.stdout.splitlines():
            words = line.split()
            if "inet" in words:
                found.add(words[words.index("inet") + 1].split("/", 1)[0])
        return found

    def address_probe(self, name: str) -> Callable[[], set[str]]:
        """A cheap reader of the member's IPv4 addresses: a socket made inside its namespace and asked
        with ioctl(SIOCGIFCONF), so a 50 ms sampler starts no process (``ip`` would, 20 times a second
        per member, on a machine whose Raft timings are tight)."""
        sock = self.probe_socket(name)
        return lambda: ipv4_addresses(sock)

    def probe_socket(self, name: str) -> socket.socket:
        """A socket made inside the member's namespace (for ipv4_addresses); closed by destroy()."""
        sock = self.call(name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self._sockets.append(sock)
        return sock

    def destroy(self) -> None:
        """Delete every namespace of this lab (their veths and the bridge go with them)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        for netns in reversed(self._created):
            ip("netns", "del", netns, check=False)
        self._created.clear()
        self.members.clear()
        atexit.unregister(self.destroy)

    def _add_namespace(self, netns: str) -> None:
        ip("netns", "add", netns)
        self._created.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")


def sample_line(at: float, holders: list[str]) -> str:
    """One sample of devtools/vipsampler.py: ``<time.monotonic()> <holder>,<holder>...``."""
    return f"{at:.6f} {','.join(holders)}\n"


def parse_sample_line(line: str) -> tuple[float, frozenset[str]]:
    at, _, names = line.rstrip("\n").partition(" ")
    return float(at), frozenset(name for name in names.split(",") if name)


_SAMPLER_PRIORITY = 10  # SCHED_FIFO 1-99: above every ordinary process, far below the kernel's own


@dataclass
class HolderSample:
    at: float  # time.monotonic()
    holders: frozenset[str]


@dataclass
class HolderSampler:
    """Looks at every member's addresses every ``interval`` s; records who holds ``address``.

    The looking happens in a process of its own (devtools/vipsampler.py), at real-time priority
    where the OS allows it (root), so neither this process' threads nor a busy guest delay a
    sample; a thread here only collects its lines. ``overlaps`` lists the samples where more than
    one member held the address at once: the VIP invariant is that it stays empty over the whole run.
    """

    lab: NetnsLab
    address: str
    members: Sequence[str]
    interval: float = 0.05
    samples: list[HolderSample] = field(default_factory=list)
    real_time: bool = False  # set by start(): whether the sampling process got SCHED_FIFO
    _process: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None
    _probes: dict[str, Callable[[], set[str]]] | None = None

    def start(self) -> HolderSampler:
        sockets = {name: self.lab.probe_socket(name) for name in self.members}
        members = [f"{name}={sock.fileno()}" for name, sock in sockets.items()]
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgbalancer.devtools.vipsampler",
                self.address,
                str(self.interval),
                *members,
            ],
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=[sock.fileno() for sock in sockets.values()],
        )
        try:  # a sample must not wait behind the guest's other work; needs root (CAP_SYS_NICE)
            os.sched_setscheduler(self._process.pid, os.SCHED_FIFO, os.sched_param(_SAMPLER_PRIORITY))
            self.real_time = True
        except OSError:  # PermissionError without root
            self.real_time = False
        self._thread = threading.Thread(target=self._collect, name="vip-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def overlaps(self) -> list[HolderSample]:
        return [sample for sample in self.samples if len(sample.holders) > 1]

    def holders_now(self) -> frozenset[str]:
        if self._probes is None:
            self._probes = {name: self.lab.address_probe(name) for name in self.members}
        return frozenset(name for name, probe in self._probes.items() if self.address in probe())

    def _collect(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            at, holders = parse_sample_line(line)
            self.samples.append(HolderSample(at, holders))


def reap_orphaned_labs(tag: str = DEFAULT_TAG) -> list[str]:
    """Delete namespaces of labs whose owning process is gone (a SIGKILLed test run)."""
    reaped: list[str] = []
    for netns in list_namespaces():
        match = _NAME_RE.fullmatch(netns)
        if match is None or match["tag"] != tag or process_alive(int(match["pid"])):
            continue
        ip("netns", "del", netns, check=False)
        reaped.append(netns)
    return reaped
