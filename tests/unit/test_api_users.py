"""API users: the api_user_file format, roles, and password checks against verifiers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.api.users import (
    ApiUserError,
    Role,
    load_api_users,
    parse_api_users,
    password_matches,
)
from pgbalancer.pgwire.auth import make_scram_verifier, md5_password_hash
from pgbalancer.userlist import PasswordKind

SALT = b"0123456789abcdef"
VERIFIER = make_scram_verifier("s3cret", SALT, 4096).encode()


def test_parses_every_kind_of_secret_and_both_roles() -> None:
    users = parse_api_users(
        "; comment\n"
        "# another comment\n"
        "\n"
        f'"alice" "{VERIFIER}" "admin"\n'
        f'"bob" "{md5_password_hash("bob", "pw")}" "viewer"\n'
        '"carol" "plain ""quoted"" pw" "ADMIN"\r\n'
    )
    assert len(users) == 3
    alice, bob, carol = users.get("alice"), users.get("bob"), users.get("carol")
    assert alice is not None and alice.role is Role.ADMIN and alice.secret_kind is PasswordKind.SCRAM_SHA_256
    assert bob is not None and bob.role is Role.VIEWER and bob.secret_kind is PasswordKind.MD5
    assert carol is not None and carol.secret == 'plain "quoted" pw' and carol.role is Role.ADMIN
    assert users.plaintext_users() == ["carol"]


def test_every_bad_line_is_reported_with_its_number_and_no_secret() -> None:
    text = (
        '"alice" "hunter2-secret" "root"\n'  # unknown role
        '"bob" "hunter3-secret"\n'  # userlist format: no role
        '"" "hunter4-secret" "admin"\n'  # empty name
        '"dave" "SCRAM-SHA-256$4096:abc$def" "admin"\n'  # broken verifier
        '"erin" "hunter5-secret" "admin" trailing\n'
        '"frank" "" "viewer"\n'
        '"gina" "pw" "admin"\n'
        '"gina" "pw2" "viewer"\n'
    )
    with pytest.raises(ApiUserError) as excinfo:
        parse_api_users(text, source="api_users.txt")
    errors = excinfo.value.errors
    assert [error.split(":")[1] for error in errors] == ["1", "2", "3", "4", "5", "6", "8"]
    assert "the role is admin or viewer" in errors[0]
    assert "expected the role in double quotes" in errors[1]
    assert "already listed on line 7" in errors[6]
    assert "hunter" not in str(excinfo.value)


def test_repr_never_shows_a_secret() -> None:
    users = parse_api_users('"alice" "hunter2-secret" "admin"\n')
    assert "hunter2" not in repr(users)
    assert "hunter2" not in repr(users.get("alice"))


def test_scram_verifier_is_recomputed_with_its_own_salt_and_iterations() -> None:
    verifier = make_scram_verifier("right", b"another-salt", 1234).encode()
    assert password_matches("alice", verifier, "right")
    assert not password_matches("alice", verifier, "wrong")
    assert not password_matches("alice", verifier, "")


def test_md5_entry_is_password_plus_user_name() -> None:
    stored = md5_password_hash("bob", "pw")
    assert password_matches("bob", stored, "pw")
    assert not password_matches("bob", stored, "pw ")
    assert not password_matches("robert", stored, "pw")  # the name is part of the hash
    assert not password_matches("bob", stored, stored)  # the hash itself is not the password


def test_plaintext_entry_compares_as_written() -> None:
    assert password_matches("carol", "pässwörd", "pässwörd")
    assert not password_matches("carol", "pässwörd", "passwort")


def test_authenticate_answers_none_for_unknown_users_and_wrong_passwords() -> None:
    users = parse_api_users(f'"alice" "{VERIFIER}" "admin"\n')
    user = users.authenticate("alice", "s3cret")
    assert user is not None and user.name == "alice" and user.role is Role.ADMIN
    assert users.authenticate("alice", "S3cret") is None
    assert users.authenticate("mallory", "s3cret") is None


def test_role_permissions() -> None:
    assert Role.ADMIN.may(Role.ADMIN) and Role.ADMIN.may(Role.VIEWER)
    assert Role.VIEWER.may(Role.VIEWER) and not Role.VIEWER.may(Role.ADMIN)


def test_load_reports_a_missing_file_with_the_fix(tmp_path: object) -> None:
    with pytest.raises(ApiUserError, match="cannot read api_user_file"):
        load_api_users("/nonexistent/api_users.txt")


@settings(max_examples=50, deadline=None)
@given(password=st.text(max_size=40), other=st.text(max_size=40))
def test_only_the_right_password_matches_an_md5_or_plain_entry(password: str, other: str) -> None:
    for stored in (md5_password_hash("u", password), password):
        assert password_matches("u", stored, password)
        assert password_matches("u", stored, other) == (other == password)
