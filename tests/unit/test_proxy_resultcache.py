"""The cache's shell with a fake replicator: the Raft barrier gates hits, writers wait out the
lease, peers' invalidations apply, and a client's writes are collected until its transaction ends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from pgbalancer.cache.relations import RelationFacts
from pgbalancer.config import parse_config_text
from pgbalancer.pgwire.framing import Message
from pgbalancer.proxy.backend import ServerCredentials
from pgbalancer.proxy.prepared import ClientStatements, PreparedStatement
from pgbalancer.proxy.resultcache import DDL_MARKER, CacheService, ClientCache, Recipe
from pgbalancer.proxy.sessionstate import ClientSessionState
from pgbalancer.routing.classify import DEFAULT_POLICY

ANSWER = b"T\x00\x00\x00\x06\x00\x00" + b"C\x00\x00\x00\x0dSELECT 1\x00" + b"Z\x00\x00\x00\x05I"


def service(extra: str = "") -> CacheService:
    config = parse_config_text(
        "backend_hostname0 = '127.0.0.1'\nauth_type = trust\nworkers = 1\nmemory_cache_enabled = on\n" + extra
    )
    return CacheService(config)


class FakeReplicator:
    """Commits after ``delay``; applies on every attached listener (the other nodes)."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.listeners: list[Callable[[int, frozenset[str] | None], None]] = []
        self.generation = 0
        self.lease = True
        self.fail = False

    async def replicate_invalidation(self, tables: frozenset[str] | None) -> int:
        await trio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("no quorum")
        self.generation += 1
        for listener in self.listeners:
            listener(self.generation, tables)
        return self.generation

    def lease_valid(self, now: float) -> bool:
        return self.lease

    def add_invalidation_listener(
        self, callback: Callable[[int, frozenset[str] | None], None]
    ) -> Callable[[], None]:
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)


def _fill(cache: CacheService, key: bytes = b"k", tables: frozenset[str] = frozenset({"t"})) -> None:
    assert cache.finish_fill(key, ANSWER, tables, cache.begin_fill(), None)


async def test_without_a_cluster_hits_need_no_barrier() -> None:
    cache = service()
    _fill(cache)
    assert cache.lookup(b"k") == ANSWER


async def test_hits_only_under_a_fresh_barrier(autojump_clock: trio.testing.MockClock) -> None:
    cache = service("memqcache_hit_lease = 0.2\n")
    replicator = FakeReplicator()
    cache.attach_cluster(replicator)
    _fill(cache)
    assert cache.lookup(b"k") is None  # no barrier yet
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await trio.sleep(0.1)
        assert cache.lookup(b"k") == ANSWER
        replicator.fail = True  # cut off: barriers stop committing
        await trio.sleep(0.3)
        assert cache.lookup(b"k") is None
        assert cache.lease_misses >= 2
        replicator.fail = False
        await trio.sleep(0.2)
        assert cache.lookup(b"k") == ANSWER
        nursery.cancel_scope.cancel()


async def test_a_writer_waits_commit_plus_lease_and_peers_apply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    writer, peer = service("memqcache_hit_lease = 0.2\n"), service("memqcache_hit_lease = 0.2\n")
    replicator = FakeReplicator(delay=0.05)
    writer.attach_cluster(replicator)
    peer.attach_cluster(replicator)
    _fill(peer)
    started = trio.current_time()
    await writer.invalidate(frozenset({"t"}))
    assert trio.current_time() - started >= 0.05 + 0.2
    assert len(peer.store) == 0


async def test_unreplicated_invalidation_drops_the_local_cache(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = service("memqcache_invalidation_timeout = 1\n")
    replicator = FakeReplicator(delay=5)
    cache.attach_cluster(replicator)
    _fill(cache, b"other", frozenset({"u"}))
    await cache.invalidate(frozenset({"t"}))
    assert len(cache.store) == 0 and cache.replication_failures == 1


async def test_dml_keeps_catalog_facts_and_ddl_drops_them() -> None:
    cache = service()
    cache._relations[("db", "t")] = RelationFacts(True, frozenset({"t"}))
    await cache.invalidate(frozenset({"t"}))
    assert cache.relations_known("db", ["t"]) == []
    await cache.invalidate(frozenset({"t", DDL_MARKER}))
    assert cache.relations_known("db", ["t"]) == ["t"]


def _client(cache: CacheService) -> ClientCache:
    state = ClientSessionState(reported={"search_path": "public"}, unreported={})
    return ClientCache(cache, "db", "alice", state, ClientStatements(), DEFAULT_POLICY)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE t SET a = 1", frozenset({"t"})),
        ("SELECT 1", frozenset()),
        ("GRANT SELECT ON t TO bob", None),
        ("ALTER TABLE t ADD c int", frozenset({"t", DDL_MARKER})),
    ],
)
def test_what_a_batch_writes(sql: str, expected: frozenset[str] | None) -> None:
    client = _client(service())
    assert client._written([Message(b"Q", sql.encode() + b"\x00")]) == expected


