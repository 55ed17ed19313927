"""The failover planner: every backend-HA decision, as a pure function of snapshots.

Role: from the current ``ClusterView``, what the health checker observed (``Observations``), the
time and the ``HaPolicy``, compute the view to adopt and the actions to perform: re-probe a suspect,
promote a standby, re-point a standby at the primary, run the operator's hook. The trio shells in
``pgbalancer.health`` probe and execute; the watchdog cluster later runs the same functions on its
Raft leader, passing the majority's down votes as the confirmations. Operator requests (attach,
detach, promote, switchover, rejoin) are validated here too: a bad one raises ``HaOperationError``
with what to do instead, and changes nothing.

Invariants (tests/unit/test_ha_planner.py checks them):

* one write target: only ``primary_id`` may be an up node that is not in recovery. A node that is
  not in recovery but is not the primary (an old primary restarted on its old timeline: Pgpool-II
  issue #64) is kept down until it is rejoined as a standby;
* the primary is the node not in recovery on the highest timeline; a tie between two such nodes
  that are not the current primary is ambiguous and gives no primary at all;
* a failover promotes the up standby of the same cluster (system identifier) that holds the most
  WAL, and never while a standby still streams from the primary (then it is alive);
* the epoch rises whenever ``primary_id`` changes.

It must never do I/O, read a clock, or keep state between calls: everything it needs is passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pgbalancer.ha.view import BackendRole, BackendState, BackendStatus, ClusterView

# Weight of the newest probe in the health score's moving average.
_SCORE_WEIGHT = 0.5


# --------------------------------------------------------------------------- observations


class ProbeOutcome(enum.StrEnum):
    OK = "ok"  # connected and answered the probe query
    ALIVE = "alive"  # answered, but could not be queried (too many connections, auth): not down
    DOWN = "down"  # unreachable after every retry


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What one successful probe learned about a PostgreSQL server."""

    in_recovery: bool
    wal_lsn: int | None = None  # primary: pg_current_wal_lsn(); standby: pg_last_wal_replay_lsn()
    receive_lsn: int | None = None  # standby: pg_last_wal_receive_lsn() (flushed, kept after the stream ends)
    timeline: int | None = None
    system_identifier: int | None = None
    lag_seconds: float | None = None  # a standby's own estimate (0 when it replayed all it received)
    connections: int | None = None
    max_connections: int | None = None
    streaming_from: str | None = None  # "host:port" a standby streams from right now; None: not streaming
    following: str | None = None  # "host:port" its primary_conninfo names; None: unknown or none

    @property
    def wal_held(self) -> int:
        """How far this server's WAL reaches. For a standby that is the further of what it flushed and
        what it replayed: pg_promote replays everything received before it opens for writes, and a
        synchronous commit is acknowledged once a standby flushed it, not replayed it."""
        return max(self.wal_lsn or 0, self.receive_lsn or 0)


@dataclass(frozen=True, slots=True)
class Probe:
    """One backend's probe, after its retries."""

    node_id: int
    at: float
    outcome: ProbeOutcome
    facts: ServerFacts | None = None  # set when outcome is OK
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is ProbeOutcome.OK and self.facts is not None


@dataclass(frozen=True)
class Observations:
    """What the health checker saw.

    ``probes`` are this round's (a backend without one is left as it is); ``last_facts`` are the
    latest successful facts of each backend from any round (how the cluster's system identifier is
    remembered while its primary is down). With a watchdog, ``down_votes`` counts the nodes that see
    each backend down and ``quorum`` is the majority; alone, a backend is confirmed down by its own
    failed probe. ``epoch`` is the view's epoch when probing began: probes older than a promotion
    describe a cluster that no longer exists (the new primary still "in recovery") and are ignored.
    """

    probes: Mapping[int, Probe] = field(default_factory=dict)
    last_facts: Mapping[int, ServerFacts] = field(default_factory=dict)
    down_votes: Mapping[int, int] | None = None
    quorum: int = 1
    epoch: int | None = None  # the view's epoch when probing began; None = taken under the decision lock

    def confirmed_down(self, node_id: int) -> bool:
        if self.down_votes is not None:
            return self.down_votes.get(node_id, 0) >= self.quorum
        probe = self.probes.get(node_id)
        return probe is not None and probe.outcome is ProbeOutcome.DOWN and self.quorum <= 1

    def fresh(self, node_id: int) -> ServerFacts | None:
        """This round's facts of a backend, if it was probed successfully."""
        probe = self.probes.get(node_id)
        return probe.facts if probe is not None and probe.ok else None


