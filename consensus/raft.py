"""RaftClusterStore: the ClusterStore on pysyncobj (the one module that imports it).

Role: runs one pysyncobj ``SyncObj`` (its own auto-tick thread) whose single consumer applies the
pure ``consensus.state.apply_command`` to every committed log entry, and bridges it to trio:

* into trio: a tick callback (tick thread, every ``auto_tick_period``) notices a newly applied state
  or a new leader/term and hands them over with ``TrioToken.run_sync_soon``, which never blocks the
  tick thread; listeners then run in the trio thread, in commit order;
* out of trio: writes go through pysyncobj's thread-safe command queue with a ``callback=`` that
  again comes back through ``run_sync_soon``; the awaiting task waits for it with a deadline and
  then until the state it produced is applied here.

Timings (``RaftTimings``) are tuned for seconds-level failover (min/max election timeout 0.3/0.6 s,
heartbeats every 0.05 s, ticks every 0.01 s; STACK-NOTES' 0.15/0.35/0.03 flapped under load);
``RaftTimings.for_election_timeout`` scales them all from one election timeout (the node's
watchdog_election_timeout) for hosts too noisy for those.
``leader_fallback_timeout`` is how long a leader cut off from the majority still believes it leads;
a new leader must wait ``vip_acquire_delay`` (longer than that) before taking the virtual IP, so the
old one has stepped down first. Peers authenticate and encrypt with ``password`` (watchdog_secret),
the endpoint binds to this member's own address only, and the journal plus full dump under
``data_dir`` keep the term, vote and log across restarts.

It must never import pgbalancer, never block the trio thread on the network (the constructor runs in
a worker thread), and never do more than hand values over inside the tick thread's callback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.syncobj import SyncObjException

from consensus.state import (
    ClusterState,
    Command,
    CommandError,
    CommandResult,
    ForgetMember,
    apply_command,
    decode_command,
    encode_command,
)
from consensus.store import (
    ClusterStore,
    ConsensusError,
    MemberStatus,
    NoQuorumError,
    RaftRole,
    WatchdogStatus,
)

log = logging.getLogger(__name__)

_POLL_PERIOD = 0.05  # trio-side: lease and peer-contact bookkeeping
_FORGET_RETRY = 0.1  # between attempts to clear a removed member's votes
_STATE_NAMES = {0: RaftRole.FOLLOWER, 1: RaftRole.CANDIDATE, 2: RaftRole.LEADER}
_RESUBMIT_PAUSE = 0.05  # between submissions of a command pysyncobj refused without logging it
# pysyncobj's refusals of a command that is in no log and never will be, so submitting it again
# cannot apply it twice (pysyncobj/syncobj.py, _checkCommandsToApply and __applyLogEntries):
# MISSING_LEADER (no leader known: an election; commandsWaitLeader is off so that it is reported)
# and QUEUE_FULL come before the command is appended anywhere; NOT_LEADER is the answer of a member
# the command was forwarded to and that no longer leads, which does not append it; DISCARDED means
# its log position committed another term's entry. Never resubmitted: LEADER_CHANGED (forwarded to
# a leader that may have appended it, so it may still commit), UNKNOWN_OUTCOME (likewise), and
# REQUEST_DENIED (it would be denied again).
_NEVER_APPLIED = frozenset(
    {FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED}
)
_FAILURES = {
    getattr(FAIL_REASON, name): name.lower().replace("_", " ")
    for name in dir(FAIL_REASON)
    if name.isupper() and name != "SUCCESS"
}


_BASE_ELECTION_TIMEOUT = 0.3  # RaftTimings() is for_election_timeout(this), exactly
_MIN_WRITE_TIMEOUT = 3.0


@dataclass(frozen=True)
class RaftTimings:
    """pysyncobj's timing knobs, in seconds. The defaults are ``for_election_timeout(0.3)``."""

    # Elections 0.3-0.6 s, heartbeats 0.05 s: with 0.15-0.35/0.03 a tick thread starved of the GIL by
    # a busy process missed enough heartbeats for 3 leader changes a minute (docs/watchdog.md).
    raft_min_timeout: float = 0.3
    raft_max_timeout: float = 0.6
    append_entries_period: float = 0.05
    auto_tick_period: float = 0.01
    # A leader that heard from no majority for this long steps down. Above the longest election
    # timeout (a follower starts an election after at most raft_max_timeout of silence), below
    # vip_acquire_delay (the VIP rule, docs/vip.md).
    leader_fallback_timeout: float = 1.0
    # The VIP rule's margin on top of leader_fallback_timeout (a tick or two plus scheduling).
    vip_margin: float = 0.3
    connection_timeout: float = 1.5  # a silent peer connection is dropped after this
    connection_retry: float = 0.5  # reconnect attempts to a lost peer
    write_timeout: float = 3.0  # a write not confirmed by then raises NoQuorumError

    @classmethod
    def for_election_timeout(cls, election_timeout: float) -> RaftTimings:
        """The timings for watchdog_election_timeout ``t``: a follower starts an election after a
        random silence in [t, 2t]. Everything tied to how long a healthy member may go unheard
        scales with t in today's proportions (0.3 gives exactly ``RaftTimings()``), so the
        invariants above hold for every t: heartbeats at t/6, leader fallback at 10t/3 (> 2t, the
        longest election timeout), peer connections dropped after 5t and retried every 5t/3. The
        tick stays 0.01 s (it is only how often pysyncobj looks); the VIP margin and the write
        timeout never go below today's 0.3 s and 3 s (scheduling slack does not shrink with t)."""
        if not math.isfinite(election_timeout) or election_timeout <= 0:
            raise ValueError(
                f"an election timeout must be a positive number of seconds, not {election_timeout!r}"
            )
        base = cls()
        scale = election_timeout / _BASE_ELECTION_TIMEOUT  # exactly 1.0 for the default
        return cls(
            raft_min_timeout=base.raft_min_timeout * scale,
            raft_max_timeout=base.raft_max_timeout * scale,
            append_entries_period=base.append_entries_period * scale,
            auto_tick_period=base.auto_tick_period,
            leader_fallback_timeout=base.leader_fallback_timeout * scale,
            vip_margin=max(base.vip_margin, base.vip_margin * scale),
            connection_timeout=base.connection_timeout * scale,
            connection_retry=base.connection_retry * scale,
            write_timeout=max(_MIN_WRITE_TIMEOUT, base.write_timeout * scale),
        )


