"""HaController: health rounds, failover execution and the operations API of one node.

Every round probes all backends concurrently, folds the results into the proxy's cluster view with
the pure planner, and carries out what the planner asks (promote, re-point standbys, hooks). Rounds
run every health_check_period seconds, at once when a client session reports a connection error
(``suspect_backend``), and every quarter second while no primary is up. One decision lock
serialises rounds and operator operations, so a switchover and a failover never interleave.

With several workers only worker 0 executes (``executes=True``); the others run the same rounds in
observe-only mode and adopt what they see: the primary is the up node not in recovery with the
highest timeline, so a restarted old primary on its old timeline is never taken for it.

The operations (``attach``, ``detach``, ``promote``, ``switchover``, ``rejoin``) return an
``OperationResult`` or raise ``HaOperationError`` with a message that says what to do instead;
a refused operation changes nothing. This class holds no policy of its own: it asks the planner.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import trio

from pgbalancer.config import Config
from pgbalancer.ha.planner import (
    BackendFailed,
    FollowPrimary,
    HaOperationError,
    HaPolicy,
    Observations,
    Plan,
    Probe,
    Promote,
    ServerFacts,
    after_promotion,
    caught_up,
    plan_attach,
    plan_detach,
    plan_manual_promote,
    plan_rejoin,
    plan_round,
    plan_suspicion,
    plan_switchover,
)
from pgbalancer.ha.view import ClusterView
from pgbalancer.health.actions import ActionExecutor, ActionFailed, NodeInfo
from pgbalancer.health.checker import ProbeFailed, ProbeSettings, probe_all, probe_backend, probe_once
from pgbalancer.health.pgclient import AdminLogin
from pgbalancer.health.positions import PositionPoller
from pgbalancer.proxy.backend import BackendAddress
from pgbalancer.proxy.server import ProxyServer

log = logging.getLogger(__name__)

NO_PRIMARY_PERIOD = 0.25  # round cadence while no primary is up: notice a promotion or a return fast
_MIN_ROUND_GAP = 0.02  # between two rounds, however many suspicions arrive
SWITCHOVER_DRAIN = 2.0  # seconds transactions in flight on the old primary may still finish
SWITCHOVER_CATCH_UP = 30.0
REJOIN_STREAMING_WAIT = 120.0


class HaCoordinator(Protocol):
    """The watchdog's side of failover (pgbalancer.watchdog.WatchdogService), when one is configured.

    Votes go through it, only its leader executes, and every view is settled through it before the
    proxy adopts it: the leader commits, the others take the committed primary and epoch.
    """

    def may_execute(self) -> bool: ...

    def vote_counts(self) -> tuple[Mapping[int, int] | None, int]: ...

    async def cast_votes(self, probes: Mapping[int, Probe]) -> None: ...

    async def settle(self, view: ClusterView) -> ClusterView: ...

    def not_leader_reason(self) -> str: ...

    def system_identifier(self) -> int | None:
        """The primary's system identifier as any watchdog member saw it (None: nobody yet)."""
        ...


@dataclass(frozen=True)
class OperationResult:
    """What an operation did."""

    operation: str
    node_id: int
    primary_id: int | None
    epoch: int
    notes: tuple[str, ...] = ()
    details: Mapping[str, object] = field(default_factory=dict)


def policy_from_config(config: Config, *, executes: bool) -> HaPolicy:
    return HaPolicy(
        executes=executes,
        auto_failback=config.auto_failback,
        confirm_suspicions=config.failover_on_backend_error,
        delay_threshold_bytes=config.delay_threshold,
        delay_threshold_seconds=config.delay_threshold_by_time,
    )