@dataclass(frozen=True)
class HaPolicy:
    """The knobs of the planner (from the config); ``executes`` False means observe-only."""

    executes: bool = True  # False: adopt what is seen, never promote or re-point (workers other than 0)
    auto_failback: bool = (
        True  # a recovered standby is re-added once it streams and lags under the thresholds
    )
    confirm_suspicions: bool = True  # failover_on_backend_error: errors trigger an immediate re-probe
    delay_threshold_bytes: int = 0  # 0: no limit
    delay_threshold_seconds: float = 0.0  # 0: no limit


# --------------------------------------------------------------------------- actions and plans


@dataclass(frozen=True, slots=True)
class Reprobe:
    """Probe these backends now, to confirm or clear a suspicion."""

    node_ids: frozenset[int]
    reason: str


@dataclass(frozen=True, slots=True)
class Promote:
    """Promote a standby (pg_promote, or failover_command); adopt ``after_promotion`` once it worked."""

    node_id: int
    old_primary_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class FollowPrimary:
    """Point a standby at the primary (primary_conninfo + reload, or follow_primary_command)."""

    node_id: int
    primary_id: int
    old_primary_id: int | None


@dataclass(frozen=True, slots=True)
class BackendFailed:
    """A standby was confirmed down: failover_command runs for it (Pgpool-II runs it for every node)."""

    node_id: int
    primary_id: int | None


Action = Reprobe | Promote | FollowPrimary | BackendFailed


@dataclass(frozen=True)
class Plan:
    """The view to adopt now, what to do next, and what changed in words (for logs and events)."""

    view: ClusterView
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Switchover:
    """A validated planned switchover (the shell holds new writes while it runs)."""

    old_primary_id: int
    new_primary_id: int


class HaOperationError(Exception):
    """An operator request that cannot be done; nothing was changed. ``kind`` suits an HTTP status."""

    def __init__(self, message: str, kind: str = "conflict") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # "not_found" | "conflict" | "unavailable"


# --------------------------------------------------------------------------- suspicion


def plan_suspicion(view: ClusterView, node_ids: Iterable[int], policy: HaPolicy) -> Plan:
    """A connection-level error on these backends: quarantine standbys and re-probe at once.

    The primary is re-probed but not quarantined: writes have nowhere else to go, so holding them
    back could only turn writes that may well succeed into certain errors. One killed connection
    (pg_terminate_backend) therefore costs nothing once the re-probe answers.
    """
    if not policy.confirm_suspicions:
        return Plan(view)
    suspects: set[int] = set()
    notes: list[str] = []
    for node_id in sorted(set(node_ids)):
        if not view.has(node_id):
            continue
        state = view.backend(node_id)
        if state.detached or state.status is BackendStatus.DOWN:
            continue
        suspects.add(node_id)
        if node_id == view.primary_id:
            notes.append(f"primary {node_id} suspected after a connection error: re-probing it now")
        elif state.status is BackendStatus.UP:
            view = view.quarantined(node_id)
            notes.append(f"backend {node_id} quarantined after a connection error: re-probing it now")
    if not suspects:
        return Plan(view)
    return Plan(view, (Reprobe(frozenset(suspects), "connection error"),), tuple(notes))


