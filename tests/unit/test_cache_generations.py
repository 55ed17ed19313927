"""The invalidation generations shared by a node's workers (pure: a bytearray stands in for the
shared mapping), and the stores of several simulated workers over one table: whatever the
interleaving of fills, writes and lookups, no worker serves an entry filled before an
acknowledged invalidation of one of its tables."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgbalancer.cache import ResultCache
from pgbalancer.cache.generations import EVERYTHING, SLOTS, Generations, buffer_size, slot_of


def table(workers: int) -> bytearray:
    return bytearray(buffer_size(workers))


def test_a_bump_by_any_worker_changes_the_stamps_of_its_tables_only() -> None:
    shared = table(3)
    one, two = Generations(shared, 3, 0), Generations(shared, 3, 2)
    stamp_t, stamp_u = one.stamp({"t"}), one.stamp({"u"})
    assert one.current(stamp_t) and two.current(stamp_t)
    two.bump({"t"})
    assert not one.current(stamp_t) and not two.current(stamp_t)
    assert one.current(stamp_u) == (slot_of("u") != slot_of("t"))
    assert two.stamp({"t"}) == one.stamp({"t"})  # every worker sums the same row


def test_everything_and_ddl_bumps() -> None:
    shared = table(2)
    one, two = Generations(shared, 2, 0), Generations(shared, 2, 1)
    stamps = [one.stamp(set()), one.stamp({"t"}), one.stamp({"a", "b"})]
    assert len(stamps[0]) == 2 and len(stamps[1]) == 4  # the everything slot is in every stamp
    epoch = one.relations_epoch()
    two.bump({"x"}, relations=True)  # DDL on x
    assert one.relations_epoch() == epoch + 1
    assert all(one.current(stamp) for stamp in stamps)  # x shares no slot with t, a or b
    two.bump(None)  # everything
    assert not any(one.current(stamp) for stamp in stamps)
    assert one.relations_epoch() == epoch + 2


def test_a_worker_writes_only_its_own_column() -> None:
    shared = table(4)
    Generations(shared, 4, 2).bump({"t"})
    Generations(shared, 4, 2).bump(None)
    words = memoryview(shared).cast("Q")
    written = {index for index, value in enumerate(words) if value}
    assert written and all(index % 4 == 2 for index in written)
    assert {index // 4 for index in written} == {slot_of("t"), EVERYTHING, SLOTS + 1}


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        Generations(table(2), 2, 2)
    with pytest.raises(ValueError, match="needs"):
        Generations(bytearray(16), 2, 0)


def test_slots_are_the_same_in_every_process() -> None:
    assert slot_of("cache_items") == slot_of("cache_items") < SLOTS
    assert slot_of("t") == zlib.crc32(b"t") % SLOTS  # not the per-process seeded hash()


def test_a_store_refuses_a_fill_that_another_worker_invalidated_and_drops_stale_entries() -> None:
    shared = table(2)
    mine, other = _store(shared, 0), _store(shared, 1)
    gens = mine.generations
    assert gens is not None and other.generations is not None
    stamp = mine.stamp({"t"})
    other.generations.bump({"t"})  # a write through the other worker, during the fill
    assert not mine.store(b"k", b"old", {"t"}, 0.0, since=mine.begin_fill(), stamp=stamp)
    assert mine.store(b"k", b"new", {"t"}, 0.0, since=mine.begin_fill(), stamp=mine.stamp({"t"}))
    assert mine.lookup(b"k", 0.0) == b"new"
    other.generations.bump(None)
    assert mine.lookup(b"k", 0.0) is None and len(mine) == 0
    assert mine.stats().invalidations == 1
    # without a stamp a store that shares generations cannot vouch for a fill
    assert not mine.store(b"k", b"x", {"t"}, 0.0, since=mine.begin_fill())


def _store(shared: bytearray, worker: int, workers: int = 2) -> ResultCache:
    store = ResultCache(1 << 20, max_entry_bytes=1 << 16, ttl=math.inf)
    store.generations = Generations(shared, workers, worker)
    return store


# ---- several workers, random interleavings

TABLES = ("a", "b")
QUERIES: tuple[frozenset[str], ...] = (frozenset({"a"}), frozenset({"a", "b"}), frozenset({"b"}), frozenset())
WRITES = (frozenset({"a"}), frozenset({"b"}), None)
WORKERS = 3  # at most; two workers take the hit path's unrolled comparison


@dataclass
class _Fill:
    worker: int
    query: int
    since: int
    stamp: tuple[int, ...] | None
    seen: dict[str, int]  # the versions the query saw (the oldest it may have seen: at its start)


@dataclass
class _World:
    workers: int
    shared: bytearray = field(default_factory=bytearray)
    stores: list[ResultCache] = field(default_factory=list)
    committed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    acknowledged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    fills: list[_Fill] = field(default_factory=list)
    # commits whose client has not been answered: (worker, tables, the versions it made)
    unacknowledged: list[tuple[int, frozenset[str] | None, dict[str, int]]] = field(default_factory=list)
    served: int = 0

    def __post_init__(self) -> None:
        self.shared = table(self.workers)
        self.stores = [_store(self.shared, worker, self.workers) for worker in range(self.workers)]


def _payload(seen: dict[str, int]) -> bytes:
    return json.dumps(seen, sort_keys=True).encode()


operation = st.one_of(
    st.tuples(st.just("begin"), st.integers(0, WORKERS - 1), st.integers(0, len(QUERIES) - 1)),
    st.tuples(st.just("finish"), st.integers(0, 3)),
    st.tuples(st.just("commit"), st.integers(0, WORKERS - 1), st.sampled_from(WRITES)),
    st.tuples(st.just("acknowledge"), st.integers(0, 3)),
    st.tuples(st.just("lookup"), st.integers(0, WORKERS - 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from((2, 3)), st.lists(operation, max_size=40))
# a worker's entry, then a write through another worker
@example(2, [("begin", 0, 0), ("finish", 0), ("commit", 1, WRITES[0]), ("acknowledge", 0), ("lookup", 0)])
@example(3, [("begin", 0, 0), ("finish", 0), ("commit", 1, WRITES[0]), ("acknowledge", 0), ("lookup", 0)])
# a write through another worker acknowledged while a fill was running
@example(2, [("begin", 0, 1), ("commit", 1, WRITES[1]), ("acknowledge", 0), ("finish", 0), ("lookup", 0)])
@example(3, [("begin", 0, 1), ("commit", 2, WRITES[1]), ("acknowledge", 0), ("finish", 0), ("lookup", 0)])
def test_no_worker_serves_an_entry_filled_before_an_acknowledged_invalidation(
    workers: int, operations: list[tuple[object, ...]]
) -> None:
    world = _World(workers)
    for op in operations:
        kind = op[0]
        if kind == "begin":  # the stamp is taken before the query goes to PostgreSQL
            worker, query = int(op[1]) % workers, int(op[2])  # type: ignore[call-overload]
            store = world.stores[worker]
            tables = QUERIES[query]
            seen = {t: world.committed[t] for t in tables}
            world.fills.append(_Fill(worker, query, store.begin_fill(), store.stamp(tables), seen))
        elif kind == "finish" and world.fills:
            fill = world.fills.pop(int(op[1]) % len(world.fills))  # type: ignore[call-overload]
            store = world.stores[fill.worker]
            key = bytes([fill.query])
            tables = QUERIES[fill.query]
            store.store(key, _payload(fill.seen), tables, 0.0, since=fill.since, stamp=fill.stamp)
        elif kind == "commit":  # PostgreSQL committed; the writer's worker has not invalidated yet
            worker, written = int(op[1]) % workers, op[2]  # type: ignore[call-overload]
            assert written is None or isinstance(written, frozenset)
            made = {}
            for t in TABLES if written is None else written:
                world.committed[t] += 1
                made[t] = world.committed[t]
            world.unacknowledged.append((worker, written, made))
        elif kind == "acknowledge" and world.unacknowledged:
            # The writer's worker invalidates (locally and shared), then its client sees the ack.
            worker, written, made = world.unacknowledged.pop(int(op[1]) % len(world.unacknowledged))  # type: ignore[call-overload]
            store = world.stores[worker]
            store.invalidate(written)
            assert store.generations is not None
            store.generations.bump(written)
            for t, version in made.items():  # from now on no reader may see older data of t
                world.acknowledged[t] = max(world.acknowledged[t], version)
        elif kind == "lookup":  # a client of this worker runs every query
            worker = int(op[1]) % workers  # type: ignore[call-overload]
            for query in range(len(QUERIES)):
                answer = world.stores[worker].lookup(bytes([query]), 0.0)
                if answer is not None:
                    world.served += 1
                    served: dict[str, int] = json.loads(answer)
                    for t, version in served.items():
                        assert version >= world.acknowledged[t], (worker, query, served, world.acknowledged)
