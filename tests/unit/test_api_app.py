"""The REST API application in process: authentication, roles, JSON errors, bodies and the spec.

A real ProxyServer without connected clients sits under the app (its backend is never contacted,
except by /readyz's probe of a closed port). Integration tests run the same endpoints against a
real node and PostgreSQL.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jsonschema_rs
import jwt
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as QuartClient
from quart_trio import QuartTrio

from pgbalancer.api import app as api_app
from pgbalancer.api.app import ApiState, create_app
from pgbalancer.api.control import ReloadOutcome
from pgbalancer.api.openapi import API_PREFIX, component_json_schema, openapi_document
from pgbalancer.api.service import ApiService
from pgbalancer.api.settings import load_api_settings
from pgbalancer.api.snapshots import ClusterEvents, NodeInfo, ViewChange, classify_view_change
from pgbalancer.api.users import parse_api_users
from pgbalancer.config import parse_config_text
from pgbalancer.devtools import free_tcp_port
from pgbalancer.events.service import EventService
from pgbalancer.ha.planner import HaOperationError
from pgbalancer.ha.view import BackendRole, BackendStatus
from pgbalancer.pgwire.auth import make_scram_verifier, md5_password_hash
from pgbalancer.proxy.admin_commands import ADMIN_DATABASES
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.routing.balancer import QueryClass
from pgbalancer.routing.complexity import ComplexityBucket

KEY = "0123456789abcdef0123456789abcdef"
USERS = (
    f'"root" "{make_scram_verifier("root-pw", b"saltsaltsaltsalt", 4096).encode()}" "admin"\n'
    f'"watcher" "{md5_password_hash("watcher", "watch-pw")}" "viewer"\n'
)
P = API_PREFIX


class FakeControl:
    def __init__(self, outcome: ReloadOutcome) -> None:
        self.outcome = outcome
        self.calls = 0

    async def reload(self) -> ReloadOutcome:
        self.calls += 1
        return self.outcome


def make_state(extra: str = "", control: FakeControl | None = None, port0: int | None = None) -> ApiState:
    text = (
        f"backend_hostname0 = '127.0.0.1'\nbackend_port0 = {port0 or free_tcp_port()}\n"
        "backend_hostname1 = '127.0.0.1'\nbackend_port1 = 1\n"
        f"auth_type = trust\napi_jwt_secret = '{KEY}'\napi_login_rate_limit = 3\n{extra}"
    )
    config = parse_config_text(text)
    settings = dataclasses.replace(load_api_settings(config), users=parse_api_users(USERS))
    return ApiState(
        proxy=ProxyServer(config, {}), settings=settings, node=NodeInfo("test:1"), control=control
    )


@pytest.fixture
def state() -> ApiState:
    return make_state(control=FakeControl(ReloadOutcome(("pool_mode",), ("pool_mode",), ())))


@pytest.fixture
def app(state: ApiState) -> QuartTrio:
    return create_app(state)


@pytest.fixture
def client(app: QuartTrio) -> QuartClient:
    return app.test_client()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: QuartClient, user: str = "root", password: str = "root-pw") -> str:
    response = await client.post(f"{P}/auth/login", json={"username": user, "password": password})
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    token: str = body["token"]
    return token


async def json_of(response: Any) -> dict[str, Any]:
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.get_json()
    return body


def everything_paused(state: ApiState) -> bool:
    return state.proxy.pools.pause_gate.all_paused


def forged(**claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "root", "role": "admin", "iat": now, "exp": now + 60, "jti": "j", "iss": "pgbalancer"}
    payload["aud"] = "pgbalancer-api"
    payload.update(claims)
    return jwt.encode(payload, claims.pop("key", KEY), algorithm="HS256")


# --------------------------------------------------------------------------- authentication


async def test_login_returns_a_bearer_token_carrying_the_users_role(client: QuartClient) -> None:
    token = await login(client, "watcher", "watch-pw")
    claims = jwt.decode(token, KEY, algorithms=["HS256"], audience="pgbalancer-api")
    assert (claims["sub"], claims["role"], claims["iss"]) == ("watcher", "viewer", "pgbalancer")
    response = await client.get(f"{P}/status", headers=bearer(token))
    assert response.status_code == 200
    assert (await json_of(response))["node_id"] == "test:1"


async def test_wrong_password_is_401_json_and_never_echoes_the_password(client: QuartClient) -> None:
    response = await client.post(f"{P}/auth/login", json={"username": "root", "password": "guess-123"})
    body = await json_of(response)
    assert response.status_code == 401 and body["error"] == "unauthorized"
    assert "guess-123" not in json.dumps(body)
    assert "Bearer" in response.headers["WWW-Authenticate"]


async def test_http_basic_works_with_the_same_users(client: QuartClient) -> None:
    assert (await client.get(f"{P}/pools", headers=basic("watcher", "watch-pw"))).status_code == 200
    response = await client.post(f"{P}/control/resume", headers=basic("watcher", "watch-pw"))
    assert response.status_code == 403
    assert (await client.get(f"{P}/pools", headers=basic("watcher", "nope"))).status_code == 401
    assert (await client.get(f"{P}/pools", headers={"Authorization": "Basic !!!"})).status_code == 401


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: forged(key="another-key-another-key-another-key"), "signature"),
        (lambda: forged(exp=int(time.time()) - 10), "expired"),
        (lambda: forged(aud="elsewhere"), "another service"),
        (lambda: forged(iss="elsewhere"), "another service"),
        (lambda: jwt.encode({"sub": "root", "role": "admin"}, KEY, algorithm="HS256"), "malformed"),
        (lambda: "e30.e30.", "algorithm"),  # a header without alg
        (lambda: "not-a-jwt", "malformed"),
    ],
    ids=["other-key", "expired", "audience", "issuer", "missing-claims", "no-alg", "garbage"],
)
async def test_bad_tokens_get_401_json_and_change_nothing(
    state: ApiState, client: QuartClient, make_token: Callable[[], str], reason: str
) -> None:
    response = await client.post(f"{P}/control/pause", headers=bearer(make_token()), json={})
    body = await json_of(response)
    assert response.status_code == 401 and body["error"] == "unauthorized"
    assert reason in body["message"]
    assert not state.proxy.pools.pause_gate.all_paused


async def test_alg_none_token_is_refused(state: ApiState, client: QuartClient) -> None:
    now = int(time.time())
    claims = {"sub": "root", "role": "admin", "iat": now, "exp": now + 60, "jti": "j"}
    claims |= {"iss": "pgbalancer", "aud": "pgbalancer-api"}
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    token = f"{header}.{payload}."
    response = await client.post(f"{P}/control/pause", headers=bearer(token), json={})
    assert response.status_code == 401
    assert "algorithm" in (await json_of(response))["message"]
    assert not state.proxy.pools.pause_gate.all_paused


async def test_viewer_on_an_admin_endpoint_is_403_and_nothing_changes(
    state: ApiState, client: QuartClient
) -> None:
    token = await login(client, "watcher", "watch-pw")
    for path in ("control/pause", "control/reload", "nodes/0/detach", "cache/invalidate"):
        response = await client.post(f"{P}/{path}", headers=bearer(token), json={})
        assert response.status_code == 403, path
        assert (await json_of(response))["error"] == "forbidden"
    assert not state.proxy.pools.pause_gate.all_paused
    assert isinstance(state.control, FakeControl) and state.control.calls == 0


async def test_a_token_grants_no_more_than_the_user_file_grants_now(
    state: ApiState, client: QuartClient
) -> None:
    token = await login(client)
    state.apply_settings(dataclasses.replace(state.settings, users=parse_api_users('"root" "x" "viewer"\n')))
    assert (await client.post(f"{P}/control/resume", headers=bearer(token))).status_code == 403
    state.apply_settings(dataclasses.replace(state.settings, users=parse_api_users('"other" "x" "admin"\n')))
    response = await client.get(f"{P}/status", headers=bearer(token))
    assert response.status_code == 401
    assert "no longer an API user" in (await json_of(response))["message"]


async def test_failed_logins_are_rate_limited_per_source_address(
    state: ApiState, client: QuartClient
) -> None:
    attacker, other = {"client": ("192.0.2.7", 4000)}, {"client": ("192.0.2.8", 4000)}
    wrong = {"username": "root", "password": "wrong"}
    for _ in range(3):
        response = await client.post(f"{P}/auth/login", json=wrong, scope_base=attacker)
        assert response.status_code == 401
    refused = await client.post(
        f"{P}/auth/login", json={"username": "root", "password": "root-pw"}, scope_base=attacker
    )
    assert refused.status_code == 429
    assert (await json_of(refused))["error"] == "too_many_failed_logins"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    basic_refused = await client.get(f"{P}/status", headers=basic("root", "root-pw"), scope_base=attacker)
    assert basic_refused.status_code == 429
    allowed = await client.post(
        f"{P}/auth/login", json={"username": "root", "password": "root-pw"}, scope_base=other
    )
    assert allowed.status_code == 200


async def test_unauthenticated_requests_are_401_except_the_open_endpoints(client: QuartClient) -> None:
    for path in ("status", "nodes", "nodes/0", "pools", "health/stats", "config", "ai/stats"):
        response = await client.get(f"{P}/{path}")
        assert response.status_code == 401, path
        assert (await json_of(response))["error"] == "unauthorized"
    assert (await client.get(f"{P}/healthz")).status_code == 200
    assert (await client.get(f"{P}/openapi.json")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_metrics_can_require_credentials() -> None:
    client = create_app(make_state("api_metrics_auth = on\n")).test_client()
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=basic("watcher", "watch-pw"))).status_code == 200


# --------------------------------------------------------------------------- errors and bodies


async def test_unknown_paths_and_methods_answer_json(client: QuartClient) -> None:
    missing = await client.get(f"{P}/nope")
    assert missing.status_code == 404 and (await json_of(missing))["error"] == "not_found"
    wrong_method = await client.delete(f"{P}/status")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["Allow"]
    assert (await json_of(wrong_method))["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "body",
    [
        b"[1]",
        b"{",
        b'{"database": 5}',
        b'{"timeout": -1}',
        b'{"timeout": true}',
        b'{"timeout": 61}',
        b'{"timeout": NaN}',
        b'{"timeout": 1' + b"0" * 400 + b"}",  # float() of it raises OverflowError: once a 500
        b'{"database": "\\ud800"}',  # a lone surrogate: once accepted, and a 500 as a login password
        b'{"x": 1}',
    ],
)
async def test_bad_bodies_are_400_and_do_not_pause(state: ApiState, client: QuartClient, body: bytes) -> None:
    token = await login(client)
    response = await client.post(f"{P}/control/pause", headers=bearer(token), data=body)
    assert response.status_code == 400
    assert (await json_of(response))["error"] == "bad_request"
    assert not state.proxy.pools.pause_gate.all_paused


async def test_login_body_must_name_user_and_password(client: QuartClient) -> None:
    for body in ({"username": "root"}, {"username": "", "password": "x"}, {"user": "root", "password": "x"}):
        assert (await client.post(f"{P}/auth/login", json=body)).status_code == 400


async def test_a_lone_surrogate_in_a_login_is_400_not_a_server_error(client: QuartClient) -> None:
    for raw in (b'{"username": "root", "password": "\\udfff"}', b'{"username": "\\ud800", "password": "x"}'):
        response = await client.post(
            f"{P}/auth/login", data=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert "surrogate" in (await json_of(response))["message"]


# --------------------------------------------------------------------------- acting


async def test_pause_and_resume(state: ApiState, client: QuartClient) -> None:
    headers = bearer(await login(client))
    paused = await client.post(f"{P}/control/pause", headers=headers, json={"timeout": 1})
    assert await json_of(paused) == {"paused": True, "database": None, "drained": True, "busy_servers": 0}
    assert everything_paused(state)
    again = await client.post(f"{P}/control/pause", headers=headers)
    assert again.status_code == 409 and (await json_of(again))["error"] == "already_paused"
    resumed = await client.post(f"{P}/control/resume", headers=headers)
    assert await json_of(resumed) == {"resumed": True, "database": None}
    assert not everything_paused(state)
    assert (await client.post(f"{P}/control/resume", headers=headers)).status_code == 409
    app_only = await client.post(f"{P}/control/pause", headers=headers, json={"database": "app"})
    assert (await json_of(app_only))["database"] == "app"
    assert state.proxy.pools.pause_gate.blocks("app") and not state.proxy.pools.pause_gate.blocks("bench")
    assert (
        await client.post(f"{P}/control/pause", headers=headers, json={"database": "pgbouncer"})
    ).status_code == 400


async def test_pause_is_refused_with_several_workers() -> None:
    state = make_state()
    state.node = NodeInfo("test:1", worker_index=0, worker_count=4)
    client = create_app(state).test_client()
    response = await client.post(f"{P}/control/pause", headers=basic("root", "root-pw"))
    assert response.status_code == 409 and "worker 0 only" in (await json_of(response))["message"]
    assert not state.proxy.pools.pause_gate.all_paused


async def test_reload_reports_the_nodes_answer(state: ApiState, client: QuartClient) -> None:
    headers = bearer(await login(client))
    response = await client.post(f"{P}/control/reload", headers=headers)
    assert await json_of(response) == {
        "reloaded": True,
        "changed": ["pool_mode"],
        "applied_live": ["pool_mode"],
        "restart_required": [],
    }
    assert isinstance(state.control, FakeControl)
    state.control.outcome = ReloadOutcome(error="pgbalancer.conf:3: port = 'x': not an integer")
    failed = await client.post(f"{P}/control/reload", headers=headers)
    assert failed.status_code == 422
    assert "the running config was kept" in (await json_of(failed))["message"]


async def test_an_api_without_a_failover_engine_says_so_and_changes_nothing(
    state: ApiState, client: QuartClient
) -> None:
    """Only an API served outside a node has no engine (every node wires its HaController)."""
    assert state.operations is None
    headers = bearer(await login(client))
    view = state.proxy.cluster_view
    for path in ("nodes/1/detach", "nodes/1/promote"):
        response = await client.post(f"{P}/{path}", headers=headers)
        assert response.status_code == 503, path
        body = await json_of(response)
        assert body["error"] == "not_available" and "failover engine" in body["message"]
    switchover = await client.post(f"{P}/control/switchover", headers=headers, json={"to": 1})
    assert switchover.status_code == 503
    assert state.proxy.cluster_view is view
    assert (await client.post(f"{P}/nodes/7/attach", headers=headers)).status_code == 404


async def test_cache_endpoints_with_the_cache_off(client: QuartClient) -> None:
    headers = bearer(await login(client))
    stats = await json_of(await client.get(f"{P}/cache/stats", headers=headers))
    assert stats["enabled"] is False and stats["hits"] == 0 and stats["entries"] == 0
    response = await client.post(f"{P}/cache/invalidate", headers=headers, json={"table": "t"})
    assert response.status_code == 409
    assert "memory_cache_enabled" in (await json_of(response))["message"]


async def test_ai_stats_show_what_the_balancer_learned(state: ApiState, client: QuartClient) -> None:
    balancer = state.proxy.router.balancer
    candidates = list(state.proxy.cluster_view.backends)
    point_read = QueryClass(ComplexityBucket.LIGHT)
    for _ in range(20):
        node_id = balancer.pick(candidates, point_read, trio.current_time())
        balancer.observe(node_id, point_read, 0.002 if node_id == 0 else 0.050, True, trio.current_time())
    stats = await json_of(await client.get(f"{P}/ai/stats", headers=basic("watcher", "watch-pw")))
    assert stats["algorithm"] == "adaptive" and stats["load_balance_mode"] is True
    assert stats["decisions"] == 20
    nodes = {node["node_id"]: node for node in stats["nodes"]}
    assert sum(node["picks"] for node in nodes.values()) == 20
    assert abs(sum(node["share"] for node in nodes.values()) - 1) < 0.01
    assert all(node["in_flight"] == 0 for node in nodes.values())
    sampled = [node for node in nodes.values() if node["samples"] > 0]
    assert all(node["classes"][0]["class"] == str(point_read) for node in sampled)
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "pgbalancer_balancer_decisions_total 20.0" in metrics
    listing = await json_of(await client.get(f"{P}/nodes", headers=basic("watcher", "watch-pw")))
    read_shares = {node["node_id"]: node["read_share"] for node in listing["nodes"]}
    assert read_shares == {node_id: round(node["picks"] / 20, 4) for node_id, node in nodes.items()}
    detail = await json_of(await client.get(f"{P}/nodes/1", headers=basic("watcher", "watch-pw")))
    assert detail["read_share"] == read_shares[1]


async def test_read_share_is_zero_before_any_balanced_read(client: QuartClient) -> None:
    listing = await json_of(await client.get(f"{P}/nodes", headers=basic("watcher", "watch-pw")))
    assert [node["read_share"] for node in listing["nodes"]] == [0.0, 0.0]


@dataclasses.dataclass(frozen=True)
class FakeOutcome:
    primary_id: int | None
    epoch: int
    notes: tuple[str, ...]


class FakeOperations:
    """Stands in for the failover engine: records calls, refuses backend 1 like the planner would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def _do(self, action: str, node_id: int) -> FakeOutcome:
        if node_id == 1:
            raise HaOperationError("backend 1 is the primary; promote a standby instead", "conflict")
        self.calls.append((action, node_id))
        return FakeOutcome(0, 3, (f"backend {node_id} {action}",))

    async def attach(self, node_id: int) -> FakeOutcome:
        return await self._do("attach", node_id)

    async def detach(self, node_id: int) -> FakeOutcome:
        return await self._do("detach", node_id)

    async def promote(self, node_id: int) -> FakeOutcome:
        return await self._do("promote", node_id)

    async def rejoin(self, node_id: int) -> FakeOutcome:
        return await self._do("rejoin", node_id)

    async def switchover(self, node_id: int) -> FakeOutcome:
        return await self._do("switchover", node_id)


