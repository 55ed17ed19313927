"""API tokens: HS256 pinned, signature, expiry, issuer and audience all checked."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.api.tokens import TokenRejected, TokenSettings, issue_token, verify_token
from pgbalancer.api.users import Role

KEY = b"k" * 64  # long enough for HS512 too (the algorithm-confusion case)
SETTINGS = TokenSettings(KEY, "pgbalancer", "pgbalancer-api", 3600)


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "alice",
        "role": "admin",
        "iat": now,
        "exp": now + 600,
        "jti": "token-1",
        "iss": "pgbalancer",
        "aud": "pgbalancer-api",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, object]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def test_issued_token_verifies_with_every_claim() -> None:
    now = time.time()
    issued = issue_token(SETTINGS, "alice", Role.VIEWER, now, jti="abc")
    assert issued.expires_in == 3600
    verified = verify_token(SETTINGS, issued.token)
    assert (verified.subject, verified.role, verified.jti) == ("alice", Role.VIEWER, "abc")
    assert verified.expires_at == int(now) + 3600
    raw = jwt.decode(issued.token, KEY, algorithms=["HS256"], audience="pgbalancer-api")
    assert set(raw) == {"sub", "role", "iat", "exp", "jti", "iss", "aud"}
    assert jwt.get_unverified_header(issued.token)["alg"] == "HS256"


def test_each_token_gets_its_own_id() -> None:
    now = time.time()
    first = verify_token(SETTINGS, issue_token(SETTINGS, "a", Role.ADMIN, now).token)
    second = verify_token(SETTINGS, issue_token(SETTINGS, "a", Role.ADMIN, now).token)
    assert first.jti != second.jti


def test_expired_token_is_rejected() -> None:
    old = issue_token(SETTINGS, "alice", Role.ADMIN, time.time() - 7200)
    with pytest.raises(TokenRejected, match="expired"):
        verify_token(SETTINGS, old.token)


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: unsigned_token(claims()), "algorithm not allowed"),
        (lambda: jwt.encode(claims(), b"x" * 32, algorithm="HS256"), "signature does not verify"),
        (lambda: jwt.encode(claims(), KEY, algorithm="HS512"), "algorithm not allowed"),
        (lambda: jwt.encode(claims(aud="someone-else"), KEY, algorithm="HS256"), "another service"),
        (lambda: jwt.encode(claims(iss="someone-else"), KEY, algorithm="HS256"), "another service"),
        (lambda: jwt.encode(claims(jti=None), KEY, algorithm="HS256"), "malformed or incomplete"),
        (lambda: jwt.encode(claims(exp=None), KEY, algorithm="HS256"), "malformed or incomplete"),
        (lambda: jwt.encode(claims(role="root"), KEY, algorithm="HS256"), "malformed or incomplete"),
        (lambda: jwt.encode(claims(sub=7), KEY, algorithm="HS256"), "malformed or incomplete"),
        (lambda: "not.a.token", "malformed or incomplete"),
        (lambda: "", "malformed or incomplete"),
    ],
    ids=[
        "alg-none",
        "other-key",
        "hs512",
        "audience",
        "issuer",
        "no-jti",
        "no-exp",
        "bad-role",
        "non-string-sub",
        "garbage",
        "empty",
    ],
)
def test_bad_tokens_are_rejected(make_token: Callable[[], str], reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        verify_token(SETTINGS, make_token())


def test_a_payload_changed_after_signing_is_rejected() -> None:
    token = issue_token(SETTINGS, "bob", Role.VIEWER, time.time()).token
    header, _, signature = token.split(".")
    forged_payload = b64(json.dumps(claims(sub="bob", role="admin")).encode())
    with pytest.raises(TokenRejected, match="signature"):
        verify_token(SETTINGS, f"{header}.{forged_payload}.{signature}")


def test_settings_repr_hides_the_key() -> None:
    assert "kkkk" not in repr(SETTINGS)
    assert "eyJ" not in repr(issue_token(SETTINGS, "a", Role.ADMIN, time.time()))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_verifies(text: str) -> None:
    with pytest.raises(TokenRejected):
        verify_token(SETTINGS, text)
