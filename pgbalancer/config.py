"""The one configuration model of pgbalancer: defaults, parsing, validation, reload diff.

Role: ``pgbalancer.conf`` (pgpool-style ``key = value``) plus ``PGBALANCER_<KEY>`` environment
overrides become one frozen :class:`Config`. Every key is declared exactly once, as a field of
``Config`` (or of ``BackendConfig`` for the ``backend_*N`` keys) whose metadata carries its
description, category, value type, secrecy and whether a reload can apply it. The defaults, the
parser, the validation, the reload diff, the redacted view and ``docs/configuration.md`` are all
derived from those declarations, so they cannot disagree.

It must never: keep a default anywhere but in the field declarations; import trio, open sockets or
read clocks; read files outside ``load_config`` (``parse_config_text`` is pure); put a secret's value
in an error message, a repr or the redacted view; stop at the first error (every problem is reported
at once, each naming the key, the bad value, the fix, and the line when it came from the file).
"""

import argparse
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import ssl
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

from pgbalancer.userlist import UserlistError, load_userlist
from pgbalancer.vip.commands import CommandTemplateError, split_template

ENV_PREFIX: Final = "PGBALANCER_"
REDACTED: Final = "********"
DEFAULT_SOURCE: Final = "pgbalancer.conf"

_T = TypeVar("_T")
_META: Final = "pgbalancer.config"
_MAX_VALUE_SHOWN: Final = 200  # long enough for any sane path, short enough for a log line
_NEAR_MISS: Final = 0.7  # difflib ratio above which an unknown key is taken for a misspelt one


# --------------------------------------------------------------------------- enums


class PoolMode(StrEnum):
    """When a server connection goes back to its pool."""

    SESSION = "session"
    TRANSACTION = "transaction"
    STATEMENT = "statement"


class AuthType(StrEnum):
    """How clients authenticate to pgbalancer (PgBouncer's meaning)."""

    TRUST = "trust"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"


class LoadBalanceAlgorithm(StrEnum):
    """How read-only statements are spread over the backends."""

    ADAPTIVE = "adaptive"
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"
    RANDOM = "random"


class SslMode(StrEnum):
    """TLS modes, with libpq's names (client_tls_sslmode gives them PgBouncer's meaning)."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class PartitionReadPolicy(StrEnum):
    """What a watchdog node cut off from the Raft majority does with reads (writes are refused)."""

    REFUSE = "refuse"
    STALE = "stale"


class MqttMode(StrEnum):
    """Where cluster events are published."""

    EMBEDDED = "embedded"
    EXTERNAL = "external"
    OFF = "off"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Category(StrEnum):
    """Sections of docs/configuration.md, in the order they appear there."""

    LISTENER = "Proxy listener"
    BACKENDS = "Backends"
    AUTH = "Client authentication"
    TLS = "TLS"
    POOLING = "Pooling"
    LOAD_BALANCING = "Load balancing"
    CACHE = "Query result cache"
    HEALTH_CHECK = "Health checks"
    API = "REST API and metrics"
    EVENTS = "MQTT events"
    WATCHDOG = "Watchdog (Raft)"
    VIP = "Virtual IP"
    PROCESS = "Process"


class ApplyOn(StrEnum):
    """What it takes for a changed value to take effect."""

    RELOAD = "reload"  # SIGHUP or POST /api/v1/control/reload applies it to the running node
    RESTART = "restart"  # the node must be restarted; a reload reports it in restart_required


# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """The configuration cannot be used. ``errors`` holds every problem found, one message each."""

    def __init__(self, errors: Iterable[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class _BadValue(Exception):
    """Why a value's text was refused; the caller adds the key, the (maybe redacted) value and the fix."""


# --------------------------------------------------------------------------- value kinds


@dataclass(frozen=True)
class _Kind:
    """How one type of value is read from text, written back, and described."""

    type_name: str
    expectation: str  # completes "set <key> to ..."
    convert: Callable[[str], Any]
    render: Callable[[Any], str] = str
    is_path: bool = False  # relative paths resolve against the config file's directory


_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,18}")
_NUMBER_RE: Final = re.compile(
    r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})(?:[eE][+-]?[0-9]{1,3})?"
)
_LISTEN_HOST_RE: Final = re.compile(r"[A-Za-z0-9._:%-]+")
_HOST_PORT_RE: Final = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.%]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})"
)
_TRUE_WORDS: Final = frozenset({"on", "true", "yes", "1"})
_FALSE_WORDS: Final = frozenset({"off", "false", "no", "0"})


def _render_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _integer(minimum: int, maximum: int, expectation: str, type_name: str = "integer") -> _Kind:
    def convert(text: str) -> int:
        if not _INT_RE.fullmatch(text.strip()):
            raise _BadValue("not an integer")
        value = int(text)
        if not minimum <= value <= maximum:
            raise _BadValue("out of range")
        return value

    return _Kind(type_name, expectation, convert)


def _number(
    minimum: float, expectation: str, *, exclusive: bool, type_name: str, maximum: float = math.inf
) -> _Kind:
    def convert(text: str) -> float:
        if not _NUMBER_RE.fullmatch(text.strip()):
            raise _BadValue("not a number")
        value = float(text)
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum) or value > maximum:
            raise _BadValue("out of range")
        return value

    return _Kind(type_name, expectation, convert, _render_number)


def _convert_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise _BadValue("not a boolean")


def _choice(enum_type: type[StrEnum]) -> _Kind:
    choices = [member.value for member in enum_type]

    def convert(text: str) -> StrEnum:
        word = text.strip().lower()
        if word in choices:
            return enum_type(word)
        close = difflib.get_close_matches(word, choices, n=1)
        raise _BadValue("unknown value" + (f" (did you mean '{close[0]}'?)" if close else ""))

    return _Kind(" | ".join(choices), "one of " + ", ".join(choices), convert)


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")] if text.strip() else []


def _convert_listen_addresses(text: str) -> tuple[str, ...]:
    addresses = _split_list(text)
    if not addresses:
        raise _BadValue("empty")
    if "*" in addresses and len(addresses) > 1:
        raise _BadValue("'*' already means every interface and must stand alone")
    for address in addresses:
        if address != "*" and not _LISTEN_HOST_RE.fullmatch(address):
            raise _BadValue(f"{_quote(address)} is not a host name or IP address")
    return tuple(addresses)


def _convert_names(text: str) -> tuple[str, ...]:
    names = _split_list(text)
    if any(not name for name in names):
        raise _BadValue("has an empty name between commas")
    return tuple(names)


def _convert_peers(text: str) -> tuple[str, ...]:
    peers = _split_list(text)
    for peer in peers:
        match = _HOST_PORT_RE.fullmatch(peer)
        if match is None:
            raise _BadValue(f"{_quote(peer)} is not host:port")
        if not 1 <= int(match["port"]) <= 65535:
            raise _BadValue(f"{_quote(peer)} has a port outside 1-65535")
        if match["ipv6"] is not None and not _is_ip_address(match["ipv6"]):
            raise _BadValue(f"{_quote(peer)} has an invalid IPv6 address")
    duplicates = sorted({peer for peer in peers if peers.count(peer) > 1})
    if duplicates:
        raise _BadValue(f"lists {_quote(duplicates[0])} twice")
    return tuple(peers)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _convert_ip(text: str) -> str:
    address = text.strip()
    if address and not _is_ip_address(address):
        raise _BadValue("not an IP address")
    return address


def _convert_host(text: str) -> str:
    host = text.strip()
    if not host:
        raise _BadValue("empty")
    if any(char.isspace() or char == "," for char in host):
        raise _BadValue("contains a space or a comma")
    return host


def _convert_path(text: str) -> str:
    if "\0" in text:
        raise _BadValue("contains a NUL character")
    return text


def _convert_text(text: str) -> str:
    return text


def _convert_pool_modes(text: str) -> tuple[tuple[str, PoolMode], ...]:
    pairs = []
    for item in _split_list(text):
        name, separator, mode = item.rpartition(":")
        if not separator or not name.strip():
            raise _BadValue(f"{item!r} is not name:mode")
        try:
            pairs.append((name.strip(), PoolMode(mode.strip().lower())))
        except ValueError as exc:
            raise _BadValue(f"{mode.strip()!r} is not a pool mode") from exc
    return tuple(pairs)


def _render_list(values: tuple[str, ...]) -> str:
    return ",".join(values)


def _render_bool(value: bool) -> str:
    return "on" if value else "off"


_PORT: Final = _integer(1, 65535, "a TCP port number between 1 and 65535", "port")
_POSITIVE_COUNT: Final = _integer(1, 1_000_000, "a whole number between 1 and 1000000")
_COUNT_OR_ZERO: Final = _integer(0, 2**31 - 1, "a whole number, 0 or more (0 means unlimited)")
_SECONDS_OR_ZERO: Final = _integer(
    0, 2**31 - 1, "a whole number of seconds, 0 or more (0 means unlimited)", "integer (seconds)"
)
_POSITIVE_SECONDS: Final = _number(
    0.0, "a number of seconds greater than 0, such as 5 or 0.5", exclusive=True, type_name="number (seconds)"
)
_WEIGHT: Final = _number(0.0, "a number, 0 or more, such as 1 or 0.5", exclusive=False, type_name="number")
_MESSAGE_SIZE: Final = _integer(
    1024, 2**30, "a number of bytes between 1024 and 1073741824 (1 GiB)", "integer (bytes)"
)
_POOL_MODE_MAP: Final = _Kind(
    "list of name:mode",
    "a comma-separated list of name:mode pairs with mode session, transaction or statement, "
    "such as 'analytics:session'",
    _convert_pool_modes,
    lambda pairs: ",".join(f"{name}:{mode}" for name, mode in pairs),
)
_BOOL: Final = _Kind("boolean", "on or off (also true/false, yes/no, 1/0)", _convert_bool, _render_bool)
_LISTEN_ADDRESSES: Final = _Kind(
    "list of addresses",
    "a comma-separated list of host names or IP addresses, or '*' for every interface",
    _convert_listen_addresses,
    _render_list,
)
_NAMES: Final = _Kind("list of names", "a comma-separated list of user names", _convert_names, _render_list)
_PEERS: Final = _Kind(
    "list of host:port",
    "a comma-separated list of host:port, such as 'node1:9000,node2:9000' (IPv6 as '[2001:db8::1]:9000')",
    _convert_peers,
    _render_list,
)
_IP: Final = _Kind("IP address", "an IPv4 or IPv6 address such as 192.0.2.10, or '' for none", _convert_ip)
_HOST: Final = _Kind(
    "host", "a host name, an IP address or a Unix socket directory, such as 'db1.example.com'", _convert_host
)
_PATH: Final = _Kind("path", "a file path", _convert_path, is_path=True)
_TEXT: Final = _Kind("string", "a string", _convert_text)


def _convert_command(text: str) -> str:
    try:
        split_template(text)
    except CommandTemplateError as exc:
        raise _BadValue(str(exc)) from None
    return text.strip()


def _convert_command_or_empty(text: str) -> str:
    return _convert_command(text) if text.strip() else ""


_COMMAND: Final = _Kind(
    "command", "a command line such as 'ip addr add $_IP_$/24 dev $_IF_$'", _convert_command
)
_COMMAND_OR_EMPTY: Final = _Kind(
    "command", "a command line such as 'arping -U -c 1 -I $_IF_$ $_IP_$', or ''", _convert_command_or_empty
)


