"""The pool's retirement rule for server connections (no sockets: a stand-in connection)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pgbalancer.proxy.pool import PoolLimits, is_retired


@dataclass
class StandInServer:
    created_at: float
    last_used: float
    sessions_served: int


LIMITS = PoolLimits(max_size=5, idle_timeout=300, max_sessions_per_server=10, max_age=3600, wait_timeout=1)


@pytest.mark.parametrize(
    ("server", "now", "retired"),
    [
        (StandInServer(created_at=0, last_used=0, sessions_served=0), 10, False),
        (StandInServer(created_at=0, last_used=0, sessions_served=10), 10, True),  # child_max_connections
        (StandInServer(created_at=0, last_used=3500, sessions_served=1), 3600, True),  # connection_life_time
        (StandInServer(created_at=0, last_used=100, sessions_served=1), 400, True),  # child_life_time idle
        (StandInServer(created_at=0, last_used=100, sessions_served=1), 399, False),
    ],
)
def test_retirement(server: StandInServer, now: float, retired: bool) -> None:
    assert is_retired(server, LIMITS, now) is retired  # type: ignore[arg-type]


def test_zero_means_unlimited() -> None:
    unlimited = PoolLimits(max_size=1, idle_timeout=0, max_sessions_per_server=0, max_age=0, wait_timeout=1)
    old = StandInServer(created_at=0, last_used=0, sessions_served=10**6)
    assert not is_retired(old, unlimited, 10**9)  # type: ignore[arg-type]