async def test_backend_operations_reach_the_failover_engine(state: ApiState, client: QuartClient) -> None:
    operations = FakeOperations()
    state.operations = operations
    headers = bearer(await login(client))
    for action, called in (
        ("detach", "detach"),
        ("attach", "attach"),
        ("promote", "promote"),
        ("recovery", "rejoin"),
    ):
        response = await client.post(f"{P}/nodes/0/{action}", headers=headers)
        assert await json_of(response) == {
            "node_id": 0,
            "action": action,
            "primary_id": 0,
            "epoch": 3,
            "notes": [f"backend 0 {called}"],
        }
    assert operations.calls == [("detach", 0), ("attach", 0), ("promote", 0), ("rejoin", 0)]
    refused = await client.post(f"{P}/nodes/1/detach", headers=headers)
    assert refused.status_code == 409 and "promote a standby" in (await json_of(refused))["message"]
    viewer = await client.post(f"{P}/nodes/0/detach", headers=basic("watcher", "watch-pw"))
    assert viewer.status_code == 403 and len(operations.calls) == 4


async def test_switchover_takes_the_target_in_its_body(state: ApiState, client: QuartClient) -> None:
    operations = FakeOperations()
    state.operations = operations
    headers = bearer(await login(client))
    response = await client.post(f"{P}/control/switchover", headers=headers, json={"to": 0})
    assert await json_of(response) == {
        "node_id": 0,
        "action": "switchover",
        "primary_id": 0,
        "epoch": 3,
        "notes": ["backend 0 switchover"],
    }
    refused = await client.post(f"{P}/control/switchover", headers=headers, json={"to": 1})
    assert refused.status_code == 409 and "promote a standby" in (await json_of(refused))["message"]
    unknown = await client.post(f"{P}/control/switchover", headers=headers, json={"to": 7})
    assert unknown.status_code == 404 and "known: 0, 1" in (await json_of(unknown))["message"]
    for bad in ({}, {"to": "0"}, {"to": True}, {"to": -1}, {"to": 0, "why": "x"}):
        answer = await client.post(f"{P}/control/switchover", headers=headers, json=bad)
        assert answer.status_code == 400, bad
    viewer = await client.post(
        f"{P}/control/switchover", headers=basic("watcher", "watch-pw"), json={"to": 0}
    )
    assert viewer.status_code == 403
    assert operations.calls == [("switchover", 0)]