def _convert_fraction(text: str) -> float:
    if not _NUMBER_RE.fullmatch(text.strip()):
        raise _BadValue("not a number")
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise _BadValue("out of range")
    return value


def _convert_function_patterns(text: str) -> tuple[str, ...]:
    patterns = _convert_names(text)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _BadValue(f"{_quote(pattern)} is not a valid regular expression ({exc})") from None
    return patterns


_SIZE_UNITS: Final = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
_SIZE_RE: Final = re.compile(r"\s*(\d{1,12})\s*([kKmMgG]?[bB]?)\s*")


def _convert_size(text: str) -> int:
    match = _SIZE_RE.fullmatch(text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise _BadValue("not a size")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not 1024 <= value <= 1 << 40:
        raise _BadValue("out of range")
    return value


def _render_size(value: int) -> str:
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


_SIZE: Final = _Kind(
    "size (bytes)",
    "a size between 1kB and 1024GB, in bytes or with a unit, such as 64MB, 400kB or 1048576",
    _convert_size,
    _render_size,
)
_FRACTION: Final = _Kind(
    "number (0-1)", "a number between 0 and 1, such as 0.1", _convert_fraction, _render_number
)
_FUNCTION_PATTERNS: Final = _Kind(
    "list of function names",
    "a comma-separated list of function names or regular expressions, such as 'get_.*,report_totals'",
    _convert_function_patterns,
    _render_list,
)


# --------------------------------------------------------------------------- field declarations


@dataclass(frozen=True)
class _Meta:
    kind: _Kind
    category: Category
    applies: ApplyOn
    doc: str
    secret: bool


def _setting(
    default: _T, kind: _Kind, category: Category, applies: ApplyOn, doc: str, *, secret: bool = False
) -> _T:
    """Declare one config key: its default, type, documentation and reload behaviour, all in one place."""
    meta = _Meta(kind, category, applies, " ".join(doc.split()), secret)
    created: _T = field(default=default, repr=not secret, metadata={_META: meta})  # no secret in a repr
    return created


def _required_setting(kind: _Kind, category: Category, applies: ApplyOn, doc: str) -> Any:
    """Declare a key that has no default and must be set."""
    return field(metadata={_META: _Meta(kind, category, applies, " ".join(doc.split()), False)})


_L, _R = ApplyOn.RELOAD, ApplyOn.RESTART

WATCHDOG_ELECTION_TIMEOUT_MIN: Final = 0.1
WATCHDOG_ELECTION_TIMEOUT_MAX: Final = 10.0


@dataclass(frozen=True)
class BackendConfig:
    """One PostgreSQL server: backend_hostnameN, backend_portN, backend_weightN, backend_data_directoryN."""

    node_id: int
    hostname: str = _required_setting(
        _HOST,
        Category.BACKENDS,
        _R,
        """Host name, IP address or Unix socket directory of backend N. Setting it is what declares
        backend N; backends are numbered 0, 1, 2… without gaps.""",
    )
    port: int = _setting(5432, _PORT, Category.BACKENDS, _R, "PostgreSQL port of backend N.")
    weight: float = _setting(
        1.0,
        _WEIGHT,
        Category.BACKENDS,
        _L,
        """Relative share of read-only statements for backend N (0 = never balanced to it). The
        adaptive algorithm uses it as the starting point it learns from.""",
    )
    data_directory: str = _setting(
        "",
        _TEXT,
        Category.BACKENDS,
        _L,
        """Data directory of backend N on its own machine; used to rejoin a failed old primary with
        pg_rewind. Empty = unknown.""",
    )


@dataclass(frozen=True)
class Config:
    """The whole validated configuration of one pgbalancer node. Attribute names are the file's keys."""

    # Proxy listener
    listen_addresses: tuple[str, ...] = _setting(
        ("localhost",),
        _LISTEN_ADDRESSES,
        Category.LISTENER,
        _R,
        "Addresses the PostgreSQL proxy listens on, comma separated; '*' means every interface.",
    )
    port: int = _setting(5432, _PORT, Category.LISTENER, _R, "TCP port of the PostgreSQL proxy.")

    # Client authentication
    auth_type: AuthType = _setting(  # noqa: RUF009 (enum defaults are immutable)
        AuthType.SCRAM_SHA_256,
        _choice(AuthType),
        Category.AUTH,
        _L,
        """How clients authenticate, with PgBouncer's meaning: trust = no password asked; md5 = MD5
        password exchange (works with plaintext or md5 entries in auth_file); scram-sha-256 =
        SCRAM exchange (works with plaintext or SCRAM verifier entries).""",
    )
    auth_file: str = _setting(
        "",
        _PATH,
        Category.AUTH,
        _L,
        """Userlist in PgBouncer's format, one '"user" "password-or-verifier"' per line. A relative
        path is relative to the directory of pgbalancer.conf. Required unless auth_type = trust; it
        is re-read on reload.""",
    )
    admin_users: tuple[str, ...] = _setting(
        (),
        _NAMES,
        Category.AUTH,
        _L,
        "Users allowed into the admin console database 'pgbalancer', comma separated.",
    )

    auth_user: str = _setting(
        "",
        _TEXT,
        Category.AUTH,
        _L,
        """User that looks up the secrets of clients missing from auth_file by running auth_query on
        the primary ('' = off; PgBouncer's meaning). The looked-up SCRAM verifier or md5 hash is used
        exactly like an auth_file entry, including the backend login by SCRAM pass-through, so no
        plaintext password is needed anywhere. auth_user itself logs in like any user: put its
        plaintext password in auth_file (an md5 hash works only if the server uses md5 for it), or
        let the server trust it in pg_hba.conf; a SCRAM verifier entry cannot log auth_user in.
        Needs auth_type md5 or scram-sha-256. pgbalancer keeps at most 2 auth_user connections per
        database.""",
    )
    auth_query: str = _setting(
        "SELECT usename, passwd FROM pg_shadow WHERE usename=$1",
        _TEXT,
        Category.AUTH,
        _L,
        """Query that returns the stored secret of user $1: one row with a column named passwd (or
        exactly two columns, the secret second), or no row / NULL for an unknown user. The user name
        is sent as a bound parameter, never pasted into the SQL. Reading pg_shadow needs a
        superuser; otherwise point it at a SECURITY DEFINER function owned by one, such as
        'SELECT usename, passwd FROM pgbalancer.user_lookup($1)', executable only by auth_user.""",
    )
    auth_dbname: str = _setting(
        "",
        _TEXT,
        Category.AUTH,
        _L,
        """Database auth_user connects to to run auth_query; '' = the database the client asked
        for (as in PgBouncer), so auth_query must then work in every database.""",
    )
    auth_query_cache_ttl: int = _setting(
        0,
        _integer(0, 3600, "a whole number of seconds between 0 (no caching) and 3600", "integer (seconds)"),
        Category.AUTH,
        _L,
        """Seconds a secret found by auth_query is reused for later logins of the same user and
        database without asking the server again (0 = ask on every login). A changed password takes
        effect after at most this long; unknown users are never cached. At most 10000 entries.""",
    )

    # TLS (PgBouncer's key names; file paths are relative to the config file's directory)
    client_tls_sslmode: SslMode = _setting(  # noqa: RUF009 (enum defaults are immutable)
        SslMode.DISABLE,
        _choice(SslMode),
        Category.TLS,
        _L,
        """TLS towards clients, with PgBouncer's meaning: disable = answer every SSLRequest with 'N';
        allow and prefer = TLS when the client asks, plain TCP otherwise; require = refuse plain
        clients with FATAL 28000 'SSL required'; verify-ca and verify-full = require, and the client
        must present a certificate signed by client_tls_ca_file (verify-full checks nothing more,
        as in PgBouncer). Applies to clients that connect after a reload.""",
    )
    client_tls_cert_file: str = _setting(
        "",
        _PATH,
        Category.TLS,
        _L,
        "PEM certificate (chain) shown to clients; required unless client_tls_sslmode = disable.",
    )
    client_tls_key_file: str = _setting(
        "",
        _PATH,
        Category.TLS,
        _L,
        "Unencrypted PEM key of client_tls_cert_file; required unless client_tls_sslmode = disable.",
    )
    client_tls_ca_file: str = _setting(
        "",
        _PATH,
        Category.TLS,
        _L,
        """PEM CA certificates that client certificates must chain to; required when
        client_tls_sslmode is verify-ca or verify-full, unused otherwise.""",
    )
    server_tls_sslmode: SslMode = _setting(  # noqa: RUF009 (enum defaults are immutable)
        SslMode.DISABLE,
        _choice(SslMode),
        Category.TLS,
        _L,
        """TLS towards the backends, with libpq's sslmode meaning: disable = plain TCP; allow = plain
        first, and TLS again if the backend refuses the plain login with SQLSTATE 28000 (a hostssl
        pg_hba.conf); prefer = ask for TLS, fall back to plain TCP only if the backend answers 'N';
        require = TLS, certificate not checked; verify-ca = TLS with a certificate that chains to
        server_tls_ca_file; verify-full = verify-ca plus the certificate must name backend_hostnameN.
        The default stays disable so that upgrading changes nothing; prefer or stronger is
        recommended when backends are reached over a network. Applies to server connections opened
        after a reload.""",
    )
    server_tls_ca_file: str = _setting(
        "",
        _PATH,
        Category.TLS,
        _L,
        """PEM CA certificates the backends' certificates must chain to (verify-ca, verify-full);
        '' = the system's trusted CAs.""",
    )
    server_tls_cert_file: str = _setting(
        "",
        _PATH,
        Category.TLS,
        _L,
        "PEM client certificate pgbalancer presents to the backends ('' = none); needs server_tls_key_file.",
    )
    server_tls_key_file: str = _setting(
        "",
        _PATH,
        Category.TLS,
        _L,
        "PEM private key of server_tls_cert_file (unencrypted).",
    )

    # Pooling (pgpool's names; see "Pooling" in docs/configuration.md for the mapping)
    pool_mode: PoolMode = _setting(  # noqa: RUF009 (enum defaults are immutable)
        PoolMode.TRANSACTION,
        _choice(PoolMode),
        Category.POOLING,
        _L,
        """When a server connection goes back to its pool: session = when the client disconnects;
        transaction = when a transaction ends; statement = after every statement (multi-statement
        transactions are refused). Applies to sessions that start after the reload.""",
    )
    num_init_children: int = _setting(
        32,
        _POSITIVE_COUNT,
        Category.POOLING,
        _L,
        """Maximum server connections in one pool, a pool being the connections to one backend for
        one (database, user). Clients beyond it wait in the pool's queue.""",
    )
    max_pool: int = _setting(
        4,
        _POSITIVE_COUNT,
        Category.POOLING,
        _L,
        """How many distinct (database, user) pools each backend may hold, so one backend gets at
        most num_init_children times max_pool server connections from each worker process (see
        workers).""",
    )
    child_life_time: int = _setting(
        300,
        _SECONDS_OR_ZERO,
        Category.POOLING,
        _L,
        "Seconds an idle pooled server connection is kept before it is closed (0 = forever).",
    )
    child_max_connections: int = _setting(
        0,
        _COUNT_OR_ZERO,
        Category.POOLING,
        _L,
        "Client sessions one server connection serves before it is retired (0 = unlimited).",
    )
    connection_life_time: int = _setting(
        0,
        _SECONDS_OR_ZERO,
        Category.POOLING,
        _L,
        """Maximum age in seconds of a server connection, checked when it returns to the pool
        (0 = unlimited).""",
    )
    server_reset_query: str = _setting(
        "DISCARD ALL",
        _TEXT,
        Category.POOLING,
        _L,
        "SQL run on a server connection when a client session releases it ('' = none).",
    )
    server_connect_timeout: float = _setting(
        5.0, _POSITIVE_SECONDS, Category.POOLING, _L, "Seconds allowed to connect and log in to a backend."
    )
    client_login_timeout: float = _setting(
        60.0,
        _POSITIVE_SECONDS,
        Category.POOLING,
        _L,
        "Seconds a client has to finish its startup and authentication before it is disconnected.",
    )
    query_wait_timeout: float = _setting(
        120.0,
        _POSITIVE_SECONDS,
        Category.POOLING,
        _L,
        """Seconds a client waits in the pool's queue for a server connection (PgBouncer's name);
        then it gets SQLSTATE 53300 naming the pool and the setting to raise.""",
    )
    max_message_size: int = _setting(
        268435456,
        _MESSAGE_SIZE,
        Category.POOLING,
        _L,
        "Largest protocol message accepted from a client or a server, in bytes; larger is an error.",
    )
    database_pool_mode: tuple[tuple[str, PoolMode], ...] = _setting(
        (),
        _POOL_MODE_MAP,
        Category.POOLING,
        _L,
        """Per-database pool_mode overrides, e.g. 'analytics:session,app:transaction'. A user_pool_mode
        entry wins over a database entry, which wins over pool_mode.""",
    )
    user_pool_mode: tuple[tuple[str, PoolMode], ...] = _setting(
        (),
        _POOL_MODE_MAP,
        Category.POOLING,
        _L,
        "Per-user pool_mode overrides, e.g. 'etl:session'. Highest precedence.",
    )
    max_prepared_statements: int = _setting(
        200,
        _POSITIVE_COUNT,
        Category.POOLING,
        _L,
        """Protocol-level prepared statements each server connection keeps (LRU) in transaction and
        statement pooling; clients' statements are re-prepared transparently on whichever server
        they land on.""",
    )
    max_unsynced_messages: int = _setting(
        4096,
        _COUNT_OR_ZERO,
        Category.POOLING,
        _L,
        """Extended-protocol messages a client may pipeline without a Sync (transaction and statement
        pooling); beyond it the client gets FATAL 54000 (0 = unlimited).""",
    )
    max_client_conn: int = _setting(
        1000,
        _POSITIVE_COUNT,
        Category.POOLING,
        _L,
        "Client connections this node accepts at once; one more gets SQLSTATE 53300 at once.",
    )
    reserve_pool_size: int = _setting(
        0,
        _COUNT_OR_ZERO,
        Category.POOLING,
        _L,
        """Extra server connections a pool may open when a client has waited reserve_pool_timeout
        seconds (0 = no reserve).""",
    )
    reserve_pool_timeout: float = _setting(
        5.0,
        _POSITIVE_SECONDS,
        Category.POOLING,
        _L,
        "Seconds a client waits before the reserve pool may serve it.",
    )
    client_idle_timeout: int = _setting(
        0,
        _SECONDS_OR_ZERO,
        Category.POOLING,
        _L,
        """Close a client connection idle (outside a transaction) this many seconds, in every
        pool_mode; a statement still running is not idleness (0 = never).""",
    )
    idle_transaction_timeout: int = _setting(
        0,
        _SECONDS_OR_ZERO,
        Category.POOLING,
        _L,
        """Close a client that holds a server connection inside a transaction and stays silent this
        many seconds, in every pool_mode; the server is rolled back and reused (0 = never).""",
    )

    def pool_mode_for(self, database: str, user: str) -> PoolMode:
        """The pool mode for a database/user pair: user override, then database, then pool_mode."""
        return (
            dict(self.user_pool_mode).get(user)
            or dict(self.database_pool_mode).get(database)
            or self.pool_mode
        )

    # Load balancing
    load_balance_mode: bool = _setting(
        True,
        _BOOL,
        Category.LOAD_BALANCING,
        _L,
        """Spread read-only statements over the backends with load_balance_algorithm; off sends
        every statement to the primary.""",
    )
    load_balance_algorithm: LoadBalanceAlgorithm = _setting(  # noqa: RUF009 (enum defaults are immutable)
        LoadBalanceAlgorithm.ADAPTIVE,
        _choice(LoadBalanceAlgorithm),
        Category.LOAD_BALANCING,
        _L,
        """How a read-only statement picks its backend: adaptive learns from latency, errors and
        statement complexity; round_robin; weighted (by backend_weightN); least_connections;
        random.""",
    )
    delay_threshold: int = _setting(
        0,
        _integer(0, 2**62, "a number of bytes, 0 or more (0 = no limit)", "integer (bytes)"),
        Category.LOAD_BALANCING,
        _L,
        """Replication lag in bytes of WAL above which a standby gets no reads and is not re-added
        after a failure (0 = no limit).""",
    )
    delay_threshold_by_time: float = _setting(
        0.0,
        _number(0.0, "a number of seconds, 0 or more", exclusive=False, type_name="number (seconds)"),
        Category.LOAD_BALANCING,
        _L,
        """Replication lag in seconds above which a standby gets no reads and is not re-added after a
        failure (0 = no limit).""",
    )
    read_only_function_list: tuple[str, ...] = _setting(
        (),
        _FUNCTION_PATTERNS,
        Category.LOAD_BALANCING,
        _L,
        """Functions that never write, as in Pgpool-II: a read calling any other function that is not a
        known read-only built-in goes to the primary. Entries are regular expressions matched against the
        whole name (bare or schema-qualified), case-insensitively. nextval, setval, pg_advisory_*, lo_* and
        other writing built-ins go to the primary whatever the lists say.""",
    )
    write_function_list: tuple[str, ...] = _setting(
        (),
        _FUNCTION_PATTERNS,
        Category.LOAD_BALANCING,
        _L,
        """Functions that may write (regular expressions, as read_only_function_list); a read calling one
        goes to the primary. Set alone (read_only_function_list empty), it means, as in Pgpool-II, that
        every other function is read-only.""",
    )
    lazy_begin: bool = _setting(
        True,
        _BOOL,
        Category.LOAD_BALANCING,
        _L,
        """Hold BEGIN back (pgbalancer answers it) and send it with the transaction's first statement: a
        transaction that starts with a read at READ COMMITTED is balanced like one, and moves to the
        primary at its first write if it has only read so far. Off: every transaction not declared READ
        ONLY runs on the primary.""",
    )
    read_your_writes: bool = _setting(
        True,
        _BOOL,
        Category.LOAD_BALANCING,
        _L,
        """After a session commits a write, its reads go to the primary or to a standby that has replayed
        past that commit's WAL position (causal consistency per client connection).""",
    )
    ai_learning_rate: float = _setting(
        0.1,
        _FRACTION,
        Category.LOAD_BALANCING,
        _L,
        """How fast the adaptive balancer's latency and error estimates follow new observations
        (exponential weighting; errors and timeouts always teach at least 0.5).""",
    )
    ai_exploration_rate: float = _setting(
        0.2,
        _FRACTION,
        Category.LOAD_BALANCING,
        _L,
        """Share of reads the adaptive balancer sends to a node drawn by weight rather than by score while
        it knows little; it decays toward ai_exploration_floor as samples accumulate.""",
    )
    ai_exploration_floor: float = _setting(
        0.005,
        _FRACTION,
        Category.LOAD_BALANCING,
        _L,
        """Least share of exploring reads once the adaptive balancer is confident (capped at
        ai_exploration_rate). Besides it, a node not picked for a second gets the next read, so every
        node stays observed at any rate and a recovered node wins its traffic back; a slow node's
        share stays below 1 % of reads, out of the p99.""",
    )

    # Query result cache (issue 9; Pgpool-II's key names)
    memory_cache_enabled: bool = _setting(
        False,
        _BOOL,
        Category.CACHE,
        _R,
        """Cache the results of cacheable reads (one SELECT/WITH/VALUES/TABLE outside a transaction
        block, calling only immutable functions, reading only plain permanent tables) and answer
        repeats from memory with the exact bytes PostgreSQL sent. Writes seen by any pgbalancer
        node invalidate the tables they touch on every node (through Raft when watchdog_nodes is
        set) and in every worker process of a node (through generations in shared memory, before
        the writer's client is answered). Needs transaction or statement pooling.""",
    )
    memqcache_total_size: int = _setting(
        64 << 20,
        _SIZE,
        Category.CACHE,
        _L,
        """Memory the result cache may hold: entries, keys and index, counted in real bytes; least
        recently used entries are evicted beyond it. The node's total: with several workers each
        worker holds its own entries within an equal share (memqcache_total_size / workers).""",
    )
    memqcache_maxcache: int = _setting(
        400 << 10,
        _SIZE,
        Category.CACHE,
        _L,
        """Largest result cached. A bigger result streams to the client as usual and is not
        buffered (it stops being collected as soon as it passes this size).""",
    )
    memqcache_expire: int = _setting(
        0,
        _SECONDS_OR_ZERO,
        Category.CACHE,
        _L,
        """Seconds a cached result lives at most (0 = until invalidated or evicted). Bounds the
        staleness caused by writes that bypass pgbalancer. A /* pgbalancer: cache ttl=N */ hint
        sets it for one statement.""",
    )
    memqcache_exclude_tables: tuple[str, ...] = _setting(
        (),
        _FUNCTION_PATTERNS,
        Category.CACHE,
        _L,
        """Tables whose reads are never cached: names or regular expressions matched against the
        bare table name, case-insensitively, such as 'audit_log,tmp_.*'.""",
    )
    memqcache_prefetch: bool = _setting(
        False,
        _BOOL,
        Category.CACHE,
        _L,
        """Warm the cache after an invalidation: re-run, on the primary, the most hit of the
        cached queries it dropped (self-contained ones: a simple Query, or an extended batch with
        an unnamed statement), with the session settings they were cached under.""",
    )
    memqcache_prefetch_count: int = _setting(
        10,
        _POSITIVE_COUNT,
        Category.CACHE,
        _L,
        "How many of the most hit dropped queries memqcache_prefetch re-runs per invalidation (top N).",
    )
    memqcache_prefetch_rate: float = _setting(
        20.0,
        _number(
            0.0,
            "a number of queries per second greater than 0, such as 20",
            exclusive=True,
            type_name="number (per second)",
        ),
        Category.CACHE,
        _L,
        """Most queries per second memqcache_prefetch sends to the primary; queries beyond what
        that allows are dropped, not queued.""",
    )
    memqcache_hit_lease: float = _setting(
        0.25,
        _POSITIVE_SECONDS,
        Category.CACHE,
        _L,
        """With watchdog_nodes set: a node serves cache hits only while a Raft barrier it started at
        most this long ago has been committed and applied (it starts one every quarter of it), and
        a write's ReadyForQuery is held this long after its invalidation is committed. So a read
        after an acknowledged write never sees pre-write data on any node; writes pay this much
        latency. Must exceed the Raft commit time (about 0.05 s) plenty.""",
    )
    memqcache_invalidation_timeout: float = _setting(
        5.0,
        _POSITIVE_SECONDS,
        Category.CACHE,
        _L,
        """With watchdog_nodes set: seconds a write's CommandComplete/ReadyForQuery is held while its
        invalidation is committed through Raft and applied by the peers. Past it the client gets
        its answer with a WARNING, and this node serves no cache hits until it is back in contact
        with the Raft leader.""",
    )

    # Health checks
    health_check_period: float = _setting(
        5.0,
        _POSITIVE_SECONDS,
        Category.HEALTH_CHECK,
        _L,
        """Seconds between two probes of each backend. Shorter finds a dead primary sooner (1 gives
        failover in a second or two) at the cost of one connection per backend per period and worker;
        older setups used 30, which leaves writes failing for that long. A connection error seen by
        a client session triggers a probe at once, whatever the period. Bound: a backend that dies
        leaves routing within health_check_period + health_check_max_retries x
        health_check_retry_delay seconds when its port refuses connections (a host that does not
        answer at all adds up to health_check_timeout per attempt), and sooner when a client's
        connection to it fails first.""",
    )
    sr_check_period: float = _setting(
        0.5,
        _number(0.0, "a number of seconds, 0 or more", exclusive=False, type_name="number (seconds)"),
        Category.HEALTH_CHECK,
        _L,
        """Seconds between two reads of every backend's WAL position, between health checks, over one
        kept connection per backend and worker (0 = only at health checks). A session that wrote
        reads from a standby again once it has replayed past that write's commit, so this bounds how
        long its reads stay on the primary; it also keeps the lag that delay_threshold compares
        fresh. Pgpool-II's name; its default is 10.""",
    )
    health_check_user: str = _setting(
        "postgres", _TEXT, Category.HEALTH_CHECK, _L, "User the health checker logs in as."
    )
    health_check_password: str = _setting(
        "",
        _TEXT,
        Category.HEALTH_CHECK,
        _L,
        "Password of health_check_user ('' = none, e.g. trust or a .pgpass entry).",
        secret=True,
    )
    health_check_database: str = _setting(
        "postgres", _TEXT, Category.HEALTH_CHECK, _L, "Database the health checker connects to."
    )
    health_check_timeout: float = _setting(
        10.0,
        _POSITIVE_SECONDS,
        Category.HEALTH_CHECK,
        _L,
        "Seconds one probe attempt may take (connect, log in, query) before it counts as failed.",
    )
    health_check_max_retries: int = _setting(
        1,
        _integer(0, 100, "a whole number between 0 and 100"),
        Category.HEALTH_CHECK,
        _L,
        """Extra attempts before a backend is confirmed down. A primary that restarts within
        health_check_max_retries x health_check_retry_delay seconds is not failed over; raise it if
        crash recovery takes longer on your servers, lower it (0) for the fastest failover.""",
    )
    health_check_retry_delay: float = _setting(
        1.0,
        _number(0.0, "a number of seconds, 0 or more", exclusive=False, type_name="number (seconds)"),
        Category.HEALTH_CHECK,
        _L,
        "Seconds between two attempts of one probe.",
    )
    failover_on_backend_error: bool = _setting(
        True,
        _BOOL,
        Category.HEALTH_CHECK,
        _L,
        """on: a connection-level error on a server connection makes pgbalancer re-probe that backend
        at once (a standby is kept out of read routing meanwhile). Only a failed re-probe marks it down,
        so one killed connection (pg_terminate_backend) never causes a failover. off: errors are
        ignored and only the periodic health check finds failures; a write that cannot reach the
        primary is then refused at once (08006) instead of waiting for a failover, so clients see
        errors until the next health round fails over.""",
    )
    auto_failback: bool = _setting(
        True,
        _BOOL,
        Category.HEALTH_CHECK,
        _L,
        """Re-add a standby that was down once it answers again, is in recovery and lags less than
        delay_threshold / delay_threshold_by_time. Never applies to an old primary: that one is
        fenced until it is rejoined as a standby.""",
    )
    failover_command: str = _setting(
        "",
        _TEXT,
        Category.HEALTH_CHECK,
        _L,
        """Shell command run when a backend is confirmed down ('' = built-in behaviour). When the
        primary failed it replaces the built-in pg_promote() and must promote node %m; pgbalancer then
        waits until that node leaves recovery. Pgpool-II's substitutions: %d failed node id, %h failed
        host, %p failed port, %D failed data directory, %m new primary id, %H new primary host, %r new
        primary port, %R new primary data directory, %M and %P old primary id, %N old primary host,
        %S old primary port, %% a percent sign. It runs as the owner of the new primary's data
        directory when pgbalancer is root and backend_data_directoryN is set.""",
    )
    follow_primary_command: str = _setting(
        "",
        _TEXT,
        Category.HEALTH_CHECK,
        _L,
        """Shell command run for each standby after a failover or switchover, instead of the
        built-in ALTER SYSTEM SET primary_conninfo + pg_reload_conf() ('' = built-in). Same
        substitutions as failover_command, with %d, %h, %p and %D naming the standby.""",
    )

    # REST API and metrics
    api_listen_addresses: tuple[str, ...] = _setting(
        ("localhost",),
        _LISTEN_ADDRESSES,
        Category.API,
        _R,
        "Addresses the REST API and /metrics listen on, comma separated; '*' means every interface.",
    )
    api_port: int = _setting(
        8080,
        _integer(
            0,
            65535,
            "a TCP port number between 1 and 65535, or 0 to turn the REST API and /metrics off",
            "port",
        ),
        Category.API,
        _R,
        """TCP port of the REST API and /metrics; 0 = no REST API and no /metrics. With more than one
        worker process, worker 0 serves it, so its pool and client figures are worker 0's.""",
    )
    api_user_file: str = _setting(
        "",
        _PATH,
        Category.API,
        _L,
        """REST API users, one '"name" "password-or-verifier" "role"' per line, role admin (may act)
        or viewer (may read). The password is a SCRAM-SHA-256 verifier, an md5 hash (of password +
        name, as PostgreSQL stores it) or plaintext (development only: a warning is logged). Empty =
        no API users: only /healthz, /readyz, /metrics and openapi.json answer. Re-read on reload.""",
    )
    api_jwt_secret: str = _setting(
        "",
        _TEXT,
        Category.API,
        _L,
        """HS256 key that signs and verifies API tokens, at least 32 characters. Required (or
        api_jwt_secret_file) when api_listen_addresses goes beyond localhost; on localhost without
        one, each start draws a random key, so tokens do not outlive a restart. Changing it on
        reload invalidates every token issued before.""",
        secret=True,
    )
    api_jwt_secret_file: str = _setting(
        "",
        _PATH,
        Category.API,
        _L,
        """File holding the HS256 key instead of api_jwt_secret (surrounding whitespace ignored), so
        the secret need not sit in pgbalancer.conf. Re-read on reload.""",
    )
    api_jwt_issuer: str = _setting(
        "pgbalancer", _TEXT, Category.API, _L, "iss claim put in API tokens and required of them."
    )
    api_jwt_audience: str = _setting(
        "pgbalancer-api", _TEXT, Category.API, _L, "aud claim put in API tokens and required of them."
    )
    api_token_ttl: int = _setting(
        3600,
        _integer(60, 86400, "a whole number of seconds between 60 and 86400", "integer (seconds)"),
        Category.API,
        _L,
        "Seconds an API token from POST /api/v1/auth/login stays valid.",
    )
    api_login_rate_limit: int = _setting(
        10,
        _COUNT_OR_ZERO,
        Category.API,
        _L,
        """Failed password logins (POST /api/v1/auth/login or HTTP Basic) one source address may make
        per minute; beyond it the API answers 429 without checking the password (0 = unlimited).""",
    )
    api_metrics_auth: bool = _setting(
        False,
        _BOOL,
        Category.API,
        _L,
        """Require API credentials (any role, Bearer token or HTTP Basic) for /metrics; off lets
        Prometheus scrape without them.""",
    )
    api_tls_cert_file: str = _setting(
        "",
        _PATH,
        Category.API,
        _R,
        """PEM certificate (chain) of the REST API; with api_tls_key_file the API speaks HTTPS only.
        '' = plain HTTP (a warning is logged when the API listens beyond localhost).""",
    )
    api_tls_key_file: str = _setting(
        "", _PATH, Category.API, _R, "Unencrypted PEM private key of api_tls_cert_file."
    )

    # MQTT events
    mqtt_mode: MqttMode = _setting(  # noqa: RUF009 (enum defaults are immutable)
        MqttMode.EMBEDDED,
        _choice(MqttMode),
        Category.EVENTS,
        _R,
        """embedded = run an MQTT broker inside pgbalancer on mqtt_port; external = publish to the
        broker at mqtt_broker_url; off = publish no events.""",
    )
    mqtt_port: int = _setting(1883, _PORT, Category.EVENTS, _R, "TCP port of the MQTT broker.")
    mqtt_listen_addresses: tuple[str, ...] = _setting(
        ("localhost",),
        _LISTEN_ADDRESSES,
        Category.EVENTS,
        _R,
        """Addresses the embedded MQTT broker listens on, comma separated; '*' means every interface.
        With more than one worker process, only worker 0 runs the broker.""",
    )
    mqtt_allow_anonymous: bool = _setting(
        False,
        _BOOL,
        Category.EVENTS,
        _L,
        """Let MQTT clients without a user name into the embedded broker (they may subscribe, never
        publish into pgbalancer/#). Off: only the users of mqtt_user_file get in.""",
    )
    mqtt_user_file: str = _setting(
        "",
        _PATH,
        Category.EVENTS,
        _L,
        """Users of the embedded MQTT broker, in auth_file's format ('"user" "password"', the password
        plaintext, an md5 hash or a SCRAM-SHA-256 verifier). Empty = no users. Re-read on reload.""",
    )
    mqtt_broker_url: str = _setting(
        "",
        _TEXT,
        Category.EVENTS,
        _R,
        """The broker events are published to with mqtt_mode = external, as
        mqtt://[user:password@]host[:port] or mqtts://...""",
        secret=True,
    )
    mqtt_stats_interval: float = _setting(
        10.0,
        _POSITIVE_SECONDS,
        Category.EVENTS,
        _L,
        "Seconds between two pgbalancer/stats/pools events; also the period of pgbalancer/cluster/health.",
    )
    mqtt_tls_cert_file: str = _setting(
        "",
        _PATH,
        Category.EVENTS,
        _R,
        """PEM certificate (chain) of the embedded broker's TLS listener on mqtt_tls_port; with
        mqtt_tls_key_file. '' = no TLS listener.""",
    )
    mqtt_tls_key_file: str = _setting(
        "", _PATH, Category.EVENTS, _R, "Unencrypted PEM private key of mqtt_tls_cert_file."
    )
    mqtt_tls_port: int = _setting(
        8883, _PORT, Category.EVENTS, _R, "TCP port of the embedded broker's TLS listener (MQTT over TLS)."
    )
    # MQTT event rate bound (issue 8: a flood must not slow the data path)
    mqtt_max_event_rate: float = _setting(
        200.0,
        _number(
            0.0,
            "a number of events per second greater than 0, such as 200",
            exclusive=True,
            type_name="number (per second)",
        ),
        Category.EVENTS,
        _L,
        """Events a second the MQTT thread hands to the broker at most (bursts of a quarter of a
        second's worth), so a flood of events costs the query path a bounded share of the GIL. The
        excess waits in the event queue; what does not fit is dropped and counted, except that a
        retained topic's newest state replaces its waiting predecessor.""",
    )
    node_name: str = _setting(
        "",
        _TEXT,
        Category.PROCESS,
        _R,
        """Name of this pgbalancer node in events (the 'node' field of every MQTT payload) and, later,
        among Raft peers. '' = the machine's host name.""",
    )

    # Watchdog (Raft)
    watchdog_nodes: tuple[str, ...] = _setting(
        (),
        _PEERS,
        Category.WATCHDOG,
        _R,
        """The watchdog (Raft) members as host:port, comma separated: list every member, this node
        included, and use the same list on every node (an entry equal to this node's own
        watchdog_listen_address:watchdog_port is recognised as itself; listing only the peers works
        too). Empty = a single node without Raft, failover quorum or virtual IP election.""",
    )
    watchdog_port: int = _setting(
        9000, _PORT, Category.WATCHDOG, _R, "TCP port of this node's Raft endpoint."
    )
    watchdog_listen_address: str = _setting(
        "",
        _TEXT,
        Category.WATCHDOG,
        _R,
        """This node's own address on the watchdog network: the Raft endpoint binds to it (and only to
        it) and it names this node among the members. '' = the watchdog_nodes entry on watchdog_port
        whose host is an address of this machine.""",
    )
    watchdog_lease: float = _setting(
        2.0,
        _POSITIVE_SECONDS,
        Category.WATCHDOG,
        _R,
        """Seconds a node cut off from the Raft majority keeps accepting writes. After that it refuses
        new writes with SQLSTATE 25006 (read_only_sql_transaction: "lost its watchdog quorum, use
        another node or the virtual IP") until it is back in contact, so it never writes to a
        primary the majority may have failed over from.""",
    )
    partition_read_policy: PartitionReadPolicy = _setting(  # noqa: RUF009 (enum defaults are immutable)
        PartitionReadPolicy.STALE,
        _choice(PartitionReadPolicy),
        Category.WATCHDOG,
        _L,
        """What a node cut off from the majority for longer than watchdog_lease does with reads:
        stale = keep serving them (they may miss what the majority side committed since), refuse =
        refuse them like writes.""",
    )
    watchdog_data_dir: str = _setting(
        "/var/lib/pgbalancer/watchdog",
        _PATH,
        Category.WATCHDOG,
        _R,
        """Directory of the Raft journal and full dump (created if missing), so the term, vote and
        log survive a restart. Each node needs its own.""",
    )
    failover_require_consensus: bool = _setting(
        True,
        _BOOL,
        Category.WATCHDOG,
        _L,
        """With a watchdog: on = the primary (or any backend) is declared down only when a majority of
        watchdog nodes vote it down, so one node's network blip never causes a failover (Pgpool-II's
        failover_require_consensus). off = the leader's own failed probe is enough.""",
    )
    watchdog_secret: str = _setting(
        "",
        _TEXT,
        Category.WATCHDOG,
        _R,
        """Shared secret of the Raft peers (pysyncobj's password), the same on every node. Required
        when watchdog_nodes is set: without it the peers exchange unauthenticated pickled
        messages.""",
        secret=True,
    )

    # Watchdog (Raft) timing
    watchdog_election_timeout: float = _setting(
        0.3,
        _number(
            WATCHDOG_ELECTION_TIMEOUT_MIN,
            f"a number of seconds between {WATCHDOG_ELECTION_TIMEOUT_MIN:g} and "
            f"{WATCHDOG_ELECTION_TIMEOUT_MAX:g}, such as 0.3 or 1",
            exclusive=False,
            type_name="number (seconds)",
            maximum=WATCHDOG_ELECTION_TIMEOUT_MAX,
        ),
        Category.WATCHDOG,
        _R,
        """Raft election timeout t: a follower that hears nothing from the leader for a random time
        between t and 2t starts an election. The other Raft timings scale with it (heartbeats every
        t/6, a cut-off leader steps down after 10t/3, the new leader takes the virtual IP after that
        plus max(0.3 s, t), a silent peer connection is dropped after 5t, a watchdog write waits
        max(3 s, 10t)). The trade-off: failover after the leader's death takes about 2t plus the
        step-down time plus the VIP margin (about 1.9 s with 0.3, 6.3 s with 1), while a t too
        short for the host makes leadership flap when a member's Raft thread is starved of CPU
        for longer than t. Keep 0.3 on dedicated machines; on noisy or shared VMs (steal time,
        CPU-starved containers) use 1 or more. The same value on every node.""",
    )

    # Virtual IP
    delegate_ip: str = _setting(
        "",
        _IP,
        Category.VIP,
        _R,
        """Floating virtual IP held by the Raft leader only; clients connect to it. Empty = no
        virtual IP.""",
    )
    delegate_ip_interface: str = _setting(
        "", _TEXT, Category.VIP, _R, "Network interface delegate_ip is added to, such as 'eth0'."
    )
    if_up_cmd: str = _setting(
        "ip addr add $_IP_$/32 dev $_IF_$",
        _COMMAND,
        Category.VIP,
        _R,
        """Command that adds the virtual IP, run by the node that takes it. $_IP_$ is replaced by
        delegate_ip and $_IF_$ by delegate_ip_interface (pgpool's placeholder style). The line is
        split into words like a POSIX shell does (quotes work) and run without a shell; write
        sh -c '...' for shell features, or prefix sudo when pgbalancer does not run as root.""",
    )
    if_down_cmd: str = _setting(
        "ip addr del $_IP_$/32 dev $_IF_$",
        _COMMAND,
        Category.VIP,
        _R,
        """Command that removes the virtual IP (same placeholders and splitting as if_up_cmd). A
        guard process runs it also when pgbalancer dies without cleaning up (even SIGKILL), so a
        dead node never keeps the address.""",
    )
    arping_cmd: str = _setting(
        "arping -U -c 1 -I $_IF_$ $_IP_$",
        _COMMAND_OR_EMPTY,
        Category.VIP,
        _R,
        """Command that sends one gratuitous ARP for the virtual IP (same placeholders and splitting
        as if_up_cmd; arping is Debian's iputils-arping). Without it clients keep the old holder's
        MAC until their ARP cache expires. '' = send none.""",
    )
    delegate_ip_arp_count: int = _setting(
        3,
        _integer(1, 100, "a whole number between 1 and 100"),
        Category.VIP,
        _R,
        "Gratuitous ARPs sent right after taking the virtual IP, delegate_ip_arp_interval apart.",
    )
    delegate_ip_arp_interval: float = _setting(
        0.5,
        _POSITIVE_SECONDS,
        Category.VIP,
        _R,
        "Seconds between the gratuitous ARPs sent on taking the VIP.",
    )
    delegate_ip_arp_refresh: float = _setting(
        10.0,
        _number(0.0, "a number of seconds, 0 or more", exclusive=False, type_name="number (seconds)"),
        Category.VIP,
        _R,
        """Seconds between the gratuitous ARPs repeated for as long as the node holds the virtual
        IP (switches and clients that missed the first ones learn it then); 0 = none.""",
    )

    # Process
    workers: int = _setting(
        0,
        _integer(0, 256, "a whole number between 0 (one per CPU) and 256"),
        Category.PROCESS,
        _R,
        """Proxy worker processes sharing the port with SO_REUSEPORT: 0 = one per CPU the node may
        run on, 1 = a single process (no supervisor). With more than one, a supervisor process
        forks the workers, restarts any that dies, passes SIGHUP on and owns pid_file; cancel
        requests reach the right worker through worker_socket_dir. Each worker has its own pools,
        so server connections per backend multiply by the number of workers.""",
    )
    worker_socket_dir: str = _setting(
        "/tmp",
        _PATH,
        Category.PROCESS,
        _R,
        """Directory of the workers' peer sockets (mode 0600): pgbalancer-<port>-worker<N>.sock,
        through which a worker passes a cancel request to the worker that owns the session, and
        pgbalancer-<port>-worker<N>-stats.sock, from which worker 0 gathers every worker's traffic
        figures for the REST API, /metrics and MQTT. Unused with workers = 1.""",
    )
    log_level: LogLevel = _setting(  # noqa: RUF009 (enum defaults are immutable)
        LogLevel.INFO, _choice(LogLevel), Category.PROCESS, _L, "Least severe log level written."
    )
    pid_file: str = _setting(
        "",
        _PATH,
        Category.PROCESS,
        _R,
        "File the node writes its process id to ('' = none); relative to the config file's directory.",
    )

    # Not a key of its own: built from the backend_*N keys.
    backends: tuple[BackendConfig, ...] = ()


def _metas(cls: type[Any]) -> dict[str, _Meta]:
    return {f.name: f.metadata[_META] for f in dataclasses.fields(cls) if _META in f.metadata}


_SETTINGS: Final = _metas(Config)
_BACKEND_SETTINGS: Final = _metas(BackendConfig)
_BACKEND_KEY_RE: Final = re.compile(r"backend_(" + "|".join(_BACKEND_SETTINGS) + r")(0|[1-9][0-9]{0,8})")


@dataclass(frozen=True)
class SettingSpec:
    """Public description of one key, for the API and tooling (backend keys use the suffix N)."""

    key: str
    type_name: str
    default: object
    category: Category
    applies: ApplyOn
    secret: bool
    doc: str


def _spec(key: str, meta: _Meta, default: object) -> SettingSpec:
    return SettingSpec(key, meta.kind.type_name, default, meta.category, meta.applies, meta.secret, meta.doc)


def _defaults(cls: type[Any]) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


SETTINGS: Final[Mapping[str, SettingSpec]] = MappingProxyType(
    {key: _spec(key, meta, _defaults(Config)[key]) for key, meta in _SETTINGS.items()}
)
BACKEND_SETTINGS: Final[Mapping[str, SettingSpec]] = MappingProxyType(
    {
        f"backend_{attr}N": _spec(f"backend_{attr}N", meta, _defaults(BackendConfig).get(attr))
        for attr, meta in _BACKEND_SETTINGS.items()
    }
)


# --------------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class _Entry:
    """One `key = value` as written, or the syntax problem of a line that could not be read."""

    key: str
    raw: str
    origin: str  # "pgbalancer.conf:12" or "environment PGBALANCER_PORT"
    problem: str | None = None
    from_env: bool = False


class _SyntaxProblem(Exception):
    """A line that is not `key = value`; phrased with its fix, never quoting a value."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


_KEY_RE: Final = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def _read_quoted(text: str) -> tuple[str, int]:
    """Read a single-quoted value at the start of text ('' is a quote); return it and where it ends."""
    chunks: list[str] = []
    position = 1
    while True:
        closing = text.find("'", position)
        if closing < 0:
            raise _SyntaxProblem(
                "the quoted value has no closing quote; end it with ' and write a quote inside it as ''"
            )
        chunks.append(text[position:closing])
        if text.startswith("''", closing):
            chunks.append("'")
            position = closing + 2
            continue
        return "".join(chunks), closing + 1


def _lex_line(line: str) -> tuple[str, str] | None:
    """(key, value text) of one line, None for blank and comment lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    match = _KEY_RE.match(line)
    if match is None:
        first_word = re.split(r"[\s=]", stripped, maxsplit=1)[0]
        raise _SyntaxProblem(
            f"expected key = value on the line starting with {_quote(first_word)}; write each setting as "
            "key = value, or start the line with # to comment it out"
        )
    key, rest = match[1].lower(), line[match.end() :]
    if not rest.startswith("'"):
        return key, rest.split("#", 1)[0].strip()  # unquoted: a # starts a comment
    try:
        value, end = _read_quoted(rest)
    except _SyntaxProblem as problem:
        raise _SyntaxProblem(f"{key}: {problem}", key) from None
    tail = rest[end:].strip()
    if tail and not tail.startswith("#"):
        raise _SyntaxProblem(
            f"{key}: unexpected text after the closing quote; put the whole value inside the quotes, "
            "writing a quote inside it as ''",
            key,
        )
    return key, value


def _lex_file(text: str, source: str) -> list[_Entry]:
    """The file's entries in line order, unreadable lines and repeated keys as entries with a problem."""
    entries: list[_Entry] = []
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        origin = f"{source}:{number}"
        try:
            lexed = _lex_line(line.removesuffix("\r"))
        except _SyntaxProblem as problem:
            entries.append(_Entry(problem.key, "", origin, f"{origin}: {problem}"))
            continue
        if lexed is None:
            continue
        key, value = lexed
        if key in first_line_of:
            repeated = f"{origin}: {key} is already set on line {first_line_of[key]}; keep only one"
            entries.append(_Entry(key, value, origin, repeated))
            continue
        first_line_of[key] = number
        entries.append(_Entry(key, value, origin))
    return entries


def _env_entries(env: Mapping[str, str]) -> list[_Entry]:
    """PGBALANCER_<KEY> overrides; a value wholly in single quotes is unquoted like in the file."""
    entries = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX):
            entries.append(
                _Entry(
                    name[len(ENV_PREFIX) :].lower(),
                    _unquote_env(env[name]),
                    f"environment {name}",
                    from_env=True,
                )
            )
    return entries


