"""Who may connect to the embedded MQTT broker, and what they may do there, pure.

Role: check an MQTT CONNECT's user name and password against ``mqtt_user_file`` (the auth_file
format: each password is plaintext, a PostgreSQL md5 hash or a SCRAM-SHA-256 verifier, read by
:mod:`pgbalancer.userlist` and checked with :mod:`pgbalancer.pgwire.auth`), and decide the topic
rules: anyone admitted may subscribe to anything, including ``pgbalancer/#``, but no client may
publish into ``pgbalancer`` or below it (only pgbalancer itself publishes there, from inside).

It must never: compare secrets with ``==`` (``hmac.compare_digest`` only); put a password in a
result, a message or a repr; import trio, asyncio, threads or sockets.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pgbalancer.events.payloads import TOPIC_PREFIX
from pgbalancer.pgwire.auth import is_md5_hash, make_scram_verifier, md5_password_hash, parse_scram_verifier
from pgbalancer.userlist import SCRAM_PREFIX


class Verdict(StrEnum):
    """The outcome of one CONNECT, phrased for the log line that records it."""

    ACCEPTED = "accepted"
    ANONYMOUS_ACCEPTED = "accepted without credentials (mqtt_allow_anonymous = on)"
    ANONYMOUS_REFUSED = "refused: no user name and mqtt_allow_anonymous = off"
    UNKNOWN_USER = "refused: user not in mqtt_user_file"
    WRONG_PASSWORD = "refused: wrong password"
    NO_PASSWORD = "refused: no password given"

    @property
    def admitted(self) -> bool:
        return self in (Verdict.ACCEPTED, Verdict.ANONYMOUS_ACCEPTED)


@dataclass(frozen=True)
class BrokerCredentials:
    """The users of mqtt_user_file and whether clients without a user name are let in."""

    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    allow_anonymous: bool = False

    def check(self, username: str | None, password: str | None) -> Verdict:
        if username is None:
            return Verdict.ANONYMOUS_ACCEPTED if self.allow_anonymous else Verdict.ANONYMOUS_REFUSED
        stored = self.users.get(username)
        if stored is None:
            # Spend the same effort as for a real user so timing does not tell which users exist.
            password_matches(username, _DECOY_VERIFIER, password or "")
            return Verdict.UNKNOWN_USER
        if password is None:
            return Verdict.NO_PASSWORD
        return Verdict.ACCEPTED if password_matches(username, stored, password) else Verdict.WRONG_PASSWORD


# A well-formed verifier no password matches (all-zero keys), used for unknown users.
_DECOY_VERIFIER = SCRAM_PREFIX + "4096:AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "=:" + "A" * 43 + "="


def password_matches(user: str, stored: str, offered: str) -> bool:
    """True if ``offered`` is the password that ``stored`` (plaintext, md5 hash or SCRAM verifier) keeps."""
    verifier = parse_scram_verifier(stored)
    if verifier is not None:
        candidate = make_scram_verifier(offered, verifier.salt, verifier.iterations)
        keys_match = hmac.compare_digest(candidate.stored_key, verifier.stored_key)
        return hmac.compare_digest(candidate.server_key, verifier.server_key) and keys_match
    if is_md5_hash(stored):
        return hmac.compare_digest(md5_password_hash(user, offered).encode(), stored.encode())
    return hmac.compare_digest(_raw(offered), _raw(stored))


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def may_publish(topic: str) -> bool:
    """Clients may publish anywhere except pgbalancer's own tree."""
    return topic != TOPIC_PREFIX and not topic.startswith(TOPIC_PREFIX + "/")


def may_subscribe(topic_filter: str) -> bool:
    """Every topic filter may be subscribed to (the events are meant to be read)."""
    return bool(topic_filter)
