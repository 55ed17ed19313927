"""Node-wide traffic figures: adding workers up, the JSON codec, and gathering over the stats sockets."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.config import Config, parse_config_text
from pgbalancer.proxy.figures import (
    CacheFigures,
    ClientFigures,
    FiguresError,
    FiguresPeering,
    PoolFigures,
    WorkerFigures,
    figures_from_json,
    figures_to_json,
    merge,
    stats_socket_path,
)
from pgbalancer.proxy.latency import LatencyHistogram
from pgbalancer.proxy.pool import PoolCounters, PoolKey
from pgbalancer.proxy.server import ProxyServer

KEY = PoolKey(0, "app", "alice")
OTHER = PoolKey(1, "app", "alice")


def counters(queries: int, max_wait_us: int = 0, latency: float = 0.001) -> PoolCounters:
    result = PoolCounters(query_count=queries, xact_count=queries, max_wait_us=max_wait_us)
    result.query_latency.observe(latency, queries)
    return result


def test_workers_add_up_per_pool_and_the_worst_wait_wins() -> None:
    first = WorkerFigures(
        0,
        ClientFigures(total=2, active=1, idle=1, accepted_total=5),
        (
            PoolFigures(
                KEY, active=1, idle=2, max_size=10, longest_wait_seconds=0.5, counters=counters(7, 300)
            ),
        ),
    )
    second = WorkerFigures(
        1,
        ClientFigures(total=3, active=3, accepted_total=9),
        (
            PoolFigures(KEY, active=3, max_size=10, longest_wait_seconds=0.2, counters=counters(4, 900, 0.2)),
            PoolFigures(OTHER, live=False, counters=counters(1)),
        ),
    )
    node = merge(3, [second, first])
    assert [w.worker_index for w in node.workers] == [0, 1] and node.missing == (2,)
    assert node.clients == ClientFigures(total=5, active=4, idle=1, accepted_total=14)
    pool = node.pools[0]
    assert (pool.key, pool.active, pool.idle, pool.max_size) == (KEY, 4, 2, 20)
    assert pool.longest_wait_seconds == 0.5 and pool.counters.max_wait_us == 900
    assert pool.counters.query_count == 11 and pool.counters.query_latency.count == 11
    assert node.query_total() == 12 and node.servers() == {
        "total": 6,
        "active": 4,
        "idle": 2,
        "logging_in": 0,
    }
    assert [p.key for p in node.live_pools()] == [KEY]  # the evicted pool counts, but has no gauges
    assert node.totals_by_backend()[1].query_count == 1
    assert first.pools[0].counters.query_count == 7  # the inputs are untouched


pool_figures = st.builds(
    PoolFigures,
    key=st.builds(PoolKey, st.integers(0, 9), st.text(min_size=1), st.text(min_size=1)),
    live=st.booleans(),
    active=st.integers(0, 10**6),
    longest_wait_seconds=st.floats(0, 1e6),
    counters=st.builds(
        counters, st.integers(0, 10**9), st.integers(0, 10**9), st.floats(0, 100, allow_nan=False)
    ),
)
worker_figures = st.builds(
    WorkerFigures,
    st.integers(0, 255),
    st.builds(ClientFigures, total=st.integers(0, 10**6), accepted_total=st.integers(0, 10**9)),
    st.lists(pool_figures, max_size=4).map(tuple),
    st.none() | st.builds(CacheFigures, hits=st.integers(0, 10**9), entries=st.integers(0, 10**6)),
)


def test_cache_figures_add_up_over_the_workers_that_have_a_cache() -> None:
    first = WorkerFigures(0, ClientFigures(), (), CacheFigures(entries=3, hits=9, misses=1, limit_bytes=50))
    second = WorkerFigures(1, ClientFigures(), (), CacheFigures(entries=2, hits=1, limit_bytes=50))
    node = merge(2, [first, second])
    assert node.cache == CacheFigures(entries=5, hits=10, misses=1, limit_bytes=100)
    assert node.cache.hit_ratio == 10 / 11
    assert merge(1, [WorkerFigures(0, ClientFigures(), ())]).cache is None  # the cache is off


@given(worker_figures)
def test_figures_survive_the_json_round_trip(figures: WorkerFigures) -> None:
    assert figures_from_json(json.loads(json.dumps(figures_to_json(figures)))) == figures


@pytest.mark.parametrize(
    "document", [None, [], {}, {"worker_index": 1, "clients": {}, "pools": []}, {"x": 1}]
)
def test_anything_else_is_not_a_figures_document(document: object) -> None:
    with pytest.raises(FiguresError):
        figures_from_json(document)


def test_a_histogram_of_another_shape_is_not_a_figures_document() -> None:
    document = figures_to_json(WorkerFigures(0, ClientFigures(), (PoolFigures(KEY),)))
    document["pools"][0]["counters"]["latency_counts"] = [1, 2]
    with pytest.raises(FiguresError):
        figures_from_json(document)


# --------------------------------------------------------------------------- over the stats sockets


def make_config(tmp_path: Path) -> Config:
    return parse_config_text(
        f"auth_type = 'trust'\nbackend_hostname0 = 'db0'\nworker_socket_dir = '{tmp_path}'\n"
    )


def busy_proxy(config: Config, queries: int, accepted: int) -> ProxyServer:
    proxy = ProxyServer(config, {})
    pool = proxy.pools.pool_for(KEY)
    pool.counters.query_count = queries
    pool.counters.query_latency.observe(0.002, queries)
    proxy.accepted_total = accepted
    return proxy


async def test_worker_zero_adds_up_what_its_siblings_report(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    zero = FiguresPeering(busy_proxy(config, 3, 2), 0, 3, str(tmp_path))
    one = FiguresPeering(busy_proxy(config, 5, 4), 1, 3, str(tmp_path))
    async with trio.open_nursery() as nursery:
        path = await nursery.start(one.serve)
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
        node = await zero.gather(timeout=2)
        nursery.cancel_scope.cancel()
    assert node.missing == (2,)  # worker 2 has no socket: named, not fatal
    assert [w.worker_index for w in node.workers] == [0, 1]
    assert node.query_total() == 8 and node.clients.accepted_total == 6
    latency = node.pools[0].counters.query_latency
    assert latency.counts == LatencyHistogram([0, 0, 0, 0, 8, *[0] * 12]).counts  # 2 ms: the 2.5 ms bucket
    assert latency.sum_seconds == pytest.approx(0.016)
    assert not Path(path).exists()  # cleaned up when its worker stops


async def test_a_sibling_answering_garbage_is_missing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    zero = FiguresPeering(busy_proxy(config, 3, 2), 0, 2, str(tmp_path))
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(stats_socket_path(str(tmp_path), config.port, 1))
    listener.listen()

    async def answer_garbage() -> None:
        peer, _ = await listener.accept()
        with peer:
            await peer.send(b'{"not": "figures"}')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_garbage)
        node = await zero.gather(timeout=2)
    listener.close()
    assert node.missing == (1,) and node.query_total() == 3