def _unquote_env(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        try:
            unquoted, end = _read_quoted(value)
        except _SyntaxProblem:
            return value
        if end == len(value):
            return unquoted
    return value


# --------------------------------------------------------------------------- messages


def _quote(value: str) -> str:
    """A value as the file would spell it, shortened and with control characters made visible."""
    shown = value if len(value) <= _MAX_VALUE_SHOWN else value[:_MAX_VALUE_SHOWN] + "…"
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in shown)
    return "'" + shown.replace("'", "''") + "'"


def _is_secret(key: str) -> bool:
    meta = _SETTINGS.get(key)
    return meta is not None and meta.secret


def _shown_value(key: str, value: str) -> str:
    return f"'{REDACTED}'" if _is_secret(key) else _quote(value)


def _bad_value_message(entry: _Entry, kind: _Kind, problem: _BadValue) -> str:
    return (
        f"{entry.origin}: {entry.key} = {_shown_value(entry.key, entry.raw)}: {problem}; "
        f"set {entry.key} to {kind.expectation}"
    )


def _known_keys(for_key: str) -> list[str]:
    """Every key a misspelt for_key could have meant, backend keys numbered like for_key."""
    digits = re.search(r"[0-9]+$", for_key)
    number = digits[0] if digits else "0"
    return [*_SETTINGS, *(f"backend_{attr}{number}" for attr in _BACKEND_SETTINGS)]


