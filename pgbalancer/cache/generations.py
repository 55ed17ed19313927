"""Invalidation generations shared by the worker processes of one node (pure: arithmetic on a buffer).

With ``workers > 1`` every worker keeps its own result store, so a write committed through one
worker must stop every other worker from serving what the write changed, before the writer's
client sees ReadyForQuery. The workers share one table of 64-bit counters (the supervisor maps
it before forking; this module only reads and writes the buffer it is given):

* a row per slot: ``SLOTS`` hashed table slots, then ``EVERYTHING`` (bumped by an invalidation
  of every table, and part of every stamp) and ``RELATIONS`` (bumped by DDL: what the catalog
  said about relations may have changed);
* a column per worker: worker ``w`` only ever writes the words of its own column, so there is a
  single writer per word and no lock. Slot ``s``'s generation is the sum of its row, which only
  grows, and grows with every bump by any worker.

A fill takes a ``stamp`` (the generations of its tables' slots and of ``EVERYTHING``) *before*
its query goes to PostgreSQL; a lookup serves the entry only while ``current(stamp)`` holds; a
write's invalidation ``bump``s the writer's column before its client is answered. docs/cache.md
walks through the interleavings. Two tables hashed to one slot only cost extra misses.

Words are read and written in the machine's native format at 8-byte aligned offsets (a
memoryview of unsigned 64-bit items: one aligned load or store each, never torn). Pure: no I/O,
no clock, no mmap, no locks; it must never let a worker write another worker's column.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import Final

SLOTS: Final = 4096
EVERYTHING: Final = SLOTS  # the row bumped by an invalidation of every table
RELATIONS: Final = SLOTS + 1  # the row bumped by DDL
_ROWS: Final = SLOTS + 2
_WORD_BYTES: Final = struct.calcsize("@Q")

# Flattened (index of the row's first word, generation) pairs, one per slot, EVERYTHING's among
# them: a hit compares them without any arithmetic on slots.
Stamp = tuple[int, ...]


def buffer_size(workers: int) -> int:
    """Bytes of the shared table for ``workers`` columns."""
    return _ROWS * workers * _WORD_BYTES


def slot_of(table: str) -> int:
    """The slot of a table name: the same in every process (no per-process hash seed)."""
    return zlib.crc32(table.encode("utf-8", "surrogatepass")) % SLOTS


class Generations:
    """One worker's view of the shared table: reads every column, writes only ``worker``'s."""

    def __init__(self, buffer: bytearray | memoryview, workers: int, worker: int) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
        if len(buffer) < buffer_size(workers):
            raise ValueError(f"the shared table needs {buffer_size(workers)} bytes, got {len(buffer)}")
        self._bytes = memoryview(buffer).cast("B")
        self._words = self._bytes.cast("Q")  # native, aligned 64-bit words
        self._row = struct.Struct(f"@{workers}Q")
        self.workers = workers
        self.worker = worker

    def generation(self, slot: int) -> int:
        return sum(self._row.unpack_from(self._bytes, slot * self._row.size))

    def stamp(self, tables: Iterable[str]) -> Stamp:
        """The generations a fill reading ``tables`` starts under (take it before the query runs)."""
        flat: list[int] = []
        for slot in sorted({slot_of(table) for table in tables} | {EVERYTHING}):
            flat += (slot * self.workers, self.generation(slot))
        return tuple(flat)

    def current(self, stamp: Stamp) -> bool:
        """No worker invalidated any of the stamp's slots since it was taken (the hit path)."""
        pairs = iter(stamp)
        if self.workers == 2:  # the common shape: two loads per slot, nothing allocated
            words = self._words
            for first in pairs:  # noqa: SIM110 - a generator in all() costs more on the hit path
                if words[first] + words[first + 1] != next(pairs):
                    return False
            return True
        unpack, data = self._row.unpack_from, self._bytes
        for first in pairs:  # noqa: SIM110 - as above
            if sum(unpack(data, first * _WORD_BYTES)) != next(pairs):
                return False
        return True

    def bump(self, tables: Iterable[str] | None, *, relations: bool = False) -> None:
        """Invalidate ``tables`` (None: every table, and what is known of relations) for every
        worker; ``relations``: DDL, so every worker forgets what the catalog said."""
        if tables is None:
            slots = {EVERYTHING, RELATIONS}
        else:
            slots = {slot_of(table) for table in tables}
            if relations:
                slots.add(RELATIONS)
        words = self._words
        for slot in slots:
            own = slot * self.workers + self.worker
            words[own] = words[own] + 1

    def relations_epoch(self) -> int:
        """Changes whenever any worker ran DDL or invalidated everything."""
        return self.generation(RELATIONS)
