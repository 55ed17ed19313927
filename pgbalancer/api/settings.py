"""What the REST API needs from the config, with the files it names read and checked.

``load_api_settings(config)`` reads ``api_user_file``, ``api_jwt_secret_file`` and loads the TLS pair
once, so ``pgbalancer --check``, startup and every reload refuse a bad file with a message naming
the key and the fix (as ``auth_file`` is). Without any configured key (allowed on localhost only,
see the config check) a random key is drawn; a reload keeps the one already drawn.

It must never: put the key, a password or a verifier in a message or a repr; start the API.
"""

from __future__ import annotations

import ipaddress
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pgbalancer.api.tokens import TokenSettings
from pgbalancer.api.users import ApiUserError, ApiUsers, load_api_users
from pgbalancer.config import Config

_MIN_KEY_LENGTH = 32


class ApiSettingsError(Exception):
    """A file the API config names cannot be used; ``errors`` has one message each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class ApiSettings:
    enabled: bool
    users: ApiUsers
    tokens: TokenSettings
    key_is_generated: bool  # no api_jwt_secret(_file): drawn at start, tokens die with the process
    login_rate_limit: int
    metrics_auth: bool
    tls_cert_file: str = field(default="")
    tls_key_file: str = field(default="")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)


def is_local_address(address: str) -> bool:
    """localhost or a loopback IP: an API listening only there cannot be reached from elsewhere."""
    ip_text = address.split("%", 1)[0]
    try:
        return address == "localhost" or ipaddress.ip_address(ip_text).is_loopback
    except ValueError:
        return False


def load_api_settings(config: Config, previous: ApiSettings | None = None) -> ApiSettings:
    """Read and check the API's files; ApiSettingsError lists every problem."""
    errors: list[str] = []
    users = _users(config, errors)
    key, generated = _key(config, previous, errors)
    _check_tls(config, errors)
    if errors:
        raise ApiSettingsError(errors)
    return ApiSettings(
        enabled=config.api_port != 0,
        users=users,
        tokens=TokenSettings(key, config.api_jwt_issuer, config.api_jwt_audience, config.api_token_ttl),
        key_is_generated=generated,
        login_rate_limit=config.api_login_rate_limit,
        metrics_auth=config.api_metrics_auth,
        tls_cert_file=config.api_tls_cert_file,
        tls_key_file=config.api_tls_key_file,
    )


def _users(config: Config, errors: list[str]) -> ApiUsers:
    if not config.api_user_file:
        return ApiUsers()
    try:
        return load_api_users(config.api_user_file)
    except ApiUserError as exc:
        errors.extend(f"api_user_file: {error}" for error in exc.errors)
        return ApiUsers()


def _key(config: Config, previous: ApiSettings | None, errors: list[str]) -> tuple[bytes, bool]:
    if config.api_jwt_secret:
        return config.api_jwt_secret.encode("utf-8"), False
    if config.api_jwt_secret_file:
        return _key_from_file(config.api_jwt_secret_file, errors), False
    if previous is not None and previous.key_is_generated:
        return previous.tokens.key, True  # a reload must not log everybody out
    return secrets.token_bytes(_MIN_KEY_LENGTH), True


def _key_from_file(path: str, errors: list[str]) -> bytes:
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        errors.append(
            f"api_jwt_secret_file = '{path}': cannot read it ({exc.strerror or type(exc).__name__}); make it "
            "readable by the pgbalancer process or point api_jwt_secret_file at the right file"
        )
        return b""
    if len(key) < _MIN_KEY_LENGTH:
        errors.append(
            f"api_jwt_secret_file = '{path}': the key in it is shorter than {_MIN_KEY_LENGTH} bytes, too "
            "weak for HS256; write a long random key into it (e.g. 'openssl rand -hex 32 > FILE')"
        )
    return key


def _check_tls(config: Config, errors: list[str]) -> None:
    if not (config.api_tls_cert_file and config.api_tls_key_file):
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.api_tls_cert_file, config.api_tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc.args[-1])
        errors.append(
            f"api_tls_cert_file = '{config.api_tls_cert_file}' and api_tls_key_file cannot be loaded "
            f"together ({reason}); give a readable PEM certificate and its matching unencrypted PEM key"
        )
