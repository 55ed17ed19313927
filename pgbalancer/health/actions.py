"""Carrying out failover actions on real servers: promote, re-point, freeze, rejoin, and the hooks.

Built-in behaviour uses SQL as health_check_user (a superuser for these): ``pg_promote()``,
``ALTER SYSTEM SET primary_conninfo`` + ``pg_reload_conf()`` (PostgreSQL 13+ re-reads it live),
replication slots re-created on the new primary (slots are not replicated). Operators may replace
promotion and re-pointing with ``failover_command`` / ``follow_primary_command`` and Pgpool-II's
``%`` substitutions. Rejoining a failed primary runs ``pg_rewind`` (``pg_basebackup`` when rewind is
impossible) and ``pg_ctl`` as the OS user that owns the node's data directory
(``backend_data_directoryN``), through ``trio.run_process``.

This module decides nothing: the planner chose what to do; failures raise ``ActionFailed`` with
what went wrong and what to check. It never runs a shell for anything but the operator's hooks,
and never removes a data directory before its replacement is complete.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from pgbalancer.config import BackendConfig, Config
from pgbalancer.health.checker import ProbeFailed, probe_once
from pgbalancer.health.conninfo import render_conninfo, retarget
from pgbalancer.health.pgclient import AdminLogin, admin_session, fetch_rows, fetch_value, sql_literal
from pgbalancer.proxy.backend import BackendAddress, BackendUnavailable, ServerConnection, ServerError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PROMOTE_WAIT = 30  # seconds pg_promote(), or the node promoted by failover_command, may take
_HOOK_TIMEOUT = 120.0
_TOOL_TIMEOUT = 1800.0  # pg_rewind / pg_basebackup of a large cluster
_TERMINATE_WAIT_MS = 5000
_REJOIN_LOG = "pgbalancer-rejoin.log"
_OUTPUT_TAIL = 1500
_HOOK_NODE_CODES = ("d", "m", "M", "P")  # substitutions that are node ids (-1 when there is none)


class ActionFailed(Exception):
    """An action did not work; the message says what happened and what to check."""


@dataclass(frozen=True)
class NodeInfo:
    """A backend as the actions need it."""

    node_id: int
    host: str
    port: int
    data_directory: str = ""

    @classmethod
    def from_config(cls, backend: BackendConfig) -> NodeInfo:
        return cls(backend.node_id, backend.hostname, backend.port, backend.data_directory)

    @property
    def address(self) -> BackendAddress:
        return BackendAddress(self.node_id, self.host, self.port)


# --------------------------------------------------------------------------- hooks (pure helpers)


def hook_values(
    failed: NodeInfo | None, new_primary: NodeInfo | None, old_primary: NodeInfo | None
) -> dict[str, str]:
    """Pgpool-II's substitutions for failover_command / follow_primary_command."""
    values = {
        "d": str(failed.node_id) if failed else "-1",
        "h": failed.host if failed else "",
        "p": str(failed.port) if failed else "",
        "D": failed.data_directory if failed else "",
        "m": str(new_primary.node_id) if new_primary else "-1",
        "H": new_primary.host if new_primary else "",
        "r": str(new_primary.port) if new_primary else "",
        "R": new_primary.data_directory if new_primary else "",
        "M": str(old_primary.node_id) if old_primary else "-1",
        "P": str(old_primary.node_id) if old_primary else "-1",
        "N": old_primary.host if old_primary else "",
        "S": str(old_primary.port) if old_primary else "",
    }
    return values


def substitute_command(template: str, values: Mapping[str, str]) -> str:
    """Replace ``%x`` codes with shell-quoted values; ``%%`` is a percent sign, unknown codes stay."""
    out: list[str] = []
    index = 0
    while index < len(template):
        char = template[index]
        if char == "%" and index + 1 < len(template):
            code = template[index + 1]
            if code == "%":
                out.append("%")
            elif code in values:
                value = values[code]
                out.append(value if code in _HOOK_NODE_CODES else shlex.quote(value))
            else:
                out.append(char + code)
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


# PostgreSQL 13 made primary_conninfo reloadable; before it a standby keeps streaming from where
# it started until it is restarted, so ALTER SYSTEM + reload would only seem to have worked.
LIVE_PRIMARY_CONNINFO_VERSION = 130000


