"""Pure startup decisions: which settings a client asked for, the SETs to apply, what to refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.messages import PROTOCOL_VERSION_3, StartupMessage
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