# --------------------------------------------------------------------------- probe rounds


def plan_round(view: ClusterView, obs: Observations, now: float, policy: HaPolicy) -> Plan:
    """Fold one probe round into the view: statuses, measurements, who the primary is, and what to do."""
    del now  # the probes carry their own times; kept in the signature for the watchdog's leases
    if obs.epoch is not None and obs.epoch != view.epoch:
        return Plan(
            view, (), (f"probes begun in epoch {obs.epoch} ignored: the view is at epoch {view.epoch}",)
        )
    notes: list[str] = []
    sysid = cluster_system_id(view, obs)
    primary_facts = obs.fresh(view.primary_id) if view.primary_id is not None else None
    primary_lsn = primary_facts.wal_lsn if primary_facts and not primary_facts.in_recovery else None
    observed = [_observe(state, obs, primary_lsn, sysid, view.primary_id, policy, notes) for state in view]
    before = view
    view = _settle_primary(replace(view, backends=tuple(observed)), obs, sysid, notes)
    if not policy.executes:
        return Plan(view, (), tuple(notes))
    actions: list[Action] = []
    actions.extend(_failed_standbys(before, view))
    promote = _failover(view, obs, notes)
    if promote is not None:
        actions.append(promote)
    elif before.primary_id == view.primary_id:
        actions.extend(_lost_standbys(view, obs, sysid))
    return Plan(view, tuple(actions), tuple(notes))


def cluster_system_id(view: ClusterView, obs: Observations) -> int | None:
    """The system identifier of the primary's cluster, as last seen; None if never seen."""
    if view.primary_id is None:
        return None
    facts = obs.fresh(view.primary_id) or obs.last_facts.get(view.primary_id)
    return facts.system_identifier if facts is not None else None


def _same_cluster(facts: ServerFacts, sysid: int | None) -> bool:
    # Unknown on either side cannot be told apart: a least-privileged health user may not see it.
    return sysid is None or facts.system_identifier is None or facts.system_identifier == sysid


def _observe(
    state: BackendState,
    obs: Observations,
    primary_lsn: int | None,
    sysid: int | None,
    primary_id: int | None,
    policy: HaPolicy,
    notes: list[str],
) -> BackendState:
    probe = obs.probes.get(state.node_id)
    if probe is None:
        if obs.confirmed_down(state.node_id) and state.status is not BackendStatus.DOWN:
            notes.append(f"backend {state.node_id} is down (confirmed by the watchdog)")
            return replace(state, status=BackendStatus.DOWN)
        return state
    alive = probe.outcome is not ProbeOutcome.DOWN
    measured = replace(
        state,
        checked_at=probe.at,
        health_score=round((1 - _SCORE_WEIGHT) * state.health_score + _SCORE_WEIGHT * alive, 6),
    )
    if probe.facts is not None:
        measured = _with_facts(measured, probe.facts, primary_lsn)
    status = _next_status(measured, probe, obs, sysid, primary_id, policy, notes)
    return replace(measured, status=status)


def _with_facts(state: BackendState, facts: ServerFacts, primary_lsn: int | None) -> BackendState:
    if not facts.in_recovery:
        return replace(
            state,
            role=BackendRole.PRIMARY,
            replay_lsn=facts.wal_lsn,
            lag_bytes=0,
            lag_seconds=0.0,
            connections=facts.connections,
            max_connections=facts.max_connections,
        )
    lag_bytes = None
    if primary_lsn is not None and facts.wal_lsn is not None:
        lag_bytes = max(0, primary_lsn - facts.wal_lsn)
    return replace(
        state,
        role=BackendRole.STANDBY,
        replay_lsn=facts.wal_lsn,
        lag_bytes=lag_bytes,
        lag_seconds=facts.lag_seconds,
        connections=facts.connections,
        max_connections=facts.max_connections,
    )


