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
import itertools
import re
from collections.abc import Iterable, Mapping
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
_identities = itertools.count(1)

_BLANKS = re.compile(r"\s*")
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
_TRACKED_COMMAND_WORDS = frozenset({"set", "reset", "deallocate", "discard"})  # what _SET.. can match
_STATEFUL = re.compile(
    r"(?:set|reset|listen|unlisten|prepare|deallocate|load|discard"
    r"|create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?(?:temp|temporary)\b"
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
    """``sql`` without leading blanks, ``--`` comments and (nested) ``/* */`` comments."""
    if sql[:1].isalpha():  # the usual case: nothing to strip
        return sql
    position, size = 0, len(sql)
    while position < size:
        position = _BLANKS.match(sql, position).end()  # type: ignore[union-attr]  # always matches
        if sql.startswith("--", position):
            line_end = sql.find("\n", position)
            position = size if line_end < 0 else line_end + 1
        elif sql.startswith("/*", position):
            position = _end_of_block_comment(sql, position)
        else:
            break
    return sql[position:]


def _end_of_block_comment(sql: str, start: int) -> int:
    """Index after the block comment opening at ``start``; PostgreSQL's block comments nest.

    The next opener and closer are looked up once each and reused until passed, so the scan
    stays linear however the comment is built."""
    depth, position = 0, start
    next_open, next_close = sql.find("/*", position), sql.find("*/", position + 2)
    while True:
        if next_close < 0:
            return len(sql)  # unterminated: the rest is comment
        if 0 <= next_open < next_close:
            depth += 1
            position = next_open + 2
            next_open = sql.find("/*", position)
        else:
            depth -= 1
            position = next_close + 2
            if depth == 0:
                return position
            next_close = sql.find("*/", position)
            if next_open < position:
                next_open = sql.find("/*", position)


def classify_session_command(sql: str) -> SessionCommand:
    """What a simple Query does to session state (conservative: unsure means STATEFUL)."""
    body = _without_terminator(strip_leading_comments(sql))
    if ";" in body:  # several statements: any of them may leave state behind
        return SessionCommand(CommandKind.STATEFUL) if _mentions_state(body) else _OTHER
    word = _FIRST_WORD.match(body)
    first = word.group(0).lower() if word is not None else ""
    if first not in _STATE_KEYWORDS:
        return _OTHER
    command = _single_statement_command(body) if first in _TRACKED_COMMAND_WORDS else None
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
    """What one client has set up for its session, independent of any server connection.

    Three layers, applied in this order on whichever server the client lands on:
    the settings the server reports (ParameterStatus), the settings from the client's
    startup packet, and the session-level settings the server itself reported holding
    after the client last changed any (``pg_settings`` with source ``session``). Asking
    the server, rather than replaying the client's SET text, gets failed SETs, rolled-back
    transactions, RESET to the startup value and trailing comments right.
    """

    def __init__(self, reported: Mapping[str, str], unreported: Mapping[str, str]) -> None:
        self.identity = next(_identities)
        self.version = 0  # bumped on every change, so servers can tell they are still aligned
        self.reported = {name: value for name, value in reported.items() if name.lower() in _TRACKED_LOWER}
        self.startup = dict(unreported)
        self.session: dict[str, str] = {}

    @property
    def fingerprint(self) -> tuple[int, int]:
        """Which client, in which version of its settings."""
        return self.identity, self.version

    def note_parameter_status(self, name: str, value: str) -> None:
        if name.lower() in _TRACKED_LOWER:
            canonical = _TRACKED_LOWER[name.lower()]
            if self.reported.get(canonical) != value:
                self.reported[canonical] = value
                self.version += 1

    def adopt_session_settings(
        self, settings: Iterable[tuple[str, str]], server_parameters: Mapping[str, str]
    ) -> None:
        """Take the server's word for the client's session-level settings (reported ones aside)."""
        reported = {name.lower() for name in server_parameters}
        self.session = {name: value for name, value in settings if name.lower() not in reported}
        self.version += 1

    def forget_session_settings(self) -> None:
        """DISCARD ALL: back to the startup settings."""
        self.session.clear()
        self.version += 1

    def statements_for(self, server_parameters: Mapping[str, str]) -> tuple[str, bool]:
        """(SQL making a server match this client, whether it leaves unreported state behind)."""
        current = {name.lower(): value for name, value in server_parameters.items()}
        pairs = [(name, value) for name, value in self.reported.items() if current.get(name.lower()) != value]
        unreported = {**self.startup, **self.session}
        pairs += unreported.items()
        if not pairs:
            return "", False
        # set_config parses a value like postgresql.conf does, so list values survive the trip.
        calls = ", ".join(
            f"pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"
            for name, value in pairs
        )
        return f"SELECT {calls}", bool(unreported)


SESSION_SETTINGS_QUERY = (
    "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'"
)


def changes_settings(command: SessionCommand) -> bool:
    """Whether, after this command, the server should be asked which settings the session holds."""
    return command.kind in (CommandKind.SET, CommandKind.RESET, CommandKind.DISCARD_ALL, CommandKind.STATEFUL)


def unreported_settings(settings: Mapping[str, str], server_parameters: Mapping[str, str]) -> dict[str, str]:
    """The settings this server does not report back, so only pgbalancer can carry them over."""
    reported = {name.lower() for name in server_parameters}
    return {name: value for name, value in settings.items() if name.lower() not in reported}
