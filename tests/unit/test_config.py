"""Unit tests of pgbalancer.config: defaults, syntax, env overrides, validation, diff, redaction, docs."""

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pgbalancer.config import (
    BACKEND_SETTINGS,
    REDACTED,
    SETTINGS,
    ApplyOn,
    AuthType,
    BackendConfig,
    Config,
    ConfigError,
    LoadBalanceAlgorithm,
    LogLevel,
    MqttMode,
    PoolMode,
    config_reference_markdown,
    diff_configs,
    load_config,
    main,
    parse_config_text,
    redacted_settings,
)

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = "backend_hostname0 = 'db1'\nauth_type = trust\n"


def parse(text: str, **kwargs: object) -> Config:
    return parse_config_text(MINIMAL + text, **kwargs)  # type: ignore[arg-type]


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, env=env)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def only_error(text: str, env: dict[str, str] | None = None) -> str:
    errors = errors_of(text, env)
    assert len(errors) == 1, errors
    return errors[0]


# --------------------------------------------------------------------------- defaults


def test_defaults_match_the_stable_interface_of_design_section_5() -> None:
    config = parse("")
    assert config.listen_addresses == ("localhost",)
    assert config.port == 5432
    assert config.pool_mode is PoolMode.TRANSACTION
    assert config.auth_type is AuthType.TRUST  # MINIMAL sets trust; the default is checked below
    assert Config().auth_type is AuthType.SCRAM_SHA_256
    assert config.auth_file == ""
    assert config.admin_users == ()
    assert config.load_balance_mode is True
    assert config.load_balance_algorithm is LoadBalanceAlgorithm.ADAPTIVE
    assert config.health_check_period == 5.0
    assert config.api_listen_addresses == ("localhost",)
    assert config.api_port == 8080
    assert config.mqtt_mode is MqttMode.EMBEDDED
    assert config.mqtt_port == 1883
    assert config.watchdog_nodes == ()
    assert config.watchdog_port == 9000
    assert config.watchdog_secret == ""
    assert config.delegate_ip == ""
    assert config.delegate_ip_interface == ""


def test_defaults_of_pooling_and_process_keys() -> None:
    config = Config()
    assert (config.num_init_children, config.max_pool) == (32, 4)
    assert (config.child_life_time, config.child_max_connections, config.connection_life_time) == (300, 0, 0)
    assert config.server_reset_query == "DISCARD ALL"
    assert (config.server_connect_timeout, config.client_login_timeout) == (5.0, 60.0)
    assert config.query_wait_timeout == 120.0
    assert config.max_message_size == 268435456
    assert (config.workers, config.log_level, config.pid_file) == (0, LogLevel.INFO, "")  # 0: one per CPU
    assert (config.health_check_user, config.health_check_password) == ("postgres", "")
    assert config.health_check_database == "postgres"


def test_the_default_config_is_valid_once_a_backend_exists() -> None:
    config = parse_config_text("backend_hostname0 = db\nauth_type = trust")
    assert config == Config(auth_type=AuthType.TRUST, backends=(BackendConfig(0, "db"),))


def test_backend_defaults() -> None:
    (backend,) = parse("").backends
    assert backend == BackendConfig(node_id=0, hostname="db1", port=5432, weight=1.0, data_directory="")


def test_every_key_is_an_attribute_with_a_documented_spec() -> None:
    field_names = {f.name for f in dataclasses.fields(Config)} - {"backends"}
    assert set(SETTINGS) == field_names
    for spec in [*SETTINGS.values(), *BACKEND_SETTINGS.values()]:
        assert spec.doc and spec.type_name, spec.key
    assert {key for key, spec in SETTINGS.items() if spec.secret} == {
        "watchdog_secret",
        "health_check_password",
        "mqtt_broker_url",  # may hold the external broker's password
        "api_jwt_secret",
    }