class HaController:
    """Health checking and failover for one node (one worker process)."""

    def __init__(self, config: Config, proxy: ProxyServer, *, executes: bool = True) -> None:
        self.config = config
        self.proxy = proxy
        self.executes = executes
        self.executor = ActionExecutor(lambda: self.config, self.login)
        self.rounds = 0
        self._lock = trio.Lock()
        self._suspects: set[int] = set()
        self._wake = trio.Event()
        self._round_done = trio.Event()
        self._completed_round_started_at = -1.0
        self._published_primary: int | None = proxy.cluster_view.primary_id
        self._last_facts: dict[int, ServerFacts] = {}
        self.last_probes: dict[int, Probe] = {}
        self._busy_nodes: set[int] = set()
        self._writes_open: trio.Event | None = None  # set while a switchover holds new transactions
        self._nursery: trio.Nursery | None = None
        self.coordinator: HaCoordinator | None = None  # the watchdog, when watchdog_nodes is set

    # ---- settings

    def login(self) -> AdminLogin:
        return AdminLogin.from_config(self.config, self.proxy.tls.server)

    def policy(self) -> HaPolicy:
        return policy_from_config(self.config, executes=self.acts)

    @property
    def acts(self) -> bool:
        """Whether this node promotes and re-points now: worker 0, and the watchdog leader if any."""
        return self.executes and (self.coordinator is None or self.coordinator.may_execute())

    def apply_config(self, config: Config) -> None:
        self.config = config
        self._wake.set()  # a new period or new probe settings take effect now

    def nodes(self) -> dict[int, NodeInfo]:
        return {backend.node_id: NodeInfo.from_config(backend) for backend in self.config.backends}

    # ---- the round loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(PositionPoller(self.proxy, lambda: self.config, self.login).run)
            task_status.started()
            while True:
                started = trio.current_time()
                await self._cycle()
                self._completed_round_started_at = started
                self.rounds += 1
                self._round_done.set()
                self._round_done = trio.Event()
                # Without a primary every client asks for a round: let them share one per quarter second.
                await trio.sleep(_MIN_ROUND_GAP if self.proxy.cluster_view.primary else NO_PRIMARY_PERIOD)
                with trio.move_on_after(self._interval()):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _interval(self) -> float:
        period = self.config.health_check_period
        return period if self.proxy.cluster_view.primary is not None else min(period, NO_PRIMARY_PERIOD)

    async def _cycle(self) -> None:
        suspects, self._suspects = self._suspects, set()
        if suspects:
            async with self._lock:
                await self._carry_out(
                    plan_suspicion(self.proxy.cluster_view, suspects, self.policy()), "suspicion"
                )
        epoch = self.proxy.cluster_view.epoch
        probes = await self._probe_everything()
        async with self._lock:
            await self._fold(probes, epoch)
        if self.proxy.cluster_view.epoch != epoch:
            self._wake.set()  # those probes were ignored as stale: look at the new cluster at once

    async def _probe_everything(self) -> dict[int, Probe]:
        settings = ProbeSettings.from_config(self.config, self.login())

        async def probe(address: BackendAddress) -> Probe | None:
            return await probe_backend(address, settings)

        return await probe_all((node.address for node in self.nodes().values()), probe)

    async def _fold(self, probes: Mapping[int, Probe], epoch: int | None = None) -> Plan:
        """Apply one round of probes begun in ``epoch`` (caller holds the lock)."""
        if self.coordinator is not None and (epoch is None or epoch == self.proxy.cluster_view.epoch):
            await self.coordinator.cast_votes(probes)
        observations = self._observations(probes, epoch)
        plan = plan_round(self.proxy.cluster_view, observations, trio.current_time(), self.policy())
        await self._carry_out(plan, "health check")
        return plan

    def _observations(self, probes: Mapping[int, Probe], epoch: int | None) -> Observations:
        if epoch is None or epoch == self.proxy.cluster_view.epoch:
            for node_id, probe in probes.items():
                self.last_probes[node_id] = probe
                if probe.facts is not None:
                    self._last_facts[node_id] = probe.facts
        down_votes, quorum = (None, 1) if self.coordinator is None else self.coordinator.vote_counts()
        return Observations(
            probes=dict(probes),
            last_facts=self._facts_with_cluster_id(),
            down_votes=down_votes,
            quorum=quorum,
            epoch=epoch,
        )

    def _facts_with_cluster_id(self) -> dict[int, ServerFacts]:
        """Last facts, plus the primary's system identifier from the watchdog if this node never saw
        the primary answer (so a leader cut off from the primary can still check the standbys)."""
        facts = dict(self._last_facts)
        primary = self.proxy.cluster_view.primary_id
        known = self.coordinator.system_identifier() if self.coordinator is not None else None
        if primary is not None and primary not in facts and known is not None:
            facts[primary] = ServerFacts(in_recovery=False, system_identifier=known)
        return facts

    # ---- carrying out plans

    async def _carry_out(self, plan: Plan, reason: str) -> None:
        view = plan.view if self.coordinator is None else await self.coordinator.settle(plan.view)
        self._publish(view, plan.notes, reason)
        for action in plan.actions:
            if isinstance(action, Promote):
                await self._promote(action)
            elif isinstance(action, FollowPrimary):
                await self._follow(action)
            elif isinstance(action, BackendFailed) and self._nursery is not None:
                self._nursery.start_soon(self._notify_failed, action)  # a slow hook must not hold rounds
            # Reprobe needs nothing here: a suspicion is always followed by a round at once.

    def _publish(self, view: ClusterView, notes: tuple[str, ...], reason: str) -> None:
        for note in notes:
            log.log(logging.WARNING if _is_bad_news(note) else logging.INFO, "%s", note)
        if view == self.proxy.cluster_view:
            return
        # Listeners (events, metrics) tell routine refreshes ("health check") from changes by the notes.
        self.proxy.update_cluster_view(
            view, "; ".join(notes) or reason, {"notes": list(notes), "epoch": view.epoch}
        )
        if view.primary_id != self._published_primary:  # wake clients waiting out a failover
            self._published_primary = view.primary_id
            self._round_done.set()
            self._round_done = trio.Event()

    async def _promote(self, action: Promote) -> bool:
        nodes = self.nodes()
        old = nodes.get(action.old_primary_id) if action.old_primary_id is not None else None
        try:
            how = await self.executor.promote(nodes[action.node_id], old)
        except ActionFailed as exc:
            log.error("failover to backend %d failed: %s", action.node_id, exc)
            return False
        plan = after_promotion(self.proxy.cluster_view, action)
        await self._carry_out(plan, f"backend {action.node_id} promoted with {how}")
        return True

    async def _follow(self, action: FollowPrimary) -> None:
        nodes = self.nodes()
        old = nodes.get(action.old_primary_id) if action.old_primary_id is not None else None
        try:
            how = await self.executor.follow(nodes[action.node_id], nodes[action.primary_id], old)
        except ActionFailed as exc:
            log.error("%s", exc)
            return
        log.info("backend %d now follows backend %d (%s)", action.node_id, action.primary_id, how)

    async def _notify_failed(self, action: BackendFailed) -> None:
        nodes = self.nodes()
        primary = nodes.get(action.primary_id) if action.primary_id is not None else None
        try:
            await self.executor.notify_failed(nodes[action.node_id], primary)
        except ActionFailed as exc:
            log.error("%s", exc)

    # ---- hooks for the proxy (ProxyServer.ha)

    def suspect_backend(self, node_id: int | None, reason: str = "") -> None:
        """A session saw a connection-level error on ``node_id``: re-probe at once (never blocks)."""
        if not self.config.failover_on_backend_error:
            return
        if node_id is not None:
            if node_id not in self._suspects:
                log.info("backend %d suspected: %s", node_id, reason or "connection error")
            self._suspects.add(node_id)
        self._wake.set()

    def request_probe(self) -> None:
        """Run a round soon (no primary is up and a client asked for one)."""
        self._wake.set()

    async def wait_for_primary(self, failed_node_id: int | None, deadline: float) -> bool:
        """Wait until another node is the primary, or a round begun after this call has decided.

        True when a primary is up afterwards, so the caller may retry; False when retrying is pointless.
        Observe-only workers keep looking until ``deadline``: worker 0 may still be promoting.
        """
        if not self.config.failover_on_backend_error:
            return False
        with trio.move_on_at(deadline):
            while True:
                asked_at = trio.current_time()
                self.suspect_backend(failed_node_id, "a client could not reach the primary")
                while self._completed_round_started_at < asked_at and not self._moved_from(failed_node_id):
                    await self._round_done.wait()
                if self.proxy.cluster_view.primary is not None:
                    return True
                if self.acts:
                    return False
                failed_node_id = None
        return self.proxy.cluster_view.primary is not None

    def _moved_from(self, node_id: int | None) -> bool:
        primary = self.proxy.cluster_view.primary
        return primary is not None and primary.node_id != node_id

    async def wait_round_started_after(self, moment: float) -> None:
        while self._completed_round_started_at < moment:
            await self._round_done.wait()

    # ---- operations

    def _require_executor(self) -> None:
        if not self.executes:
            raise HaOperationError(
                "this worker only observes the backends; operations run in worker 0 (the REST API's worker)",
                "unavailable",
            )
        if self.coordinator is not None and not self.coordinator.may_execute():
            raise HaOperationError(self.coordinator.not_leader_reason(), "unavailable")

    def adopt(self, view: ClusterView, reason: str) -> None:
        """Adopt a view decided elsewhere (the watchdog's committed epoch) between rounds."""
        self._publish(view, (), reason)

    def _result(
        self, operation: str, node_id: int, notes: tuple[str, ...], **details: object
    ) -> OperationResult:
        view = self.proxy.cluster_view
        return OperationResult(operation, node_id, view.primary_id, view.epoch, notes, details)

    async def _fresh_round(self) -> Observations:
        """Probe now and fold it in (caller holds the lock): operations start from what is true now."""
        probes = await self._probe_everything()
        await self._fold(probes)
        return Observations(probes=probes, last_facts=dict(self._last_facts))

    async def attach(self, node_id: int) -> OperationResult:
        """Put a detached or down standby (or the primary itself) back in service."""
        self._require_executor()
        async with self._lock:
            self._check_known(node_id)
            observations = await self._fresh_round()
            plan = plan_attach(self.proxy.cluster_view, observations, node_id)
            await self._carry_out(plan, f"backend {node_id} attached")
            return self._result("attach", node_id, plan.notes)

    async def detach(self, node_id: int) -> OperationResult:
        """Take a standby out of service until it is attached again."""
        self._require_executor()
        async with self._lock:
            plan = plan_detach(self.proxy.cluster_view, node_id)
            await self._carry_out(plan, f"backend {node_id} detached")
            self.proxy.fence_backend(node_id, f"backend {node_id} was detached by an operator")
            return self._result("detach", node_id, plan.notes)

    async def promote(self, node_id: int) -> OperationResult:
        """Make a standby the primary: a switchover when the primary is up, a manual failover when not."""
        self._require_executor()
        async with self._lock:
            self._check_known(node_id)
            observations = await self._fresh_round()
            if self.proxy.cluster_view.primary is None:
                return await self._manual_promote(node_id, observations)
            result = await self._switchover_locked(node_id, observations, "promote")
        return await self._rejoin_old_primary(result)

    async def _manual_promote(self, node_id: int, observations: Observations) -> OperationResult:
        plan = plan_manual_promote(self.proxy.cluster_view, observations, node_id)
        action = next(a for a in plan.actions if isinstance(a, Promote))
        self._publish(plan.view, plan.notes, "operator promote")
        if not await self._promote(action):
            raise HaOperationError(f"backend {node_id} could not be promoted; see the log", "unavailable")
        return self._result("promote", node_id, plan.notes)

    async def switchover(self, node_id: int) -> OperationResult:
        """Planned switchover to standby ``node_id`` without losing an acknowledged commit.

        The old primary is rejoined as a standby when its backend_data_directoryN is set; otherwise
        it stays fenced (and read-only) until ``rejoin``.
        """
        self._require_executor()
        async with self._lock:
            self._check_known(node_id)
            observations = await self._fresh_round()
            result = await self._switchover_locked(node_id, observations, "switchover")
        return await self._rejoin_old_primary(result)

    async def _switchover_locked(
        self, node_id: int, observations: Observations, name: str
    ) -> OperationResult:
        plan = plan_switchover(self.proxy.cluster_view, observations, node_id)
        nodes = self.nodes()
        old, new = nodes[plan.old_primary_id], nodes[node_id]
        try:
            await self.executor.checkpoint(old)
        except ActionFailed as exc:
            raise HaOperationError(
                f"switchover to backend {node_id} refused, nothing changed: {exc}"
            ) from exc
        log.info("switchover to backend %d: new transactions wait", node_id)
        self._writes_open = trio.Event()
        try:
            await self._drain(old.node_id)
            self.proxy.fence_backend(old.node_id, f"switchover: backend {old.node_id} stops taking writes")
            target = await self.executor.freeze_primary(old)
            await self._wait_caught_up(new, target)
            how = await self.executor.promote(new, old)
        except (ActionFailed, HaOperationError) as exc:
            await self._abort_switchover(old)
            raise HaOperationError(f"switchover to backend {node_id} failed, nothing changed: {exc}") from exc
        else:
            promoted = after_promotion(self.proxy.cluster_view, Promote(node_id, old.node_id, name))
            await self._carry_out(promoted, f"switchover: backend {node_id} promoted with {how}")
        finally:
            self._open_writes()
        notes = (f"backend {node_id} caught up to {target} and was promoted", *promoted.notes)
        return self._result(name, node_id, notes, old_primary_id=old.node_id, caught_up_lsn=target)

    async def _abort_switchover(self, old: NodeInfo) -> None:
        try:
            await self.executor.thaw_primary(old)
        except ActionFailed as exc:
            log.error("%s", exc)

    def _open_writes(self) -> None:
        gate, self._writes_open = self._writes_open, None
        if gate is not None:
            gate.set()

    @property
    def holding_writes(self) -> bool:
        """True while a switchover holds new transactions back (ProxyServer.acquire_primary waits)."""
        return self._writes_open is not None

    async def wait_writes_open(self, deadline: float) -> None:
        gate = self._writes_open
        if gate is not None:
            with trio.move_on_at(deadline):
                await gate.wait()

    async def _drain(self, node_id: int) -> None:
        """Let transactions in flight on the old primary finish (new ones already wait)."""
        with trio.move_on_after(SWITCHOVER_DRAIN):
            while any(
                s.server is not None and s.server.address.node_id == node_id
                for s in self.proxy.sessions.values()
            ):
                await trio.sleep(0.01)

    async def _wait_caught_up(self, node: NodeInfo, target: int) -> None:
        with trio.move_on_after(SWITCHOVER_CATCH_UP):
            while True:
                try:
                    facts = await probe_once(node.address, self.login())
                except ProbeFailed as exc:
                    raise HaOperationError(f"backend {node.node_id} stopped answering: {exc}") from exc
                if caught_up(facts, target):
                    return
                await trio.sleep(0.02)
        raise HaOperationError(f"backend {node.node_id} did not catch up within {SWITCHOVER_CATCH_UP:g}s")

    async def _rejoin_old_primary(self, result: OperationResult) -> OperationResult:
        old_primary = result.details.get("old_primary_id")
        if not isinstance(old_primary, int):
            return result
        if not self.nodes()[old_primary].data_directory:
            note = f"the old primary (backend {old_primary}) stays fenced and read-only until it is rejoined"
            return replace(result, notes=(*result.notes, note))
        try:
            rejoined = await self.rejoin(old_primary)
        except HaOperationError as exc:
            note = f"the old primary (backend {old_primary}) stays fenced: {exc.message}"
            return replace(result, notes=(*result.notes, note))
        return replace(result, notes=(*result.notes, *rejoined.notes))

    async def rejoin(self, node_id: int) -> OperationResult:
        """Rebuild a failed or fenced node as a standby of the primary (pg_rewind, else pg_basebackup)."""
        self._require_executor()
        if node_id in self._busy_nodes:
            raise HaOperationError(f"backend {node_id} is already being rejoined")
        async with self._lock:
            self._check_known(node_id)
            await self._fresh_round()
            primary_state = plan_rejoin(self.proxy.cluster_view, node_id)
        nodes = self.nodes()
        self._busy_nodes.add(node_id)
        try:
            method = await self.executor.rejoin(nodes[node_id], nodes[primary_state.node_id])
            await self._wait_streaming(nodes[node_id])
        except ActionFailed as exc:
            raise HaOperationError(f"rejoin of backend {node_id} failed: {exc}", "unavailable") from exc
        finally:
            self._busy_nodes.discard(node_id)
        async with self._lock:
            observations = await self._fresh_round()
            notes = [
                f"backend {node_id} rejoined as a standby of backend {primary_state.node_id} with {method}"
            ]
            state = self.proxy.cluster_view.backend(node_id)
            if not state.is_up or state.detached:
                plan = plan_attach(self.proxy.cluster_view, observations, node_id)
                await self._carry_out(plan, f"backend {node_id} rejoined")
            return self._result("rejoin", node_id, tuple(notes), method=method)

    async def _wait_streaming(self, node: NodeInfo) -> None:
        with trio.move_on_after(REJOIN_STREAMING_WAIT):
            while True:
                try:
                    facts = await probe_once(node.address, self.login())
                except ProbeFailed:
                    facts = None
                if facts is not None and facts.in_recovery and facts.streaming_from is not None:
                    return
                await trio.sleep(0.1)
        raise ActionFailed(
            f"backend {node.node_id} runs as a standby but does not stream after {REJOIN_STREAMING_WAIT:g}s; "
            f"see its log"
        )

    def _check_known(self, node_id: int) -> None:
        if not self.proxy.cluster_view.has(node_id):
            known = ", ".join(str(s.node_id) for s in self.proxy.cluster_view) or "none"
            raise HaOperationError(f"there is no backend {node_id} (configured: {known})", "not_found")


def _is_bad_news(note: str) -> bool:
    return any(word in note for word in (" down", "fenced", "another cluster", "ambiguous", "no writes"))
