"""``pool-advice``'s reading of the server (pgbalancer.cli.advice_command.server_facts) per PostgreSQL
version, with a fake connection: the fixture cluster is PostgreSQL 15, so the 16+ branch
(``reserved_connections``) and the pre-14 branch (no busy times) never run against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from pgbalancer.cli.advice_command import server_facts

SETTINGS = {
    "server_version_num": "0",
    "max_connections": "200",
    "superuser_reserved_connections": "4",
    "reserved_connections": "6",
}
BUSY_SQL = (
    "SELECT coalesce(sum(active_time), 0), coalesce(sum(idle_in_transaction_time), 0) FROM pg_stat_database"
)


class FakeConnection:
    """Answers ``current_setting(...)`` from ``settings`` and the busy-time sum; records every SQL."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        self.sql: list[str] = []
        self.read_only = False
        self._row: tuple[Any, ...] | None = None

    def execute(self, sql: str) -> FakeConnection:
        self.sql.append(sql)
        if sql == BUSY_SQL:
            self._row = (1500.5, 500.5)
        else:
            name = sql.removeprefix("SELECT current_setting('").removesuffix("')")
            if name not in self.settings:  # what PostgreSQL says for a setting it lacks
                raise psycopg.errors.UndefinedObject(f'unrecognized configuration parameter "{name}"')
            self._row = (self.settings[name],)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row


def _connect_to(monkeypatch: pytest.MonkeyPatch, version: int) -> FakeConnection:
    settings = dict(SETTINGS, server_version_num=str(version))
    if version < 160000:
        del settings["reserved_connections"]
    fake = FakeConnection(settings)

    @contextmanager
    def connect(dsn: str, **kwargs: object) -> Iterator[FakeConnection]:
        assert dsn == "host=db" and kwargs == {"connect_timeout": 10, "autocommit": True}
        yield fake

    monkeypatch.setattr(psycopg, "connect", connect)
    return fake


def test_postgresql_16_reads_reserved_connections_and_busy_times(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _connect_to(monkeypatch, 160000)
    facts = server_facts("host=db")
    assert fake.read_only is True
    assert "SELECT current_setting('reserved_connections')" in fake.sql and BUSY_SQL in fake.sql
    assert (facts.version_num, facts.max_connections) == (160000, 200)
    assert (facts.superuser_reserved_connections, facts.reserved_connections) == (4, 6)
    assert facts.available == 200 - 4 - 6
    assert (facts.active_time_ms, facts.idle_in_transaction_time_ms) == (1500.5, 500.5)
    assert facts.busy_ratio == pytest.approx(1500.5 / 2001.0)


def test_postgresql_13_asks_for_neither_reserved_connections_nor_busy_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _connect_to(monkeypatch, 130000)
    facts = server_facts("host=db")
    assert fake.sql == [
        "SELECT current_setting('server_version_num')",
        "SELECT current_setting('max_connections')",
        "SELECT current_setting('superuser_reserved_connections')",
    ]
    assert facts.reserved_connections is None and facts.available == 200 - 4
    assert facts.active_time_ms is None and facts.busy_ratio is None
