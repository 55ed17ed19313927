"""bctl's pure parts: --cluster and URL parsing (fuzzed), the pool-advice arithmetic (properties), token
expiry reading, event lines, the parser's exit codes and the token file's mode."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pgbalancer.cli.advice import BalancerFacts, PoolDemand, ServerFacts, advise
from pgbalancer.cli.bctl import main
from pgbalancer.cli.connection import Endpoint, TokenStore, parse_cluster, resolve_endpoints, token_expiry
from pgbalancer.cli.errors import EXIT_USAGE, CliError
from pgbalancer.cli.events import format_line


def test_cluster_lists_parse_in_order() -> None:
    assert parse_cluster("db1:8080, db2:9090,[::1]:7000,db3") == (
        Endpoint("http", "db1", 8080),
        Endpoint("http", "db2", 9090),
        Endpoint("http", "::1", 7000),
        Endpoint("http", "db3", 8080),
    )
    assert Endpoint("http", "::1", 7000).url == "http://[::1]:7000"


@given(st.text(max_size=60))
@example("a:²")  # str.isdigit() is true for '²', int() refuses it
def test_cluster_parsing_never_fails_other_than_as_a_usage_error(text: str) -> None:
    try:
        endpoints = parse_cluster(text)
    except CliError as exc:
        assert exc.exit_code == EXIT_USAGE and "--cluster" in exc.message
    else:
        assert endpoints and all(0 < e.port < 65536 and e.host for e in endpoints)


def test_endpoint_resolution_order() -> None:
    env = {"PGBALANCER_URL": "https://api.example:9443"}
    assert resolve_endpoints(None, None, None, env) == (Endpoint("https", "api.example", 9443),)
    assert resolve_endpoints("h", 1, None, env) == (Endpoint("https", "h", 1),)
    assert resolve_endpoints(None, None, None, {}) == (Endpoint("http", "localhost", 8080),)
    assert resolve_endpoints("[::1]", 9, None, {}) == (Endpoint("http", "::1", 9),)
    for host, port, cluster in (
        ("h", None, "a:1"),
        (None, 9, "a:1"),
        ("a/b", None, None),
        ("db1:80", None, None),
    ):
        with pytest.raises(CliError) as bad:
            resolve_endpoints(host, port, cluster, {})
        assert bad.value.exit_code == EXIT_USAGE


def _token(claims: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


def test_token_expiry_is_read_without_verifying() -> None:
    assert token_expiry(_token({"exp": 1700000000})) == 1700000000
    assert token_expiry(_token({"sub": "x"})) is None
    assert token_expiry(_token([1])) is None
    assert token_expiry("not a token") is None
    assert token_expiry("a.!!!.c") is None


def test_the_token_file_is_0600_even_when_it_existed_wider(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "cfg" / "pgbalancer" / "token")
    store.path.parent.mkdir(parents=True)
    store.path.write_text("old")
    store.path.chmod(0o644)
    store.save("new-token")
    assert store.load() == "new-token" and stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.clear() and store.load() is None and not store.clear()


def _server(max_connections: int = 100, superuser: int = 3, reserved: int | None = None) -> ServerFacts:
    return ServerFacts(150000, max_connections, superuser, reserved, 900.0, 100.0)


def test_advice_worked_example() -> None:
    pools = (PoolDemand("app", "a", 300), PoolDemand("app", "b", 100))
    advice = advise(_server(100, 3, 2), BalancerFacts(3, 2, 32, 4, pools))
    # available 95, minus 3 health checks = 92, over 3 nodes x 2 workers = 15 per process
    assert (advice.server.available, advice.budget, advice.per_process) == (95, 92, 15)
    assert (advice.max_pool, advice.num_init_children) == (2, 7)
    assert [p.size for p in advice.pools] == [7, 3]  # min(7, floor(15 x 0.75)), floor(15 x 0.25)
    assert advice.max_server_connections == 84 and advice.server.busy_ratio == 0.9
    assert advice.as_json()["pgbalancer"]["max_server_connections"] == 3 * 2 * 32 * 4
    assert any("exceeds it by" in line for line in advice.explanation)


@given(
    max_connections=st.integers(1, 10000),
    superuser=st.integers(0, 50),
    reserved=st.none() | st.integers(0, 50),
    nodes=st.integers(1, 9),
    workers=st.integers(1, 16),
    queries=st.lists(st.integers(0, 10**6), max_size=8),
)
def test_advice_never_exceeds_what_the_server_accepts(
    max_connections: int, superuser: int, reserved: int | None, nodes: int, workers: int, queries: list[int]
) -> None:
    server = _server(max_connections, superuser, reserved)
    pools = tuple(PoolDemand("db", f"u{i}", q) for i, q in enumerate(queries))
    try:
        advice = advise(server, BalancerFacts(nodes, workers, 32, 4, pools))
    except CliError as exc:
        assert server.available - nodes < nodes * workers and "raise max_connections" in exc.message
        return
    assert advice.max_server_connections + nodes <= server.available
    assert advice.num_init_children >= 1 and advice.max_pool >= 1
    assert sum(p.size for p in advice.pools) <= advice.per_process
    least = 1 if len(pools) <= advice.max_pool else 0
    assert all(least <= p.size <= advice.num_init_children for p in advice.pools)


def test_event_lines_carry_the_topic_event_and_details() -> None:
    payload = json.dumps(
        {"event": "node_status", "node": "n1", "ts": "2024-05-01T12:00:00.000Z", "epoch": 1, "event_id": "x",
         "backend_id": 2, "status": "down"}
    ).encode()  # fmt: skip
    line = format_line("pgbalancer/nodes/2/status", payload)
    assert line == "2024-05-01T12:00:00.000Z pgbalancer/nodes/2/status node_status backend_id=2 status=down"
    assert format_line("t", b"\xff") == "t \ufffd"


def test_usage_errors_exit_2_and_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as bad:
        main(["node", "attach", "x"])
    assert bad.value.code == EXIT_USAGE
    assert main([]) == EXIT_USAGE
    assert main(["version"]) == 0 and "bctl" in capsys.readouterr().out
    assert main(["--cluster", "a:b", "status"]) == EXIT_USAGE
    assert "is not a TCP port" in capsys.readouterr().err
    assert main(["--cluster", "db:²", "status"]) == EXIT_USAGE
    assert "is not a TCP port" in capsys.readouterr().err
    assert main(["--cluster", "db:1", "--port", "2", "status"]) == EXIT_USAGE
    assert "not both" in capsys.readouterr().err
    assert main(["--host", "a/b", "status"]) == EXIT_USAGE
    assert "--host 'a/b' is not a host name" in capsys.readouterr().err
    for args in (["nodes", "²"], ["events", "--count", "²"], ["--port", "²", "status"]):
        with pytest.raises(SystemExit) as superscript:
            main(args)
        assert superscript.value.code == EXIT_USAGE
