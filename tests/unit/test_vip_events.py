"""The VIP's MQTT event: what a node offers to its broker when it takes or gives up the VIP."""

from __future__ import annotations

from functools import partial

from pgbalancer.config import parse_config_text
from pgbalancer.events import payloads
from pgbalancer.events.schemas import schema_for_topic, validate
from pgbalancer.events.service import EventService
from pgbalancer.node import publish_vip
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.vip.executor import VipExecutor
from pgbalancer.vip.manager import VipManager, vip_commands
from pgbalancer.vip.rule import FOLLOWER, VipTiming

CONFIG = parse_config_text(
    "auth_type = trust\nbackend_hostname0 = db\nnode_name = n1\nworkers = 1\n"
    "delegate_ip = 192.0.2.10\ndelegate_ip_interface = eth0\n"
)


def test_taking_and_releasing_the_vip_publish_retained_valid_events() -> None:
    service = EventService(CONFIG, ProxyServer(CONFIG, {}))
    assert service.publish_watchdog_vip("10.0.0.1:9000", "192.0.2.10", "eth0")
    assert service.publish_watchdog_vip(None, "192.0.2.10", "eth0")
    taken, released = service.handoff.take(10)
    for message in (taken, released):
        assert message.topic == payloads.TOPIC_WATCHDOG_VIP and message.retain
        assert validate(message.decoded(), schema_for_topic(message.topic)) == []
    assert taken.decoded()["holder"] == "10.0.0.1:9000" and taken.decoded()["node"] == "n1"
    assert released.decoded()["holder"] is None
    assert released.decoded()["vip"] == "192.0.2.10" and released.decoded()["interface"] == "eth0"


def test_the_node_publishes_each_change_of_hands_with_its_member_id() -> None:
    service = EventService(CONFIG, ProxyServer(CONFIG, {}))
    manager = VipManager(VipExecutor(vip_commands(CONFIG)), VipTiming(acquire_delay=1.0), lambda: FOLLOWER)
    manager.listeners.append(partial(publish_vip, service, manager, "10.0.0.1:9000"))
    for listener in manager.listeners:
        listener(True)
        listener(False)
    holders = [message.decoded()["holder"] for message in service.handoff.take(10)]
    assert holders == ["10.0.0.1:9000", None]
