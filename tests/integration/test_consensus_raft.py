"""RaftClusterStore on real pysyncobj: three members on loopback in one trio run.

Each member is a full pysyncobj node (own tick thread, own TCP port, encrypted with the secret);
only the network is loopback. Stopping a member's ``run`` task destroys its SyncObj and joins its
thread, which is also how every test tears down.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from consensus import ConsensusError, LeaderChange, NoQuorumError
from consensus.raft import RaftClusterStore, RaftTimings, _refuse_foreign_address
from consensus.state import CastVote, Command, CommandResult, ForgetMember
from pgbalancer.devtools import AsyncPoll, free_tcp_ports

# One rerun (README.md, "Tests"): real Raft in one process; under CPU steal pysyncobj re-elects and a
# write meets "leader changed" or a membership change "request denied" (both seen, also on the code
# before the rerun policy). A failed attempt reports the host's steal time over it (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.flaky(reruns=1)]

SECRET = "test-secret-not-for-production"


class Members:
    """Three members' addresses and data dirs; start/stop each one in its own cancel scope."""

    def __init__(self, root: Path, nursery: trio.Nursery) -> None:
        self.addresses = [f"127.0.0.1:{port}" for port in free_tcp_ports(3)]
        self.root = root
        self.nursery = nursery
        self.stores: dict[str, RaftClusterStore] = {}
        self.store_class: type[RaftClusterStore] = RaftClusterStore
        self.scopes: dict[str, trio.CancelScope] = {}

    def make(self, address: str, lease: float = 1.0, secret: str = SECRET) -> RaftClusterStore:
        return self.store_class(
            address,
            self.addresses,
            secret=secret,
            data_dir=self.root / address.replace(":", "_"),
            lease=lease,
        )

    async def start(self, address: str, lease: float = 1.0, secret: str = SECRET) -> RaftClusterStore:
        store = self.make(address, lease, secret)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await store.run(task_status=task_status)

        await self.nursery.start(run)
        self.stores[address], self.scopes[address] = store, scope
        return store

    async def stop(self, address: str) -> None:
        store = self.stores.pop(address)
        self.scopes.pop(address).cancel()
        while store._obj is not None:  # run's finally joins the tick thread
            await trio.sleep(0.01)

    def leaders(self) -> set[str]:
        return {a for a, s in self.stores.items() if s.is_leader}


@asynccontextmanager
async def members(tmp_path: Path) -> AsyncIterator[Members]:
    async with trio.open_nursery() as nursery:
        group = Members(tmp_path, nursery)
        try:
            yield group
        finally:
            for address in list(group.stores):
                await group.stop(address)


async def _elected(group: Members, apoll: AsyncPoll) -> str:
    def one_leader_seen_by_all() -> str | None:
        leaders = group.leaders()
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        return leader if all(s.leader_id == leader for s in group.stores.values()) else None

    leader: str | None = await apoll(
        one_leader_seen_by_all, timeout=15, message="no single leader known to every member"
    )
    assert leader is not None
    return leader


async def test_a_leader_is_elected_writes_replicate_and_a_new_leader_follows_a_stop(
    tmp_path: Path, apoll: AsyncPoll
) -> None:
    async with members(tmp_path) as group:
        changes: list[LeaderChange] = []
        for address in group.addresses:
            store = await group.start(address)
            store.add_leader_listener(changes.append)
        leader = await _elected(group, apoll)
        # _elected reads pysyncobj directly; the event reaches trio a tick later (run_sync_soon), and
        # a starved tick thread can make that the moment after, so it is polled, not asserted at once
        await apoll(
            lambda: any(change.leader == leader for change in changes), timeout=5, message="its leader event"
        )
        follower = next(s for a, s in group.stores.items() if a != leader)
        await follower.vote(0, True)
        assert follower.state.voters(0) == {follower.self_id}
        seen: list[tuple[int, frozenset[str] | None]] = []
        group.stores[leader].add_invalidation_listener(lambda g, t: seen.append((g, t)))
        generation = await follower.replicate_invalidation(frozenset({"public.t"}))
        assert follower.applied_generation == generation
        await apoll(lambda: seen == [(generation, frozenset({"public.t"}))], timeout=5)
        assert await group.stores[leader].commit_view(0, 0, 0, ())
        await apoll(lambda: all(s.state.initialized for s in group.stores.values()), timeout=5)

        # leadership may have moved under CPU load meanwhile: re-read it, then the status in the same
        # trio step (no checkpoint in between, so the trio-side leader cannot change under us)
        leader = await _elected(group, apoll)
        follower = next(s for a, s in group.stores.items() if a != leader)
        status = follower.status(trio.current_time())
        assert status.leader == leader and status.quorum and status.lease_valid
        assert {m.id for m in status.members} == set(group.addresses)
        assert [(m.role, m.term) for m in status.members if m.id == leader] == [("leader", status.term)]
        # the other follower: connected, but its role and term are not this member's to know
        (other,) = (m for m in status.members if not m.self and m.id != leader)
        assert (other.role, other.term, other.commit_index) == ("unknown", None, None)
        assert other.last_contact_s is not None
        led = group.stores[leader].status(trio.current_time())
        peers = [m for m in led.members if not m.self]
        assert all(m.role == "unknown" and m.term is None for m in peers)
        if [m.role for m in led.members if m.self] == ["leader"]:  # still leading (the Raft thread moves on)
            assert all(m.commit_index is not None for m in peers)  # its match index of each peer

        await group.stop(leader)
        new_leader = await _elected(group, apoll)
        assert new_leader != leader
        info = group.stores[new_leader].status(trio.current_time())
        assert info.leader == new_leader
        assert [m.role for m in info.members if m.id == leader] == ["unknown"]
        # Two of three are enough to commit.
        assert await group.stores[new_leader].commit_view(0, 1, 1, ())


