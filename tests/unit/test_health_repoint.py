"""Re-pointing a standby checks its PostgreSQL version first: before 13 a reload does not apply
primary_conninfo, so pgbalancer refuses with an error naming the version and changes nothing.

The standby is a fake server session (a PgSocket answering simple queries from a script).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from pgbalancer.config import Config
from pgbalancer.health.actions import ActionExecutor, ActionFailed, NodeInfo, repoint_refusal
from pgbalancer.health.pgclient import AdminLogin
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.framing import Message
from pgbalancer.proxy.backend import ServerConnection
from tests.unit.scripted_peer import ScriptedPeer, data_row


class ScriptedServer(ScriptedPeer):
    """A standby: each simple query gets the row ``answers`` has for the first key it contains."""

    def __init__(self, answers: dict[str, tuple[str, ...]]) -> None:
        super().__init__()
        self.answers = answers
        self.queries: list[str] = []

    def respond(self, message: Message) -> None:
        if message.type != b"Q":
            return
        sql = message.body[:-1].decode()
        self.queries.append(sql)
        row = next((values for key, values in self.answers.items() if key in sql), None)
        if row is not None:
            self.pending += data_row(*(value.encode() for value in row))
        self.pending += pgmsg.encode_message(b"C", b"OK\0") + pgmsg.ready_for_query(b"I")


def no_config() -> Config:
    raise AssertionError("re-pointing without hooks must not need more config")


class FakeSessions(ActionExecutor):
    def __init__(self, servers: dict[int, ScriptedServer]) -> None:
        super().__init__(no_config, lambda: AdminLogin("postgres", "postgres", timeout=3.0))
        self.servers = servers

    @asynccontextmanager
    async def _fake(self, node: NodeInfo) -> AsyncIterator[ServerConnection]:
        yield ServerConnection(self.servers[node.node_id], node.address, "postgres", "postgres", 0.0)

    def _session(self, node: NodeInfo) -> AbstractAsyncContextManager[ServerConnection]:
        return self._fake(node)


STANDBY = NodeInfo(2, "10.0.0.2", 5432)
PRIMARY = NodeInfo(1, "10.0.0.1", 5432)


def standby_on(version: str) -> ScriptedServer:
    return ScriptedServer(
        {
            "server_version_num": (version,),
            "current_setting('primary_conninfo')": ("host=10.0.0.0 port=5432 user=replicator", ""),
        }
    )


async def test_a_standby_older_than_13_is_refused_with_its_version_and_left_unchanged() -> None:
    standby = standby_on("120017")
    with pytest.raises(ActionFailed) as excinfo:
        await FakeSessions({2: standby}).repoint(STANDBY, PRIMARY)
    message = str(excinfo.value)
    assert "backend 2 runs PostgreSQL 12 (server_version_num 120017)" in message
    assert "PostgreSQL 13" in message and "follow_primary_command" in message
    assert standby.queries == ["SHOW server_version_num"]  # no ALTER SYSTEM, no reload


async def test_a_standby_on_13_or_later_is_re_pointed_and_reloaded() -> None:
    standby = standby_on("150004")
    await FakeSessions({2: standby}).repoint(STANDBY, PRIMARY)
    assert standby.queries[0] == "SHOW server_version_num"
    assert any(
        q.startswith("ALTER SYSTEM SET primary_conninfo") and "10.0.0.1" in q and "replicator" in q
        for q in standby.queries
    ), standby.queries
    assert standby.queries[-1] == "SELECT pg_reload_conf()"


@pytest.mark.parametrize(
    ("version", "refused"),
    [("130000", None), ("170002", None), ("120000", "PostgreSQL 12"), ("90624", "PostgreSQL 9.6")],
)
def test_repoint_refusal_by_version(version: str, refused: str | None) -> None:
    refusal = repoint_refusal(0, version)
    assert (refusal is None) if refused is None else (refusal is not None and refused in refusal)


def test_an_unreadable_version_is_refused_rather_than_guessed() -> None:
    refusal = repoint_refusal(3, None)
    assert refusal is not None and "backend 3 did not report server_version_num" in refusal
