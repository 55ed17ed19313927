"""The REST API application: routes under /api/v1, authentication, roles and JSON errors.

``create_app(state)`` builds a quart-trio app over an :class:`ApiState`. Every route reads the
live node through ``state`` (see ``snapshots``) or acts through the node's own operations (pause
like the admin console, reload like SIGHUP). Callers authenticate with a Bearer JWT from
``POST /api/v1/auth/login`` or with HTTP Basic; viewers may read, admins may also act. Every
error is a JSON object ``{"error": code, "message": text}``.

It must never: log or return a password, a token or the signing key; answer a protected route
before the caller is authenticated and authorised; block the event loop on a password hash (those
run in a worker thread); let one request's failure end the node.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from pgbalancer.api import snapshots
from pgbalancer.api.control import BackendOperations, NodeControl, WatchdogControl
from pgbalancer.api.metrics import ApiMetrics
from pgbalancer.api.openapi import API_PREFIX, MEMBER_ADDRESS_PATTERN, openapi_document
from pgbalancer.api.ratelimit import LoginRateLimiter
from pgbalancer.api.readiness import ReadinessProbe
from pgbalancer.api.settings import ApiSettings
from pgbalancer.api.snapshots import ClusterEvents, NodeInfo, QueryRate
from pgbalancer.api.tokens import TokenRejected, issue_token, verify_token
from pgbalancer.api.users import ApiUser, Role
from pgbalancer.config import redacted_settings
from pgbalancer.ha.planner import HaOperationError
from pgbalancer.proxy.admin_commands import ADMIN_DATABASES
from pgbalancer.proxy.figures import FiguresPeering

if TYPE_CHECKING:
    from pgbalancer.events.service import EventStatistics
    from pgbalancer.proxy.server import ProxyServer

log = logging.getLogger(__name__)

_POLL_INTERVAL: Final = 0.05  # pause watches the pools this often
_DEFAULT_PAUSE_TIMEOUT: Final = 30.0
_MAX_PAUSE_TIMEOUT: Final = 60.0
_MAX_BODY: Final = 64 * 1024
_REALM: Final = 'Bearer realm="pgbalancer", Basic realm="pgbalancer"'

_OPERATION_REFUSALS: Final = {"not_found": 404, "conflict": 409, "unavailable": 503}

_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code and a message for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> Response:
        body = {"error": self.code, "message": self.message, **self.extra}
        return json_response(body, self.status, self.headers)


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, content_type="application/json")
    response.headers.update(headers or {})
    return response


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; ``role`` is the user's current role (the file decides, not the token)."""

    name: str
    role: Role
    method: str  # "bearer" or "basic"


@dataclass
class ApiState:
    """Everything the API reads or acts on; the node (or a test) builds it."""

    proxy: ProxyServer
    settings: ApiSettings
    node: NodeInfo
    control: NodeControl | None = None
    operations: BackendOperations | None = None  # the failover engine (a node always sets it)
    quorum: Callable[[], bool] | None = None  # the watchdog's answer, when watchdog_nodes is set
    watchdog: WatchdogControl | None = None  # set when watchdog_nodes is set
    figures_source: FiguresPeering | None = None  # every worker's traffic figures; default: ours only
    event_statistics: Callable[[], EventStatistics] | None = (
        None  # the MQTT event service's, when it runs here
    )
    events: ClusterEvents = field(default_factory=ClusterEvents)
    rate: QueryRate = field(default_factory=QueryRate)
    figures: FiguresPeering = field(init=False)
    metrics: ApiMetrics = field(init=False)
    limiter: LoginRateLimiter = field(init=False)
    readiness: ReadinessProbe = field(default_factory=ReadinessProbe)  # /readyz's cached backend probe

    def __post_init__(self) -> None:
        self.figures = self.figures_source if self.figures_source is not None else FiguresPeering(self.proxy)
        self.metrics = ApiMetrics(self.proxy, self.node, self.events)
        self.proxy.view_listeners.append(self.events)
        self.limiter = LoginRateLimiter(self.settings.login_rate_limit)

    def apply_settings(self, settings: ApiSettings) -> None:
        """Take reloaded settings (users, key, limits); failures counted so far are kept."""
        self.settings = settings
        self.limiter.limit = settings.login_rate_limit


def create_app(state: ApiState) -> QuartTrio:
    app = QuartTrio("pgbalancer.api")
    app.config.update(MAX_CONTENT_LENGTH=_MAX_BODY, RESPONSE_TIMEOUT=2 * _MAX_PAUSE_TIMEOUT)
    _install_hooks(app, state)
    _install_error_handlers(app)
    _Routes(state).register(app)
    return app


