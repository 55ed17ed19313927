"""/readyz's backend reachability probe (trio shell): a TCP connect to every backend that is up.

``/readyz`` answers without credentials, so anyone who can reach the API port may call it at any
rate. :class:`ReadinessProbe` runs at most one probe round at a time, and reuses a round's answer
for ``ttl`` seconds (while the cluster view's up backends are the same): callers arriving meanwhile
share it, so each backend sees at most one probe connection per ``ttl`` however often /readyz is
called.

It must never: run two probe rounds at once; keep a probe connection open; send anything on it.
"""

from __future__ import annotations

import math
from typing import Final

import trio

from pgbalancer.ha.view import ClusterView
from pgbalancer.proxy.netio import connect_tcp

READY_TTL: Final = 1.0  # seconds a probe round's answer is reused
_PROBE_TIMEOUT: Final = 1.0  # one TCP connect

_Targets = tuple[tuple[int, str, int], ...]


class ReadinessProbe:
    """Which up backends accept a TCP connection, probed at most once per ``ttl``."""

    def __init__(self, ttl: float = READY_TTL, timeout: float = _PROBE_TIMEOUT) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.rounds = 0  # probe rounds run so far
        self._lock = trio.Lock()  # fair: waiting callers take the round that ran before them
        self._targets: _Targets | None = None
        self._probed_at = -math.inf
        self._reachable: list[int] = []

    async def reachable(self, view: ClusterView) -> list[int]:
        """The ids of ``view``'s up backends that accepted a connection in the latest round."""
        targets = tuple((state.node_id, state.host, state.port) for state in view if state.is_up)
        async with self._lock:
            fresh = trio.current_time() - self._probed_at < self.ttl
            if not (fresh and targets == self._targets):
                self._reachable = await _probe(targets, self.timeout)
                self._targets, self._probed_at = targets, trio.current_time()
                self.rounds += 1
            return list(self._reachable)


async def _probe(targets: _Targets, timeout: float) -> list[int]:
    """Connect to every target concurrently (each within ``timeout``), close at once."""
    reachable: list[int] = []

    async def probe(node_id: int, host: str, port: int) -> None:
        try:
            sock = await connect_tcp(host, port, timeout)
        except OSError:
            return
        sock.close()
        reachable.append(node_id)

    with trio.move_on_after(timeout + 0.5):
        async with trio.open_nursery() as nursery:
            for node_id, host, port in targets:
                nursery.start_soon(probe, node_id, host, port)
    return sorted(reachable)