def _unknown_key_message(entry: _Entry) -> str | None:
    """The error for a key nobody declared; None for an unrelated PGBALANCER_* variable.

    Other tools (test fixtures, deploy scripts) use the PGBALANCER_ prefix too, so only a near miss
    of a real key is an error in the environment; in the file every unknown key is.
    """
    close = difflib.get_close_matches(entry.key, _known_keys(entry.key), n=1, cutoff=_NEAR_MISS)
    if entry.from_env:
        if not close:
            return None
        return (
            f"{entry.origin}: unknown key {_quote(entry.key)}; did you mean {ENV_PREFIX}{close[0].upper()}?"
        )
    fix = f"did you mean {close[0]}?" if close else "remove it (docs/configuration.md lists every key)"
    return f"{entry.origin}: unknown key {_quote(entry.key)}; {fix}"


# --------------------------------------------------------------------------- building the Config


def _convert(entry: _Entry, meta: _Meta, base_dir: Path) -> object:
    value = meta.kind.convert(entry.raw)
    if meta.kind.is_path and value:
        return os.path.normpath(os.path.join(base_dir.absolute(), value))
    return value


@dataclass
class _Build:
    """What parsing has gathered so far: typed values, where each key came from, and the errors."""

    source: str
    values: dict[str, object] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def where(self, key: str) -> str:
        return self.origins.get(key, self.source)


