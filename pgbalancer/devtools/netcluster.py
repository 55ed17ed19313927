"""Three pgbalancer nodes, a client and PostgreSQL, each in its own network namespace (cluster tests, bench).

Layout, all on one bridge of a :class:`~pgbalancer.devtools.netns.NetnsLab` (private 10.77.0.0/24,
inside namespaces this module creates only):

    n1 10.77.0.11   n2 10.77.0.12   n3 10.77.0.13    pgbalancer nodes (proxy :5432, API :8080 on
                                                     127.0.0.1 of their namespace, Raft :9000)
    pg 10.77.0.20/.21/.22                            primary, standby1, standby2 (LocalPgCluster run
                                                     through ``ip netns exec``), one address each
    client 10.77.0.50                                where "applications" connect from
    VIP 10.77.0.100                                  delegate_ip on eth0 of the Raft leader

Each node runs as ``ip netns exec NS python -m pgbalancer -f BASE/nX.conf`` (log: BASE/nX.log). The
test process stays in the root namespace and reaches into the lab with
:func:`~pgbalancer.devtools.netns.call_in_netns` (a thread that entered the namespace), so a poll
costs no process start.

:meth:`NetCluster.destroy` stops every node (SIGKILL after a grace period), destroys PostgreSQL and
deletes the namespaces; it is registered with atexit too. It must never touch the root namespace's
interfaces, and never leave a process, namespace or data directory behind.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.netns import MEMBER_IF, NetnsLab, ip, reap_orphaned_labs
from pgbalancer.devtools.pgcluster import LocalPgCluster, reap_orphaned_clusters

SUBNET = "10.77.0"
VIP = f"{SUBNET}.100"
PG_ADDRESS = f"{SUBNET}.20"
# Each PostgreSQL server has an address of its own (all in the pg namespace), so a node can be cut off
# from one server only: a blackhole route in that node's namespace (see cut_backend).
PG_ADDRESSES = (f"{SUBNET}.20", f"{SUBNET}.21", f"{SUBNET}.22")
CLIENT = "client"
NODE_HOSTS: Mapping[str, int] = {"n1": 11, "n2": 12, "n3": 13}
PROXY_PORT = 5432
API_PORT = 8080
RAFT_PORT = 9000
API_USER, API_PASSWORD = "admin", "cluster-test-password"
_SECRET = "cluster-test-watchdog-secret-0123456789"
_PARENT = Path(os.environ.get("PGBALANCER_TEST_PGDIR", "/tmp"))
_PREFIX = "pgbalancer-netcluster-"
_STOP_GRACE = 10.0
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    name: str
    address: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NetCluster:
    """The lab, PostgreSQL and the nodes. ``extra_conf`` adds/overrides keys in every node's config."""

    def __init__(
        self,
        *,
        extra_conf: Mapping[str, str] | None = None,
        python: str = sys.executable,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.extra_conf = dict(extra_conf or {})
        self.python = python
        self._progress = progress or (lambda _line: None)
        reap_orphaned_labs()
        reap_orphaned_clusters(_PARENT, _PREFIX)
        self.base = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=_PARENT))
        (self.base / "owner.pid").write_text(f"{os.getpid()}\n")
        self.base.chmod(0o755)
        self.lab: NetnsLab | None = None
        self.pg: LocalPgCluster | None = None
        self.nodes: dict[str, NodeProcess] = {}
        self._probes: dict[str, Callable[[], set[str]]] = {}
        atexit.register(self.destroy)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Build the namespaces, start PostgreSQL in its own, then the three nodes."""
        self._progress("creating network namespaces…")
        lab = self.lab = NetnsLab()
        for name, host in NODE_HOSTS.items():
            lab.add(name, host)
        lab.add("pg", 20)
        for address in PG_ADDRESSES[1:]:
            lab.add_address("pg", address)
        lab.add(CLIENT, 50)
        self._progress("starting PostgreSQL (primary + 2 standbys) in its namespace…")
        self.pg = LocalPgCluster(
            self.base,
            standbys=2,
            fast=True,
            command_prefix=lab.exec_argv("pg", []),
            extra_listen=",".join(PG_ADDRESSES),
            client_network=f"{SUBNET}.0/24",
            progress=self._progress,
        )
        self.pg.start()
        users = self.base / "api_users"
        users.write_text(f'"{API_USER}" "{API_PASSWORD}" "admin"\n')
        for name, host in NODE_HOSTS.items():
            node = NodeProcess(
                name, f"{SUBNET}.{host}", self.base / f"{name}.conf", self.base / f"{name}.log"
            )
            node.config_path.write_text(self.node_config(name))
            self.nodes[name] = node
        for name in self.nodes:
            self.start_node(name)

    def destroy(self) -> None:
        """Stop everything this cluster started and delete it all (idempotent)."""
        try:
            for name in list(self.nodes):
                with contextlib.suppress(Exception):
                    self.stop_node(name)
            if self.pg is not None:
                self.pg.destroy()
        finally:
            if self.lab is not None:
                self.lab.destroy()
            if self.base.exists():
                shutil.rmtree(self.base, ignore_errors=True)
            self.pg, self.lab, self._probes = None, None, {}
            atexit.unregister(self.destroy)

    def __enter__(self) -> NetCluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()

    # ---- nodes ----------------------------------------------------------------------------------

    def node_config(self, name: str) -> str:
        assert self.pg is not None
        peers = ",".join(f"{SUBNET}.{host}:{RAFT_PORT}" for host in NODE_HOSTS.values())
        settings: dict[str, str] = {
            "node_name": name,
            "listen_addresses": "*",
            "port": str(PROXY_PORT),
            "auth_type": "trust",
            "workers": "1",
            "health_check_period": "1",
            "api_listen_addresses": "127.0.0.1",
            "api_port": str(API_PORT),
            "api_user_file": str(self.base / "api_users"),
            "mqtt_mode": "off",
            "pid_file": "",
            "watchdog_nodes": peers,
            "watchdog_port": str(RAFT_PORT),
            "watchdog_listen_address": f"{SUBNET}.{NODE_HOSTS[name]}",
            "watchdog_secret": _SECRET,
            "watchdog_data_dir": str(self.base / f"{name}-raft"),
            "delegate_ip": VIP,
            "delegate_ip_interface": MEMBER_IF,
        }
        for index, pg_node in enumerate(self.pg.nodes):
            settings[f"backend_hostname{index}"] = PG_ADDRESSES[index]
            settings[f"backend_port{index}"] = str(pg_node.port)
        settings.update(self.extra_conf)
        return "".join(f"{key} = '{value}'\n" for key, value in settings.items())

    def start_node(self, name: str) -> None:
        assert self.lab is not None
        node = self.nodes[name]
        if node.running:
            return
        argv = self.lab.exec_argv(name, [self.python, "-m", "pgbalancer", "-f", str(node.config_path)])
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(argv, cwd=_REPO, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the node's process (``ip netns exec`` execs it, so the pid is pgbalancer's)."""
        process = self.nodes[name].process
        assert process is not None
        process.send_signal(sig)
        if sig == signal.SIGKILL:
            process.wait(timeout=10)

    def stop_node(self, name: str) -> None:
        process = self.nodes[name].process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.nodes[name].log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log ---\n{self.log_tail(name)}" for name in self.nodes)

    # ---- network --------------------------------------------------------------------------------

    def partition(self, name: str) -> None:
        assert self.lab is not None
        self.lab.set_link(name, up=False)

    def heal(self, name: str) -> None:
        assert self.lab is not None
        self.lab.set_link(name, up=True)

    def cut_backend(self, name: str, backend: int, cut: bool = True) -> None:
        """Node ``name`` loses (or regains) its route to PostgreSQL server ``backend`` only.

        A blackhole route in the node's namespace: its probes of that server fail at once while
        every other node, and its own route to the other servers, are untouched.
        """
        assert self.lab is not None
        netns = self.lab.members[name].netns
        action = "add" if cut else "del"
        ip("-n", netns, "route", action, "blackhole", f"{PG_ADDRESSES[backend]}/32", check=cut)

    def cut_peers(self, name: str, cut: bool = True) -> None:
        """Node ``name`` loses (or regains) its routes to the other nodes only: a Raft partition that
        leaves its link, and so PostgreSQL and its clients, in place."""
        assert self.lab is not None
        netns = self.lab.members[name].netns
        for other, node in self.nodes.items():
            if other != name:
                ip(
                    "-n",
                    netns,
                    "route",
                    "add" if cut else "del",
                    "blackhole",
                    f"{node.address}/32",
                    check=cut,
                )

    def vip_holders(self) -> set[str]:
        assert self.lab is not None
        if not self._probes:
            self._probes = {name: self.lab.address_probe(name) for name in self.nodes}
        return {name for name, probe in self._probes.items() if VIP in probe()}

    # ---- talking to the lab ---------------------------------------------------------------------

    def api(
        self, name: str, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0
    ) -> Any:
        """A REST call to node ``name`` (inside its namespace); returns the decoded JSON."""
        assert self.lab is not None
        url = f"http://127.0.0.1:{API_PORT}/api/v1{path}"
        token = base64.b64encode(f"{API_USER}:{API_PASSWORD}".encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Basic {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")

        def call() -> Any:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return json.loads(exc.read() or b"{}") | {"_status": exc.code}

        return self.lab.call(name, call, timeout=timeout + 5)

    def query(
        self, sql: str, *, host: str = VIP, where: str = CLIENT, dbname: str = "bench", timeout: float = 5.0
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` on a new connection from namespace ``where`` to pgbalancer at ``host``."""
        import psycopg

        assert self.lab is not None
        conninfo = f"host={host} port={PROXY_PORT} user=bench dbname={dbname} connect_timeout={int(timeout)}"

        def call() -> list[tuple[Any, ...]]:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                cursor = conn.execute(sql)
                return list(cursor.fetchall()) if cursor.description else []

        return self.lab.call(where, call, timeout=timeout + 5)

    def info(self, name: str) -> dict[str, Any]:
        """GET /watchdog/info of node ``name``."""
        answer: dict[str, Any] = self.api(name, "/watchdog/info")
        return answer

    def name_of(self, member: str | None) -> str | None:
        """The node name of a Raft member id ("10.77.0.11:9000" -> "n1")."""
        if member is None:
            return None
        host = member.rsplit(":", 1)[0]
        return next((name for name, node in self.nodes.items() if node.address == host), None)

    def agreed_leader(self, names: Iterable[str] | None = None) -> str | None:
        """The leader every node in ``names`` (default: the running ones) reports with quorum, or None."""
        names = [n for n in (names or self.nodes) if self.nodes[n].running]
        leaders = set()
        for name in names:
            try:
                info = self.info(name)
            except OSError:
                return None
            if not info.get("quorum"):
                return None
            leaders.add(self.name_of(info.get("leader")))
        return leaders.pop() if len(leaders) == 1 else None

    def wait_stable(self, timeout: float = 30.0, names: Iterable[str] | None = None) -> str:
        """Wait until the nodes agree on a leader with quorum and it alone holds the VIP; its name."""
        chosen = list(names or self.nodes)

        def stable() -> str:
            # the leader must be one of ``names``: survivors may still name a killed leader, whose
            # namespace keeps the VIP address after a SIGKILL
            leader = self.agreed_leader(chosen)
            return leader if leader in chosen and self.vip_holders() == {leader} else ""

        try:
            return wait_for(
                stable, timeout=timeout, interval=0.1, message="one agreed leader holding the VIP"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nVIP holders: {self.vip_holders()}\n{self.logs()}") from None

    def pg_sql(self, sql: str, node_index: int = 0, dbname: str = "bench") -> str:
        """psql on a PostgreSQL server directly (inside its namespace)."""
        assert self.pg is not None
        return self.pg.psql(self.pg.nodes[node_index], sql, dbname=dbname)


@contextlib.contextmanager
def net_cluster(**kwargs: Any) -> Iterator[NetCluster]:
    cluster = NetCluster(**kwargs)
    with cluster:
        yield cluster