def test_every_default_spelt_as_the_file_would_parses_back_to_itself() -> None:
    text = "".join(
        f"{key} = '{str(value).replace(chr(39), chr(39) * 2)}'\n"
        for key, value in redacted_settings(Config()).items()
        if key
        not in {"health_check_password", "watchdog_secret", "api_jwt_secret", "mqtt_broker_url", "auth_type"}
    )
    assert parse_config_text(text + MINIMAL) == dataclasses.replace(
        Config(auth_type=AuthType.TRUST), backends=parse("").backends
    )


# --------------------------------------------------------------------------- syntax


def test_quoting_comments_and_spacing() -> None:
    config = parse(
        "# a comment line\n"
        "   # an indented comment\n"
        "listen_addresses = '*'   # all interfaces\n"
        "port=6543\n"
        "server_reset_query = 'SELECT ''it''''s'' # not a comment'\n"
        "health_check_user = monitor # a comment after an unquoted value\n"
        "PID_FILE = '/run/pgbalancer.pid'\r\n"
    )
    assert config.listen_addresses == ("*",)
    assert config.port == 6543
    assert config.server_reset_query == "SELECT 'it''s' # not a comment"
    assert config.health_check_user == "monitor"
    assert config.pid_file == "/run/pgbalancer.pid"


def test_an_empty_quoted_value_is_empty() -> None:
    assert parse("server_reset_query = ''").server_reset_query == ""


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("on", True),
        ("off", False),
        ("true", True),
        ("false", False),
        ("yes", True),
        ("no", False),
        ("1", True),
        ("0", False),
        ("'ON'", True),
        ("False", False),
    ],
)
def test_booleans(word: str, expected: bool) -> None:
    assert parse(f"load_balance_mode = {word}").load_balance_mode is expected


def test_lists_are_comma_separated_and_trimmed() -> None:
    config = parse(
        "listen_addresses = 'localhost, 10.0.0.1,::1'\n"
        "admin_users = 'alice , bob'\n"
        "watchdog_nodes = 'node1:9000, 10.0.0.2:9000,[2001:db8::3]:9000'\n"
        "watchdog_secret = 'k'\n"
    )
    assert config.listen_addresses == ("localhost", "10.0.0.1", "::1")
    assert config.admin_users == ("alice", "bob")
    assert config.watchdog_nodes == ("node1:9000", "10.0.0.2:9000", "[2001:db8::3]:9000")


def test_durations_are_seconds_as_numbers() -> None:
    config = parse("health_check_period = 0.5\nserver_connect_timeout = '2'\nchild_life_time = 0")
    assert (config.health_check_period, config.server_connect_timeout, config.child_life_time) == (
        0.5,
        2.0,
        0,
    )


def test_enums_are_case_insensitive() -> None:
    config = parse("pool_mode = Session\nload_balance_algorithm = 'ROUND_ROBIN'\nmqtt_mode = off")
    assert config.pool_mode is PoolMode.SESSION
    assert config.load_balance_algorithm is LoadBalanceAlgorithm.ROUND_ROBIN
    assert config.mqtt_mode is MqttMode.OFF


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    config = parse("auth_file = 'users/userlist.txt'\npid_file = '../run/pgb.pid'", base_dir=tmp_path / "etc")
    assert config.auth_file == str(tmp_path / "etc" / "users" / "userlist.txt")
    assert config.pid_file == str(tmp_path / "run" / "pgb.pid")
    assert parse("auth_file = '/abs/userlist.txt'", base_dir=tmp_path).auth_file == "/abs/userlist.txt"


def test_backends_in_pgpool_form() -> None:
    config = parse_config_text(
        "auth_type = trust\n"
        "backend_hostname0 = 'db0'\n"
        "backend_port0 = 5433\n"
        "backend_hostname1 = 'db1'\n"
        "backend_weight1 = 0.5\n"
        "backend_data_directory1 = '/var/lib/postgresql/15/main'\n"
        "backend_hostname2 = '/var/run/postgresql'\n"
    )
    assert config.backends == (
        BackendConfig(0, "db0", 5433, 1.0, ""),
        BackendConfig(1, "db1", 5432, 0.5, "/var/lib/postgresql/15/main"),
        BackendConfig(2, "/var/run/postgresql", 5432, 1.0, ""),
    )


