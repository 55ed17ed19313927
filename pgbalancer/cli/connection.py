"""bctl's connection to the REST API: where the nodes are, who we are, and one JSON request at a time.

``Endpoints`` parses ``--host/--port``, ``--cluster h1:p1,...`` and ``PGBALANCER_URL``; ``TokenStore``
keeps the JWT of ``bctl login`` in ``$XDG_CONFIG_HOME/pgbalancer/token`` (``~/.config`` by default)
with mode 0600; ``ApiClient`` sends requests with the standard library's ``http.client`` (httpx alone
costs about 150 ms to import, half of bctl's start-up budget), tries the nodes in turn, follows the
watchdog leader for control commands and turns every failure into a :class:`CliError` carrying the
documented exit code and what to do next.

It must never: print or log a password or a token (``--verbose`` shows methods, URLs and timings
only), write the token file with a mode other than 0600, or talk to PostgreSQL or the Raft group.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from pgbalancer.cli.errors import EXIT_UNREACHABLE, EXIT_USAGE, CliError

API_PREFIX: Final = "/api/v1"
DEFAULT_PORT: Final = 8080
_TIMEOUT: Final = 10.0
_LONG_TIMEOUT: Final = 180.0  # switchover, promote and rejoin wait for PostgreSQL
_REFRESH_MARGIN: Final = 60.0  # re-login this long before the token expires, when a password is known

Json = dict[str, Any]


# --------------------------------------------------------------------------- where the nodes are


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _port(text: str, what: str) -> int:
    # isdigit() alone accepts '²', which int() then refuses: ASCII digits only.
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise CliError(f"{what}: {text!r} is not a TCP port (1-65535)", EXIT_USAGE)
    return int(text)


def _plain_host(host: str) -> bool:
    """A host name or address, not a URL, a path or user@host."""
    return bool(host) and not any(c in host for c in "/@ ?#")


def _ipv6(text: str) -> bool:
    import ipaddress  # only for a --host with a colon

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_cluster(text: str, scheme: str = "http") -> tuple[Endpoint, ...]:
    """``h1:p1,h2:p2,...`` (a bare host takes port 8080; IPv6 as ``[::1]:8080``)."""
    endpoints = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise CliError(f"--cluster {text!r}: empty entry; write it like 'db1:8080,db2:8080'", EXIT_USAGE)
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise CliError(f"--cluster: {item!r} is not [ipv6]:port", EXIT_USAGE)
            port_text = rest[1:] if rest else str(DEFAULT_PORT)
        else:
            host, colon, port_text = item.rpartition(":")
            if not colon:
                host, port_text = item, str(DEFAULT_PORT)
        if not _plain_host(host):
            raise CliError(
                f"--cluster: {item!r} is not host:port; write it like 'db1:8080,db2:8080'", EXIT_USAGE
            )
        endpoints.append(Endpoint(scheme, host, _port(port_text, f"--cluster entry {item!r}")))
    return tuple(endpoints)


def parse_url(url: str) -> Endpoint:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(
            f"PGBALANCER_URL {url!r} is not http(s)://host[:port]; e.g. http://db1:8080", EXIT_USAGE
        )
    try:
        port = parts.port
    except ValueError:
        raise CliError(f"PGBALANCER_URL {url!r}: the port is not a number 1-65535", EXIT_USAGE) from None
    return Endpoint(parts.scheme, parts.hostname, port or DEFAULT_PORT)


def resolve_endpoints(
    host: str | None, port: int | None, cluster: str | None, env: Mapping[str, str]
) -> tuple[Endpoint, ...]:
    """Flags first, then PGBALANCER_URL, then http://localhost:8080."""
    if cluster is not None:
        if host is not None or port is not None:
            raise CliError(
                "give either --cluster or --host/--port, not both (each --cluster entry has its own port)",
                EXIT_USAGE,
            )
        return parse_cluster(cluster)
    if host is not None:
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not _plain_host(host) or (":" in host and not _ipv6(host)):
            raise CliError(
                f"--host {host!r} is not a host name or address; e.g. --host db1 --port 8080", EXIT_USAGE
            )
    base = (
        parse_url(env["PGBALANCER_URL"]) if env.get("PGBALANCER_URL") else Endpoint("http", "localhost", 8080)
    )
    if port is not None and not 0 < port < 65536:
        raise CliError(f"--port {port} is not a TCP port (1-65535)", EXIT_USAGE)
    return (Endpoint(base.scheme, host or base.host, port or base.port),)


# --------------------------------------------------------------------------- the token