def _collect(entries: list[_Entry], base_dir: Path, build: _Build) -> dict[int, dict[str, _Entry]]:
    """Convert the plain keys into build.values; return the backend_*N entries by node number.

    Entries are visited in order (file lines, then the environment) so errors come out in that
    order; a later readable entry for the same key overrides an earlier one.
    """
    effective = {entry.key: entry for entry in entries if entry.problem is None}
    backend_entries: dict[int, dict[str, _Entry]] = {}
    for entry in entries:
        if entry.problem is not None:
            build.errors.append(entry.problem)
            build.failed.add("backends" if _BACKEND_KEY_RE.fullmatch(entry.key) else entry.key)
            continue
        if effective[entry.key] is not entry:
            continue
        build.origins[entry.key] = entry.origin
        backend_key = _BACKEND_KEY_RE.fullmatch(entry.key)
        if entry.key in _SETTINGS:
            meta = _SETTINGS[entry.key]
            try:
                build.values[entry.key] = _convert(entry, meta, base_dir)
            except _BadValue as problem:
                build.errors.append(_bad_value_message(entry, meta.kind, problem))
                build.failed.add(entry.key)
        elif backend_key is not None:
            backend_entries.setdefault(int(backend_key[2]), {})[backend_key[1]] = entry
        elif (message := _unknown_key_message(entry)) is not None:
            build.errors.append(message)
    return backend_entries


