"""MD5 and SCRAM-SHA-256: known vectors (RFC 7677, PostgreSQL 15 output) and scramp as an oracle."""

from __future__ import annotations

import base64

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.pgwire.auth import (
    ScramAuthFailed,
    ScramClientExchange,
    ScramError,
    ScramServerExchange,
    ScramVerifier,
    is_md5_hash,
    make_scram_verifier,
    md5_client_response,
    md5_password_hash,
    md5_verify,
    mock_scram_verifier,
    parse_scram_verifier,
    saslprep,
)

# --------------------------------------------------------------------------- MD5

# pg_authid.rolpassword after `SET password_encryption = 'md5'; CREATE ROLE alice PASSWORD 'secret'`
# on PostgreSQL 15, and md5("4a0a...2371" || '\x01\x02\x03\x04') computed once with md5sum.
ALICE_MD5 = "md54a0a68b43b6cd5cf266fa02f196e2371"
ALICE_RESPONSE_SALT_01020304 = "md598a0412b9c31436fc53776e863350083"
SALT = b"\x01\x02\x03\x04"


def test_md5_password_hash_matches_postgresql() -> None:
    assert md5_password_hash("alice", "secret") == ALICE_MD5


def test_md5_client_response_from_plaintext_or_stored_hash() -> None:
    assert md5_client_response("alice", "secret", SALT) == ALICE_RESPONSE_SALT_01020304
    assert md5_client_response("alice", ALICE_MD5, SALT) == ALICE_RESPONSE_SALT_01020304


@pytest.mark.parametrize("stored", ["secret", ALICE_MD5])
def test_md5_verify(stored: str) -> None:
    assert md5_verify("alice", stored, SALT, ALICE_RESPONSE_SALT_01020304)
    assert not md5_verify("alice", stored, b"\x01\x02\x03\x05", ALICE_RESPONSE_SALT_01020304)
    assert not md5_verify("alice", stored, SALT, "md5" + "0" * 32)
    assert not md5_verify("alice", stored, SALT, "pässword")  # non-ASCII input must not crash


def test_md5_verify_against_plaintext_salts_with_the_user_name() -> None:
    assert not md5_verify("bob", "secret", SALT, ALICE_RESPONSE_SALT_01020304)


def test_md5_verify_never_accepts_against_a_scram_verifier() -> None:
    verifier = make_scram_verifier("secret", b"salt", 1).encode()
    assert not md5_verify("alice", verifier, SALT, md5_client_response("alice", verifier, SALT))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ALICE_MD5, True),
        (ALICE_MD5.upper(), False),  # PostgreSQL only recognises lowercase hex
        (ALICE_MD5[:-1], False),
        ("md5" + "g" * 32, False),
        ("secret", False),
        ("", False),
    ],
)
def test_is_md5_hash(text: str, expected: bool) -> None:
    assert is_md5_hash(text) is expected


# --------------------------------------------------------------------------- verifiers and SASLprep

# rolpassword values from PostgreSQL 15 (`CREATE ROLE ... PASSWORD '...'`, scram-sha-256), with the
# plaintext passwords that produced them. dave's password is changed by SASLprep (soft hyphen
# dropped, no-break space mapped, ligature decomposed); erin's contains a private-use character and
# frank's mixes right-to-left and left-to-right, so SASLprep fails and PostgreSQL hashes raw bytes.
POSTGRES_VERIFIERS = [
    (
        "pencil",
        "SCRAM-SHA-256$4096:ycZm2sRAYgTa+JvubZWRPw==$M23h2pQsnBL3ysbSSREwAwuQcoPkF5pyHlK93j/qlEc="
        ":G2w22fRD1fU6FMEFUtSyaaAAMF43VTlPZzrrA+z8L5Q=",
    ),
    (
        "pässwörd€",
        "SCRAM-SHA-256$4096:YucvS4n5slswOH7syZv+Bg==$w7Cd0n3sHhcqipFBNvGfgxUGAQNKOQWklksZAnD6/Do="
        ":Uj315WCGemzIH37j0GPIIl3ybmzrhgAtCwlBQ3vPuyE=",
    ),
    (
        "I\u00adX\u00a0\ufb01",
        "SCRAM-SHA-256$4096:RT386NU1l8ljBn1GEwXyVg==$SBYkSLNWqeI+bfaMgMdI7zLD4MbaQqh9VPq3vW/CVPc="
        ":ASj2TdgCpej3xpFHoe/bW4KftuCOHx1J63sz99ChLDw=",
    ),
    (
        "\ue000pw\u00a0",
        "SCRAM-SHA-256$4096:9NnXR0QhmBxRH4gQ+7j5nA==$/FbJmzyneM23PHIwy3KNh/Udyg85+MlAP81uPVuNiXE="
        ":kDZDJDTFnRah6MJgDtJlsKkAFppdSRmosSzi0kX33qc=",
    ),
    (
        "\u05d0\u05d1a",
        "SCRAM-SHA-256$4096:cqnW9iAw1+9jbutFqr1Fzg==$0V3yIg0V6t7dG+BAf1jLMltT9E1/uiTP1W+hNQXUQNY="
        ":SDagkCRUhM52tBvlDqjIJjYisQ7bcRWrTxbjtFtpSM0=",
    ),
]


