"""probe_backend's retries: how many attempts, how far apart, and when one success is enough."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from pgbalancer.devtools import free_tcp_port
from pgbalancer.ha.planner import ProbeOutcome, ServerFacts
from pgbalancer.health.checker import ProbeFailed, ProbeSettings, probe_backend, probe_once
from pgbalancer.health.pgclient import AdminLogin
from pgbalancer.proxy.backend import BackendAddress

LOGIN = AdminLogin("postgres", "postgres", timeout=3.0)


async def test_a_closed_port_is_down_after_every_attempt_spaced_by_the_retry_delay() -> None:
    address = BackendAddress(1, "127.0.0.1", free_tcp_port())  # nothing listens there
    settings = ProbeSettings(LOGIN, max_retries=3, retry_delay=0.05)
    attempts: list[float] = []

    async def counted(target: BackendAddress, login: AdminLogin) -> ServerFacts:
        attempts.append(trio.current_time())
        return await probe_once(target, login)

    started = trio.current_time()
    probe = await probe_backend(address, settings, counted)

    assert probe is not None and probe.outcome is ProbeOutcome.DOWN
    assert len(attempts) == 1 + settings.max_retries
    assert probe.at - started >= settings.max_retries * settings.retry_delay
    assert all(later - earlier >= settings.retry_delay for earlier, later in itertools.pairwise(attempts))
    assert f"127.0.0.1:{address.port}" in probe.error


async def test_a_second_attempt_that_succeeds_makes_the_probe_ok(
    autojump_clock: trio.testing.MockClock,
) -> None:
    del autojump_clock  # the retry delay passes in virtual time
    facts = ServerFacts(in_recovery=True, wal_lsn=42)
    attempts: list[float] = []

    async def refused_once(target: BackendAddress, login: AdminLogin) -> ServerFacts:
        del login
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            raise ProbeFailed(f"{target}: connection refused", alive=False)
        return facts

    probe = await probe_backend(
        BackendAddress(1, "db1", 5432), ProbeSettings(LOGIN, max_retries=3, retry_delay=2.0), refused_once
    )

    assert probe is not None and probe.outcome is ProbeOutcome.OK and probe.facts == facts
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 2.0


async def test_a_server_that_answers_but_refuses_the_query_is_alive_without_retrying() -> None:
    attempts = 0

    async def too_many_connections(target: BackendAddress, login: AdminLogin) -> ServerFacts:
        nonlocal attempts
        del login
        attempts += 1
        raise ProbeFailed(f"{target}: 53300 too many connections", alive=True)

    probe = await probe_backend(
        BackendAddress(0, "db0", 5432),
        ProbeSettings(LOGIN, max_retries=3, retry_delay=0.0),
        too_many_connections,
    )
    assert probe is not None and probe.outcome is ProbeOutcome.ALIVE and attempts == 1
