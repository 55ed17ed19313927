"""Pure session decisions: startup settings, the SETs to apply, what to refuse, SQL classification."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.messages import PROTOCOL_VERSION_3, StartupMessage
from pgbalancer.proxy.sessionstate import CommandKind, classify_session_command
from pgbalancer.proxy.startup import (
    StartupSettingsError,
    quote_literal,
    settings_to_apply,
    startup_rejection,
    startup_settings,
)


def test_settings_exclude_identity_keys_and_expand_options() -> None:
    parameters = {
        "user": "alice",
        "database": "app",
        "application_name": "psql",
        "DateStyle": "ISO, DMY",
        "options": r"-c search_path=a\ b --statement-timeout=5s -cwork_mem=4MB",
    }
    assert startup_settings(parameters) == {
        "application_name": "psql",
        "datestyle": "ISO, DMY",
        "search_path": "a b",
        "statement_timeout": "5s",
        "work_mem": "4MB",
    }


def test_reported_settings_that_already_match_are_not_set_again() -> None:
    wanted = {"application_name": "psql", "datestyle": "ISO, MDY", "work_mem": "4MB"}
    server = {"application_name": "psql", "DateStyle": "ISO, DMY"}
    assert settings_to_apply(wanted, server) == "SET datestyle TO E'ISO, MDY'; SET work_mem TO E'4MB'"
    assert settings_to_apply({"application_name": "psql"}, server) == ""


def test_quote_literal_escapes_quotes_and_backslashes() -> None:
    assert quote_literal("it's a \\ path") == "E'it''s a \\\\ path'"


@pytest.mark.parametrize(
    "parameters",
    [
        {"user": "a", "bad name;drop": "x"},
        {"user": "a", "options": "-d 5"},
        {"user": "a", "options": "-c novalue"},
    ],
)
def test_unsafe_or_unsupported_settings_are_rejected(parameters: dict[str, str]) -> None:
    with pytest.raises(StartupSettingsError):
        startup_settings(parameters)
    rejection = startup_rejection(StartupMessage(PROTOCOL_VERSION_3, parameters))
    assert rejection is not None and rejection[0] == "0A000"


def test_replication_connections_are_refused() -> None:
    startup = StartupMessage(PROTOCOL_VERSION_3, {"user": "a", "replication": "database"})
    rejection = startup_rejection(startup)
    assert rejection is not None
    assert "replication connections are not supported" in rejection[1]
    assert startup_rejection(StartupMessage(PROTOCOL_VERSION_3, {"user": "a", "replication": "off"})) is None


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=6))
def test_any_parameters_either_parse_to_safe_names_or_raise_our_error(parameters: dict[str, str]) -> None:
    try:
        settings = startup_settings(parameters)
    except StartupSettingsError:
        return
    sql = settings_to_apply(settings, {})
    for name in settings:
        assert name.replace("_", "").replace(".", "").replace("$", "").isalnum()
        assert f"SET {name} TO E'" in sql


def test_session_classifier_is_linear_on_hostile_statements() -> None:
    """Long blank runs once made optional regex tails backtrack quadratically (a DoS on the loop)."""
    blanks = " " * 200_000
    hostile = [
        f"SET a = x{blanks}y",
        f"DEALLOCATE x{blanks}y",
        f"RESET x{blanks}y",
        f"set {blanks}a{blanks}={blanks}",
    ]
    started = time.process_time()
    for sql in hostile:
        classify_session_command(sql)
    assert time.process_time() - started < 2.0  # quadratic behaviour took minutes here


def test_a_set_hidden_after_another_statement_is_still_seen() -> None:
    assert classify_session_command("UPDATE t SET x = 1; SET work_mem = '1GB'").kind is CommandKind.STATEFUL
    assert classify_session_command("RESET ALL").kind is CommandKind.RESET
