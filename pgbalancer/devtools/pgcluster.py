"""A throw-away local PostgreSQL cluster (one primary + N streaming hot standbys) for tests, demo, bench.

Blocking and trio-free on purpose: pytest session fixtures, ``make demo`` and the benchmark scripts all
drive it from plain threads or the command line. It runs the stock PostgreSQL binaries as the
``postgres`` OS user (PostgreSQL refuses to run as root), on 127.0.0.1 only, in one base directory:

    BASE/primary  BASE/standby1 ...   data directories
    BASE/sock                          unix sockets of every node
    BASE/log/<node>.log                server logs (pg_ctl -l)
    BASE/cluster.json                  ports and options, so another process can stop or inspect it

The roles, passwords and pg_hba methods below are a contract the proxy tests rely on: change them only
together with those tests. This module must never be imported by the proxy at run time, never listen on
anything but 127.0.0.1 (plus, for cluster tests, the address of a network namespace the test made:
``command_prefix`` runs every tool inside it, ``extra_listen``/``client_network`` open it to the
namespace's private network), and never touch a data directory outside its base directory.

CLI: ``python -m pgbalancer.devtools.pgcluster up|down|status|destroy --base DIR [--ports 5433,5434,5435]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from pgbalancer.devtools import free_tcp_ports, wait_for

DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_BIN_ENV = "PGBALANCER_PG_BIN"
PG_OS_USER = "postgres"
LOCALHOST = "127.0.0.1"

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
BENCH_USER = "bench"
BENCH_DB = "bench"
APP_DB = "app"

# user -> password (None: no password, trust). The proxy tests log in with exactly these.
TEST_USERS: Mapping[str, str | None] = MappingProxyType(
    {
        "postgres": None,
        "bench": None,
        "app_scram": "scram-secret",
        "app_md5": "md5-secret",
        "app_trust": None,
    }
)
# user -> pg_hba method for TCP logins from 127.0.0.1; any other user falls through to scram-sha-256.
TEST_USER_AUTH: Mapping[str, str] = MappingProxyType(
    {
        "postgres": "trust",
        "bench": "trust",
        "app_scram": "scram-sha-256",
        "app_md5": "md5",
        "app_trust": "trust",
    }
)
# database -> owner
TEST_DATABASES: Mapping[str, str] = MappingProxyType({BENCH_DB: "bench", APP_DB: "app_scram"})

STATE_FILE = "cluster.json"
STREAMING_TIMEOUT = 30.0
PG_CTL_TIMEOUT = 60
_UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


class PgClusterError(RuntimeError):
    """A cluster step failed; the message says which step, shows the output, and what to check."""


@dataclass(frozen=True)
class PgNode:
    """One PostgreSQL server of the cluster, as clients reach it."""

    name: str
    host: str
    port: int
    data_dir: Path
    role: str  # "primary" or "standby" at creation; a test that promotes a standby knows better

    def dsn(self, user: str = SUPERUSER, dbname: str = "postgres", password: str | None = None) -> str:
        """libpq key=value conninfo for this node over TCP."""
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            parts["password"] = password
        return " ".join(f"{key}={_conninfo_quote(value)}" for key, value in parts.items())


class PgClusterLike(Protocol):
    """What tests may use regardless of backend (local binaries or testcontainers)."""

    @property
    def primary(self) -> PgNode: ...
    @property
    def standbys(self) -> list[PgNode]: ...
    @property
    def nodes(self) -> list[PgNode]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def destroy(self) -> None: ...
    def psql(self, node: PgNode, sql: str, *, user: str = SUPERUSER, dbname: str = "postgres") -> str: ...


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of one node for ``status``."""

    node: PgNode
    running: bool
    in_recovery: bool | None  # None when not running or not answering


def _conninfo_quote(value: str) -> str:
    if value and not any(ch in value for ch in " '\\"):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # Inherited PGHOST/PGOPTIONS/PGSERVICE... would silently change what the tools connect to.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    env.update(extra or {})
    return env