@pytest.mark.parametrize(("password", "stored"), POSTGRES_VERIFIERS)
def test_make_scram_verifier_reproduces_postgresql(password: str, stored: str) -> None:
    verifier = parse_scram_verifier(stored)
    assert verifier is not None
    assert verifier.encode() == stored
    assert make_scram_verifier(password, verifier.salt, verifier.iterations) == verifier


def test_verifier_matches_scramp() -> None:
    salt, stored_key, server_key, iterations = scramp.ScramMechanism().make_auth_info(
        "pencil", iteration_count=4096, salt=b"0123456789abcdef"
    )
    assert make_scram_verifier("pencil", b"0123456789abcdef") == ScramVerifier(
        iterations, salt, stored_key, server_key
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "md54a0a68b43b6cd5cf266fa02f196e2371",
        "secret",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 44,  # missing ServerKey
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$x",  # extra part
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # zero iterations
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # non-numeric iterations
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",  # empty salt
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:" + "A" * 43 + "=",  # short StoredKey
        "SCRAM-SHA-256$4096:c2F*dA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # bad base64
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 27 + "=:" + "A" * 27 + "=",
    ],
)
def test_parse_scram_verifier_rejects_other_formats(text: str) -> None:
    assert parse_scram_verifier(text) is None


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("pencil", "pencil"),
        ("tab\there", "tab\there"),  # ASCII is used as-is, even control characters
        ("I\u00adX", "IX"),  # soft hyphen maps to nothing
        ("a\u00a0b", "a b"),  # non-ASCII space maps to space
        ("\ufb01", "fi"),  # NFKC
        ("\u2168", "IX"),  # ROMAN NUMERAL NINE, NFKC
        ("\u00ad", "\u00ad"),  # nothing left after mapping: used unchanged
        ("\ue000pw", "\ue000pw"),  # private use is prohibited: used unchanged
        ("a\u0221", "a\u0221"),  # unassigned in Unicode 3.2: used unchanged
        ("\u05d0\u05d1a", "\u05d0\u05d1a"),  # right-to-left mixed with left-to-right
        ("\u05d0\u00a0a", "\u05d0\u00a0a"),  # the same, visible because the space is not mapped
        ("\u05d0\u00a0\u05d1", "\u05d0 \u05d1"),  # right-to-left at both ends is fine
        ("\u05d0\u05d1\u00a0", "\u05d0\u05d1\u00a0"),  # right-to-left string not ending with one
    ],
)
def test_saslprep_follows_postgresql(password: str, prepared: str) -> None:
    assert saslprep(password) == prepared


# --------------------------------------------------------------------------- RFC 7677 test vector

RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.fixture(scope="module")
def pencil() -> ScramVerifier:
    return make_scram_verifier("pencil", RFC_SALT, 4096)


