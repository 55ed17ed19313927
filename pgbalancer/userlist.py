"""Reader of the client auth file (``auth_file``), in PgBouncer's ``userlist.txt`` format.

Role: turn the text of an auth file into ``{user name: password}``. Each entry is one line
``"username" "password"``; the password is plaintext, an ``md5…`` hash or a ``SCRAM-SHA-256$…``
verifier, exactly as PgBouncer reads it. A double quote inside a field is doubled (``""``). Blank
lines and lines starting with ``;`` or ``#`` are ignored, and so is anything after the password.
Every problem in the file is collected and reported at once, with ``file:line`` and the fix.

It must never: put a password, or any part of one, in an error message or a repr (``Userlist``
hides them); verify a password (``pgbalancer.pgwire`` does SCRAM and MD5); import trio or touch
sockets. Only ``load_userlist`` reads a file; ``parse_userlist`` is pure.
"""

import base64
import binascii
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

SCRAM_PREFIX = "SCRAM-SHA-256$"

# PostgreSQL's md5 hash: "md5" + md5(password + username) in lower-case hex.
_MD5_HASH_RE = re.compile(r"md5[0-9a-f]{32}")
# SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in pg_authid.rolpassword.
_SCRAM_RE = re.compile(r"SCRAM-SHA-256\$([0-9]{1,10}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")
_SHA256_DIGEST_SIZE = 32
_MAX_NAME_SHOWN = 40


class PasswordKind(StrEnum):
    """How a userlist password is stored, which decides the auth methods it can serve."""

    PLAINTEXT = "plaintext"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"


class UserlistError(Exception):
    """The auth file cannot be used. ``errors`` holds one message per problem (file:line, what, fix)."""

    def __init__(self, errors: Iterable[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class Userlist(dict[str, str]):
    """``{user name: password}`` whose repr names the users but never shows a password."""

    def __repr__(self) -> str:
        return f"Userlist(users={sorted(self)!r}, passwords hidden)"


class LineProblem(Exception):
    """What is wrong with one line, already phrased with its fix; never contains a password."""


_USERLIST_ENTRY = '"username" "password"'


def password_kind(password: str) -> PasswordKind:
    """Classify a stored password the way PgBouncer does: md5 hash, SCRAM verifier, or plaintext."""
    if _MD5_HASH_RE.fullmatch(password):
        return PasswordKind.MD5
    if password.startswith(SCRAM_PREFIX):
        return PasswordKind.SCRAM_SHA_256
    return PasswordKind.PLAINTEXT


def parse_userlist(text: str, source: str = "userlist.txt") -> Userlist:
    """Parse auth file text; raise UserlistError listing every bad line (no password is ever shown)."""
    users = Userlist()
    first_line_of: dict[str, int] = {}
    errors: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            entry = _parse_line(line.removesuffix("\r"))
        except LineProblem as problem:
            errors.append(f"{source}:{number}: {problem}")
            continue
        if entry is None:
            continue
        user, password = entry
        if user in first_line_of:
            errors.append(
                f"{source}:{number}: user {_show_name(user)} is already listed on line "
                f"{first_line_of[user]}; keep only one entry per user"
            )
            continue
        first_line_of[user] = number
        users[user] = password
    if errors:
        raise UserlistError(errors)
    return users


def load_userlist(path: Path | str) -> Userlist:
    """Read and parse an auth file; a missing or unreadable file is a UserlistError naming the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserlistError(
            f"{path}: cannot read the auth file ({reason}); create it, make it readable by the "
            "pgbalancer process, or point auth_file at the right file"
        ) from None
    except UnicodeDecodeError as exc:
        raise UserlistError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save the auth file as UTF-8"
        ) from None
    return parse_userlist(text, source=str(path))


def _parse_line(line: str) -> tuple[str, str] | None:
    """The (user, password) of one line, None for a blank or comment line."""
    stripped = line.strip()
    if not stripped or stripped[0] in ";#":
        return None
    user, position = read_quoted_field(line, 0, "user name")
    if not user:
        raise LineProblem('the user name is empty; write the entry as "username" "password"')
    if position < len(line) and not line[position].isspace():
        raise LineProblem(
            f"no space after the user name {_show_name(user)}; separate the fields with a space: "
            '"username" "password" (write a double quote inside a field as "")'
        )
    password, _ = read_quoted_field(line, position, "password")
    _check_password_shape(user, password)
    return user, password


def read_quoted_field(
    line: str, position: int, what: str, entry_form: str = _USERLIST_ENTRY
) -> tuple[str, int]:
    """Read one double-quoted field ("" inside is a quote) at or after position; its text and end.

    Shared by every file in PgBouncer's quoted-field format (auth_file, api_user_file,
    mqtt_user_file); ``entry_form`` is how a whole line of that file should look, for the message.
    Raises :class:`LineProblem`.
    """
    while position < len(line) and line[position].isspace():
        position += 1
    if position >= len(line) or line[position] != '"':
        raise LineProblem(
            f"expected the {what} in double quotes; write the entry as {entry_form} "
            "(lines starting with ; or # are comments)"
        )
    chunks: list[str] = []
    position += 1
    while True:
        closing = line.find('"', position)
        if closing < 0:
            raise LineProblem(
                f'the {what} has no closing double quote; end it with " and write a double quote '
                'inside it as ""'
            )
        chunks.append(line[position:closing])
        if line.startswith('""', closing):
            chunks.append('"')
            position = closing + 2
            continue
        return "".join(chunks), closing + 1


def _check_password_shape(user: str, password: str) -> None:
    """Refuse a SCRAM verifier that would silently be taken as a plaintext password."""
    if password_kind(password) is PasswordKind.SCRAM_SHA_256 and not _is_valid_scram_verifier(password):
        raise LineProblem(
            f"the password of user {_show_name(user)} starts with {SCRAM_PREFIX} but is not a valid "
            f"verifier ({SCRAM_PREFIX}<iterations>:<salt>$<StoredKey>:<ServerKey>); copy it again from "
            "pg_authid.rolpassword, or write the plaintext password instead"
        )


def _is_valid_scram_verifier(verifier: str) -> bool:
    match = _SCRAM_RE.fullmatch(verifier)
    if match is None or int(match[1]) < 1:
        return False
    try:
        salt, stored_key, server_key = (base64.b64decode(part, validate=True) for part in match.groups()[1:])
    except (binascii.Error, ValueError):
        return False
    return bool(salt) and len(stored_key) == len(server_key) == _SHA256_DIGEST_SIZE


def _show_name(name: str) -> str:
    """A user name fit for a message: quoted, printable, and short."""
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in name[:_MAX_NAME_SHOWN])
    return repr(shown + ("…" if len(name) > _MAX_NAME_SHOWN else ""))
