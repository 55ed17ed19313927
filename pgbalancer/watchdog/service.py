"""WatchdogService: one node's seat in the watchdog cluster (a thin trio shell over a ClusterStore).

Role: wires the replicated store (``consensus``) to the rest of the node:

* failover (``HaCoordinator`` for ``pgbalancer.health.HaController``): each health round casts this
  node's down/up votes; the planner confirms a backend down only with a majority of votes; only the
  Raft leader promotes and re-points; every view is settled here before the proxy adopts it: the
  leader commits it (compare-and-set on the epoch), every other node takes the committed primary
  and epoch (``decide.align_view``), also between rounds when a new state is applied;
* leases: ``partition_gate`` refuses writes (and reads under partition_read_policy = refuse) once
  the node has been cut off from the majority for longer than watchdog_lease;
* status and control for the REST API (``info``, ``add_member``, ``remove_member``), readiness
  (``has_quorum``);
* cluster events every node publishes to its own broker, so a subscriber on any node's broker sees
  them, with ids derived from the Raft state so the copies from different nodes can be
  de-duplicated: the retained ``pgbalancer/watchdog/leader`` on every leader change
  (``leader:<term>``), and the retained ``pgbalancer/watchdog/vip`` when the committed VIP holder
  changes (``vip:<holder>:<term>``), and ``pgbalancer/cluster/config`` (source ``raft``) when the
  committed ``config_version`` rises (``config:<version>``); a reload that changed keys on any
  node commits the next version (``config_changed``);
* a hook for the VIP executor: ``store`` (``is_leader``, ``vip_acquire_delay``, ``holds_vip``,
  ``set_vip_holder``) and ``add_leader_listener``.

Its decisions are the pure functions in ``pgbalancer.watchdog.decide``. It must never import
pysyncobj, block the trio thread, or log the watchdog secret.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import trio

from consensus import ClusterState, ClusterStore, ConsensusError, LeaderChange, NoQuorumError
from consensus.raft import RaftClusterStore, RaftTimings
from pgbalancer.config import Config, PartitionReadPolicy, watchdog_self_address
from pgbalancer.ha.planner import HaOperationError, Probe
from pgbalancer.ha.view import ClusterView
from pgbalancer.health.controller import HaController
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.watchdog.decide import (
    align_view,
    backend_records,
    needs_commit,
    partition_refusal,
    primary_system_identifier,
    votes_to_cast,
)

log = logging.getLogger(__name__)


class LeaderEvents(Protocol):
    """Where committed cluster events are published (pgbalancer.events.EventService)."""

    def publish_watchdog_leader(self, leader: str | None, term: int | None) -> bool: ...

    def publish_watchdog_vip(
        self, holder: str | None, vip: str, interface: str, *, event_id: str | None = None
    ) -> bool: ...

    def publish_config_version(self, version: int) -> bool: ...


class WatchdogSetupError(Exception):
    """The watchdog cannot start with this config; the message names the key to fix."""


def resolve_self_address(config: Config) -> str:
    """This node's member id: from the config, else the watchdog_nodes entry whose host is local."""
    configured = watchdog_self_address(config)
    if configured:
        return configured
    own = [p for p in config.watchdog_nodes if p.rsplit(":", 1)[1] == str(config.watchdog_port)]
    local = [p for p in own if _is_local_host(p.rsplit(":", 1)[0].strip("[]"))]
    if len(local) == 1:
        return local[0]
    raise WatchdogSetupError(
        f"cannot tell which watchdog_nodes entry is this node: {len(local)} of "
        f"{', '.join(own)} have a local address; set watchdog_listen_address to this node's own address"
    )


def _is_local_host(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, address in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address[0], 0))
            except OSError:
                continue
            return True
    return False


