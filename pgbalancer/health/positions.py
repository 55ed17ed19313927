"""WAL positions between health rounds: how far each backend has got, every ``sr_check_period``.

Read-your-writes sends a session's reads to a standby only once that standby has replayed past the
session's last commit (the commit's LSN, which the relay learns from a query pipelined after the
commit). Health rounds read positions every ``health_check_period`` (5 s by default); this loop
reads them every ``sr_check_period`` (0.5 s) over one kept admin connection per backend, so a
session's reads return to the standbys about that long after it writes, and the lag that
``delay_threshold`` compares stays fresh.

It only reads positions. It never marks a backend up or down: a failed read closes that connection
and the next pass opens a new one, while the health checker decides what the failure means. It
publishes no events: the view it refreshes is replaced quietly (``ProxyServer.refresh_positions``),
and only if no failover changed the cluster while it read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from pgbalancer.config import Config
from pgbalancer.health.checker import WAL_POSITION_SQL
from pgbalancer.health.pgclient import AdminLogin, fetch_value, open_admin_session
from pgbalancer.proxy.backend import BackendAddress, BackendUnavailable, ServerConnection, ServerError
from pgbalancer.proxy.netio import PeerClosed

if TYPE_CHECKING:
    from pgbalancer.proxy.server import ProxyServer

log = logging.getLogger(__name__)

POSITION_SQL = f"SELECT {WAL_POSITION_SQL}"
_IDLE_RECHECK = 5.0  # seconds between looks at the setting while sr_check_period = 0


class PositionPoller:
    """Reads every up backend's WAL position each ``sr_check_period`` for one worker's view."""

    def __init__(
        self, proxy: ProxyServer, config: Callable[[], Config], login: Callable[[], AdminLogin]
    ) -> None:
        self.proxy = proxy
        self._config = config
        self._login = login
        self._sessions: dict[BackendAddress, ServerConnection] = {}
        self.passes = 0  # completed passes (for tests and /metrics-style introspection)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                period = self._config().sr_check_period
                if period <= 0:
                    self._close_all()
                    await trio.sleep(_IDLE_RECHECK)
                    continue
                await self.poll_once()
                await trio.sleep(period)
        finally:
            self._close_all()

    async def poll_once(self) -> None:
        """One pass: read every up backend at once, then refresh the view if the cluster held still."""
        view = self.proxy.cluster_view
        targets = [BackendAddress(b.node_id, b.host, b.port) for b in view.backends if b.is_up]
        positions: dict[int, int] = {}
        with trio.move_on_after(self._config().health_check_timeout):
            async with trio.open_nursery() as nursery:
                for address in targets:
                    nursery.start_soon(self._read, address, positions)
        for address in set(self._sessions) - set(targets):
            self._sessions.pop(address).close()  # detached, down or reconfigured: not read any more
        self.proxy.refresh_positions(view.epoch, view.primary_id, positions)
        self.passes += 1

    async def _read(self, address: BackendAddress, positions: dict[int, int]) -> None:
        server = self._sessions.get(address)
        try:
            if server is None:
                server = self._sessions[address] = await open_admin_session(address, self._login())
            value = await fetch_value(server, POSITION_SQL)
        except (BackendUnavailable, ServerError, PeerClosed, OSError) as exc:
            log.debug("reading the WAL position of backend %d failed: %s", address.node_id, exc)
            self._drop(address)
            return
        except trio.Cancelled:
            self._drop(address)  # timed out mid-exchange: the connection is not between messages
            raise
        if value is not None and value.isdigit():
            positions[address.node_id] = int(value)

    def _drop(self, address: BackendAddress) -> None:
        server = self._sessions.pop(address, None)
        if server is not None:
            server.close()

    def _close_all(self) -> None:
        for server in self._sessions.values():
            server.close()
        self._sessions.clear()
