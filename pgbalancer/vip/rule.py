"""The VIP ownership rule, pure: (what this node knows of its leadership, now) -> acquire/release/announce.

DESIGN §4 invariant 3, at most one VIP holder, holds because of two timing facts:

* A node that is not the committed Raft leader, or that has lost contact with the majority, releases
  the VIP at the first look after the change (the shell looks every ``poll_interval``).
* pysyncobj's leader steps down at the latest ``leaderFallbackTimeout`` after it last heard from a
  majority. A new leader can only be elected after the old one lost that majority, so when the new
  leader waits ``acquire_delay > leaderFallbackTimeout + poll_interval`` (plus a margin for the
  release command itself and network delays) from the moment it first sees its leadership
  committed, the old leader has stepped down and released before the new one acquires, even when
  the old one is cut off and cannot be told.

A change of term while holding counts as losing leadership: release, then wait the full delay again.
On start the node may still carry the VIP from an earlier run (a crash), so the first step releases.

Acquiring is followed by ``announce_count`` gratuitous ARPs ``announce_interval`` apart (clients and
switches learn the new MAC at once instead of after their ARP cache times out), then one every
``refresh_period`` for as long as the node holds the VIP.

It must never: read a clock (``now`` is passed in, any monotonic seconds), perform I/O, or acquire
before the full delay has passed since leadership was first seen.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class VipAction(enum.StrEnum):
    ACQUIRE = "acquire"  # if_up_cmd: add the VIP to the interface
    RELEASE = "release"  # if_down_cmd: remove it
    ANNOUNCE = "announce"  # arping_cmd: one gratuitous ARP


@dataclass(frozen=True, slots=True)
class VipTiming:
    """Seconds. ``acquire_delay`` must exceed leaderFallbackTimeout plus the shell's poll interval."""

    acquire_delay: float
    announce_count: int = 3
    announce_interval: float = 0.5
    refresh_period: float = 10.0  # 0 = no periodic announcements after the first ones
    retry_delay: float = 1.0  # after a failed command

    def __post_init__(self) -> None:
        if self.acquire_delay < 0 or self.announce_interval <= 0 or self.retry_delay <= 0:
            raise ValueError(f"invalid VIP timing {self}")
        if self.announce_count < 1 or self.refresh_period < 0:
            raise ValueError(f"invalid VIP timing {self}")


@dataclass(frozen=True, slots=True)
class Leadership:
    """What the consensus layer says about this node at one look."""

    leader: bool  # this node is the Raft leader and its leadership is committed
    term: int | None
    quorum: bool  # in contact with a majority (the lease is valid)

    @property
    def eligible(self) -> bool:
        return self.leader and self.quorum


FOLLOWER = Leadership(leader=False, term=None, quorum=False)


@dataclass(frozen=True, slots=True)
class VipState:
    """What the rule remembers between looks. ``holding`` is true from the ACQUIRE it orders."""

    holding: bool = False
    uncertain: bool = True  # the VIP may be on the interface without our knowing: release first
    term: int | None = None  # the leadership term being waited out or held
    since: float | None = None  # when that leadership was first seen (eligible)
    announced: int = 0  # gratuitous ARPs sent since acquiring
    next_announce_at: float | None = None
    retry_at: float | None = None  # no command before this, after a failure


@dataclass(frozen=True, slots=True)
class VipDecision:
    state: VipState
    actions: tuple[VipAction, ...]


def decide(state: VipState, seen: Leadership, now: float, timing: VipTiming) -> VipDecision:
    """One look: the new state and the commands to run, in order (stop at the first that fails)."""
    lost = not seen.eligible or (state.term is not None and seen.term != state.term)
    if lost and state.since is not None:
        state = replace(state, term=None, since=None)
    if state.holding and lost:
        # Released at once, whatever retry_at says: a release is never held back.
        return VipDecision(_released(state), (VipAction.RELEASE,))
    waiting = state.retry_at is not None and now < state.retry_at
    if state.uncertain:
        if waiting:
            return VipDecision(state, ())
        return VipDecision(replace(_released(state), uncertain=False, retry_at=None), (VipAction.RELEASE,))
    if not seen.eligible:
        return VipDecision(state, ())
    since = now if state.since is None else state.since
    state = replace(state, term=seen.term, since=since)
    if not state.holding:
        if waiting or now < since + timing.acquire_delay:
            return VipDecision(state, ())
        acquired = replace(state, holding=True, announced=0, next_announce_at=now, retry_at=None)
        return _announce_if_due(acquired, now, timing, (VipAction.ACQUIRE,))
    return _announce_if_due(state, now, timing, ())


def completed(state: VipState, action: VipAction, ok: bool, now: float, timing: VipTiming) -> VipState:
    """Fold a command's outcome back in. A failed acquire or release leaves the interface unknown."""
    if ok:
        return state
    if action is VipAction.ANNOUNCE:
        return state  # the next scheduled announcement tries again
    # The command may have half-happened: treat the VIP as possibly present and release (after a pause).
    return replace(_released(state), uncertain=True, retry_at=now + timing.retry_delay)


def next_wakeup(state: VipState, timing: VipTiming) -> float | None:
    """The earliest time a look could order something without any change of leadership."""
    if state.holding:
        return state.next_announce_at
    if state.uncertain:
        return state.retry_at
    if state.since is None:
        return None
    acquire_at = state.since + timing.acquire_delay
    return acquire_at if state.retry_at is None else max(acquire_at, state.retry_at)


def _released(state: VipState) -> VipState:
    return replace(state, holding=False, announced=0, next_announce_at=None)


def _announce_if_due(
    state: VipState, now: float, timing: VipTiming, actions: tuple[VipAction, ...]
) -> VipDecision:
    due = state.next_announce_at
    if due is None or now < due:
        return VipDecision(state, actions)
    announced = state.announced + 1
    nxt: float | None = now + timing.announce_interval
    if announced >= timing.announce_count:
        nxt = now + timing.refresh_period if timing.refresh_period > 0 else None
    new_state = replace(state, announced=announced, next_announce_at=nxt)
    return VipDecision(new_state, (*actions, VipAction.ANNOUNCE))