# --------------------------------------------------------------------------- hooks and errors


def _install_hooks(app: QuartTrio, state: ApiState) -> None:
    @app.before_request
    async def start_request() -> None:
        g.started = time.perf_counter()
        # Read the whole body first, even when the answer will not need it (401, 404, 405): hypercorn
        # stalls the next request of a kept-alive connection whose previous body was left unread.
        await request.get_data(as_text=False)

    @app.after_request
    async def count_request(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        state.metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        started = getattr(g, "started", None)
        if started is not None:
            state.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - started)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def _install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error.response()

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        headers = dict(error.get_headers())
        headers.pop("Content-Type", None)
        return json_response(
            {"error": code, "message": error.description or error.name}, error.code or 500, headers
        )

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("REST API internal error on %s %s", request.method, request.path)
        return json_response(
            {"error": "internal_error", "message": "pgbalancer internal error; see its log"}, 500
        )


# --------------------------------------------------------------------------- authentication


async def _authenticate(state: ApiState) -> Principal:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return _bearer_principal(state, credentials.strip())
    if scheme.lower() == "basic":
        name, password = _basic_credentials(credentials.strip())
        user = await _check_password(state, name, password)
        return Principal(user.name, user.role, "basic")
    raise _unauthorized(
        "credentials required: send 'Authorization: Bearer <token>' (POST /api/v1/auth/login) or HTTP Basic"
    )


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": _REALM})


def _bearer_principal(state: ApiState, token: str) -> Principal:
    try:
        claims = verify_token(state.settings.tokens, token)
    except TokenRejected as exc:
        raise _unauthorized(str(exc)) from None
    user = state.settings.users.get(claims.subject)
    if user is None:
        raise _unauthorized("the token's user is no longer an API user; log in again")
    # A token never grants more than the user file grants now (a demoted admin is a viewer at once).
    role = Role.ADMIN if claims.role is Role.ADMIN and user.role is Role.ADMIN else Role.VIEWER
    return Principal(user.name, role, "bearer")


