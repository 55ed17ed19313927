"""Node wiring: builds every component from the config and runs them in one trio nursery.

``pgbalancer -f FILE`` runs one node in the foreground; ``--check`` validates a config
and exits. SIGTERM/SIGINT shut down cleanly (clients are told, server connections are
closed politely); SIGHUP reloads the config and applies what can change live.
This module holds wiring only: no protocol and no policy.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import resource
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import trio

from consensus import ConsensusError
from pgbalancer import __version__
from pgbalancer.api.control import ReloadOutcome
from pgbalancer.api.service import ApiService
from pgbalancer.api.settings import ApiSettings, ApiSettingsError, load_api_settings
from pgbalancer.api.snapshots import NodeInfo
from pgbalancer.cache.generations import Generations, buffer_size
from pgbalancer.config import Config, ConfigError, diff_configs, load_config
from pgbalancer.events.service import EventService
from pgbalancer.health.controller import HaController
from pgbalancer.proxy.figures import FiguresPeering
from pgbalancer.proxy.peering import CancelPeering
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.userlist import UserlistError, load_userlist
from pgbalancer.vip.manager import VipManager, manager_for
from pgbalancer.watchdog import WatchdogService, WatchdogSetupError
from pgbalancer.workers import Supervisor, WorkerContext, available_cpus, effective_worker_count

log = logging.getLogger("pgbalancer")

_SHUTDOWN_GRACE = 5.0
_RELOAD_WAIT = 5.0  # how long POST /control/reload waits for a worker's SIGHUP round trip


def load_auth_file(config: Config) -> dict[str, str]:
    return load_userlist(config.auth_file) if config.auth_file else {}


class Node:
    """One pgbalancer node: the proxy today; health, API, MQTT and Raft join as they land."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        userlist: Mapping[str, str],
        worker: WorkerContext | None = None,
        api_settings: ApiSettings | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.api_settings = api_settings if api_settings is not None else load_api_settings(config)
        self.reload_count = 0  # reloads attempted, and what the last one did (POST /control/reload)
        self.last_reload = ReloadOutcome()
        self.worker = worker  # set when this process is one worker of a multi-worker node
        self.peering = _cancel_peering(config, worker)
        self.proxy = ProxyServer(config, userlist, self.peering)
        # With several workers, worker 0 adds every worker's traffic figures up for the API and MQTT.
        self.figures = (
            FiguresPeering(self.proxy)
            if worker is None
            else FiguresPeering(self.proxy, worker.index, worker.count, config.worker_socket_dir)
        )
        # The admin console's RELOAD and SHUTDOWN are SIGHUP and SIGTERM to the node (a worker's supervisor).
        node_pid = os.getpid() if worker is None else os.getppid()
        reload_node = partial(os.kill, node_pid, signal.SIGHUP)
        self.proxy.reload_callback = self.reload if worker is None else reload_node
        self.proxy.shutdown_callback = partial(os.kill, node_pid, signal.SIGTERM)
        # Health checks and failover: with several workers only worker 0 acts; the others observe.
        self.ha = HaController(config, self.proxy, executes=worker is None or worker.index == 0)
        self.proxy.ha = self.ha
        # One MQTT broker per node: with several workers, worker 0 runs it (docs/events.md).
        self.events = EventService.for_node(
            config, self.proxy, None if worker is None else worker.index, self.figures
        )
        # The watchdog (Raft) member, when watchdog_nodes is set; a watchdog node runs one worker.
        self.watchdog = WatchdogService.for_node(config, self.proxy, self.ha, self.events)
        # The floating virtual IP (delegate_ip): held while this node is the committed Raft leader.
        self.vip: VipManager | None = None
        if self.watchdog is not None:
            self.vip = manager_for(config, self.watchdog.store)
            if self.vip is not None and self.events is not None:
                member = self.watchdog.store.self_id
                self.vip.listeners.append(partial(publish_vip, self.events, self.vip, member))
        elif config.delegate_ip:
            log.warning(
                "delegate_ip = %s is set but watchdog_nodes is empty: the VIP follows the Raft leader, so "
                "no node will take it; set watchdog_nodes (and watchdog_secret) on every node",
                config.delegate_ip,
            )
        cache = self.proxy.cache
        if cache is not None:
            if self.events is not None:
                cache.on_invalidated = self.events.publish_cache_invalidation
            if self.watchdog is not None:  # invalidations go through Raft, with a hit barrier
                cache.attach_cluster(self.watchdog.store)
            elif worker is not None and worker.shared_memory is not None:  # across the workers
                cache.share_with_workers(
                    Generations(memoryview(worker.shared_memory), worker.count, worker.index)
                )
        self.api = self._api_service(config, worker)
        if self.api is not None:  # /api/v1/nodes/{id}/attach|detach|promote|recovery act through it
            self.api.state.operations = self.ha
            if self.events is not None:  # /metrics exports the MQTT queue's and broker's counters
                self.api.state.event_statistics = self.events.statistics
            if self.watchdog is not None:
                self.api.state.watchdog = self.watchdog
                self.api.state.quorum = self.watchdog.has_quorum

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                if self.peering is not None:  # first: a live peer socket means the port is taken
                    await nursery.start(self.peering.serve, self.proxy.cancel_here)
                    await nursery.start(self.figures.serve)
                if self.api is not None:  # before the proxy: once the proxy accepts, the API answers
                    await nursery.start(self.api.serve)
                if self.events is not None:  # before the proxy: a taken MQTT port fails the start
                    await nursery.start(self.events.run)
                if self.watchdog is not None:  # before health rounds: they vote through it
                    await nursery.start(self.watchdog.run)
                    if self.proxy.cache is not None:
                        await nursery.start(self.proxy.cache.run)
                if self.vip is not None:  # after the watchdog: it follows the Raft leadership
                    await nursery.start(self.vip.run)
                await nursery.start(self.ha.run)
                if self.proxy.cache is not None:  # memqcache_prefetch: idle unless switched on
                    await nursery.start(self.proxy.cache.run_prefetch, self.proxy)
                await nursery.start(self.proxy.serve)
                self._announce_ready()
                log.info("pgbalancer %s ready (pid %d)", __version__, os.getpid())
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        self.reload()
                        continue
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    await self._shutdown(nursery)
                    return

    def _api_service(self, config: Config, worker: WorkerContext | None) -> ApiService | None:
        """The REST API, unless api_port = 0; with several workers only worker 0 serves it."""
        if not config.api_port or (worker is not None and worker.index != 0):
            return None
        node = NodeInfo(
            f"{socket.gethostname()}:{config.port}",
            worker.index if worker is not None else 0,
            worker.count if worker is not None else 1,
        )
        return ApiService(config, self.api_settings, self.proxy, node, _ApiControl(self), self.figures)

    async def _shutdown(self, nursery: trio.Nursery) -> None:
        if self.api is not None:
            self.api.request_shutdown()
        self.proxy.request_shutdown()
        with trio.move_on_after(_SHUTDOWN_GRACE):
            while self.proxy.sessions:
                await trio.sleep(0.01)
        if self.vip is not None:  # while the watchdog still runs, so the holder can be recorded
            await self.vip.release_now()
        nursery.cancel_scope.cancel()
        self.proxy.pools.close_all_idle()
        if self.worker is None:  # a worker's supervisor owns the pid file
            _remove_pid_file(self.config.pid_file)

    def _announce_ready(self) -> None:
        if self.worker is None:
            _write_pid_file(self.config.pid_file)
        else:
            self.worker.report_ready()

    def reload(self) -> None:
        """Re-read the config; apply live keys, log the ones that need a restart (SIGHUP, RELOAD)."""
        self.last_reload = self._reload()
        self.reload_count += 1

    def _reload(self) -> ReloadOutcome:
        try:
            new_config = load_config(self.config_path)
            userlist = load_auth_file(new_config)
            api_settings = load_api_settings(new_config, self.api_settings)
        except (ConfigError, UserlistError, ApiSettingsError) as exc:
            log.error("reload failed, keeping the running config:\n%s", exc)
            return ReloadOutcome(error=str(exc))
        diff = diff_configs(self.config, new_config)
        self.proxy.apply_config(new_config, userlist)
        self.ha.apply_config(new_config)
        if self.watchdog is not None:
            self.watchdog.apply_config(new_config)
        self.config = new_config
        if self.events is not None:
            self.events.config_reloaded(diff, new_config)
        self.api_settings = api_settings
        if self.api is not None:
            self.api.apply_settings(new_config, api_settings)
        log.info(
            "config reloaded: changed=%s applied_live=%s restart_required=%s",
            list(diff.changed),
            list(diff.applied_live),
            list(diff.restart_required),
        )
        return ReloadOutcome.from_diff(diff)