# --------------------------------------------------------------------------- environment


def test_environment_overrides_the_file() -> None:
    config = parse("port = 5433", env={"PGBALANCER_PORT": "6543", "PGBALANCER_BACKEND_HOSTNAME0": "envdb"})
    assert config.port == 6543
    assert config.backends[0].hostname == "envdb"


def test_environment_can_add_keys_and_backends() -> None:
    env = {"PGBALANCER_BACKEND_HOSTNAME1": "db2", "PGBALANCER_LISTEN_ADDRESSES": "'*'", "HOME": "/root"}
    config = parse("", env=env)
    assert [b.hostname for b in config.backends] == ["db1", "db2"]
    assert config.listen_addresses == ("*",)


def test_environment_values_are_literal_unless_wholly_quoted() -> None:
    config = parse("", env={"PGBALANCER_SERVER_RESET_QUERY": "SELECT 1 # not a comment"})
    assert config.server_reset_query == "SELECT 1 # not a comment"


def test_unrelated_pgbalancer_variables_are_ignored() -> None:
    assert parse("", env={"PGBALANCER_TEST_PGDIR": "/tmp"}).port == 5432


def test_a_misspelt_environment_override_is_an_error_naming_the_variable() -> None:
    message = only_error(MINIMAL, env={"PGBALANCER_PROT": "6543"})
    assert message == "environment PGBALANCER_PROT: unknown key 'prot'; did you mean PGBALANCER_PORT?"


def test_a_bad_environment_value_names_the_variable() -> None:
    message = only_error(MINIMAL, env={"PGBALANCER_PORT": "x"})
    assert message.startswith("environment PGBALANCER_PORT: port = 'x': not an integer; set port to ")


def test_parse_config_text_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBALANCER_PORT", "6543")
    assert parse("").port == 5432


# --------------------------------------------------------------------------- one value at a time


