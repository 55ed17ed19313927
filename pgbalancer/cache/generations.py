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

Words are read and written in the machine's native format at 8-byte aligned offsets (one
aligned load or store each, never torn). Pure: no I/O, no clock, no mmap, no locks; it must
never let a worker write another worker's column.
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
_WORD: Final = struct.Struct("@Q")  # native: one aligned 8-byte load or store

Stamp = tuple[int, ...]  # flattened (slot, generation) pairs, EVERYTHING's among them


def buffer_size(workers: int) -> int:
    """Bytes of the shared table for ``workers`` columns."""
    return _ROWS * workers * _WORD.size


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
        self._buffer = buffer
        self.workers = workers
        self.worker = worker
        self._row = struct.Struct(f"@{workers}Q")
        self._row_bytes = self._row.size

    def generation(self, slot: int) -> int:
        return sum(self._row.unpack_from(self._buffer, slot * self._row_bytes))

    def stamp(self, tables: Iterable[str]) -> Stamp:
        """The generations a fill reading ``tables`` starts under (take it before the query runs)."""
        flat: list[int] = []
        for slot in sorted({slot_of(table) for table in tables} | {EVERYTHING}):
            flat += (slot, self.generation(slot))
        return tuple(flat)

    def current(self, stamp: Stamp) -> bool:
        """No worker invalidated any of the stamp's slots since it was taken."""
        unpack, buffer, row = self._row.unpack_from, self._buffer, self._row_bytes
        for index in range(0, len(stamp), 2):
            if sum(unpack(buffer, stamp[index] * row)) != stamp[index + 1]:
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
        for slot in slots:
            offset = (slot * self.workers + self.worker) * _WORD.size
            _WORD.pack_into(self._buffer, offset, _WORD.unpack_from(self._buffer, offset)[0] + 1)

    def relations_epoch(self) -> int:
        """Changes whenever any worker ran DDL or invalidated everything."""
        return self.generation(RELATIONS)
