"""Fixtures of the cluster tests: three pgbalancer nodes, PostgreSQL and a client in network namespaces.

``cluster`` (module scope) is a started :class:`~pgbalancer.devtools.netcluster.NetCluster` with a
:class:`~pgbalancer.devtools.netns.HolderSampler` that looks at every node's addresses every 50 ms
for the whole module; every scenario checks, and the module's last test too, that no sample showed
two VIP holders. Everything is deleted afterwards, also on failure and at interpreter exit. Needs
root, ip (iproute2) and arping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Generator, Iterator

import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.netcluster import VIP, NetCluster
from pgbalancer.devtools.netns import HolderSampler, list_namespaces
from pgbalancer.devtools.pgcluster import process_alive
from tests.hoststeal import CpuTimes, read_cpu_times

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
NEEDS_TOOLS = pytest.mark.skipif(
    shutil.which("ip") is None or shutil.which("arping") is None,
    reason="needs ip (iproute2) and arping (iputils-arping): make os-deps",
)


class SampledCluster(NetCluster):
    sampler: HolderSampler
    cpu_at_start: CpuTimes | None  # when the sampler started: the host's steal time over the module


def _wait_for_the_api(cluster: NetCluster) -> None:
    wait_for(lambda: _answer(cluster), timeout=30, message="node n1's REST API")


def _answer(cluster: NetCluster) -> dict[str, object]:
    try:
        return cluster.info("n1")
    except OSError:
        return {}  # not listening yet


@pytest.fixture(scope="module")
def cluster() -> Iterator[SampledCluster]:
    cluster = SampledCluster(extra_conf={"watchdog_lease": "2"})
    with cluster:
        assert cluster.lab is not None and cluster.pg is not None
        prefix = cluster.lab.prefix
        _wait_for_the_api(cluster)
        cluster.cpu_at_start = read_cpu_times()
        cluster.sampler = HolderSampler(cluster.lab, VIP, sorted(cluster.nodes)).start()
        try:
            yield cluster
        finally:
            cluster.sampler.stop()
            pids = _processes(cluster)
    _assert_nothing_left(cluster, prefix, pids)


def _processes(cluster: NetCluster) -> dict[str, int]:
    """Every process the cluster runs now: the nodes' and the PostgreSQL servers' postmasters."""
    pids = {
        f"node {name}": node.process.pid
        for name, node in cluster.nodes.items()
        if node.process is not None and node.running
    }
    if cluster.pg is not None:
        for index, pg_node in enumerate(cluster.pg.nodes):
            pid = cluster.pg.postmaster_pid(pg_node)
            if pid is not None:
                pids[f"PostgreSQL server {index}"] = pid
    return pids


def _assert_nothing_left(cluster: NetCluster, prefix: str, pids: dict[str, int]) -> None:
    """After teardown: no namespace of this lab, no base directory (data dirs, configs, logs), no
    process of the cluster's is left (DESIGN §6: delete everything afterwards)."""
    namespaces = [netns for netns in list_namespaces() if netns.startswith(prefix)]
    assert not namespaces, f"namespaces left behind: {namespaces}"
    assert not cluster.base.exists(), f"{cluster.base} left behind"

    def alive() -> dict[str, int]:
        return {what: pid for what, pid in pids.items() if process_alive(pid)}

    # pg_ctl stop returns once postmaster.pid is gone, a moment before the postmaster has exited
    with contextlib.suppress(TimeoutError):  # the assertion below names what is left
        wait_for(lambda: not alive(), timeout=10)
    assert not alive(), f"processes left behind 10 s after teardown: {alive()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """A failed scenario's report ends with every node's log tail: the state is read through the API,
    but why a node acted or refused is in its log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and isinstance(cluster, NetCluster):
        report.sections.append(("node logs", cluster.logs()))