def test_rfc7677_vector_through_our_client() -> None:
    client = ScramClientExchange("user", RFC_CLIENT_NONCE, password="pencil", send_username=True)
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_rfc7677_vector_through_our_server(pencil: ScramVerifier) -> None:
    server = ScramServerExchange(pencil, RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_client_sends_an_empty_user_name_like_libpq() -> None:
    client = ScramClientExchange("alice", "nonce123", password="pencil")
    assert client.client_first() == b"n,,n=,r=nonce123"


def test_client_escapes_a_sent_user_name() -> None:
    client = ScramClientExchange("a=b,c", "nonce123", password="pencil", send_username=True)
    assert client.client_first() == b"n,,n=a=3Db=2Cc,r=nonce123"


# --------------------------------------------------------------------------- scramp as an oracle


# scramp insists on a non-empty SCRAM user name, which PostgreSQL ignores; so our client sends one
# to scramp's server, and scramp's client sends one to ours.


def _scramp_server(verifier: ScramVerifier, server_nonce: str = "scrampservernonce") -> scramp.ScramServer:
    auth_info = (verifier.salt, verifier.stored_key, verifier.server_key, verifier.iterations)
    return scramp.ScramMechanism().make_server(lambda _user: auth_info, s_nonce=server_nonce)


def test_scramp_client_is_accepted_by_our_server(pencil: ScramVerifier) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "pencil")
    server = ScramServerExchange(pencil, "ourservernonce")
    server_first = server.handle_client_first(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    server_final = server.handle_client_final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())  # raises if our signature were wrong


def test_scramp_client_with_wrong_password_is_refused_by_our_server(pencil: ScramVerifier) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "pen")
    server = ScramServerExchange(pencil, "ourservernonce")
    client.set_server_first(server.handle_client_first(client.get_client_first().encode()).decode())
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(client.get_client_final().encode())
    with pytest.raises(ScramError):
        _ = server.client_key


def test_our_client_is_accepted_by_scramp_server(pencil: ScramVerifier) -> None:
    server = _scramp_server(pencil)
    client = ScramClientExchange("alice", "ourclientnonce", password="pencil", send_username=True)
    server.set_client_first(client.client_first().decode())
    server.set_client_final(client.handle_server_first(server.get_server_first().encode()).decode())
    client.verify_server_final(server.get_server_final().encode())


def test_our_client_with_wrong_password_sees_scramp_error(pencil: ScramVerifier) -> None:
    server = _scramp_server(pencil)
    client = ScramClientExchange("alice", "ourclientnonce", password="pen", send_username=True)
    server.set_client_first(client.client_first().decode())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(client.handle_server_first(server.get_server_first().encode()).decode())
    with pytest.raises(ScramAuthFailed, match="invalid-proof"):
        client.verify_server_final(server.get_server_final().encode())


def test_pass_through_with_the_recovered_client_key(pencil: ScramVerifier) -> None:
    # A client proves itself to us; we hold only the verifier, yet can log in to a backend with it.
    front = ScramServerExchange(pencil, "frontnonce")
    client = ScramClientExchange("alice", "clientnonce", password="pencil")
    front_first = front.handle_client_first(client.client_first())
    client.verify_server_final(front.handle_client_final(client.handle_server_first(front_first)))

    backend = _scramp_server(pencil, "backendnonce")
    relay = ScramClientExchange(
        "alice", "relaynonce", client_key=front.client_key, server_key=pencil.server_key, send_username=True
    )
    backend.set_client_first(relay.client_first().decode())
    backend.set_client_final(relay.handle_server_first(backend.get_server_first().encode()).decode())
    relay.verify_server_final(backend.get_server_final().encode())


@settings(max_examples=20, deadline=None)
@given(
    password=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30),
    salt=st.binary(min_size=12, max_size=32),  # scramp refuses salts under 12 bytes
    nonce=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1),
)
def test_scramp_client_and_our_server_agree_on_random_inputs(password: str, salt: bytes, nonce: str) -> None:
    verifier = make_scram_verifier(password, salt, 4096)  # scramp's client refuses fewer iterations
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", password)
    server = ScramServerExchange(verifier, nonce)
    client.set_server_first(server.handle_client_first(client.get_client_first().encode()).decode())
    client.set_server_final(server.handle_client_final(client.get_client_final().encode()).decode())