def test_the_error_format_of_the_brief() -> None:
    message = only_error(MINIMAL + "\n" * 9 + "port = 'abc'\n")
    assert message == (
        "pgbalancer.conf:12: port = 'abc': not an integer; set port to a TCP port number between 1 and 65535"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("port = 0", "port = '0': out of range; set port to a TCP port number between 1 and 65535"),
        ("api_port = 70000", "api_port = '70000': out of range; set api_port to a TCP port number"),
        ("num_init_children = 0", "num_init_children = '0': out of range; set num_init_children to a whole"),
        ("max_pool = -1", "max_pool = '-1': out of range; set max_pool to a whole number between 1 and"),
        ("workers = 1.5", "workers = '1.5': not an integer; set workers to"),
        ("health_check_period = 0", "health_check_period = '0': out of range; set health_check_period to a"),
        ("health_check_period = nan", "health_check_period = 'nan': not a number; set health_check_period"),
        ("server_connect_timeout = 1e999", "server_connect_timeout = '1e999': out of range; set"),
        ("child_life_time = -5", "child_life_time = '-5': out of range; set child_life_time to a whole"),
        (
            "load_balance_mode = maybe",
            "load_balance_mode = 'maybe': not a boolean; set load_balance_mode to on",
        ),
        (
            "pool_mode = sesion",
            "pool_mode = 'sesion': unknown value (did you mean 'session'?); set pool_mode",
        ),
        ("log_level = loud", "log_level = 'loud': unknown value; set log_level to one of debug, info,"),
        ("listen_addresses = ''", "listen_addresses = '': empty; set listen_addresses to a comma-separated"),
        ("listen_addresses = '*,localhost'", "'*' already means every interface and must stand alone; set"),
        ("listen_addresses = 'a b'", "'a b' is not a host name or IP address; set listen_addresses to"),
        ("admin_users = 'a,,b'", "admin_users = 'a,,b': has an empty name between commas; set admin_users"),
        (
            "watchdog_nodes = 'node1'",
            "watchdog_nodes = 'node1': 'node1' is not host:port; set watchdog_nodes",
        ),
        ("watchdog_nodes = 'n:99999'", "'n:99999' has a port outside 1-65535; set watchdog_nodes to"),
        ("watchdog_nodes = 'a:1,a:1'", "watchdog_nodes = 'a:1,a:1': lists 'a:1' twice; set watchdog_nodes"),
        ("delegate_ip = 10.0.0.300", "delegate_ip = '10.0.0.300': not an IP address; set delegate_ip to an"),
        ("max_message_size = 10", "max_message_size = '10': out of range; set max_message_size to a number"),
        ("backend_port0 = 'x'", "backend_port0 = 'x': not an integer; set backend_port0 to a TCP port"),
        ("backend_weight0 = -1", "backend_weight0 = '-1': out of range; set backend_weight0 to a number, 0"),
        ("backend_weight0 = inf", "backend_weight0 = 'inf': not a number; set backend_weight0 to a number"),
        (
            "watchdog_election_timeout = 0.05",
            "watchdog_election_timeout = '0.05': out of range; set watchdog_election_timeout to a number of "
            "seconds between 0.1 and 10",
        ),
        ("watchdog_election_timeout = 11", "watchdog_election_timeout = '11': out of range; set"),
        ("watchdog_election_timeout = fast", "watchdog_election_timeout = 'fast': not a number; set"),
    ],
)
def test_a_bad_value_names_line_key_value_and_fix(line: str, expected: str) -> None:
    message = only_error(MINIMAL + line + "\n")
    assert message.startswith("pgbalancer.conf:3: "), message
    assert expected in message


def test_unicode_digits_are_not_numbers() -> None:
    assert "not an integer" in only_error(MINIMAL + "port = ٥٤٣٢")


# --------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "port 5432",
            "expected key = value on the line starting with 'port'; write each setting as key = value",
        ),
        ("= 5", "expected key = value on the line starting with ''"),
        (
            "server_reset_query = 'DISCARD",
            "server_reset_query: the quoted value has no closing quote; end it",
        ),
        (
            "server_reset_query = 'a' b",
            "server_reset_query: unexpected text after the closing quote; put the",
        ),
    ],
)
def test_syntax_errors_name_the_line_and_fix(line: str, expected: str) -> None:
    message = only_error(MINIMAL + line)
    assert message.startswith(f"pgbalancer.conf:3: {expected}")


def test_a_key_set_twice_is_an_error() -> None:
    assert only_error(MINIMAL + "port = 1\nPort = 2") == (
        "pgbalancer.conf:4: port is already set on line 3; keep only one"
    )


def test_unknown_key_suggests_the_closest_one() -> None:
    assert only_error(MINIMAL + "num_init_childs = 3") == (
        "pgbalancer.conf:3: unknown key 'num_init_childs'; did you mean num_init_children?"
    )
    assert only_error(MINIMAL + "backend_hostnme1 = 'x'").endswith("did you mean backend_hostname1?")
    assert only_error(MINIMAL + "frobnicate = 1").endswith(
        "unknown key 'frobnicate'; remove it (docs/configuration.md lists every key)"
    )


def test_backend_numbers_have_no_leading_zeros() -> None:
    assert "unknown key 'backend_hostname01'" in only_error(MINIMAL + "backend_hostname01 = 'x'")


# --------------------------------------------------------------------------- backends


def test_no_backend_is_an_error() -> None:
    assert only_error("auth_type = trust") == (
        "pgbalancer.conf: no backend is configured; add backend_hostname0 = 'db.example.com' "
        "(and backend_port0 if it is not 5432)"
    )