def _build_backends(
    backend_entries: dict[int, dict[str, _Entry]], build: _Build
) -> tuple[BackendConfig, ...]:
    backends = []
    for node_id in sorted(backend_entries):
        backend = _build_backend(node_id, backend_entries[node_id], build)
        if backend is not None:
            backends.append(backend)
    missing = next((n for n in range(len(backend_entries)) if n not in backend_entries), None)
    if missing is not None:
        present = min(n for n in backend_entries if n > missing)
        some_entry = next(iter(backend_entries[present].values()))
        build.errors.append(
            f"{some_entry.origin}: {some_entry.key} configures backend {present}, but "
            f"backend_hostname{missing} is missing; number the backends 0, 1, 2… without gaps"
        )
        build.failed.add("backends")
    return tuple(backends)


def _build_backend(node_id: int, entries: dict[str, _Entry], build: _Build) -> BackendConfig | None:
    values: dict[str, Any] = {}
    ok = True
    for attr, entry in entries.items():
        try:
            values[attr] = _convert(entry, _BACKEND_SETTINGS[attr], Path("."))
        except _BadValue as problem:
            build.errors.append(_bad_value_message(entry, _BACKEND_SETTINGS[attr].kind, problem))
            ok = False
    if "hostname" not in entries:
        some_key = next(iter(entries.values()))
        build.errors.append(
            f"{some_key.origin}: {some_key.key} is set but backend_hostname{node_id} is not; add "
            f"backend_hostname{node_id} = 'db.example.com' or remove the backend_*{node_id} keys"
        )
        ok = False
    if not ok:
        build.failed.add("backends")
        return None
    return BackendConfig(node_id=node_id, **values)


# --------------------------------------------------------------------------- cross-field rules


def _check_backends_exist(config: Config, build: _Build) -> Iterator[str]:
    if not config.backends:
        yield (
            f"{build.source}: no backend is configured; add backend_hostname0 = 'db.example.com' "
            "(and backend_port0 if it is not 5432)"
        )


def _check_weights(config: Config, build: _Build) -> Iterator[str]:
    if config.load_balance_mode and config.backends and all(b.weight == 0 for b in config.backends):
        yield (
            f"{build.where('backend_weight0')}: every backend_weightN is 0 while load_balance_mode = on, "
            "so no backend could take a read; give at least one backend a weight above 0, "
            "or set load_balance_mode = off"
        )


def _check_auth_file_set(config: Config, build: _Build) -> Iterator[str]:
    if config.auth_type is not AuthType.TRUST and not config.auth_file:
        yield (
            f"{build.where('auth_type')}: auth_type = '{config.auth_type}' needs the users' passwords "
            "but auth_file is empty; set auth_file = '/path/userlist.txt' or auth_type = trust"
        )


def _check_auth_query(config: Config, build: _Build) -> Iterator[str]:
    if not config.auth_user:
        return
    if config.auth_type is AuthType.TRUST:
        yield (
            f"{build.where('auth_user')}: auth_user = {_quote(config.auth_user)} but auth_type = trust asks "
            "no password, so auth_query would never run; set auth_type = scram-sha-256 (or md5), or "
            "set auth_user = ''"
        )
    if "$1" not in config.auth_query:
        yield (
            f"{build.where('auth_query')}: auth_query = {_quote(config.auth_query)} does not use $1, "
            "the user name being looked up; write it like "
            "'SELECT usename, passwd FROM pg_shadow WHERE usename=$1'"
        )


def _check_watchdog_secret(config: Config, build: _Build) -> Iterator[str]:
    if config.watchdog_nodes and not config.watchdog_secret:
        yield (
            f"{build.where('watchdog_nodes')}: watchdog_nodes = "
            f"{_quote(_render_list(config.watchdog_nodes))} but watchdog_secret is empty; without a "
            "secret the Raft peers (pysyncobj) accept unauthenticated pickled messages, so anyone "
            "who can reach watchdog_port could run code on this node: "
            "set watchdog_secret to the same long random string on every node"
        )


def watchdog_self_address(config: Config) -> str:
    """This node's Raft "host:port" (its member id); '' when only the machine's addresses can tell
    (several entries on watchdog_port: pgbalancer.watchdog picks the local one at startup)."""
    if config.watchdog_listen_address:
        return _join_host_port(config.watchdog_listen_address, config.watchdog_port)
    own = [peer for peer in config.watchdog_nodes if _peer_port(peer) == config.watchdog_port]
    return own[0] if len(own) == 1 else ""


def watchdog_peers(config: Config) -> tuple[str, ...]:
    """The other watchdog members' "host:port" (watchdog_nodes without this node's own entry)."""
    me = watchdog_self_address(config)
    return tuple(peer for peer in config.watchdog_nodes if peer != me)


