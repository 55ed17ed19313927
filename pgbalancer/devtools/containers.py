"""Choosing the test cluster backend, and the testcontainers-based cluster used where Docker runs.

``choose_cluster_backend`` decides between local PostgreSQL binaries and testcontainers *before*
anything is constructed, with a cheap stdlib probe of the Docker engine socket: docker-py's
``from_env().ping()`` leaks a socket (an error under ``-W error``) and testcontainers raises only
after trying. ``ContainerPgCluster`` has the public surface of ``LocalPgCluster`` (primary, standbys,
nodes, psql, start, stop, destroy) on the official ``postgres:15`` image, with the same roles, passwords
and pg_hba methods.

This module must never import testcontainers or docker at module level (they are test extras and slow
to import), and the probe must never leave a socket open.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.pgcluster import (
    PG_HBA,
    REPLICATION_USER,
    STREAMING_TIMEOUT,
    SUPERUSER,
    TEST_DATABASES,
    TEST_USERS,
    PgClusterError,
    PgNode,
    role_statements,
)

BACKEND_ENV = "PGBALANCER_TEST_BACKEND"
Backend = Literal["local", "testcontainers"]
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
POSTGRES_IMAGE = "postgres:15"
_CONTAINER_PGDATA = "/var/lib/postgresql/data/pgdata"


def docker_engine_answers(timeout: float = 0.3, env: Mapping[str, str] | None = None) -> bool:
    """True when a Docker engine answers ``GET /_ping`` with HTTP 200 within ``timeout`` (per step).

    Looks at DOCKER_HOST (``unix://PATH`` or ``tcp://HOST:PORT``), else /var/run/docker.sock. Any
    error, refusal or timeout means False.
    """
    docker_host = (os.environ if env is None else env).get("DOCKER_HOST", "")
    try:
        sock = _connect_engine(docker_host, timeout)
    except (OSError, ValueError):
        return False
    with sock:
        try:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return _reads_http_200(sock)
        except OSError:
            return False


def _connect_engine(docker_host: str, timeout: float) -> socket.socket:
    """A connected socket to the engine, or OSError/ValueError. The caller owns (and closes) it."""
    url = urlsplit(docker_host or f"unix://{DEFAULT_DOCKER_SOCKET}")
    address: str | tuple[str, int]
    if url.scheme == "unix":
        family, address = socket.AF_UNIX, url.path
    elif url.scheme in ("tcp", "http"):
        if not url.hostname:
            raise ValueError(f"DOCKER_HOST without a host: {docker_host!r}")
        family, address = socket.AF_INET, (url.hostname, url.port or 2375)
    else:
        raise ValueError(f"unsupported DOCKER_HOST scheme: {docker_host!r}")  # npipe://, ssh://
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _reads_http_200(sock: socket.socket) -> bool:
    received = b""
    while b"\r\n" not in received and len(received) < 1024:
        chunk = sock.recv(1024)
        if not chunk:
            break
        received += chunk
    status_line = received.split(b"\r\n", 1)[0].split()
    return len(status_line) >= 2 and status_line[0].startswith(b"HTTP/1.") and status_line[1] == b"200"


def choose_cluster_backend(env: Mapping[str, str] | None = None) -> Backend:
    """``PGBALANCER_TEST_BACKEND``: ``local``, ``testcontainers`` or ``auto`` (default).

    ``auto`` picks testcontainers only when the Docker engine answers; otherwise the local binaries.
    """
    env = os.environ if env is None else env
    wanted = env.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if wanted == "local":
        return "local"
    if wanted == "testcontainers":
        return "testcontainers"
    if wanted != "auto":
        raise ValueError(f"{BACKEND_ENV}={wanted!r}: use local, testcontainers or auto")
    return "testcontainers" if docker_engine_answers(env=env) else "local"


class ContainerPgCluster:
    """Primary + ``standbys`` streaming standbys as postgres:15 containers on a private docker network.

    Untested on machines without a Docker engine. Node hosts and ports are the mapped host ports, so
    ``node.dsn()`` works from the test process; ``data_dir`` is the path inside the container.
    """

    def __init__(self, *, standbys: int = 2, image: str = POSTGRES_IMAGE) -> None:
        self.standby_count = standbys
        self.image = image
        self._network: Any = None
        self._containers: list[Any] = []  # primary first
        self._nodes: list[PgNode] = []

    @property
    def primary(self) -> PgNode:
        self._require_started()
        return self._nodes[0]

    @property
    def standbys(self) -> list[PgNode]:
        self._require_started()
        return self._nodes[1:]

    @property
    def nodes(self) -> list[PgNode]:
        self._require_started()
        return list(self._nodes)

    def start(self) -> None:
        if self._nodes:
            return
        from testcontainers.core.network import Network

        self._network = Network().create()
        try:
            self._start_primary()
            for index in range(1, self.standby_count + 1):
                self._start_standby(index)
            self._wait_until_streaming()
        except BaseException:
            self.destroy()
            raise

    def stop(self) -> None:
        """Remove the containers (a container cluster has no separate stopped state worth keeping)."""
        for container in reversed(self._containers):
            with contextlib.suppress(Exception):  # already gone; stop must not raise during teardown
                container.stop()
        self._containers.clear()
        self._nodes.clear()
        if self._network is not None:
            with contextlib.suppress(Exception):
                self._network.remove()
            self._network = None

    def destroy(self) -> None:
        self.stop()

    def psql(self, node: PgNode, sql: str, *, user: str = SUPERUSER, dbname: str = "postgres") -> str:
        """Run ``sql`` with psql inside the node's container; same output contract as LocalPgCluster.psql."""
        from testcontainers.core.container import ExecConfig

        container = self._containers[self._nodes.index(node)]
        script = (
            'printf "%s" "$PGB_SQL" | '
            'psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -U "$PGB_USER" -d "$PGB_DB" -f -'
        )
        env = {"PGB_SQL": sql, "PGB_USER": user, "PGB_DB": dbname}
        password = TEST_USERS.get(user)
        if password:
            env["PGPASSWORD"] = password
        result = container.exec(ExecConfig(command=["bash", "-c", script], environment=env))
        output: str = bytes(result.output).decode(errors="replace")
        if result.exit_code != 0:
            raise PgClusterError(
                f"psql in container {node.name} failed ({result.exit_code}): {output.strip()}"
            )
        return output.removesuffix("\n")

    # ---- internals ---------------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._nodes:
            raise PgClusterError("ContainerPgCluster is not started: call start() first")

    def _new_container(self, alias: str, command: str) -> Any:
        from testcontainers.core.container import DockerContainer

        return (
            DockerContainer(self.image)
            .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_env("PGDATA", _CONTAINER_PGDATA)
            .with_exposed_ports(5432)
            .with_network(self._network)
            .with_network_aliases(alias)
            .with_command(["bash", "-c", command])
        )

    def _start_primary(self) -> None:
        # The image's entrypoint runs /docker-entrypoint-initdb.d/* once after initdb, as postgres, then
        # restarts the server; we drop our roles SQL and pg_hba there before handing over to it.
        init_sql = "\n".join(sql for _name, sql in role_statements())
        for dbname, owner in TEST_DATABASES.items():
            init_sql += f"\nCREATE DATABASE {dbname} OWNER {owner};"
            init_sql += f"\n\\c {dbname}\nGRANT ALL ON SCHEMA public TO PUBLIC;"
        hba_script = f"cat > \"$PGDATA/pg_hba.conf\" <<'EOF'\n{_container_hba()}EOF\n"
        command = (
            f"printf '%s' {shlex.quote(init_sql)} > /docker-entrypoint-initdb.d/10-roles.sql && "
            f"printf '%s' {shlex.quote(hba_script)} > /docker-entrypoint-initdb.d/20-hba.sh && "
            f"exec docker-entrypoint.sh postgres {_server_args()}"
        )
        container = self._new_container("pgprimary", command).start()
        self._register(container, "primary", "primary")
        self._wait_ready(self._nodes[-1])

    def _start_standby(self, index: int) -> None:
        name = f"standby{index}"
        command = (
            "until pg_isready -q -h pgprimary -U postgres; do sleep 0.2; done && "
            f"mkdir -p {_CONTAINER_PGDATA} && chown postgres {_CONTAINER_PGDATA} && "
            f"chmod 700 {_CONTAINER_PGDATA} && "
            f"gosu postgres pg_basebackup -h pgprimary -U {REPLICATION_USER} -D {_CONTAINER_PGDATA} "
            f"-R -X stream -C -S slot{index} -c fast && "
            f"exec gosu postgres postgres -D {_CONTAINER_PGDATA} {_server_args()} -c cluster_name={name}"
        )
        container = self._new_container(name, command).start()
        self._register(container, name, "standby")
        self._wait_ready(self._nodes[-1])

    def _register(self, container: Any, name: str, role: str) -> None:
        self._containers.append(container)
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5432))
        self._nodes.append(PgNode(name, host, port, Path(_CONTAINER_PGDATA), role))

    def _wait_ready(self, node: PgNode) -> None:
        # The entrypoint restarts the primary after the init scripts; poll until the final server answers.
        wait_for(
            lambda: self.psql(node, "SELECT 1") == "1",
            timeout=120,
            interval=0.5,
            message=f"container {node.name} accepting queries",
            retry_on=(PgClusterError,),
        )

    def _wait_until_streaming(self) -> None:
        expected = {node.name for node in self._nodes[1:]}
        sql = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        wait_for(
            lambda: expected <= set(self.psql(self._nodes[0], sql).split()),
            timeout=STREAMING_TIMEOUT,
            interval=0.2,
            message=f"container standbys {sorted(expected)} streaming",
            retry_on=(PgClusterError,),
        )


def _server_args() -> str:
    settings = {
        "listen_addresses": "*",
        "max_connections": "200",
        "wal_level": "replica",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "hot_standby": "on",
        "wal_log_hints": "on",
        "password_encryption": "scram-sha-256",
        "fsync": "off",
        "synchronous_commit": "off",
    }
    return " ".join(f"-c {key}={value}" for key, value in settings.items())


def _container_hba() -> str:
    # Same methods as the local cluster, but clients come from the docker network, not 127.0.0.1.
    return PG_HBA.replace("127.0.0.1/32", "0.0.0.0/0")
