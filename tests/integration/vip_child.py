"""A VIP manager run on its own inside a network namespace, for tests/integration/test_vip_netns.py.

``python -m tests.integration.vip_child VIP IF LEADERSHIP_FILE ACQUIRE_DELAY`` runs the real
:class:`~pgbalancer.vip.manager.VipManager` with the default commands; its leadership is read from
LEADERSHIP_FILE at every look ("leader term quorum" as three integers, anything else = follower),
which the test rewrites to play Raft. SIGTERM ends it cleanly (releasing the VIP).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from pgbalancer.vip.commands import (
    DEFAULT_ARPING_CMD,
    DEFAULT_IF_DOWN_CMD,
    DEFAULT_IF_UP_CMD,
    VipCommands,
)
from pgbalancer.vip.executor import VipExecutor
from pgbalancer.vip.manager import VipManager
from pgbalancer.vip.rule import FOLLOWER, Leadership, VipTiming


def read_leadership(path: Path) -> Leadership:
    try:
        leader, term, quorum = (int(word) for word in path.read_text().split())
    except (OSError, ValueError):
        return FOLLOWER
    return Leadership(leader=bool(leader), term=term, quorum=bool(quorum))


async def main(vip: str, interface: str, leadership_file: Path, acquire_delay: float) -> None:
    commands = VipCommands.from_templates(
        vip, interface, DEFAULT_IF_UP_CMD, DEFAULT_IF_DOWN_CMD, DEFAULT_ARPING_CMD
    )
    timing = VipTiming(acquire_delay=acquire_delay, announce_count=2, announce_interval=0.2)
    manager = VipManager(VipExecutor(commands), timing, lambda: read_leadership(leadership_file))
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            print("ready", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))
