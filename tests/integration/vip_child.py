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

from pgbalancer.config import parse_config_text
from pgbalancer.vip.executor import VipExecutor
from pgbalancer.vip.manager import VipManager, vip_commands, vip_timing
from pgbalancer.vip.rule import FOLLOWER, Leadership


def read_leadership(path: Path) -> Leadership:
    try:
        leader, term, quorum = (int(word) for word in path.read_text().split())
    except (OSError, ValueError):
        return FOLLOWER
    return Leadership(leader=bool(leader), term=term, quorum=bool(quorum))


async def main(vip: str, interface: str, leadership_file: Path, acquire_delay: float) -> None:
    # The default commands, as a node would run them.
    text = (
        "auth_type = trust\nbackend_hostname0 = localhost\n"
        f"delegate_ip = {vip}\ndelegate_ip_interface = {interface}\n"
        "delegate_ip_arp_count = 2\ndelegate_ip_arp_interval = 0.2\n"
    )
    config = parse_config_text(text)
    timing = vip_timing(config, leader_fallback_timeout=0.0, acquire_delay=acquire_delay)
    manager = VipManager(VipExecutor(vip_commands(config)), timing, lambda: read_leadership(leadership_file))
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            print("ready", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))