class _ApiControl:
    """What POST /api/v1/control/reload does: the same reload as SIGHUP, and what it changed."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def reload(self) -> ReloadOutcome:
        node, before = self.node, self.node.reload_count
        if node.proxy.reload_callback is not None:
            node.proxy.reload_callback()  # a worker's reload comes back as SIGHUP from its supervisor
        with trio.move_on_after(_RELOAD_WAIT):
            while node.reload_count == before:
                await trio.sleep(0.05)
        if node.reload_count == before:
            return ReloadOutcome(error=f"no reload happened within {_RELOAD_WAIT:g}s; see the node's log")
        return node.last_reload


def publish_vip(events: EventService, vip: VipManager, member_id: str, holds: bool) -> None:
    """pgbalancer/watchdog/vip from the node whose hold changed (holder: its Raft member id, or None)."""
    events.publish_watchdog_vip(member_id if holds else None, vip.address, vip.interface)


def _cancel_peering(config: Config, worker: WorkerContext | None) -> CancelPeering | None:
    if worker is None:
        return None
    return CancelPeering(worker.index, worker.count, config.worker_socket_dir, config.port)


def _write_pid_file(path: str) -> None:
    if path:
        Path(path).write_text(f"{os.getpid()}\n")


def _remove_pid_file(path: str) -> None:
    if path:
        Path(path).unlink(missing_ok=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pgbalancer", description="PostgreSQL pooler and load balancer node"
    )
    parser.add_argument("-f", "--config-file", required=True, type=Path, help="path to pgbalancer.conf")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--version", action="version", version=f"pgbalancer {__version__}")
    return parser.parse_args(argv)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one and return the soft limit now in force.

    Every client and server connection is a file descriptor. The soft limit of 1,024 that a PAM
    login (runuser, su) or a systemd service gets by default caps a node at about 1,000 clients,
    while the hard limit is usually far higher. Forked workers inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit above the kernel's nr_open
        log.warning("could not raise the open-files soft limit from %d to %d: %s", soft, hard, exc)
        return soft
    log.info("raised the open-files soft limit from %d to %d (the hard limit)", soft, hard)
    return hard


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = load_config(args.config_file)
        userlist = load_auth_file(config)
        api_settings = load_api_settings(config)
    except (ConfigError, UserlistError, ApiSettingsError) as exc:
        print(f"pgbalancer: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config_file}: configuration is valid ({len(config.backends)} backends)")
        return 0
    _setup_logging(str(config.log_level))
    raise_open_files_limit()
    worker_count = effective_worker_count(config.workers, available_cpus())
    if config.watchdog_nodes and worker_count > 1:
        # One Raft member per node: its votes, leases and committed epoch live in one process.
        log.info("watchdog_nodes is set: running one worker process instead of %d", worker_count)
        worker_count = 1
    if worker_count > 1:
        run_worker = partial(_run_node, args.config_file, config, userlist, api_settings)
        shared, lost = _cache_shared_memory(config, worker_count)
        supervisor = Supervisor(
            worker_count, run_worker, pid_file=config.pid_file, shared_memory=shared, on_worker_lost=lost
        )
        return supervisor.run()
    return _run_node(args.config_file, config, userlist, api_settings)


def _cache_shared_memory(config: Config, worker_count: int) -> tuple[mmap.mmap | None, partial[None] | None]:
    """The result cache's invalidation generations, mapped once before the workers are forked
    (anonymous and MAP_SHARED: every worker, restarted ones too, sees the same pages), and what
    the supervisor does when a worker dies: invalidate everything in that worker's column (a
    write it had committed may not have been invalidated yet). Nothing when the cache is off."""
    if not config.memory_cache_enabled:
        return None, None
    share = config.memqcache_total_size // worker_count
    if share < config.memqcache_maxcache:  # workers = 0: the config check could not know the count
        log.warning(
            "each of the %d workers caches within memqcache_total_size / workers (%d bytes), less than "
            "memqcache_maxcache (%d bytes): larger results are not cached; raise memqcache_total_size",
            worker_count,
            share,
            config.memqcache_maxcache,
        )
    shared = mmap.mmap(-1, buffer_size(worker_count))
    return shared, partial(_invalidate_for_lost_worker, shared, worker_count)


def _invalidate_for_lost_worker(shared: mmap.mmap, worker_count: int, index: int) -> None:
    Generations(memoryview(shared), worker_count, index).bump(None)


def _run_node(
    config_path: Path,
    config: Config,
    userlist: Mapping[str, str],
    api_settings: ApiSettings,
    worker: WorkerContext | None = None,
) -> int:
    try:
        node = Node(config_path, config, userlist, worker, api_settings)
    except WatchdogSetupError as exc:
        sys.stderr.write(f"pgbalancer: cannot start the watchdog: {exc}\n")
        return 2
    try:
        trio.run(node.run)
    except (OSError, ConsensusError, ExceptionGroup) as exc:
        watchdog_errors = _consensus_errors(exc)
        if watchdog_errors:  # the Raft endpoint could not start (its address is not local, port taken)
            sys.stderr.write(f"pgbalancer: cannot start the watchdog: {watchdog_errors[0]}\n")
            return 1
        startup_errors = _only_os_errors(exc)
        if not startup_errors:
            raise
        reasons = "; ".join(map(str, startup_errors))
        # One write, so the lines of workers failing together do not interleave.
        sys.stderr.write(f"pgbalancer: cannot start (port {config.port}): {reasons}\n")
        return 1
    return 0


def _consensus_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, ConsensusError):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return []
    matched, _ = exc.split(ConsensusError)
    return [] if matched is None else _flatten(matched)


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for inner in group.exceptions:
        leaves.extend(_flatten(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return leaves


def _only_os_errors(exc: BaseException) -> list[OSError]:
    """The OSErrors (bind failures and the like) that ``exc`` consists of; [] if anything else is in it."""
    if isinstance(exc, OSError):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return []
    leaves = [_only_os_errors(inner) for inner in exc.exceptions]
    return [error for errors in leaves for error in errors] if all(leaves) else []


if __name__ == "__main__":
    raise SystemExit(main())
