"""The relay's routing glue: batch classification, local replies, held BEGIN (no sockets)."""

from __future__ import annotations

import random

from pgbalancer.ha.view import initial_view
from pgbalancer.pgwire.errors import parse_error_fields
from pgbalancer.pgwire.framing import Message
from pgbalancer.proxy.routed import BatchRouting
from pgbalancer.routing.balancer import Algorithm, BalancerSettings
from pgbalancer.routing.router import RouteAction, Router, RoutingSettings

VIEW = initial_view(((0, "primary", 5432, 1.0), (1, "standby", 5432, 1.0)))


def query(sql: str) -> Message:
    return Message(b"Q", sql.encode() + b"\x00")


def parse(name: bytes, sql: str) -> Message:
    return Message(b"P", name + b"\x00" + sql.encode() + b"\x00\x00\x00")


def bind(name: bytes) -> Message:
    return Message(b"B", b"\x00" + name + b"\x00\x00\x00\x00\x00\x00\x00")


SYNC = Message(b"S", b"")
EXECUTE = Message(b"E", b"\x00\x00\x00\x00\x00")


def routing() -> BatchRouting:
    return BatchRouting(Router(RoutingSettings(), rng=random.Random(7)))


def decide(state: BatchRouting, batch: list[Message]) -> RouteAction:
    return state.decide(batch, VIEW, 0.0, attached=None, standard_conforming_strings=True).action


def test_writes_go_to_the_primary() -> None:
    state = routing()
    decision = state.decide(
        [query("INSERT INTO t VALUES (1)")], VIEW, 0.0, attached=None, standard_conforming_strings=True
    )
    assert (decision.action, decision.node_id) == (RouteAction.SEND, 0)


def test_a_named_statement_is_remembered_for_its_later_binds() -> None:
    state = routing()
    state.decide(
        [parse(b"ins", "INSERT INTO t VALUES ($1)"), SYNC],
        VIEW,
        0.0,
        attached=None,
        standard_conforming_strings=True,
    )
    state.ready(b"I", ok=True, latency=0.001, now=0.0)
    later = state.decide(
        [bind(b"ins"), EXECUTE, SYNC], VIEW, 1.0, attached=None, standard_conforming_strings=True
    )
    assert later.node_id == 0  # the INSERT, not an unknown statement balanced somewhere


def test_a_bind_of_an_unseen_statement_goes_to_the_primary() -> None:
    decision = routing().decide(
        [bind(b"never"), EXECUTE, SYNC], VIEW, 0.0, attached=None, standard_conforming_strings=True
    )
    assert decision.node_id == 0


def test_lazy_begin_is_answered_locally_then_sent_with_the_first_statement() -> None:
    state = routing()
    begin = [query("BEGIN")]
    held = state.decide(begin, VIEW, 0.0, attached=None, standard_conforming_strings=True)
    assert held.action is RouteAction.HOLD_BEGIN
    assert state.local_replies(begin, held) == b"C\x00\x00\x00\x0aBEGIN\x00" + b"Z\x00\x00\x00\x05T"
    first = state.decide([query("SELECT 1")], VIEW, 0.0, attached=None, standard_conforming_strings=True)
    assert first.action is RouteAction.SEND and first.send_held_begin
    assert state.take_held_begin(first) == "BEGIN"
    assert state.take_held_begin(held) is None  # only decisions that ask for it get it


def test_local_replies_mirror_an_extended_batch() -> None:
    state = routing()
    batch = [parse(b"", "BEGIN"), bind(b""), EXECUTE, SYNC]
    decision = state.decide(batch, VIEW, 0.0, attached=None, standard_conforming_strings=True)
    assert decision.action is RouteAction.HOLD_BEGIN
    replies = state.local_replies(batch, decision)
    assert replies == (
        b"1\x00\x00\x00\x04" + b"2\x00\x00\x00\x04" + b"C\x00\x00\x00\x0aBEGIN\x00" + b"Z\x00\x00\x00\x05T"
    )


def test_no_node_up_is_refused_with_an_error_and_ready_for_query() -> None:
    from pgbalancer.ha.view import BackendState, BackendStatus

    down = VIEW.with_backend(BackendState(0, "primary", 5432, status=BackendStatus.DOWN))
    state = routing()
    decision = state.decide(
        [query("INSERT INTO t VALUES (1)")], down, 0.0, attached=None, standard_conforming_strings=True
    )
    assert decision.action is RouteAction.REFUSE
    reply = state.local_replies([query("INSERT INTO t VALUES (1)")], decision)
    assert reply[:1] == b"E" and reply.endswith(b"Z\x00\x00\x00\x05I")
    length = int.from_bytes(reply[1:5], "big")
    assert parse_error_fields(reply[5 : 1 + length])["C"] == "08006"


