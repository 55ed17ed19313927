"""The VIP manager shell on the in-memory watchdog cluster, with a recording executor (autojump clock)."""

from __future__ import annotations

import trio
import trio.testing

from consensus import MemoryCluster
from pgbalancer.config import parse_config_text
from pgbalancer.vip.commands import VipCommands
from pgbalancer.vip.executor import VipExecutor
from pgbalancer.vip.manager import VipManager, manager_for

MEMBERS = ("a:1", "b:1", "c:1")
CONFIG = parse_config_text(
    "auth_type = trust\nbackend_hostname0 = db\ndelegate_ip = 192.0.2.10\ndelegate_ip_interface = eth0\n"
)


class Interfaces:
    """Who has the address now, across all fake members; fails the test on a second holder."""

    def __init__(self) -> None:
        self.holders: set[str] = set()
        self.log: list[tuple[float, str, str]] = []


class RecordingExecutor(VipExecutor):
    def __init__(self, name: str, interfaces: Interfaces) -> None:
        super().__init__(VipCommands("192.0.2.10", "eth0", ("up",), ("down",), ("arp",)))
        self.name = name
        self.interfaces = interfaces
        self.fail_acquire = False

    async def acquire(self) -> bool:
        self.interfaces.log.append((trio.current_time(), self.name, "acquire"))
        if self.fail_acquire:
            return False
        assert not self.interfaces.holders - {self.name}, (
            f"{self.name} acquires while {self.interfaces.holders}"
        )
        self.interfaces.holders.add(self.name)
        return True

    async def release(self) -> bool:
        self.interfaces.log.append((trio.current_time(), self.name, "release"))
        self.interfaces.holders.discard(self.name)
        return True

    async def announce(self) -> bool:
        self.interfaces.log.append((trio.current_time(), self.name, "announce"))
        return True


def _holds(manager: VipManager) -> bool:
    return manager.holds  # a call, so the type checker does not narrow the property between looks


def _managers(cluster: MemoryCluster, interfaces: Interfaces) -> dict[str, VipManager]:
    managers = {}
    for member in MEMBERS:
        manager = manager_for(CONFIG, cluster.store(member))
        assert manager is not None
        manager.executor = RecordingExecutor(member, interfaces)
        managers[member] = manager
    return managers


async def test_the_leader_takes_the_vip_after_the_delay_and_the_store_knows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster, interfaces = MemoryCluster(MEMBERS), Interfaces()
    managers = _managers(cluster, interfaces)
    heard: list[bool] = []
    managers["a:1"].listeners.append(heard.append)
    async with trio.open_nursery() as nursery:
        for manager in managers.values():
            await nursery.start(manager.run)
        cluster.elect("a:1")
        elected = trio.current_time()
        while not _holds(managers["a:1"]):
            await trio.sleep(0.01)
        assert trio.current_time() - elected >= managers["a:1"].timing.acquire_delay
        await trio.sleep(1.0)
        assert cluster.state.vip_holder == "a:1" and cluster.store("a:1").holds_vip
        status = cluster.store("b:1").status(trio.current_time())
        assert [m.id for m in status.members if m.holds_vip] == ["a:1"]
        assert sum(1 for _, who, what in interfaces.log if (who, what) == ("a:1", "announce")) == 3

        # cut off: released at once (woken by the leader change), then b is elected and takes it
        cluster.isolate("a:1")
        cut = trio.current_time()
        while _holds(managers["a:1"]):
            await trio.sleep(0.001)
        assert trio.current_time() - cut < 0.01
        cluster.elect("b:1")
        while not _holds(managers["b:1"]):
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert heard == [True, False]
    assert interfaces.holders == set()  # leaving run released everywhere


async def test_a_failed_acquire_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    cluster, interfaces = MemoryCluster(MEMBERS), Interfaces()
    manager = _managers(cluster, interfaces)["a:1"]
    executor = manager.executor
    assert isinstance(executor, RecordingExecutor)
    executor.fail_acquire = True
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        cluster.elect("a:1")
        await trio.sleep(3.0)
        assert not _holds(manager)
        executor.fail_acquire = False
        await trio.sleep(2.0)
        assert _holds(manager)
        nursery.cancel_scope.cancel()
    attempts = [what for _, who, what in interfaces.log if what == "acquire"]
    assert len(attempts) >= 3  # failed, retried after the pause, until it worked
