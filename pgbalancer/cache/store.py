"""The result cache store: entries by exact key, an index by table, LRU eviction, TTL, counters.

An entry is the exact bytes PostgreSQL sent for one request (RowDescription, DataRows,
CommandComplete, ReadyForQuery, and for the extended protocol ParseComplete/BindComplete),
stored under a key that holds everything the answer depends on (``keys.py``). Each entry
lists the tables it read; invalidating a table removes every entry that read it.

Memory: every entry is charged its real footprint (key and payload objects, the entry
record, its slot in the LRU and in the table index), measured with ``sys.getsizeof`` plus
constants for the container slots; tests check the charge against tracemalloc within 10%.
``limit_bytes`` is never exceeded after a ``store`` returns: least recently used entries go
first. Expired entries are dropped when looked up, and charged until then.

Fill races: a result that was being computed while an invalidation of one of its tables
happened may predate the write. ``begin_fill()`` hands out the invalidation generation at
the start of a request, and ``store`` refuses a result whose tables were invalidated since.

Several workers (``generations``): other workers' invalidations arrive through a shared table of
generations (``generations.py``). A fill then also carries a ``stamp`` taken before its query
ran; ``store`` refuses it and ``lookup`` drops it as soon as any worker bumped one of its slots.

Pure: no I/O, no clock (``now`` is passed in), no threads. It must never serve an entry
past its expiry or one whose table was invalidated after the request that filled it began.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from pgbalancer.cache.generations import Generations, Stamp

# The expiry time of an entry is a float object of its own.
_EXPIRY_SIZE = sys.getsizeof(0.5)
_MAX_TRACKED_TABLES = 100_000  # invalidation generations kept per table; beyond it: a global one


@dataclass(slots=True)
class _Entry:
    payload: bytes
    tables: frozenset[str]
    expires_at: float
    size: int
    hits: int = 0
    recipe: object = None  # how to run the request again (prefetch); opaque here
    stamp: Stamp | None = None  # the shared generations it was filled under (several workers)


_ENTRY_SIZE = sys.getsizeof(_Entry(b"", frozenset(), 0.0, 0))
_INT_SIZE = sys.getsizeof(1 << 20)


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    limit_bytes: int
    hits: int
    misses: int
    evictions: int
    invalidations: int  # entries removed by invalidation
    invalidation_events: int
    stores: int
    rejected: int  # results not stored: too big, a stale fill, or over the whole limit

    @property
    def hit_ratio(self) -> float:
        return hit_ratio(self.hits, self.misses)


def hit_ratio(hits: int, misses: int) -> float:
    """The share of lookups that hit; 0 before the first lookup."""
    looked_up = hits + misses
    return hits / looked_up if looked_up else 0.0


class ResultCache:
    """Cached results by key, bounded by ``limit_bytes`` (LRU), each for at most its TTL."""

    def __init__(self, limit_bytes: int, *, max_entry_bytes: int, ttl: float) -> None:
        self.limit_bytes = limit_bytes
        self.max_entry_bytes = max_entry_bytes
        self.ttl = ttl
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_table: dict[str, set[bytes]] = {}
        self._table_sets: dict[frozenset[str], list[object]] = {}  # interned: [the set, entries using it]
        self._bytes = 0  # entries' own objects
        self._index_bytes = 0  # the index's sets and the interned table sets
        self.generation = 0
        self._table_generation: dict[str, int] = {}
        self._all_generation = 0
        self.hits = self.misses = self.evictions = self.invalidations = 0
        self.invalidation_events = self.stores = self.rejected = 0
        self.hottest_dropped: list[object] = []
        # Several workers: what every worker invalidated (None: this process is the only one).
        self.generations: Generations | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        """Memory held: entries, their index, and the containers' own tables."""
        return (
            self._bytes
            + self._index_bytes
            + sys.getsizeof(self._entries)
            + sys.getsizeof(self._by_table)
            + sys.getsizeof(self._table_sets)
        )

    def lookup(self, key: bytes, now: float) -> bytes | None:
        """The cached answer for ``key``, if present and fresh (counted as a hit or a miss)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires_at <= now:
            self._remove(key, entry)
            self.misses += 1
            return None
        stamp = entry.stamp
        if stamp is not None and self.generations is not None and not self.generations.current(stamp):
            self._remove(key, entry)  # another worker invalidated one of its tables
            self.invalidations += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        entry.hits += 1
        return entry.payload

    def begin_fill(self) -> int:
        """The generation to pass to ``store`` for a request starting now."""
        return self.generation

    def stamp(self, tables: Iterable[str]) -> Stamp | None:
        """With several workers, the shared generations to pass to ``store`` for a request reading
        ``tables`` that starts now (before its query is sent); None otherwise."""
        return None if self.generations is None else self.generations.stamp(tables)

    def store(
        self,
        key: bytes,
        payload: bytes,
        tables: Iterable[str],
        now: float,
        *,
        since: int,
        ttl: float | None = None,
        recipe: object = None,
        recipe_size: int = 0,
        stamp: Stamp | None = None,
    ) -> bool:
        """Keep ``payload`` for ``key`` unless it is too big or an invalidation since ``since``
        (and, with several workers, since ``stamp``) touched its tables; evicts least recently
        used entries to stay within the limit."""
        tables = frozenset(tables)
        size = sys.getsizeof(key) + sys.getsizeof(payload) + _ENTRY_SIZE + _EXPIRY_SIZE + recipe_size
        if stamp is not None:
            size += _stamp_size(stamp)
        if (
            len(payload) > self.max_entry_bytes
            or size > self.limit_bytes
            or self._stale(tables, since)
            or self._stale_elsewhere(stamp)
        ):
            self.rejected += 1
            return False
        previous = self._entries.get(key)
        if previous is not None:
            self._remove(key, previous)
        lifetime = self.ttl if ttl is None else ttl
        if lifetime <= 0:
            self.rejected += 1
            return False
        self._evict_to(self.limit_bytes - size - _index_estimate(tables))
        if self.used_bytes + size > self.limit_bytes:
            self.rejected += 1
            return False
        tables = self._intern(tables)
        self._entries[key] = _Entry(payload, tables, now + lifetime, size, recipe=recipe, stamp=stamp)
        for table in tables:
            keys = self._by_table.get(table)
            if keys is None:
                keys = self._by_table[table] = set()
                self._index_bytes += sys.getsizeof(keys)
            before = sys.getsizeof(keys)
            keys.add(key)
            self._index_bytes += sys.getsizeof(keys) - before
        self._bytes += size
        self.stores += 1
        self._evict_to(self.limit_bytes)
        return True

    def _evict_to(self, target: int) -> None:
        while self.used_bytes > target and self._entries:
            old_key, old = next(iter(self._entries.items()))
            self._remove(old_key, old)
            self.evictions += 1

    def _intern(self, tables: frozenset[str]) -> frozenset[str]:
        """One shared set object per distinct table set (many entries read the same tables)."""
        held = self._table_sets.get(tables)
        if held is None:
            held = self._table_sets[tables] = [tables, 0]
            self._index_bytes += sys.getsizeof(tables) + sys.getsizeof(held)
        held[1] = int(held[1]) + 1  # type: ignore[call-overload]
        return held[0]  # type: ignore[return-value]

    def _release(self, tables: frozenset[str]) -> None:
        held = self._table_sets.get(tables)
        if held is None:
            return
        held[1] = int(held[1]) - 1  # type: ignore[call-overload]
        if held[1] == 0:
            del self._table_sets[tables]
            self._index_bytes -= sys.getsizeof(tables) + sys.getsizeof(held)

    def invalidate(self, tables: Iterable[str] | None, *, hottest: int = 0) -> int:
        """Drop the entries that read any of ``tables`` (None: every entry); how many went.
        ``hottest``: keep the recipes of that many of the most hit entries dropped, in
        ``hottest_dropped`` (for prefetch)."""
        self.generation += 1
        self.invalidation_events += 1
        self.hottest_dropped = []
        if hottest:
            self.hottest_dropped = self._hottest(tables, hottest)
        if tables is None:
            removed = len(self._entries)
            self._entries.clear()
            self._by_table.clear()
            self._table_sets.clear()
            self._table_generation.clear()
            self._bytes = self._index_bytes = 0
            self._all_generation = self.generation
            self.invalidations += removed
            return removed
        removed = 0
        for table in tables:
            if len(self._table_generation) >= _MAX_TRACKED_TABLES:
                self._table_generation.clear()
                self._all_generation = self.generation
            self._table_generation[table] = self.generation
            for key in list(self._by_table.get(table, ())):
                entry = self._entries.get(key)
                if entry is not None:
                    self._remove(key, entry)
                    removed += 1
        self.invalidations += removed
        return removed

    def _hottest(self, tables: Iterable[str] | None, count: int) -> list[object]:
        if tables is None:
            candidates = list(self._entries.values())
        else:
            keys = {key for table in tables for key in self._by_table.get(table, ())}
            candidates = [self._entries[key] for key in keys if key in self._entries]
        ranked = sorted((e for e in candidates if e.hits and e.recipe is not None), key=lambda e: -e.hits)
        return [entry.recipe for entry in ranked[:count]]

    def resize(self, limit_bytes: int, *, max_entry_bytes: int, ttl: float) -> None:
        """New limits (a reload): evicts down to the new bound at once."""
        self.limit_bytes, self.max_entry_bytes, self.ttl = limit_bytes, max_entry_bytes, ttl
        self._evict_to(self.limit_bytes)

    def stats(self) -> CacheStats:
        return CacheStats(
            entries=len(self._entries),
            bytes=self.used_bytes,
            limit_bytes=self.limit_bytes,
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            invalidations=self.invalidations,
            invalidation_events=self.invalidation_events,
            stores=self.stores,
            rejected=self.rejected,
        )

    def _stale(self, tables: frozenset[str], since: int) -> bool:
        if self._all_generation > since:
            return True
        generations = self._table_generation
        return any(generations.get(table, 0) > since for table in tables)

    def _stale_elsewhere(self, stamp: Stamp | None) -> bool:
        if self.generations is None:
            return False
        # Several workers: a fill without a stamp cannot tell what the others invalidated.
        return stamp is None or not self.generations.current(stamp)

    def _remove(self, key: bytes, entry: _Entry) -> None:
        del self._entries[key]
        self._bytes -= entry.size
        for table in entry.tables:
            keys = self._by_table.get(table)
            if keys is not None:
                keys.discard(key)  # a set never shrinks on discard: its size stays charged
                if not keys:
                    del self._by_table[table]
                    self._index_bytes -= sys.getsizeof(keys)
        self._release(entry.tables)


def _stamp_size(stamp: Stamp) -> int:
    """The tuple and the int objects of its own (CPython shares the ints up to 256)."""
    return sys.getsizeof(stamp) + _INT_SIZE * sum(1 for value in stamp if value > 256)


def _index_estimate(tables: frozenset[str]) -> int:
    """Room to leave for the index growth one new entry may cause."""
    return 64 * len(tables)
