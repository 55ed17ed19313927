"""Routing decisions: a table of situations, transactions that never span nodes, read-your-writes."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.config import SETTINGS, ConfigError, parse_config_text
from pgbalancer.ha.view import BackendRole, BackendState, BackendStatus, ClusterView
from pgbalancer.routing.balancer import Algorithm
from pgbalancer.routing.classify import classify
from pgbalancer.routing.router import (
    RouteAction,
    RouteDecision,
    Router,
    RouteReason,
    RoutingSettings,
    SessionRouting,
    TxnPhase,
    parse_lsn,
)

PRIMARY = 0
NOW = 100.0


def cluster(*standbys: BackendState, primary: BackendState | None = None) -> ClusterView:
    primary = primary or BackendState(
        PRIMARY,
        "p",
        5432,
        role=BackendRole.PRIMARY,
        replay_lsn=5000,
        lag_bytes=0,
        lag_seconds=0.0,
        checked_at=90.0,
    )
    if not standbys:
        standbys = (standby(1), standby(2))
    return ClusterView((primary, *standbys), primary_id=primary.node_id)


def standby(node_id: int, **overrides: object) -> BackendState:
    state = BackendState(
        node_id,
        f"s{node_id}",
        5432,
        role=BackendRole.STANDBY,
        replay_lsn=5000,
        lag_bytes=0,
        lag_seconds=0.0,
        checked_at=90.0,
    )
    return replace(state, **overrides)  # type: ignore[arg-type]


class Client:
    """One client session driving a router the way the proxy shell does."""

    def __init__(self, router: Router | None = None, view: ClusterView | None = None) -> None:
        self.router = router or Router(RoutingSettings(), rng=random.Random(1))
        self.view = view or cluster()
        self.session = SessionRouting()
        self.now = NOW

    def route(self, sql: str, *, attached: int | None = None) -> RouteDecision:
        decision = self.router.route(
            classify(sql, policy=self.router.settings.functions),
            self.session,
            self.view,
            self.now,
            attached=attached,
        )
        self.session = decision.session
        return decision

    def run(self, sql: str, status: str = "I", *, commit_lsn: int | None = None) -> RouteDecision:
        """Route, then feed back the ReadyForQuery status (unless pgbalancer answered locally)."""
        decision = self.route(sql)
        if decision.action in (RouteAction.SEND, RouteAction.MIGRATE):
            if decision.query_class is not None:
                self.router.observe(decision, 0.001, True, self.now)
            self.session = self.router.on_ready(self.session, status, self.now, commit_lsn=commit_lsn)
        self.now += 0.01
        return decision


def routing(**overrides: object) -> Router:
    return Router(RoutingSettings(**overrides), rng=random.Random(1))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- autocommit


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET x = 1",
        "SELECT * FROM t FOR UPDATE",
        "CREATE TABLE t (x int)",
        "SELECT nextval('s')",
        "SELECT my_function()",
        "CALL p()",
        "LISTEN ch",
        "SELECT 'unterminated",
        "FROBNICATE",
        "SET search_path = x",
        "COMMIT PREPARED 'x'",
    ],
)
def test_what_is_not_a_read_goes_to_the_primary(sql: str) -> None:
    client = Client()
    for _ in range(20):
        decision = client.run(sql)
        assert (decision.action, decision.node_id) == (RouteAction.SEND, PRIMARY)
        assert decision.query_class is None


def test_reads_in_autocommit_are_balanced_over_every_candidate() -> None:
    client = Client()
    picked = Counter(client.run("SELECT * FROM t WHERE id = 1").node_id for _ in range(300))
    assert set(picked) == {0, 1, 2}
    decision = client.run("SELECT 1")
    assert decision.reason is RouteReason.BALANCED and decision.query_class is not None


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"status": BackendStatus.DOWN}, "down"),
        ({"status": BackendStatus.QUARANTINED}, "quarantined"),
        ({"weight": 0.0}, "weight 0"),
        ({"health_score": 0.2}, "unhealthy"),
        ({"role": BackendRole.PRIMARY}, "a second primary"),
    ],
)
def test_only_qualifying_nodes_get_reads(bad: dict[str, object], why: str) -> None:
    client = Client(view=cluster(standby(1), standby(2, **bad)))
    picked = {client.run("SELECT 1").node_id for _ in range(200)}
    assert picked == {0, 1}, why


@pytest.mark.parametrize(
    ("settings_overrides", "lagging", "served"),
    [
        ({"delay_threshold": 1000}, {"lag_bytes": 5000}, False),
        ({"delay_threshold": 1000}, {"lag_bytes": 999}, True),
        ({"delay_threshold": 1000}, {"lag_bytes": None}, False),  # unknown lag is not trusted
        ({"delay_threshold": 0}, {"lag_bytes": 10**9}, True),  # 0 = no limit
        ({"delay_threshold_by_time": 2.0}, {"lag_seconds": 3.0}, False),
        ({"delay_threshold_by_time": 2.0}, {"lag_seconds": 1.0}, True),
        ({"delay_threshold_by_time": 2.0}, {"lag_seconds": None}, False),
    ],
)
def test_lagging_standbys_get_no_reads(
    settings_overrides: dict[str, object], lagging: dict[str, object], served: bool
) -> None:
    client = Client(routing(**settings_overrides), cluster(standby(1), standby(2, **lagging)))
    picked = {client.run("SELECT 1").node_id for _ in range(200)}
    assert (2 in picked) is served
    assert 1 in picked


def test_standby_weights_zero_primary_weight_zero_reads_avoid_the_primary() -> None:
    primary = BackendState(PRIMARY, "p", 5432, weight=0.0, role=BackendRole.PRIMARY, replay_lsn=5000)
    client = Client(view=cluster(standby(1), standby(2), primary=primary))
    assert {client.run("SELECT 1").node_id for _ in range(100)} == {1, 2}
    assert client.run("INSERT INTO t VALUES (1)").node_id == PRIMARY


def test_no_candidate_falls_back_to_the_primary_and_no_primary_is_refused() -> None:
    client = Client(view=cluster(standby(1, status=BackendStatus.DOWN), standby(2, weight=0.0)))
    client.view = replace(
        client.view, backends=(replace(client.view.backends[0], weight=0.0), *client.view.backends[1:])
    )
    decision = client.run("SELECT 1")
    assert (decision.node_id, decision.reason) == (PRIMARY, RouteReason.NO_CANDIDATE)
    down = replace(client.view.backends[0], status=BackendStatus.DOWN)
    client.view = replace(client.view, backends=(down, *client.view.backends[1:]))
    assert client.route("SELECT 1").action is RouteAction.REFUSE
    write = client.route("INSERT INTO t VALUES (1)")
    assert (write.action, write.reason) == (RouteAction.REFUSE, RouteReason.NO_PRIMARY)


def test_reads_survive_a_primary_outage_on_the_standbys() -> None:
    client = Client()
    down = replace(client.view.backends[0], status=BackendStatus.DOWN)
    client.view = replace(client.view, backends=(down, *client.view.backends[1:]))
    assert {client.run("SELECT 1").node_id for _ in range(100)} == {1, 2}


def test_load_balance_mode_off_sends_everything_to_the_primary() -> None:
    client = Client(routing(load_balance_mode=False))
    assert {client.run("SELECT 1").node_id for _ in range(50)} == {PRIMARY}
    assert client.run("SELECT 1").reason is RouteReason.LOAD_BALANCE_OFF


# --------------------------------------------------------------------------- hints


def test_comment_hints() -> None:
    client = Client()
    assert {client.run("/* pgbalancer: primary */ SELECT 1").node_id for _ in range(50)} == {PRIMARY}
    assert {client.run("/* pgbalancer: standby */ SELECT 1").node_id for _ in range(100)} == {1, 2}
    assert {client.run("/* pgbalancer: any */ SELECT 1").node_id for _ in range(200)} == {0, 1, 2}
    assert client.run("/* pgbalancer: standby */ INSERT INTO t VALUES (1)").node_id == PRIMARY


def test_session_route_setting_and_its_reset() -> None:
    client = Client()
    client.run("SET pgbalancer.route = 'primary'")
    assert {client.run("SELECT 1").node_id for _ in range(50)} == {PRIMARY}
    client.run("SET pgbalancer.route TO standby")
    assert {client.run("SELECT 1").node_id for _ in range(100)} == {1, 2}
    assert client.run("/* pgbalancer: primary */ SELECT 1").node_id == PRIMARY  # the statement's hint wins
    client.run("RESET pgbalancer.route")
    assert {client.run("SELECT 1").node_id for _ in range(200)} == {0, 1, 2}
    client.run("SET pgbalancer.route = primary")
    client.run("DISCARD ALL")
    assert client.session.route_hint is None


def test_standby_hint_falls_back_to_the_primary_without_standbys() -> None:
    client = Client(
        view=cluster(standby(1, status=BackendStatus.DOWN), standby(2, status=BackendStatus.DOWN))
    )
    assert client.run("/* pgbalancer: standby */ SELECT 1").node_id == PRIMARY


def test_local_route_setting_lasts_one_transaction() -> None:
    client = Client(routing(lazy_begin=False))
    client.run("BEGIN", "T")
    client.run("SET LOCAL pgbalancer.route = standby", "T")
    assert client.session.local_route_hint is not None
    client.run("COMMIT")
    assert client.session.local_route_hint is None


# --------------------------------------------------------------------------- transactions


def test_lazy_begin_balances_a_transaction_that_starts_with_a_read() -> None:
    client = Client()
    held = client.run("BEGIN")
    assert (held.action, held.node_id, client.session.phase) == (
        RouteAction.HOLD_BEGIN,
        None,
        TxnPhase.BEGIN_HELD,
    )
    first = client.run("SELECT * FROM t", "T")
    assert first.action is RouteAction.SEND and first.send_held_begin
    assert first.reason is RouteReason.LAZY_READ
    node = first.node_id
    for _ in range(10):
        decision = client.run("SELECT * FROM u", "T")
        assert (decision.node_id, decision.reason, decision.send_held_begin) == (
            node,
            RouteReason.PINNED,
            False,
        )
    end = client.run("COMMIT")
    assert end.node_id == node
    assert client.session == SessionRouting()


def test_lazy_begin_sends_a_transaction_that_starts_with_a_write_to_the_primary() -> None:
    client = Client()
    client.run("BEGIN")
    first = client.run("INSERT INTO t VALUES (1)", "T")
    assert (first.node_id, first.send_held_begin, first.reason) == (
        PRIMARY,
        True,
        RouteReason.READ_WRITE_TRANSACTION,
    )
    assert {client.run("SELECT 1", "T").node_id for _ in range(20)} == {PRIMARY}


def test_a_write_moves_a_lazily_balanced_transaction_to_the_primary() -> None:
    client = Client(view=cluster(standby(1), standby(2), primary=replace(cluster().backends[0], weight=0.0)))
    client.run("BEGIN")
    first = client.run("SELECT * FROM t", "T")
    assert first.node_id in (1, 2)
    moved = client.run("UPDATE t SET x = 1", "T")
    assert (moved.action, moved.node_id, moved.send_held_begin) == (RouteAction.MIGRATE, PRIMARY, True)
    assert moved.reason is RouteReason.MOVED_TO_PRIMARY
    assert {client.run("SELECT 1", "T").node_id for _ in range(10)} == {PRIMARY}
    assert client.run("COMMIT").wants_commit_lsn


def test_a_failed_lazily_balanced_transaction_is_not_moved() -> None:
    client = Client(view=cluster(standby(1), standby(2), primary=replace(cluster().backends[0], weight=0.0)))
    client.run("BEGIN")
    node = client.run("SELECT 1/0", "E").node_id
    decision = client.run("INSERT INTO t VALUES (1)", "E")
    assert (decision.action, decision.node_id) == (RouteAction.SEND, node)


def test_a_savepoint_keeps_a_lazily_balanced_transaction_on_its_standby() -> None:
    client = Client(view=cluster(standby(1), standby(2), primary=replace(cluster().backends[0], weight=0.0)))
    client.run("BEGIN")
    node = client.run("SELECT 1", "T").node_id
    client.run("SAVEPOINT a", "T")
    write = client.run("UPDATE t SET x = 1", "E")
    assert (write.action, write.node_id, write.reason) == (
        RouteAction.SEND,
        node,
        RouteReason.WRITE_IN_READ_TRANSACTION,
    )
    assert client.run("ROLLBACK").node_id == node


def test_begin_read_only_is_balanced_at_once_and_stays_put() -> None:
    client = Client()
    nodes = set()
    for _ in range(60):
        begin = client.run("BEGIN READ ONLY", "T")
        assert begin.action is RouteAction.SEND and begin.reason is RouteReason.READ_ONLY_TRANSACTION
        assert begin.query_class is None  # the pick is for the transaction; its reads count one by one
        assert client.run("SELECT 1", "T").node_id == begin.node_id
        assert client.run("INSERT INTO t VALUES (1)", "E").node_id == begin.node_id  # PostgreSQL refuses it
        assert client.run("ROLLBACK").node_id == begin.node_id
        nodes.add(begin.node_id)
    assert nodes == {0, 1, 2}


def test_set_transaction_read_only_first_balances_the_transaction() -> None:
    client = Client()
    client.run("BEGIN")
    decision = client.run("SET TRANSACTION READ ONLY", "T")
    assert decision.send_held_begin and decision.reason is RouteReason.READ_ONLY_TRANSACTION
    assert client.session.read_only and client.session.balanced


def test_session_default_read_only_balances_plain_begin() -> None:
    client = Client(routing(lazy_begin=False))
    client.run("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    assert client.run("BEGIN", "T").reason is RouteReason.READ_ONLY_TRANSACTION


@pytest.mark.parametrize(
    "begin",
    [
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",  # hot standbys refuse serializable
        "/* pgbalancer: primary */ BEGIN",
    ],
)
def test_transactions_that_cannot_be_balanced_go_to_the_primary_at_once(begin: str) -> None:
    client = Client()
    decision = client.run(begin, "T")
    assert (decision.action, decision.node_id) == (RouteAction.SEND, PRIMARY)
    assert {client.run("SELECT 1", "T").node_id for _ in range(10)} == {PRIMARY}


def test_lazy_begin_off_sends_read_write_transactions_to_the_primary() -> None:
    client = Client(routing(lazy_begin=False))
    begin = client.run("BEGIN", "T")
    assert (begin.action, begin.node_id) == (RouteAction.SEND, PRIMARY)
    assert client.run("SELECT 1", "T").node_id == PRIMARY


@pytest.mark.parametrize(("end", "tag"), [("COMMIT", "COMMIT"), ("END", "COMMIT"), ("ROLLBACK", "ROLLBACK")])
def test_an_empty_held_transaction_is_answered_locally(end: str, tag: str) -> None:
    client = Client()
    client.run("BEGIN")
    decision = client.run(end)
    assert (decision.action, decision.local_tag, decision.node_id) == (RouteAction.REPLY_LOCALLY, tag, None)
    assert client.session.phase is TxnPhase.IDLE


def test_a_refused_first_statement_leaves_the_held_transaction_failed() -> None:
    client = Client()
    client.run("BEGIN")
    down = replace(client.view.backends[0], status=BackendStatus.DOWN)
    client.view = replace(client.view, backends=(down, *client.view.backends[1:]))
    refused = client.run("INSERT INTO t VALUES (1)")
    assert refused.action is RouteAction.REFUSE and client.session.held_failed
    assert client.run("SELECT 1").reason is RouteReason.HELD_TRANSACTION_FAILED
    assert client.run("COMMIT").local_tag == "ROLLBACK"
    assert client.session.phase is TxnPhase.IDLE


def test_pipelined_batches_follow_the_attached_server() -> None:
    client = Client()
    decision = client.route("INSERT INTO t VALUES (1)", attached=2)
    assert (decision.node_id, decision.reason) == (2, RouteReason.ATTACHED)


STATEMENTS = st.sampled_from(
    [
        "BEGIN",
        "BEGIN READ ONLY",
        "SELECT 1",
        "SELECT * FROM t JOIN u USING (id)",
        "INSERT INTO t VALUES (1)",
        "SELECT nextval('s')",
        "SAVEPOINT a",
        "SET TRANSACTION READ ONLY",
        "SET LOCAL x = 1",
        "COMMIT",
        "ROLLBACK",
        "/* pgbalancer: primary */ SELECT 1",
        "SET pgbalancer.route = standby",
        "RESET ALL",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STATEMENTS, max_size=40), st.integers(0, 2**32))
def test_a_transaction_never_spans_two_nodes(statements: list[str], seed: int) -> None:
    """Simulates PostgreSQL's transaction status; within one transaction every statement reaches
    one node, except an explicit MIGRATE, after which it restarts on the primary and stays there."""
    client = Client(Router(RoutingSettings(), rng=random.Random(seed)))
    in_transaction = False
    node: int | None = None
    for sql in statements:
        only = classify(sql).only
        assert only is not None
        opens = only.command in ("BEGIN",)
        closes = only.command in ("COMMIT", "ROLLBACK")
        decision = client.route(sql)
        if decision.action is RouteAction.HOLD_BEGIN:
            in_transaction, node = True, None
            continue
        if decision.action in (RouteAction.REPLY_LOCALLY, RouteAction.REFUSE):
            in_transaction = in_transaction and not closes
            continue
        if decision.action is RouteAction.MIGRATE:
            assert decision.node_id == PRIMARY and in_transaction
            node = PRIMARY
        elif in_transaction and node is not None:
            assert decision.node_id == node, (sql, decision)
        elif in_transaction or opens:
            node = decision.node_id
        in_transaction = (in_transaction or opens) and not closes
        status = "T" if in_transaction else "I"
        client.session = client.router.on_ready(client.session, status, client.now)
        if decision.query_class is not None:
            client.router.observe(decision, 0.001, True, client.now)
        if not in_transaction:
            node = None
    assert all(stat.in_flight == 0 for stat in client.router.statistics(client.now).nodes)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_whatever_cannot_be_read_goes_to_the_primary(text: str) -> None:
    result = classify(text)
    decision = Router(RoutingSettings(), rng=random.Random(0)).route(result, SessionRouting(), cluster(), NOW)
    if not result.is_read:  # a lazily held BEGIN goes wherever its first statement goes (tested above)
        assert decision.node_id == PRIMARY or decision.action is RouteAction.HOLD_BEGIN, (text, decision)


# --------------------------------------------------------------------------- read your writes


def test_after_a_write_reads_wait_for_a_standby_that_replayed_it() -> None:
    client = Client(view=cluster(standby(1, replay_lsn=5000), standby(2, replay_lsn=5000)))
    write = client.run("INSERT INTO t VALUES (1)", commit_lsn=6000)
    assert write.wants_commit_lsn and client.session.commit_lsn == 6000
    picked = Counter(client.run("SELECT 1").node_id for _ in range(50))
    assert set(picked) == {PRIMARY}
    assert client.run("SELECT 1").reason is RouteReason.BALANCED  # the primary is a candidate itself
    client.view = cluster(standby(1, replay_lsn=6000), standby(2, replay_lsn=5999))
    picked = Counter(client.run("SELECT 1").node_id for _ in range(100))
    assert set(picked) == {0, 1}
    client.view = cluster(standby(1, replay_lsn=6100), standby(2, replay_lsn=6000))
    client.run("SELECT 1")
    assert client.session.commit_lsn is None  # every standby caught up: the token is dropped


def test_read_your_writes_falls_back_to_the_primary_when_reads_must_avoid_it() -> None:
    client = Client()
    client.run("INSERT INTO t VALUES (1)", commit_lsn=9000)
    decision = client.run("/* pgbalancer: standby */ SELECT 1")
    assert (decision.node_id, decision.reason) == (PRIMARY, RouteReason.READ_YOUR_WRITES)


def test_without_a_commit_lsn_the_commit_time_is_the_token() -> None:
    client = Client()
    client.now = 200.0
    client.run("UPDATE t SET x = 1")
    assert client.session.committed_at is not None and client.session.commit_lsn is None
    # The primary was last probed before the commit: no standby can prove it replayed it.
    assert {client.run("/* pgbalancer: standby */ SELECT 1").node_id for _ in range(20)} == {PRIMARY}
    probed = replace(client.view.backends[0], checked_at=client.now, replay_lsn=7000)
    client.view = cluster(standby(1, replay_lsn=7000), standby(2, replay_lsn=6999), primary=probed)
    assert {client.run("/* pgbalancer: standby */ SELECT 1").node_id for _ in range(40)} == {1}


def test_a_transaction_that_wrote_leaves_a_token_at_commit() -> None:
    client = Client()
    client.run("BEGIN")
    assert not client.run("INSERT INTO t VALUES (1)", "T").wants_commit_lsn  # not committed yet
    assert not client.run("SELECT 1", "T").wants_commit_lsn
    commit = client.run("COMMIT", commit_lsn=8000)
    assert commit.wants_commit_lsn and client.session.commit_lsn == 8000
    client.run("BEGIN")
    client.run("INSERT INTO t VALUES (1)", "T")
    assert not client.run("ROLLBACK").wants_commit_lsn


def test_no_commit_lsn_probe_after_a_copy_or_unreadable_text() -> None:
    # A query pipelined after COPY ... FROM STDIN would be taken for COPY data; unreadable text
    # might hide a COPY. Both fall back to the commit-time token.
    client = Client()
    assert not client.run("COPY t FROM STDIN").wants_commit_lsn
    assert client.session.commit_lsn is None and client.session.committed_at is not None
    assert not client.run("INSERT INTO t VALUES ('unterminated").wants_commit_lsn
    assert client.run("INSERT INTO t VALUES (1)").wants_commit_lsn


def test_no_commit_lsn_probe_where_no_read_could_use_it() -> None:
    assert not Client(routing(load_balance_mode=False)).run("INSERT INTO t VALUES (1)").wants_commit_lsn
    only_primary = Client(view=cluster(standby(1, status=BackendStatus.DOWN)))
    assert not only_primary.run("INSERT INTO t VALUES (1)").wants_commit_lsn


def test_reads_leave_no_token() -> None:
    client = Client()
    for sql in ("SELECT 1", "BEGIN READ ONLY", "SELECT 2", "COMMIT", "SET x = 1", "SHOW x"):
        decision = client.run(sql, "T" if sql == "BEGIN READ ONLY" or sql == "SELECT 2" else "I")
        assert not decision.wants_commit_lsn
    assert client.session.commit_lsn is None and client.session.committed_at is None


def test_read_your_writes_off() -> None:
    client = Client(routing(read_your_writes=False))
    write = client.run("INSERT INTO t VALUES (1)", commit_lsn=9000)
    assert not write.wants_commit_lsn
    assert client.session.commit_lsn is None
    assert {client.run("SELECT 1").node_id for _ in range(100)} == {0, 1, 2}


# --------------------------------------------------------------------------- feedback and settings


def test_every_read_is_counted_in_flight_until_observed() -> None:
    client = Client()
    decisions = [client.route("SELECT 1") for _ in range(5)]
    in_flight = sum(node.in_flight for node in client.router.statistics(NOW).nodes)
    assert in_flight == 5
    for decision in decisions[:3]:
        client.router.observe(decision, 0.002, True, NOW)
    for decision in decisions[3:]:
        client.router.abandon(decision)
    assert sum(node.in_flight for node in client.router.statistics(NOW).nodes) == 0


def test_settings_from_the_config_file() -> None:
    config = parse_config_text(
        "backend_hostname0 = db\nauth_type = trust\n"
        "load_balance_algorithm = least_connections\nlazy_begin = off\nread_your_writes = off\n"
        "read_only_function_list = 'get_.*,report_totals'\nwrite_function_list = 'get_and_bump'\n"
        "ai_learning_rate = 0.3\nai_exploration_rate = 0.1\nai_exploration_floor = 0.01\n"
    )
    settings = RoutingSettings.from_config(config)
    assert (settings.lazy_begin, settings.read_your_writes) == (False, False)
    assert settings.balancer.algorithm is Algorithm.LEAST_CONNECTIONS
    assert (settings.balancer.learning_rate, settings.balancer.exploration_rate) == (0.3, 0.1)
    assert settings.balancer.exploration_floor == 0.01
    assert classify("SELECT get_user(1)", policy=settings.functions).is_read
    assert not classify("SELECT get_and_bump(1)", policy=settings.functions).is_read
    router = Router(RoutingSettings(), rng=random.Random(0))
    router.configure(settings)
    assert router.balancer.settings.algorithm is Algorithm.LEAST_CONNECTIONS


@pytest.mark.skipif(
    "delay_threshold" not in SETTINGS, reason="delay_threshold* arrive with the failover work"
)
def test_delay_thresholds_from_the_config_file() -> None:
    config = parse_config_text(
        "backend_hostname0 = db\nauth_type = trust\n"
        "delay_threshold = 1048576\ndelay_threshold_by_time = 2.5\n"
    )
    settings = RoutingSettings.from_config(config)
    assert (settings.delay_threshold, settings.delay_threshold_by_time) == (1048576, 2.5)


def test_defaults_from_an_empty_config() -> None:
    settings = RoutingSettings.from_config(parse_config_text("backend_hostname0 = db\nauth_type = trust\n"))
    assert settings.lazy_begin and settings.read_your_writes and settings.load_balance_mode
    assert settings.balancer.algorithm is Algorithm.ADAPTIVE
    assert (settings.balancer.learning_rate, settings.balancer.exploration_rate) == (0.1, 0.2)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ai_learning_rate = 1.5", "ai_learning_rate"),
        ("ai_exploration_rate = -0.1", "ai_exploration_rate"),
        ("read_only_function_list = 'bad(regex'", "not a valid regular expression"),
    ],
)
def test_bad_routing_settings_are_refused(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_text(f"backend_hostname0 = db\nauth_type = trust\n{line}\n")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        (b"0/3000060", 0x3000060),
        (" 1/0\n", 1 << 32),
        ("", None),
        ("16", None),
        ("x/1", None),
        ("1/2/3", None),
        ("123456789/0", None),
    ],
)
def test_lsn_text_is_parsed(text: str | bytes, value: int | None) -> None:
    assert parse_lsn(text) == value


# ---- the hot path's fast SessionRouting copies equal dataclasses.replace

from dataclasses import FrozenInstanceError, fields  # noqa: E402

from pgbalancer.routing.balancer import QueryClass, ReadKind  # noqa: E402
from pgbalancer.routing.classify import RouteHint  # noqa: E402
from pgbalancer.routing.complexity import ComplexityBucket  # noqa: E402
from pgbalancer.routing.router import _evolve, _idle, _query_class  # noqa: E402

_FIELD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "phase": st.sampled_from(TxnPhase),
    "node_id": st.none() | st.integers(0, 5),
    "balanced": st.booleans(),
    "read_only": st.booleans(),
    "movable": st.booleans(),
    "wrote": st.booleans(),
    "held_read_only": st.none() | st.booleans(),
    "held_isolation": st.none() | st.sampled_from(["read committed", "serializable"]),
    "held_failed": st.booleans(),
    "route_hint": st.none() | st.sampled_from(RouteHint),
    "local_route_hint": st.none() | st.sampled_from(RouteHint),
    "default_read_only": st.booleans(),
    "default_isolation": st.none() | st.sampled_from(["repeatable read", "serializable"]),
    "commit_lsn": st.none() | st.integers(0, 2**64 - 1),
    "committed_at": st.none() | st.floats(0.0, 1e6),
}
_SESSIONS = st.builds(SessionRouting, **_FIELD_VALUES)


def test_the_fast_copy_knows_every_field() -> None:
    assert {f.name for f in fields(SessionRouting)} == set(_FIELD_VALUES)


@settings(max_examples=300)
@given(_SESSIONS, st.lists(st.sampled_from(sorted(_FIELD_VALUES)), unique=True), st.data())
def test_evolve_equals_replace_in_every_field(
    session: SessionRouting, names: list[str], data: st.DataObject
) -> None:
    changes = {name: data.draw(_FIELD_VALUES[name], label=name) for name in names}
    fast, slow = _evolve(session, **changes), replace(session, **changes)  # type: ignore[arg-type]
    assert fast == slow
    assert all(getattr(fast, f.name) is getattr(slow, f.name) for f in fields(SessionRouting))
    assert type(fast) is SessionRouting


def test_evolve_copies_only_on_a_change_and_stays_frozen() -> None:
    session = SessionRouting(node_id=1, route_hint=RouteHint.STANDBY)
    assert _evolve(session, node_id=1, route_hint=RouteHint.STANDBY) is session
    moved = _evolve(session, node_id=2)
    assert moved is not session and (moved.node_id, session.node_id) == (2, 1)
    with pytest.raises(FrozenInstanceError):
        moved.node_id = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field 'nodeid'"):
        _evolve(session, nodeid=2)


def _idle_by_replace(session: SessionRouting) -> SessionRouting:
    return replace(
        session,
        phase=TxnPhase.IDLE,
        node_id=None,
        balanced=False,
        read_only=False,
        movable=False,
        wrote=False,
        held_read_only=None,
        held_isolation=None,
        held_failed=False,
        local_route_hint=None,
    )


@settings(max_examples=300)
@given(_SESSIONS, st.none() | st.tuples(st.none() | st.integers(0, 2**64 - 1), st.floats(0.0, 1e6)))
def test_idle_equals_its_replace_form(
    session: SessionRouting, token: tuple[int | None, float] | None
) -> None:
    expected = _idle_by_replace(
        session if token is None else replace(session, commit_lsn=token[0], committed_at=token[1])
    )
    assert _idle(session, token) == expected
    assert _idle(expected) is expected  # already idle: no copy


def test_on_ready_reads_a_status_given_as_text_or_bytes() -> None:
    router = Router(RoutingSettings(), rng=random.Random(0))
    session = SessionRouting(node_id=1)
    for status, phase in (("T", TxnPhase.OPEN), ("E", TxnPhase.FAILED), ("I", TxnPhase.IDLE)):
        assert router.on_ready(session, status, NOW) == router.on_ready(session, status.encode(), NOW)
        assert router.on_ready(session, status, NOW).phase is phase


def test_query_classes_are_shared_and_equal_to_new_ones() -> None:
    for kind in ReadKind:
        for sql, bucket in (
            ("SELECT 1", ComplexityBucket.LIGHT),
            ("SELECT * FROM t", ComplexityBucket.MEDIUM),
        ):
            statement = classify(sql)
            assert ComplexityBucket.of(statement.complexity) is bucket
            assert _query_class(statement, kind) == QueryClass(bucket, kind)
            assert _query_class(statement, kind) is _query_class(classify(sql), kind)
