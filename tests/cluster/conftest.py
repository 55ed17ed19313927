"""Fixtures of the cluster tests: three pgbalancer nodes, PostgreSQL and a client in network namespaces.

``cluster`` (module scope) is a started :class:`~pgbalancer.devtools.netcluster.NetCluster` with a
:class:`~pgbalancer.devtools.netns.HolderSampler` that looks at every node's addresses every 50 ms
for the whole module; every scenario checks, and the module's last test too, that no sample showed
two VIP holders. Everything is deleted afterwards, also on failure and at interpreter exit. Needs
root, ip (iproute2) and arping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator

import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.netcluster import VIP, NetCluster
from pgbalancer.devtools.netns import HolderSampler

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
NEEDS_TOOLS = pytest.mark.skipif(
    shutil.which("ip") is None or shutil.which("arping") is None,
    reason="needs ip (iproute2) and arping (iputils-arping): make os-deps",
)


class SampledCluster(NetCluster):
    sampler: HolderSampler


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
        _wait_for_the_api(cluster)
        cluster.sampler = HolderSampler(cluster.lab, VIP, sorted(cluster.nodes)).start()  # type: ignore[arg-type]
        try:
            yield cluster
        finally:
            cluster.sampler.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """A failed scenario's report ends with every node's log tail: the state is read through the API,
    but why a node acted or refused is in its log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and isinstance(cluster, NetCluster):
        report.sections.append(("node logs", cluster.logs()))
