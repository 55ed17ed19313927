"""Who the embedded broker admits (mqtt_user_file in auth_file's format) and where clients may publish."""

from __future__ import annotations

import pytest

from pgbalancer.events.credentials import (
    BrokerCredentials,
    Verdict,
    may_publish,
    may_subscribe,
    password_matches,
)
from pgbalancer.pgwire.auth import make_scram_verifier, md5_password_hash
from pgbalancer.userlist import parse_userlist

SCRAM = make_scram_verifier("scram-pw", b"0123456789abcdef", 4096).encode()
USERS = parse_userlist(
    f'"plain" "plain-pw"\n"hashed" "{md5_password_hash("hashed", "md5-pw")}"\n"scrammed" "{SCRAM}"\n'
)


@pytest.mark.parametrize(
    ("user", "password"), [("plain", "plain-pw"), ("hashed", "md5-pw"), ("scrammed", "scram-pw")]
)
def test_each_stored_form_admits_its_password(user: str, password: str) -> None:
    credentials = BrokerCredentials(USERS)
    assert credentials.check(user, password) is Verdict.ACCEPTED
    assert credentials.check(user, password + "x") is Verdict.WRONG_PASSWORD
    assert credentials.check(user, None) is Verdict.NO_PASSWORD


def test_an_md5_hash_is_not_itself_a_password() -> None:
    stored = md5_password_hash("hashed", "md5-pw")
    assert not password_matches("hashed", stored, stored)


def test_unknown_users_are_refused_even_when_anonymous_is_allowed() -> None:
    credentials = BrokerCredentials(USERS, allow_anonymous=True)
    assert credentials.check("nobody", "plain-pw") is Verdict.UNKNOWN_USER
    assert credentials.check("plain", "wrong") is Verdict.WRONG_PASSWORD
    assert credentials.check(None, None) is Verdict.ANONYMOUS_ACCEPTED


def test_anonymous_is_refused_by_default() -> None:
    verdict = BrokerCredentials(USERS).check(None, None)
    assert verdict is Verdict.ANONYMOUS_REFUSED
    assert not verdict.admitted
    assert "mqtt_allow_anonymous = off" in verdict.value


def test_no_password_appears_in_the_repr() -> None:
    assert "plain-pw" not in repr(BrokerCredentials(USERS))


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("pgbalancer", False),
        ("pgbalancer/cluster/config", False),
        ("pgbalancer/nodes/0/status", False),
        ("pgbalancerx/anything", True),
        ("monitoring/heartbeat", True),
    ],
)
def test_clients_never_publish_into_pgbalancers_tree(topic: str, allowed: bool) -> None:
    assert may_publish(topic) is allowed


def test_clients_may_subscribe_to_the_events() -> None:
    assert may_subscribe("pgbalancer/#")
    assert may_subscribe("#")