@settings(max_examples=50, deadline=None)
@given(password=st.text(min_size=1, max_size=20), salt=st.binary(min_size=1, max_size=16))
def test_our_client_and_server_agree_on_any_password(password: str, salt: bytes) -> None:
    server = ScramServerExchange(make_scram_verifier(password, salt, 2), "snonce")
    client = ScramClientExchange("u", "cnonce", password=password)
    server_final = server.handle_client_final(
        client.handle_server_first(server.handle_client_first(client.client_first()))
    )
    client.verify_server_final(server_final)


# --------------------------------------------------------------------------- server: refusals


@pytest.fixture
def server(pencil: ScramVerifier) -> ScramServerExchange:
    return ScramServerExchange(pencil, "snonce")


@pytest.mark.parametrize(
    "client_first",
    [
        b"p=tls-server-end-point,,n=,r=abc",  # channel binding we cannot offer
        b"n,a=bob,n=,r=abc",  # authorization identity
        b"n,,m=ext,n=,r=abc",  # mandatory extension
        b"x,,n=,r=abc",  # unknown flag
        b"n,,r=abc",  # missing user attribute
        b"n,,n=,r=",  # empty nonce
        b"n,,n=,r=a\x7fb",  # non-printable nonce
        b"n,n=,r=abc",  # GS2 header cut short
        b"",
        b"\xff\xfe",  # not UTF-8
    ],
)
def test_server_refuses_malformed_client_first(server: ScramServerExchange, client_first: bytes) -> None:
    with pytest.raises(ScramError) as info:
        server.handle_client_first(client_first)
    assert not isinstance(info.value, ScramAuthFailed)


def test_server_accepts_y_flag_and_requires_it_echoed(pencil: ScramVerifier) -> None:
    accepted = ScramServerExchange(pencil, "snonce")
    accepted.handle_client_first(b"y,,n=,r=abc")
    with pytest.raises(ScramError, match="channel-binding"):
        accepted.handle_client_final(b"c=biws,r=abcsnonce,p=" + base64.b64encode(bytes(32)))


def _client_final(nonce: str = "abcsnonce", channel: str = "biws", proof: bytes = bytes(32)) -> bytes:
    return f"c={channel},r={nonce},p={base64.b64encode(proof).decode()}".encode()


@pytest.mark.parametrize(
    "client_final",
    [
        _client_final(nonce="abcOTHER"),  # nonce not the combined one
        _client_final(channel="eSws"),  # "y,," but the client sent "n,,"
        _client_final(proof=bytes(31)),  # proof of the wrong length
        b"c=biws,r=abcsnonce",  # no proof
        b"c=biws,r=abcsnonce,p=AAAA,x=1",  # proof not last
        b"r=abcsnonce,c=biws,p=" + base64.b64encode(bytes(32)),  # attributes out of order
        b"c=biws,r=abcsnonce,p=!!!!",  # bad base64
    ],
)
def test_server_refuses_malformed_client_final(server: ScramServerExchange, client_final: bytes) -> None:
    server.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(ScramError) as info:
        server.handle_client_final(client_final)
    assert not isinstance(info.value, ScramAuthFailed)


def test_server_refuses_a_tampered_proof(server: ScramServerExchange) -> None:
    client = ScramClientExchange("", "abc", password="pencil")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    prefix, _, proof = client_final.rpartition(b",p=")
    flipped = bytes([base64.b64decode(proof)[0] ^ 1]) + base64.b64decode(proof)[1:]
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(prefix + b",p=" + base64.b64encode(flipped))


def test_server_enforces_message_order(server: ScramServerExchange) -> None:
    with pytest.raises(ScramError, match="unexpected SCRAM message"):
        server.handle_client_final(_client_final())
    with pytest.raises(ScramError, match="unexpected SCRAM message"):
        server.handle_client_first(b"n,,n=,r=abc")  # a failed exchange stays failed


def test_server_exchange_cannot_be_replayed(pencil: ScramVerifier) -> None:
    server = ScramServerExchange(pencil, "snonce")
    client = ScramClientExchange("", "abc", password="pencil")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    server.handle_client_final(client_final)
    assert len(server.client_key) == 32
    with pytest.raises(ScramError):
        server.handle_client_final(client_final)


def test_server_rejects_an_invalid_server_nonce(pencil: ScramVerifier) -> None:
    with pytest.raises(ValueError):
        ScramServerExchange(pencil, "has,comma")


