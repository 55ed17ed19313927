"""Session state a client builds up, and what transaction pooling must do about it (pure).

A client in transaction pooling shares server connections, so session-level state must
neither leak to the next client nor vanish for this one:

* settings the server reports (ParameterStatus: client_encoding, DateStyle, TimeZone,
  standard_conforming_strings, application_name, search_path, IntervalStyle, …) are
  tracked and re-applied with SET on whichever server the client lands on;
* other ``SET name = value`` commands are remembered and re-applied, and the server that
  ran them is reset before it returns to the pool;
* commands that create state pgbalancer cannot carry over (LISTEN, CREATE TEMP, SQL
  PREPARE, SET ROLE, …) mark the server dirty so it is reset before reuse;
* ``DEALLOCATE``/``DEALLOCATE ALL``/``DISCARD ALL`` act on the client's protocol-level
  statements and are answered by pgbalancer.

Classification looks only at leading keywords after comments; it never executes SQL.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pgbalancer.proxy.startup import quote_literal

# ParameterStatus settings a client's session carries from server to server.
TRACKED_PARAMETERS = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "search_path",
    "IntervalStyle",
)
_TRACKED_LOWER = {name.lower(): name for name in TRACKED_PARAMETERS}

_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_SET = re.compile(
    r"set\s+(?:session\s+)?(?!local\b|transaction\b|role\b|session\s+authorization\b|constraints\b)"
    r"([a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?)\s*(?:=|\bto\b)\s*(.+)\Z",
    re.IGNORECASE | re.DOTALL,
)
_RESET = re.compile(r"reset\s+([a-z_][a-z0-9_$.]*)\Z", re.IGNORECASE)
_DEALLOCATE = re.compile(
    r"deallocate\s+(?:prepare\s+)?(\"(?:[^\"]|\"\")+\"|[a-z_][a-z0-9_$]*)\Z", re.IGNORECASE
)
_DEALLOCATE_ALL = re.compile(r"deallocate\s+(?:prepare\s+)?all\Z", re.IGNORECASE)
_DISCARD_ALL = re.compile(r"discard\s+all\Z", re.IGNORECASE)
_FIRST_WORD = re.compile(r"[a-z]+", re.IGNORECASE)
_STATE_KEYWORDS = frozenset(
    {
        "set",
        "reset",
        "listen",
        "unlisten",
        "prepare",
        "load",
        "discard",
        "deallocate",
        "create",
        "declare",
        "select",
    }
)
_STATEFUL = re.compile(
    r"(?:set|reset|listen|unlisten|prepare|load|discard|create\s+(?:(?:global|local)\s+)?(?:temp|temporary)\b"
    r"|declare\b.*\bwith\s+hold\b|select\b.*\binto\s+(?:temp|temporary)\b)",
    re.IGNORECASE | re.DOTALL,
)


class CommandKind(enum.Enum):
    OTHER = "other"
    SET = "set"
    RESET = "reset"
    STATEFUL = "stateful"  # creates state the pooler cannot carry: the server needs a reset
    DEALLOCATE = "deallocate"
    DEALLOCATE_ALL = "deallocate all"
    DISCARD_ALL = "discard all"


@dataclass(frozen=True, slots=True)
class SessionCommand:
    kind: CommandKind
    name: str = ""  # lower-cased setting name, or the statement name for DEALLOCATE
    value_sql: str = ""  # the value exactly as the client wrote it


_OTHER = SessionCommand(CommandKind.OTHER)


def strip_leading_comments(sql: str) -> str:
    return sql[_COMMENTS.match(sql).end() :]  # type: ignore[union-attr]  # the pattern always matches


def classify_session_command(sql: str) -> SessionCommand:
    """What a simple Query does to session state (conservative: unsure means STATEFUL)."""
    body = _without_terminator(strip_leading_comments(sql))
    if ";" in body:  # several statements: any of them may leave state behind
        return SessionCommand(CommandKind.STATEFUL) if _mentions_state(body) else _OTHER
    word = _FIRST_WORD.match(body)
    if word is None or word.group(0).lower() not in _STATE_KEYWORDS:
        return _OTHER
    command = _single_statement_command(body)
    if command is not None:
        return command
    return SessionCommand(CommandKind.STATEFUL) if _STATEFUL.match(body) else _OTHER


def _without_terminator(text: str) -> str:
    r"""The statement without trailing blanks and one trailing ';' (done here, not in the
    patterns: optional tails like ``\s*;?\s*\Z`` backtrack quadratically on long blanks)."""
    text = text.rstrip()
    return text[:-1].rstrip() if text.endswith(";") else text


def _single_statement_command(text: str) -> SessionCommand | None:
    if match := _SET.match(text):
        return SessionCommand(CommandKind.SET, match.group(1).lower(), match.group(2))
    if _DISCARD_ALL.match(text):
        return SessionCommand(CommandKind.DISCARD_ALL)
    if _DEALLOCATE_ALL.match(text):
        return SessionCommand(CommandKind.DEALLOCATE_ALL)
    if match := _DEALLOCATE.match(text):
        name = match.group(1)
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
        return SessionCommand(CommandKind.DEALLOCATE, name)
    if match := _RESET.match(text):  # including RESET ALL (name "all")
        return SessionCommand(CommandKind.RESET, match.group(1).lower())
    return None


def _mentions_state(text: str) -> bool:
    return any(_STATEFUL.match(strip_leading_comments(part)) for part in text.split(";"))


class ClientSessionState:
    """What one client has set up for its session, independent of any server connection."""

    def __init__(self, reported: Mapping[str, str], unreported: Mapping[str, str]) -> None:
        self.reported = {name: value for name, value in reported.items() if name.lower() in _TRACKED_LOWER}
        self.unreported_sql = {name: quote_literal(value) for name, value in unreported.items()}

    def note_parameter_status(self, name: str, value: str) -> None:
        if name.lower() in _TRACKED_LOWER:
            self.reported[_TRACKED_LOWER[name.lower()]] = value

    def apply(self, command: SessionCommand, *, server_reports: Mapping[str, str]) -> None:
        """Remember a SET/RESET/DISCARD ALL; settings the server reports arrive by ParameterStatus."""
        reported = {name.lower() for name in server_reports}
        if command.kind is CommandKind.SET and command.name not in reported:
            self.unreported_sql[command.name] = command.value_sql
        elif command.kind is CommandKind.RESET and command.name == "all":
            self.unreported_sql.clear()
        elif command.kind is CommandKind.RESET:
            self.unreported_sql.pop(command.name, None)
        elif command.kind is CommandKind.DISCARD_ALL:
            self.unreported_sql.clear()

    def statements_for(self, server_parameters: Mapping[str, str]) -> tuple[str, bool]:
        """(SQL making a server match this client, whether it leaves unreported state behind)."""
        current = {name.lower(): value for name, value in server_parameters.items()}
        statements = [
            f"SET {name} TO {quote_literal(value)}"
            for name, value in self.reported.items()
            if current.get(name.lower()) != value
        ]
        statements += [f"SET {name} TO {value_sql}" for name, value_sql in self.unreported_sql.items()]
        return "; ".join(statements), bool(self.unreported_sql)


def unreported_settings(settings: Mapping[str, str], server_parameters: Mapping[str, str]) -> dict[str, str]:
    """The settings this server does not report back, so only pgbalancer can carry them over."""
    reported = {name.lower() for name in server_parameters}
    return {name: value for name, value in settings.items() if name.lower() not in reported}