def _next_status(
    state: BackendState,
    probe: Probe,
    obs: Observations,
    sysid: int | None,
    primary_id: int | None,
    policy: HaPolicy,
    notes: list[str],
) -> BackendStatus:
    node_id, was = state.node_id, state.status
    if state.detached:
        return BackendStatus.DOWN
    if obs.confirmed_down(node_id):
        if was is not BackendStatus.DOWN:
            notes.append(f"backend {node_id} is down: {probe.error or 'unreachable'}")
        return BackendStatus.DOWN
    facts = probe.facts
    if facts is None:  # answered but could not be queried: alive, so nothing is concluded
        return BackendStatus.UP if was is BackendStatus.QUARANTINED else was
    if not _same_cluster(facts, sysid):
        if was is not BackendStatus.DOWN:
            notes.append(
                f"backend {node_id} belongs to another cluster (system identifier {facts.system_identifier}, "
                f"the primary's is {sysid}): never used; check backend_hostname{node_id} and "
                f"backend_port{node_id}"
            )
        return BackendStatus.DOWN
    if node_id == primary_id and was is BackendStatus.DOWN and not facts.in_recovery:
        notes.append(f"primary {node_id} answers again: back in service")
    if not facts.in_recovery:
        # Which node not in recovery takes writes is decided by _settle_primary, over all of them.
        return BackendStatus.UP if node_id == primary_id else was
    if was is BackendStatus.QUARANTINED:
        notes.append(f"backend {node_id} answered its re-probe: back in service")
        return BackendStatus.UP
    if was is BackendStatus.DOWN and node_id != primary_id:
        return _failback(state, facts.streaming_from, policy, notes)
    return was if node_id != primary_id else BackendStatus.UP


def _failback(
    state: BackendState, streaming_from: str | None, policy: HaPolicy, notes: list[str]
) -> BackendStatus:
    if not policy.auto_failback:
        return BackendStatus.DOWN
    if streaming_from is None or not lag_within_thresholds(state, policy):
        return BackendStatus.DOWN  # not receiving WAL: it would serve ever staler reads
    notes.append(
        f"standby {state.node_id} is back (lag {state.lag_bytes} bytes, {state.lag_seconds} s): re-added"
    )
    return BackendStatus.UP


def lag_within_thresholds(state: BackendState, policy: HaPolicy) -> bool:
    """Whether a standby's lag is known to be under every threshold that is set (0 = no limit)."""
    byte_limit, second_limit = policy.delay_threshold_bytes, policy.delay_threshold_seconds
    if byte_limit and (state.lag_bytes is None or state.lag_bytes > byte_limit):
        return False
    return not (second_limit and (state.lag_seconds is None or state.lag_seconds > second_limit))


def _settle_primary(view: ClusterView, obs: Observations, sysid: int | None, notes: list[str]) -> ClusterView:
    """Decide which node takes writes: the node not in recovery on the highest timeline.

    Every other node not in recovery is fenced (down) until an operator rejoins it as a standby.
    """
    current = view.primary_id
    writable = [
        state
        for state in view
        if not state.detached
        and (facts := obs.fresh(state.node_id)) is not None
        and not facts.in_recovery
        and _same_cluster(facts, sysid)
    ]
    if not writable:
        return _without_writable_node(view, obs, notes)
    best = max(_timeline(obs, s.node_id) for s in writable)
    top = [s.node_id for s in writable if _timeline(obs, s.node_id) == best]
    chosen: int | None
    if current in top:
        chosen = current
    elif len(top) == 1:
        chosen = top[0]
    else:
        chosen = None
        notes.append(
            f"backends {top} are all primaries on timeline {best}: ambiguous, so no writes are routed "
            "until an operator rejoins all but one as standbys"
        )
    for state in writable:
        if state.node_id != chosen:
            view = _fence(view, state.node_id, obs, chosen, notes)
    if chosen is None or chosen == current:
        return view.with_primary(None) if chosen is None and current is not None else view
    notes.append(f"backend {chosen} is the primary (not in recovery, timeline {best}): writes go there")
    view = view.with_primary(chosen)
    return view.with_backend(replace(view.backend(chosen), status=BackendStatus.UP, role=BackendRole.PRIMARY))