def _peer_port(peer: str) -> int:
    return int(peer.rsplit(":", 1)[1])


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _check_watchdog_identity(config: Config, build: _Build) -> Iterator[str]:
    # Several entries on watchdog_port: the node picks the one whose host is a local address at
    # startup (pgbalancer.watchdog), which needs sockets, so it is not decided here.
    if not config.watchdog_nodes or config.watchdog_listen_address:
        return
    if not any(_peer_port(peer) == config.watchdog_port for peer in config.watchdog_nodes):
        yield (
            f"{build.where('watchdog_nodes')}: no watchdog_nodes entry has this node's watchdog_port "
            f"({config.watchdog_port}), so this node cannot tell which address is its own: add this "
            "node's own host:port to watchdog_nodes, or set watchdog_listen_address to its address on "
            "the watchdog network"
        )


def _check_delegate_ip(config: Config, build: _Build) -> Iterator[str]:
    if config.delegate_ip and not config.delegate_ip_interface:
        yield (
            f"{build.where('delegate_ip')}: delegate_ip = {_quote(config.delegate_ip)} but "
            "delegate_ip_interface is empty, so the leader would not know where to add the virtual IP; "
            "set delegate_ip_interface to the network interface, such as 'eth0'"
        )


def _check_cache(config: Config, build: _Build) -> Iterator[str]:
    if not config.memory_cache_enabled:
        return
    if config.workers > 1 and not config.watchdog_nodes:
        share = config.memqcache_total_size // config.workers
        if config.memqcache_maxcache > share:
            yield (
                f"{build.where('memqcache_total_size')}: each of the {config.workers} workers holds its "
                f"own cache within memqcache_total_size / workers ({_render_size(share)}), which is "
                f"smaller than memqcache_maxcache ({_render_size(config.memqcache_maxcache)}); raise "
                "memqcache_total_size, lower memqcache_maxcache, or set fewer workers"
            )
    session = [
        name
        for name, mode in (*config.database_pool_mode, *config.user_pool_mode)
        if mode is PoolMode.SESSION
    ]
    if config.pool_mode is PoolMode.SESSION or session:
        which = (
            "pool_mode = session"
            if config.pool_mode is PoolMode.SESSION
            else f"session pooling for {', '.join(session)}"
        )
        yield (
            f"{build.where('memory_cache_enabled')}: memory_cache_enabled = on needs transaction or "
            f"statement pooling, but {which}: session pooling relays bytes without reading "
            "statements, so its writes would not invalidate the cache; use pool_mode = transaction"
        )
    if config.memqcache_maxcache > config.memqcache_total_size:
        yield (
            f"{build.where('memqcache_maxcache')}: memqcache_maxcache "
            f"({_render_size(config.memqcache_maxcache)}) is larger than memqcache_total_size "
            f"({_render_size(config.memqcache_total_size)}); "
            "lower memqcache_maxcache or raise memqcache_total_size"
        )


def _is_loopback_name(address: str) -> bool:
    """localhost or a loopback IP (127.0.0.0/8, ::1): reachable from this machine only."""
    ip_text = address.split("%", 1)[0]
    return address == "localhost" or (_is_ip_address(ip_text) and ipaddress.ip_address(ip_text).is_loopback)


def _check_api_security(config: Config, build: _Build) -> Iterator[str]:
    if config.api_jwt_secret and config.api_jwt_secret_file:
        yield (
            f"{build.where('api_jwt_secret_file')}: both api_jwt_secret and api_jwt_secret_file are set; "
            "keep only one of them"
        )
    if config.api_jwt_secret and len(config.api_jwt_secret) < 32:
        yield (
            f"{build.where('api_jwt_secret')}: api_jwt_secret is shorter than 32 characters, too weak for "
            "HS256; set it to a long random string (e.g. the output of 'openssl rand -hex 32')"
        )
    exposed = [a for a in config.api_listen_addresses if not _is_loopback_name(a)]
    if config.api_port and exposed and not (config.api_jwt_secret or config.api_jwt_secret_file):
        yield (
            f"{build.where('api_listen_addresses')}: api_listen_addresses = {_quote(exposed[0])} reaches "
            "beyond localhost but no API token key is set; set api_jwt_secret_file (or api_jwt_secret) to a "
            "random key of at least 32 characters, or set api_listen_addresses = localhost"
        )
    if bool(config.api_tls_cert_file) != bool(config.api_tls_key_file):
        present, missing = (
            ("api_tls_cert_file", "api_tls_key_file")
            if config.api_tls_cert_file
            else ("api_tls_key_file", "api_tls_cert_file")
        )
        yield (
            f"{build.where(present)}: {present} is set but {missing} is empty; HTTPS for the REST API needs "
            f"both, so set {missing} or clear {present}"
        )


def _check_mqtt(config: Config, build: _Build) -> Iterator[str]:
    if config.mqtt_mode is MqttMode.EXTERNAL and not config.mqtt_broker_url:
        yield (
            f"{build.where('mqtt_mode')}: mqtt_mode = external but mqtt_broker_url is empty; set it to the "
            "broker, such as 'mqtt://user:password@broker.example.com:1883', or set mqtt_mode = embedded"
        )
    if config.mqtt_broker_url and not re.match(r"mqtts?://[^/?#]", config.mqtt_broker_url):
        yield (
            f"{build.where('mqtt_broker_url')}: mqtt_broker_url is not mqtt://host[:port] or "
            "mqtts://host[:port]; write it like 'mqtt://user:password@broker.example.com:1883'"
        )
    if bool(config.mqtt_tls_cert_file) != bool(config.mqtt_tls_key_file):
        present, missing = (
            ("mqtt_tls_cert_file", "mqtt_tls_key_file")
            if config.mqtt_tls_cert_file
            else ("mqtt_tls_key_file", "mqtt_tls_cert_file")
        )
        yield (
            f"{build.where(present)}: {present} is set but {missing} is empty; the broker's TLS listener "
            f"needs both, so set {missing} or clear {present}"
        )
    if (
        config.mqtt_mode is MqttMode.EMBEDDED
        and config.mqtt_tls_cert_file
        and config.mqtt_tls_port == config.mqtt_port
    ):
        yield (
            f"{build.where('mqtt_tls_port')}: mqtt_tls_port = {config.mqtt_tls_port} is also mqtt_port; give "
            "the TLS listener its own port (8883 is usual)"
        )


def _check_port_clashes(config: Config, build: _Build) -> Iterator[str]:
    listeners = {"port": config.port}
    if config.api_port:  # 0 = the API is off
        listeners["api_port"] = config.api_port
    if config.mqtt_mode is MqttMode.EMBEDDED:
        listeners["mqtt_port"] = config.mqtt_port
    if config.watchdog_nodes:
        listeners["watchdog_port"] = config.watchdog_port
    taken: dict[int, str] = {}
    for key, port in listeners.items():
        if port in taken:
            yield (
                f"{build.where(key)}: {key} = {port} is also {taken[port]}; give every listener its own "
                f"port by changing {key} or {taken[port]}"
            )
        else:
            taken[port] = key


def _check_client_tls_files(config: Config, build: _Build) -> Iterator[str]:
    mode = config.client_tls_sslmode
    if mode is SslMode.DISABLE:
        return
    for key in ("client_tls_cert_file", "client_tls_key_file"):
        if not getattr(config, key):
            yield (
                f"{build.where('client_tls_sslmode')}: client_tls_sslmode = '{mode}' needs {key}; set it to "
                "a PEM file, or set client_tls_sslmode = disable"
            )
    if mode in (SslMode.VERIFY_CA, SslMode.VERIFY_FULL) and not config.client_tls_ca_file:
        yield (
            f"{build.where('client_tls_sslmode')}: client_tls_sslmode = '{mode}' checks client certificates "
            "but client_tls_ca_file is empty; set it to the PEM file of the CA that signs them, or use "
            "client_tls_sslmode = require"
        )


def _check_server_tls_pair(config: Config, build: _Build) -> Iterator[str]:
    if bool(config.server_tls_cert_file) != bool(config.server_tls_key_file):
        present, missing = (
            ("server_tls_cert_file", "server_tls_key_file")
            if config.server_tls_cert_file
            else ("server_tls_key_file", "server_tls_cert_file")
        )
        yield (
            f"{build.where(present)}: {present} is set but {missing} is empty; a client certificate "
            f"for the backends needs both, so set {missing} or clear {present}"
        )


_CrossCheck = Callable[[Config, _Build], Iterator[str]]

# Each rule names the keys it reads; it is skipped when one of them already failed to parse, so a
# typo in one value does not also produce a confusing complaint about its neighbours.
_CROSS_FIELD_RULES: Final[tuple[tuple[frozenset[str], _CrossCheck], ...]] = (
    (frozenset({"backends"}), _check_backends_exist),
    (frozenset({"backends", "load_balance_mode"}), _check_weights),
    (frozenset({"auth_type", "auth_file"}), _check_auth_file_set),
    (frozenset({"auth_user", "auth_type", "auth_query"}), _check_auth_query),
    (frozenset({"watchdog_nodes", "watchdog_secret"}), _check_watchdog_secret),
    (frozenset({"watchdog_nodes", "watchdog_port", "watchdog_listen_address"}), _check_watchdog_identity),
    (frozenset({"delegate_ip", "delegate_ip_interface"}), _check_delegate_ip),
    (
        frozenset(
            {
                "memory_cache_enabled",
                "workers",
                "pool_mode",
                "database_pool_mode",
                "user_pool_mode",
                "memqcache_maxcache",
                "memqcache_total_size",
            }
        ),
        _check_cache,
    ),
    (
        frozenset(
            {"client_tls_sslmode", "client_tls_cert_file", "client_tls_key_file", "client_tls_ca_file"}
        ),
        _check_client_tls_files,
    ),
    (frozenset({"server_tls_cert_file", "server_tls_key_file"}), _check_server_tls_pair),
    (
        frozenset(
            {
                "api_port",
                "api_listen_addresses",
                "api_jwt_secret",
                "api_jwt_secret_file",
                "api_tls_cert_file",
                "api_tls_key_file",
            }
        ),
        _check_api_security,
    ),
    (
        frozenset({"port", "api_port", "mqtt_mode", "mqtt_port", "watchdog_nodes", "watchdog_port"}),
        _check_port_clashes,
    ),
    (
        frozenset(
            {
                "mqtt_mode",
                "mqtt_port",
                "mqtt_broker_url",
                "mqtt_tls_cert_file",
                "mqtt_tls_key_file",
                "mqtt_tls_port",
            }
        ),
        _check_mqtt,
    ),
)


# --------------------------------------------------------------------------- public API


def _parse(text: str, source: str, base_dir: Path, env: Mapping[str, str]) -> tuple[Config, _Build]:
    build = _Build(source)
    entries = [*_lex_file(text, source), *_env_entries(env)]  # the environment overrides the file
    backends = _build_backends(_collect(entries, base_dir, build), build)
    config = Config(**build.values, backends=backends)  # type: ignore[arg-type]
    for keys, check in _CROSS_FIELD_RULES:
        if not keys & build.failed:
            build.errors.extend(check(config, build))
    return config, build