async def test_a_member_alone_loses_quorum_and_its_lease(tmp_path: Path, apoll: AsyncPoll) -> None:
    async with members(tmp_path) as group:
        for address in group.addresses:
            await group.start(address, lease=0.5)
        await _elected(group, apoll)
        survivor = group.addresses[0]
        for address in group.addresses[1:]:
            await group.stop(address)
        store = group.stores[survivor]
        await apoll(lambda: not store.has_quorum(), timeout=10, message="a lone member kept quorum")
        await apoll(lambda: not store.lease_valid(trio.current_time()), timeout=5)
        store.timings = type(store.timings)(write_timeout=0.5)
        with pytest.raises(NoQuorumError, match="no leader with a majority"):
            await store.vote(0, True)


async def test_a_write_made_while_no_leader_exists_commits_once_one_is_elected(
    tmp_path: Path, apoll: AsyncPoll
) -> None:
    """pysyncobj refuses a command while no leader is known (MISSING_LEADER: it is in no log); the
    store resubmits it until its write timeout, so a write made during an election commits when
    the election ends, once (the generation rises by exactly one)."""
    async with members(tmp_path) as group:
        first, second, _third = group.addresses
        store = await group.start(first)
        store.timings = RaftTimings(write_timeout=30.0)  # far beyond the election below
        generations: list[int] = []

        async def invalidate() -> None:
            generations.append(await store.replicate_invalidation(None))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(invalidate)
            # one member of three: no leader, and the write keeps waiting instead of failing
            await _stays(
                lambda: not generations and store.leader_id is None, 1.0, "a lone member led or wrote"
            )
            await group.start(second)
        assert generations == [1] and store.state.generation == 1
        await apoll(lambda: group.stores[second].state.generation == 1, timeout=5)


async def _stays(predicate: Callable[[], bool], seconds: float, message: str) -> None:
    """Check ``predicate`` again and again for ``seconds``: a negative (nothing happens) needs a window."""
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        assert predicate(), message
        await trio.sleep(0.05)


async def test_a_member_with_another_secret_never_joins_the_two_that_share_one(
    tmp_path: Path, apoll: AsyncPoll
) -> None:
    """watchdog_secret is pysyncobj's password: a member whose secret differs cannot read its peers'
    messages nor they its own, so it never counts towards their quorum, never learns their leader
    and never applies their writes, while the two that share the secret form a majority of three."""
    async with members(tmp_path) as group:
        outsider_address = group.addresses[2]
        pair = [await group.start(address) for address in group.addresses[:2]]
        outsider = await group.start(outsider_address, secret="another-secret")

        def pair_elected() -> str | None:
            leaders = {s.leader_id for s in pair}
            return leaders.pop() if len(leaders) == 1 and all(s.has_quorum() for s in pair) else None

        leader = await apoll(
            pair_elected, timeout=15, message="the two members sharing a secret elect a leader"
        )
        assert leader in {s.self_id for s in pair}
        assert await pair[0].commit_view(0, 0, 1, ())
        generation = await pair[1].replicate_invalidation(None)
        await apoll(
            lambda: all(s.state.primary_id == 1 and s.applied_generation == generation for s in pair),
            timeout=5,
        )
        # a window of several election timeouts (0.3-0.6 s): nothing it receives decrypts, so it never
        # even counts as connected and never calls an election its peers could answer
        await _stays(
            lambda: (
                outsider.leader_id is None and not outsider.has_quorum() and not outsider.state.initialized
            ),
            3.0,
            "the member with another secret learned the leader or applied the pair's writes",
        )
        assert outsider.applied_generation == 0
        outsider.timings = type(outsider.timings)(write_timeout=0.5)
        with pytest.raises(NoQuorumError):
            await outsider.vote(0, True)

        # The control: the same member, restarted with the shared secret, joins and catches up at once.
        await group.stop(outsider_address)
        rejoined = await group.start(outsider_address)
        await apoll(
            lambda: (
                rejoined.has_quorum()
                and rejoined.leader_id in {s.self_id for s in pair}
                and rejoined.state.primary_id == 1
                and rejoined.applied_generation == generation
            ),
            timeout=15,
            message="the member restarted with the shared secret joins and applies the pair's writes",
        )