def test_a_gap_in_backend_numbers_names_the_missing_key() -> None:
    message = only_error("auth_type = trust\nbackend_hostname0 = a\nbackend_hostname2 = c\n")
    assert message == (
        "pgbalancer.conf:3: backend_hostname2 configures backend 2, but backend_hostname1 is missing; "
        "number the backends 0, 1, 2… without gaps"
    )


def test_a_backend_port_without_hostname_names_both_keys() -> None:
    errors = errors_of(MINIMAL + "backend_hostname1 = b\nbackend_hostname2 = c\nbackend_port3 = 5433\n")
    assert errors == [
        "pgbalancer.conf:5: backend_port3 is set but backend_hostname3 is not; add "
        "backend_hostname3 = 'db.example.com' or remove the backend_*3 keys"
    ]


def test_an_empty_backend_hostname_is_an_error() -> None:
    assert "backend_hostname0 = '': empty; set backend_hostname0 to a host name" in only_error(
        "auth_type = trust\nbackend_hostname0 = ''"
    )


def test_all_zero_weights_with_load_balancing_is_an_error() -> None:
    text = "auth_type = trust\nbackend_hostname0 = a\nbackend_weight0 = 0\n"
    text += "backend_hostname1 = b\nbackend_weight1 = 0"
    assert only_error(text) == (
        "pgbalancer.conf:3: every backend_weightN is 0 while load_balance_mode = on, so no backend could "
        "take a read; give at least one backend a weight above 0, or set load_balance_mode = off"
    )
    assert parse_config_text(text + "\nload_balance_mode = off").backends[1].weight == 0


# --------------------------------------------------------------------------- cross-field rules


def test_password_auth_needs_an_auth_file() -> None:
    message = only_error("backend_hostname0 = a\nauth_type = md5\n")
    assert message == (
        "pgbalancer.conf:2: auth_type = 'md5' needs the users' passwords but auth_file is empty; "
        "set auth_file = '/path/userlist.txt' or auth_type = trust"
    )
    assert only_error("backend_hostname0 = a\n").startswith(
        "pgbalancer.conf: auth_type = 'scram-sha-256' needs the users' passwords"
    )
    assert parse_config_text("backend_hostname0 = a\nauth_file = 'u.txt'").auth_type is AuthType.SCRAM_SHA_256


def test_watchdog_nodes_need_a_secret_and_say_why() -> None:
    message = only_error(MINIMAL + "watchdog_nodes = 'n1:9000,n2:9000'")
    assert message.startswith(
        "pgbalancer.conf:3: watchdog_nodes = 'n1:9000,n2:9000' but watchdog_secret is empty"
    )
    assert "unauthenticated pickled messages" in message
    assert "set watchdog_secret to the same long random string on every node" in message


def test_delegate_ip_needs_an_interface() -> None:
    message = only_error(MINIMAL + "delegate_ip = 192.0.2.10")
    assert message.startswith(
        "pgbalancer.conf:3: delegate_ip = '192.0.2.10' but delegate_ip_interface is empty"
    )
    assert "set delegate_ip_interface to the network interface, such as 'eth0'" in message
    config = parse("delegate_ip = 2001:db8::10\ndelegate_ip_interface = eth0")
    assert (config.delegate_ip, config.delegate_ip_interface) == ("2001:db8::10", "eth0")


def test_listeners_need_distinct_ports() -> None:
    assert only_error(MINIMAL + "api_port = 5432") == (
        "pgbalancer.conf:3: api_port = 5432 is also port; give every listener its own port by changing "
        "api_port or port"
    )
    assert parse("mqtt_mode = off\nmqtt_port = 5432").mqtt_port == 5432
    assert parse("watchdog_port = 8080").watchdog_port == 8080  # no watchdog_nodes: no Raft listener


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    errors = errors_of("port = x\nprot = 1\nbackend_hostname0 = a\npool_mode = nope\nauth_type = md5\n")
    assert [error.split(": ", 1)[0] for error in errors] == [
        "pgbalancer.conf:1",
        "pgbalancer.conf:2",
        "pgbalancer.conf:4",
        "pgbalancer.conf:5",
    ]
    assert "auth_file is empty" in errors[3]