class _Machine(SyncObjConsumer):  # type: ignore[misc]
    """The replicated state: one replicated method applies one encoded command."""

    def __init__(self) -> None:
        super().__init__()
        # Attributes set after SyncObjConsumer.__init__ are what the full dump stores.
        self.state = ClusterState()
        self.applied = 0  # commands applied, so a writer can wait until its own one is visible

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, raw: object) -> CommandResult:
        self.applied += 1
        try:
            command = decode_command(raw)
        except CommandError:
            log.error("ignoring a Raft log entry this version does not understand: %r", raw)
            return None
        self.state, result = apply_command(self.state, command)
        return result


class RaftClusterStore(ClusterStore):
    """A member of a real watchdog cluster (pysyncobj). Create it, then ``await nursery.start(store.run)``."""

    def __init__(
        self,
        self_address: str,
        peers: Iterable[str],
        *,
        secret: str,
        data_dir: str | os.PathLike[str],
        lease: float,
        timings: RaftTimings | None = None,
    ) -> None:
        super().__init__(self_address, lease)
        if not secret:
            raise ConsensusError("a watchdog needs a secret (watchdog_secret): without one peers run pickles")
        self.peers = tuple(p for p in peers if p != self_address)
        self.timings = timings or RaftTimings()
        self.data_dir = Path(data_dir)
        self._secret = secret
        self._machine = _Machine()
        self._obj: SyncObj | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._handed: tuple[ClusterState, int] | None = None  # tick thread: last (state, applied) handed over
        self._handed_leader: tuple[str | None, int] | None = None
        self._applied_here = 0  # trio thread: the machine's ``applied`` as of the state adopted
        self._leader: str | None = None  # trio thread: as of the last leader event
        self._term = 0
        self._contact: dict[str, float] = {}  # peer -> trio time a live connection was last seen

    # ---- files

    @property
    def journal_file(self) -> Path:
        return self.data_dir / f"raft-{_file_safe(self.self_id)}.journal"

    @property
    def dump_file(self) -> Path:
        return self.data_dir / f"raft-{_file_safe(self.self_id)}.dump"

    # ---- reads

    @property
    def members(self) -> tuple[str, ...]:
        if self._obj is None:
            return tuple(sorted({self.self_id, *self.peers}))
        return tuple(sorted({self.self_id, *(node.id for node in self._obj.otherNodes)}))

    @property
    def leader_id(self) -> str | None:
        if self._obj is None:
            return None
        leader = self._obj._getLeader()
        return None if leader is None else str(leader.id)

    @property
    def term(self) -> int:
        return 0 if self._obj is None else int(self._obj.raftCurrentTerm)

    @property
    def is_leader(self) -> bool:
        return self._obj is not None and bool(self._obj._isLeader())

    def has_quorum(self) -> bool:
        obj = self._obj
        return obj is not None and obj._getLeader() is not None and bool(obj.hasQuorum)

    @property
    def leader_fallback_timeout(self) -> float:
        return self.timings.leader_fallback_timeout

    @property
    def vip_acquire_delay(self) -> float:
        return self.timings.leader_fallback_timeout + self.timings.vip_margin

    def status(self, now: float) -> WatchdogStatus:
        """This member's view. Of a peer it reports only what this member knows (docs/watchdog.md):
        the leader's role and term (a node that follows a leader is in the very term that leader
        leads in: it adopted that term from the leader's appends, and drops the leader on any newer
        term), when a Raft connection to it was last live, and, on the leader, its match index.
        pysyncobj exposes no other peer's role or term, and a connection alone proves neither (a
        connected peer may be campaigning in a newer term), so those are "unknown" and null."""
        obj = self._obj
        raw = _status_of(obj) if obj is not None else {}
        own_role = _STATE_NAMES.get(int(raw.get("state", -1)), RaftRole.UNKNOWN)
        term = int(raw.get("raft_term", self.term))
        commit_index = int(raw.get("commit_idx", 0))
        if "leader" in raw:  # the same snapshot as the term
            leader = None if raw["leader"] is None else str(raw["leader"].id)
        else:
            leader = self.leader_id
        members = []
        for member in self.members:
            if member == self.self_id:
                members.append(
                    MemberStatus(member, member, own_role, 0.0, term, commit_index, self.holds_vip, True)
                )
                continue
            seen = self._contact.get(member)
            leads = member == leader
            match = raw.get(f"match_idx_server_{member}")
            members.append(
                MemberStatus(
                    id=member,
                    address=member,
                    role=RaftRole.LEADER if leads else RaftRole.UNKNOWN,
                    last_contact_s=None if seen is None else round(max(0.0, now - seen), 3),
                    term=term if leads else None,
                    commit_index=int(match) if match is not None and own_role is RaftRole.LEADER else None,
                    holds_vip=self.state.vip_holder == member,
                    self=False,
                )
            )
        return WatchdogStatus(
            self_id=self.self_id,
            leader=leader,
            term=term,
            commit_index=commit_index,
            quorum=self.has_quorum(),
            lease_valid=self.lease_valid(now),
            members=tuple(members),
            epoch=self.state.epoch,
            primary_id=self.state.primary_id,
        )

    # ---- lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._obj is not None:
            raise ConsensusError(f"watchdog member {self.self_id} is already running")
        self._token = trio.lowlevel.current_trio_token()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        obj = await trio.to_thread.run_sync(self._start_syncobj)
        self._obj = obj
        obj.addOnTickCallback(self._on_tick)
        log.info("watchdog member %s started (peers: %s)", self.self_id, ", ".join(self.peers) or "none")
        try:
            task_status.started()
            while True:
                self._poll(trio.current_time())
                await trio.sleep(_POLL_PERIOD)
        finally:
            obj.removeOnTickCallback(self._on_tick)
            self._token = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(obj.destroy_synchronous)
            self._obj = None
            log.info("watchdog member %s stopped", self.self_id)

    def _conf(self) -> SyncObjConf:
        t = self.timings
        return SyncObjConf(
            password=self._secret,
            bindAddress=self.self_id,
            journalFile=str(self.journal_file),
            fullDumpFile=str(self.dump_file),
            dynamicMembershipChange=True,
            raftMinTimeout=t.raft_min_timeout,
            raftMaxTimeout=t.raft_max_timeout,
            appendEntriesPeriod=t.append_entries_period,
            autoTickPeriod=t.auto_tick_period,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry,
            commandsWaitLeader=False,  # no leader: MISSING_LEADER, which _call resubmits until its deadline
            useFork=False,  # the state is tiny; forking a threaded trio process is not worth it
            bindRetryTime=0.2,
            maxBindRetries=10,
        )

    def _start_syncobj(self) -> SyncObj:
        """In a worker thread: construct (binds the port) and fail clearly if the port is taken."""
        _refuse_foreign_address(self.self_id)
        obj = SyncObj(self.self_id, list(self.peers), self._conf(), consumers=[self._machine])
        # pysyncobj stops ticking when the thread that built it ends; that is a trio worker thread
        # here, which idles out, so tie the tick thread to the main thread instead.
        obj._SyncObj__mainThread = threading.main_thread()
        try:
            obj.waitBinded()
        except SyncObjException as exc:
            obj.destroy_synchronous()
            raise ConsensusError(
                f"watchdog cannot listen on {self.self_id}: the address is not local or the port is taken; "
                "check watchdog_listen_address/watchdog_port and that no other process uses the port"
            ) from exc
        return obj

    # ---- the bridge

    def _on_tick(self) -> None:
        """Tick thread, every tick: hand new states and leaders to trio; nothing else."""
        obj, token, machine = self._obj, self._token, self._machine
        if obj is None or token is None:
            return
        state, applied = machine.state, machine.applied
        handed = self._handed
        if handed is None or handed[0] is not state or handed[1] != applied:
            self._handed = (state, applied)
            self._soon(token, self._adopt, state, applied)
        leader = obj._getLeader()
        current = (None if leader is None else str(leader.id), int(obj.raftCurrentTerm))
        if current != self._handed_leader:
            self._handed_leader = current
            self._soon(token, self._adopt_leader, *current)

    @staticmethod
    def _soon(token: trio.lowlevel.TrioToken, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn, *args)

    def _adopt(self, state: ClusterState, applied: int) -> None:
        self._applied_here = max(self._applied_here, applied)
        if state is not self._state:
            self._set_state(state)
        else:  # a command that changed nothing (a repeated vote): its writer still waits for it
            self._applied.set()
            self._applied = trio.Event()

    def _adopt_leader(self, leader: str | None, term: int) -> None:
        changed = leader != self._leader
        self._leader, self._term = leader, term
        if changed:
            log.info("watchdog leader is now %s (term %d)", leader or "unknown (election)", term)
            self._leader_changed(leader, term)

    def _poll(self, now: float) -> None:
        self.note_quorum(now)
        obj = self._obj
        if obj is None:
            return
        for node in obj.otherNodes:
            if obj.isNodeConnected(node):
                self._contact[str(node.id)] = now

    # ---- writes

    async def _write(self, command: Command) -> CommandResult:
        raw = encode_command(command)
        result = await self._call(lambda callback: self._machine.apply(raw, callback=callback), repr(command))
        return result  # type: ignore[no-any-return]

    async def _call(self, submit: Callable[[Callable[[Any, int], None]], None], what: str) -> Any:
        """Submit a command with a callback; return its result once it is committed and applied here.

        A refusal that leaves the command in no log (``_NEVER_APPLIED``: no leader known during an
        election, ...) is resubmitted until the write timeout, as an operator would; any other
        failure, and a command not confirmed in time (it may still commit), is reported."""
        token = self._token
        if self._obj is None or token is None:
            raise NoQuorumError(f"watchdog member {self.self_id} is not running")
        timeout = self.timings.write_timeout
        deadline = trio.current_time() + timeout
        while True:
            outcome = await self._submit_once(token, submit, deadline)
            if outcome is None:
                raise NoQuorumError(
                    f"watchdog member {self.self_id}: {what} was not confirmed within {timeout:g}s (no leader"
                    " with a majority answered); it may still be applied: check GET /api/v1/watchdog/info on "
                    "a member before retrying, and the other members and the network between them"
                )
            result, error, applied = outcome
            if error == FAIL_REASON.SUCCESS:
                break
            reason = _FAILURES.get(error, str(error))
            if error in _NEVER_APPLIED and trio.current_time() + _RESUBMIT_PAUSE < deadline:
                log.debug("watchdog member %s resubmits %s: %s", self.self_id, what, reason)
                await trio.sleep(_RESUBMIT_PAUSE)
                continue
            if error in _NEVER_APPLIED:
                raise NoQuorumError(
                    f"watchdog member {self.self_id} could not commit {what} within {timeout:g}s: {reason} "
                    "(no leader with a majority is reachable); it was not applied: retry, and check the "
                    "other members (GET /api/v1/watchdog/info) and the network between them"
                )
            raise NoQuorumError(f"watchdog member {self.self_id} could not commit {what}: {reason}; retry")
        with trio.move_on_after(timeout):
            while self._applied_here < applied:
                await self._applied.wait()
        return result

    async def _submit_once(
        self,
        token: trio.lowlevel.TrioToken,
        submit: Callable[[Callable[[Any, int], None]], None],
        deadline: float,
    ) -> tuple[Any, int, int] | None:
        """One submission: its (result, error, applied count), or None if no answer came by ``deadline``."""
        done = trio.Event()
        outcome: list[tuple[Any, int, int]] = []

        def finish(result: Any, error: int, applied: int) -> None:
            outcome.append((result, error, applied))
            done.set()

        def on_result(result: Any, error: int) -> None:  # tick thread
            self._soon(token, finish, result, error, self._machine.applied)

        submit(on_result)
        with trio.move_on_at(deadline):
            await done.wait()
        return outcome[0] if outcome else None

    async def add_member(self, address: str) -> None:
        _check_address(address)
        if address in self.members:
            raise ConsensusError(f"{address} is already a watchdog member")
        obj = self._require_obj()
        # A former member comes back with no votes: clear any its removal could not (remove_member).
        await self._write(ForgetMember(address))
        await self._call(lambda cb: obj.addNodeToCluster(address, callback=cb), f"adding member {address}")
        log.info("watchdog member %s added", address)

    async def remove_member(self, address: str) -> str | None:
        _check_address(address)
        if address not in self.members:
            raise ConsensusError(f"{address} is not a watchdog member (members: {', '.join(self.members)})")
        if address == self.self_id:
            raise ConsensusError(f"{address} is this node: remove it through another member")
        obj = self._require_obj()
        await self._call(
            lambda cb: obj.removeNodeFromCluster(address, callback=cb), f"removing member {address}"
        )
        self._contact.pop(address, None)
        log.info("watchdog member %s removed", address)
        return await self._forget(address)

    async def _forget(self, address: str) -> str | None:
        """Clear a removed member's votes and VIP claim. The removal is committed by now, so failing
        here must not make it look undone: retry for two write timeouts, then report it as a note.
        What is left is harmless: only members' votes count, and add_member clears it first."""
        failure: NoQuorumError | None = None
        with trio.move_on_after(2 * self.timings.write_timeout):
            while True:
                try:
                    await self._write(ForgetMember(address))
                except NoQuorumError as exc:
                    failure = exc
                    await trio.sleep(_FORGET_RETRY)
                else:
                    return None
        note = (
            f"{address} is no longer a member, but its recorded votes could not be cleared yet "
            f"({failure or 'no answer in time'}); they do not count (only members' votes do) and are "
            "cleared if it is added again"
        )
        log.warning("watchdog member removal: %s", note)
        return note

    def _require_obj(self) -> SyncObj:
        if self._obj is None:
            raise NoQuorumError(f"watchdog member {self.self_id} is not running")
        return self._obj


def _status_of(obj: SyncObj) -> dict[str, Any]:
    # getStatus() walks dicts the tick thread may be changing (an election): retry on that race.
    for _ in range(5):
        try:
            return dict(obj.getStatus())
        except RuntimeError:
            continue
    return {}


def _check_address(address: str) -> tuple[str, int]:
    """``host:port`` split (brackets of an IPv6 host removed); ConsensusError if it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConsensusError(f"{address!r} is not host:port, such as 10.0.0.4:9000")
    return host.strip("[]"), int(port)


def _refuse_foreign_address(address: str) -> None:
    """Fail at once when ``address`` is not this machine's: pysyncobj would retry the bind for
    ``maxBindRetries`` (meant for a port still held by a previous process, which is left to it)."""
    host, port = _check_address(address)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise ConsensusError(
            f"watchdog cannot listen on {address}: {exc}; check watchdog_listen_address/watchdog_nodes"
        ) from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConsensusError(
                    f"watchdog cannot listen on {address}: the address is not local; check "
                    "watchdog_listen_address/watchdog_port (the address must be one of this machine's)"
                ) from exc


def _file_safe(member: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in member)
