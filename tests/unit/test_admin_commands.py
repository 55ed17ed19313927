"""The admin console's pure core (parser, PgBouncer-compatible result sets, stats windows) and the
pool's pause gate that PAUSE/RESUME/KILL drive (trio, virtual clock)."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.config import REDACTED, parse_config_text, redacted_settings
from pgbalancer.pgwire.errors import parse_error_fields
from pgbalancer.pgwire.framing import Message, MessageReader
from pgbalancer.proxy import admin_commands
from pgbalancer.proxy.admin_commands import (
    AdminCommand,
    AdminCommandError,
    BackendNodeRow,
    Column,
    ConnectionKind,
    ConnectionRow,
    DatabaseRow,
    PgType,
    PoolRow,
    Show,
    StatsHistory,
    StatTotals,
    Verb,
    average_rates,
    command_complete,
    data_row,
    empty_query_response,
    help_response,
    parse_admin_command,
    row_description,
    show_config,
    show_connections,
    show_databases,
    show_lists,
    show_pool_nodes,
    show_pools,
    show_state,
    show_stats,
    show_stats_averages,
    show_stats_totals,
    show_totals,
    show_version,
)
from pgbalancer.proxy.pool import PoolExhausted, PoolKey, PoolKilled, PoolLimits, ServerPool

# --------------------------------------------------------------------------- helpers


def messages(data: bytes) -> list[Message]:
    reader = MessageReader()
    reader.receive_data(data)
    out = []
    while isinstance(event := reader.next_event(), Message):
        out.append(event)
    return out


def decode_result(data: bytes) -> tuple[list[tuple[str, int]], list[list[str | None]], str]:
    """(columns as (name, type OID), rows as text, command tag) of one encoded result set."""
    columns: list[tuple[str, int]] = []
    rows: list[list[str | None]] = []
    tag = ""
    for message in messages(data):
        body = message.body
        if message.type == b"T":
            (count,), pos = struct.unpack_from("!h", body), 2
            for _ in range(count):
                end = body.index(b"\0", pos)
                name = body[pos:end].decode()
                _, _, type_oid, _, _, fmt = struct.unpack_from("!IhIhih", body, end + 1)
                assert fmt == 0  # text format only
                columns.append((name, type_oid))
                pos = end + 1 + 18
        elif message.type == b"D":
            (count,), pos = struct.unpack_from("!h", body), 2
            row: list[str | None] = []
            for _ in range(count):
                (size,) = struct.unpack_from("!i", body, pos)
                pos += 4
                row.append(None if size < 0 else body[pos : pos + size].decode())
                pos += max(size, 0)
            assert pos == len(body)
            rows.append(row)
        elif message.type == b"C":
            tag = body[:-1].decode()
    return columns, rows, tag


def names(data: bytes) -> list[str]:
    return [name for name, _ in decode_result(data)[0]]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SHOW POOLS", AdminCommand(Verb.SHOW, Show.POOLS)),
        ("show pools;", AdminCommand(Verb.SHOW, Show.POOLS)),
        ("  Show\tStats_Totals ;  \n", AdminCommand(Verb.SHOW, Show.STATS_TOTALS)),
        ('SHOW "pool_nodes"', AdminCommand(Verb.SHOW, Show.POOL_NODES)),
        ("select version", AdminCommand(Verb.SHOW, Show.VERSION)),
        ("SHOW client_encoding", AdminCommand(Verb.SHOW_PARAMETER, "client_encoding")),
        ("PAUSE", AdminCommand(Verb.PAUSE)),
        ("pause app;", AdminCommand(Verb.PAUSE, "app")),
        ("PAUSE App", AdminCommand(Verb.PAUSE, "App")),  # as PgBouncer: no case folding of names
        ('RESUME "my-db"', AdminCommand(Verb.RESUME, "my-db")),
        ('KILL "a""b"', AdminCommand(Verb.KILL, 'a"b')),
        ("KILL", AdminCommand(Verb.KILL)),
        ("KILL_CLIENT 0042", AdminCommand(Verb.KILL_CLIENT, "42")),
        ("reload", AdminCommand(Verb.RELOAD)),
        ("SHUTDOWN;", AdminCommand(Verb.SHUTDOWN)),
        ("SET client_encoding = 'UTF8'", AdminCommand(Verb.SET_PARAMETER, "client_encoding")),
        ("set extra_float_digits to 3;", AdminCommand(Verb.SET_PARAMETER, "extra_float_digits")),
    ],
)
def test_commands_parse(text: str, expected: AdminCommand) -> None:
    assert parse_admin_command(text) == expected


def test_database_is_none_for_all() -> None:
    assert AdminCommand(Verb.PAUSE).database is None
    assert AdminCommand(Verb.PAUSE, "app").database == "app"


@pytest.mark.parametrize("text", ["", "   ", ";", " ;\n", ";;"])
def test_empty_queries_are_none(text: str) -> None:
    assert parse_admin_command(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "FOO",
        "SHOW",
        "SHOW nothing",
        "SHOW POOLS extra",
        "PAUSE a b",
        "RELOAD now",
        "KILL_CLIENT",
        "SELECT 1+1",
    ],
)
def test_unknown_commands_are_syntax_errors_like_pgbouncer(text: str) -> None:
    with pytest.raises(AdminCommandError) as excinfo:
        parse_admin_command(text)
    assert excinfo.value.sqlstate == "42601"
    assert excinfo.value.message == f"invalid command '{text}', use SHOW HELP;"


@pytest.mark.parametrize(
    "text", ["SUSPEND", "SHOW FDS", "shutdown wait_for_clients", "SET max_client_conn = 10"]
)
def test_known_but_unsupported_commands_say_so(text: str) -> None:
    with pytest.raises(AdminCommandError) as excinfo:
        parse_admin_command(text)
    assert excinfo.value.sqlstate == "0A000"


def test_kill_client_needs_a_number() -> None:
    with pytest.raises(AdminCommandError, match="invalid client id") as excinfo:
        parse_admin_command("KILL_CLIENT abc")
    assert excinfo.value.sqlstate == "42601"


def test_error_quotes_a_long_or_nul_query_safely() -> None:
    with pytest.raises(AdminCommandError) as excinfo:
        parse_admin_command("x\0" * 500)
    fields = parse_error_fields(excinfo.value.to_response()[5:])
    assert fields["S"] == "ERROR" and fields["C"] == "42601"
    assert "\\0" in fields["M"] and len(fields["M"]) < 300


@given(st.text())
def test_any_text_is_a_command_or_an_admin_error(text: str) -> None:
    try:
        command = parse_admin_command(text)
    except AdminCommandError as exc:
        assert exc.to_response()[:1] == b"E"  # and it can always be sent
    else:
        assert command is None or isinstance(command, AdminCommand)


_VERBS = ["show pools", "show stats", "pause", "pause app", "resume app", "kill app", "reload", "shutdown"]


@given(
    st.sampled_from(_VERBS),
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.sampled_from(["", " ", "\t\n "]),
    st.sampled_from(["", ";", " ; ", ";\n"]),
)
def test_case_spacing_and_semicolons_do_not_matter(
    command: str, upper: list[bool], space: str, semicolon: str
) -> None:
    cased = "".join(c.upper() if up else c for c, up in zip(command, upper, strict=False)) + command[20:]
    expected = parse_admin_command(command)
    assert expected is not None
    got = parse_admin_command(space + cased.replace(" ", space + " ") + semicolon)
    assert got is not None
    assert got.verb == expected.verb
    assert got.argument.lower() == expected.argument.lower()


def test_the_module_is_pure() -> None:
    tree = ast.parse(Path(admin_commands.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in {"trio", "socket", "select", "time", "threading"}}
    assert not {m for m in imported if m.startswith("pgbalancer.proxy") and m != "pgbalancer.proxy"}


# --------------------------------------------------------------------------- wire messages (golden bytes)


def test_row_description_golden_bytes() -> None:
    assert row_description([Column("version", PgType.TEXT)]) == (
        b"T\x00\x00\x00\x20\x00\x01version\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
    )
    assert row_description([Column("n", PgType.INT4), Column("t", PgType.NUMERIC)]) == (
        b"T\x00\x00\x00\x2e\x00\x02"
        b"n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
        b"t\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\xa4\xff\xff\xff\xff\xff\xff\x00\x00"
    )


def test_data_row_golden_bytes() -> None:
    assert data_row(["ab", 7, None]) == (
        b"D\x00\x00\x00\x15\x00\x03\x00\x00\x00\x02ab\x00\x00\x00\x017\xff\xff\xff\xff"
    )


def test_small_messages_golden_bytes() -> None:
    assert command_complete("SHOW") == b"C\x00\x00\x00\x09SHOW\x00"
    assert empty_query_response() == b"I\x00\x00\x00\x04"


def test_show_version_golden_bytes() -> None:
    assert show_version("pgbalancer 0.1.0").encode() == (
        b"T\x00\x00\x00\x20\x00\x01version\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
        b"D\x00\x00\x00\x1a\x00\x01\x00\x00\x00\x10pgbalancer 0.1.0"
        b"C\x00\x00\x00\x09SHOW\x00"
    )


def test_help_is_a_notice_then_show() -> None:
    kinds = [m.type for m in messages(help_response())]
    assert kinds == [b"N", b"C"]
    assert "SHOW POOL_NODES" in parse_error_fields(messages(help_response())[0].body)["D"]


# --------------------------------------------------------------------------- PgBouncer's columns


def columns(spaced_names: str) -> list[str]:
    return spaced_names.split()


PGBOUNCER_POOLS = columns(
    "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active "
    "sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode "
    "load_balance_hosts"
)
PGBOUNCER_SOCKETS = columns(
    "type user database replication state addr port local_addr local_port connect_time request_time wait "
    "wait_us close_needed ptr link remote_pid tls application_name prepared_statements id"
)
PGBOUNCER_DATABASES = columns(
    "name host port database force_user pool_size min_pool_size reserve_pool_size server_lifetime pool_mode "
    "load_balance_hosts max_connections current_connections max_client_connections "
    "current_client_connections paused disabled"
)
PGBOUNCER_STATS = columns(
    "database total_server_assignment_count total_xact_count total_query_count total_received total_sent "
    "total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count "
    "total_bind_count total_client_connect_count avg_server_assignment_count avg_xact_count avg_query_count "
    "avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time avg_client_parse_count "
    "avg_server_parse_count avg_bind_count avg_client_connect_count"
)
PGBOUNCER_STATS_TOTALS = columns(
    "database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time "
    "wait_time client_parse_count server_parse_count bind_count client_connect_count"
)
PGBOUNCER_STATS_AVERAGES = columns(
    "database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time "
    "wait_time avg_client_parse_count avg_server_parse_count avg_bind_count client_connect_count"
)
PGPOOL_POOL_NODES = columns(
    "node_id hostname port status pg_status lb_weight role pg_role select_cnt load_balance_node "
    "replication_delay replication_state replication_sync_state last_status_change"
)

POOL = PoolRow(
    "app",
    "alice",
    cl_active=2,
    cl_waiting=1,
    sv_active=2,
    sv_idle=3,
    sv_login=1,
    maxwait_us=2_500_000,
    pool_mode="session",
)


def test_show_pools_columns_types_and_values() -> None:
    columns, rows, tag = decode_result(show_pools([POOL]).encode())
    assert [name for name, _ in columns] == PGBOUNCER_POOLS
    assert {oid for name, oid in columns if name in ("database", "user", "pool_mode")} == {25}
    assert dict(columns)["cl_active"] == 23
    assert tag == "SHOW"
    row = dict(zip(PGBOUNCER_POOLS, rows[0], strict=True))
    assert row["cl_active"] == "2" and row["cl_waiting"] == "1" and row["sv_idle"] == "3"
    assert (row["maxwait"], row["maxwait_us"]) == ("2", "500000")
    assert row["load_balance_hosts"] is None


def test_show_clients_and_servers_columns_and_timestamps() -> None:
    client = ConnectionRow(
        ConnectionKind.CLIENT,
        "alice",
        "app",
        "active",
        "10.0.0.5",
        50123,
        "10.0.0.1",
        6432,
        connect_time=0.0,
        request_time=None,
        wait_us=0,
        ptr="0x1",
        link="0x2",
        remote_pid=0,
        tls="",
        application_name="psql",
        id=7,
    )
    columns, rows, _ = decode_result(show_connections([client]).encode())
    assert [name for name, _ in columns] == PGBOUNCER_SOCKETS
    row = dict(zip(PGBOUNCER_SOCKETS, rows[0], strict=True))
    assert row["type"] == "C" and row["replication"] == "none" and row["id"] == "7"
    assert row["connect_time"] == "1970-01-01 00:00:00 UTC" and row["request_time"] is None
    assert dict(columns)["connect_time"] == 25  # text, as PgBouncer sends timestamps


def test_show_databases_columns() -> None:
    database = DatabaseRow(
        "app",
        "db1",
        5432,
        pool_size=10,
        server_lifetime=0,
        current_connections=3,
        current_client_connections=4,
        paused=True,
    )
    columns, rows, _ = decode_result(show_databases([database]).encode())
    assert [name for name, _ in columns] == PGBOUNCER_DATABASES
    row = dict(zip(PGBOUNCER_DATABASES, rows[0], strict=True))
    assert row["database"] == "app" and row["paused"] == "1" and row["pool_mode"] is None


def test_stats_families_columns_and_numeric_type() -> None:
    totals = {"b": StatTotals(xact_count=4), "a": StatTotals(query_count=9, bytes_received=100)}
    averages = {"a": StatTotals(query_count=3), "b": StatTotals()}
    columns, rows, _ = decode_result(show_stats(totals, averages).encode())
    assert [name for name, _ in columns] == PGBOUNCER_STATS
    assert {oid for name, oid in columns if name != "database"} == {1700}
    assert [row[0] for row in rows] == ["a", "b"]
    a = dict(zip(PGBOUNCER_STATS, rows[0], strict=True))
    assert (a["total_query_count"], a["total_received"], a["avg_query_count"]) == ("9", "100", "3")
    assert names(show_stats_totals(totals).encode()) == PGBOUNCER_STATS_TOTALS
    assert names(show_stats_averages(averages).encode()) == PGBOUNCER_STATS_AVERAGES
    _, total_rows, _ = decode_result(show_totals(totals, averages).encode())
    assert ["total_xact_count", "4"] in total_rows and ["total_client_bytes", "100"] in total_rows


def test_show_lists_and_state() -> None:
    _, rows, _ = decode_result(show_lists({"pools": 3}).encode())
    assert rows[0] == ["databases", "0"] and ["pools", "3"] in rows and len(rows) == 14
    _, rows, _ = decode_result(show_state(paused=True).encode())
    assert rows == [["active", "no"], ["paused", "yes"], ["suspended", "no"]]


def test_show_pool_nodes_like_pgpool() -> None:
    def node(node_id: int, weight: float, role: str) -> BackendNodeRow:
        return BackendNodeRow(
            node_id,
            f"db{node_id}",
            5432,
            "up",
            "up",
            weight,
            role,
            "unknown",
            5,
            role == "primary",
            0,
            last_status_change=86400.0,
        )

    columns, rows, _ = decode_result(show_pool_nodes([node(0, 1, "primary"), node(1, 2, "standby")]).encode())
    assert [name for name, _ in columns] == PGPOOL_POOL_NODES
    assert {oid for _, oid in columns} == {25}
    first = dict(zip(PGPOOL_POOL_NODES, rows[0], strict=True))
    assert first["lb_weight"] == "0.333333" and first["load_balance_node"] == "true"
    assert first["last_status_change"] == "1970-01-02 00:00:00"
    assert rows[1][PGPOOL_POOL_NODES.index("lb_weight")] == "0.666667"


def test_show_config_redacts_secrets_and_says_what_reload_changes() -> None:
    config = parse_config_text(
        "backend_hostname0 = 'db1'\nauth_type = trust\n"
        "health_check_password = 'hunter2'\nnum_init_children = 7\n"
    )
    data = show_config(redacted_settings(config)).encode()
    assert b"hunter2" not in data
    columns, rows, _ = decode_result(data)
    assert [name for name, _ in columns] == ["key", "value", "default", "changeable"]
    by_key = {row[0]: row for row in rows}
    assert by_key["health_check_password"][1] == REDACTED
    assert by_key["num_init_children"][1:] == ["7", "32", "yes"]
    assert by_key["port"][3] == "no"
    assert by_key["backend_hostname0"][1:] == ["db1", "", "no"]
    assert by_key["load_balance_mode"][1] == "on"


# --------------------------------------------------------------------------- stats windows


def test_average_rates_per_second_and_per_event() -> None:
    older = StatTotals(xact_count=10, query_count=10, bytes_received=0, xact_time_us=1000, wait_time_us=0)
    current = StatTotals(
        server_assignment_count=4,
        xact_count=30,
        query_count=50,
        bytes_received=1000,
        xact_time_us=5000,
        query_time_us=8000,
        wait_time_us=400,
    )
    avg = average_rates(current, older, seconds=10)
    assert (avg.xact_count, avg.query_count, avg.bytes_received) == (2, 4, 100)
    assert (avg.xact_time_us, avg.query_time_us, avg.wait_time_us) == (200, 200, 100)
    assert average_rates(current, older, seconds=0) == StatTotals()


def test_stats_history_rolls_its_window_forward() -> None:
    history = StatsHistory(period=60, now=1000)
    assert history.averages(1010, {"app": StatTotals(xact_count=100)})["app"].xact_count == 10  # since start
    history.averages(1060, {"app": StatTotals(xact_count=600)})  # rolls: next window starts at 1060
    # still since 1000:
    assert history.averages(1100, {"app": StatTotals(xact_count=700)})["app"].xact_count == 7
    history.averages(1130, {"app": StatTotals(xact_count=1300)})  # rolls: window now starts at 1060
    assert history.averages(1160, {"app": StatTotals(xact_count=1600)})["app"].xact_count == 10


# --------------------------------------------------------------------------- the pause gate (pool.py)


class StandInServer:
    def __init__(self) -> None:
        self.created_at = self.last_used = trio.current_time()
        self.sessions_served = 0


def make_pool(wait_timeout: float = 60, max_size: int = 2) -> ServerPool:
    limits = PoolLimits(
        max_size=max_size, idle_timeout=0, max_sessions_per_server=0, max_age=0, wait_timeout=wait_timeout
    )
    return ServerPool(PoolKey(0, "app", "alice"), limits)


async def open_stand_in() -> StandInServer:
    return StandInServer()


async def test_acquire_waits_while_paused_and_counts_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    pool = make_pool()
    pool.pause_gate.pause("app")
    got: list[object] = []

    async def client() -> None:
        got.append(await pool.acquire(open_stand_in))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await trio.sleep(5)
        assert not got and pool.waiting_clients == 1
        assert pool.longest_wait_started() == pytest.approx(trio.current_time() - 5)
        assert pool.pause_gate.resume("app")
    assert len(got) == 1 and pool.waiting_clients == 0
    assert pool.counters.server_assignment_count == 1
    assert pool.counters.wait_time_us == pool.counters.max_wait_us == pytest.approx(5_000_000, rel=0.01)


async def test_kill_fails_the_clients_waiting_at_the_gate(autojump_clock: trio.testing.MockClock) -> None:
    pool = make_pool()
    pool.pause_gate.pause(None)
    outcome: list[BaseException] = []

    async def client() -> None:
        try:
            await pool.acquire(open_stand_in)  # type: ignore[arg-type]
        except PoolKilled as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await trio.sleep(1)
        pool.pause_gate.kill("app")
    assert len(outcome) == 1 and "KILL" in str(outcome[0])
    assert pool.pause_gate.blocks("app") and pool.waiting_clients == 0


async def test_a_pause_longer_than_query_wait_timeout_names_the_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = make_pool(wait_timeout=3)
    pool.pause_gate.pause("app")
    with pytest.raises(PoolExhausted, match="paused"):
        await pool.acquire(open_stand_in)  # type: ignore[arg-type]


async def test_other_databases_are_not_paused(autojump_clock: trio.testing.MockClock) -> None:
    pool = make_pool()
    pool.pause_gate.pause("other")
    with trio.fail_after(1):
        await pool.acquire(open_stand_in)  # type: ignore[arg-type]
    assert pool.active == 1 and pool.logging_in == 0