def _without_writable_node(view: ClusterView, obs: Observations, notes: list[str]) -> ClusterView:
    primary_id = view.primary_id
    if primary_id is None:
        return view
    facts = obs.fresh(primary_id)
    if facts is not None and facts.in_recovery:
        notes.append(
            f"backend {primary_id} is in recovery (a standby), and no backend is a primary: no writes"
        )
        return view.with_primary(None)
    return view


def _fence(
    view: ClusterView, node_id: int, obs: Observations, primary_id: int | None, notes: list[str]
) -> ClusterView:
    state = view.backend(node_id)
    if state.status is not BackendStatus.DOWN:
        owner = f"backend {primary_id} is the primary" if primary_id is not None else "no primary is chosen"
        notes.append(
            f"backend {node_id} is not in recovery (timeline {_timeline(obs, node_id)}) but {owner}: fenced, "
            f"it gets no traffic until it is rejoined as a standby"
        )
    return view.with_backend(replace(state, status=BackendStatus.DOWN))


def _timeline(obs: Observations, node_id: int) -> int:
    facts = obs.fresh(node_id)
    return facts.timeline if facts is not None and facts.timeline is not None else 0


def _failed_standbys(before: ClusterView, after: ClusterView) -> list[Action]:
    failed: list[Action] = []
    for state in after:
        if state.node_id == before.primary_id or state.detached or state.status is not BackendStatus.DOWN:
            continue
        if before.backend(state.node_id).status is not BackendStatus.DOWN:
            failed.append(BackendFailed(state.node_id, after.primary_id))
    return failed


def _failover(view: ClusterView, obs: Observations, notes: list[str]) -> Promote | None:
    primary_id = view.primary_id
    if primary_id is None or not obs.confirmed_down(primary_id):
        return None
    primary = view.backend(primary_id)
    if primary.detached or primary.status is not BackendStatus.DOWN:
        return None
    target, why_not = choose_failover_target(view, obs)
    if target is None:
        notes.append(f"primary {primary_id} is down and no standby can be promoted: {why_not}")
        return None
    notes.append(f"primary {primary_id} is down: promoting standby {target} (it holds the most WAL)")
    return Promote(target, primary_id, f"primary {primary_id} confirmed down")


def choose_failover_target(view: ClusterView, obs: Observations) -> tuple[int | None, str]:
    """The up standby of the primary's cluster holding the most WAL (lowest id on a tie), or why none."""
    primary_id = view.primary_id
    if primary_id is None:
        return None, "no primary is known"
    sysid = cluster_system_id(view, obs)
    if sysid is None:
        return None, f"backend {primary_id} never answered, so the standbys' cluster cannot be checked"
    primary = view.backend(primary_id)
    candidates: list[tuple[int, int]] = []
    for state in view:
        facts = obs.fresh(state.node_id)
        if state.node_id == primary_id or facts is None or not facts.in_recovery:
            continue
        if facts.streaming_from == primary.address:
            return (
                None,
                f"standby {state.node_id} still streams from {primary.address}, so the primary is alive",
            )
        if state.is_up and not state.detached and _same_cluster(facts, sysid):
            candidates.append((facts.wal_held, state.node_id))
    if not candidates:
        return None, "no standby of the same cluster is up"
    best_lsn = max(lsn for lsn, _ in candidates)
    return min(node_id for lsn, node_id in candidates if lsn == best_lsn), ""


