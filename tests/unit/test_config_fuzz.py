"""Property tests of pgbalancer.config: whatever the text or environment, only ConfigError is raised."""

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pgbalancer.config import (
    BACKEND_SETTINGS,
    REDACTED,
    SETTINGS,
    ConfigError,
    diff_configs,
    parse_config_text,
    redacted_settings,
)

# A hundred examples each take about a second on a loaded two-core machine.
pytestmark = pytest.mark.slow

KEYS = [*SETTINGS, *(key.replace("N", str(n)) for key in BACKEND_SETTINGS for n in range(3))]
SECRET_KEYS = [key for key, spec in SETTINGS.items() if spec.secret]

values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["on", "off", "0", "1", "-1", "1e999", "nan", "'*'", "''", "'a''b'", "5432", "a:1,b:2"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(repr),
)
lines = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.sampled_from([" = ", "=", " =  "]), values).map("".join),
    st.text(max_size=40),
    st.just("# comment"),
)


def check_only_config_errors(text: str, env: dict[str, str] | None = None) -> None:
    try:
        config = parse_config_text(text, env=env)
    except ConfigError as exc:
        assert exc.errors
        assert all(isinstance(error, str) and error for error in exc.errors)
    else:
        assert config.backends
        assert 1 <= config.port <= 65535
        assert all(math.isfinite(backend.weight) and backend.weight >= 0 for backend in config.backends)
        assert diff_configs(config, config).changed == ()


@given(st.text())
@example("port = 99999999999999999999999999999999999999999999999999")
@example("backend_hostname999999999 = x")
@example("\x00 = '\x00'")
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    check_only_config_errors(text)


@given(st.lists(lines, max_size=12))
def test_config_like_text_raises_only_config_error(config_lines: list[str]) -> None:
    check_only_config_errors("\n".join(config_lines))


@given(st.dictionaries(st.sampled_from(KEYS).map(lambda key: "PGBALANCER_" + key.upper()), values))
def test_arbitrary_environment_raises_only_config_error(env: dict[str, str]) -> None:
    check_only_config_errors("backend_hostname0 = db\nauth_type = trust\n", env=env)


@given(st.sampled_from(SECRET_KEYS), st.text(max_size=30), values)
def test_secrets_never_appear_in_errors_or_redacted_settings(key: str, tail: str, noise: str) -> None:
    secret = "S3cr3t" + tail  # the marker keeps the secret from matching unrelated text by chance
    quoted = secret.replace("'", "''")
    text = f"backend_hostname0 = db\nauth_type = trust\n{key} = '{quoted}'\nport = {noise}\n"
    try:
        config = parse_config_text(text)
    except ConfigError as exc:
        assert all(secret not in error for error in exc.errors)
    else:
        assert redacted_settings(config)[key] == REDACTED
        assert secret not in repr(config)