def test_a_bad_value_does_not_cascade_into_cross_field_errors() -> None:
    # auth_type is unreadable, so the auth_file rule (which would assume the default) stays quiet.
    assert "unknown value" in only_error("backend_hostname0 = a\nauth_type = md55")
    assert "unexpected text" in only_error(MINIMAL + "watchdog_nodes = 'a:9000'\nwatchdog_secret = 'x'y'")
    assert "not an integer" in only_error("auth_type = trust\nbackend_hostname0 = a\nbackend_port0 = x")
    assert "no closing quote" in only_error("auth_type = trust\nbackend_hostname0 = 'a")


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "text",
    [
        "watchdog_secret = 'hunter2'x",
        "watchdog_secret = 'hunter2",
        "watchdog_secert = 'hunter2'",
        "watchdog_secret hunter2",
        "health_check_password = 'hunter2' extra",
        "watchdog_secret = 'hunter2'\nwatchdog_secret = 'hunter2'",
    ],
)
def test_no_error_message_shows_a_secret(text: str) -> None:
    for error in errors_of(MINIMAL + text):
        assert "hunter2" not in error


def test_a_secret_from_the_environment_is_not_shown_either() -> None:
    errors = errors_of(MINIMAL, env={"PGBALANCER_WATCHDOG_SECRT": "hunter2"})
    assert errors and all("hunter2" not in error for error in errors)


def test_secrets_are_redacted_and_hidden_from_repr() -> None:
    config = parse("watchdog_secret = 'hunter2'\nhealth_check_password = 'hunter3'")
    settings = redacted_settings(config)
    assert settings["watchdog_secret"] == settings["health_check_password"] == REDACTED
    assert "hunter" not in repr(settings)
    assert "hunter" not in repr(config)
    assert config.watchdog_secret == "hunter2"


def test_redacted_settings_spell_every_key_as_the_file_does() -> None:
    config = parse(
        "backend_hostname1 = 'db2'\nbackend_weight1 = 2.5\nadmin_users = 'a,b'\npool_mode = session"
    )
    settings = redacted_settings(config)
    assert set(settings) == set(SETTINGS) | {
        f"backend_{attr}{n}" for attr in ("hostname", "port", "weight", "data_directory") for n in (0, 1)
    }
    assert settings["backend_hostname1"] == "db2"
    assert settings["backend_weight1"] == 2.5
    assert settings["admin_users"] == "a,b"
    assert settings["listen_addresses"] == "localhost"
    assert settings["pool_mode"] == "session" and type(settings["pool_mode"]) is str
    assert settings["port"] == 5432 and settings["load_balance_mode"] is True


# --------------------------------------------------------------------------- reload diff


def test_diff_of_equal_configs_is_empty() -> None:
    diff = diff_configs(parse(""), parse(""))
    assert diff.changed == diff.restart_required == diff.applied_live == ()
    assert not diff.needs_restart


def test_diff_sorts_changes_into_live_and_restart() -> None:
    old = parse("backend_hostname1 = 'db2'")
    new = parse(
        "backend_hostname1 = 'db2-new'\n"
        "backend_weight0 = 3\n"
        "port = 6543\n"
        "pool_mode = session\n"
        "health_check_period = 1\n"
        "watchdog_nodes = 'a:9000'\nwatchdog_secret = 's'\n"
    )
    diff = diff_configs(old, new)
    assert set(diff.changed) == {
        "port",
        "pool_mode",
        "health_check_period",
        "watchdog_nodes",
        "watchdog_secret",
        "backend_weight0",
        "backend_hostname1",
    }
    assert set(diff.applied_live) == {"pool_mode", "health_check_period", "backend_weight0"}
    assert set(diff.restart_required) == {"port", "watchdog_nodes", "watchdog_secret", "backend_hostname1"}
    assert diff.needs_restart