async def test_term_vote_and_log_survive_a_restart(tmp_path: Path, apoll: AsyncPoll) -> None:
    async with members(tmp_path) as group:
        for address in group.addresses:
            await group.start(address)
        leader = await _elected(group, apoll)
        assert await group.stores[leader].commit_view(0, 0, 2, ())
        await group.stores[leader].replicate_invalidation(None)
        term_before = max(s.term for s in group.stores.values())
        for address in group.addresses:
            await group.stop(address)
        for address in group.addresses:
            await group.start(address)
        await _elected(group, apoll)
        # the view and the invalidation are two log entries, replayed one after the other: poll both
        await apoll(
            lambda: all(
                s.state.primary_id == 2 and s.state.initialized and s.applied_generation == 1
                for s in group.stores.values()
            ),
            timeout=10,
            message="every member replayed the view and the invalidation",
        )
        assert min(s.term for s in group.stores.values()) > term_before


async def test_membership_grows_and_shrinks_at_runtime(tmp_path: Path, apoll: AsyncPoll) -> None:
    async with members(tmp_path) as group:
        first_two = group.addresses[:2]
        group.addresses = first_two  # start as a two-member cluster
        for address in first_two:
            await group.start(address)
        leader = await _elected(group, apoll)
        third = f"127.0.0.1:{free_tcp_ports(1)[0]}"
        await group.stores[leader].add_member(third)
        group.addresses = [*first_two, third]  # the new member starts knowing everyone
        await group.start(third)
        # the new member follows the leader all three agree on (whichever it is by then)
        leader = await _elected(group, apoll)
        assert all(len(s.members) == 3 for s in group.stores.values())
        await group.stores[third].vote(1, True)
        await group.stores[leader].remove_member(third)
        await apoll(lambda: group.stores[leader].members == tuple(sorted(first_two)), timeout=5)
        assert group.stores[leader].down_votes(1) == 0


class ForgetFails(RaftClusterStore):
    """A fault shim for the one step a real cluster cannot be made to fail on cue: the ForgetMember
    write right after a membership change committed (the leader lost between the two commits)."""

    forget_failures = 0  # how many more ForgetMember writes fail

    async def _write(self, command: Command) -> CommandResult:
        if isinstance(command, ForgetMember) and self.forget_failures > 0:
            self.forget_failures -= 1
            raise NoQuorumError("injected: the leader was lost before the votes were cleared")
        return await super()._write(command)


async def test_a_removal_is_reported_done_once_committed_even_if_clearing_its_votes_fails(
    tmp_path: Path, apoll: AsyncPoll
) -> None:
    async with members(tmp_path) as group:
        group.store_class = ForgetFails
        for address in group.addresses:
            await group.start(address)
        await _elected(group, apoll)
        first, second, gone = group.addresses
        remaining = tuple(sorted((first, second)))
        await group.stores[gone].vote(1, True)
        await group.stop(gone)  # removing a member that died is the usual case
        store = group.stores[first]
        assert isinstance(store, ForgetFails)
        await apoll(lambda: store.state.voters(1) == {gone}, timeout=5)

        # One failed attempt: retried, and the removal is done, votes and all.
        store.forget_failures = 1
        assert await store.remove_member(gone) is None
        assert store.forget_failures == 0 and store.state.voters(1) == frozenset()
        await apoll(lambda: store.members == remaining, timeout=5)

        # Back as a member (never restarted), with a vote recorded for it again; then a removal whose
        # clean-up never succeeds: still a removal, with a note, and the leftover vote does not count.
        await store.add_member(gone)
        await store._write(CastVote(gone, 1, True))
        # two write timeouts of retries: 4 s (0.5 s, also the removal's own commit deadline, was
        # missed under CPU steal with nothing wrong)
        store.timings = RaftTimings(write_timeout=2.0)
        store.forget_failures = 10**6
        note = await store.remove_member(gone)
        assert note is not None and f"{gone} is no longer a member" in note
        assert "injected: the leader was lost" in note
        await apoll(lambda: all(s.members == remaining for s in group.stores.values()), timeout=5)
        assert store.state.voters(1) == {gone} and store.down_votes(1) == 0

        # Adding it again clears what the failed removal left behind.
        store.forget_failures = 0
        await store.add_member(gone)
        assert store.state.voters(1) == frozenset() and store.down_votes(1) == 0


def test_a_foreign_address_is_refused_before_pysyncobj_retries_a_taken_port_is_left_to_it() -> None:
    # 192.0.2.3 (TEST-NET-1) is never this machine's: no bind retries, the message says what to fix.
    with pytest.raises(
        ConsensusError, match=re.escape("192.0.2.3:9000: the address is not local; check watchdog_listen")
    ):
        _refuse_foreign_address("192.0.2.3:9000")
    with pytest.raises(
        ConsensusError, match=re.escape("watchdog cannot listen on no-such-host.invalid:9000")
    ):
        _refuse_foreign_address("no-such-host.invalid:9000")
    # A local port another process still holds (a restart racing its predecessor's exit) is
    # pysyncobj's to retry (bindRetryTime x maxBindRetries): the probe lets it through.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        _refuse_foreign_address(f"127.0.0.1:{holder.getsockname()[1]}")