class LocalPgCluster:
    """Primary + ``standbys`` streaming hot standbys from the local PostgreSQL binaries.

    ``ports`` are (primary, standby1, ...); by default free ports, or the ports recorded in
    ``base_dir/cluster.json`` when the cluster already exists. ``fast=True`` turns off fsync and
    synchronous_commit (tests only: a crash may lose data). ``full_page_writes`` stays on even then,
    because pg_rewind refuses to work without it and the failover tests rewind old primaries.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        standbys: int = 2,
        ports: Sequence[int] | None = None,
        pg_bin: Path | None = None,
        extra_conf: Mapping[str, str] | None = None,
        fast: bool = False,
        progress: Callable[[str], None] | None = None,
        command_prefix: Sequence[str] = (),
        extra_listen: str = "",
        client_network: str = "",
    ) -> None:
        if standbys < 0:
            raise ValueError(f"standbys must be >= 0, got {standbys}")
        self.base_dir = Path(base_dir).absolute()
        self.pg_bin = Path(pg_bin or os.environ.get(PG_BIN_ENV) or DEFAULT_PG_BIN)
        self.extra_conf: dict[str, str] = dict(extra_conf or {})
        self.fast = fast
        # Every PostgreSQL tool runs behind this prefix, e.g. ("ip", "netns", "exec", "ns") to run the
        # cluster inside a network namespace (cluster tests); tools then reach it on 127.0.0.1 there.
        self.command_prefix = tuple(command_prefix)
        # One more address to listen on (the namespace's own) and the network allowed in from it.
        self.extra_listen = extra_listen
        self.client_network = client_network
        self._progress = progress or (lambda _line: None)
        resolved = self._resolve_ports(standbys, ports)
        self._primary = PgNode("primary", LOCALHOST, resolved[0], self.base_dir / "primary", "primary")
        self._standbys = [
            PgNode(f"standby{i}", LOCALHOST, port, self.base_dir / f"standby{i}", "standby")
            for i, port in enumerate(resolved[1:], start=1)
        ]

    @classmethod
    def attach(cls, base_dir: Path, *, progress: Callable[[str], None] | None = None) -> LocalPgCluster:
        """Rebuild the handle of a cluster created earlier (maybe by another process) from cluster.json."""
        state = _read_state(Path(base_dir).absolute())
        if state is None:
            raise PgClusterError(f"no {STATE_FILE} in {base_dir}: no cluster was created there")
        return cls(
            base_dir,
            standbys=len(state["ports"]) - 1,
            ports=state["ports"],
            pg_bin=Path(state["pg_bin"]),
            extra_conf=state.get("extra_conf") or {},
            fast=bool(state.get("fast")),
            progress=progress,
            command_prefix=state.get("command_prefix") or (),
            extra_listen=state.get("extra_listen") or "",
            client_network=state.get("client_network") or "",
        )

    # ---- the nodes ---------------------------------------------------------------------------------

    @property
    def primary(self) -> PgNode:
        return self._primary

    @property
    def standbys(self) -> list[PgNode]:
        return list(self._standbys)

    @property
    def nodes(self) -> list[PgNode]:
        return [self._primary, *self._standbys]

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    def log_path(self, node: PgNode) -> Path:
        return self.log_dir / f"{node.name}.log"

    def slot_name(self, node: PgNode) -> str:
        """The physical replication slot a standby streams from (``slot1`` for standby1...)."""
        return "slot" + node.name.removeprefix("standby")

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Create whatever is missing, start whatever is stopped, and wait until every standby streams."""
        self._ensure_os_user()
        self._prepare_base_dir()
        self._write_state()
        if not _is_initialized(self._primary.data_dir):
            self._init_primary()
        self.start_node(self._primary)
        self._ensure_roles_and_databases()
        for standby in self._standbys:
            if not _is_initialized(standby.data_dir):
                self._clone_standby(standby)
            self.start_node(standby)
        if self._standbys:
            self._progress("waiting for streaming…")
            self.wait_until_streaming()
        self._progress("cluster is up")

    def stop(self) -> None:
        """Fast shutdown of every running node, standbys first. Stopped or missing nodes are skipped."""
        errors: list[str] = []
        for node in reversed(self.nodes):
            try:
                self.stop_node(node)
            except PgClusterError as exc:
                errors.append(str(exc))
        if errors:
            raise PgClusterError("\n\n".join(errors))

    def destroy(self) -> None:
        """Stop everything and delete the base directory."""
        try:
            self.stop()
        finally:
            if self.base_dir.exists():
                self._progress(f"removing {self.base_dir}")
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def start_node(self, node: PgNode) -> None:
        """Start one node (no-op when it runs); raises with the log tail when it does not come up."""
        if self.is_running(node):
            self._progress(f"{node.name} already running on port {node.port}")
            return
        self._progress(f"starting {node.name} on port {node.port}…")
        result = self._run_pg_ctl(node, "start", "-l", str(self.log_path(node)))
        if result.returncode != 0:
            raise PgClusterError(
                f"{node.name} did not start (pg_ctl exit {result.returncode}):\n{result.stderr.strip()}\n"
                f"--- last lines of {self.log_path(node)} ---\n{self.log_tail(node)}\n"
                f"Check that port {node.port} is free (ss -ltnp) and that {node.data_dir} belongs to "
                f"{PG_OS_USER}."
            )

    def stop_node(self, node: PgNode, mode: str = "fast") -> None:
        """Stop one node; falls back to immediate mode when ``mode`` does not finish in time."""
        if not self.is_running(node):
            return
        self._progress(f"stopping {node.name}…")
        result = self._run_pg_ctl(node, "stop", "-m", mode)
        if result.returncode != 0 and mode != "immediate" and self.is_running(node):
            result = self._run_pg_ctl(node, "stop", "-m", "immediate")
        if result.returncode != 0 and self.is_running(node):
            raise PgClusterError(f"could not stop {node.name}: {result.stderr.strip()}")

    def promote(self, node: PgNode) -> None:
        """``pg_ctl promote`` a standby and wait until it accepts writes."""
        result = self._run_pg_ctl(node, "promote")
        if result.returncode != 0:
            raise PgClusterError(f"promote {node.name} failed: {result.stderr.strip()}")

    def is_running(self, node: PgNode) -> bool:
        if not (node.data_dir / "PG_VERSION").exists():
            return False
        return self._run_pg_ctl(node, "status").returncode == 0

    def postmaster_pid(self, node: PgNode) -> int | None:
        """The postmaster's pid from postmaster.pid, or None when the node is not running."""
        if not self.is_running(node):
            return None
        try:
            return int((node.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def wait_until_streaming(self, timeout: float = STREAMING_TIMEOUT) -> None:
        """Poll pg_stat_replication on the primary until every standby streams."""
        expected = {standby.name for standby in self._standbys}
        sql = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        try:
            wait_for(
                lambda: expected <= set(self.psql(self._primary, sql).split()),
                timeout=timeout,
                interval=0.1,
                message=f"standbys {sorted(expected)} streaming from the primary",
                retry_on=(PgClusterError,),
            )
        except TimeoutError as exc:
            tails = "\n".join(
                f"--- last lines of {self.log_path(node)} ---\n{self.log_tail(node)}" for node in self.nodes
            )
            raise PgClusterError(
                f"{exc}\n{tails}\nCheck: the standby logs above; pg_hba.conf of the primary allows "
                f"'host replication {REPLICATION_USER} 127.0.0.1/32'; the slots exist "
                "(SELECT * FROM pg_replication_slots on the primary)."
            ) from exc

    # ---- queries and logs --------------------------------------------------------------------------

    def psql(self, node: PgNode, sql: str, *, user: str = SUPERUSER, dbname: str = "postgres") -> str:
        """Run ``sql`` (one or more statements) with psql over TCP; return stdout without the last newline.

        Output is unaligned and tuples-only (``-At``). Passwords of TEST_USERS are supplied
        automatically. Raises PgClusterError with psql's stderr when any statement fails.
        """
        password = TEST_USERS.get(user)
        env = _clean_env({"PGPASSWORD": password} if password else None)
        argv = [
            str(self.pg_bin / "psql"),
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            node.host,
            "-p",
            str(node.port),
            "-U",
            user,
            "-d",
            dbname,
            "-f",
            "-",
        ]
        result = subprocess.run(
            [*self.command_prefix, *argv], input=sql, capture_output=True, text=True, env=env, timeout=120
        )
        if result.returncode != 0:
            raise PgClusterError(
                f"psql on {node.name} (port {node.port}, user {user}, db {dbname}) failed "
                f"with exit {result.returncode}: {result.stderr.strip()}\nSQL: {sql.strip()[:500]}"
            )
        return result.stdout.removesuffix("\n")

    def log_tail(self, node: PgNode, lines: int = 30) -> str:
        path = self.log_path(node)
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return f"(no log at {path})"
        return "\n".join(text.splitlines()[-lines:])

    def status(self) -> list[NodeStatus]:
        return [self._node_status(node) for node in self.nodes]

    def replication_report(self) -> str:
        """pg_stat_replication of the primary as ``application_name|state|sent_lsn|replay_lsn`` lines."""
        return self.psql(
            self._primary,
            "SELECT application_name, state, sent_lsn, replay_lsn FROM pg_stat_replication ORDER BY 1",
        )

    # ---- internals ---------------------------------------------------------------------------------

    def _resolve_ports(self, standbys: int, ports: Sequence[int] | None) -> list[int]:
        state = _read_state(self.base_dir)
        recorded = list(state["ports"]) if state else None
        if ports is not None:
            wanted = [int(port) for port in ports]
            if len(wanted) != standbys + 1:
                raise ValueError(f"need {standbys + 1} ports (primary + {standbys} standbys), got {wanted}")
            if recorded and recorded != wanted and _is_initialized(self.base_dir / "primary"):
                raise PgClusterError(
                    f"{self.base_dir} already holds a cluster on ports {recorded}; "
                    f"destroy it first or omit the ports"
                )
            return wanted
        if recorded:
            if len(recorded) != standbys + 1:
                raise PgClusterError(
                    f"{self.base_dir} holds a cluster with {len(recorded) - 1} standbys, not {standbys}; "
                    "destroy it first or ask for that many standbys"
                )
            return recorded
        return free_tcp_ports(standbys + 1, LOCALHOST)

    def _write_state(self) -> None:
        state: dict[str, Any] = {
            "ports": [node.port for node in self.nodes],
            "pg_bin": str(self.pg_bin),
            "fast": self.fast,
            "extra_conf": self.extra_conf,
            "command_prefix": list(self.command_prefix),
            "extra_listen": self.extra_listen,
            "client_network": self.client_network,
        }
        (self.base_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _ensure_os_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            self._progress(f"creating OS user {PG_OS_USER}…")
            _run_checked(
                [
                    "useradd",
                    "--system",
                    "--home-dir",
                    "/var/lib/postgresql",
                    "--shell",
                    "/bin/bash",
                    PG_OS_USER,
                ],
                what="create the postgres OS user",
            )

    def _prepare_base_dir(self) -> None:
        if not (self.pg_bin / "initdb").exists():
            raise PgClusterError(
                f"no initdb in {self.pg_bin}: install postgresql-15 (apt-get install postgresql-15 "
                f"postgresql-client-15) or set {PG_BIN_ENV}"
            )
        socket_path = self.socket_dir / ".s.PGSQL.65535"
        if len(str(socket_path)) > _UNIX_SOCKET_PATH_MAX:
            raise PgClusterError(f"{self.base_dir} is too long for a unix socket path; use a shorter one")
        for directory in (self.base_dir, self.socket_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
            self._give_to_postgres(directory)
            directory.chmod(0o755)
        probe = self._as_postgres(["test", "-w", str(self.base_dir)])
        if probe.returncode != 0:
            raise PgClusterError(
                f"the {PG_OS_USER} OS user cannot write {self.base_dir}: every parent directory must be "
                "traversable (chmod o+x) by it; use a base dir under /tmp or the repository"
            )

    def _init_primary(self) -> None:
        node = self._primary
        self._progress("initdb primary…")
        base_args = [
            str(self.pg_bin / "initdb"),
            "-D",
            str(node.data_dir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-instructions",
            *(["--no-sync"] if self.fast else []),
        ]
        result = self._as_postgres([*base_args, "--locale=C.UTF-8"])
        if result.returncode != 0:
            # Minimal images lack the C.UTF-8 locale; plain C always exists.
            shutil.rmtree(node.data_dir, ignore_errors=True)
            result = self._as_postgres([*base_args, "--locale=C"])
        if result.returncode != 0:
            raise PgClusterError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        self._write_pg_file(node.data_dir / "devcluster.conf", self._cluster_conf())
        self._write_pg_file(node.data_dir / "pg_hba.conf", PG_HBA + self._network_hba())
        self._write_node_conf(node)
        with (node.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# pgbalancer dev cluster: shared settings, then this node's port and name\n"
                "include = 'devcluster.conf'\ninclude_if_exists = 'devnode.conf'\n"
            )

    def _cluster_conf(self) -> str:
        settings: dict[str, str] = {
            "listen_addresses": ",".join(filter(None, (LOCALHOST, self.extra_listen))),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_log_hints": "on",
            "full_page_writes": "on",
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
        }
        if self.fast:
            settings.update({"fsync": "off", "synchronous_commit": "off"})
        settings.update(self.extra_conf)
        lines = [f"{key} = {_conf_quote(value)}" for key, value in settings.items()]
        return "# written by pgbalancer.devtools.pgcluster\n" + "\n".join(lines) + "\n"

    def _network_hba(self) -> str:
        """Trust from client_network (a private namespace network only: cluster tests)."""
        if not self.client_network:
            return ""
        return (
            f"host    all          all          {self.client_network}  trust\n"
            f"host    replication  all          {self.client_network}  trust\n"
        )

    def _write_node_conf(self, node: PgNode) -> None:
        text = f"port = {node.port}\ncluster_name = {_conf_quote(node.name)}\n"
        self._write_pg_file(node.data_dir / "devnode.conf", text)

    def _ensure_roles_and_databases(self) -> None:
        primary = self._primary
        roles = set(self.psql(primary, "SELECT rolname FROM pg_roles").split())
        statements = [sql for name, sql in role_statements() if name not in roles]
        if statements:
            self._progress("creating roles…")
            self.psql(primary, "\n".join(statements))
        databases = set(self.psql(primary, "SELECT datname FROM pg_database").split())
        for dbname, owner in TEST_DATABASES.items():
            if dbname in databases:
                continue
            self._progress(f"creating database {dbname}…")
            self.psql(primary, f"CREATE DATABASE {dbname} OWNER {owner}")
            # Tests log in as app_md5/app_trust too; let every user create tables in these scratch dbs.
            self.psql(
                primary,
                f"GRANT CONNECT ON DATABASE {dbname} TO PUBLIC;\nGRANT ALL ON SCHEMA public TO PUBLIC;",
                dbname=dbname,
            )

    def _clone_standby(self, standby: PgNode) -> None:
        slot = self.slot_name(standby)
        shutil.rmtree(standby.data_dir, ignore_errors=True)  # a half-made copy from an interrupted run
        leftover = self.psql(self._primary, f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}'")
        if leftover:
            self.psql(self._primary, f"SELECT pg_drop_replication_slot('{slot}')")
        self._progress(f"base backup {standby.name}…")
        result = self._as_postgres(
            [
                str(self.pg_bin / "pg_basebackup"),
                "-h",
                LOCALHOST,
                "-p",
                str(self._primary.port),
                "-U",
                REPLICATION_USER,
                "-D",
                str(standby.data_dir),
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                slot,
                "-c",
                "fast",
                *(["--no-sync"] if self.fast else []),
            ]
        )
        if result.returncode != 0:
            raise PgClusterError(
                f"pg_basebackup for {standby.name} failed: {result.stderr.strip()}\n"
                f"--- primary log ---\n{self.log_tail(self._primary)}"
            )
        self._write_node_conf(standby)

    def _node_status(self, node: PgNode) -> NodeStatus:
        if not self.is_running(node):
            return NodeStatus(node, running=False, in_recovery=None)
        try:
            answer = self.psql(node, "SELECT pg_is_in_recovery()")
        except PgClusterError:
            return NodeStatus(node, running=True, in_recovery=None)
        return NodeStatus(node, running=True, in_recovery=answer == "t")

    def _run_pg_ctl(self, node: PgNode, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.pg_bin / "pg_ctl"), "-D", str(node.data_dir), "-w", "-t", str(PG_CTL_TIMEOUT)]
        return self._as_postgres([*argv, *args, action])

    def _as_postgres(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return run_as_postgres(argv, self.command_prefix)

    def _give_to_postgres(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_OS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _write_pg_file(self, path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o600)
        self._give_to_postgres(path)


PG_HBA = f"""\
# written by pgbalancer.devtools.pgcluster; the proxy tests rely on these methods. Order matters.
# TYPE  DATABASE     USER         ADDRESS       METHOD
local   all          all                        trust
local   replication  all                        trust
host    all          app_scram    {LOCALHOST}/32  scram-sha-256
host    all          app_md5      {LOCALHOST}/32  md5
host    all          postgres     {LOCALHOST}/32  trust
host    all          bench        {LOCALHOST}/32  trust
host    all          app_trust    {LOCALHOST}/32  trust
host    replication  {REPLICATION_USER}   {LOCALHOST}/32  trust
host    replication  postgres     {LOCALHOST}/32  trust
host    all          all          {LOCALHOST}/32  scram-sha-256
"""


def role_statements() -> list[tuple[str, str]]:
    """(role, SQL creating it); each password is stored in the format its pg_hba line expects."""
    return [
        ("bench", "CREATE ROLE bench LOGIN;"),
        (
            "app_scram",
            "SET password_encryption = 'scram-sha-256';\n"
            f"CREATE ROLE app_scram LOGIN PASSWORD {_sql_literal(TEST_USERS['app_scram'] or '')};",
        ),
        (
            "app_md5",
            "SET password_encryption = 'md5';\n"
            f"CREATE ROLE app_md5 LOGIN PASSWORD {_sql_literal(TEST_USERS['app_md5'] or '')};\n"
            "RESET password_encryption;",
        ),
        ("app_trust", "CREATE ROLE app_trust LOGIN;"),
        (REPLICATION_USER, f"CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION;"),
    ]


def run_as_postgres(argv: list[str], prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the postgres OS user (or as ourselves when we are not root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", PG_OS_USER, "--", *argv]
    argv = [*prefix, *argv]
    # cwd=/ because the postgres user may not be allowed into the caller's directory.
    return subprocess.run(
        argv,
        cwd="/",
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=PG_CTL_TIMEOUT + 30,
        stdin=subprocess.DEVNULL,
    )


def postgres_can_reach(path: Path) -> bool:
    """True when the postgres OS user can traverse into ``path`` (every parent needs o+x for it)."""
    return run_as_postgres(["test", "-x", str(path)]).returncode == 0


def _is_initialized(data_dir: Path) -> bool:
    return (data_dir / "PG_VERSION").exists()


def _read_state(base_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((base_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PgClusterError(f"unreadable {base_dir / STATE_FILE}: {exc}; destroy the cluster dir") from exc
    return state


def _run_checked(argv: list[str], *, what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise PgClusterError(f"could not {what}: {' '.join(argv)} -> {result.stderr.strip()}")


def reap_orphaned_clusters(parent: Path, prefix: str) -> list[Path]:
    """Stop and delete clusters under ``parent/prefix*`` whose owning process (owner.pid) is gone.

    Test runs killed with SIGKILL leave servers behind; the next run calls this to clean up. A dir
    without owner.pid or with a live owner is left alone.
    """
    reaped: list[Path] = []
    for base in sorted(parent.glob(prefix + "*")):
        try:
            owner = int((base / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if process_alive(owner):
            continue
        try:
            LocalPgCluster.attach(base).destroy()
        except (PgClusterError, ValueError):
            shutil.rmtree(base, ignore_errors=True)
        reaped.append(base)
    return reaped


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (owned by anyone); used to reap what a dead run left."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- command line ----------------------------------------------------------------------------------


def _parse_ports(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"ports must look like 5433,5434,5435, got {text!r}") from exc


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pgbalancer.devtools.pgcluster",
        description="A local PostgreSQL primary with streaming standbys, run as the postgres OS user.",
    )
    parser.add_argument("command", choices=["up", "down", "status", "destroy"])
    parser.add_argument("--base", type=Path, required=True, help="directory holding the whole cluster")
    parser.add_argument("--ports", type=_parse_ports, help="primary,standby1,... (default: free ports)")
    parser.add_argument("--standbys", type=int, default=None, help="number of standbys (default 2)")
    parser.add_argument("--fast", action="store_true", help="fsync=off, synchronous_commit=off (tests)")
    return parser


_STATE_WORDS = {True: "running, in recovery", False: "running, writable", None: "running, not answering"}


def print_status(cluster: LocalPgCluster) -> None:
    for item in cluster.status():
        state = _STATE_WORDS[item.in_recovery] if item.running else "stopped"
        print(f"{item.node.name:<9} 127.0.0.1:{item.node.port:<5} {state}")
    if cluster.standbys and cluster.is_running(cluster.primary):
        for line in cluster.replication_report().splitlines():
            print("  replication: " + line.replace("|", "  "))


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    base: Path = args.base.absolute()
    try:
        if args.command == "up":
            standbys = args.standbys if args.standbys is not None else len(args.ports or [0, 0, 0]) - 1
            cluster = LocalPgCluster(
                base, standbys=standbys, ports=args.ports, fast=args.fast, progress=print
            )
            started = time.monotonic()
            cluster.start()
            print(f"up in {time.monotonic() - started:.1f}s; connect with:")
            for node in cluster.nodes:
                print(f"  {node.name:<9} {node.dsn()}")
            return 0
        if _read_state(base) is None:
            print(f"no cluster at {base}")
            return 0
        cluster = LocalPgCluster.attach(base, progress=print)
        if args.command == "down":
            cluster.stop()
            print("all nodes stopped")
        elif args.command == "destroy":
            cluster.destroy()
            print(f"destroyed {base}")
        else:
            print_status(cluster)
        return 0
    except PgClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
