"""The admin console's pure core: parse admin SQL, and encode PgBouncer-compatible result sets.

Role: the text of a simple Query sent to the virtual database ``pgbalancer`` (alias ``pgbouncer``)
becomes an :class:`AdminCommand`, or an :class:`AdminCommandError` carrying the SQLSTATE and text
PgBouncer would send. Snapshots of pools, sessions and backends, gathered by the shell
(``admin.py``), become the exact RowDescription/DataRow bytes of PgBouncer's SHOW commands (and of
Pgpool-II's SHOW POOL_NODES): same column names, order and type OIDs, all in text format, so
existing dashboards and pgbouncer_exporter work unchanged. Timestamps are text, as PgBouncer sends.

Never: do I/O, import trio, read a clock (times are passed in), or touch live pools and sessions;
the shell gathers snapshots and performs the commands.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import Enum, IntEnum, StrEnum
from typing import Final

from pgbalancer.config import BACKEND_SETTINGS, SETTINGS, ApplyOn
from pgbalancer.pgwire.errors import SqlState, error_response, notice_response
from pgbalancer.pgwire.messages import encode_message

ADMIN_DATABASES: Final = frozenset({"pgbalancer", "pgbouncer"})
ADMIN_DATABASE: Final = "pgbalancer"  # how the console names itself in SHOW output
STATS_PERIOD: Final = 60.0  # seconds; PgBouncer's default stats_period, the window of the avg_* columns
# SQLSTATEs only the console sends.
SYNTAX_ERROR: Final = "42601"
UNDEFINED_OBJECT: Final = "42704"
OBJECT_NOT_IN_PREREQUISITE_STATE: Final = "55000"
CONFIG_FILE_ERROR: Final = "F0000"
_SHOWN_QUERY_LIMIT: Final = 200

# Parameters some drivers SHOW or SET on any connection; the console fakes them as PgBouncer does.
FAKE_PARAMETERS: Final[Mapping[str, str]] = {
    "client_encoding": "UTF-8",
    "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on",
    "datestyle": "ISO",
    "timezone": "GMT",
    "extra_float_digits": "2",
}


class AdminCommandError(Exception):
    """A command the console refuses; the message is safe to show the client."""

    def __init__(self, message: str, sqlstate: str = SYNTAX_ERROR, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.hint = hint

    def to_response(self) -> bytes:
        """The ErrorResponse (severity ERROR: the console stays usable)."""
        return error_response(self.sqlstate, self.message, hint=self.hint)


# --------------------------------------------------------------------------- parsing


class Verb(StrEnum):
    SHOW = "SHOW"
    SHOW_PARAMETER = "SHOW PARAMETER"  # a faked driver parameter (SHOW client_encoding)
    SET_PARAMETER = "SET"  # a faked driver parameter; answered "SET ignored"
    PAUSE = "PAUSE"
    RESUME = "RESUME"
    KILL = "KILL"
    KILL_CLIENT = "KILL_CLIENT"
    RELOAD = "RELOAD"
    SHUTDOWN = "SHUTDOWN"


class Show(StrEnum):
    """What SHOW can show (lower case, as typed in any case)."""

    POOLS = "pools"
    STATS = "stats"
    STATS_TOTALS = "stats_totals"
    STATS_AVERAGES = "stats_averages"
    TOTALS = "totals"
    SERVERS = "servers"
    CLIENTS = "clients"
    DATABASES = "databases"
    CONFIG = "config"
    VERSION = "version"
    LISTS = "lists"
    STATE = "state"
    HELP = "help"
    POOL_NODES = "pool_nodes"


@dataclass(frozen=True)
class AdminCommand:
    """A parsed console command.

    ``argument`` is the Show member for SHOW, the parameter for SHOW_PARAMETER and SET_PARAMETER,
    the database for PAUSE/RESUME/KILL ("" = all) and the client id for KILL_CLIENT.
    """

    verb: Verb
    argument: str = ""

    @property
    def database(self) -> str | None:
        """The database a PAUSE/RESUME/KILL names, or None for all of them."""
        return self.argument or None


_WORD: Final = r'"(?:[^"]|"")+"|\w+'
_COMMAND_RE: Final = re.compile(rf"\s*({_WORD})(?:\s+({_WORD}))?\s*(?:;\s*)?", re.ASCII)
_SET_RE: Final = re.compile(
    rf"\s*set\s+({_WORD})(?:\s*=\s*|\s+to\s+)({_WORD}|'(?:[^']|'')*')\s*(?:;\s*)?",
    re.ASCII | re.IGNORECASE,
)
_EMPTY_RE: Final = re.compile(r"[\s;]*")

_DATABASE_VERBS: Final = {"pause": Verb.PAUSE, "resume": Verb.RESUME, "kill": Verb.KILL}
_BARE_VERBS: Final = {"reload": Verb.RELOAD, "shutdown": Verb.SHUTDOWN}
# PgBouncer commands that have no meaning here yet: say so instead of "invalid command".
_UNSUPPORTED_VERBS: Final = frozenset({"suspend", "disable", "enable", "reconnect", "wait_close"})
_UNSUPPORTED_SHOWS: Final = frozenset(
    {"fds", "sockets", "active_sockets", "mem", "dns_hosts", "dns_zones", "peers", "peer_pools", "users"}
)


def parse_admin_command(text: str) -> AdminCommand | None:
    """The command in one simple Query, or None for an empty query; AdminCommandError otherwise.

    Grammar (case-insensitive, optional trailing semicolon): ``VERB [argument]`` where a word is
    letters, digits and underscores or a "double-quoted" name, or ``SET key = value``.
    """
    if _EMPTY_RE.fullmatch(text):
        return None
    match = _COMMAND_RE.fullmatch(text)
    if match is None:
        return _parse_set(text)
    verb, argument = _unquote(match[1]).lower(), _unquote(match[2]) if match[2] else ""
    if verb in ("show", "select"):  # PgBouncer reads SELECT x as SHOW x
        return _parse_show(argument, text)
    if verb in _DATABASE_VERBS:
        return AdminCommand(_DATABASE_VERBS[verb], argument)
    if verb in _BARE_VERBS and not argument:
        return AdminCommand(_BARE_VERBS[verb])
    if verb == "kill_client":
        return _parse_kill_client(argument, text)
    if verb in _UNSUPPORTED_VERBS or (verb == "shutdown" and argument.lower().startswith("wait_for_")):
        raise _not_supported(f"{verb.upper()} {argument}".strip())
    raise invalid_command(text)


def _parse_show(subject: str, text: str) -> AdminCommand:
    name = subject.lower()
    if name in Show.__members__.values():
        return AdminCommand(Verb.SHOW, Show(name))
    if name in FAKE_PARAMETERS:
        return AdminCommand(Verb.SHOW_PARAMETER, name)
    if name in _UNSUPPORTED_SHOWS:
        raise _not_supported(f"SHOW {name.upper()}")
    raise invalid_command(text)


def _parse_kill_client(argument: str, text: str) -> AdminCommand:
    if not argument:
        raise invalid_command(text)
    if not argument.isdigit():
        raise AdminCommandError(
            f"invalid client id {argument!r}",
            hint="use the id column of SHOW CLIENTS, such as KILL_CLIENT 42",
        )
    return AdminCommand(Verb.KILL_CLIENT, str(int(argument)))


def _parse_set(text: str) -> AdminCommand:
    match = _SET_RE.fullmatch(text)
    if match is None:
        raise invalid_command(text)
    key = _unquote(match[1]).lower()
    if key in FAKE_PARAMETERS:
        return AdminCommand(Verb.SET_PARAMETER, key)
    raise AdminCommandError(
        f"SET {key} is not supported on the pgbalancer admin console",
        SqlState.FEATURE_NOT_SUPPORTED,
        hint="change pgbalancer.conf, then run RELOAD",
    )


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        quote = word[0]
        return word[1:-1].replace(quote * 2, quote)
    return word


def _shown(text: str) -> str:
    """The query as quoted back in an error: bounded, and without NULs (they would end the field)."""
    text = text.strip().replace("\0", "\\0")
    return text if len(text) <= _SHOWN_QUERY_LIMIT else text[:_SHOWN_QUERY_LIMIT] + "..."


def invalid_command(text: str) -> AdminCommandError:
    return AdminCommandError(f"invalid command '{_shown(text)}', use SHOW HELP;")


def _not_supported(command: str) -> AdminCommandError:
    return AdminCommandError(
        f"{_shown(command)} is not supported by pgbalancer",
        SqlState.FEATURE_NOT_SUPPORTED,
        hint="SHOW HELP lists the commands pgbalancer supports",
    )


# --------------------------------------------------------------------------- wire messages


class PgType(IntEnum):
    """Type OIDs of the console's columns (all sent in text format)."""

    INT8 = 20
    INT4 = 23
    TEXT = 25
    NUMERIC = 1700


