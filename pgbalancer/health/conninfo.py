"""libpq connection strings (primary_conninfo) read and rewritten for re-pointing standbys.

Handles both the keyword form (``host=db1 port=5432 user='rep user'``) and URIs
(``postgresql://user@db1:5432/db?application_name=x``). Pure: no I/O; it never drops a
setting it does not understand, so a re-pointed standby keeps its user, passfile, TLS
options and the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

_URI_PREFIXES = ("postgresql://", "postgres://")
_KEY_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_PLAIN_VALUE_RE = re.compile(r"[^\s']*")
DEFAULT_PORT = 5432


class ConninfoError(ValueError):
    """The connection string cannot be parsed; the message says where."""


def parse_conninfo(text: str) -> dict[str, str]:
    """The settings of a connection string, in order (a URI's host, port, user, dbname included)."""
    if text.strip().startswith(_URI_PREFIXES):
        return _parse_uri(text.strip())
    settings: dict[str, str] = {}
    position = 0
    while text[position:].strip():
        match = _KEY_RE.match(text, position)
        if match is None:
            where = len(text) - len(text[position:].lstrip()) + 1
            raise ConninfoError(f"expected key=value at character {where} of the connection string")
        key, position = match.group(1), match.end()
        value, position = _read_value(text, position)
        settings[key] = value
    return settings


def _read_value(text: str, position: int) -> tuple[str, int]:
    if position < len(text) and text[position] == "'":
        chars: list[str] = []
        position += 1
        while position < len(text):
            char = text[position]
            if char == "\\" and position + 1 < len(text):
                chars.append(text[position + 1])
                position += 2
                continue
            if char == "'":
                return "".join(chars), position + 1
            chars.append(char)
            position += 1
        raise ConninfoError("unterminated quoted value in the connection string")
    match = _PLAIN_VALUE_RE.match(text, position)
    assert match is not None  # the pattern matches the empty string too
    return match.group(0), match.end()


def _parse_uri(text: str) -> dict[str, str]:
    parts = urlsplit(text)
    settings: dict[str, str] = {}
    if parts.hostname:
        settings["host"] = unquote(parts.hostname)
    if parts.port is not None:
        settings["port"] = str(parts.port)
    if parts.username:
        settings["user"] = unquote(parts.username)
    if parts.password:
        settings["password"] = unquote(parts.password)
    if parts.path.strip("/"):
        settings["dbname"] = unquote(parts.path.strip("/"))
    settings.update(parse_qsl(parts.query, keep_blank_values=True))
    return settings


def render_conninfo(settings: Mapping[str, str]) -> str:
    """The keyword form, every value quoted so spaces, quotes and backslashes survive."""
    return " ".join(f"{key}={_quote(value)}" for key, value in settings.items())


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def retarget(text: str, host: str, port: int, *, drop: Iterable[str] = ()) -> str:
    """The same connection string pointed at ``host``:``port`` (hostaddr removed: it would win)."""
    settings = parse_conninfo(text) if text.strip() else {}
    for key in ("hostaddr", *drop):
        settings.pop(key, None)
    settings = {
        "host": host,
        "port": str(port),
        **{k: v for k, v in settings.items() if k not in ("host", "port")},
    }
    return render_conninfo(settings)


def target_of(text: str) -> str | None:
    """``host:port`` a connection string names (None when it names no host, or cannot be parsed)."""
    try:
        settings = parse_conninfo(text)
    except ConninfoError:
        return None
    host = settings.get("host") or settings.get("hostaddr")
    if not host:
        return None
    return f"{host}:{settings.get('port') or DEFAULT_PORT}"
