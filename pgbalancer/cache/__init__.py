"""The query result cache (pure): the store with LRU, TTL and byte accounting, and its keys.

* ``ResultCache(limit_bytes, max_entry_bytes=..., ttl=...)``: ``lookup(key, now)``,
  ``begin_fill()`` then ``store(key, payload, tables, now, since=...)``,
  ``invalidate(tables | None)``, ``stats()``;
* ``session_key``, ``query_key``, ``extended_request``: exact keys of a request;
* which statements may be cached and what they invalidate comes from the shared classifier,
  ``pgbalancer.routing.cacheability``.

Nothing here does I/O, reads a clock or imports trio; time is always passed in.
"""

from pgbalancer.cache.keys import ExtendedRequest, clean_answer, extended_request, query_key, session_key
from pgbalancer.cache.store import CacheStats, ResultCache

__all__ = [
    "CacheStats",
    "ExtendedRequest",
    "ResultCache",
    "clean_answer",
    "extended_request",
    "query_key",
    "session_key",
]
