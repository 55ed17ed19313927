"""Watchdog decisions as pure functions: votes to cast, the committed view to route by, lease refusals.

Role: the watchdog shell (``pgbalancer.watchdog.service``) asks these what to do; they read the
cluster view, this round's probes and the committed ``consensus.state.ClusterState`` and return
values. Invariants they keep (tests/unit/test_watchdog_decide.py checks them):

* every node routes writes only to the ``primary_id`` of the newest committed epoch
  (``align_view``), whatever its own probes concluded;
* a node votes only what it saw itself this round, and only changes are written;
* a node whose lease ran out refuses writes, and reads too under ``partition_read_policy = refuse``.

It must never do I/O, read a clock or import trio/pysyncobj: time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from consensus.state import BackendRecord, ClusterState
from pgbalancer.ha.planner import Probe, ProbeOutcome
from pgbalancer.ha.view import BackendStatus, ClusterView


def votes_to_cast(
    probes: Mapping[int, Probe], state: ClusterState, self_id: str
) -> tuple[tuple[int, bool], ...]:
    """(backend, down) for every backend whose probe this round disagrees with our committed vote."""
    changes = []
    for node_id, probe in sorted(probes.items()):
        down = probe.outcome is ProbeOutcome.DOWN
        if down != (self_id in state.voters(node_id)):
            changes.append((node_id, down))
    return tuple(changes)


def primary_system_identifier(view: ClusterView, probes: Mapping[int, Probe]) -> int | None:
    """The system identifier this round's probe of the primary reported (it must be a primary)."""
    if view.primary_id is None:
        return None
    probe = probes.get(view.primary_id)
    facts = probe.facts if probe is not None and probe.ok else None
    if facts is None or facts.in_recovery:
        return None
    return facts.system_identifier


def align_view(view: ClusterView, state: ClusterState) -> ClusterView:
    """``view`` with the committed primary and epoch (unchanged until a first view is committed).

    Local observations (standbys' statuses, lag, scores) stay: they decide reads. The committed
    primary's status is the committed one: one node's failed probe does not stop its writes, and a
    primary the majority declared down gets no writes here either.
    """
    if not state.initialized:
        return view
    aligned = replace(view, primary_id=state.primary_id, epoch=state.epoch)
    primary = state.primary_id
    if primary is None or not aligned.has(primary):
        return aligned
    local, agreed = aligned.backend(primary), state.backend(primary)
    if agreed is None or agreed.status == local.status:
        return aligned
    return aligned.with_backend(replace(local, status=BackendStatus(agreed.status)))


def backend_records(view: ClusterView) -> tuple[BackendRecord, ...]:
    """The view's backends in the replicated form (what the leader commits)."""
    return tuple(
        BackendRecord(s.node_id, s.address, str(s.role), str(s.status), s.weight) for s in view.backends
    )


def needs_commit(view: ClusterView, state: ClusterState) -> bool:
    """Whether the leader must commit ``view``: first view, a new primary/epoch, or new statuses."""
    if not state.initialized or view.primary_id != state.primary_id or view.epoch != state.epoch:
        return True
    return backend_records(view) != tuple(b for b in state.backends if view.has(b.node_id))


def partition_refusal(
    *, write: bool, lease_valid: bool, refuse_reads: bool, self_id: str, leader: str | None
) -> str | None:
    """The message a client gets when this node may not serve it (None: serve it)."""
    if lease_valid or (not write and not refuse_reads):
        return None
    what = "writes" if write else "queries (partition_read_policy = refuse)"
    return (
        f"pgbalancer node {self_id} lost contact with its watchdog quorum and refuses {what}: another "
        "node may have failed over the primary; connect through another pgbalancer node or the virtual "
        "IP" + (f" (last known leader {leader})" if leader else "")
    )