def _lost_standbys(view: ClusterView, obs: Observations, sysid: int | None) -> list[Action]:
    """Standbys of this cluster that stream from nobody and name another primary: point them here."""
    primary = view.primary
    if primary is None:
        return []
    follows: list[Action] = []
    for state in view:
        facts = obs.fresh(state.node_id)
        if state.node_id == primary.node_id or state.detached or facts is None or not facts.in_recovery:
            continue
        if not _same_cluster(facts, sysid) or facts.streaming_from is not None:
            continue
        if facts.following is not None and facts.following != primary.address:
            follows.append(FollowPrimary(state.node_id, primary.node_id, None))
    return follows


# --------------------------------------------------------------------------- promotion


def after_promotion(view: ClusterView, promote: Promote) -> Plan:
    """The view once ``promote.node_id`` accepts writes: new primary, new epoch, old one fenced,
    and every other up standby re-pointed at it."""
    new_id, old_id = promote.node_id, promote.old_primary_id
    view = view.with_primary(new_id)
    view = view.with_backend(
        replace(
            view.backend(new_id),
            status=BackendStatus.UP,
            role=BackendRole.PRIMARY,
            lag_bytes=0,
            lag_seconds=0.0,
        )
    )
    notes = [f"backend {new_id} was promoted and is the primary (epoch {view.epoch})"]
    if old_id is not None and old_id != new_id and view.has(old_id):
        view = view.with_backend(replace(view.backend(old_id), status=BackendStatus.DOWN))
        notes.append(f"backend {old_id} (the old primary) is fenced until it is rejoined as a standby")
    follows = tuple(
        FollowPrimary(state.node_id, new_id, old_id)
        for state in view
        if state.node_id not in (new_id, old_id)
        and not state.detached
        and state.status is not BackendStatus.DOWN
    )
    return Plan(view, follows, tuple(notes))


# --------------------------------------------------------------------------- operator requests


def _known(view: ClusterView, node_id: int) -> BackendState:
    if not view.has(node_id):
        known = ", ".join(str(s.node_id) for s in view) or "none"
        raise HaOperationError(f"there is no backend {node_id} (configured: {known})", "not_found")
    return view.backend(node_id)


def _fresh_or_raise(obs: Observations, node_id: int, doing: str) -> ServerFacts:
    facts = obs.fresh(node_id)
    if facts is None:
        probe = obs.probes.get(node_id)
        why = probe.error if probe is not None and probe.error else "it did not answer the probe"
        raise HaOperationError(
            f"cannot {doing} backend {node_id}: {why}; start it (or fix its address), then retry",
            "unavailable",
        )
    return facts


def _check_cluster(view: ClusterView, obs: Observations, node_id: int, facts: ServerFacts) -> None:
    sysid = cluster_system_id(view, obs)
    if not _same_cluster(facts, sysid):
        raise HaOperationError(
            f"backend {node_id} belongs to another cluster (system identifier {facts.system_identifier}, "
            f"the primary's is {sysid}); check backend_hostname{node_id} and backend_port{node_id}"
        )


def plan_attach(view: ClusterView, obs: Observations, node_id: int) -> Plan:
    """Put a detached or down backend back in service, if it is safe (a standby, or the primary itself)."""
    state = _known(view, node_id)
    if state.is_up and not state.detached:
        raise HaOperationError(f"backend {node_id} is already attached and up")
    facts = _fresh_or_raise(obs, node_id, "attach")
    _check_cluster(view, obs, node_id, facts)
    if node_id == view.primary_id and facts.in_recovery:
        raise HaOperationError(
            f"backend {node_id} is the configured primary but is in recovery; promote a standby instead"
        )
    if node_id != view.primary_id and not facts.in_recovery:
        primary = f"backend {view.primary_id} is" if view.primary_id is not None else "another node may be"
        raise HaOperationError(
            f"backend {node_id} is not in recovery (a primary on timeline {facts.timeline}) and {primary} "
            f"the primary: attaching it would make two primaries; rejoin it as a standby (rejoin {node_id})"
        )
    attached = replace(state, status=BackendStatus.UP, detached=False)
    return Plan(view.with_backend(attached), (), (f"backend {node_id} attached by an operator",))