def test_extended_writes_are_known_at_bind_time() -> None:
    client = _client(service())
    parse = Message(b"P", b"s1\x00UPDATE t SET a = $1\x00\x00\x00")
    assert client._written([parse, Message(b"S", b"")]) == frozenset()  # parsed, not run
    client.statements.by_name[b"s1"] = PreparedStatement("pgbs_x", b"UPDATE t SET a = $1\x00\x00\x00")
    bind = Message(b"B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00")
    assert client._written([bind, Message(b"E", b"\x00\x00\x00\x00\x00"), Message(b"S", b"")]) == frozenset(
        {"t"}
    )
    assert client._written([Message(b"B", b"\x00never_seen\x00\x00\x00")]) is None
    assert client._written([Message(b"F", b"\x00\x00\x00\x01")]) is None


async def test_a_hit_is_keyed_by_session_settings() -> None:
    cache = service()
    client = _client(cache)
    batch = [Message(b"Q", b"SELECT v FROM t WHERE id = 1\x00")]
    plan = client.plan(batch)
    assert plan is not None and plan.hit is None and plan.reads == {"t"}
    assert cache.finish_fill(plan.key, ANSWER, plan.reads, cache.begin_fill(), None)
    again = client.plan(batch)
    assert again is not None and again.hit == ANSWER
    client.state.note_parameter_status("search_path", "other")
    moved = client.plan(batch)
    assert moved is not None and moved.hit is None
    assert client.plan([Message(b"Q", b"SELECT now()\x00")]) is None


def _recipe(key: bytes) -> Recipe:
    return Recipe(
        key, b"Q\x00\x00\x00\x0dSELECT 1\x00", frozenset({"t"}), None, "db", ServerCredentials("u"), "", ""
    )


async def test_prefetch_is_rate_limited_and_drops_the_excess(autojump_clock: trio.testing.MockClock) -> None:
    cache = service("memqcache_prefetch = on\nmemqcache_prefetch_count = 10\nmemqcache_prefetch_rate = 20\n")
    ran: list[bytes] = []

    async def record(proxy: object, recipe: Recipe) -> None:
        ran.append(recipe.key)

    cache._prefetch_one = record  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run_prefetch, None)
        for index in range(30):
            cache._prefetch_send.send_nowait(_recipe(b"k%d" % index))
        await trio.sleep(0.01)
        assert len(ran) == 10 and cache.prefetch_dropped == 20  # the bucket holds ten
        await trio.sleep(1.0)  # twenty a second refill it
        for index in range(30, 40):
            cache._prefetch_send.send_nowait(_recipe(b"k%d" % index))
        await trio.sleep(0.01)
        assert len(ran) == 20
        nursery.cancel_scope.cancel()


async def test_invalidation_hands_over_the_hottest_dropped_recipes() -> None:
    cache = service("memqcache_prefetch = on\nmemqcache_prefetch_count = 2\n")
    for index, hits in enumerate((5, 0, 9, 2)):
        key = b"k%d" % index
        assert cache.finish_fill(key, ANSWER, frozenset({"t"}), cache.begin_fill(), None, _recipe(key))
        for _ in range(hits):
            cache.lookup(key)
    cache.finish_fill(b"other", ANSWER, frozenset({"u"}), cache.begin_fill(), None, _recipe(b"other"))
    cache.lookup(b"other")
    cache.apply(frozenset({"t"}))
    handed = [cache._prefetch_receive.receive_nowait().key for _ in range(2)]
    assert handed == [b"k2", b"k0"]
    with pytest.raises(trio.WouldBlock):
        cache._prefetch_receive.receive_nowait()