def test_adding_or_removing_a_backend_needs_a_restart_for_all_its_keys() -> None:
    one, two = parse(""), parse("backend_hostname1 = 'db2'")
    backend1 = ("backend_hostname1", "backend_port1", "backend_weight1", "backend_data_directory1")
    for diff in (diff_configs(one, two), diff_configs(two, one)):
        assert diff.changed == diff.restart_required == backend1
        assert diff.applied_live == ()


def test_the_diff_agrees_with_the_declared_reload_behaviour() -> None:
    for key, spec in SETTINGS.items():
        if key in {"auth_type", "auth_file"} or spec.secret:
            continue
        changed = dataclasses.replace(parse(""), **{key: _a_different_value(spec.default)})
        diff = diff_configs(parse(""), changed)
        assert diff.changed == (key,)
        assert (diff.restart_required if spec.applies is ApplyOn.RESTART else diff.applied_live) == (key,)


def _a_different_value(value: object) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, tuple):
        return (*value, "x")
    return f"{value}x"


# --------------------------------------------------------------------------- load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_config_reads_the_file_and_applies_the_environment(tmp_path: Path) -> None:
    write(tmp_path / "userlist.txt", '"alice" "pw"\n')
    conf = write(tmp_path / "pgbalancer.conf", "backend_hostname0 = db\nauth_file = 'userlist.txt'\n")
    config = load_config(conf, env={"PGBALANCER_PORT": "6000"})
    assert config.auth_file == str(tmp_path / "userlist.txt")
    assert config.port == 6000


def test_load_config_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path / "pgbalancer.conf", MINIMAL)
    monkeypatch.setenv("PGBALANCER_API_PORT", "8181")
    assert load_config(str(conf)).api_port == 8181


def test_load_config_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.conf: config file not found; pass the path of an existing"):
        load_config(tmp_path / "nope.conf", env={})