async def test_readyz_probes_each_backend_at_most_once_per_ttl(nursery: trio.Nursery) -> None:
    """An open endpoint: 30 callers, concurrent or one after another, cost backend 0 one connection
    while the answer is fresh; once it is stale, the next call probes again."""
    accepted = 0

    async def count(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, count, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    state = make_state(port0=port)
    client = create_app(state).test_client()
    answers: list[int] = []

    async def ready() -> None:
        response = await client.get(f"{P}/readyz")
        assert (await json_of(response))["reachable_backends"] == [0]
        answers.append(response.status_code)

    async with trio.open_nursery() as callers:
        for _ in range(20):
            callers.start_soon(ready)
    for _ in range(10):
        await ready()
    assert answers == [200] * 30
    with trio.fail_after(5):
        while accepted < 1:
            await trio.sleep(0.01)
    assert state.readiness.rounds == 1 and accepted == 1
    state.readiness.ttl = 0.0  # every answer is stale now
    await ready()
    assert state.readiness.rounds == 2
    with trio.fail_after(5):
        while accepted < 2:
            await trio.sleep(0.01)


# --------------------------------------------------------------------------- reading


async def test_readyz_probes_the_backends(client: QuartClient) -> None:
    response = await client.get(f"{P}/readyz")
    body = await json_of(response)
    assert response.status_code == 503
    assert body == {
        "ready": False,
        "reachable_backends": [],
        "quorum": True,
        "reasons": ["no backend accepts TCP connections"],
    }


async def test_nodes_follow_the_cluster_view(state: ApiState, client: QuartClient) -> None:
    headers = basic("watcher", "watch-pw")
    view = state.proxy.cluster_view
    down = view.with_backend(dataclasses.replace(view.backend(1), status=BackendStatus.DOWN, checked_at=1.0))
    state.proxy.update_cluster_view(down, reason="probe failed")
    nodes = await json_of(await client.get(f"{P}/nodes", headers=headers))
    assert [(n["node_id"], n["status"], n["is_primary"]) for n in nodes["nodes"]] == [
        (0, "up", True),
        (1, "down", False),
    ]
    detail = await json_of(await client.get(f"{P}/nodes/1", headers=headers))
    assert detail["health"]["status_changes"][0] | {"at": 0} == {
        "at": 0,
        "from": "up",
        "to": "down",
        "reason": "probe failed",
    }
    assert detail["health"]["checks_observed"] == 1 and detail["health"]["success_rate"] == 0.0
    state.proxy.update_cluster_view(down.with_primary(1), reason="failover")
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "pgbalancer_failovers_total 1.0" in metrics
    assert 'pgbalancer_backend_up{backend="1",host="127.0.0.1",port="1"} 0.0' in metrics


def test_view_changes_are_counted_by_a_fixed_set_of_kinds() -> None:
    """However many failovers, each with its own note text, the counter keeps the same seven series."""
    view = make_state().proxy.cluster_view
    one = view.backend(1)
    cases = [
        (view.with_primary(1), ViewChange.FAILOVER),
        (dataclasses.replace(view, epoch=view.epoch + 1), ViewChange.EPOCH),
        (dataclasses.replace(view, backends=view.backends[:1]), ViewChange.MEMBERSHIP),
        (
            view.with_backend(dataclasses.replace(one, detached=True, status=BackendStatus.DOWN)),
            ViewChange.DETACH,
        ),
        (view.with_backend(dataclasses.replace(one, status=BackendStatus.DOWN)), ViewChange.STATUS),
        (view.with_backend(dataclasses.replace(one, role=BackendRole.STANDBY)), ViewChange.ROLE),
        (view.with_backend(dataclasses.replace(one, health_score=0.5, lag_bytes=7)), ViewChange.HEALTH),
    ]
    for new, kind in cases:
        assert classify_view_change(view, new) is kind, kind
    events = ClusterEvents()
    for number in range(500):  # free-text reasons as the planner writes them: a new text every time
        new = dataclasses.replace(view.with_primary(number % 2), epoch=number + 1)
        events(view, new, f"primary {number} is down: connection refused (epoch {number + 1})", {})
    assert set(events.view_changes) == set(ViewChange)
    assert events.view_changes[ViewChange.FAILOVER] + events.view_changes[ViewChange.EPOCH] == 500


async def test_view_change_metric_has_one_series_per_kind(state: ApiState, client: QuartClient) -> None:
    view = state.proxy.cluster_view
    for number in range(20):
        state.proxy.update_cluster_view(
            dataclasses.replace(view.with_primary(1 - number % 2), epoch=number + 1),
            reason=f"failover {number}",
        )
    families = {
        f.name: f
        for f in text_string_to_metric_families(await (await client.get("/metrics")).get_data(as_text=True))
    }
    samples = {s.labels["reason"]: s.value for s in families["pgbalancer_cluster_view_changes"].samples}
    assert set(samples) == {str(kind) for kind in ViewChange}
    assert samples["failover"] == 20 and samples["health"] == 0


async def test_a_full_event_queues_drops_appear_in_metrics(state: ApiState, client: QuartClient) -> None:
    """The MQTT hand-off is never drained here (no MQTT thread), so a queue of 2 fills and drops."""
    before = {
        f.name: f
        for f in text_string_to_metric_families(await (await client.get("/metrics")).get_data(as_text=True))
    }
    assert before["pgbalancer_mqtt_enabled"].samples[0].value == 0
    assert "pgbalancer_mqtt_events_dropped" not in before
    events = EventService(state.proxy.config, state.proxy, capacity=2)
    state.event_statistics = events.statistics
    for _ in range(2):
        events.publish_state("test")  # each: one status per backend (2) and the cluster health
    text = await (await client.get("/metrics")).get_data(as_text=True)
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["pgbalancer_mqtt_enabled"] == 1
    assert values["pgbalancer_mqtt_events_offered_total"] == 6
    assert values["pgbalancer_mqtt_events_dropped_total"] == 4
    assert values["pgbalancer_mqtt_events_delivered_total"] == 0
    assert values["pgbalancer_mqtt_event_queue_depth"] == 2
    assert values["pgbalancer_mqtt_event_queue_capacity"] == 2
    assert values["pgbalancer_mqtt_event_queue_high_water"] == 2
    assert values["pgbalancer_mqtt_connections_refused_total"] == 0  # no embedded broker started


async def test_config_is_redacted(client: QuartClient) -> None:
    response = await client.get(f"{P}/config", headers=basic("watcher", "watch-pw"))
    text = await response.get_data(as_text=True)
    settings = json.loads(text)["settings"]
    assert settings["api_jwt_secret"] == "********" and KEY not in text
    assert settings["api_login_rate_limit"] == 3 and settings["backend_port1"] == 1


async def test_metrics_parse_and_count_the_apis_own_requests(client: QuartClient) -> None:
    await client.get(f"{P}/healthz")
    families = {
        f.name: f
        for f in text_string_to_metric_families(await (await client.get("/metrics")).get_data(as_text=True))
    }
    assert {
        "pgbalancer_clients",
        "pgbalancer_queries",
        "pgbalancer_backend_up",
        "pgbalancer_api_requests",
    } <= set(families)
    requests = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for s in families["pgbalancer_api_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[(f"{P}/healthz", "200")] == 1.0


# --------------------------------------------------------------------------- the OpenAPI document


def test_every_route_is_in_the_spec_and_every_spec_path_is_a_route(app: QuartTrio) -> None:
    spec = openapi_document()
    routes = {
        (re.sub(r"<(?:int:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}
    assert routes == documented


def test_the_spec_references_resolve() -> None:
    spec = openapi_document()
    text = json.dumps(spec)
    for name in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert name in spec["components"]["schemas"], name


async def test_component_json_schemas_hold_the_live_bodies(client: QuartClient) -> None:
    """component_json_schema is draft 4 (nullable as a null type, references inlined): the live
    /nodes and /status bodies pass, and a body off the spec fails."""
    headers = basic("watcher", "watch-pw")
    for path, component in (("nodes", "NodeList"), ("status", "Status"), ("nodes/1", "NodeDetail")):
        validator = jsonschema_rs.Draft4Validator(component_json_schema(component))
        body = await json_of(await client.get(f"{P}/{path}", headers=headers))
        validator.validate(body)
        assert not validator.is_valid({**body, "unexpected": 1}), component
    node_list = jsonschema_rs.Draft4Validator(component_json_schema("NodeList"))
    assert node_list.is_valid({"primary_id": None, "epoch": 0, "nodes": []})
    assert not node_list.is_valid({"primary_id": "0", "epoch": 0, "nodes": []})
    listing = await json_of(await client.get(f"{P}/nodes", headers=headers))
    listing["nodes"][0]["read_share"] = 1.5
    assert not node_list.is_valid(listing)


def _field_schema(component: str, field: str) -> dict[str, Any]:
    schema: dict[str, Any] = openapi_document()["components"]["schemas"][component]["properties"][field]
    return schema


def _path_parameter_schema(path: str, name: str) -> dict[str, Any]:
    for operation in openapi_document()["paths"][f"{P}{path}"].values():
        for parameter in operation.get("parameters", ()):
            if parameter["name"] == name:
                return dict(parameter["schema"])
    raise AssertionError(f"{path} has no parameter {name}")


# Every request field the API checks, with the check it applies: the spec must accept exactly what the
# check accepts, or schemathesis finds a schema-valid value answered 400 (or the reverse).
SPEC_CHECKS: list[tuple[str, dict[str, Any], Callable[[object], bool]]] = [
    ("login username", _field_schema("LoginRequest", "username"), api_app._is_name),
    ("login password", _field_schema("LoginRequest", "password"), api_app._is_password),
    (
        "pause database",  # the pause handler refuses the admin console's databases too
        _field_schema("PauseRequest", "database"),
        lambda v: api_app._is_optional_name(v) and v not in ADMIN_DATABASES,
    ),
    ("pause timeout", _field_schema("PauseRequest", "timeout"), api_app._is_timeout),
    ("resume database", _field_schema("ResumeRequest", "database"), api_app._is_optional_name),
    ("cache table", _field_schema("CacheInvalidateRequest", "table"), api_app._is_optional_name),
    ("member address", _field_schema("WatchdogMemberRequest", "address"), api_app._is_member_address),
    (
        "member path address",
        _path_parameter_schema("/watchdog/members/{address}", "address"),
        api_app._is_member_address,
    ),
    ("switchover target", _field_schema("SwitchoverRequest", "to"), api_app._is_node_id),
]

# JSON values a client can send. No lone surrogates (no JSON Schema validator can represent them; the
# API refuses them before any field check); near misses of every pattern and bound.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]))
_NEAR_TEXT = st.text(alphabet="aZ09.-_[]:\x00 /\u0663\u00e9", max_size=12) | st.text(
    alphabet="a\x00", min_size=254, max_size=258
)
_NEAR_NUMBERS = st.sampled_from(
    [0, -0.0, 1, 1.0, 59.999, 60, 60.0, 60.0000001, -1, -1e-9, 2**31 - 1, 2**31, 10**400, 1e308]
)
_JSON_VALUES = (
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
        max_leaves=5,
    )
    | _NEAR_TEXT
    | _NEAR_NUMBERS
    | st.sampled_from([*ADMIN_DATABASES, "127.0.0.1:9000", "[::1]:65536"])
)


_VALIDATORS = {field: jsonschema_rs.Draft4Validator(schema) for field, schema, _ in SPEC_CHECKS}


@pytest.mark.parametrize(("field", "schema", "check"), SPEC_CHECKS, ids=[c[0] for c in SPEC_CHECKS])
@given(value=_JSON_VALUES)
def test_the_spec_accepts_exactly_what_the_api_accepts(
    field: str, schema: dict[str, Any], check: Callable[[object], bool], value: object
) -> None:
    nullable = schema.get("nullable", False)  # OpenAPI 3.0's null; JSON Schema draft 4 has no such keyword
    valid = nullable if value is None else _VALIDATORS[field].is_valid(value)
    assert check(value) == valid, f"{field}: the spec says {valid} for {value!r}"


def test_plaintext_api_passwords_are_loaded_with_a_warning_that_never_shows_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = make_state()
    config = state.proxy.config
    settings = dataclasses.replace(
        state.settings, users=parse_api_users(USERS + '"dev" "plain-dev-pw" "viewer"\n')
    )
    with caplog.at_level(logging.WARNING, logger="pgbalancer.api"):
        ApiService(config, settings, state.proxy, NodeInfo("test:1"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("plaintext passwords for 'dev'" in w and "development only" in w for w in warnings), warnings
    assert not any("plain-dev-pw" in w for w in warnings)


class FakeWatchdog:
    """What /metrics reads from the watchdog: its status, as GET /watchdog/info serves it."""

    def __init__(self, leader: str | None) -> None:
        self.status: dict[str, object] = {
            "self_id": "127.0.0.1:7001",
            "leader": leader,
            "term": 7,
            "commit_index": 42,
            "quorum": leader is not None,
        }

    def info(self) -> dict[str, object]:
        return dict(self.status)

    def has_quorum(self) -> bool:
        return bool(self.status["quorum"])

    async def add_member(self, address: str) -> dict[str, object]:
        raise NotImplementedError

    async def remove_member(self, address: str) -> dict[str, object]:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("leader", "is_leader", "quorum"), [("127.0.0.1:7001", 1, 1), ("127.0.0.1:7002", 0, 1), (None, 0, 0)]
)
async def test_metrics_show_the_raft_term_leader_and_quorum(
    leader: str | None, is_leader: int, quorum: int
) -> None:
    state = make_state()
    client = create_app(state).test_client()
    off = {
        s.name: s.value
        for f in text_string_to_metric_families(await (await client.get("/metrics")).get_data(as_text=True))
        for s in f.samples
    }
    assert off["pgbalancer_raft_enabled"] == 0 and "pgbalancer_raft_term" not in off
    state.watchdog = FakeWatchdog(leader)
    text = await (await client.get("/metrics")).get_data(as_text=True)
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["pgbalancer_raft_enabled"].value == 1
    assert samples["pgbalancer_raft_term"].value == 7 and samples["pgbalancer_raft_commit_index"].value == 42
    assert samples["pgbalancer_raft_is_leader"].value == is_leader
    assert samples["pgbalancer_raft_quorum"].value == quorum
    assert samples["pgbalancer_raft_leader_info"].labels == {"leader": leader or ""}