class WatchdogService:
    """The watchdog of one node. ``store`` may be any ClusterStore (tests pass the in-memory fake)."""

    def __init__(
        self,
        config: Config,
        proxy: ProxyServer,
        store: ClusterStore,
        ha: HaController,
        events: LeaderEvents | None = None,
    ) -> None:
        self.config = config
        self.proxy = proxy
        self.store = store
        self.ha = ha
        self.events = events
        self._unsubscribe: list[Callable[[], None]] = []
        self._vip_holder_published: str | None = None  # the committed holder last published
        self._config_version_published = 0
        self._nursery: trio.Nursery | None = None
        ha.coordinator = self
        proxy.partition_gate = self.partition_gate

    @classmethod
    def for_node(
        cls, config: Config, proxy: ProxyServer, ha: HaController, events: LeaderEvents | None
    ) -> WatchdogService | None:
        """The node's watchdog on pysyncobj, or None when watchdog_nodes is empty."""
        if not config.watchdog_nodes:
            return None
        self_address = resolve_self_address(config)
        store = RaftClusterStore(
            self_address,
            _others(config, self_address),
            secret=config.watchdog_secret,
            data_dir=Path(config.watchdog_data_dir),
            lease=config.watchdog_lease,
            timings=RaftTimings.for_election_timeout(config.watchdog_election_timeout),
        )
        return cls(config, proxy, store, ha, events)

    def apply_config(self, config: Config) -> None:
        """A reload: partition_read_policy and failover_require_consensus apply live."""
        self.config = config

    def config_changed(self) -> None:
        """A reload changed keys here: commit the next config_version (in the background; never blocks)."""
        if self._nursery is not None:
            self._nursery.start_soon(self._commit_config_version)

    async def _commit_config_version(self) -> None:
        version = self.store.state.config_version + 1
        try:
            await self.store.set_config_version(version)
        except ConsensusError as exc:
            log.warning(
                "could not commit config_version %d to the watchdog cluster (%s); the other nodes will not "
                "announce this reload: reload again once the watchdog has a leader",
                version,
                exc,
            )

    # ---- lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._unsubscribe = [
            self.store.add_leader_listener(self._on_leader),
            self.store.add_state_listener(self._on_state),
        ]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.store.run)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for unsubscribe in self._unsubscribe:
                unsubscribe()

    def _on_leader(self, change: LeaderChange) -> None:
        if self.events is not None:
            self.events.publish_watchdog_leader(change.leader, change.term)
        if change.is_self:
            self.ha.request_probe()  # the new leader looks at the backends at once

    def _on_state(self, state: ClusterState) -> None:
        view = self.proxy.cluster_view
        aligned = align_view(view, state)
        if aligned != view:
            self.ha.adopt(aligned, f"watchdog: committed epoch {state.epoch}, primary {state.primary_id}")
        if self.store.is_leader:
            self.ha.request_probe()  # new votes may confirm a failure: decide now, not a period later
        self._publish_committed(state)

    def _publish_committed(self, state: ClusterState) -> None:
        """Every node publishes what the cluster committed, under the same event id."""
        events = self.events
        if events is None:
            return
        if self.config.delegate_ip and state.vip_holder != self._vip_holder_published:
            self._vip_holder_published = state.vip_holder
            holder, config = state.vip_holder, self.config
            event_id = f"vip:{holder or 'none'}:{self.store.term}"
            events.publish_watchdog_vip(
                holder, config.delegate_ip, config.delegate_ip_interface, event_id=event_id
            )
        if state.config_version > self._config_version_published:
            self._config_version_published = state.config_version
            events.publish_config_version(state.config_version)

    # ---- HaCoordinator

    def may_execute(self) -> bool:
        return self.store.is_leader and self.store.has_quorum()

    def not_leader_reason(self) -> str:
        leader = self.store.leader_id
        where = (
            f"send it to the leader's node ({leader})" if leader else "no leader is elected right now; retry"
        )
        me = self.store.self_id
        return f"only the watchdog leader changes backends, and this node ({me}) is not it: {where}"

    def vote_counts(self) -> tuple[Mapping[int, int] | None, int]:
        if not self.config.failover_require_consensus:
            return None, 1
        votes = {backend.node_id: self.store.down_votes(backend.node_id) for backend in self.config.backends}
        return votes, self.store.quorum_size()

    def system_identifier(self) -> int | None:
        return self.store.state.system_identifier

    async def cast_votes(self, probes: Mapping[int, Probe]) -> None:
        sysid = primary_system_identifier(self.proxy.cluster_view, probes)
        if sysid is not None and self.store.state.system_identifier is None:
            try:
                await self.store.record_system_identifier(sysid)
            except NoQuorumError as exc:
                log.warning("could not record the primary's system identifier: %s", exc)
        for backend_id, down in votes_to_cast(probes, self.store.state, self.store.self_id):
            try:
                await self.store.vote(backend_id, down)
            except NoQuorumError as exc:
                log.warning("could not vote backend %d %s: %s", backend_id, "down" if down else "up", exc)
                return
            log.info("voted backend %d %s", backend_id, "down" if down else "up")

    async def settle(self, view: ClusterView) -> ClusterView:
        state = self.store.state
        if self.may_execute() and needs_commit(view, state):
            try:
                accepted = await self.store.commit_view(
                    state.epoch, view.epoch, view.primary_id, backend_records(view)
                )
            except NoQuorumError as exc:
                log.warning("could not commit the cluster view (epoch %d): %s", view.epoch, exc)
            else:
                if not accepted:
                    log.warning("cluster view of epoch %d refused: the committed state moved on", view.epoch)
        return align_view(view, self.store.state)

    # ---- proxy gate

    def partition_gate(self, write: bool) -> str | None:
        return partition_refusal(
            write=write,
            lease_valid=self.store.lease_valid(trio.current_time()),
            refuse_reads=self.config.partition_read_policy is PartitionReadPolicy.REFUSE,
            self_id=self.store.self_id,
            leader=self.store.leader_id,
        )

    # ---- status and control (REST API)

    def has_quorum(self) -> bool:
        return self.store.has_quorum()

    def info(self) -> dict[str, object]:
        """GET /api/v1/watchdog/info."""
        body = self.store.status(trio.current_time()).as_json()
        body["vip"] = {
            "address": self.config.delegate_ip or None,
            "interface": self.config.delegate_ip_interface or None,
            "holder": self.store.state.vip_holder,
        }
        return body

    async def add_member(self, address: str) -> dict[str, object]:
        try:
            await self.store.add_member(address)
        except NoQuorumError as exc:
            raise HaOperationError(str(exc), "unavailable") from exc
        except ConsensusError as exc:
            raise HaOperationError(str(exc), "conflict") from exc
        return {"added": address, "members": list(self.store.members)}

    async def remove_member(self, address: str) -> dict[str, object]:
        try:
            note = await self.store.remove_member(address)
        except NoQuorumError as exc:
            raise HaOperationError(str(exc), "unavailable") from exc
        except ConsensusError as exc:
            kind = "not_found" if "not a watchdog member" in str(exc) else "conflict"
            raise HaOperationError(str(exc), kind) from exc
        body: dict[str, object] = {"removed": address, "members": list(self.store.members)}
        if note is not None:  # removed all the same: the note says what is left over
            body["notes"] = [note]
        return body


def _others(config: Config, self_address: str) -> tuple[str, ...]:
    return tuple(peer for peer in config.watchdog_nodes if peer != self_address)
