"""Session state in transaction pooling: what a simple Query does to it, and how it follows the client."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.proxy.sessionstate import (
    ClientSessionState,
    CommandKind,
    SessionCommand,
    changes_settings,
    classify_session_command,
    strip_leading_comments,
    unreported_settings,
)

SET = CommandKind.SET
RESET = CommandKind.RESET
STATEFUL = CommandKind.STATEFUL
OTHER = CommandKind.OTHER


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SET work_mem = '64MB'", SessionCommand(SET, "work_mem", "'64MB'")),
        ("set Work_Mem to 64", SessionCommand(SET, "work_mem", "64")),
        ("SET SESSION work_mem = 1", SessionCommand(SET, "work_mem", "1")),
        ("SET work_mem = 1;", SessionCommand(SET, "work_mem", "1")),
        ("SET\twork_mem\nTO 2 ;  ", SessionCommand(SET, "work_mem", "2")),
        ("SET search_path TO app, public", SessionCommand(SET, "search_path", "app, public")),
        ("SET myapp.tenant = 'acme'", SessionCommand(SET, "myapp.tenant", "'acme'")),
        ("SET work_mem TO DEFAULT", SessionCommand(SET, "work_mem", "DEFAULT")),
        ("RESET work_mem", SessionCommand(RESET, "work_mem")),
        ("reset Statement_Timeout;", SessionCommand(RESET, "statement_timeout")),
        ("DISCARD ALL", SessionCommand(CommandKind.DISCARD_ALL)),
        ("discard all;", SessionCommand(CommandKind.DISCARD_ALL)),
        ("DEALLOCATE stmt1", SessionCommand(CommandKind.DEALLOCATE, "stmt1")),
        ("DEALLOCATE MyStmt", SessionCommand(CommandKind.DEALLOCATE, "mystmt")),
        ('DEALLOCATE PREPARE "Quoted"', SessionCommand(CommandKind.DEALLOCATE, "Quoted")),
        ('DEALLOCATE "a""b"', SessionCommand(CommandKind.DEALLOCATE, 'a"b')),
        ('DEALLOCATE "all"', SessionCommand(CommandKind.DEALLOCATE, "all")),
        ("DEALLOCATE ALL", SessionCommand(CommandKind.DEALLOCATE_ALL)),
        ("deallocate prepare all;", SessionCommand(CommandKind.DEALLOCATE_ALL)),
        ("-- why\nSET work_mem = 1", SessionCommand(SET, "work_mem", "1")),
        ("/* why */ SET work_mem = 1", SessionCommand(SET, "work_mem", "1")),
        ("  \n\t/* a */ -- b\n  SET work_mem = 1", SessionCommand(SET, "work_mem", "1")),
    ],
)
def test_commands_pgbalancer_acts_on(sql: str, expected: SessionCommand) -> None:
    assert classify_session_command(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SET ROLE admin",
        "SET SESSION ROLE admin",
        "SET SESSION AUTHORIZATION bob",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET TIME ZONE 'UTC'",
        "DISCARD PLANS",
        "DISCARD TEMP",
        "LISTEN jobs",
        "UNLISTEN *",
        "LOAD 'auto_explain'",
        "PREPARE q AS SELECT 1",
        "CREATE TEMP TABLE t (a int)",
        "CREATE TEMPORARY TABLE t (a int)",
        "create local temporary table t (a int)",
        "CREATE GLOBAL TEMP TABLE t (a int)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT * INTO TEMP t FROM pg_class",
        "SET a = 1; SET b = 2",
        "SELECT 1; LISTEN jobs",
        "SELECT 1;\n/* then */ SET work_mem = 1",
    ],
)
def test_state_pgbalancer_cannot_carry_marks_the_server(sql: str) -> None:
    assert classify_session_command(sql).kind is STATEFUL


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select 1; select 2",
        "UPDATE t SET a = 1",
        "SHOW work_mem",
        "BEGIN",
        "CREATE TABLE t (a int)",
        "DECLARE c CURSOR FOR SELECT 1",
        "INSERT INTO t SELECT * FROM s",
        "",
        "   ",
        "-- only a comment",
    ],
)
def test_ordinary_statements_leave_no_session_state(sql: str) -> None:
    assert classify_session_command(sql).kind is OTHER


@pytest.mark.parametrize("sql", ["RESET ALL", "RESET ROLE", "reset all;"])
def test_resets_mark_the_server(sql: str) -> None:
    assert classify_session_command(sql).kind in (RESET, STATEFUL)


@pytest.mark.parametrize(
    "sql",
    [
        "SET LOCAL work_mem = 1",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
    ],
)
def test_transaction_scoped_settings_are_never_replayed(sql: str) -> None:
    assert classify_session_command(sql).kind is not SET


def test_set_after_a_nested_block_comment_is_not_ordinary() -> None:
    assert (
        classify_session_command("/* outer /* inner */ still comment */ SET work_mem = 1").kind is not OTHER
    )


def test_create_or_replace_temp_view_marks_the_server() -> None:
    assert classify_session_command("CREATE OR REPLACE TEMP VIEW v AS SELECT 1").kind is STATEFUL


def test_leading_comments_are_stripped() -> None:
    assert strip_leading_comments("-- a\n/* b\n */  SELECT 1 -- c") == "SELECT 1 -- c"
    assert strip_leading_comments("/* never closed SELECT 1") == ""  # all comment: the server rejects it
    assert strip_leading_comments("/* a /* nested */ still comment */ SET x = 1") == "SET x = 1"


@pytest.mark.parametrize(
    "sql",
    [
        # Sized so that the cubic/quadratic patterns first used here took 1-6 s of CPU.
        "SET a = x" + " " * 1_300 + "y",
        "DEALLOCATE x" + " " * 32_000 + "y",
        "DEALLOCATE ALL" + " " * 32_000 + "y",
        "RESET x" + " " * 32_000 + "y",
        "DISCARD ALL" + " " * 32_000 + "y",
        "-- c\n" * 50_000 + "SET a = 1",
        "declare " + "with " * 50_000,
        "SELECT 1" + " ;" * 50_000,
    ],
    ids=["set", "deallocate", "deallocate-all", "reset", "discard-all", "comments", "declare", "semicolons"],
)
def test_classification_time_grows_linearly_with_blank_runs(sql: str) -> None:
    # A client controls this text and classification runs on the event loop: a backtracking
    # pattern (a '\s*;?\s*\Z' tail: 1000 blanks took 3 s, 4000 blanks 160 s) stalls every client.
    started = time.process_time()  # CPU time: the load of other processes does not count
    classify_session_command(sql)
    assert time.process_time() - started < 0.25


@given(st.text())
def test_classification_never_raises_on_arbitrary_text(sql: str) -> None:
    command = classify_session_command(sql)
    assert isinstance(command.kind, CommandKind)
    if command.kind in (SET, RESET, CommandKind.DEALLOCATE):
        assert command.name


_FRAGMENTS = [
    "SET", "set", "RESET", "ALL", "DISCARD", "DEALLOCATE", "PREPARE", "LOCAL", "SESSION", "ROLE", "TO",
    "CREATE", "TEMP", "select", "into", "with hold", "declare", "listen", "work_mem", "x.y", "=", ";",
    " ", "\n", "--", "/*", "*/", "'", '"', "é",
]  # fmt: skip


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=20).map("".join))
def test_classification_never_raises_on_keyword_soup(sql: str) -> None:
    assert isinstance(classify_session_command(sql), SessionCommand)


@given(
    st.lists(st.sampled_from(_FRAGMENTS), max_size=20).map("".join),
    st.sampled_from(["-- c\n", "/* c */", " \n"]),
)
def test_leading_comments_never_change_the_classification(sql: str, comment: str) -> None:
    assert classify_session_command(comment + sql) == classify_session_command(sql)


# --------------------------------------------------------------------------- ClientSessionState


def test_only_tracked_reported_settings_are_kept() -> None:
    state = ClientSessionState({"TimeZone": "UTC", "server_version": "15.4", "DateStyle": "ISO, MDY"}, {})
    assert state.reported == {"TimeZone": "UTC", "DateStyle": "ISO, MDY"}


def test_parameter_status_updates_a_tracked_setting_under_its_canonical_name() -> None:
    state = ClientSessionState({"TimeZone": "UTC"}, {})
    before = state.fingerprint
    state.note_parameter_status("timezone", "Asia/Tokyo")
    assert state.reported == {"TimeZone": "Asia/Tokyo"}
    assert state.fingerprint != before


def test_a_server_that_already_matches_needs_nothing() -> None:
    state = ClientSessionState({"TimeZone": "UTC", "DateStyle": "ISO, MDY"}, {})
    assert state.statements_for({"TimeZone": "UTC", "DateStyle": "ISO, MDY"}) == ("", False)


def test_only_reported_settings_that_differ_are_set_with_set_config() -> None:
    state = ClientSessionState({"TimeZone": "UTC", "DateStyle": "ISO, MDY"}, {})
    sql, leftover = state.statements_for({"timezone": "UTC", "datestyle": "SQL, DMY"})
    assert sql == "SELECT pg_catalog.set_config(E'DateStyle', E'ISO, MDY', false)"
    assert not leftover


def test_values_are_quoted_as_literals() -> None:
    state = ClientSessionState({"application_name": "it's a \\ test"}, {})
    assert state.statements_for({}) == (
        "SELECT pg_catalog.set_config(E'application_name', E'it''s a \\\\ test', false)",
        False,
    )


def test_startup_settings_are_always_applied_and_flag_leftover_state() -> None:
    state = ClientSessionState({}, {"work_mem": "8MB"})
    assert state.statements_for({"TimeZone": "UTC"}) == (
        "SELECT pg_catalog.set_config(E'work_mem', E'8MB', false)",
        True,
    )


def test_the_servers_account_of_session_settings_overrides_startup_ones() -> None:
    state = ClientSessionState({}, {"work_mem": "8MB", "search_path": "a, b"})
    state.adopt_session_settings([("work_mem", "1MB"), ("TimeZone", "UTC")], {"TimeZone": "UTC"})
    sql, leftover = state.statements_for({"TimeZone": "UTC"})
    # TimeZone is reported by the server, so it is tracked by ParameterStatus, not replayed here.
    assert sql == (
        "SELECT pg_catalog.set_config(E'work_mem', E'1MB', false), "
        "pg_catalog.set_config(E'search_path', E'a, b', false)"
    )
    assert leftover


def test_a_reset_to_the_startup_value_is_what_the_server_reports() -> None:
    # After RESET work_mem the server no longer lists work_mem as a session setting.
    state = ClientSessionState({}, {"work_mem": "8MB"})
    state.adopt_session_settings([("work_mem", "1MB")], {})
    state.adopt_session_settings([], {})
    assert state.statements_for({}) == ("SELECT pg_catalog.set_config(E'work_mem', E'8MB', false)", True)


def test_discard_all_returns_to_the_startup_settings() -> None:
    state = ClientSessionState({}, {"work_mem": "8MB"})
    state.adopt_session_settings([("statement_timeout", "5s")], {})
    before = state.fingerprint
    state.forget_session_settings()
    assert state.statements_for({}) == ("SELECT pg_catalog.set_config(E'work_mem', E'8MB', false)", True)
    assert state.fingerprint != before


def test_settings_changing_commands_ask_the_server() -> None:
    for sql in ("SET work_mem = 1", "RESET work_mem", "RESET ALL", "DISCARD ALL", "LISTEN x"):
        assert changes_settings(classify_session_command(sql)), sql
    for sql in ("SELECT 1", "DEALLOCATE x", "BEGIN"):
        assert not changes_settings(classify_session_command(sql)), sql


def test_unreported_settings_are_those_the_server_does_not_report() -> None:
    settings = {"application_name": "app", "work_mem": "8MB", "DateStyle": "ISO"}
    server = {"application_name": "x", "datestyle": "ISO, MDY"}
    assert unreported_settings(settings, server) == {"work_mem": "8MB"}
