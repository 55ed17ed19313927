"""Rejoin's file work failing (a full disk, a bad permission) is an ActionFailed that says what to
do, never a bare OSError (which the REST API would report as a 500).

The executor's database steps are replaced by a subclass; the file work and the tool runs are real,
in a temporary directory, with stand-in pg_rewind / pg_basebackup scripts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbalancer.config import Config
from pgbalancer.health.actions import ActionExecutor, ActionFailed, NodeInfo, OsUser
from pgbalancer.health.pgclient import AdminLogin


def no_config() -> Config:
    raise AssertionError("rejoin must not need the config")


class OfflineExecutor(ActionExecutor):
    """Rejoin with the primary's answers given: where the tools are, nothing running, CHECKPOINT done."""

    def __init__(self, bindir: Path) -> None:
        super().__init__(no_config, lambda: AdminLogin("postgres", "postgres", timeout=3.0))
        self.bindir = bindir

    async def _bindir(self, primary: NodeInfo) -> Path:
        del primary
        return self.bindir

    async def _stop_if_running(
        self, bindir: Path, data_dir: Path, owner: OsUser | None, env: dict[str, str]
    ) -> None:
        del bindir, data_dir, owner, env

    async def checkpoint(self, node: NodeInfo) -> None:
        del node


def tools(tmp_path: Path, *, rewind_status: int) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, status in (("pg_rewind", rewind_status), ("pg_basebackup", 1), ("pg_ctl", 0)):
        script = bindir / name
        script.write_text(f"#!/bin/sh\nexit {status}\n")
        script.chmod(0o755)
    return bindir


def data_directory(tmp_path: Path) -> Path:
    data_dir = tmp_path / "node0"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    (data_dir / "postgresql.conf").write_text("port = 5432\n")
    return data_dir


PRIMARY = NodeInfo(1, "127.0.0.1", 5433)


async def test_standby_settings_that_cannot_be_written_are_a_clear_action_failure(tmp_path: Path) -> None:
    data_dir = data_directory(tmp_path)
    (data_dir / "standby.signal").mkdir()  # writing the file fails: IsADirectoryError
    executor = OfflineExecutor(tools(tmp_path, rewind_status=0))

    with pytest.raises(ActionFailed) as excinfo:
        await executor.rejoin(NodeInfo(0, "127.0.0.1", 5432, str(data_dir)), PRIMARY)

    message = str(excinfo.value)
    assert "backend 0 was rebuilt with pg_rewind but its standby settings could not be written" in message
    assert "standby.signal" in message and "rerun the rejoin" in message


async def test_a_data_directory_that_cannot_be_set_aside_is_a_clear_action_failure(tmp_path: Path) -> None:
    data_dir = data_directory(tmp_path)
    (tmp_path / "node0.pgbalancer-old").write_text("in the way")  # rmtree of a file: NotADirectoryError
    executor = OfflineExecutor(tools(tmp_path, rewind_status=1))  # rewind fails: re-clone

    with pytest.raises(ActionFailed) as excinfo:
        await executor.rejoin(NodeInfo(0, "127.0.0.1", 5432, str(data_dir)), PRIMARY)

    message = str(excinfo.value)
    assert f"{data_dir} could not be set aside" in message and "nothing was deleted" in message
    assert (data_dir / "PG_VERSION").is_file()  # the node's data is where it was
