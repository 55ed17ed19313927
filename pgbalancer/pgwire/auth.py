"""Password authentication math for PostgreSQL: MD5 and SCRAM-SHA-256 (RFC 5802 / RFC 7677).

Role: everything needed to authenticate clients (as a server) and to authenticate to backends
(as a client), as pure functions and sans-I/O exchange objects fed with SASL payloads.

The SCRAM math is written here on hashlib/hmac rather than taken from a library because the
pooler needs key-level access: after a client proves itself against a stored verifier, the
server exchange exposes the ClientKey recovered from the proof, and the client exchange can
authenticate to a backend with that ClientKey and the verifier's ServerKey instead of a password
(PgBouncer-style pass-through when only verifiers are stored).

PostgreSQL specifics followed here: the client sends an empty SCRAM user name (the startup packet
user is the one that counts), passwords go through SASLprep but fall back to their raw bytes when
SASLprep fails, and verifiers use the "SCRAM-SHA-256$iter:salt$StoredKey:ServerKey" text form.

Never: do I/O, read clocks, or draw randomness (nonces and salts are passed in); never compare
secrets with ``==`` (always ``hmac.compare_digest``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import stringprep
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Final

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
DEFAULT_SCRAM_ITERATIONS: Final = 4096
SCRAM_KEY_LENGTH: Final = 32  # SHA-256 digest size
MOCK_SALT_LENGTH: Final = 16  # PostgreSQL's default SCRAM salt length

_MD5_PREFIX: Final = "md5"
_MD5_HASH_LENGTH: Final = 35  # "md5" + 32 hex digits
_LOWER_HEX: Final = frozenset("0123456789abcdef")
_VERIFIER_PREFIX: Final = "SCRAM-SHA-256$"
# Without channel binding the client-final "c=" attribute carries the base64 of the GS2 header.
_GS2_NO_BINDING: Final = ("n,,", "y,,")


# --------------------------------------------------------------------------- MD5


def md5_password_hash(user: str, password: str) -> str:
    """What PostgreSQL stores for an MD5 password: "md5" + md5(password + user)."""
    return _MD5_PREFIX + hashlib.md5((password + user).encode("utf-8")).hexdigest()


def is_md5_hash(text: str) -> bool:
    """True if ``text`` is a stored MD5 hash (PostgreSQL's test: "md5" + 32 lowercase hex digits)."""
    return len(text) == _MD5_HASH_LENGTH and text.startswith(_MD5_PREFIX) and set(text[3:]) <= _LOWER_HEX


def md5_client_response(user: str, secret: str, salt: bytes) -> str:
    """The PasswordMessage payload answering AuthenticationMD5Password.

    ``secret`` is the plaintext password or its stored "md5..." hash: the response only needs the
    hash, which is why MD5 hashes are password-equivalent.
    """
    stored = secret if is_md5_hash(secret) else md5_password_hash(user, secret)
    return _MD5_PREFIX + hashlib.md5(stored[3:].encode("ascii") + salt).hexdigest()


def md5_verify(user: str, stored_secret: str, salt: bytes, response: str) -> bool:
    """Check a client's MD5 response against a stored plaintext password or MD5 hash.

    A SCRAM verifier cannot answer an MD5 challenge, so it never verifies here.
    """
    if parse_scram_verifier(stored_secret) is not None:
        return False
    expected = md5_client_response(user, stored_secret, salt)
    return hmac.compare_digest(expected.encode("utf-8"), response.encode("utf-8", "surrogateescape"))


# --------------------------------------------------------------------------- SASLprep


def saslprep(password: str) -> str:
    """Normalise a password with SASLprep (RFC 4013) the way PostgreSQL does.

    PostgreSQL is lenient: ASCII passwords are used as they are, and a password that SASLprep
    would reject (prohibited or unassigned characters, bad bidi, nothing left after mapping) is
    used unchanged, as its raw UTF-8 bytes. Like PostgreSQL, the prohibition checks look at the
    mapped string before NFKC normalisation.
    """
    if password.isascii():
        return password
    mapped = [" " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch)]
    if not mapped or any(_is_prohibited(ch) for ch in mapped) or not _bidi_ok(mapped):
        return password
    return unicodedata.normalize("NFKC", "".join(mapped))


