"""Health probes: a real connection to each backend, one query, turned into a planner ``Probe``.

One probe logs in as health_check_user and reads, in one round trip: pg_is_in_recovery(), the WAL
position (pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() and pg_last_wal_receive_lsn()
on a standby), the timeline, the system identifier, replay lag in seconds, connections against
max_connections, and whom a standby streams from and follows. A failed attempt is retried
health_check_max_retries times, health_check_retry_delay apart, each within health_check_timeout.

A server that answers but cannot be queried (too many connections, authentication, permissions)
is alive, not down: failing over because max_connections was reached would turn an overload into
an outage. Nor is a probe that failed because pgbalancer itself ran out of a resource (file
descriptors, memory): that says nothing about the backend, so it yields no verdict at all (the
backend keeps its state) and is logged as an error naming the limit to raise. This module only
observes; it never decides and never changes a backend.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from pgbalancer.config import Config
from pgbalancer.ha.planner import Probe, ProbeOutcome, ServerFacts
from pgbalancer.health.conninfo import target_of
from pgbalancer.health.pgclient import AdminLogin, Row, admin_session, fetch_rows
from pgbalancer.proxy.backend import BackendAddress, BackendUnavailable, ServerError

log = logging.getLogger(__name__)

# A node's WAL position in bytes: what it has replayed as a standby, what it has written as a primary.
WAL_POSITION_SQL = (
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)"
    " - '0/0'::pg_lsn"
)
# Columns, in order: recovery, WAL position, received position, timeline, system identifier,
# lag seconds, client connections, max_connections, streaming from, primary_conninfo.
PROBE_SQL = f"""\
SELECT pg_is_in_recovery(),
  {WAL_POSITION_SQL},
  pg_last_wal_receive_lsn() - '0/0'::pg_lsn,
  CASE WHEN pg_is_in_recovery()
    THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                  (SELECT timeline_id FROM pg_control_checkpoint()))
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
  (SELECT system_identifier FROM pg_control_system()),
  CASE WHEN NOT pg_is_in_recovery() THEN 0
    WHEN COALESCE(pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(), true) THEN 0
    ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END,
  (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
  current_setting('max_connections')::int,
  (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'),
  (SELECT setting FROM pg_settings WHERE name = 'primary_conninfo')
"""

# SQLSTATE classes/codes that mean "not serving": shutting down, starting up, crashed, no connection.
_NOT_SERVING = ("57P01", "57P02", "57P03", "08")
# Errors of this process, not of the backend: out of file descriptors (own or system-wide), memory, buffers.
_OWN_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


@dataclass(frozen=True)
class ProbeSettings:
    login: AdminLogin
    max_retries: int
    retry_delay: float

    @classmethod
    def from_config(cls, config: Config, login: AdminLogin) -> ProbeSettings:
        return cls(login, config.health_check_max_retries, config.health_check_retry_delay)


class ProbeFailed(Exception):
    """One probe attempt failed; ``alive`` tells whether the server answered at all, ``own_fault``
    that pgbalancer itself lacked a resource to probe it (the backend's state is unknown)."""

    def __init__(self, message: str, *, alive: bool, own_fault: bool = False) -> None:
        super().__init__(message)
        self.alive = alive
        self.own_fault = own_fault


def own_resource_error(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (causes and contexts) saying pgbalancer itself ran out of file
    descriptors or memory, if there is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (
            isinstance(current, OSError) and current.errno in _OWN_RESOURCE_ERRNOS
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _unreachable(address: BackendAddress, message: str, exc: BaseException) -> ProbeFailed:
    own = own_resource_error(exc)
    if own is not None:
        return ProbeFailed(f"{address}: pgbalancer itself: {own}", alive=False, own_fault=True)
    return ProbeFailed(message, alive=False)


async def probe_once(address: BackendAddress, login: AdminLogin) -> ServerFacts:
    """One attempt: connect, run PROBE_SQL, disconnect. ProbeFailed says why it did not work."""
    try:
        with trio.fail_after(login.timeout):
            async with admin_session(address, login) as server:
                rows = await fetch_rows(server, PROBE_SQL)
    except trio.TooSlowError as exc:
        raise ProbeFailed(f"{address}: no answer within {login.timeout:g}s", alive=False) from exc
    except BackendUnavailable as exc:
        raise _unreachable(address, str(exc), exc) from exc
    except (OSError, MemoryError) as exc:
        raise _unreachable(address, f"{address}: {exc}", exc) from exc
    except ServerError as exc:
        serving = not exc.sqlstate.startswith(_NOT_SERVING)
        raise ProbeFailed(f"{address}: {exc.sqlstate} {exc}", alive=serving) from exc
    if not rows:
        raise ProbeFailed(f"{address}: the probe query returned no row", alive=True)
    return parse_probe_row(rows[0])


def parse_probe_row(row: Row) -> ServerFacts:
    """ServerFacts from PROBE_SQL's text columns."""
    recovery, wal, received, timeline, sysid, lag, connections, max_connections, sender, conninfo = row
    return ServerFacts(
        in_recovery=recovery == "t",
        wal_lsn=_int(wal),
        receive_lsn=_int(received),
        timeline=_int(timeline),
        system_identifier=_int(sysid),
        lag_seconds=float(lag) if lag is not None else None,
        connections=_int(connections),
        max_connections=_int(max_connections),
        streaming_from=sender or None,
        following=target_of(conninfo) if conninfo else None,
    )


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    return int(text.split(".", 1)[0])  # pg_lsn differences are numeric; they have no fraction


ProbeAttempt = Callable[[BackendAddress, AdminLogin], Awaitable[ServerFacts]]


async def probe_backend(
    address: BackendAddress, settings: ProbeSettings, attempt_once: ProbeAttempt = probe_once
) -> Probe | None:
    """Probe with retries; DOWN only when every attempt found the server not serving. None (no
    verdict) when pgbalancer itself lacked the resources to probe: never a vote against the backend.
    ``attempt_once``: one attempt (tests count or script them)."""
    attempts = 1 + settings.max_retries
    error = ""
    for attempt in range(attempts):
        try:
            facts = await attempt_once(address, settings.login)
        except ProbeFailed as exc:
            if exc.own_fault:
                log.error(
                    "health check of backend %d NOT counted (the backend was not judged): %s. Raise the "
                    "open-files limit (ulimit -n, LimitNOFILE=) or lower max_client_conn, or free memory",
                    address.node_id,
                    exc,
                )
                return None
            if exc.alive:
                return Probe(address.node_id, trio.current_time(), ProbeOutcome.ALIVE, None, str(exc))
            error = str(exc)
            if attempt + 1 < attempts:
                await trio.sleep(settings.retry_delay)
            continue
        return Probe(address.node_id, trio.current_time(), ProbeOutcome.OK, facts)
    return Probe(address.node_id, trio.current_time(), ProbeOutcome.DOWN, None, error)


ProbeFn = Callable[[BackendAddress], Awaitable[Probe | None]]


async def probe_all(addresses: Iterable[BackendAddress], probe: ProbeFn) -> dict[int, Probe]:
    """Probe every backend concurrently; one slow backend delays the round, never the others' probes.
    A backend whose probe gave no verdict is left out (the planner keeps its state)."""
    results: dict[int, Probe] = {}

    async def one(address: BackendAddress) -> None:
        probe_result = await probe(address)
        if probe_result is not None:
            results[address.node_id] = probe_result

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(one, address)
    return results