def config_dir(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_CONFIG_HOME")
    root = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".config"
    return root / "pgbalancer"


def _unverified_claims(token: str) -> dict[str, Any]:
    """The token's claims, read without verifying (the server verifies; bctl only plans a refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> float | None:
    exp = _unverified_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def token_subject(token: str) -> str | None:
    sub = _unverified_claims(token).get("sub")
    return sub if isinstance(sub, str) and sub else None


@dataclass
class TokenStore:
    path: Path

    def load(self) -> str | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CliError(f"cannot read the token file {self.path}: {exc.strerror}") from None
        return text or None

    def save(self, token: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
                out.write(token + "\n")
        except OSError as exc:
            raise CliError(f"cannot write the token file {self.path}: {exc.strerror}") from None

    def clear(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


# --------------------------------------------------------------------------- requests


@dataclass
class Reply:
    status: int
    body: Any
    endpoint: Endpoint


def _error_text(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return f"HTTP {status}"


@dataclass
class ApiClient:
    """One bctl invocation's view of the cluster (the order of ``endpoints`` is the order tried)."""

    endpoints: tuple[Endpoint, ...]
    env: Mapping[str, str]
    verbose: bool = False
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    # On a terminal, an expired stored token is refreshed by asking for the password.
    ask_password: Callable[[str], str] = field(default=lambda user: _ask_password(user))
    _token: str | None = field(default=None, init=False)
    _working: Endpoint | None = field(default=None, init=False)
    _connections: dict[Endpoint, http.client.HTTPConnection] = field(default_factory=dict, init=False)

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and sys.stderr.isatty()

    @property
    def current(self) -> Endpoint | None:
        """The node that answered last (None before the first answer)."""
        return self._working

    @property
    def store(self) -> TokenStore:
        return TokenStore(config_dir(self.env) / "token")

    # ---- transport

    def _connection(self, endpoint: Endpoint, timeout: float) -> http.client.HTTPConnection:
        conn = self._connections.get(endpoint)
        if conn is None:
            if endpoint.scheme == "https":
                import ssl  # only for https: it costs a few ms at start-up

                context = ssl.create_default_context(cafile=self.env.get("PGBALANCER_CAFILE") or None)
                conn = http.client.HTTPSConnection(
                    endpoint.host, endpoint.port, timeout=timeout, context=context
                )
            else:
                conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
            self._connections[endpoint] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def _send(
        self, endpoint: Endpoint, method: str, path: str, body: Json | None, auth: str | None, timeout: float
    ) -> Reply:
        """One request to one node; OSError when the node cannot be reached."""
        headers = {"Accept": "application/json", "User-Agent": "bctl"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth is not None:
            headers["Authorization"] = auth
        started = time.perf_counter()
        for attempt in (1, 2):
            conn = self._connection(endpoint, timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()  # a kept-alive connection the server closed: one fresh try
                if attempt == 2:
                    raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                text = str(exc) or type(exc).__name__
                if "CERTIFICATE_VERIFY_FAILED" in text:
                    text += " (set PGBALANCER_CAFILE to the CA that signed the API's certificate)"
                raise OSError(text) from exc
        elapsed = (time.perf_counter() - started) * 1000
        if self.verbose:
            self.log(f"> {method} {endpoint.url}{path} -> {response.status} ({elapsed:.1f} ms)")
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        return Reply(response.status, decoded, endpoint)

    def _unreachable(self, failures: list[str]) -> CliError:
        tried = "; ".join(failures)
        return CliError(
            f"cannot reach pgbalancer ({tried}); check --host/--port, --cluster or PGBALANCER_URL "
            "and that the node runs with its REST API on (api_port)",
            EXIT_UNREACHABLE,
        )

    def _order(self) -> list[Endpoint]:
        """The node that answered last first: one dead node costs one connection attempt, not many."""
        first = self._working
        return [first, *(e for e in self.endpoints if e != first)] if first else list(self.endpoints)

    def raw(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        auth: str | None = None,
        only: Endpoint | None = None,
        timeout: float = _TIMEOUT,
    ) -> Reply:
        """Send to the first node that answers (or to ``only``); CliError(3) when none does."""
        failures = []
        for endpoint in [only] if only is not None else self._order():
            try:
                reply = self._send(endpoint, method, API_PREFIX + path, body, auth, timeout)
            except OSError as exc:
                if self.verbose:
                    self.log(f"> {method} {endpoint.url}{API_PREFIX}{path} -> unreachable: {exc}")
                failures.append(f"{endpoint.url}: {exc}")
                continue
            self._working = endpoint
            return reply
        raise self._unreachable(failures)

    # ---- authentication

    def login(self, user: str, password: str) -> str:
        reply = self.raw("POST", "/auth/login", {"username": user, "password": password})
        if reply.status == 401:
            raise CliError(f"login refused: {_error_text(reply.body, 401)}; check the user and password")
        if reply.status != 200 or not isinstance(reply.body, dict) or "token" not in reply.body:
            raise CliError(f"login refused: {_error_text(reply.body, reply.status)}", status=reply.status)
        token = str(reply.body["token"])
        self._token = token
        return token

    def _credentials(self) -> tuple[str | None, str | None]:
        return self.env.get("PGBALANCER_USER") or None, self.env.get("PGBALANCER_PASSWORD")

    def authorization(self, now: float) -> str:
        """``Bearer ...``: PGBALANCER_TOKEN, else the stored token (refreshed near expiry), else a login."""
        if self._token is not None:
            return f"Bearer {self._token}"
        env_token = self.env.get("PGBALANCER_TOKEN")
        if env_token:
            self._token = env_token
            self._check_not_expired(env_token, now, "PGBALANCER_TOKEN")
            return f"Bearer {env_token}"
        user, password = self._credentials()
        stored = self.store.load()
        if stored is not None:
            expiry = token_expiry(stored)
            fresh = expiry is None or expiry - now > _REFRESH_MARGIN
            if not fresh and not (user and password) and self.interactive:
                user = user or token_subject(stored)
                password = self.ask_password(user) if user else None
            if fresh or not (user and password):
                self._check_not_expired(stored, now, str(self.store.path))
                self._token = stored
                return f"Bearer {stored}"
            if self.verbose:
                self.log("> the stored token expires soon: logging in again with PGBALANCER_USER/PASSWORD")
            token = self.login(user, password)
            self.store.save(token)
            return f"Bearer {token}"
        if user and password is not None:
            return f"Bearer {self.login(user, password)}"
        raise CliError(
            "not logged in: run `bctl login` (or set PGBALANCER_TOKEN, or PGBALANCER_USER and "
            "PGBALANCER_PASSWORD)"
        )

    def _check_not_expired(self, token: str, now: float, where: str) -> None:
        expiry = token_expiry(token)
        if expiry is not None and expiry <= now:
            raise CliError(f"token expired (from {where}): run `bctl login`")

    # ---- the API

    def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        only: Endpoint | None = None,
        timeout: float = _TIMEOUT,
    ) -> Any:
        """An authenticated request; the JSON body of a 2xx answer, else CliError(1) with the reason."""
        auth = self.authorization(time.time())
        reply = self.raw(method, path, body, auth=auth, only=only, timeout=timeout)
        if 200 <= reply.status < 300:
            return reply.body
        raise refusal(reply)

    def leader(self) -> Endpoint:
        """The node control commands go to: the watchdog leader, or any node without a watchdog."""
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        auth = self.authorization(time.time())
        failures, answered = [], None
        for endpoint in self.endpoints:
            try:
                reply = self._send(endpoint, "GET", f"{API_PREFIX}/watchdog/info", None, auth, _TIMEOUT)
            except OSError as exc:
                failures.append(f"{endpoint.url}: {exc}")
                continue
            answered = answered or endpoint
            body = reply.body if isinstance(reply.body, dict) else {}
            if reply.status == 503 or (reply.status == 200 and body.get("enabled") is False):
                return endpoint  # no watchdog configured: every node acts for itself
            if reply.status != 200:
                raise refusal(reply)
            if body.get("leader") is not None and body.get("leader") == body.get("self_id"):
                if self.verbose:
                    self.log(f"> the watchdog leader is {body.get('self_id')} at {endpoint.url}")
                return endpoint
        if answered is None:
            raise self._unreachable(failures)
        raise CliError(
            "no node of --cluster is the watchdog leader (an election may be running, or the leader is "
            "not in the list); retry in a few seconds or add the leader to --cluster",
            EXIT_UNREACHABLE,
        )


def _ask_password(user: str) -> str:
    import getpass

    return getpass.getpass(f"token expired; password for {user} (Enter to give up): ")


def refusal(reply: Reply) -> CliError:
    """The CliError for a non-2xx answer, with what to do next."""
    message = _error_text(reply.body, reply.status)
    status = reply.status
    if status == 401:
        if "expired" in message:
            return CliError(f"token expired: run `bctl login` ({message})", status=status)
        return CliError(f"authentication refused: {message}; run `bctl login`", status=status)
    if status == 403:
        return CliError(f"permission denied: {message}; log in as an admin user", status=status)
    if status == 503:
        feature = reply.body.get("feature") if isinstance(reply.body, dict) else None
        what = f" ({feature})" if feature else ""
        return CliError(f"not available on {reply.endpoint.url}{what}: {message}", status=status)
    return CliError(f"{reply.endpoint.url} refused (HTTP {status}): {message}", status=status)


def path_segment(text: str) -> str:
    return quote(text, safe="")
