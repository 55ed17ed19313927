"""MemoryClusterStore: an in-memory fake of the watchdog cluster, for unit tests of what uses it.

Role: ``MemoryCluster`` holds one shared committed state and the members' stores; a test decides who
leads (``elect``) and who is cut off (``isolate``/``heal``), and every write applies the same pure
``consensus.state.apply_command`` as the Raft store, at once and to every member that is not cut
off. Nothing here is replicated over a network: it is a stand-in for Raft where Raft is not the
thing under test, never a substitute for the integration tests against real pysyncobj.

It must never import pysyncobj or pgbalancer, and never sleep except in ``run``'s lease loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from consensus.state import (
    ClusterState,
    Command,
    CommandResult,
    ForgetMember,
    apply_command,
    majority,
)
from consensus.store import (
    ClusterStore,
    ConsensusError,
    MemberStatus,
    NoQuorumError,
    RaftRole,
    WatchdogStatus,
)

_LEASE_POLL = 0.05


class MemoryCluster:
    """The shared "Raft log" of a set of fake members. Ids are "host:port" strings like the real ones."""

    def __init__(self, members: Iterable[str], *, lease: float = 2.0) -> None:
        self.member_ids: list[str] = sorted(members)
        self.lease = lease
        self.state = ClusterState()
        self.commands: list[Command] = []  # every committed command, in order
        self.leader: str | None = None
        self.term = 0
        self.isolated: set[str] = set()
        self.stores: dict[str, MemoryClusterStore] = {}

    def store(self, member: str) -> MemoryClusterStore:
        if member not in self.stores:
            self.stores[member] = MemoryClusterStore(self, member, self.lease)
        return self.stores[member]

    # ---- what tests control

    def elect(self, member: str | None) -> None:
        """Make ``member`` the leader (None: an election is under way) in a new term."""
        if member is not None and (member not in self.member_ids or member in self.isolated):
            raise ValueError(f"{member} cannot lead: not a reachable member")
        self.leader = member
        self.term += 1
        self._notify_leader()

    def isolate(self, member: str) -> None:
        """Cut ``member`` off from the others (it keeps its last state and learns nothing new)."""
        self.isolated.add(member)
        if self.leader == member:
            self.leader = None
        self._notify_leader()

    def heal(self, member: str) -> None:
        self.isolated.discard(member)
        store = self.stores.get(member)
        if store is not None:
            store._set_state(self.state)
        self._notify_leader()

    # ---- what the stores ask

    def reachable(self, member: str) -> bool:
        return member not in self.isolated and member in self.member_ids

    def majority_side_has_quorum(self) -> bool:
        side = [m for m in self.member_ids if m not in self.isolated]
        return len(side) >= majority(len(self.member_ids)) and self.leader in side

    def leader_seen_by(self, member: str) -> str | None:
        if not self.reachable(member) or self.leader is None or self.leader in self.isolated:
            return None
        return self.leader

    def commit(self, origin: str, command: Command) -> CommandResult:
        if not self.reachable(origin) or not self.majority_side_has_quorum():
            raise NoQuorumError(
                f"watchdog member {origin} cannot reach a leader with a majority; the write was not committed"
            )
        self.state, result = apply_command(self.state, command)
        self.commands.append(command)
        for member, store in self.stores.items():
            if self.reachable(member):
                store._set_state(self.state)
        return result

    def _notify_leader(self) -> None:
        for member, store in self.stores.items():
            leader = self.leader_seen_by(member)
            if leader != store._last_leader:
                store._last_leader = leader
                store._leader_changed(leader, self.term)


class MemoryClusterStore(ClusterStore):
    """One member's view of a ``MemoryCluster`` (same interface as the Raft store)."""

    def __init__(self, cluster: MemoryCluster, member: str, lease: float) -> None:
        super().__init__(member, lease)
        self.cluster = cluster
        self._last_leader: str | None = None
        self._set_state(cluster.state)

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self.cluster.member_ids)

    @property
    def leader_id(self) -> str | None:
        return self.cluster.leader_seen_by(self.self_id)

    @property
    def term(self) -> int:
        return self.cluster.term

    def has_quorum(self) -> bool:
        return self.cluster.reachable(self.self_id) and self.cluster.majority_side_has_quorum()

    def status(self, now: float) -> WatchdogStatus:
        leader = self.leader_id
        # The fake knows everything, but reports only what a real member can know (RaftClusterStore
        # .status): its own role, the leader's role and term; other peers' role and term are unknown.
        own_role = RaftRole.LEADER if leader == self.self_id else RaftRole.FOLLOWER
        members = tuple(
            MemberStatus(
                id=member,
                address=member,
                role=own_role if own else RaftRole.LEADER if member == leader else RaftRole.UNKNOWN,
                last_contact_s=0.0 if self.cluster.reachable(member) else None,
                term=self.term if own or member == leader else None,
                commit_index=len(self.cluster.commands) if own or own_role is RaftRole.LEADER else None,
                holds_vip=self.cluster.stores[member].holds_vip if member in self.cluster.stores else False,
                self=own,
            )
            for member in self.members
            for own in (member == self.self_id,)
        )
        return WatchdogStatus(
            self_id=self.self_id,
            leader=leader,
            term=self.term,
            commit_index=len(self.cluster.commands),
            quorum=self.has_quorum(),
            lease_valid=self.lease_valid(now),
            members=members,
            epoch=self.state.epoch,
            primary_id=self.state.primary_id,
        )

    async def _write(self, command: Command) -> CommandResult:
        await trio.lowlevel.checkpoint()
        return self.cluster.commit(self.self_id, command)

    async def add_member(self, address: str) -> None:
        if address in self.cluster.member_ids:
            raise ConsensusError(f"{address} is already a watchdog member")
        if not self.has_quorum():
            raise NoQuorumError("no majority reachable: membership cannot change now")
        await self._write(ForgetMember(address))  # like the Raft store: it comes back with no votes
        self.cluster.member_ids = sorted([*self.cluster.member_ids, address])

    async def remove_member(self, address: str) -> str | None:
        if address not in self.cluster.member_ids:
            raise ConsensusError(f"{address} is not a watchdog member (members: {', '.join(self.members)})")
        await self._write(ForgetMember(address))
        self.cluster.member_ids = [m for m in self.cluster.member_ids if m != address]
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.note_quorum(trio.current_time())
            await trio.sleep(_LEASE_POLL)
