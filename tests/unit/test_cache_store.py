"""The result cache store: LRU within the byte bound, TTL, invalidation by table, fill races,
and byte accounting checked against tracemalloc."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pgbalancer.cache.generations import Generations, buffer_size
from pgbalancer.cache.store import ResultCache


def _cache(limit: int = 1 << 20, *, max_entry: int = 1 << 16, ttl: float = 60.0) -> ResultCache:
    return ResultCache(limit, max_entry_bytes=max_entry, ttl=ttl)


def test_hit_after_store_and_miss_before() -> None:
    cache = _cache()
    assert cache.lookup(b"k", 0.0) is None
    assert cache.store(b"k", b"answer", {"t"}, 0.0, since=cache.begin_fill())
    assert cache.lookup(b"k", 1.0) == b"answer"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert stats.hit_ratio == 0.5


def test_entries_expire_after_their_ttl() -> None:
    cache = _cache(ttl=10.0)
    cache.store(b"a", b"x", {"t"}, 0.0, since=0)
    cache.store(b"b", b"y", {"t"}, 0.0, since=0, ttl=30.0)  # a cache ttl=30 hint
    assert cache.lookup(b"a", 9.9) == b"x"
    assert cache.lookup(b"a", 10.0) is None
    assert cache.lookup(b"b", 29.0) == b"y"
    assert len(cache) == 1


def test_invalidating_a_table_drops_exactly_its_entries() -> None:
    cache = _cache()
    cache.store(b"a", b"1", {"t"}, 0.0, since=0)
    cache.store(b"b", b"2", {"t", "u"}, 0.0, since=0)
    cache.store(b"c", b"3", {"u"}, 0.0, since=0)
    cache.store(b"d", b"4", set(), 0.0, since=0)
    assert cache.invalidate({"t"}) == 2
    assert [cache.lookup(k, 1.0) for k in (b"a", b"b", b"c", b"d")] == [None, None, b"3", b"4"]
    assert cache.invalidate(None) == 2
    assert len(cache) == 0
    assert cache.stats().invalidations == 4


def test_a_fill_that_raced_an_invalidation_is_refused() -> None:
    cache = _cache()
    since = cache.begin_fill()  # the read starts
    cache.invalidate({"t"})  # a write commits meanwhile
    assert not cache.store(b"k", b"old", {"t"}, 0.0, since=since)
    assert cache.store(b"k2", b"other", {"u"}, 0.0, since=since)  # other tables are unaffected
    since = cache.begin_fill()
    cache.invalidate(None)
    assert not cache.store(b"k3", b"old", {"u"}, 0.0, since=since)
    assert cache.store(b"k3", b"new", {"u"}, 0.0, since=cache.begin_fill())


def test_results_over_the_entry_limit_are_not_stored() -> None:
    cache = _cache(max_entry=100)
    assert not cache.store(b"k", b"x" * 101, {"t"}, 0.0, since=0)
    assert cache.store(b"k", b"x" * 100, {"t"}, 0.0, since=0)
    assert cache.stats().rejected == 1


def test_least_recently_used_goes_first() -> None:
    cache = _cache(limit=8000)
    index = 0
    while cache.stats().evictions == 0:
        cache.store(b"k%d" % index, b"x" * 300, {"t"}, 0.0, since=0)
        index += 1
    survivors = [key for key in (b"k%d" % i for i in range(index)) if key in cache._entries]
    oldest, second = survivors[0], survivors[1]
    cache.lookup(oldest, 0.0)  # now the most recently used
    evictions = cache.stats().evictions
    while cache.stats().evictions == evictions:
        cache.store(b"k%d" % index, b"x" * 300, {"t"}, 0.0, since=0)
        index += 1
    assert cache.lookup(oldest, 0.0) is not None
    assert cache.lookup(second, 0.0) is None
    assert cache.used_bytes <= 8000


@pytest.mark.slow
def test_a_hundred_thousand_distinct_queries_stay_under_the_bound() -> None:
    limit = 2 << 20
    cache = _cache(limit=limit)
    for index in range(100_000):
        key = b"SELECT * FROM t%d WHERE id = %d" % (index % 97, index)
        cache.store(key, b"T" * 40 + b"D%d" % index, {f"t{index % 97}"}, float(index), since=0)
        assert cache.used_bytes <= limit
    assert cache.stats().evictions > 50_000
    assert cache.used_bytes > limit * 0.9  # the bound is used, not wasted


def _real_bytes(cache: ResultCache, items: list[tuple[bytes, bytes, frozenset[str]]]) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, payload, tables in items:
            cache.store(key, payload, tables, 0.0, since=0, stamp=cache.stamp(tables))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    objects = sum(sys.getsizeof(key) + sys.getsizeof(payload) for key, payload, _ in items)
    objects += sum(sys.getsizeof(tables) for tables in {tables for _, _, tables in items})
    return grown + objects, cache.used_bytes


@pytest.mark.slow
def test_byte_accounting_is_within_ten_percent_of_real_memory() -> None:
    shapes = [(20, 1, 50), (200, 1, 5000), (1000, 2, 50), (8000, 1, 3), (30, 3, 5), (60, 0, 1)]
    for payload_size, table_count, distinct in shapes:
        items = [
            (
                b"key-%012d" % index,
                b"%d" % index + b"x" * payload_size,
                frozenset(f"t{j}_{index % distinct}" for j in range(table_count)),
            )
            for index in range(2000)
        ]
        real, charged = _real_bytes(_cache(limit=1 << 40, max_entry=1 << 30, ttl=1e9), items)
        assert abs(charged - real) <= real * 0.10, (payload_size, table_count, distinct, charged, real)
        # one of several workers: each entry also keeps the stamp of its tables' generations,
        # small ints (shared by CPython) on a fresh node, ints of their own on a busy one
        for generation in (0, 10**6):
            shared = bytearray(buffer_size(2))
            memoryview(shared).cast("Q")[:] = array("Q", [generation]) * (len(shared) // 8)
            cache = _cache(limit=1 << 40, max_entry=1 << 30, ttl=1e9)
            cache.generations = Generations(shared, 2, 1)
            real, charged = _real_bytes(cache, items)
            assert abs(charged - real) <= real * 0.10, (payload_size, table_count, generation, charged, real)


class CacheMachine(RuleBasedStateMachine):
    """Any sequence of stores, lookups, invalidations and time: the model and the store agree."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = _cache(limit=6000, max_entry=1500, ttl=5.0)
        self.now = 0.0
        self.invalidated_after: dict[bytes, float] = {}
        self.tables: dict[bytes, frozenset[str]] = {}

    @rule(
        key=st.binary(min_size=1, max_size=4),
        size=st.integers(0, 2000),
        tables=st.frozensets(st.sampled_from("abcd"), max_size=3),
    )
    def store(self, key: bytes, size: int, tables: frozenset[str]) -> None:
        stored = self.cache.store(
            key, key * (size // len(key)), tables, self.now, since=self.cache.begin_fill()
        )
        if stored:
            self.tables[key] = tables

    @rule(key=st.binary(min_size=1, max_size=4))
    def lookup(self, key: bytes) -> None:
        self.cache.lookup(key, self.now)

    @rule(tables=st.none() | st.frozensets(st.sampled_from("abcd"), max_size=2))
    def invalidate(self, tables: frozenset[str] | None) -> None:
        self.cache.invalidate(tables)
        for key, read in list(self.tables.items()):
            if tables is None or read & tables:
                del self.tables[key]

    @rule(step=st.floats(0, 3))
    def tick(self, step: float) -> None:
        self.now += step

    @invariant()
    def within_bound(self) -> None:
        assert self.cache.used_bytes <= 6000

    @invariant()
    def invalidated_entries_are_gone(self) -> None:
        for key in list(self.cache._entries):
            assert key in self.tables  # nothing survives an invalidation of a table it read


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=300)), max_size=60))
def test_lookup_returns_exactly_what_was_stored(items: list[tuple[bytes, bytes]]) -> None:
    cache = _cache()
    expected: dict[bytes, bytes] = {}
    for key, payload in items:
        cache.store(key, payload, {"t"}, 0.0, since=0)
        expected[key] = payload
    for key, payload in expected.items():
        assert cache.lookup(key, 0.0) == payload
