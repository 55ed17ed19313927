"""The VIP manager and executor for real, in network namespaces (root only).

Two nodes run :mod:`tests.integration.vip_child` (the real manager with the default ``ip`` and
``arping`` commands), each in its own namespace on a bridge, with a client namespace beside them.
The test plays Raft by rewriting each node's leadership file, and checks with the namespaces' own
address lists (``HolderSampler``: ioctl(SIOCGIFCONF) inside each namespace every 50 ms, what
``ip -n NS addr`` shows) and the client's neighbour table what really happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.netns import MEMBER_IF, HolderSampler, NetnsLab, ip, reap_orphaned_labs

ROOT = Path(__file__).resolve().parents[2]
VIP = "10.77.0.100"
ACQUIRE_DELAY = 0.6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        shutil.which("arping") is None or shutil.which("ip") is None,
        reason="needs ip (iproute2) and arping (iputils-arping): make os-deps",
    ),
]


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    reap_orphaned_labs(tag="pgbv")
    lab = NetnsLab(tag="pgbv")
    try:
        for name, host in (("n1", 11), ("n2", 12), ("client", 50)):
            lab.add(name, host)
        yield lab
    finally:
        lab.destroy()


class Child:
    """One VIP manager process in a member namespace, with its leadership file."""

    def __init__(self, lab: NetnsLab, name: str, tmp: Path) -> None:
        self.file = tmp / f"{name}.leadership"
        self.file.write_text("0 0 0")
        argv = [sys.executable, "-m", "tests.integration.vip_child", VIP, MEMBER_IF, str(self.file)]
        self.process = subprocess.Popen(
            lab.exec_argv(name, [*argv, str(ACQUIRE_DELAY)]),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def lead(self, term: int, quorum: bool = True) -> None:
        self.file.write_text(f"1 {term} {int(quorum)}")

    def follow(self) -> None:
        self.file.write_text("0 0 0")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def children(lab: NetnsLab, tmp_path: Path) -> Iterator[dict[str, Child]]:
    started: dict[str, Child] = {}
    try:
        for name in ("n1", "n2"):
            started[name] = Child(lab, name, tmp_path)
        yield started
    finally:
        for child in started.values():
            child.stop()


def _mac(lab: NetnsLab, name: str) -> str:
    out = ip("-n", lab.members[name].netns, "-o", "link", "show", MEMBER_IF).stdout
    return out.split("link/ether", 1)[1].split()[0]


def _client_sees(lab: NetnsLab) -> str | None:
    """The MAC the client's neighbour table has for the VIP."""
    out = ip("-n", lab.members["client"].netns, "neigh", "show", VIP).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


_REACH = f"""
import socket
try:
    socket.create_connection(("{VIP}", 9), timeout=1).close()
except ConnectionRefusedError:
    pass  # a RST: the holder answered
"""


def _ping(lab: NetnsLab) -> bool:
    """The client reaches the VIP's holder (a TCP connect to a closed port is refused by it)."""
    argv = lab.exec_argv("client", [sys.executable, "-c", _REACH])
    return subprocess.run(argv, capture_output=True).returncode == 0


def test_the_vip_moves_with_leadership_never_doubled_and_clients_follow_by_arp(
    lab: NetnsLab, children: dict[str, Child]
) -> None:
    sampler = HolderSampler(lab, VIP, ["n1", "n2"]).start()
    try:
        children["n1"].lead(term=1)
        wait_for(lambda: sampler.holders_now() == {"n1"}, timeout=10, message="n1 holds the VIP")
        assert _ping(lab)
        assert _client_sees(lab) == _mac(lab, "n1")

        # n1 steps down; n2 is elected in term 2 (the model's ordering: the old one is out first)
        children["n1"].follow()
        children["n2"].lead(term=2)
        wait_for(lambda: sampler.holders_now() == {"n2"}, timeout=10, message="n2 holds the VIP")
        # the gratuitous ARP, not a new lookup by the client, moved the client's entry to n2
        wait_for(lambda: _client_sees(lab) == _mac(lab, "n2"), timeout=5, message="client learnt n2's MAC")
        assert _ping(lab)

        # losing quorum releases at once, without waiting for leadership to go
        children["n2"].lead(term=2, quorum=False)
        wait_for(lambda: not sampler.holders_now(), timeout=5, message="n2 released on losing quorum")
    finally:
        sampler.stop()
    assert not sampler.overlaps, f"two holders at once: {sampler.overlaps[:3]}"
    holders_seen = {holder for sample in sampler.samples for holder in sample.holders}
    assert holders_seen == {"n1", "n2"}


def test_a_new_leader_waits_the_acquire_delay(lab: NetnsLab, children: dict[str, Child]) -> None:
    import time

    children["n1"].lead(term=1)
    started = time.monotonic()
    wait_for(lambda: VIP in lab.addresses("n1"), timeout=10, interval=0.01, message="n1 holds the VIP")
    assert time.monotonic() - started >= ACQUIRE_DELAY


def test_a_sigkilled_holder_still_gives_the_vip_up(lab: NetnsLab, children: dict[str, Child]) -> None:
    children["n1"].lead(term=1)
    wait_for(lambda: VIP in lab.addresses("n1"), timeout=10, message="n1 holds the VIP")
    children["n1"].process.kill()  # no chance to clean up: the guard process must do it
    children["n1"].process.wait()
    wait_for(lambda: VIP not in lab.addresses("n1"), timeout=5, message="the guard removed the VIP")


def test_shutdown_releases_and_a_restart_clears_a_leftover(lab: NetnsLab, children: dict[str, Child]) -> None:
    children["n1"].lead(term=1)
    wait_for(lambda: VIP in lab.addresses("n1"), timeout=10, message="n1 holds the VIP")
    children["n1"].stop()
    assert VIP not in lab.addresses("n1")
    # a VIP left on n2's interface by someone else (a crashed earlier run) is removed on start
    children["n2"].stop()
    ip("-n", lab.members["n2"].netns, "addr", "add", f"{VIP}/32", "dev", MEMBER_IF)
    tmp = children["n2"].file.parent
    children["n2"] = Child(lab, "n2", tmp)
    wait_for(lambda: VIP not in lab.addresses("n2"), timeout=5, message="the leftover VIP was removed")