def test_mock_verifier_refuses_every_password_with_a_stable_salt() -> None:
    mock = mock_scram_verifier("ghost", b"installation-secret")
    assert mock.salt == mock_scram_verifier("ghost", b"installation-secret").salt
    assert mock.salt != mock_scram_verifier("other", b"installation-secret").salt
    server = ScramServerExchange(mock, "snonce")
    client = ScramClientExchange("", "abc", password="anything")
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(
            client.handle_server_first(server.handle_client_first(client.client_first()))
        )


# --------------------------------------------------------------------------- client: refusals


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=OTHERsnonce,s=c2FsdA==,i=4096",  # does not extend our nonce
        b"r=cnonce,s=c2FsdA==,i=4096",  # adds nothing to our nonce
        b"r=cnoncesn,s=c2FsdA==,i=0",  # zero iterations
        b"r=cnoncesn,s=c2FsdA==,i=-1",
        b"r=cnoncesn,s=c2FsdA==,i=x",
        b"r=cnoncesn,s=,i=4096",  # empty salt
        b"r=cnoncesn,s=c2F*dA==,i=4096",  # bad base64
        b"m=ext,r=cnoncesn,s=c2FsdA==,i=4096",  # mandatory extension
        b"r=cnoncesn,i=4096,s=c2FsdA==",  # out of order
        b"e=other-error",
    ],
)
def test_client_refuses_malformed_server_first(server_first: bytes) -> None:
    client = ScramClientExchange("", "cnonce", password="pencil")
    client.client_first()
    with pytest.raises(ScramError):
        client.handle_server_first(server_first)


def test_client_accepts_custom_iteration_counts() -> None:
    client = ScramClientExchange("", "cnonce", password="pencil")
    assert client.handle_server_first(b"r=cnoncesn,s=c2FsdA==,i=1").startswith(b"c=biws,r=cnoncesn,p=")


def test_client_detects_a_server_that_does_not_know_the_password() -> None:
    client = ScramClientExchange("", "cnonce", password="pencil")
    client.handle_server_first(b"r=cnoncesn,s=c2FsdA==,i=1")
    with pytest.raises(ScramAuthFailed, match="server signature"):
        client.verify_server_final(b"v=" + base64.b64encode(bytes(32)))


@pytest.mark.parametrize("server_final", [b"", b"x=1", b"v=!!!"])
def test_client_refuses_malformed_server_final(server_final: bytes) -> None:
    client = ScramClientExchange("", "cnonce", password="pencil")
    client.handle_server_first(b"r=cnoncesn,s=c2FsdA==,i=1")
    with pytest.raises(ScramError):
        client.verify_server_final(server_final)


def test_client_enforces_message_order() -> None:
    client = ScramClientExchange("", "cnonce", password="pencil")
    with pytest.raises(ScramError, match="unexpected SCRAM message"):
        client.verify_server_final(RFC_SERVER_FINAL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"password": "p", "client_key": bytes(32), "server_key": bytes(32)},
        {"client_key": bytes(32)},
        {"server_key": bytes(32)},
    ],
)
def test_client_needs_a_password_or_both_keys(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ScramClientExchange("", "cnonce", **kwargs)  # type: ignore[arg-type]


def test_client_rejects_an_invalid_nonce() -> None:
    with pytest.raises(ValueError):
        ScramClientExchange("", "a,b", password="p")


# --------------------------------------------------------------------------- fuzz


@given(first=st.binary(max_size=200) | st.just(b"n,,n=,r=abc"), final=st.binary(max_size=200))
def test_server_raises_only_scram_errors_on_garbage(
    pencil: ScramVerifier, first: bytes, final: bytes
) -> None:
    server = ScramServerExchange(pencil, "snonce")
    with pytest.raises(ScramError):
        server.handle_client_first(first)
        server.handle_client_final(final)


@given(first=st.binary(max_size=200) | st.just(b"r=cnoncesn,s=c2FsdA==,i=1"), final=st.binary(max_size=200))
def test_client_raises_only_scram_errors_on_garbage(first: bytes, final: bytes) -> None:
    client = ScramClientExchange("", "cnonce", client_key=bytes(32), server_key=bytes(32))
    with pytest.raises(ScramError):
        client.handle_server_first(first)
        client.verify_server_final(final)
