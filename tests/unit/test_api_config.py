"""The REST API's config keys: validation rules and the files load_api_settings reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbalancer.api.settings import ApiSettingsError, is_local_address, load_api_settings
from pgbalancer.api.users import Role
from pgbalancer.config import REDACTED, ConfigError, diff_configs, parse_config_text, redacted_settings

MINIMAL = "backend_hostname0 = 'db1'\nauth_type = trust\n"
KEY = "0123456789abcdef0123456789abcdef"


def parse(text: str) -> object:
    return parse_config_text(MINIMAL + text)


def only_error(text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        parse_config_text(MINIMAL + text)
    assert len(excinfo.value.errors) == 1, excinfo.value.errors
    return excinfo.value.errors[0]


def test_defaults() -> None:
    config = parse_config_text(MINIMAL)
    assert (config.api_port, config.api_token_ttl, config.api_login_rate_limit) == (8080, 3600, 10)
    assert (config.api_jwt_issuer, config.api_jwt_audience) == ("pgbalancer", "pgbalancer-api")
    assert not config.api_metrics_auth and not config.api_user_file


def test_api_port_zero_turns_the_api_off_and_clashes_with_nothing() -> None:
    config = parse_config_text(MINIMAL + "api_port = 0\nport = 6432\n")
    assert config.api_port == 0
    assert "or 0 to turn the REST API" in only_error("api_port = -1")


def test_a_key_is_required_beyond_localhost() -> None:
    message = only_error("api_listen_addresses = '*'")
    assert "api_listen_addresses = '*' reaches beyond localhost" in message
    assert "set api_jwt_secret_file" in message
    assert "reaches beyond" in only_error("api_listen_addresses = 'localhost, 10.1.2.3'")
    parse(f"api_listen_addresses = '*'\napi_jwt_secret = '{KEY}'")
    parse("api_listen_addresses = '*'\napi_jwt_secret_file = '/etc/pgbalancer/jwt.key'")
    parse("api_listen_addresses = '*'\napi_port = 0")  # the API is off: nothing to protect


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_needs_no_key(address: str) -> None:
    parse(f"api_listen_addresses = '{address}'")
    assert is_local_address(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.1", "db.example.com", "::"])
def test_other_addresses_are_not_local(address: str) -> None:
    assert not is_local_address(address)


def test_weak_or_doubled_keys_are_refused_without_showing_them() -> None:
    message = only_error("api_jwt_secret = 'short-secret'")
    assert "shorter than 32 characters" in message and "short-secret" not in message
    assert "keep only one" in only_error(f"api_jwt_secret = '{KEY}'\napi_jwt_secret_file = '/k'")


def test_the_tls_pair_goes_together() -> None:
    assert "set api_tls_key_file" in only_error("api_tls_cert_file = '/c.pem'")
    assert "set api_tls_cert_file" in only_error("api_tls_key_file = '/k.pem'")


def test_the_key_is_a_secret_and_users_apply_on_reload() -> None:
    config = parse_config_text(MINIMAL + f"api_jwt_secret = '{KEY}'\n")
    assert redacted_settings(config)["api_jwt_secret"] == REDACTED
    assert KEY not in repr(config)
    changed = parse_config_text(
        MINIMAL + "api_user_file = '/u'\napi_tls_cert_file = '/c'\napi_tls_key_file = '/k'"
    )
    diff = diff_configs(config, changed)
    assert "api_user_file" in diff.applied_live and "api_jwt_secret" in diff.applied_live
    assert {"api_tls_cert_file", "api_tls_key_file"} <= set(diff.restart_required)


def test_load_reads_users_and_key_file(tmp_path: Path) -> None:
    (tmp_path / "users").write_text('"ops" "md5-not-really" "admin"\n')
    (tmp_path / "key").write_text(KEY + "\n")
    config = parse_config_text(
        MINIMAL + "api_user_file = 'users'\napi_jwt_secret_file = 'key'\napi_token_ttl = 120\n",
        base_dir=tmp_path,
    )
    settings = load_api_settings(config)
    user = settings.users.get("ops")
    assert user is not None and user.role is Role.ADMIN
    assert settings.tokens.key == KEY.encode() and settings.tokens.ttl == 120
    assert not settings.key_is_generated and settings.enabled


def test_load_lists_every_bad_file(tmp_path: Path) -> None:
    (tmp_path / "users").write_text('"ops" "pw"\n')
    (tmp_path / "key").write_text("too-short-key")
    (tmp_path / "cert.pem").write_text("not a certificate")
    config = parse_config_text(
        MINIMAL
        + "api_user_file = 'users'\napi_jwt_secret_file = 'key'\n"
        + "api_tls_cert_file = 'cert.pem'\napi_tls_key_file = 'cert.pem'\n",
        base_dir=tmp_path,
    )
    with pytest.raises(ApiSettingsError) as excinfo:
        load_api_settings(config)
    errors = excinfo.value.errors
    assert len(errors) == 3
    assert "api_user_file" in errors[0] and "expected the role" in errors[0]
    assert "shorter than 32 bytes" in errors[1] and "too-short-key" not in errors[1]
    assert "cannot be loaded together" in errors[2]


def test_a_drawn_key_survives_a_reload_but_a_configured_one_replaces_it() -> None:
    first = load_api_settings(parse_config_text(MINIMAL))
    assert first.key_is_generated and len(first.tokens.key) >= 32
    assert load_api_settings(parse_config_text(MINIMAL), first).tokens.key == first.tokens.key
    assert load_api_settings(parse_config_text(MINIMAL)).tokens.key != first.tokens.key
    configured = load_api_settings(parse_config_text(MINIMAL + f"api_jwt_secret = '{KEY}'\n"), first)
    assert configured.tokens.key == KEY.encode() and not configured.key_is_generated