def plan_detach(view: ClusterView, node_id: int) -> Plan:
    """Take a standby out of service; the health checker will not bring it back (attach does)."""
    state = _known(view, node_id)
    if state.detached:
        raise HaOperationError(f"backend {node_id} is already detached")
    if node_id == view.primary_id:
        raise HaOperationError(
            f"backend {node_id} is the primary: switch over to a standby first (switchover N), then detach it"
        )
    detached = replace(state, status=BackendStatus.DOWN, detached=True)
    return Plan(view.with_backend(detached), (), (f"backend {node_id} detached by an operator",))


def check_promotable(view: ClusterView, obs: Observations, node_id: int) -> ServerFacts:
    """The facts of a standby that may be promoted; HaOperationError says why it may not."""
    state = _known(view, node_id)
    if node_id == view.primary_id and state.is_up:
        raise HaOperationError(f"backend {node_id} is already the primary")
    if state.detached:
        raise HaOperationError(f"backend {node_id} is detached: attach it first, then promote it")
    if not state.is_up:
        raise HaOperationError(
            f"backend {node_id} is {state.status}: only an up standby can be promoted", "unavailable"
        )
    facts = _fresh_or_raise(obs, node_id, "promote")
    if not facts.in_recovery:
        raise HaOperationError(f"backend {node_id} is not in recovery, so it is not a standby to promote")
    _check_cluster(view, obs, node_id, facts)
    return facts


def plan_manual_promote(view: ClusterView, obs: Observations, node_id: int) -> Plan:
    """Promote a chosen standby while the primary is down (a manual failover)."""
    facts = check_promotable(view, obs, node_id)
    if view.primary is not None:
        raise HaOperationError(
            f"backend {view.primary_id} is the primary and up: use a switchover to move writes without loss"
        )
    notes = [f"operator promotes backend {node_id}"]
    ahead = [
        s.node_id
        for s in view.up_standbys()
        if s.node_id != node_id
        and (other := obs.fresh(s.node_id)) is not None
        and other.wal_held > facts.wal_held
    ]
    if ahead:
        notes.append(
            f"warning: backends {ahead} hold more WAL than backend {node_id}; what only they hold is lost"
        )
    return Plan(view, (Promote(node_id, view.primary_id, "operator promote"),), tuple(notes))


def plan_switchover(view: ClusterView, obs: Observations, node_id: int) -> Switchover:
    """Validate a planned switchover to ``node_id``."""
    facts = check_promotable(view, obs, node_id)
    primary = view.primary
    if primary is None:
        raise HaOperationError(
            f"no primary is up, so there is nothing to switch over from; promote backend {node_id} instead",
            "unavailable",
        )
    if facts.streaming_from is None:
        raise HaOperationError(
            f"backend {node_id} is not streaming from the primary, so it could never catch up; "
            "check its primary_conninfo and the primary's pg_stat_replication"
        )
    return Switchover(primary.node_id, node_id)


def caught_up(facts: ServerFacts, target_lsn: int) -> bool:
    """Whether a switchover candidate holds all WAL up to the old primary's final position."""
    return facts.in_recovery and facts.wal_held >= target_lsn


def plan_rejoin(view: ClusterView, node_id: int) -> BackendState:
    """Validate a rejoin of ``node_id`` as a standby; returns the primary it will follow."""
    state = _known(view, node_id)
    if node_id == view.primary_id:
        raise HaOperationError(
            f"backend {node_id} is the primary; only another node can rejoin it as a standby"
        )
    primary = view.primary
    if primary is None:
        raise HaOperationError("no primary is up to rejoin to; promote a standby first", "unavailable")
    if state.is_up and state.role is BackendRole.STANDBY:
        raise HaOperationError(
            f"backend {node_id} is already an up standby; detach it first if it must be rebuilt"
        )
    return primary
