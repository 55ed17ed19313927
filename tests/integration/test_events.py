"""MQTT events end to end: real pgbalancer nodes, a real paho subscriber, real triggers.

Covers issue 8's acceptance tests: cluster/config after a SIGHUP reload, stats/pools after traffic,
retained state for a late subscriber, refused clients (logged), nodes/{id}/status + cluster/health
after a real backend outage, cache/invalidate after a write through a caching node, external mode against
a real Mosquitto, and 10,000-event floods with a stuck subscriber that leave query latency alone.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pgbalancer.config import parse_config_text
from pgbalancer.devtools import free_tcp_port, wait_for
from pgbalancer.devtools.balancer import BalancerProcess, Setting, render_config
from pgbalancer.devtools.pgcluster import APP_DB, LocalPgCluster, PgClusterLike
from pgbalancer.events import payloads
from pgbalancer.events.service import EventService
from pgbalancer.proxy.server import ProxyServer
from tests.integration.mqtt_support import MOSQUITTO, Received, Subscriber, run_mosquitto, subscriber
from tests.integration.proxy_support import USERLIST, api_base_url, api_login, base_settings
from tests.integration.test_watchdog_cluster import Trio, index_of, under_one_leader

MONITOR = {"username": "monitor", "password": "monitor-pw"}
APP_USER = "app_scram"


@dataclass
class EventsNode:
    node: BalancerProcess
    settings: dict[str, Setting]

    @property
    def mqtt_port(self) -> int:
        return int(self.settings["mqtt_port"])

    def reload_with(self, **changes: Setting) -> None:
        self.settings.update(changes)
        self.node.reload(self.settings)


def mqtt_settings(workdir: Path) -> dict[str, Setting]:
    users = workdir / "mqtt_users.txt"
    users.parent.mkdir(parents=True, exist_ok=True)
    users.write_text(f'"{MONITOR["username"]}" "{MONITOR["password"]}"\n')
    return {
        "mqtt_mode": "embedded",
        "mqtt_port": free_tcp_port(),
        "mqtt_listen_addresses": "127.0.0.1",
        "mqtt_user_file": str(users),
        "mqtt_stats_interval": 0.5,
        "node_name": "events-test-node",
    }


def start_events_node(cluster: PgClusterLike, workdir: Path, **overrides: Setting) -> EventsNode:
    settings = base_settings(cluster, workdir)
    settings.update(mqtt_settings(workdir), **overrides)
    return EventsNode(BalancerProcess.start(workdir / "node", settings), settings)


@pytest.fixture
def events_node(pg_cluster: PgClusterLike, tmp_path: Path) -> Iterator[EventsNode]:
    started = start_events_node(pg_cluster, tmp_path)
    try:
        yield started
    finally:
        started.node.stop()


@pytest.fixture
def monitor(events_node: EventsNode) -> Iterator[Subscriber]:
    with subscriber(events_node.mqtt_port, **MONITOR) as client:
        assert client.connect(), client.connect_result
        client.subscribe("pgbalancer/#")
        yield client


@pytest.mark.slow
def test_a_sighup_reload_publishes_the_changed_keys(events_node: EventsNode, monitor: Subscriber) -> None:
    events_node.reload_with(max_pool=5, port=free_tcp_port())
    event = monitor.wait_for("pgbalancer/cluster/config").checked()
    assert sorted(event["changed"]) == ["max_pool", "port"]
    assert event["applied_live"] == ["max_pool"]
    assert event["restart_required"] == ["port"]
    assert event["node"] == "events-test-node"
    assert not monitor.received("pgbalancer/cluster/config")[0].retain


@pytest.mark.slow
def test_pool_statistics_follow_the_traffic(events_node: EventsNode, monitor: Subscriber) -> None:
    dsn = events_node.node.dsn(APP_USER, APP_DB, USERLIST[APP_USER])
    with psycopg.connect(dsn, autocommit=True) as connection:
        for _ in range(3):
            connection.execute("SELECT 1").fetchall()

    def counts_our_queries(message: Received) -> bool:
        document = message.document
        return any(
            pool["database"] == APP_DB and pool["user"] == APP_USER and pool["query_count"] >= 3
            for pool in document["pools"]
        )

    stats = monitor.wait_for("pgbalancer/stats/pools", counts_our_queries).checked()
    assert stats["interval_seconds"] == 0.5
    assert stats["events_dropped"] == 0


@pytest.mark.slow
def test_a_write_through_a_caching_node_publishes_the_cache_invalidation(
    pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    pg_cluster.psql(
        pg_cluster.primary,
        "DROP TABLE IF EXISTS events_cached; CREATE TABLE events_cached (id int); "
        "GRANT ALL ON events_cached TO PUBLIC;",
        dbname=APP_DB,
    )
    started = start_events_node(pg_cluster, tmp_path, memory_cache_enabled=True, pool_mode="transaction")
    try:
        with subscriber(started.mqtt_port, **MONITOR) as client:
            assert client.connect(), client.connect_result
            client.subscribe("pgbalancer/cache/invalidate")
            dsn = started.node.dsn(APP_USER, APP_DB, USERLIST[APP_USER])
            with psycopg.connect(dsn, autocommit=True) as connection:
                connection.execute("SELECT count(*) FROM events_cached").fetchall()  # cached now
                connection.execute("INSERT INTO events_cached VALUES (1)")

            def names_our_table(message: Received) -> bool:
                return any(table.endswith("events_cached") for table in message.document["tables"])

            event = client.wait_for("pgbalancer/cache/invalidate", names_our_table).checked()
        assert event["all"] is False and event["node"] == "events-test-node"
        assert not client.received("pgbalancer/cache/invalidate")[0].retain
    finally:
        started.node.stop()


@pytest.mark.slow
def test_pool_statistics_of_a_multi_worker_node_add_up_every_worker(
    pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    started = start_events_node(pg_cluster, tmp_path, workers=2, pool_mode="transaction")
    try:
        with subscriber(started.mqtt_port, **MONITOR) as watcher:
            # Worker 0 runs the broker; the proxy port may answer a moment before it does.
            wait_for(watcher.connect, timeout=15, message="worker 0's broker", retry_on=(OSError,))
            watcher.subscribe("pgbalancer/stats/pools")
            dsn = started.node.dsn(APP_USER, APP_DB, USERLIST[APP_USER])
            for _ in range(20):  # SO_REUSEPORT spreads new connections over both workers
                with psycopg.connect(dsn, autocommit=True) as connection:
                    connection.execute("SELECT 1").fetchall()

            def app_queries(message: Received) -> int:
                return sum(
                    pool["query_count"]
                    for pool in message.document["pools"]
                    if (pool["database"], pool["user"]) == (APP_DB, APP_USER)
                )

            stats = watcher.wait_for("pgbalancer/stats/pools", lambda m: app_queries(m) >= 20).checked()
            assert app_queries(watcher.received("pgbalancer/stats/pools")[-1]) == 20
            app_pools = [p for p in stats["pools"] if (p["database"], p["user"]) == (APP_DB, APP_USER)]
            assert sum(p["max_size"] for p in app_pools if p["backend_id"] == 0) == 20  # 10 per worker
    finally:
        started.node.stop()


@pytest.mark.slow
def test_a_late_subscriber_gets_the_retained_state(
    pg_cluster: PgClusterLike, events_node: EventsNode
) -> None:
    with subscriber(events_node.mqtt_port, **MONITOR) as late:
        assert late.connect()
        late.subscribe("pgbalancer/#")
        health = late.wait_for("pgbalancer/cluster/health", lambda m: m.retain).checked()
        assert health["backends_total"] == len(pg_cluster.nodes)
        for node_id in range(len(pg_cluster.nodes)):
            status = late.wait_for(payloads.node_status_topic(node_id), lambda m: m.retain).checked()
            assert status["backend"]["backend_id"] == node_id


@pytest.mark.slow
def test_refused_clients_are_refused_and_logged(events_node: EventsNode, monitor: Subscriber) -> None:
    for login, why in (
        ({}, "refused: no user name and mqtt_allow_anonymous = off"),
        ({"username": "monitor", "password": "not-the-password"}, "(user 'monitor') refused: wrong password"),
    ):
        with subscriber(events_node.mqtt_port, **login) as refused:
            assert not refused.connect(), f"{login} was admitted"
            assert "authori" in (refused.connect_result or "").lower()
        wait_for(
            lambda why=why: any(  # type: ignore[misc]
                "WARNING" in line and why in line for line in events_node.node.log_text().splitlines()
            ),
            timeout=5,
            message=f"the refusal ({why}) in the node's log output",
        )

    monitor.subscribe("elsewhere/#")
    monitor.publish("pgbalancer/cluster/failover", b'{"forged": true}', retain=True)
    monitor.publish("elsewhere/marker", b"published after the forged event")
    monitor.wait_for("elsewhere/marker")
    assert monitor.received("pgbalancer/cluster/failover") == []
    log_text = events_node.node.log_text()
    assert "refused: may not publish to 'pgbalancer/cluster/failover'" in log_text
    assert "not-the-password" not in log_text
    with subscriber(events_node.mqtt_port, **MONITOR) as late:  # nor was it retained
        assert late.connect()
        late.subscribe("pgbalancer/#")
        late.wait_for("pgbalancer/cluster/health", lambda m: m.retain)
        assert late.received("pgbalancer/cluster/failover") == []


@pytest.mark.slow
def test_a_stopped_standby_is_published_as_down(
    pg_cluster_factory: Callable[..., LocalPgCluster], tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=1)
    started = start_events_node(cluster, tmp_path, health_check_period=0.5)
    try:
        with subscriber(started.mqtt_port, **MONITOR) as watcher:
            assert watcher.connect()
            watcher.subscribe("pgbalancer/#")
            watcher.wait_for("pgbalancer/nodes/1/status", lambda m: m.document["backend"]["status"] == "up")
            cluster.stop_node(cluster.standbys[0])

            def down(message: Received) -> bool:
                return bool(message.document["backend"]["status"] != "up")

            status = watcher.wait_for("pgbalancer/nodes/1/status", down, timeout=30).checked()
            assert status["previous_status"] == "up"
            health = watcher.wait_for(
                "pgbalancer/cluster/health",
                lambda m: m.document["backends"][1]["status"] != "up",
                timeout=30,
            ).checked()
            assert health["backends_up"] == 1
    finally:
        started.node.stop()


@pytest.mark.slow
@pytest.mark.skipif(
    not MOSQUITTO.exists(), reason=f"{MOSQUITTO} is missing; `make test` installs Debian's mosquitto"
)
def test_external_mode_publishes_to_a_real_mosquitto(pg_cluster: PgClusterLike, tmp_path: Path) -> None:
    with run_mosquitto(tmp_path) as port:
        with subscriber(port) as watcher:
            assert watcher.connect(), watcher.connect_result
            watcher.subscribe("pgbalancer/#")
            started = start_events_node(
                pg_cluster, tmp_path, mqtt_mode="external", mqtt_broker_url=f"mqtt://127.0.0.1:{port}"
            )
            try:
                watcher.wait_for("pgbalancer/nodes/0/status").checked()
                started.reload_with(max_pool=6)
                assert watcher.wait_for("pgbalancer/cluster/config").checked()["changed"] == ["max_pool"]
            finally:
                started.node.stop()
        with subscriber(port) as late:  # mosquitto kept the retained state
            assert late.connect()
            late.subscribe("pgbalancer/#")
            assert late.wait_for("pgbalancer/cluster/health").retain


# --------------------------------------------------------------------------- the flood

FLOOD_EVENTS = 10_000  # offered in every flood phase
ROUNDS = 6  # quiet and flooded phases alternate, so load drifting on the machine hits both alike
SAMPLES = 60  # SELECT 1 round trips per phase and round
RATE = 200.0  # mqtt_max_event_rate


def _query_latencies(dsn: str, samples: int) -> list[float]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT 1").fetchall()  # warm: pool connection opened
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            connection.execute("SELECT 1").fetchall()
            latencies.append(time.perf_counter() - started)
    return latencies


@pytest.mark.slow
async def test_a_flood_with_a_stuck_subscriber_never_stalls_queries(
    pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    settings = base_settings(pg_cluster, tmp_path)
    settings.update(
        mqtt_settings(tmp_path), mqtt_stats_interval=3600, pool_mode="transaction", mqtt_max_event_rate=RATE
    )
    config = parse_config_text(render_config(settings))
    proxy = ProxyServer(config, USERLIST)
    service = EventService(config, proxy, capacity=1000)
    dsn = f"host=127.0.0.1 port={config.port} user={APP_USER} dbname={APP_DB} password={USERLIST[APP_USER]}"
    # One prebuilt ~1 KiB event: the trio side of the flood costs only the offers, as in the node.
    event = payloads.cluster_config(("x" * 1000,), (), (), payloads.Stamp("flood", 0.0, "flood", 0))
    quiet: list[float] = []
    flooded: list[float] = []
    offered = 0

    async def flood_while_measuring() -> None:
        nonlocal offered
        measured = trio.Event()

        async def flood() -> None:
            nonlocal offered
            count = 0
            while count < FLOOD_EVENTS or not measured.is_set():
                for _ in range(100):
                    service.publish(event)
                count += 100
                await trio.sleep(0.001)
            offered += count

        async with trio.open_nursery() as flooding:
            flooding.start_soon(flood)
            try:
                flooded.extend(await trio.to_thread.run_sync(_query_latencies, dsn, SAMPLES))
            finally:
                measured.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        began = time.monotonic()
        await nursery.start(service.run)
        stuck = Subscriber(config.mqtt_port, **MONITOR)
        await trio.to_thread.run_sync(stuck.connect)
        await trio.to_thread.run_sync(stuck.subscribe, "pgbalancer/#")
        await trio.to_thread.run_sync(stuck.stall)
        try:
            # A loop stalled by the stuck subscriber would hang these queries: the deadline catches it.
            with trio.fail_after(120):
                for _ in range(ROUNDS):
                    quiet.extend(await trio.to_thread.run_sync(_query_latencies, dsn, SAMPLES))
                    await flood_while_measuring()
            stats = service.statistics()
            elapsed = time.monotonic() - began
        finally:
            await trio.to_thread.run_sync(stuck.close)
        nursery.cancel_scope.cancel()

    quiet_median, flooded_median = statistics.median(quiet), statistics.median(flooded)
    print(
        f"median SELECT 1: {quiet_median * 1e3:.3f} ms quiet, {flooded_median * 1e3:.3f} ms under the flood; "
        f"{stats.queue.delivered} delivered in {elapsed:.1f} s; {stats}"
    )
    # The mechanism, which is what tells this from the behaviour before the bound: the broker thread
    # was handed at most the rate (plus one burst), the rest was dropped (counted), and the queue
    # never grew past its capacity. Unbounded, this run handed the broker 13,000 to 15,000 events in
    # 2 to 4 s, against the 500 to 850 allowed here.
    assert offered >= ROUNDS * FLOOD_EVENTS
    assert stats.queue.delivered <= RATE / 4 + RATE * elapsed, stats
    assert stats.queue.offered >= offered
    assert stats.dropped >= offered - stats.queue.capacity - RATE / 4 - RATE * elapsed
    assert stats.queue.high_water <= stats.queue.capacity
    # The effect, within one run (quiet and flooded rounds interleaved), as a guard against gross
    # regressions only, with slack for a loaded 2-core box. It does not separate the bound from no
    # bound reliably: unbounded, this test saw 0.43 -> 0.77 ms and 0.35 -> 0.43 ms, bounded
    # 0.36 -> 0.45 ms. The figures are bench/mqtt_flood.py's (docs/benchmarks.md).
    raised = f"from {quiet_median * 1e3:.3f} ms to {flooded_median * 1e3:.3f} ms"
    assert flooded_median <= 2 * quiet_median + 0.5e-3, f"the flood raised the median SELECT 1 {raised}"


# --------------------------------------------------------------------------- health-driven failover


@pytest.mark.slow
def test_a_killed_primary_publishes_the_failover_and_the_node_states(
    pg_cluster_factory: Callable[..., LocalPgCluster], tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=1)
    started = start_events_node(
        cluster,
        tmp_path,
        pool_mode="transaction",
        health_check_period=1,
        health_check_max_retries=1,
        health_check_retry_delay=0.3,
        health_check_timeout=3,
        **{f"backend_data_directory{n}": str(node.data_dir) for n, node in enumerate(cluster.nodes)},
    )
    try:
        with subscriber(started.mqtt_port, **MONITOR) as watcher:
            assert watcher.connect()
            watcher.subscribe("pgbalancer/#")
            watcher.wait_for(
                "pgbalancer/nodes/0/status", lambda m: m.document["backend"]["role"] == "primary"
            )
            pid = cluster.postmaster_pid(cluster.primary)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            def to_backend_1(message: Received) -> bool:
                return bool(message.document["new_primary"] == 1)

            failover = watcher.wait_for("pgbalancer/cluster/failover", to_backend_1, timeout=60).checked()
            assert failover["old_primary"] == 0
            assert failover["kind"] == "failover" and failover["reason"]
            assert failover["duration_seconds"] is not None and 0 < failover["duration_seconds"] < 30
            assert failover["node"] == "events-test-node" and failover["epoch"] > 0
            assert not watcher.received("pgbalancer/cluster/failover")[-1].retain

            def down(message: Received) -> bool:
                return bool(message.document["backend"]["status"] != "up")

            old = watcher.wait_for("pgbalancer/nodes/0/status", down, timeout=30).checked()
            assert old["previous_status"] == "up"
            new = watcher.wait_for(
                "pgbalancer/nodes/1/status", lambda m: m.document["backend"]["role"] == "primary", timeout=30
            ).checked()
            assert new["backend"]["status"] == "up"
            health = watcher.wait_for(
                "pgbalancer/cluster/health", lambda m: m.document["primary_id"] == 1, timeout=30
            ).checked()
            assert health["backends_up"] == 1
        with psycopg.connect(started.node.dsn(APP_USER, APP_DB, USERLIST[APP_USER]), autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)  # really on the new one
        metrics = {
            (s.name, s.labels.get("backend")): s.value
            for family in text_string_to_metric_families(
                httpx.get(f"{api_base_url(started.node)}/metrics").text
            )
            for s in family.samples
        }
        assert metrics[("pgbalancer_failovers_total", None)] == 1
        assert (
            metrics[("pgbalancer_backend_primary", "1")] == 1 and metrics[("pgbalancer_backend_up", "0")] == 0
        )
    finally:
        started.node.stop()


@pytest.mark.slow
def test_a_detach_over_rest_publishes_the_node_status_and_the_health(
    events_node: EventsNode, monitor: Subscriber
) -> None:
    headers = {"Authorization": f"Bearer {api_login(events_node.node)}"}
    base = f"{api_base_url(events_node.node)}/api/v1"
    detached = httpx.post(f"{base}/nodes/2/detach", headers=headers, timeout=20)
    assert detached.status_code == 200, detached.text
    status = monitor.wait_for(
        "pgbalancer/nodes/2/status", lambda m: m.document["backend"]["detached"]
    ).checked()
    assert status["backend"]["status"] == "down" and status["previous_status"] == "up"
    assert "detach" in status["reason"]
    health = monitor.wait_for(
        "pgbalancer/cluster/health", lambda m: m.document["backends"][2]["status"] == "down"
    ).checked()
    assert health["backends_up"] == 2
    assert monitor.received("pgbalancer/cluster/failover") == []  # a standby left: the primary stayed
    attached = httpx.post(f"{base}/nodes/2/attach", headers=headers, timeout=20)
    assert attached.status_code == 200, attached.text
    monitor.wait_for(
        "pgbalancer/nodes/2/status", lambda m: not m.document["backend"]["detached"], timeout=30
    ).checked()


# --------------------------------------------------------------------------- several nodes


@pytest.mark.slow
def test_a_subscriber_on_a_followers_broker_gets_the_failover_the_cluster_committed(
    pg_cluster_factory: Callable[..., LocalPgCluster], tmp_path: Path
) -> None:
    """Three watchdog nodes, each with its own broker; the primary dies; every broker tells it alike."""
    cluster = pg_cluster_factory(standbys=2)
    group = Trio(cluster, tmp_path)
    try:
        for index, settings in enumerate(group.settings):
            settings.update(mqtt_settings(tmp_path / f"node{index}"), node_name=f"node{index}")
        for index in range(3):
            group.start(index)
        nodes = group.live()

        def raft_metrics() -> list[dict[str, Sample]]:
            return [
                {
                    s.name: s
                    for family in text_string_to_metric_families(
                        httpx.get(f"{api_base_url(node)}/metrics").text
                    )
                    for s in family.samples
                    if s.name.startswith("pgbalancer_raft_")
                }
                for node in nodes
            ]

        # read while one leader led throughout (leadership may move under CPU load)
        leader_id, metrics = under_one_leader(nodes, raft_metrics)
        leader = index_of(group, leader_id)
        follower = next(i for i in range(3) if i != leader)
        for index, raft in enumerate(metrics):  # /metrics shows the same Raft state
            assert raft["pgbalancer_raft_is_leader"].value == (index == leader)
            assert raft["pgbalancer_raft_quorum"].value == 1 and raft["pgbalancer_raft_term"].value >= 1
            assert (
                raft["pgbalancer_raft_leader_info"].labels["leader"].endswith(f":{group.raft_ports[leader]}")
            )
        mqtt_port = int(group.settings[follower]["mqtt_port"])
        leader_port = int(group.settings[leader]["mqtt_port"])
        with (
            subscriber(mqtt_port, **MONITOR) as on_follower,
            subscriber(leader_port, **MONITOR) as on_leader,
        ):
            for watcher in (on_follower, on_leader):
                assert watcher.connect(), watcher.connect_result
                watcher.subscribe("pgbalancer/cluster/#")
                watcher.subscribe("pgbalancer/watchdog/#")
                watcher.wait_for("pgbalancer/cluster/health", lambda m: m.document["primary_id"] == 0)
            # The retained leader, as the follower's own broker publishes it, with the term as its id.
            current = on_follower.wait_for(
                "pgbalancer/watchdog/leader", lambda m: m.document["leader"] == leader_id
            )
            assert current.checked()["event_id"] == f"leader:{current.document['term']}"
            pid = cluster.postmaster_pid(cluster.primary)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            def moved(message: Received) -> bool:
                return bool(message.document["new_primary"] not in (0, None))

            seen = on_follower.wait_for("pgbalancer/cluster/failover", moved, timeout=60).checked()
            assert seen["node"] == f"node{follower}"  # published by the follower's own broker
            assert seen["old_primary"] == 0
            assert seen["event_id"] == f"failover:{seen['epoch']}:0:{seen['new_primary']}"
            same = on_leader.wait_for("pgbalancer/cluster/failover", moved, timeout=30).checked()
            assert same["event_id"] == seen["event_id"] and same["node"] == f"node{leader}"
            ids = {m.document["event_id"] for m in on_follower.received("pgbalancer/cluster/failover")}
            assert len(ids) == 1, ids  # one committed failover, one event per broker

            # A reload that changes a key on the follower commits config_version 1 through Raft: the
            # leader's broker announces it too, as cluster/config from raft, id config:1.
            group.settings[follower]["max_pool"] = 5
            group.nodes[follower].reload(group.settings[follower])  # type: ignore[union-attr]

            def from_raft(message: Received) -> bool:
                return bool(message.document["source"] == "raft")

            announced = on_leader.wait_for("pgbalancer/cluster/config", from_raft, timeout=30).checked()
            assert (announced["config_version"], announced["event_id"]) == (1, "config:1")
            assert announced["node"] == f"node{leader}"
            local = on_follower.wait_for(
                "pgbalancer/cluster/config", lambda m: m.document["source"] == "reload"
            )
            assert local.checked()["changed"] == ["max_pool"]  # the keys: from the reloading node itself
            assert (
                on_follower.wait_for("pgbalancer/cluster/config", from_raft).document["event_id"]
                == "config:1"
            )

            # The leader's node dies: the follower's broker tells of the new leader, and so does the
            # third node's, under the same event id.
            group.kill(leader)

            def new_leader(message: Received) -> bool:
                return message.document["leader"] not in (None, leader_id)

            elected = on_follower.wait_for("pgbalancer/watchdog/leader", new_leader, timeout=60).checked()
            assert elected["node"] == f"node{follower}"
            assert elected["event_id"] == f"leader:{elected['term']}"
            third = next(i for i in range(3) if i not in (leader, follower))
            with subscriber(int(group.settings[third]["mqtt_port"]), **MONITOR) as late:
                assert late.connect(), late.connect_result
                late.subscribe("pgbalancer/watchdog/leader")
                retained = late.wait_for("pgbalancer/watchdog/leader", new_leader, timeout=30).checked()
            assert retained["node"] == f"node{third}"
            assert retained["event_id"] == f"leader:{retained['term']}"
            assert retained["term"] >= elected["term"]  # the same id, unless leadership moved on since
    finally:
        group.stop_all()
