"""Pure decisions about a client's StartupMessage: what to refuse and which settings to apply.

A pooled server connection was opened with only user and database; the client's own
startup settings (application_name, DateStyle, ``options=-c …``) are applied with SET
when it is handed over. Names are checked so nothing but a setting name reaches SQL.
This module performs no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pgbalancer.pgwire.errors import SqlState
from pgbalancer.pgwire.messages import StartupMessage

# Startup keys that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})
# Settings the server reports through ParameterStatus (PostgreSQL 15's GUC_REPORT list):
# for these the connection's current value is known, so SET is skipped when equal.
_REPORTED = frozenset(
    name.lower()
    for name in (
        "application_name",
        "client_encoding",
        "DateStyle",
        "default_transaction_read_only",
        "in_hot_standby",
        "integer_datetimes",
        "IntervalStyle",
        "is_superuser",
        "server_encoding",
        "server_version",
        "session_authorization",
        "standard_conforming_strings",
        "TimeZone",
    )
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


class StartupSettingsError(ValueError):
    """A startup setting cannot be applied; the message is safe to show the client."""


def startup_rejection(startup: StartupMessage) -> tuple[str, str] | None:
    """(SQLSTATE, message) if pgbalancer must refuse this startup, else None."""
    replication = startup.parameters.get("replication", "false").lower()
    if replication not in ("false", "off", "no", "0"):
        return (
            SqlState.FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgbalancer; connect to the server directly",
        )
    try:
        startup_settings(startup.parameters)
    except StartupSettingsError as exc:
        return SqlState.FEATURE_NOT_SUPPORTED, str(exc)
    return None


def startup_settings(parameters: Mapping[str, str]) -> dict[str, str]:
    """The settings a client asked for at startup, lower-cased names, ``options`` expanded."""
    settings: dict[str, str] = {}
    for name, value in parameters.items():
        if name in _NOT_SETTINGS or name.startswith("_pq_."):
            continue
        settings[_checked_name(name)] = value
    for name, value in _parse_options(parameters.get("options", "")):
        settings[_checked_name(name)] = value
    return settings


def settings_to_apply(wanted: Mapping[str, str], server_parameters: Mapping[str, str]) -> str:
    """One simple-query string of SETs that makes the server match ``wanted`` ('' if none needed)."""
    current = {name.lower(): value for name, value in server_parameters.items()}
    statements = [
        f"SET {name} TO {quote_literal(value)}"
        for name, value in wanted.items()
        if not (name in _REPORTED and current.get(name) == value)
    ]
    return "; ".join(statements)


def quote_literal(value: str) -> str:
    """An E'' literal that means ``value`` whatever standard_conforming_strings is."""
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"E'{escaped}'"


def _checked_name(name: str) -> str:
    if not _SETTING_NAME.match(name):
        raise StartupSettingsError(f"invalid setting name {name!r} in startup packet")
    return name.lower()


def _parse_options(options: str) -> list[tuple[str, str]]:
    """Split libpq ``options`` like the server does: ``-c name=value`` and ``--name=value``."""
    words = _split_words(options)
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "-c" and index < len(words):
            assignment = words[index]
            index += 1
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            assignment = word[2:]
        else:
            raise StartupSettingsError(
                f"unsupported startup option {word!r}; pgbalancer accepts only '-c name=value' in options"
            )
        name, separator, value = assignment.partition("=")
        if not separator:
            raise StartupSettingsError(f"startup option {assignment!r} needs the form name=value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def _split_words(text: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words