def test_load_config_refuses_a_directory_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path, env={})
    conf = tmp_path / "pgbalancer.conf"
    conf.write_bytes(b"port = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(conf, env={})


def test_load_config_checks_that_auth_file_exists(tmp_path: Path) -> None:
    conf = write(tmp_path / "pgbalancer.conf", "backend_hostname0 = db\n\nauth_file = 'missing.txt'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(conf, env={})
    assert caught.value.errors == [
        f"{conf}:3: auth_file = '{tmp_path / 'missing.txt'}': no such file; create the userlist there "
        "or set auth_file to its path"
    ]


def test_load_config_reports_a_broken_userlist_without_its_passwords(tmp_path: Path) -> None:
    write(tmp_path / "userlist.txt", '"alice" "hunter2"\nbroken "hunter3"\n')
    conf = write(tmp_path / "pgbalancer.conf", "backend_hostname0 = db\nauth_file = 'userlist.txt'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(conf, env={})
    (message,) = caught.value.errors
    assert message.startswith(f"{conf}:2: auth_file = ")
    assert f"{tmp_path / 'userlist.txt'}:2: expected the user name in double quotes" in message
    assert "hunter" not in message


def test_load_config_reports_parse_and_file_errors_together(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "pgbalancer.conf", "backend_hostname0 = db\nauth_file = 'missing.txt'\nport = x\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(conf, env={})
    assert len(caught.value.errors) == 2


# --------------------------------------------------------------------------- reference document and CLI


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config_reference_markdown(), "run `make docs` and commit docs/configuration.md"


def test_the_reference_documents_every_key_and_the_rules() -> None:
    text = config_reference_markdown()
    for key in [*SETTINGS, *BACKEND_SETTINGS]:
        assert f"| `{key}` |" in text, key
    assert "PGBALANCER_<KEY>" in text
    assert "num_init_children * max_pool" in text
    assert "| `pool_mode` | session \\| transaction \\| statement | `transaction` | reload |" in text


def test_main_prints_the_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == config_reference_markdown()


def test_main_checks_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.conf", MINIMAL)
    bad = write(tmp_path / "bad.conf", MINIMAL + "port = x\n")
    assert main(["--check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: OK\n"
    assert main(["--check", str(bad)]) == 1
    assert "port = 'x': not an integer" in capsys.readouterr().err


def test_main_needs_an_action() -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2


# --------------------------------------------------------------------------- watchdog identity


def test_watchdog_self_address_comes_from_the_listen_address_or_the_entry_on_watchdog_port() -> None:
    from pgbalancer.config import watchdog_peers, watchdog_self_address

    base = "watchdog_secret = s\n"
    config = parse(
        base + "watchdog_nodes = '127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003'\nwatchdog_port = 9002"
    )
    assert watchdog_self_address(config) == "127.0.0.1:9002"
    assert watchdog_peers(config) == ("127.0.0.1:9001", "127.0.0.1:9003")
    config = parse(base + "watchdog_nodes = 'n1:9000,n2:9000'\nwatchdog_listen_address = n3")
    assert watchdog_self_address(config) == "n3:9000"
    assert watchdog_peers(config) == ("n1:9000", "n2:9000")
    # Several entries on the port: the node picks its local one at startup.
    assert watchdog_self_address(parse(base + "watchdog_nodes = 'n1:9000,n2:9000'")) == ""


def test_a_watchdog_node_that_cannot_find_itself_is_told_what_to_set() -> None:
    message = only_error(MINIMAL + "watchdog_secret = s\nwatchdog_nodes = 'n1:9001,n2:9001'")
    assert "no watchdog_nodes entry has this node's watchdog_port (9000)" in message
    assert "set watchdog_listen_address" in message


def test_partition_read_policy_and_lease_parse() -> None:
    config = parse("partition_read_policy = refuse\nwatchdog_lease = 0.5")
    assert config.partition_read_policy == "refuse" and config.watchdog_lease == 0.5
    assert "did you mean 'stale'" in only_error(MINIMAL + "partition_read_policy = stal")


def test_the_watchdog_election_timeout_defaults_to_the_tuned_timings_and_needs_a_restart() -> None:
    assert parse("").watchdog_election_timeout == 0.3
    config = parse("watchdog_election_timeout = 1.5")
    assert config.watchdog_election_timeout == 1.5
    assert SETTINGS["watchdog_election_timeout"].applies is ApplyOn.RESTART
    for edge in ("0.1", "10"):
        assert parse(f"watchdog_election_timeout = {edge}").watchdog_election_timeout == float(edge)


def test_the_cache_runs_on_several_workers_within_a_share_each() -> None:
    config = parse("memory_cache_enabled = on\npool_mode = transaction\nworkers = 4\n")
    assert config.memory_cache_enabled and config.workers == 4
    error = only_error(
        MINIMAL
        + "memory_cache_enabled = on\nworkers = 4\nmemqcache_total_size = 1MB\nmemqcache_maxcache = 400kB\n"
    )
    assert "memqcache_total_size / workers (256kB)" in error and "raise memqcache_total_size" in error
    # a watchdog node runs one worker whatever workers says: its one cache has the whole size
    watchdog = (
        "watchdog_nodes = '10.0.0.1:9000'\nwatchdog_port = 9000\nwatchdog_secret = 's3cret-s3cret-s3cret'\n"
    )
    parse(
        "memory_cache_enabled = on\nworkers = 4\nmemqcache_total_size = 1MB\nmemqcache_maxcache = 400kB\n"
        + watchdog
    )