def _basic_credentials(encoded: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _unauthorized("malformed HTTP Basic credentials") from None
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        raise _unauthorized("malformed HTTP Basic credentials")
    return name, password


async def _check_password(state: ApiState, name: str, password: str) -> ApiUser:
    """Check a password (Basic or login), rate-limited per source address."""
    source = request.remote_addr or "unknown"
    wait = state.limiter.retry_after(source, trio.current_time())
    if wait > 0:
        state.metrics.login_refusals.inc()
        retry_after = max(1, math.ceil(wait))
        raise ApiError(
            429,
            "too_many_failed_logins",
            f"too many failed logins from {source}; retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
    users = state.settings.users
    user = await trio.to_thread.run_sync(users.authenticate, name, password)
    if user is None:
        state.limiter.record_failure(source, trio.current_time())
        state.metrics.login_failures.inc()
        log.warning("REST API: failed login for user %r from %s", name, source)
        raise _unauthorized("wrong user name or password")
    return user


def _guarded(state: ApiState, needed: Role) -> Callable[[_Handler], _Handler]:
    """Run the handler only for an authenticated caller whose role allows ``needed``."""

    def decorate(handler: _Handler) -> _Handler:
        @wraps(handler)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            principal = await _authenticate(state)
            if not principal.role.may(needed):
                raise ApiError(
                    403, "forbidden", f"user {principal.name!r} is a {principal.role}; this needs {needed}"
                )
            g.principal = principal
            return await handler(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate


# --------------------------------------------------------------------------- request bodies


_Check = Callable[[object], bool]


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256 and "\0" not in value


def _is_optional_name(value: object) -> bool:
    return value is None or _is_name(value)


_MEMBER_ADDRESS: Final = re.compile(MEMBER_ADDRESS_PATTERN.removeprefix("^").removesuffix("$"))


def _is_member_address(value: object) -> bool:
    """host:port of a watchdog member, exactly as the spec's pattern says (so fuzzing finds no gap)."""
    return isinstance(value, str) and 3 <= len(value) <= 300 and _MEMBER_ADDRESS.fullmatch(value) is not None


def _is_password(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 4096


def _is_node_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _is_timeout(value: object) -> bool:
    # Compared, never converted: float() of a 400-digit JSON integer raises. NaN and inf fail the bounds.
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= _MAX_PAUSE_TIMEOUT


async def _json_body(fields: Mapping[str, _Check], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, every field checked; ApiError 400 naming the first problem."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        body: object = {}
    else:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_request", "the request body is not valid JSON") from None
    try:  # a lone surrogate escape ("\\ud800") decodes, but no UTF-8 text (a password hash, a log) holds it
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(
            400, "bad_request", "the request body holds a lone UTF-16 surrogate escape; send Unicode text"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field {unknown[0]!r}; allowed: {', '.join(fields)}")
    for name in required:
        if name not in body:
            raise ApiError(400, "bad_request", f"the field {name!r} is required")
    for name, value in body.items():
        if not fields[name](value):
            raise ApiError(400, "bad_request", f"the field {name!r} has an invalid value")
    return body


# --------------------------------------------------------------------------- routes


class _Routes:
    def __init__(self, state: ApiState) -> None:
        self.state = state

    @property
    def proxy(self) -> ProxyServer:
        return self.state.proxy

    def register(self, app: QuartTrio) -> None:
        viewer, admin = _guarded(self.state, Role.VIEWER), _guarded(self.state, Role.ADMIN)
        p = API_PREFIX
        app.add_url_rule(f"{p}/openapi.json", "openapi", self.openapi, methods=["GET"])
        app.add_url_rule(f"{p}/healthz", "healthz", self.healthz, methods=["GET"])
        app.add_url_rule(f"{p}/readyz", "readyz", self.readyz, methods=["GET"])
        app.add_url_rule(f"{p}/auth/login", "login", self.login, methods=["POST"])
        app.add_url_rule("/metrics", "metrics", self.metrics, methods=["GET"])
        app.add_url_rule(f"{p}/status", "status", viewer(self.status), methods=["GET"])
        app.add_url_rule(f"{p}/nodes", "nodes", viewer(self.nodes), methods=["GET"])
        app.add_url_rule(f"{p}/nodes/<int:node_id>", "node", viewer(self.node), methods=["GET"])
        for action in ("attach", "detach", "promote", "recovery"):
            app.add_url_rule(
                f"{p}/nodes/<int:node_id>/{action}",
                f"node_{action}",
                admin(self._node_action(action)),
                methods=["POST"],
            )
        app.add_url_rule(f"{p}/health/stats", "health_stats", viewer(self.health_stats), methods=["GET"])
        app.add_url_rule(f"{p}/pools", "pools", viewer(self.pools), methods=["GET"])
        app.add_url_rule(f"{p}/config", "config", viewer(self.config), methods=["GET"])
        app.add_url_rule(f"{p}/control/reload", "reload", admin(self.reload), methods=["POST"])
        app.add_url_rule(f"{p}/control/pause", "pause", admin(self.pause), methods=["POST"])
        app.add_url_rule(f"{p}/control/resume", "resume", admin(self.resume), methods=["POST"])
        app.add_url_rule(f"{p}/control/switchover", "switchover", admin(self.switchover), methods=["POST"])
        app.add_url_rule(f"{p}/ai/stats", "ai_stats", viewer(self.ai_stats), methods=["GET"])
        app.add_url_rule(f"{p}/cache/stats", "cache_stats", viewer(self.cache_stats), methods=["GET"])
        app.add_url_rule(
            f"{p}/cache/invalidate", "cache_invalidate", admin(self.cache_invalidate), methods=["POST"]
        )
        app.add_url_rule(f"{p}/watchdog/info", "watchdog_info", viewer(self.watchdog_info), methods=["GET"])
        app.add_url_rule(
            f"{p}/watchdog/members", "watchdog_add_member", admin(self.watchdog_add_member), methods=["POST"]
        )
        app.add_url_rule(
            f"{p}/watchdog/members/<address>",
            "watchdog_remove_member",
            admin(self.watchdog_remove_member),
            methods=["DELETE"],
        )

    # ------------------------------------------------------------------ open endpoints

    async def openapi(self) -> Response:
        return json_response(openapi_document(), headers={"Cache-Control": "no-cache"})

    async def healthz(self) -> Response:
        uptime = max(0.0, time.time() - self.proxy.started_at)
        return json_response({"status": "ok", "uptime_seconds": round(uptime, 3)})

    async def readyz(self) -> Response:
        reachable = await self.state.readiness.reachable(self.proxy.cluster_view)
        quorum = self._quorum()
        reasons = []
        if not reachable:
            reasons.append("no backend accepts TCP connections")
        if not quorum:
            reasons.append(
                "no watchdog quorum: this node is not in contact with a majority of watchdog_nodes "
                "(see GET /api/v1/watchdog/info)"
            )
        ready = not reasons
        body = {"ready": ready, "reachable_backends": reachable, "quorum": quorum, "reasons": reasons}
        return json_response(body, 200 if ready else 503)

    def _quorum(self) -> bool:
        if not self.proxy.config.watchdog_nodes:
            return True  # a single node without Raft is its own quorum
        return self.state.quorum() if self.state.quorum is not None else False

    async def login(self) -> Response:
        body = await _json_body({"username": _is_name, "password": _is_password}, ("username", "password"))
        user = await _check_password(self.state, body["username"], body["password"])
        issued = issue_token(self.state.settings.tokens, user.name, user.role, time.time())
        log.info("REST API: user %r logged in from %s", user.name, request.remote_addr)
        return json_response(
            {
                "token": issued.token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "role": str(user.role),
            }
        )

    async def metrics(self) -> Response:
        if self.state.settings.metrics_auth:
            await _authenticate(self.state)
        metrics = self.state.metrics
        metrics.collector.figures = await self.state.figures.gather()
        metrics.collector.watchdog = self.state.watchdog
        metrics.collector.event_statistics = self.state.event_statistics
        # generate_latest runs without a checkpoint, so no other scrape can swap the figures meanwhile.
        return Response(generate_latest(metrics.registry), status=200, content_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ reading

    async def status(self) -> Response:
        figures = await self.state.figures.gather()
        return json_response(snapshots.status(self.proxy, figures, self.state.node, self.state.rate))

    async def nodes(self) -> Response:
        return json_response(snapshots.nodes(self.proxy, await self.state.figures.gather()))

    async def node(self, node_id: int) -> Response:
        figures = await self.state.figures.gather()
        detail = snapshots.node_detail(self.proxy, figures, node_id, self.state.events)
        if detail is None:
            raise self._no_such_node(node_id)
        return json_response(detail)

    def _no_such_node(self, node_id: int) -> ApiError:
        known = ", ".join(map(str, snapshots.known_node_ids(self.proxy)))
        return ApiError(404, "not_found", f"no backend {node_id} (known: {known})")

    async def health_stats(self) -> Response:
        return json_response(snapshots.health_stats(self.proxy, self.state.events))

    async def ai_stats(self) -> Response:
        return json_response(snapshots.balancer_stats(self.proxy))

    async def pools(self) -> Response:
        return json_response(snapshots.pools(self.proxy, await self.state.figures.gather()))

    async def config(self) -> Response:
        return json_response({"settings": redacted_settings(self.proxy.config)})

    # ------------------------------------------------------------------ watchdog

    def _watchdog(self) -> WatchdogControl:
        if self.state.watchdog is None:
            raise ApiError(
                503,
                "watchdog_disabled",
                "no watchdog runs on this node: set watchdog_nodes, watchdog_port and watchdog_secret "
                "on every node to form a cluster",
            )
        return self.state.watchdog

    async def watchdog_info(self) -> Response:
        return json_response(self._watchdog().info())

    async def watchdog_add_member(self) -> Response:
        watchdog = self._watchdog()
        body = await _json_body({"address": _is_member_address}, ("address",))
        try:
            return json_response(await watchdog.add_member(body["address"]))
        except HaOperationError as exc:
            raise ApiError(_OPERATION_REFUSALS.get(exc.kind, 409), exc.kind, exc.message) from None

    async def watchdog_remove_member(self, address: str) -> Response:
        watchdog = self._watchdog()
        if not _is_member_address(address):
            raise ApiError(400, "bad_request", f"{address!r} is not host:port, such as 10.0.0.4:9000")
        try:
            return json_response(await watchdog.remove_member(address))
        except HaOperationError as exc:
            raise ApiError(_OPERATION_REFUSALS.get(exc.kind, 409), exc.kind, exc.message) from None

    # ------------------------------------------------------------------ acting (admin)

    def _operations(self) -> BackendOperations:
        operations = self.state.operations
        if operations is None:  # only an API served outside a node (tests): every node wires its engine
            raise ApiError(
                503,
                "not_available",
                "this API runs without a pgbalancer node's failover engine, so it cannot attach, detach, "
                "promote, rejoin or switch over; use the node's own API",
            )
        return operations

    async def _run_operation(self, action: str, node_id: int) -> Response:
        if not self.proxy.cluster_view.has(node_id):
            raise self._no_such_node(node_id)
        operations = self._operations()
        operation = {
            "attach": operations.attach,
            "detach": operations.detach,
            "promote": operations.promote,
            "recovery": operations.rejoin,
            "switchover": operations.switchover,
        }[action]
        log.info("REST API: %s of backend %d by %r", action, node_id, g.principal.name)
        try:
            outcome = await operation(node_id)
        except HaOperationError as exc:  # refused: nothing was changed
            status = _OPERATION_REFUSALS.get(exc.kind, 409)
            raise ApiError(status, exc.kind, exc.message) from None
        return json_response(
            {
                "node_id": node_id,
                "action": action,
                "primary_id": outcome.primary_id,
                "epoch": outcome.epoch,
                "notes": list(outcome.notes),
            }
        )

    def _node_action(self, action: str) -> Callable[[int], Awaitable[Response]]:
        async def node_action(node_id: int) -> Response:
            return await self._run_operation(action, node_id)

        node_action.__name__ = f"node_{action}"
        return node_action

    async def switchover(self) -> Response:
        body = await _json_body({"to": _is_node_id}, ("to",))
        return await self._run_operation("switchover", body["to"])

    async def reload(self) -> Response:
        await _json_body({})
        control = self.state.control
        if control is None:
            raise ApiError(503, "not_available", "this API runs without a pgbalancer node to reload")
        log.info("REST API: reload by %r", g.principal.name)
        outcome = await control.reload()
        if not outcome.ok:
            raise ApiError(422, "reload_failed", f"the running config was kept: {outcome.error}")
        return json_response(
            {
                "reloaded": True,
                "changed": list(outcome.changed),
                "applied_live": list(outcome.applied_live),
                "restart_required": list(outcome.restart_required),
            }
        )

    def _refuse_with_workers(self, verb: str) -> None:
        if self.state.node.worker_count > 1:
            raise ApiError(
                409,
                "not_supported_with_workers",
                f"{verb} through the API would reach worker 0 only of {self.state.node.worker_count}; "
                "run the node with workers = 1 to pause and resume it over HTTP",
            )

    async def pause(self) -> Response:
        body = await _json_body({"database": _is_optional_name, "timeout": _is_timeout})
        database: str | None = body.get("database")
        timeout = float(body.get("timeout", _DEFAULT_PAUSE_TIMEOUT))
        self._refuse_with_workers("pause")
        if database in ADMIN_DATABASES:
            raise ApiError(400, "bad_request", f"cannot pause the admin console database {database}")
        pools = self.proxy.pools
        if database is None and pools.pause_gate.all_paused:
            raise ApiError(409, "already_paused", "everything is already paused; POST /control/resume first")
        log.info("REST API: pause %s by %r", database or "(all)", g.principal.name)
        pools.pause(database)
        # As PgBouncer's PAUSE: done once every server connection is released (and closed).
        with trio.move_on_after(timeout):
            while pools.busy_server_count(database) > 0:
                await trio.sleep(_POLL_INTERVAL)
                if not self._is_paused(database):
                    raise ApiError(409, "resumed", "a resume reopened the pools before they drained")
                pools.close_idle_of(database)
        pools.close_idle_of(database)
        busy = pools.busy_server_count(database)
        return json_response(
            {"paused": True, "database": database, "drained": busy == 0, "busy_servers": busy}
        )

    def _is_paused(self, database: str | None) -> bool:
        gate = self.proxy.pools.pause_gate
        return gate.all_paused if database is None else gate.blocks(database)

    async def resume(self) -> Response:
        body = await _json_body({"database": _is_optional_name})
        database: str | None = body.get("database")
        self._refuse_with_workers("resume")
        gate = self.proxy.pools.pause_gate
        if not self.proxy.pools.resume(database):
            hint = (
                " (everything is paused: resume without a database)" if database and gate.all_paused else ""
            )
            raise ApiError(409, "not_paused", f"{database or 'the pooler'} is not paused{hint}")
        log.info("REST API: resume %s by %r", database or "(all)", g.principal.name)
        return json_response({"resumed": True, "database": database})

    async def cache_stats(self) -> Response:
        return json_response(snapshots.cache_stats(await self.state.figures.gather()))

    async def cache_invalidate(self) -> Response:
        body = await _json_body({"table": _is_optional_name})
        cache = self.proxy.cache
        if cache is None:
            raise ApiError(
                409, "cache_disabled", "the result cache is off: set memory_cache_enabled = on and restart"
            )
        table: str | None = body.get("table")
        tables = None if table is None else frozenset({table.lower()})
        removed = await cache.invalidate(tables)
        log.info("REST API: cache invalidation of %s by %r", table or "everything", g.principal.name)
        return json_response(
            {"invalidated_entries": removed, "tables": None if tables is None else sorted(tables)}
        )
