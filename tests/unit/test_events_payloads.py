"""Event payload builders and the cluster-view diff: pure, checked against the topics' JSON Schemas."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.events import payloads
from pgbalancer.events.payloads import PoolSample, Stamp
from pgbalancer.events.schemas import schema_for_topic, validate
from pgbalancer.ha.view import BackendRole, BackendState, BackendStatus, ClusterView

TS = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z
PURE = ("payloads", "schemas", "credentials")
IO_MODULES = ("trio", "asyncio", "threading", "socket", "selectors", "amqtt", "paho")


def stamp(event_id: str = "n1:boot:1", epoch: int = 0) -> Stamp:
    return Stamp("n1", TS, event_id, epoch)


def three_backends() -> ClusterView:
    return ClusterView(
        (
            BackendState(0, "db0", 5432, role=BackendRole.PRIMARY),
            BackendState(1, "db1", 5433, role=BackendRole.STANDBY, lag_bytes=100, lag_seconds=0.5),
            BackendState(2, "db2", 5434, role=BackendRole.STANDBY),
        ),
        primary_id=0,
        epoch=3,
    )


def counter_ids() -> payloads.NextId:
    numbers = iter(range(1, 1000))
    return lambda: f"n1:boot:{next(numbers)}"


def assert_conforms(message: payloads.EventMessage) -> dict[str, object]:
    document = message.decoded()
    problems = validate(document, schema_for_topic(message.topic))
    assert not problems, problems
    assert document["event_id"] == message.event_id
    return document


@pytest.mark.parametrize("module", PURE)
def test_pure_event_modules_import_no_io(module: str) -> None:
    path = Path(payloads.__file__).with_name(f"{module}.py")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    bad = {
        name for name in imported if name.split(".")[0] in IO_MODULES or name.endswith(("service", "broker"))
    }
    assert not bad, f"pgbalancer.events.{module} is pure but imports {sorted(bad)}"


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert payloads.rfc3339(TS) == "2024-05-01T12:00:00.250Z"
    assert payloads.rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_every_payload_has_the_common_fields() -> None:
    document = assert_conforms(payloads.cluster_health(three_backends(), stamp(epoch=3), "periodic"))
    assert document["event"] == "cluster_health"
    assert document["node"] == "n1"
    assert document["ts"] == "2024-05-01T12:00:00.250Z"
    assert document["epoch"] == 3
    assert document["event_id"] == "n1:boot:1"


def test_cluster_health_lists_every_backend_with_status_lag_and_score() -> None:
    view = three_backends().with_backend(
        BackendState(2, "db2", 5434, status=BackendStatus.DOWN, health_score=0.0)
    )
    message = payloads.cluster_health(view, stamp(), "health check")
    document = assert_conforms(message)
    assert message.retain
    assert message.topic == "pgbalancer/cluster/health"
    assert document["primary_id"] == 0
    assert (document["backends_up"], document["backends_total"]) == (2, 3)
    backends = document["backends"]
    assert isinstance(backends, list)
    assert [b["status"] for b in backends] == ["up", "up", "down"]
    assert backends[1]["lag_bytes"] == 100
    assert backends[1]["lag_seconds"] == 0.5
    assert backends[2]["health_score"] == 0.0


def test_node_status_is_retained_per_backend() -> None:
    view = three_backends()
    before = view.backend(1)
    after = replace(before, status=BackendStatus.DOWN)
    message = payloads.node_status(after, before, view, stamp(), "probe failed")
    document = assert_conforms(message)
    assert message.topic == "pgbalancer/nodes/1/status"
    assert message.retain
    assert document["previous_status"] == "up"
    assert document["is_primary"] is False
    assert document["backend"] == payloads.backend_fields(after)


def test_config_event_lists_the_changed_keys() -> None:
    message = payloads.cluster_config(("max_pool", "port"), ("max_pool",), ("port",), stamp())
    document = assert_conforms(message)
    assert not message.retain
    assert document["changed"] == ["max_pool", "port"]
    assert document["applied_live"] == ["max_pool"]
    assert document["restart_required"] == ["port"]
    assert document["source"] == "reload"


def test_pool_stats_carry_gauges_counters_and_the_drop_count() -> None:
    sample = PoolSample(0, "app", "app_scram", 1, 2, 0, 10, 3, 0, 7, 9, 100, 200, 5)
    document = assert_conforms(
        payloads.pool_stats([sample], clients=4, interval=10, events_dropped=12, stamp=stamp())
    )
    assert document["events_dropped"] == 12
    assert document["clients"] == 4
    assert document["pools"] == [
        {
            "backend_id": 0,
            "database": "app",
            "user": "app_scram",
            "active": 1,
            "idle": 2,
            "waiting": 0,
            "max_size": 10,
            "opened_total": 3,
            "closed_total": 0,
            "xact_count": 7,
            "query_count": 9,
            "bytes_received": 100,
            "bytes_sent": 200,
            "wait_time_us": 5,
        }
    ]


def test_pending_topics_already_conform_to_their_schemas() -> None:
    leader = payloads.watchdog_leader("node-b", 7, stamp())
    vip = payloads.watchdog_vip("node-b", "192.0.2.10", "eth0", stamp())
    cache = payloads.cache_invalidate(["orders", "items", "orders"], stamp())
    for message in (leader, vip, cache):
        assert_conforms(message)
    assert leader.retain and vip.retain and not cache.retain
    assert cache.decoded()["tables"] == ["items", "orders"]


def test_a_standby_going_down_gives_its_status_then_the_cluster_health() -> None:
    old = three_backends()
    new = old.with_backend(replace(old.backend(2), status=BackendStatus.DOWN))
    events = payloads.view_change_events(old, new, "health check", {}, "n1", TS, counter_ids())
    assert [e.topic for e in events] == ["pgbalancer/nodes/2/status", "pgbalancer/cluster/health"]
    status = assert_conforms(events[0])
    assert status["backend"]["status"] == "down"  # type: ignore[index]
    assert status["previous_status"] == "up"
    assert status["reason"] == "health check"
    assert assert_conforms(events[1])["reason"] == "health check"
    assert len({e.event_id for e in events}) == 2


def test_a_failover_gives_statuses_the_failover_and_the_health() -> None:
    old = three_backends()
    new = (
        old.with_backend(replace(old.backend(0), status=BackendStatus.DOWN))
        .with_backend(replace(old.backend(1), role=BackendRole.PRIMARY))
        .with_primary(1)
    )
    details = {"duration": 1.25, "votes": {"n1", "n2"}, "when": object(), "bad": math.nan}
    events = payloads.view_change_events(old, new, "failover: primary down", details, "n1", TS, counter_ids())
    topics = [e.topic for e in events]
    assert topics == [
        "pgbalancer/nodes/0/status",
        "pgbalancer/nodes/1/status",
        "pgbalancer/cluster/failover",
        "pgbalancer/cluster/health",
    ]
    failover = assert_conforms(events[2])
    assert (failover["old_primary"], failover["new_primary"]) == (0, 1)
    assert (failover["old_epoch"], failover["epoch"]) == (3, 4)
    assert failover["kind"] == "failover"
    assert failover["duration_seconds"] == 1.25
    assert failover["details"]["votes"] == ["n1", "n2"]  # type: ignore[index]
    assert failover["details"]["bad"] == "nan"  # type: ignore[index]
    assert not events[2].retain


def test_a_failover_after_the_primary_went_down_is_timed_from_that_moment() -> None:
    outage = payloads.PrimaryOutage()
    healthy = three_backends()
    primary_down = healthy.with_backend(replace(healthy.backend(0), status=BackendStatus.DOWN))
    promoted = primary_down.with_backend(replace(healthy.backend(1), role=BackendRole.PRIMARY)).with_primary(
        1
    )
    assert outage.observe(healthy, healthy, 10.0) == {}
    assert outage.observe(healthy, primary_down, 12.0) == {}  # no new primary yet
    assert outage.observe(primary_down, primary_down, 12.5) == {}
    assert outage.observe(primary_down, promoted, 13.75) == {"kind": "failover", "duration_seconds": 1.75}
    assert outage.lost_at is None  # the next outage is timed afresh


def test_moving_a_working_primary_is_not_called_a_failover() -> None:
    outage = payloads.PrimaryOutage()
    healthy = three_backends()
    switched = healthy.with_backend(replace(healthy.backend(1), role=BackendRole.PRIMARY)).with_primary(1)
    assert outage.observe(healthy, switched, 5.0) == {}  # the kind comes from the operation's reason


def test_the_failover_id_is_the_same_on_every_node() -> None:
    old = three_backends()
    new = old.with_primary(1)
    first = payloads.view_change_events(old, new, "switchover", {}, "n1", TS, counter_ids())
    second = payloads.view_change_events(old, new, "switchover", {}, "n2", TS + 1, lambda: "n2:x:1")
    failovers = [e for e in first + second if e.topic == payloads.TOPIC_CLUSTER_FAILOVER]
    assert len(failovers) == 2
    assert failovers[0].event_id == failovers[1].event_id == "failover:4:0:1"
    assert failovers[0].decoded()["kind"] == "switchover"


def test_lag_alone_publishes_nothing_on_change() -> None:
    old = three_backends()
    new = old.with_backend(replace(old.backend(1), lag_bytes=10_000, health_score=0.4))
    assert payloads.view_change_events(old, new, "probe", {}, "n1", TS, counter_ids()) == []


def test_a_backend_that_appears_gets_a_status_and_the_health() -> None:
    old = three_backends()
    new = replace(old, backends=(*old.backends, BackendState(3, "db3", 5435)))
    events = payloads.view_change_events(old, new, "config", {}, "n1", TS, counter_ids())
    assert [e.topic for e in events] == ["pgbalancer/nodes/3/status", "pgbalancer/cluster/health"]
    assert events[0].decoded()["previous_status"] is None


backend_states = st.builds(
    BackendState,
    node_id=st.integers(0, 5),
    host=st.text(max_size=20),
    port=st.integers(1, 65535),
    weight=st.floats(0, 100),
    role=st.sampled_from(BackendRole),
    status=st.sampled_from(BackendStatus),
    replay_lsn=st.none() | st.integers(0, 2**64 - 1),
    lag_bytes=st.none() | st.integers(0, 2**63),
    lag_seconds=st.none() | st.floats(0, 1e9),
    health_score=st.floats(0, 1),
    detached=st.booleans(),
)


def views() -> st.SearchStrategy[ClusterView]:
    unique = st.lists(backend_states, max_size=5, unique_by=lambda s: s.node_id)
    return unique.flatmap(
        lambda states: st.builds(
            ClusterView,
            st.just(tuple(states)),
            st.sampled_from([None, *[s.node_id for s in states]]),
            st.integers(0, 1000),
        )
    )


@pytest.mark.slow
@given(old=views(), new=views(), reason=st.text(max_size=30))
def test_any_view_change_produces_only_valid_payloads(
    old: ClusterView, new: ClusterView, reason: str
) -> None:
    events = payloads.view_change_events(old, new, reason, {"duration": 0.5}, "n1", TS, counter_ids())
    for message in events:
        assert_conforms(message)
        json.loads(message.payload)  # strict JSON: no NaN or Infinity slipped in
    if old.primary_id != new.primary_id or old.epoch != new.epoch:
        assert any(e.topic == payloads.TOPIC_CLUSTER_FAILOVER for e in events)
    if events:
        assert events[-1].topic == payloads.TOPIC_CLUSTER_HEALTH
