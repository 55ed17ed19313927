"""Unit and property tests of pgbalancer.userlist: PgBouncer's auth_file format, and no leaked passwords."""

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.userlist import (
    PasswordKind,
    Userlist,
    UserlistError,
    load_userlist,
    parse_userlist,
    password_kind,
)

SECRET = "s3cr3t-Pa55"


def scram_verifier(password: str, salt: bytes = b"0123456789abcdef", iterations: int = 4096) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{b64[2]}"


def md5_hash(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def quote(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'


def test_reads_plaintext_md5_and_scram_entries() -> None:
    verifier = scram_verifier(SECRET)
    text = f'"alice" "{SECRET}"\n"bob" "{md5_hash("bob", SECRET)}"\n"carol" "{verifier}"\n'
    users = parse_userlist(text)
    assert users == {"alice": SECRET, "bob": md5_hash("bob", SECRET), "carol": verifier}
    assert [password_kind(users[name]) for name in ("alice", "bob", "carol")] == [
        PasswordKind.PLAINTEXT,
        PasswordKind.MD5,
        PasswordKind.SCRAM_SHA_256,
    ]


def test_skips_blank_and_comment_lines_and_ignores_trailing_fields() -> None:
    text = '; a comment\n# another\n\n   \n  "alice"   "pw"  "ignored" extra\r\n\t; indented comment\n'
    assert parse_userlist(text) == {"alice": "pw"}


def test_doubled_double_quotes_are_one_quote() -> None:
    assert parse_userlist('"a""b" "p""w"""') == {'a"b': 'p"w"'}


def test_empty_password_is_allowed() -> None:
    assert parse_userlist('"alice" ""') == {"alice": ""}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("alice pw", "expected the user name in double quotes"),
        ('"alice"', "expected the password in double quotes"),
        ('"alice" pw', "expected the password in double quotes"),
        ('"alice "pw"', "no space after the user name"),
        ('"alice" "pw', "the password has no closing double quote"),
        ('"alice', "the user name has no closing double quote"),
        ('"" "pw"', "the user name is empty"),
    ],
)
def test_bad_lines_name_file_line_and_fix(line: str, fragment: str) -> None:
    with pytest.raises(UserlistError) as caught:
        parse_userlist(f"# header\n{line}\n", source="/etc/pgbalancer/userlist.txt")
    message = str(caught.value)
    assert message.startswith("/etc/pgbalancer/userlist.txt:2: ")
    assert fragment in message
    assert '"username" "password"' in message or "double quote" in message


def test_every_bad_line_is_reported_at_once() -> None:
    with pytest.raises(UserlistError) as caught:
        parse_userlist('bad\n"ok" "pw"\nalso bad\n')
    assert [error.split(": ", 1)[0] for error in caught.value.errors] == ["userlist.txt:1", "userlist.txt:3"]


def test_a_user_listed_twice_is_an_error() -> None:
    with pytest.raises(UserlistError, match=r"userlist.txt:3: user 'alice' is already listed on line 1"):
        parse_userlist('"alice" "a"\n"bob" "b"\n"alice" "c"\n')


def test_a_broken_scram_verifier_is_refused_not_taken_as_plaintext() -> None:
    broken = scram_verifier(SECRET)[:-8]
    with pytest.raises(UserlistError) as caught:
        parse_userlist(f'"carol" "{broken}"')
    assert "user 'carol'" in str(caught.value)
    assert "not a valid verifier" in str(caught.value)
    assert broken not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        f'"alice" "{SECRET}',  # unterminated password
        f'"alice" "{SECRET}"\n"alice" "{SECRET}"',  # duplicate
        f'"alice" "SCRAM-SHA-256${SECRET}"',  # malformed verifier
        f'"alice" {SECRET}',  # unquoted password
    ],
)
def test_no_error_message_contains_the_password(text: str) -> None:
    with pytest.raises(UserlistError) as caught:
        parse_userlist(text)
    assert SECRET not in str(caught.value)
    assert all(SECRET not in error for error in caught.value.errors)


def test_the_repr_names_users_but_hides_passwords() -> None:
    users = parse_userlist(f'"alice" "{SECRET}"')
    assert isinstance(users, Userlist)
    assert "alice" in repr(users)
    assert SECRET not in repr(users)
    assert SECRET not in str(users)
    assert SECRET not in f"{users}"


def test_load_userlist_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text(f'"alice" "{SECRET}"\n')
    assert load_userlist(path) == {"alice": SECRET}
    assert load_userlist(str(path)) == {"alice": SECRET}


def test_load_userlist_names_a_missing_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(UserlistError, match=r"nope.txt: cannot read the auth file .*auth_file"):
        load_userlist(missing)


def test_load_userlist_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_bytes(b'"alice" "\xff"\n')
    with pytest.raises(UserlistError, match="not UTF-8"):
        load_userlist(path)


def test_load_userlist_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text('"alice" "a"\nbroken\n')
    with pytest.raises(UserlistError, match=rf"^{path}:2: "):
        load_userlist(path)


line_chars = st.characters(exclude_characters="\n\r", exclude_categories=["Cs"])
names = st.text(line_chars, min_size=1)
passwords = st.text(line_chars).filter(lambda p: not p.startswith("SCRAM-SHA-256$"))


@pytest.mark.slow  # about a second on a loaded machine
@given(st.dictionaries(names, passwords, max_size=8))
def test_any_quoted_entries_read_back_exactly(entries: dict[str, str]) -> None:
    text = "".join(f"{quote(user)} {quote(password)}\n" for user, password in entries.items())
    assert parse_userlist(text) == entries


@pytest.mark.slow
@given(st.text())
def test_arbitrary_text_raises_only_userlist_error(text: str) -> None:
    try:
        users = parse_userlist(text)
    except UserlistError as exc:
        assert exc.errors
        assert all(error.startswith("userlist.txt:") for error in exc.errors)
    else:
        assert all(isinstance(user, str) and user for user in users)
