"""The watchdog's MQTT events (VIP holder, leader, config_version): every node publishes what the
watchdog committed, under one event id derived from the Raft state."""

from __future__ import annotations

import trio

from consensus import MemoryCluster
from pgbalancer.config import parse_config_text
from pgbalancer.events import payloads
from pgbalancer.events.schemas import schema_for_topic, validate
from pgbalancer.events.service import EventService
from pgbalancer.health.controller import HaController
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.watchdog import WatchdogService

CONFIG = parse_config_text(
    "auth_type = trust\nbackend_hostname0 = db\nnode_name = n1\nworkers = 1\n"
    "delegate_ip = 192.0.2.10\ndelegate_ip_interface = eth0\n"
)


def test_taking_and_releasing_the_vip_publish_retained_valid_events() -> None:
    service = EventService(CONFIG, ProxyServer(CONFIG, {}))
    assert service.publish_watchdog_vip("10.0.0.1:9000", "192.0.2.10", "eth0")
    [taken] = service.handoff.take(10)
    assert service.publish_watchdog_vip(None, "192.0.2.10", "eth0")
    [released] = service.handoff.take(10)
    for message in (taken, released):
        assert message.topic == payloads.TOPIC_WATCHDOG_VIP and message.retain
        assert validate(message.decoded(), schema_for_topic(message.topic)) == []
    assert taken.decoded()["holder"] == "10.0.0.1:9000" and taken.decoded()["node"] == "n1"
    assert released.decoded()["holder"] is None
    assert released.decoded()["vip"] == "192.0.2.10" and released.decoded()["interface"] == "eth0"


def test_every_node_publishes_the_committed_holder_under_one_event_id() -> None:
    cluster = MemoryCluster(MEMBERS)
    nodes = [watchdog_with_events(cluster, member) for member in MEMBERS]
    published: list[list[dict[str, object]]] = [[] for _ in nodes]

    def collect() -> None:  # each step on its own: a waiting retained state is replaced by a newer one
        for seen, (_watchdog, events) in zip(published, nodes, strict=True):
            seen.extend(message.decoded() for message in events.handoff.take(10))

    cluster.elect(MEMBERS[1])
    collect()
    assert published == [[], [], []]  # the retained leader went to the leader's topic, not the VIP's
    trio.run(cluster.store(MEMBERS[1]).set_vip_holder, MEMBERS[1])
    collect()
    trio.run(cluster.store(MEMBERS[1]).set_vip_holder, MEMBERS[1])  # unchanged: nothing new
    collect()
    cluster.elect(MEMBERS[2])
    trio.run(cluster.store(MEMBERS[2]).set_vip_holder, None)  # released
    collect()
    for node_published in published:
        assert [(p["holder"], p["event_id"]) for p in node_published] == [
            (MEMBERS[1], "vip:127.0.0.1:9002:1"),
            (None, "vip:none:2"),
        ]
        for payload in node_published:
            assert validate(payload, schema_for_topic(payloads.TOPIC_WATCHDOG_VIP)) == []
            assert payload["vip"] == "192.0.2.10" and payload["interface"] == "eth0"


def test_leader_events_carry_the_term_as_their_id() -> None:
    service = EventService(CONFIG, ProxyServer(CONFIG, {}))
    service.publish_watchdog_leader("127.0.0.1:9001", 7)
    [elected] = service.handoff.take(10)
    service.publish_watchdog_leader(None, 8)
    [electing] = service.handoff.take(10)
    assert (elected.decoded()["event_id"], electing.decoded()["event_id"]) == ("leader:7", "leader:8:none")
    assert validate(elected.decoded(), schema_for_topic(payloads.TOPIC_WATCHDOG_LEADER)) == []


MEMBERS = ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003")


def watchdog_with_events(cluster: MemoryCluster, member: str) -> tuple[WatchdogService, EventService]:
    cfg = parse_config_text(
        "auth_type = trust\nbackend_hostname0 = db\nworkers = 1\n"
        "delegate_ip = 192.0.2.10\ndelegate_ip_interface = eth0\n"
        f"watchdog_nodes = '{','.join(MEMBERS)}'\nwatchdog_port = {member.rsplit(':', 1)[1]}\n"
        f"watchdog_secret = s\nnode_name = {member}\n"
    )
    proxy = ProxyServer(cfg, {})
    events = EventService(cfg, proxy)
    watchdog = WatchdogService(cfg, proxy, cluster.store(member), HaController(cfg, proxy), events)
    watchdog.store.add_state_listener(watchdog._on_state)
    return watchdog, events


def test_a_committed_config_version_is_announced_as_cluster_config_from_raft() -> None:
    service = EventService(CONFIG, ProxyServer(CONFIG, {}))
    assert service.publish_config_version(4)
    [message] = service.handoff.take(10)
    document = message.decoded()
    assert message.topic == payloads.TOPIC_CLUSTER_CONFIG and not message.retain
    assert validate(document, schema_for_topic(message.topic)) == []
    assert (document["source"], document["config_version"], document["event_id"]) == ("raft", 4, "config:4")