def _is_prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def _bidi_ok(chars: list[str]) -> bool:
    # RFC 3454 section 6: a string with right-to-left characters has no left-to-right ones and
    # starts and ends with a right-to-left character.
    if not any(stringprep.in_table_d1(ch) for ch in chars):
        return True
    if any(stringprep.in_table_d2(ch) for ch in chars):
        return False
    return stringprep.in_table_d1(chars[0]) and stringprep.in_table_d1(chars[-1])


def _password_bytes(password: str | bytes) -> bytes:
    if isinstance(password, bytes):
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return password  # not UTF-8: PostgreSQL hashes the raw bytes
    else:
        text = password
    # surrogateescape: a password that arrived as undecodable bytes goes back out as those bytes.
    return saslprep(text).encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- SCRAM verifiers


class ScramError(Exception):
    """A malformed or out-of-order SCRAM exchange (tell the client 08P01)."""


class ScramAuthFailed(ScramError):
    """The proof or the server signature is wrong (tell the client 28P01)."""


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A stored SCRAM-SHA-256 secret: enough to check a client, not to impersonate one."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        """PostgreSQL's pg_authid form: SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>."""
        return (
            f"{_VERIFIER_PREFIX}{self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


def parse_scram_verifier(text: str) -> ScramVerifier | None:
    """The verifier in ``text``, or None if ``text`` is not a well-formed SCRAM-SHA-256 secret."""
    if not text.startswith(_VERIFIER_PREFIX):
        return None
    parts = text[len(_VERIFIER_PREFIX) :].split("$")
    if len(parts) != 2:
        return None
    iterations_text, _, salt_text = parts[0].partition(":")
    stored_text, _, server_text = parts[1].partition(":")
    if not (iterations_text.isascii() and iterations_text.isdigit()):
        return None
    try:
        salt = base64.b64decode(salt_text, validate=True)
        stored_key = base64.b64decode(stored_text, validate=True)
        server_key = base64.b64decode(server_text, validate=True)
    except (binascii.Error, ValueError):
        return None
    iterations = int(iterations_text)
    if (
        iterations < 1
        or not salt
        or len(stored_key) != SCRAM_KEY_LENGTH
        or len(server_key) != SCRAM_KEY_LENGTH
    ):
        return None
    return ScramVerifier(iterations, salt, stored_key, server_key)


def make_scram_verifier(
    password: str | bytes, salt: bytes, iterations: int = DEFAULT_SCRAM_ITERATIONS
) -> ScramVerifier:
    """The verifier PostgreSQL would store for ``password`` with this salt and iteration count."""
    if iterations < 1:
        raise ValueError(f"SCRAM iteration count must be at least 1, got {iterations}")
    if not salt:
        raise ValueError("SCRAM salt must not be empty")
    client_key, server_key = scram_keys(password, salt, iterations)
    return ScramVerifier(iterations, salt, _sha256(client_key), server_key)


def mock_scram_verifier(
    user: str, mock_secret: bytes, iterations: int = DEFAULT_SCRAM_ITERATIONS
) -> ScramVerifier:
    """A verifier no proof can satisfy, for users that do not exist.

    Running a normal exchange against it hides whether the user exists; the salt is derived from
    the user name and a per-installation secret so repeated attempts see a stable salt, as with a
    real user (PostgreSQL's mock authentication does the same).
    """
    salt = _sha256(user.encode("utf-8", "surrogateescape") + mock_secret)[:MOCK_SALT_LENGTH]
    # No ClientKey hashes to all zeros, so this StoredKey never matches.
    return ScramVerifier(iterations, salt, bytes(SCRAM_KEY_LENGTH), bytes(SCRAM_KEY_LENGTH))


def scram_keys(password: str | bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for a password: the expensive PBKDF2 step of SCRAM."""
    salted_password = hashlib.pbkdf2_hmac("sha256", _password_bytes(password), salt, iterations)
    return _hmac(salted_password, b"Client Key"), _hmac(salted_password, b"Server Key")


# --------------------------------------------------------------------------- SCRAM exchanges


class _Step(Enum):
    FIRST = "waiting for the first message"
    FINAL = "waiting for the final message"
    DONE = "finished"
    FAILED = "failed"


class _Exchange:
    """Step tracking shared by both sides: each message is accepted once, in order."""

    def __init__(self) -> None:
        self._step = _Step.FIRST

    def _advance(self, expected: _Step) -> None:
        step = self._step
        # Until the handler finishes, the exchange counts as failed: an error midway is final.
        self._step = _Step.FAILED
        if step is not expected:
            raise ScramError(f"unexpected SCRAM message: exchange is {step.value}")


class ScramServerExchange(_Exchange):
    """Server side of one SCRAM-SHA-256 exchange, fed with SASLInitialResponse/SASLResponse data.

    Channel binding is not offered (we advertise SCRAM-SHA-256 only), so GS2 flags "n" and "y"
    are accepted and "p" is refused.
    """

    def __init__(self, verifier: ScramVerifier, server_nonce: str) -> None:
        super().__init__()
        _check_nonce(server_nonce, "server nonce", error=ValueError)
        self._verifier = verifier
        self._server_nonce = server_nonce
        self._gs2_header = ""
        self._nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._client_key: bytes | None = None

    def handle_client_first(self, data: bytes) -> bytes:
        """Consume client-first-message; return server-first-message (for AuthenticationSASLContinue)."""
        self._advance(_Step.FIRST)
        cbind_flag, bare, client_nonce = _parse_client_first(_decode(data))
        self._gs2_header = f"{cbind_flag},,"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        verifier = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(verifier.salt)},i={verifier.iterations}"
        self._step = _Step.FINAL
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Check client-final-message; return server-final-message (for AuthenticationSASLFinal).

        Raises ScramAuthFailed if the proof is wrong, ScramError if the message is malformed.
        """
        self._advance(_Step.FINAL)
        without_proof, proof = _split_proof(_decode(data))
        attributes = without_proof.split(",")
        if len(attributes) < 2 or not attributes[0].startswith("c=") or not attributes[1].startswith("r="):
            raise ScramError("malformed SCRAM message: expected channel-binding and nonce attributes")
        if _b64decode(attributes[0][2:], "channel-binding data") != self._gs2_header.encode("ascii"):
            raise ScramError("unexpected SCRAM channel-binding attribute in client-final-message")
        if not hmac.compare_digest(attributes[1][2:].encode("utf-8"), self._nonce.encode("ascii")):
            raise ScramError("invalid SCRAM response: nonce does not match")
        auth_message = self._auth_message(without_proof)
        client_key = _xor(proof, _hmac(self._verifier.stored_key, auth_message))
        if not hmac.compare_digest(_sha256(client_key), self._verifier.stored_key):
            raise ScramAuthFailed("SCRAM proof does not match the stored verifier")
        self._client_key = client_key
        self._step = _Step.DONE
        return b"v=" + base64.b64encode(_hmac(self._verifier.server_key, auth_message))

    @property
    def client_key(self) -> bytes:
        """The ClientKey recovered from a verified proof (for pass-through to a backend)."""
        if self._client_key is None:
            raise ScramError("no SCRAM proof has been verified yet")
        return self._client_key

    def _auth_message(self, client_final_without_proof: str) -> bytes:
        return f"{self._client_first_bare},{self._server_first},{client_final_without_proof}".encode()


class ScramClientExchange(_Exchange):
    """Client side of one SCRAM-SHA-256 exchange, towards a backend.

    Give either ``password``, or ``client_key`` and ``server_key`` (pass-through: the ClientKey
    recovered by a ScramServerExchange and the ServerKey of the stored verifier; the backend must
    store the same verifier). Like libpq, the SCRAM user name is sent empty unless
    ``send_username`` is set: PostgreSQL takes the user from the startup packet.
    """

    def __init__(
        self,
        user: str,
        client_nonce: str,
        *,
        password: str | bytes | None = None,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        send_username: bool = False,
    ) -> None:
        super().__init__()
        if password is not None:
            if client_key is not None or server_key is not None:
                raise ValueError("give either password or client_key/server_key, not both")
        elif client_key is None or server_key is None:
            raise ValueError("give password, or both client_key and server_key for pass-through")
        _check_nonce(client_nonce, "client nonce", error=ValueError)
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._client_nonce = client_nonce
        user_attr = _escape_username(user) if send_username else ""
        self._client_first_bare = f"n={user_attr},r={client_nonce}"
        self._gs2_header = "n,,"
        self._expected_server_signature = b""

    def client_first(self) -> bytes:
        """client-first-message, the data of SASLInitialResponse."""
        return (self._gs2_header + self._client_first_bare).encode("utf-8", "surrogateescape")

    def handle_server_first(self, data: bytes) -> bytes:
        """Consume server-first-message; return client-final-message (the data of SASLResponse)."""
        self._advance(_Step.FIRST)
        server_first = _decode(data)
        nonce, salt, iterations = _parse_server_first(server_first, self._client_nonce)
        client_key, server_key = self._keys(salt, iterations)
        without_proof = f"c={_b64(self._gs2_header.encode('ascii'))},r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode(
            "utf-8", "surrogateescape"
        )
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._expected_server_signature = _hmac(server_key, auth_message)
        self._step = _Step.FINAL
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final-message; raises ScramAuthFailed on an error or a wrong signature."""
        self._advance(_Step.FINAL)
        first = _decode(data).split(",")[0]
        if first.startswith("e="):
            raise ScramAuthFailed(f"server rejected SCRAM authentication: {first[2:]}")
        if not first.startswith("v="):
            raise ScramError("malformed SCRAM message: expected server signature")
        signature = _b64decode(first[2:], "server signature")
        if not hmac.compare_digest(signature, self._expected_server_signature):
            raise ScramAuthFailed("SCRAM server signature is wrong: the server does not know the password")
        self._step = _Step.DONE

    def _keys(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        if self._password is not None:
            return scram_keys(self._password, salt, iterations)
        assert self._client_key is not None and self._server_key is not None
        return self._client_key, self._server_key


# --------------------------------------------------------------------------- SCRAM helpers


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ScramError(f"malformed SCRAM message: invalid base64 in {what}") from None
    if not decoded:
        raise ScramError(f"malformed SCRAM message: empty {what}")
    return decoded


def _decode(data: bytes) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("malformed SCRAM message: not valid UTF-8") from None


def _parse_client_first(text: str) -> tuple[str, str, str]:
    """(channel-binding flag, client-first-message-bare, client nonce), refusing what we cannot do."""
    cbind_flag, _, rest = text.partition(",")
    authzid, comma, bare = rest.partition(",")
    if not comma:
        raise ScramError("malformed SCRAM message: missing GS2 header")
    if cbind_flag == "p" or cbind_flag.startswith("p="):
        raise ScramError("client requires SCRAM channel binding, but it is not supported")
    if cbind_flag not in ("n", "y"):
        raise ScramError(f"malformed SCRAM message: unexpected channel-binding flag {cbind_flag!r}")
    if authzid:
        raise ScramError("client uses authorization identity, but it is not supported")
    attributes = bare.split(",")
    if attributes[0].startswith("m="):
        raise ScramError("client requires an unsupported SCRAM extension")
    if len(attributes) < 2 or not attributes[0].startswith("n=") or not attributes[1].startswith("r="):
        raise ScramError("malformed SCRAM message: expected user name and nonce attributes")
    client_nonce = attributes[1][2:]
    _check_nonce(client_nonce, "client nonce")
    return cbind_flag, bare, client_nonce


def _parse_server_first(text: str, client_nonce: str) -> tuple[str, bytes, int]:
    """(combined nonce, salt, iteration count) from server-first-message."""
    attributes = text.split(",")
    if attributes[0].startswith("m="):
        raise ScramError("server requires an unsupported SCRAM extension")
    if len(attributes) < 3 or [a[:2] for a in attributes[:3]] != ["r=", "s=", "i="]:
        raise ScramError("malformed SCRAM message: expected nonce, salt and iteration count")
    nonce, salt_text, iterations_text = (a[2:] for a in attributes[:3])
    if not nonce.startswith(client_nonce) or len(nonce) == len(client_nonce):
        raise ScramError("invalid SCRAM response: server nonce does not extend the client nonce")
    _check_nonce(nonce, "server nonce")
    salt = _b64decode(salt_text, "salt")
    if not (iterations_text.isascii() and iterations_text.isdigit()) or int(iterations_text) < 1:
        raise ScramError(f"malformed SCRAM message: invalid iteration count {iterations_text!r}")
    return nonce, salt, int(iterations_text)


def _split_proof(client_final: str) -> tuple[str, bytes]:
    # The proof is always the last attribute; everything before it is signed.
    without_proof, separator, proof_text = client_final.rpartition(",p=")
    if not separator or "," in proof_text:
        raise ScramError("malformed SCRAM message: proof must be the last attribute")
    proof = _b64decode(proof_text, "proof")
    if len(proof) != SCRAM_KEY_LENGTH:
        raise ScramError("malformed SCRAM message: proof has the wrong length")
    return without_proof, proof


def _check_nonce(nonce: str, what: str, error: type[Exception] = ScramError) -> None:
    # RFC 5802: printable ASCII except ",".
    if not nonce or any(not ("\x21" <= ch <= "\x7e") or ch == "," for ch in nonce):
        raise error(f"invalid SCRAM {what}: must be non-empty printable ASCII without ','")


def _escape_username(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")