def test_a_refused_begin_leaves_the_session_idle_and_the_error_says_what_to_do() -> None:
    from pgbalancer.ha.view import BackendState, BackendStatus

    down = VIEW.with_backend(BackendState(0, "primary", 5432, status=BackendStatus.DOWN))
    state = routing()
    begin = [query("BEGIN ISOLATION LEVEL SERIALIZABLE")]
    refused = state.decide(begin, down, 0.0, attached=None, standard_conforming_strings=True)
    assert refused.action is RouteAction.REFUSE
    reply = state.local_replies(begin, refused, waited=2.5)
    length = int.from_bytes(reply[1:5], "big")
    fields = parse_error_fields(reply[5 : 1 + length])
    assert fields["M"] == "no primary is up (waited 2.5s for one)"
    assert "promote a standby" in fields["H"] and "server_connect_timeout" in fields["H"]
    # The BEGIN never ran: once the primary is back, the same batch is routed as if new.
    again = state.decide(begin, VIEW, 1.0, attached=None, standard_conforming_strings=True)
    assert (again.action, again.node_id) == (RouteAction.SEND, 0)
    assert (
        state.decide([query("SELECT 1")], VIEW, 1.0, attached=None, standard_conforming_strings=True).node_id
        == 0
    )


def test_a_failed_node_is_reported_to_the_balancer_at_once() -> None:
    state = routing()
    reads = [query("SELECT 1")]
    decision = state.decide(reads, VIEW, 0.0, attached=None, standard_conforming_strings=True)
    assert decision.query_class is not None and decision.node_id is not None
    state.failed(latency=0.5, now=0.5)
    nodes = {node.node_id: node for node in state.router.statistics(1.0).nodes}
    assert nodes[decision.node_id].error_rate == 1.0  # one read, one failure: learnt at once
    assert state.decision is None


def test_a_pipelined_read_does_not_stay_in_flight_for_ever() -> None:
    state = routing()
    for now in (0.0, 0.001, 0.002):  # three reads sent before the first ReadyForQuery comes back
        state.decide([query("SELECT 1")], VIEW, now, attached=None, standard_conforming_strings=True)
    state.ready(b"I", ok=True, latency=0.003, now=0.003)  # one report for the whole pipeline
    assert all(node.in_flight == 0 for node in state.router.statistics(1.0).nodes)


READABLE_STANDBY = VIEW.with_positions({0: 100, 1: 100})  # probed, no lag: the standby takes reads


def round_robin() -> BatchRouting:
    return BatchRouting(Router(RoutingSettings(balancer=BalancerSettings(algorithm=Algorithm.ROUND_ROBIN))))


def _read_landing_on_the_standby(state: BatchRouting, batch: list[Message]) -> None:
    for step in range(2):  # round robin: one of two picks is the standby
        decision = state.decide(
            batch, READABLE_STANDBY, float(step), attached=None, standard_conforming_strings=True
        )
        if decision.node_id == 1:
            return
        state.abandon()
    raise AssertionError("round robin never chose the standby")


def test_a_read_whose_standby_refused_the_connection_is_routed_to_another_readable_node() -> None:
    state = round_robin()
    reads = [query("SELECT 1")]
    _read_landing_on_the_standby(state, reads)
    retry = state.decide_elsewhere(reads, READABLE_STANDBY, 1, 300.0, standard_conforming_strings=True)
    assert (retry.action, retry.node_id) == (RouteAction.SEND, 0)  # the primary is always readable
    assert state.decision is retry
    state.ready(b"I", ok=True, latency=0.001, now=300.001)
    assert all(node.in_flight == 0 for node in state.router.statistics(301.0).nodes)


def test_a_held_begin_whose_standby_refused_is_routed_again_from_before_that_decision() -> None:
    state = round_robin()
    _read_landing_on_the_standby(state, [query("SELECT 1")])
    state.ready(b"I", ok=True, latency=0.001, now=2.0)  # round robin: the primary's turn next, then 1
    first = state.decide(
        [query("SELECT 1")], READABLE_STANDBY, 3.0, attached=None, standard_conforming_strings=True
    )
    assert first.node_id == 0
    state.ready(b"I", ok=True, latency=0.001, now=3.0)
    held = state.decide(
        [query("BEGIN")], READABLE_STANDBY, 4.0, attached=None, standard_conforming_strings=True
    )
    assert held.action is RouteAction.HOLD_BEGIN
    read = state.decide(
        [query("SELECT 1")], READABLE_STANDBY, 5.0, attached=None, standard_conforming_strings=True
    )
    assert (read.node_id, read.send_held_begin) == (1, True)
    retry = state.decide_elsewhere(
        [query("SELECT 1")], READABLE_STANDBY, 1, 6.0, standard_conforming_strings=True
    )
    # Not "in a transaction on the dead standby": the held BEGIN goes with the read to the primary.
    assert (retry.action, retry.node_id, retry.send_held_begin) == (RouteAction.SEND, 0, True)
    assert state.take_held_begin(retry) == "BEGIN"


def test_no_other_readable_node_leaves_the_batch_unrouted() -> None:
    view = initial_view(((0, "primary", 5432, 0.0), (1, "standby", 5432, 1.0)))  # weight 0: no reads
    state = round_robin()
    reads = [query("SELECT 1")]
    assert state.decide(reads, view, 0.0, attached=None, standard_conforming_strings=True).node_id == 1
    retry = state.decide_elsewhere(reads, view, 1, 1.0, standard_conforming_strings=True)
    assert retry.node_id != 1
