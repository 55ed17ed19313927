"""Holds the VIP while this node is the committed Raft leader (trio shell around pgbalancer.vip.rule).

Every ``poll_interval`` (and at once when ``wake`` is called, as on a leader-change event) it reads
this node's leadership from the consensus layer, asks the pure rule what to do, and has the
executor do it. Gratuitous ARPs run in the background, so a slow arping never delays a release.
Leaving ``run`` (shutdown, cancellation, a crash of the node) releases the VIP; a SIGKILL is
covered by the executor's guard process.

It must never: decide anything itself (the rule does), hold a lock across a command, or import
pysyncobj (leadership arrives as a callable returning :class:`~pgbalancer.vip.rule.Leadership`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from consensus import ClusterStore, ConsensusError
from pgbalancer.config import Config
from pgbalancer.vip.commands import VipCommands
from pgbalancer.vip.executor import VipExecutor
from pgbalancer.vip.rule import Leadership, VipAction, VipState, VipTiming, completed, decide, next_wakeup

log = logging.getLogger("pgbalancer.vip")

DEFAULT_POLL_INTERVAL = 0.05
_RELEASE_ON_EXIT_TIMEOUT = 5.0
_HOLDER_WRITE_TIMEOUT = 2.0
# Beyond leaderFallbackTimeout + one poll: the old leader's release command and network delays.
ACQUIRE_MARGIN = 0.1


def vip_commands(config: Config) -> VipCommands:
    return VipCommands.from_templates(
        config.delegate_ip,
        config.delegate_ip_interface,
        config.if_up_cmd,
        config.if_down_cmd,
        config.arping_cmd,
    )


def vip_timing(config: Config, leader_fallback_timeout: float, acquire_delay: float = 0.0) -> VipTiming:
    """The rule's timing: the acquire delay is never shorter than the fallback + a poll + a margin."""
    floor = leader_fallback_timeout + DEFAULT_POLL_INTERVAL + ACQUIRE_MARGIN
    return VipTiming(
        acquire_delay=max(acquire_delay, floor),
        announce_count=config.delegate_ip_arp_count,
        announce_interval=config.delegate_ip_arp_interval,
        refresh_period=config.delegate_ip_arp_refresh,
    )


def leadership_of(store: ClusterStore) -> Callable[[], Leadership]:
    """This member's leadership as the rule wants it, read from the consensus store at each look."""

    def read() -> Leadership:
        return Leadership(leader=store.is_leader, term=store.term, quorum=store.has_quorum())

    return read


def manager_for(config: Config, store: ClusterStore) -> VipManager | None:
    """The node's VIP manager (None without delegate_ip); keeps ``store.holds_vip`` and
    the replicated holder up to date."""
    if not config.delegate_ip:
        return None
    timing = vip_timing(config, store.leader_fallback_timeout, store.vip_acquire_delay)
    manager = VipManager(VipExecutor(vip_commands(config)), timing, leadership_of(store))
    manager.store = store
    store.add_leader_listener(lambda _change: manager.wake())
    return manager


class VipManager:
    """One node's side of the floating VIP. ``holds`` feeds watchdog status; ``listeners`` hear changes."""

    def __init__(
        self,
        executor: VipExecutor,
        timing: VipTiming,
        leadership: Callable[[], Leadership],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.executor = executor
        self.timing = timing
        self.leadership = leadership
        self.poll_interval = poll_interval
        self.state = VipState()
        self.listeners: list[Callable[[bool], None]] = []  # called with the new holds value
        self.store: ClusterStore | None = None  # told who holds the VIP, when there is one
        self.acquisitions = 0
        self.releases = 0
        self._wake = trio.Event()
        self._announcing: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def address(self) -> str:
        return self.executor.commands.ip

    @property
    def interface(self) -> str:
        return self.executor.commands.interface

    @property
    def holds(self) -> bool:
        return self.state.holding

    def wake(self) -> None:
        """Look again now (a leader-change event); safe to call from trio code at any time."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.step(nursery)  # releases a VIP left over from an earlier run first
                task_status.started()
                while True:
                    await self._sleep()
                    await self.step(nursery)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_RELEASE_ON_EXIT_TIMEOUT):
                await self.release_now()

    async def step(self, nursery: trio.Nursery) -> None:
        """One look: decide, then run the commands in order, stopping at the first failure."""
        now = trio.current_time()
        decision = decide(self.state, self.leadership(), now, self.timing)
        before, self.state = self.state.holding, decision.state
        for action in decision.actions:
            if action is VipAction.ANNOUNCE:
                nursery.start_soon(self._announce)
                continue
            if action is VipAction.RELEASE:
                self._stop_announcing()
            ok = await (self.executor.acquire() if action is VipAction.ACQUIRE else self.executor.release())
            self.state = completed(self.state, action, ok, trio.current_time(), self.timing)
            if not ok:
                log.error("could not %s the virtual IP %s on %s", action.value, self.address, self.interface)
                break
        self._changed(before)

    async def release_now(self) -> None:
        """Drop the VIP (node shutdown); the rule starts over as if freshly started."""
        self._stop_announcing()
        before = self.state.holding
        if before or self.executor.guarded:
            await self.executor.release()
        self.state = VipState()
        self._changed(before)
        store = self.store
        if before and store is not None and store.has_quorum():
            # Only a clean shutdown says "nobody": after a step-down the new leader records itself,
            # and a late "nobody" from the old one could land after that.
            with trio.move_on_after(_HOLDER_WRITE_TIMEOUT):
                await self._record_holder(None)

    def _changed(self, before: bool) -> None:
        after = self.state.holding
        if after == before:
            return
        if after:
            self.acquisitions += 1
            log.info("acquired the virtual IP %s on %s", self.address, self.interface)
        else:
            self.releases += 1
            log.info("released the virtual IP %s on %s", self.address, self.interface)
        if self.store is not None:
            self.store.holds_vip = after
            if after and self._nursery is not None:
                self._nursery.start_soon(self._record_holder, self.store.self_id)
        for listener in list(self.listeners):
            listener(after)

    async def _record_holder(self, holder: str | None) -> None:
        """Best effort: the replicated holder is for status only; the rule never reads it."""
        assert self.store is not None
        with trio.move_on_after(_HOLDER_WRITE_TIMEOUT):
            try:
                await self.store.set_vip_holder(holder)
            except ConsensusError as exc:
                log.warning("could not record the VIP holder in the watchdog cluster: %s", exc)

    async def _announce(self) -> None:
        with trio.CancelScope() as scope:
            self._announcing.add(scope)
            try:
                if not await self.executor.announce():
                    log.warning("gratuitous ARP for %s on %s failed", self.address, self.interface)
            finally:
                self._announcing.discard(scope)

    def _stop_announcing(self) -> None:
        for scope in self._announcing:
            scope.cancel()

    async def _sleep(self) -> None:
        deadline = trio.current_time() + self.poll_interval
        due = next_wakeup(self.state, self.timing)
        if due is not None:
            deadline = min(deadline, due)
        with trio.move_on_at(deadline):
            await self._wake.wait()
        self._wake = trio.Event()