_TYPE_SIZE: Final = {PgType.INT8: 8, PgType.INT4: 4, PgType.TEXT: -1, PgType.NUMERIC: -1}
_FIELD: Final = struct.Struct("!IhIhih")  # table OID, column number, type OID, size, typmod, format
_INT16: Final = struct.Struct("!h")
_INT32: Final = struct.Struct("!i")

Value = str | int | None


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: PgType


def row_description(columns: Sequence[Column]) -> bytes:
    parts = [_INT16.pack(len(columns))]
    for column in columns:
        parts.append(column.name.encode() + b"\0")
        parts.append(_FIELD.pack(0, 0, column.type, _TYPE_SIZE[column.type], -1, 0))
    return encode_message(b"T", b"".join(parts))


def data_row(values: Sequence[Value]) -> bytes:
    parts = [_INT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(_INT32.pack(-1))
            continue
        raw = str(value).encode("utf-8", errors="surrogateescape")
        parts.append(_INT32.pack(len(raw)) + raw)
    return encode_message(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return encode_message(b"C", tag.encode() + b"\0")


def empty_query_response() -> bytes:
    return b"I\x00\x00\x00\x04"


@dataclass(frozen=True)
class ResultSet:
    columns: tuple[Column, ...]
    rows: tuple[tuple[Value, ...], ...]

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def encode(self, tag: str = "SHOW") -> bytes:
        """RowDescription, one DataRow per row, CommandComplete (the shell adds ReadyForQuery)."""
        return b"".join([row_description(self.columns), *map(data_row, self.rows), command_complete(tag)])


_S, _I4, _N = PgType.TEXT, PgType.INT4, PgType.NUMERIC


def _schema(*columns: tuple[str, PgType]) -> tuple[Column, ...]:
    return tuple(Column(name, kind) for name, kind in columns)


def _result(columns: tuple[Column, ...], rows: Iterable[Sequence[Value]]) -> ResultSet:
    built = tuple(tuple(row) for row in rows)
    for row in built:  # a schema/row mismatch is a bug here, never something to send
        assert len(row) == len(columns), (len(row), len(columns))
    return ResultSet(columns, built)


def format_timestamp(epoch_seconds: float | None) -> str | None:
    """PgBouncer's text timestamp (UTC); None stays NULL."""
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _split_us(microseconds: int) -> tuple[int, int]:
    """Whole seconds and the microsecond part, as PgBouncer's (wait, wait_us) column pairs."""
    return microseconds // 1_000_000, microseconds % 1_000_000


# --------------------------------------------------------------------------- SHOW POOLS

POOLS_COLUMNS: Final = _schema(
    ("database", _S),
    ("user", _S),
    ("cl_active", _I4),
    ("cl_waiting", _I4),
    ("cl_active_cancel_req", _I4),
    ("cl_waiting_cancel_req", _I4),
    ("sv_active", _I4),
    ("sv_active_cancel", _I4),
    ("sv_being_canceled", _I4),
    ("sv_idle", _I4),
    ("sv_used", _I4),
    ("sv_tested", _I4),
    ("sv_login", _I4),
    ("maxwait", _I4),
    ("maxwait_us", _I4),
    ("pool_mode", _S),
    ("load_balance_hosts", _S),
)


@dataclass(frozen=True)
class PoolRow:
    """One (database, user) pool, summed over the backends it has connections to."""

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_login: int
    maxwait_us: int
    pool_mode: str


def show_pools(pools: Iterable[PoolRow]) -> ResultSet:
    rows = []
    for p in pools:
        maxwait, maxwait_us = _split_us(p.maxwait_us)
        cancels = (0, 0)  # cancel requests are forwarded at once, never queued
        servers = (p.sv_active, 0, 0, p.sv_idle, 0, 0, p.sv_login)  # no used/tested/cancel states here
        rows.append(
            (
                p.database,
                p.user,
                p.cl_active,
                p.cl_waiting,
                *cancels,
                *servers,
                maxwait,
                maxwait_us,
                p.pool_mode,
                None,
            )
        )
    return _result(POOLS_COLUMNS, rows)


# --------------------------------------------------------------------------- SHOW CLIENTS / SERVERS

CONNECTION_COLUMNS: Final = _schema(
    ("type", _S),
    ("user", _S),
    ("database", _S),
    ("replication", _S),
    ("state", _S),
    ("addr", _S),
    ("port", _I4),
    ("local_addr", _S),
    ("local_port", _I4),
    ("connect_time", _S),
    ("request_time", _S),
    ("wait", _I4),
    ("wait_us", _I4),
    ("close_needed", _I4),
    ("ptr", _S),
    ("link", _S),
    ("remote_pid", _I4),
    ("tls", _S),
    ("application_name", _S),
    ("prepared_statements", _I4),
    ("id", _I4),
)


class ConnectionKind(Enum):
    CLIENT = "C"
    SERVER = "S"


@dataclass(frozen=True)
class ConnectionRow:
    """One client or server connection. Times are epoch seconds (None = unknown)."""

    kind: ConnectionKind
    user: str
    database: str
    state: str
    addr: str
    port: int
    local_addr: str
    local_port: int
    connect_time: float | None
    request_time: float | None
    wait_us: int
    ptr: str
    link: str
    remote_pid: int
    tls: str
    application_name: str
    id: int


def show_connections(connections: Iterable[ConnectionRow]) -> ResultSet:
    rows = []
    for c in connections:
        wait, wait_us = _split_us(c.wait_us)
        addresses = (c.addr, c.port, c.local_addr, c.local_port)
        times = (format_timestamp(c.connect_time), format_timestamp(c.request_time), wait, wait_us)
        links = (c.ptr, c.link, c.remote_pid, c.tls, c.application_name)
        rows.append(
            (c.kind.value, c.user, c.database, "none", c.state, *addresses, *times, 0, *links, 0, c.id)
        )
    return _result(CONNECTION_COLUMNS, rows)


# --------------------------------------------------------------------------- SHOW DATABASES

DATABASES_COLUMNS: Final = _schema(
    ("name", _S),
    ("host", _S),
    ("port", _I4),
    ("database", _S),
    ("force_user", _S),
    ("pool_size", _I4),
    ("min_pool_size", _I4),
    ("reserve_pool_size", _I4),
    ("server_lifetime", _I4),
    ("pool_mode", _S),
    ("load_balance_hosts", _S),
    ("max_connections", _I4),
    ("current_connections", _I4),
    ("max_client_connections", _I4),
    ("current_client_connections", _I4),
    ("paused", _I4),
    ("disabled", _I4),
)


@dataclass(frozen=True)
class DatabaseRow:
    """A database clients use (every name routes to the primary) or the console itself."""

    name: str
    host: str | None
    port: int
    pool_size: int
    server_lifetime: int
    current_connections: int
    current_client_connections: int
    paused: bool
    pool_mode: str | None = None  # None: the global pool_mode applies
    force_user: str | None = None
    reserve_pool_size: int = 0


def show_databases(databases: Iterable[DatabaseRow]) -> ResultSet:
    rows = [
        (
            *(d.name, d.host, d.port, d.name, d.force_user, d.pool_size, 0, d.reserve_pool_size),
            *(d.server_lifetime, d.pool_mode, None, 0, d.current_connections, 0),
            *(d.current_client_connections, int(d.paused), 0),
        )
        for d in databases
    ]
    return _result(DATABASES_COLUMNS, rows)


# --------------------------------------------------------------------------- SHOW STATS and friends


@dataclass(frozen=True, slots=True)
class StatTotals:
    """Cumulative counters of one database (or their per-second/per-event averages)."""

    server_assignment_count: int = 0
    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0

    def __add__(self, other: StatTotals) -> StatTotals:
        return StatTotals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: StatTotals) -> StatTotals:
        return StatTotals(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def average_rates(current: StatTotals, older: StatTotals, seconds: float) -> StatTotals:
    """PgBouncer's averages over a window: counts and bytes per second, times per event."""
    if seconds <= 0:
        return StatTotals()
    delta = current - older

    def per_second(amount: int) -> int:
        return int(amount / seconds)

    def per_event(total_us: int, events: int) -> int:
        return total_us // events if events > 0 else 0

    return StatTotals(
        server_assignment_count=per_second(delta.server_assignment_count),
        xact_count=per_second(delta.xact_count),
        query_count=per_second(delta.query_count),
        bytes_received=per_second(delta.bytes_received),
        bytes_sent=per_second(delta.bytes_sent),
        xact_time_us=per_event(delta.xact_time_us, delta.xact_count),
        query_time_us=per_event(delta.query_time_us, delta.query_count),
        wait_time_us=per_event(delta.wait_time_us, delta.server_assignment_count),
    )


class StatsHistory:
    """The totals at the start of the averaging window, rolled forward every ``period`` seconds.

    Averages cover [window start, now]: since the node started until the first period has passed,
    then at least the last period. Rolling happens when averages are asked for, so no task ticks.
    """

    def __init__(self, period: float, now: float) -> None:
        self.period = period
        self._older: dict[str, StatTotals] = {}
        self._older_at = now
        self._newer: dict[str, StatTotals] = {}
        self._newer_at = now

    def averages(self, now: float, current: Mapping[str, StatTotals]) -> dict[str, StatTotals]:
        if now - self._newer_at >= self.period:
            self._older, self._older_at = self._newer, self._newer_at
            self._newer, self._newer_at = dict(current), now
        seconds = now - self._older_at
        return {db: average_rates(t, self._older.get(db, StatTotals()), seconds) for db, t in current.items()}


_STAT_FIELDS: Final = (
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_connect_count",
)


def _stat_values(stats: StatTotals) -> tuple[int, ...]:
    # Prepared-statement and client-connect counts are not kept (yet): PgBouncer shows 0 without them.
    return (
        stats.server_assignment_count,
        stats.xact_count,
        stats.query_count,
        stats.bytes_received,
        stats.bytes_sent,
        stats.xact_time_us,
        stats.query_time_us,
        stats.wait_time_us,
        0,
        0,
        0,
        0,
    )


_AVERAGE_NAMES: Final = {"received": "recv"}  # SHOW STATS says avg_recv but total_received
STATS_COLUMNS: Final = _schema(
    ("database", _S),
    *((f"total_{name}", _N) for name in _STAT_FIELDS),
    *((f"avg_{_AVERAGE_NAMES.get(name, name)}", _N) for name in _STAT_FIELDS),
)
_SUBSET_NAMES: Final = tuple(
    {"received": "bytes_received", "sent": "bytes_sent"}.get(name, name) for name in _STAT_FIELDS
)
STATS_TOTALS_COLUMNS: Final = _schema(("database", _S), *((name, _N) for name in _SUBSET_NAMES))
STATS_AVERAGES_COLUMNS: Final = _schema(
    ("database", _S),
    *(
        (f"avg_{name}" if name.endswith(("parse_count", "bind_count")) else name, _N)
        for name in _SUBSET_NAMES
    ),
)
TOTALS_COLUMNS: Final = _schema(("name", _S), ("value", _N))
_TOTALS_NAMES: Final = tuple(
    {
        "received": "client_bytes",
        "sent": "server_bytes",
        "client_parse_count": "ps_client_parse_count",
        "server_parse_count": "ps_server_parse_count",
        "bind_count": "ps_bind_count",
    }.get(name, name)
    for name in _STAT_FIELDS
)


def show_stats(totals: Mapping[str, StatTotals], averages: Mapping[str, StatTotals]) -> ResultSet:
    rows: list[tuple[Value, ...]] = [
        (db, *_stat_values(totals[db]), *_stat_values(averages.get(db, StatTotals())))
        for db in sorted(totals)
    ]
    return _result(STATS_COLUMNS, rows)


def show_stats_totals(totals: Mapping[str, StatTotals]) -> ResultSet:
    return _result(STATS_TOTALS_COLUMNS, [(db, *_stat_values(totals[db])) for db in sorted(totals)])


def show_stats_averages(averages: Mapping[str, StatTotals]) -> ResultSet:
    return _result(STATS_AVERAGES_COLUMNS, [(db, *_stat_values(averages[db])) for db in sorted(averages)])


def show_totals(totals: Mapping[str, StatTotals], averages: Mapping[str, StatTotals]) -> ResultSet:
    """SHOW TOTALS: SHOW STATS summed over every database, one name/value row per figure."""
    total = sum(totals.values(), StatTotals())
    average = sum(averages.values(), StatTotals())
    rows: list[tuple[Value, ...]] = [
        (f"total_{n}", v) for n, v in zip(_TOTALS_NAMES, _stat_values(total), strict=True)
    ]
    rows += [(f"avg_{n}", v) for n, v in zip(_TOTALS_NAMES, _stat_values(average), strict=True)]
    return _result(TOTALS_COLUMNS, rows)


# --------------------------------------------------------------------------- SHOW CONFIG

CONFIG_COLUMNS: Final = _schema(("key", _S), ("value", _S), ("default", _S), ("changeable", _S))
_BACKEND_KEY_RE: Final = re.compile(r"(backend_[a-z_]+?)[0-9]+")


def render_setting(value: object) -> str:
    """A setting as pgbalancer.conf spells it: on/off, 5 rather than 5.0, lists comma joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return ",".join(render_setting(item) for item in value)
    return str(value)


def show_config(settings: Mapping[str, object]) -> ResultSet:
    """Every key with its (already redacted) value, its default and whether RELOAD applies it."""
    rows = []
    for key, value in settings.items():
        backend_key = _BACKEND_KEY_RE.fullmatch(key)
        spec = BACKEND_SETTINGS.get(f"{backend_key[1]}N") if backend_key else SETTINGS.get(key)
        default = render_setting(spec.default) if spec is not None else None
        changeable = "yes" if spec is not None and spec.applies is ApplyOn.RELOAD else "no"
        rows.append((key, render_setting(value), default, changeable))
    return _result(CONFIG_COLUMNS, rows)


# --------------------------------------------------------------------------- SHOW POOL_NODES (Pgpool-II)

POOL_NODES_COLUMNS: Final = _schema(
    *(
        (name, _S)
        for name in (
            "node_id",
            "hostname",
            "port",
            "status",
            "pg_status",
            "lb_weight",
            "role",
            "pg_role",
            "select_cnt",
            "load_balance_node",
            "replication_delay",
            "replication_state",
            "replication_sync_state",
            "last_status_change",
        )
    )
)


@dataclass(frozen=True)
class BackendNodeRow:
    """One backend as Pgpool-II's SHOW POOL_NODES shows it; ``last_status_change`` in epoch seconds."""

    node_id: int
    hostname: str
    port: int
    status: str  # pgpool's: waiting (up, no connections yet) | up | down
    pg_status: str  # what a probe just found: up | down | unknown
    weight: float
    role: str  # primary | standby
    pg_role: str
    select_cnt: int
    load_balance_node: bool
    replication_delay: int
    last_status_change: float
    replication_state: str = ""
    replication_sync_state: str = ""


def show_pool_nodes(nodes: Sequence[BackendNodeRow]) -> ResultSet:
    total_weight = sum(node.weight for node in nodes)
    rows = [
        (
            *(str(n.node_id), n.hostname, str(n.port), n.status, n.pg_status),
            *(f"{n.weight / total_weight if total_weight else 0.0:f}", n.role, n.pg_role, str(n.select_cnt)),
            *(str(n.load_balance_node).lower(), str(n.replication_delay), n.replication_state),
            *(n.replication_sync_state, _pgpool_timestamp(n.last_status_change)),
        )
        for n in nodes
    ]
    return _result(POOL_NODES_COLUMNS, rows)


def _pgpool_timestamp(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------- small SHOWs

LIST_NAMES: Final = (
    "databases",
    "users",
    "peers",
    "pools",
    "peer_pools",
    "free_clients",
    "used_clients",
    "login_clients",
    "free_servers",
    "used_servers",
    "dns_names",
    "dns_zones",
    "dns_queries",
    "dns_pending",
)
LISTS_COLUMNS: Final = _schema(("list", _S), ("items", _I4))
VERSION_COLUMNS: Final = _schema(("version", _S))
STATE_COLUMNS: Final = _schema(("key", _S), ("value", _S))


def show_lists(counts: Mapping[str, int]) -> ResultSet:
    """SHOW LISTS in PgBouncer's row order; lists pgbalancer does not keep count 0."""
    return _result(LISTS_COLUMNS, [(name, counts.get(name, 0)) for name in LIST_NAMES])


def show_version(version: str) -> ResultSet:
    return _result(VERSION_COLUMNS, [(version,)])


def show_state(paused: bool) -> ResultSet:
    def yes_no(flag: bool) -> str:
        return "yes" if flag else "no"

    return _result(
        STATE_COLUMNS, [("active", yes_no(not paused)), ("paused", yes_no(paused)), ("suspended", "no")]
    )


def show_parameter(name: str) -> ResultSet:
    return _result(_schema((name, _S)), [(FAKE_PARAMETERS[name],)])


_HELP_TEXT: Final = """
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|VERSION|LISTS|STATE
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
\tSHOW POOL_NODES
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client_id>
\tSHUTDOWN"""


def help_response() -> bytes:
    """SHOW HELP: a NOTICE listing the commands, then CommandComplete."""
    notice = notice_response(SqlState.SUCCESSFUL_COMPLETION, "Console usage", detail=_HELP_TEXT)
    return notice + command_complete("SHOW")


def set_ignored_response() -> bytes:
    """SET of a faked driver parameter: accepted and ignored, as PgBouncer does."""
    return notice_response(SqlState.SUCCESSFUL_COMPLETION, "SET ignored") + command_complete("SET")
