"""REST API users: the ``api_user_file`` format, roles, and password checks.

Role: turn ``"name" "password-or-verifier" "role"`` lines into :class:`ApiUsers`, and check a
presented password against the stored secret the way PostgreSQL would: a SCRAM-SHA-256 verifier is
recomputed from the password with the verifier's own salt and iteration count, an md5 entry is
``md5(password + name)``, and a plaintext entry is compared as it is (development only).

It must never: put a password or verifier in a message, a repr or a log line; compare secrets with
``==`` (``hmac.compare_digest`` only); tell a missing user apart from a wrong password (both cost one
PBKDF2 and answer False); import trio or touch sockets. Only ``load_api_users`` reads a file.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from pgbalancer.pgwire.auth import (
    DEFAULT_SCRAM_ITERATIONS,
    is_md5_hash,
    make_scram_verifier,
    md5_password_hash,
    parse_scram_verifier,
)
from pgbalancer.userlist import SCRAM_PREFIX, LineProblem, PasswordKind, password_kind, read_quoted_field

_MAX_NAME_SHOWN: Final = 40
# A user that does not exist still costs a real PBKDF2, so timing does not reveal which names exist.
_DUMMY_SALT: Final = b"pgbalancer-api-no-such-user"


class Role(StrEnum):
    """What an API user may do: viewers read, admins also act."""

    ADMIN = "admin"
    VIEWER = "viewer"

    def may(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.VIEWER


class ApiUserError(Exception):
    """The API user file cannot be used; ``errors`` has one message per problem (file:line, fix)."""

    def __init__(self, errors: Iterable[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class ApiUser:
    name: str
    secret: str = field(repr=False)
    role: Role

    @property
    def secret_kind(self) -> PasswordKind:
        return password_kind(self.secret)


@dataclass(frozen=True)
class ApiUsers:
    """The users of the REST API by name; the repr lists names and roles, never secrets."""

    users: dict[str, ApiUser] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def get(self, name: str) -> ApiUser | None:
        return self.users.get(name)

    def plaintext_users(self) -> list[str]:
        """Names whose password is stored in plaintext (the node warns about them)."""
        return sorted(u.name for u in self.users.values() if u.secret_kind is PasswordKind.PLAINTEXT)

    def authenticate(self, name: str, password: str) -> ApiUser | None:
        """The user if ``password`` is right; None for a wrong password or an unknown user."""
        user = self.users.get(name)
        if user is None:
            make_scram_verifier(password, _DUMMY_SALT, DEFAULT_SCRAM_ITERATIONS)
            return None
        return user if password_matches(user.name, user.secret, password) else None


def password_matches(name: str, stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` (SCRAM verifier, md5 hash or plaintext) was made from."""
    verifier = parse_scram_verifier(stored)
    if verifier is not None:
        candidate = make_scram_verifier(password, verifier.salt, verifier.iterations)
        return hmac.compare_digest(candidate.stored_key, verifier.stored_key) & hmac.compare_digest(
            candidate.server_key, verifier.server_key
        )
    if is_md5_hash(stored):
        return hmac.compare_digest(md5_password_hash(name, password).encode(), stored.encode())
    return hmac.compare_digest(password.encode("utf-8", "surrogateescape"), stored.encode("utf-8"))


_API_ENTRY = '"name" "password" "role"'


def parse_api_users(text: str, source: str = "api_user_file") -> ApiUsers:
    """Parse the user file text; ApiUserError lists every bad line at once."""
    users: dict[str, ApiUser] = {}
    first_line_of: dict[str, int] = {}
    errors: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            user = _parse_line(line.removesuffix("\r"))
        except LineProblem as problem:
            errors.append(f"{source}:{number}: {problem}")
            continue
        if user is None:
            continue
        if user.name in first_line_of:
            errors.append(
                f"{source}:{number}: user {_show(user.name)} is already listed on line "
                f"{first_line_of[user.name]}; keep only one entry per user"
            )
            continue
        first_line_of[user.name] = number
        users[user.name] = user
    if errors:
        raise ApiUserError(errors)
    return ApiUsers(users)


def load_api_users(path: Path | str) -> ApiUsers:
    """Read and parse ``api_user_file``; an unreadable file is an ApiUserError naming the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ApiUserError(
            f"{path}: cannot read api_user_file ({exc.strerror or type(exc).__name__}); create it, make it "
            "readable by the pgbalancer process, or point api_user_file at the right file"
        ) from None
    except UnicodeDecodeError as exc:
        raise ApiUserError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save api_user_file as UTF-8"
        ) from None
    return parse_api_users(text, source=str(path))


def _parse_line(line: str) -> ApiUser | None:
    stripped = line.strip()
    if not stripped or stripped[0] in ";#":
        return None
    fields: list[str] = []
    position = 0
    for what in ("user name", "password", "role"):
        value, position = read_quoted_field(line, position, what, _API_ENTRY)
        fields.append(value)
    name, secret, role_text = fields
    if line[position:].strip():
        raise LineProblem(
            f'unexpected text after the role of user {_show(name)}; write "name" "password" "role"'
        )
    if not name:
        raise LineProblem('the user name is empty; write the entry as "name" "password" "role"')
    if not secret:
        raise LineProblem(f"user {_show(name)} has an empty password; give every API user a password")
    try:
        role = Role(role_text.strip().lower())
    except ValueError:
        raise LineProblem(
            f"user {_show(name)} has the role {_show(role_text)}; the role is admin or viewer"
        ) from None
    if secret.startswith(SCRAM_PREFIX) and parse_scram_verifier(secret) is None:
        raise LineProblem(
            f"the password of user {_show(name)} starts with {SCRAM_PREFIX} but is not a valid verifier; "
            "copy it again from pg_authid.rolpassword, or write the plaintext password instead"
        )
    return ApiUser(name, secret, role)


def _show(text: str) -> str:
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:_MAX_NAME_SHOWN])
    return repr(shown + ("…" if len(text) > _MAX_NAME_SHOWN else ""))