def parse_config_text(
    text: str,
    *,
    source: str = DEFAULT_SOURCE,
    base_dir: Path = Path("."),
    env: Mapping[str, str] | None = None,
) -> Config:
    """Parse and validate config text plus env overrides, without touching any file.

    ``source`` names the file in messages; relative paths resolve against ``base_dir``. Raises
    ConfigError listing every problem. Files named by the config (auth_file) are checked by
    load_config, not here.
    """
    config, build = _parse(text, source, base_dir, env or {})
    if build.errors:
        raise ConfigError(build.errors)
    return config


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a config file; env defaults to os.environ. Also checks auth_file."""
    path = Path(path)
    text = _read_config_file(path)
    config, build = _parse(text, str(path), path.parent, os.environ if env is None else env)
    if "auth_file" not in build.failed:
        build.errors.extend(_auth_file_errors(config, build.where("auth_file")))
    if "mqtt_user_file" not in build.failed:
        build.errors.extend(_mqtt_user_file_errors(config, build.where("mqtt_user_file")))
    build.errors.extend(_tls_file_errors(config, build))
    if build.errors:
        raise ConfigError(build.errors)
    return config


def _read_config_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; pass the path of an existing pgbalancer.conf "
            "(pgbalancer -f FILE)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror or type(exc).__name__}); "
            "make it a readable file for the pgbalancer process"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


def _auth_file_errors(config: Config, where: str) -> list[str]:
    if not config.auth_file:
        return []
    prefix = f"{where}: auth_file = {_quote(config.auth_file)}"
    auth_file = Path(config.auth_file)
    if not auth_file.is_file():
        return [f"{prefix}: no such file; create the userlist there or set auth_file to its path"]
    if not os.access(auth_file, os.R_OK):
        return [f"{prefix}: not readable by this process; make it readable by the pgbalancer user"]
    try:
        load_userlist(auth_file)
    except UserlistError as exc:
        return [f"{prefix}: {error}" for error in exc.errors]
    return []


def _mqtt_user_file_errors(config: Config, where: str) -> list[str]:
    if not config.mqtt_user_file:
        return []
    try:
        load_userlist(config.mqtt_user_file)
    except UserlistError as exc:
        prefix = f"{where}: mqtt_user_file = {_quote(config.mqtt_user_file)}"
        return [f"{prefix}: {error.replace('auth_file', 'mqtt_user_file')}" for error in exc.errors]
    return []


_TLS_FILE_KEYS: Final = (
    "client_tls_cert_file",
    "client_tls_key_file",
    "client_tls_ca_file",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_key_file",
)


def _tls_file_errors(config: Config, build: _Build) -> list[str]:
    """Every TLS file named must be a readable PEM file that ssl can load (so --check catches it)."""
    errors: list[str] = []
    for key in _TLS_FILE_KEYS:
        path = getattr(config, key)
        if not path or key in build.failed:
            continue
        prefix = f"{build.where(key)}: {key} = {_quote(path)}"
        if not Path(path).is_file():
            errors.append(f"{prefix}: no such file; put the PEM file there or set {key} to its path")
        elif not os.access(path, os.R_OK):
            errors.append(f"{prefix}: not readable by this process; make it readable by the pgbalancer user")
    if errors:
        return errors
    return [*_pem_errors(config, build, "client"), *_pem_errors(config, build, "server")]


def _pem_errors(config: Config, build: _Build, side: str) -> list[str]:
    cert, key, ca = (getattr(config, f"{side}_tls_{name}_file") for name in ("cert", "key", "ca"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    errors: list[str] = []
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            errors.append(
                f"{build.where(f'{side}_tls_cert_file')}: {side}_tls_cert_file and {side}_tls_key_file "
                f"cannot be loaded together ({exc.__class__.__name__}: {exc.strerror or exc.args[-1]}); "
                "give a PEM certificate and its matching unencrypted PEM private key"
            )
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            errors.append(
                f"{build.where(f'{side}_tls_ca_file')}: {side}_tls_ca_file = {_quote(ca)} cannot be loaded "
                f"({exc.strerror or exc.args[-1]}); give a file of PEM CA certificates"
            )
    return errors


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload would change. Keys are spelt as in the file (backend_hostname1, …)."""

    changed: tuple[str, ...]
    restart_required: tuple[str, ...]  # changed, but only a restart applies them
    applied_live: tuple[str, ...]  # changed, and the running node applies them

    @property
    def needs_restart(self) -> bool:
        return bool(self.restart_required)


def _flat_values(config: Config) -> dict[str, object]:
    """Every key as the file spells it -> its typed value, backends included."""
    values: dict[str, object] = {key: getattr(config, key) for key in _SETTINGS}
    for backend in config.backends:
        for attr in _BACKEND_SETTINGS:
            values[f"backend_{attr}{backend.node_id}"] = getattr(backend, attr)
    return values


def _applies_on(key: str) -> ApplyOn:
    if key in _SETTINGS:
        return _SETTINGS[key].applies
    backend_key = _BACKEND_KEY_RE.fullmatch(key)
    assert backend_key is not None, key
    return _BACKEND_SETTINGS[backend_key[1]].applies


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs key by key and sort the changes into live-applicable and restart-only.

    A backend that appears or disappears needs a restart for all of its keys (for now); a changed
    backend_hostnameN or backend_portN needs a restart; backend_weightN and backend_data_directoryN
    apply live.
    """
    old_values, new_values = _flat_values(old), _flat_values(new)
    keys = [*old_values, *(key for key in new_values if key not in old_values)]
    missing = object()
    changed = [key for key in keys if old_values.get(key, missing) != new_values.get(key, missing)]
    restart = [
        key
        for key in changed
        if key not in old_values or key not in new_values or _applies_on(key) is ApplyOn.RESTART
    ]
    live = [key for key in changed if key not in restart]
    return ConfigDiff(tuple(changed), tuple(restart), tuple(live))


def _plain(value: object) -> object:
    """A value as JSON and the file would show it: enums as text, lists comma joined."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return _render_list(value)
    return value


def redacted_settings(config: Config) -> dict[str, object]:
    """Every key -> its value (numbers and booleans typed, lists comma joined); secrets as REDACTED."""
    return {
        key: REDACTED if _is_secret(key) else _plain(value) for key, value in _flat_values(config).items()
    }


# --------------------------------------------------------------------------- reference document


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_default(kind: _Kind, default: object) -> str:
    if default is None:
        return "(required)"
    rendered = kind.render(default)
    return f"`{_md(rendered)}`" if rendered else "(empty)"


def _md_row(key: str, meta: _Meta, default: object) -> str:
    secret = " Secret: shown as `********` by the API." if meta.secret else ""
    return (
        f"| `{key}` | {_md(meta.kind.type_name)} | {_md_default(meta.kind, default)} | {meta.applies} "
        f"| {_md(meta.doc)}{secret} |"
    )


_TABLE_HEAD: Final = ("| key | type | default | applies on | description |", "|---|---|---|---|---|")

_MD_INTRO: Final = """\
# pgbalancer configuration reference

<!-- Generated from pgbalancer/config.py by `make docs` (python -m pgbalancer.config --markdown).
     Do not edit by hand: a unit test fails when this file and the model disagree. -->

pgbalancer reads one file, `pgbalancer.conf`, in pgpool's `key = value` form, using the names
pgpool-II operators already know. `pgbalancer --check -f FILE` validates a file and exits.

## File syntax

- One `key = value` per line. Keys are case-insensitive. A key may appear only once.
- `#` starts a comment, both on its own line and after a value.
- A value may be single-quoted, like pgpool: `listen_addresses = '*'`. Inside quotes, write a quote
  as `''` and a `#` is part of the value. Quote any value that contains `#`.
- Booleans: `on`/`off`, `true`/`false`, `yes`/`no`, `1`/`0`.
- Durations are numbers of seconds.
- Lists are comma separated: `admin_users = 'alice, bob'`.
- Relative paths (`auth_file`, `pid_file`) resolve against the directory of `pgbalancer.conf`.
- Every problem is reported at once, each with its line, the key, the bad value and the fix.

## Environment overrides

`PGBALANCER_<KEY>`, with the key upper-cased, overrides the file: `PGBALANCER_PORT=6543`,
`PGBALANCER_BACKEND_HOSTNAME0=db1.example.com`. A value wholly in single quotes is unquoted as in
the file. Other tools use the prefix too, so an unrelated `PGBALANCER_*` variable is ignored, but
a near miss of a key (`PGBALANCER_PROT`) is an error naming the key it resembles.

## Reload

`applies on` says what a change needs. `reload`: SIGHUP or `POST /api/v1/control/reload` applies it
to the running node (pool settings apply to connections and sessions made after the reload).
`restart`: the node keeps the old value until it is restarted; the reload reports the key as
restart-required.
"""

_MD_CATEGORY_INTROS: Final[Mapping[Category, str]] = {
    Category.BACKENDS: """\
Backends are declared in pgpool's form, one group of keys per backend, numbered N = 0, 1, 2…
without gaps: `backend_hostname0 = 'db1'`, `backend_port0 = 5433`, `backend_hostname1 = 'db2'`.
Setting `backend_hostnameN` declares backend N; its other keys are optional. At least one backend
is required. Adding or removing a backend needs a restart (for now).
""",
    Category.POOLING: """\
pgpool forks one child process per client and caches connections inside each child; pgbalancer is
one event loop with shared pools. It keeps pgpool's key names, with this meaning:

- A **pool** holds the server connections to one backend for one (database, user) pair; they are
  lent from it to clients.
- `num_init_children` is the maximum number of server connections in one pool. Clients beyond it
  wait in that pool's queue; the error on timeout names the pool.
- `max_pool` is how many distinct (database, user) pools one backend may hold. Each worker process
  (`workers`) has its own pools, so one node opens at most
  `num_init_children * max_pool * workers` server connections to each backend; size PostgreSQL's
  `max_connections` for that times the number of pgbalancer nodes.
- `child_life_time` closes a server connection that stayed idle in its pool that many seconds.
- `child_max_connections` retires a server connection after it served that many client sessions.
- `connection_life_time` retires a server connection older than that many seconds, checked when
  it returns to the pool.
- `pool_mode` decides when a server connection returns to its pool: at client disconnect
  (`session`), at the end of each transaction (`transaction`) or after each statement (`statement`).
""",
}


def _category_rows(category: Category) -> list[str]:
    if category is Category.BACKENDS:
        backend_defaults = _defaults(BackendConfig)
        return [
            _md_row(f"backend_{attr}N", meta, backend_defaults.get(attr))
            for attr, meta in _BACKEND_SETTINGS.items()
        ]
    defaults = _defaults(Config)
    return [_md_row(key, meta, defaults[key]) for key, meta in _SETTINGS.items() if meta.category is category]


def config_reference_markdown() -> str:
    """The text of docs/configuration.md, generated from the field declarations."""
    lines = [_MD_INTRO]
    for category in Category:
        lines.append(f"## {category}\n")
        if category in _MD_CATEGORY_INTROS:
            lines.append(_MD_CATEGORY_INTROS[category])
        lines.extend([*_TABLE_HEAD, *_category_rows(category), ""])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m pgbalancer.config --markdown` prints the reference; `--check FILE` validates a file."""
    parser = argparse.ArgumentParser(
        prog="python -m pgbalancer.config", description="pgbalancer's configuration model"
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    action.add_argument("--check", metavar="FILE", help="validate FILE plus PGBALANCER_* overrides and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(config_reference_markdown())
        return 0
    try:
        load_config(args.check)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.check}: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
