"""The event service in-process: a real amqtt broker thread, a real paho subscriber, the trio shell.

The cluster-view listener path is driven with ``ProxyServer.update_cluster_view`` (what the health
checker and the failover engine call), which no outside client can reach.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from pgbalancer.config import Config, MqttMode, diff_configs, parse_config_text
from pgbalancer.devtools import free_tcp_port
from pgbalancer.events import payloads
from pgbalancer.events.service import EventService
from pgbalancer.ha.view import BackendRole, BackendStatus
from pgbalancer.proxy.server import ProxyServer
from tests.integration.mqtt_support import Subscriber
from tests.integration.tls_support import make_tls_files

T = TypeVar("T")
USERS = '"monitor" "monitor-pw"\n'


def make_config(tmp_path: Path, **extra: object) -> Config:
    users = tmp_path / "mqtt_users.txt"
    if not users.exists():
        users.write_text(USERS)
    settings: dict[str, object] = {
        "auth_type": "trust",
        "backend_hostname0": "db0",
        "backend_hostname1": "db1",
        "backend_port1": 5433,
        "workers": 1,
        "mqtt_port": free_tcp_port(),
        "mqtt_listen_addresses": "127.0.0.1",
        "mqtt_user_file": str(users),
        "mqtt_stats_interval": 60,
        "node_name": "unit-node",
        **extra,
    }
    return parse_config_text("".join(f"{key} = '{value}'\n" for key, value in settings.items()))


async def blocking(function: Callable[..., T], *args: object) -> T:
    """Run a blocking paho call off the trio thread, which must keep serving the service."""
    return await trio.to_thread.run_sync(partial(function, *args))


@contextlib.asynccontextmanager
async def running(config: Config, capacity: int = 1000) -> AsyncIterator[EventService]:
    service = EventService(config, ProxyServer(config, {}), capacity=capacity)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def subscribed(port: int, topic: str = "pgbalancer/#", **login: str) -> AsyncIterator[Subscriber]:
    client = Subscriber(port, **login)
    try:
        assert await blocking(client.connect), client.connect_result
        await blocking(client.subscribe, topic)
        yield client
    finally:
        await blocking(client.close)


MONITOR = {"username": "monitor", "password": "monitor-pw"}


def stamp(event_id: str) -> payloads.Stamp:
    return payloads.Stamp("unit-node", 0.0, event_id, 0)


async def test_a_standby_going_down_reaches_subscribers_and_stays_retained(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service, subscribed(config.mqtt_port, **MONITOR) as live:
        proxy = service.proxy
        down = replace(proxy.cluster_view.backend(1), status=BackendStatus.DOWN, health_score=0.0)
        proxy.update_cluster_view(proxy.cluster_view.with_backend(down), "health check: connection refused")

        status = await blocking(live.wait_for, "pgbalancer/nodes/1/status", lambda m: not m.retain)
        document = status.checked()
        assert document["backend"]["status"] == "down"
        assert document["reason"] == "health check: connection refused"
        health = await blocking(
            live.wait_for, "pgbalancer/cluster/health", lambda m: m.document["reason"] != "startup"
        )
        assert [b["status"] for b in health.checked()["backends"]] == ["up", "down"]

        async with subscribed(config.mqtt_port, **MONITOR) as late:
            retained = await blocking(late.wait_for, "pgbalancer/nodes/1/status")
            assert retained.retain
            assert retained.checked()["backend"]["status"] == "down"
            assert (await blocking(late.wait_for, "pgbalancer/cluster/health")).retain


async def test_a_new_primary_publishes_the_failover_with_its_details(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service, subscribed(config.mqtt_port, **MONITOR) as live:
        proxy = service.proxy
        view = proxy.cluster_view
        promoted = replace(view.backend(1), role=BackendRole.PRIMARY)
        failed = replace(view.backend(0), status=BackendStatus.DOWN)
        new_view = view.with_backend(promoted).with_backend(failed).with_primary(1)
        proxy.update_cluster_view(new_view, "failover", {"duration": 2.5, "kind": "failover"})

        failover = (await blocking(live.wait_for, "pgbalancer/cluster/failover")).checked()
        assert (failover["old_primary"], failover["new_primary"], failover["epoch"]) == (0, 1, 1)
        assert failover["duration_seconds"] == 2.5
        assert failover["event_id"] == "failover:1:0:1"
        assert failover["node"] == "unit-node"


@pytest.mark.slow
async def test_refused_clients_are_counted_logged_and_their_publishes_never_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgbalancer.events")
    config = make_config(tmp_path)
    async with running(config) as service, subscribed(config.mqtt_port, **MONITOR) as watcher:
        for login in (
            {},
            {"username": "monitor", "password": "wrong"},
            {"username": "nobody", "password": "x"},
        ):
            client = Subscriber(config.mqtt_port, **login)
            try:
                assert not await blocking(client.connect)
                assert "authori" in (client.connect_result or "").lower()
            finally:
                await blocking(client.close)
        assert service.statistics().connections_refused == 3

        await blocking(watcher.subscribe, "elsewhere/#")
        await blocking(watcher.publish, "pgbalancer/cluster/failover", b'{"forged": true}')
        await blocking(watcher.publish, "elsewhere/marker", b"after the forged one")
        await blocking(
            watcher.wait_for, "elsewhere/marker"
        )  # delivered in order: the forged one had its turn
        assert watcher.received("pgbalancer/cluster/failover") == []
        assert service.statistics().publishes_refused == 1
    refusals = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]
    assert len(refusals) == 4, refusals
    for expected in (
        "refused: no user name and mqtt_allow_anonymous = off",
        "(user 'monitor') refused: wrong password",
        "(user 'nobody') refused: user not in mqtt_user_file",
        "refused: may not publish to 'pgbalancer/cluster/failover'",
    ):
        assert any(expected in message for message in refusals), (expected, refusals)


async def test_with_anonymous_allowed_a_client_without_a_name_receives_but_may_not_publish_ours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgbalancer.events")
    config = make_config(tmp_path, mqtt_allow_anonymous="on")
    async with running(config) as service, subscribed(config.mqtt_port) as anonymous:
        retained = await blocking(anonymous.wait_for, "pgbalancer/cluster/health")
        assert retained.retain and retained.checked()["node"] == "unit-node"
        assert service.publish(payloads.cluster_config(("max_pool",), ("max_pool",), (), stamp("live")))
        live = await blocking(anonymous.wait_for, "pgbalancer/cluster/config")
        assert live.checked()["event_id"] == "live"

        await blocking(anonymous.subscribe, "elsewhere/#")
        await blocking(anonymous.publish, "pgbalancer/cluster/failover", b'{"forged": true}')
        await blocking(anonymous.publish, "elsewhere/marker", b"after the forged one")
        await blocking(anonymous.wait_for, "elsewhere/marker")  # in order: the forged one had its turn
        assert anonymous.received("pgbalancer/cluster/failover") == []
        stats = service.statistics()
        assert (stats.publishes_refused, stats.connections_refused) == (1, 0)
    assert any(
        "refused: may not publish to 'pgbalancer/cluster/failover'" in r.getMessage()
        and "no user name" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


async def test_a_debug_log_never_shows_the_external_broker_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the whole process at DEBUG, amqtt's loggers included
    secret = "s3cret-broker-pw"
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    (broker_dir / "mqtt_users.txt").write_text(f'"publisher" "{secret}"\n')
    broker = make_config(broker_dir)
    url = f"mqtt://publisher:{secret}@127.0.0.1:{broker.mqtt_port}"
    publisher = make_config(tmp_path, mqtt_mode="external", mqtt_broker_url=url)

    def admitted() -> bool:
        return any(
            "'pgbalancer-unit-node'" in r.getMessage() and "refused" not in r.getMessage()
            for r in caplog.records
        )

    async with running(broker), running(publisher):
        with trio.fail_after(15):
            while not admitted():  # the external client connected, with the password, and got in
                await trio.sleep(0.02)
    assert secret not in caplog.text
    assert not [r for r in caplog.records if secret in r.getMessage()]
    assert "publisher:********@127.0.0.1" in caplog.text  # our own line names the broker, redacted


async def test_a_reload_publishes_the_config_event_and_rereads_the_users(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service, subscribed(config.mqtt_port, **MONITOR) as live:
        (tmp_path / "mqtt_users.txt").write_text(USERS + '"ops" "ops-pw"\n')
        new_config = replace(config, mqtt_stats_interval=0.2)
        service.config_reloaded(diff_configs(config, new_config), new_config)

        event = (await blocking(live.wait_for, "pgbalancer/cluster/config")).checked()
        assert event["changed"] == ["mqtt_stats_interval"]
        assert event["applied_live"] == ["mqtt_stats_interval"]
        stats = (await blocking(live.wait_for, "pgbalancer/stats/pools")).checked()  # the new, short interval
        assert stats["interval_seconds"] == 0.2

        async def ops_connects() -> bool:
            client = Subscriber(config.mqtt_port, username="ops", password="ops-pw")
            try:
                return await blocking(client.connect)
            finally:
                await blocking(client.close)

        with trio.fail_after(10):
            while not await ops_connects():  # the swap happens on the MQTT thread, soon after
                await trio.sleep(0.05)


@pytest.mark.slow
async def test_a_stuck_subscriber_is_skipped_and_the_others_still_get_everything(tmp_path: Path) -> None:
    config = make_config(tmp_path, mqtt_max_event_rate=100_000)  # fill the stuck client's buffers fast
    async with (
        running(config, capacity=500) as service,
        subscribed(config.mqtt_port, **MONITOR) as stuck,
        subscribed(config.mqtt_port, **MONITOR) as healthy,
    ):
        await blocking(stuck.stall)
        # Large non-retained payloads fill the stuck client's socket buffers quickly (retained
        # ones would be coalesced to one per topic while they wait).
        big = payloads.cluster_config(("x" * 2000,), (), (), stamp("big"))
        offered = 0
        with trio.fail_after(60):
            while service.statistics().slow_subscriber_skips == 0:
                for _ in range(100):
                    service.publish(big)
                    offered += 1
                await trio.sleep(0.01)
        with trio.fail_after(30):
            while service.statistics().queue.depth:  # the flood may have filled the queue: let it drain
                await trio.sleep(0.01)
        assert service.publish(payloads.cluster_health(service.proxy.cluster_view, stamp("last"), "last"))
        # Behind the whole flood (thousands of 2 kB messages) on a possibly CPU-starved host: the
        # check is that it arrives, so the deadline is generous (15 s ran out once in fresh-clone CI).
        last = await blocking(
            partial(healthy.wait_for, timeout=60),
            "pgbalancer/cluster/health",
            lambda m: b'"last"' in m.payload,
        )
        assert last.checked()["event_id"] == "last"
        stats = service.statistics()
        assert stats.queue.high_water <= 500
        assert stats.queue.offered == offered + 3 + 1  # startup state, the flood, the last one
        assert stats.slow_subscriber_skips > 0
        assert stuck.received() == [] or len(stuck.received()) < len(healthy.received())


async def test_the_tls_listener_serves_the_same_events(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    tls_port = free_tcp_port()
    config = make_config(
        tmp_path,
        mqtt_tls_cert_file=files.server.cert,
        mqtt_tls_key_file=files.server.key,
        mqtt_tls_port=tls_port,
    )
    async with running(config):
        client = Subscriber(tls_port, **MONITOR).use_tls(files.ca)
        try:
            assert await blocking(client.connect), client.connect_result
            await blocking(client.subscribe, "pgbalancer/#")
            assert (await blocking(client.wait_for, "pgbalancer/cluster/health")).retain
        finally:
            await blocking(client.close)


async def test_a_taken_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, mqtt_port=port)
        service = EventService(config, ProxyServer(config, {}))
        with pytest.raises(OSError, match=f"MQTT broker cannot listen on 127.0.0.1:{port}.*in use"):
            await service.run()


def test_only_worker_0_runs_the_broker(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    proxy = ProxyServer(config, {})
    assert EventService.for_node(config, proxy, None) is not None
    assert EventService.for_node(config, proxy, 0) is not None
    assert EventService.for_node(config, proxy, 1) is None
    assert EventService.for_node(replace(config, mqtt_mode=MqttMode.OFF), proxy, None) is None
