"""Pure rendering of the pgbalancer.conf the benchmark runs with (pgpool-style `key = value`).

Only the stable keys of DESIGN.md §5 are written, plus whatever the caller passes as extra
`key = value` pairs, so the file keeps working while the config model grows. Never writes files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

POOL_MODES = ("session", "transaction", "statement")


@dataclass(frozen=True)
class Backend:
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class ProxyConfig:
    """What the benchmark asks of pgbalancer: listener, backends, auth and pool sizing."""

    backends: Sequence[Backend]
    listen_address: str = "127.0.0.1"
    port: int = 6543
    pool_mode: str = "transaction"
    auth_type: str = "trust"
    # The pool size per (backend, database, user) pool, like PgBouncer's default_pool_size = 20.
    num_init_children: int = 20
    max_pool: int = 4
    # Only the proxy port is the benchmark's to use: no MQTT broker on a shared machine.
    mqtt_mode: str = "off"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode {self.pool_mode!r} is not one of {', '.join(POOL_MODES)}")
        if not self.backends:
            raise ValueError("at least one backend is needed (backend_hostname0/backend_port0)")


def _quote(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _format_extra(value: str) -> str:
    """Numbers and booleans stay bare; anything already quoted is kept; other text is quoted."""
    if value.startswith("'") or value.lstrip("-").isdigit() or value in ("on", "off", "true", "false"):
        return value
    return _quote(value)


def render(config: ProxyConfig) -> str:
    lines = [
        "# written by bench/pgbench_compare: one pgbalancer node in front of the shared bench cluster",
        f"listen_addresses = {_quote(config.listen_address)}",
        f"port = {config.port}",
        f"pool_mode = {_quote(config.pool_mode)}",
        f"auth_type = {_quote(config.auth_type)}",
        f"num_init_children = {config.num_init_children}",
        f"max_pool = {config.max_pool}",
        f"mqtt_mode = {_quote(config.mqtt_mode)}",
    ]
    for index, backend in enumerate(config.backends):
        lines += [
            f"backend_hostname{index} = {_quote(backend.host)}",
            f"backend_port{index} = {backend.port}",
            f"backend_weight{index} = {backend.weight}",
        ]
    # Extra keys come last: the config parser keeps the last value, so --conf overrides the above.
    lines += [f"{key} = {_format_extra(value)}" for key, value in config.extra.items()]
    return "\n".join(lines) + "\n"


def parse_extra(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` command-line pairs as a dict; raises ValueError naming the malformed pair."""
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--conf {pair!r}: expected KEY=VALUE, e.g. --conf health_check_period=5")
        extra[key.strip()] = value.strip()
    return extra