def repoint_refusal(node_id: int, server_version_num: str | None) -> str | None:
    """Why backend ``node_id`` cannot be re-pointed with ALTER SYSTEM + reload, or None when it can."""
    if server_version_num is None or not server_version_num.isdigit():
        return (
            f"backend {node_id} did not report server_version_num ({server_version_num!r}), so pgbalancer "
            "cannot tell whether a reload applies primary_conninfo; point it at the new primary yourself"
        )
    version = int(server_version_num)
    if version >= LIVE_PRIMARY_CONNINFO_VERSION:
        return None
    major = str(version // 10000) if version >= 100000 else f"{version // 10000}.{version // 100 % 100}"
    return (
        f"backend {node_id} runs PostgreSQL {major} (server_version_num {version}): a reload applies a "
        "new primary_conninfo only from PostgreSQL 13 on, so pgbalancer did not re-point it. Set "
        "follow_primary_command to a script that points it at the new primary and restarts it, or "
        "upgrade it to PostgreSQL 13 or later"
    )


# --------------------------------------------------------------------------- running tools


@dataclass(frozen=True)
class OsUser:
    uid: int
    gid: int
    name: str
    home: str


def data_directory_owner(path: Path) -> OsUser | None:
    """The OS user owning a data directory on this machine (None when it is not here)."""
    try:
        status = path.stat()
    except OSError:
        return None
    try:
        entry = pwd.getpwuid(status.st_uid)
    except KeyError:
        return OsUser(status.st_uid, status.st_gid, str(status.st_uid), "/")
    return OsUser(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def tool_environment(user: OsUser | None, password: str | None) -> dict[str, str]:
    # Inherited PGHOST/PGPORT/PGSERVICE... would silently change what the tools connect to.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    if password:
        env["PGPASSWORD"] = password
    return env


async def run_tool(
    argv: Sequence[str], *, user: OsUser | None, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """Run a program, as ``user`` when we are root; the completed process (never raises on exit code)."""
    switch = user is not None and os.geteuid() == 0 and user.uid != 0
    try:
        with trio.fail_after(timeout):
            return await trio.run_process(
                list(argv),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd="/",  # the tool's user may not be allowed into our working directory
                env=dict(env),
                user=user.uid if switch and user is not None else None,
                group=user.gid if switch and user is not None else None,
                extra_groups=[] if switch else None,
            )
    except trio.TooSlowError as exc:
        raise ActionFailed(f"{argv[0]} did not finish within {timeout:g}s") from exc
    except OSError as exc:
        raise ActionFailed(f"could not run {argv[0]}: {exc}") from exc


def _output_tail(result: subprocess.CompletedProcess[bytes], *, both: bool = False) -> str:
    out = (result.stdout or b"").decode(errors="replace").strip()
    err = (result.stderr or b"").decode(errors="replace").strip()
    text = "\n".join(part for part in (out, err) if part) if both else (err or out)
    return text[-_OUTPUT_TAIL:]


# --------------------------------------------------------------------------- the executor


class ActionExecutor:
    """Performs actions with the current config (it may change on reload between two actions)."""

    def __init__(self, config: Callable[[], Config], login: Callable[[], AdminLogin]) -> None:
        self._config = config
        self._login = login

    def _session(self, node: NodeInfo) -> AbstractAsyncContextManager[ServerConnection]:
        """A session on ``node`` as health_check_user (tests replace it with a fake server)."""
        return admin_session(node.address, self._login())

    # ---- promotion

    async def promote(self, node: NodeInfo, old_primary: NodeInfo | None) -> str:
        """Make ``node`` the primary; returns how ("pg_promote()" or "failover_command")."""
        command = self._config().failover_command
        if command:
            values = hook_values(old_primary, node, old_primary)
            await self._run_hook("failover_command", command, values, node.data_directory)
            await self.wait_out_of_recovery(node, PROMOTE_WAIT)
            return "failover_command"
        try:
            with trio.fail_after(PROMOTE_WAIT + self._login().timeout):
                async with self._session(node) as server:
                    promoted = await fetch_value(server, f"SELECT pg_promote(true, {PROMOTE_WAIT})")
        except (BackendUnavailable, ServerError, OSError, trio.TooSlowError) as exc:
            raise ActionFailed(f"pg_promote() on backend {node.node_id} failed: {exc}") from exc
        if promoted != "t":
            raise ActionFailed(f"backend {node.node_id} did not finish promoting within {PROMOTE_WAIT}s")
        return "pg_promote()"

    async def wait_out_of_recovery(self, node: NodeInfo, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while True:
                try:
                    facts = await probe_once(node.address, self._login())
                except ProbeFailed:
                    facts = None
                if facts is not None and not facts.in_recovery:
                    return
                await trio.sleep(0.1)
        raise ActionFailed(
            f"backend {node.node_id} is still in recovery {timeout:g}s after failover_command; "
            "check that the command promotes node %m"
        )

    # ---- re-pointing standbys

    async def follow(
        self,
        standby: NodeInfo,
        primary: NodeInfo,
        old_primary: NodeInfo | None,
        *,
        template: str | None = None,
    ) -> str:
        """Point ``standby`` at ``primary``; returns how (built-in or follow_primary_command)."""
        command = self._config().follow_primary_command
        if command:
            values = hook_values(standby, primary, old_primary)
            await self._run_hook("follow_primary_command", command, values, standby.data_directory)
            return "follow_primary_command"
        await self.repoint(standby, primary, template=template)
        return "primary_conninfo"

    async def repoint(self, standby: NodeInfo, primary: NodeInfo, *, template: str | None = None) -> None:
        """ALTER SYSTEM SET primary_conninfo (its other settings kept) + reload; the slot it names is
        created on the primary first, or the standby could not stream at all. Refused (ActionFailed,
        nothing changed) on a standby older than PostgreSQL 13, where a reload would not apply it."""
        try:
            async with self._session(standby) as server:
                version = await fetch_value(server, "SHOW server_version_num")
                refusal = repoint_refusal(standby.node_id, version)
                if refusal is not None:
                    raise ActionFailed(refusal)
                rows = await fetch_rows(
                    server, "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')"
                )
                conninfo, slot = rows[0] if rows else (None, None)
                target = self._conninfo_for(primary, conninfo or "", template)
                if slot:
                    await self.ensure_slot(primary, slot)
                await fetch_rows(server, f"ALTER SYSTEM SET primary_conninfo = {sql_literal(target)}")
                await fetch_rows(server, "SELECT pg_reload_conf()")
        except (BackendUnavailable, ServerError, OSError) as exc:
            raise ActionFailed(
                f"could not point backend {standby.node_id} at backend {primary.node_id}: {exc}"
            ) from exc

    def _conninfo_for(self, primary: NodeInfo, own: str, template: str | None) -> str:
        if own.strip():
            return retarget(own, primary.host, primary.port)
        if template and template.strip():
            # Another standby's settings, minus the name it reports itself under.
            return retarget(template, primary.host, primary.port, drop=("application_name",))
        return render_conninfo({"host": primary.host, "port": str(primary.port), "user": self._login().user})

    async def ensure_slot(self, primary: NodeInfo, slot: str) -> None:
        name = sql_literal(slot)
        async with self._session(primary) as server:
            await fetch_rows(
                server,
                f"SELECT pg_create_physical_replication_slot({name}) WHERE NOT EXISTS "
                f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = {name})",
            )

    async def notify_failed(self, failed: NodeInfo, primary: NodeInfo | None) -> None:
        """failover_command for a standby that went down (Pgpool-II runs it for every node)."""
        command = self._config().failover_command
        if command:
            values = hook_values(failed, primary, primary)
            await self._run_hook("failover_command", command, values, failed.data_directory)

    # ---- switchover

    async def freeze_primary(self, primary: NodeInfo) -> int:
        """Stop all writes on the old primary and return its final (flushed) WAL position.

        default_transaction_read_only keeps new transactions read-only; every client backend
        (other pgbalancer workers and direct clients included) is terminated and waited for, so
        no commit can land after the position read last.
        """
        try:
            async with self._session(primary) as server:
                await fetch_rows(server, "ALTER SYSTEM SET default_transaction_read_only = on")
                await fetch_rows(server, "SELECT pg_reload_conf()")
                await fetch_rows(
                    server,
                    f"SELECT count(pg_terminate_backend(pid, {_TERMINATE_WAIT_MS})) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                )
                # The checkpoint flushes every record inserted so far (an asynchronous commit too: the
                # standby is sent WAL only up to the flush position). Taken in a fresh segment, it is the
                # last checkpoint both servers share and its WAL outlives the old primary's shutdown
                # checkpoint, so pg_rewind later finds what it needs to rejoin the old primary.
                await fetch_rows(server, "SELECT pg_switch_wal()")
                await fetch_rows(server, "CHECKPOINT")
                lsn = await fetch_value(server, "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")
        except (BackendUnavailable, ServerError, OSError) as exc:
            raise ActionFailed(f"could not stop writes on backend {primary.node_id}: {exc}") from exc
        if lsn is None:
            raise ActionFailed(f"backend {primary.node_id} reported no WAL position")
        return int(lsn.split(".", 1)[0])

    async def thaw_primary(self, primary: NodeInfo) -> None:
        """Undo freeze_primary (a switchover that could not finish)."""
        try:
            async with self._session(primary) as server:
                await fetch_rows(server, "ALTER SYSTEM RESET default_transaction_read_only")
                await fetch_rows(server, "SELECT pg_reload_conf()")
        except (BackendUnavailable, ServerError, OSError) as exc:
            raise ActionFailed(
                f"backend {primary.node_id} may still be read-only: {exc}; run ALTER SYSTEM RESET "
                "default_transaction_read_only and SELECT pg_reload_conf() on it"
            ) from exc

    # ---- rejoin

    async def rejoin(self, node: NodeInfo, primary: NodeInfo, *, template: str | None = None) -> str:
        """Make a failed or fenced node a standby of ``primary``; returns "pg_rewind" or "pg_basebackup"."""
        data_dir = self._local_data_directory(node)
        owner = data_directory_owner(data_dir)
        bindir = await self._bindir(primary)
        env = tool_environment(owner, self._login().password)
        await self._stop_if_running(bindir, data_dir, owner, env)
        saved = await _file_step(
            _read_config_files,
            data_dir,
            failed=f"could not read backend {node.node_id}'s configuration files in {data_dir}",
            advice="check that the directory is readable by pgbalancer; nothing was changed (the node "
            "is stopped: start it again, or fix this and rerun the rejoin)",
        )
        await self.checkpoint(primary)
        method = "pg_rewind"
        rewind = await run_tool(
            [str(bindir / "pg_rewind"), "-D", str(data_dir), "--source-server", self._source(primary)],
            user=owner,
            env=env,
            timeout=_TOOL_TIMEOUT,
        )
        log.info("pg_rewind of backend %d: %s", node.node_id, _output_tail(rewind, both=True))
        if rewind.returncode != 0:
            log.warning("pg_rewind of backend %d failed, re-cloning it", node.node_id)
            method = "pg_basebackup"
            await self._reclone(bindir, data_dir, owner, env, primary, template)
        # Standby settings go in before the start: after a rewind the node reaches a consistent state
        # (and accepts connections) only with WAL streamed from the primary.
        own = saved.get(AUTO_CONF, b"").decode(errors="replace")
        auto_conf, slot = standby_auto_conf(
            own, self._conninfo_for(primary, auto_conf_setting(own, "primary_conninfo") or "", template)
        )
        if slot:
            await self.ensure_slot(primary, slot)
        saved = {**saved, AUTO_CONF: auto_conf.encode()}
        await _file_step(
            _write_standby_files,
            data_dir,
            saved,
            owner,
            failed=f"backend {node.node_id} was rebuilt with {method} but its standby settings could "
            f"not be written to {data_dir}",
            advice="check free space and permissions there, then rerun the rejoin (the node is stopped "
            "and must not be started as it is: it would not follow the primary)",
        )
        await self._start(bindir, data_dir, owner, env, node)
        return method

    async def checkpoint(self, node: NodeInfo) -> None:
        """CHECKPOINT. Before pg_rewind, on the source: pg_rewind reads the source's timeline from its
        control file, which a fresh promotion only updates at its first checkpoint (without one it
        sees "the same timeline" and rewinds nothing). Before a switchover, on the old primary: the
        checkpoint taken while writes wait is then short."""
        try:
            async with self._session(node) as server:
                await fetch_rows(server, "CHECKPOINT")
        except (BackendUnavailable, ServerError, OSError) as exc:
            raise ActionFailed(f"CHECKPOINT on backend {node.node_id} failed: {exc}") from exc

    def _local_data_directory(self, node: NodeInfo) -> Path:
        if not node.data_directory:
            raise ActionFailed(
                f"backend_data_directory{node.node_id} is not set, so pgbalancer cannot rewind backend "
                f"{node.node_id}; set it (pgbalancer must run on that machine), or rebuild the node as a "
                "standby yourself and attach it"
            )
        data_dir = Path(node.data_directory)
        if not (data_dir / "PG_VERSION").is_file():
            raise ActionFailed(
                f"{data_dir} (backend_data_directory{node.node_id}) is not a PostgreSQL data directory on "
                "this machine; rejoin must run where the node's data lives"
            )
        return data_dir

    def _source(self, primary: NodeInfo) -> str:
        return render_conninfo(
            {"host": primary.host, "port": str(primary.port), **self._login().conninfo_fields()}
        )

    async def _bindir(self, primary: NodeInfo) -> Path:
        """Where pg_rewind and friends are: the primary's own BINDIR (same machine), else PATH, else
        Debian's versioned directory."""
        bindir: str | None = None
        version: str | None = None
        try:
            async with self._session(primary) as server:
                version = await fetch_value(server, "SHOW server_version_num")
                try:
                    bindir = await fetch_value(server, "SELECT setting FROM pg_config WHERE name = 'BINDIR'")
                except ServerError:
                    bindir = None  # pg_config is for superusers only
        except (BackendUnavailable, ServerError, OSError) as exc:
            raise ActionFailed(f"the primary (backend {primary.node_id}) does not answer: {exc}") from exc
        candidates = [bindir, _dirname(shutil.which("pg_rewind"))]
        if version:
            candidates.append(f"/usr/lib/postgresql/{int(version) // 10000}/bin")
        for candidate in candidates:
            if candidate and (Path(candidate) / "pg_rewind").is_file():
                return Path(candidate)
        raise ActionFailed("pg_rewind not found (BINDIR of the primary, PATH, /usr/lib/postgresql/N/bin)")

    async def _stop_if_running(
        self, bindir: Path, data_dir: Path, owner: OsUser | None, env: dict[str, str]
    ) -> None:
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data_dir)]
        status = await run_tool([*pg_ctl, "status"], user=owner, env=env, timeout=60)
        if status.returncode != 0:
            return
        for mode in ("fast", "immediate"):
            stop = await run_tool(
                [*pg_ctl, "-w", "-t", "60", "stop", "-m", mode], user=owner, env=env, timeout=90
            )
            if stop.returncode == 0:
                return
        raise ActionFailed(f"could not stop the server in {data_dir}: {_output_tail(stop)}")

    async def _reclone(
        self,
        bindir: Path,
        data_dir: Path,
        owner: OsUser | None,
        env: dict[str, str],
        primary: NodeInfo,
        template: str | None,
    ) -> None:
        backup = data_dir.with_name(data_dir.name + ".pgbalancer-old")
        await _file_step(
            _set_aside,
            data_dir,
            backup,
            owner,
            failed=f"pg_rewind failed and {data_dir} could not be set aside as {backup} to re-clone it",
            advice=f"check free space and permissions in {data_dir.parent}; nothing was deleted (if "
            f"{data_dir} is missing or empty, the old data directory is {backup}: move it back)",
        )
        conninfo = self._conninfo_for(primary, "", template)
        clone = await run_tool(
            [
                str(bindir / "pg_basebackup"),
                "-D",
                str(data_dir),
                "-d",
                conninfo,
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            user=owner,
            env=env,
            timeout=_TOOL_TIMEOUT,
        )
        if clone.returncode != 0:
            await _file_step(
                _put_back,
                data_dir,
                backup,
                failed=f"neither pg_rewind nor pg_basebackup could rebuild {data_dir} "
                f"({_output_tail(clone)}), and the old data directory could not be put back",
                advice=f"it is in {backup}: move it back to {data_dir} by hand",
            )
            raise ActionFailed(
                f"neither pg_rewind nor pg_basebackup could rebuild {data_dir}: {_output_tail(clone)}; "
                "the old data directory was left as it was"
            )
        await trio.to_thread.run_sync(shutil.rmtree, backup, True)

    async def _start(
        self, bindir: Path, data_dir: Path, owner: OsUser | None, env: dict[str, str], node: NodeInfo
    ) -> None:
        start = await run_tool(
            # -W: catching up may take long; the caller waits until the node streams.
            [str(bindir / "pg_ctl"), "-D", str(data_dir), "-W", "-l", str(data_dir / _REJOIN_LOG), "start"],
            user=owner,
            env=env,
            timeout=60,
        )
        if start.returncode != 0:
            raise ActionFailed(
                f"backend {node.node_id} was rebuilt but did not start: {_output_tail(start)}; "
                f"see {data_dir / _REJOIN_LOG}"
            )

    # ---- hooks

    async def _run_hook(
        self, name: str, template: str, values: Mapping[str, str], data_directory: str
    ) -> None:
        command = substitute_command(template, values)
        owner = data_directory_owner(Path(data_directory)) if data_directory else None
        log.info("running %s: %s", name, command)
        result = await run_tool(
            ["/bin/sh", "-c", command], user=owner, env=tool_environment(owner, None), timeout=_HOOK_TIMEOUT
        )
        if result.returncode != 0:
            raise ActionFailed(f"{name} exited with status {result.returncode}: {_output_tail(result)}")


AUTO_CONF = "postgresql.auto.conf"
# Settings a rejoined node must not keep: where it used to stream from, and the switchover's freeze.
_REPLACED_SETTINGS = ("primary_conninfo", "default_transaction_read_only")


def auto_conf_setting(text: str, name: str) -> str | None:
    """The value of ``name`` in postgresql.auto.conf (its own format: name = 'value', quotes doubled)."""
    value: str | None = None
    for line in text.splitlines():
        key, separator, rest = line.partition("=")
        if separator and key.strip() == name:
            rest = rest.strip()
            value = rest[1:-1].replace("''", "'") if rest.startswith("'") and rest.endswith("'") else rest
    return value


def standby_auto_conf(text: str, conninfo: str) -> tuple[str, str | None]:
    """postgresql.auto.conf for a rejoined standby: its own settings, minus the stale ones, plus the
    primary_conninfo to stream from; and the replication slot it names, if any."""
    kept = [line for line in text.splitlines() if line.partition("=")[0].strip() not in _REPLACED_SETTINGS]
    quoted = conninfo.replace("'", "''")
    kept.append(f"primary_conninfo = '{quoted}'")
    return "\n".join(kept) + "\n", auto_conf_setting(text, "primary_slot_name") or None


def _dirname(path: str | None) -> str | None:
    return str(Path(path).parent) if path else None


# Blocking file work, run in a worker thread (trio.to_thread) by the executor.


async def _file_step(work: Callable[..., _T], *args: object, failed: str, advice: str) -> _T:
    """``work(*args)`` in a worker thread; an OSError becomes ActionFailed saying what failed, what
    state the node is left in and what to do (never an unexplained error for the API to report)."""
    try:
        return await trio.to_thread.run_sync(work, *args)
    except OSError as exc:
        raise ActionFailed(f"{failed}: {exc}; {advice}") from exc


def _read_config_files(data_dir: Path) -> dict[str, bytes]:
    """The node's own top-level *.conf files: pg_rewind and pg_basebackup copy the source's over them
    (its port, its cluster_name), and the rejoined node must keep its own."""
    return {path.name: path.read_bytes() for path in data_dir.glob("*.conf") if path.is_file()}


def _write_standby_files(data_dir: Path, saved: Mapping[str, bytes], owner: OsUser | None) -> None:
    for name, content in saved.items():
        _write_owned(data_dir / name, content, owner)
    _write_owned(data_dir / "standby.signal", b"", owner)


def _write_owned(path: Path, content: bytes, owner: OsUser | None) -> None:
    path.write_bytes(content)
    path.chmod(0o600)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, owner.uid, owner.gid)


def _set_aside(data_dir: Path, backup: Path, owner: OsUser | None) -> None:
    if backup.exists():
        shutil.rmtree(backup)
    data_dir.rename(backup)
    data_dir.mkdir(mode=0o700)
    if owner is not None and os.geteuid() == 0:
        os.chown(data_dir, owner.uid, owner.gid)


def _put_back(data_dir: Path, backup: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    backup.rename(data_dir)
