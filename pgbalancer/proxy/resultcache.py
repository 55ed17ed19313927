"""The result cache's shell: one per worker process, shared by every client session it serves.

It holds the pure store (``pgbalancer.cache``), what the catalog said about relations, and the
way invalidations leave this process: applied here at once, bumped in the generations shared
with the node's other workers (``workers > 1``: they stop serving what the write changed before
its client is answered), published on MQTT (``pgbalancer/cache/invalidate``, informational),
and — with a watchdog — committed through Raft and applied by every peer before the write's
answer reaches its client (the barrier is described in docs/cache.md). Sessions call it from
the relay (txrelay.py):

* ``lookup(key)`` for a cacheable read; ``None`` also while this node is out of its lease;
* ``relations_known`` / ``learn_relations`` before a fill or a write names unknown relations;
* ``begin_fill`` / ``finish_fill`` around a miss it may store;
* ``await invalidate(tables)`` when a write's transaction ends, before the client sees its
  ReadyForQuery.

Per client, ``ClientCache`` keys requests: ``plan_raw`` by the exact bytes of a request that
arrived alone (what they mean is remembered node-wide, the session's part of the key only
changes with the session's settings), ``plan`` by framed messages otherwise.

It must never: serve an entry without a valid lease when a replicator is configured; store a
result whose table was invalidated since the request started; answer bytes by what they
meant under other session settings or other client statement definitions; let a failing catalog query
or replication end a client session (failures make it cache less, never serve stale).
"""

from __future__ import annotations

import enum
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from pgbalancer.cache import ResultCache, clean_answer, extended_request, query_key, session_key
from pgbalancer.cache.generations import Generations, Stamp
from pgbalancer.cache.relations import (
    MAX_NAMES_PER_QUERY,
    UNKNOWN_RELATION,
    RelationFacts,
    parse_relation_rows,
    relations_query,
)
from pgbalancer.config import Config
from pgbalancer.pgwire.framing import Message
from pgbalancer.proxy.backend import BackendUnavailable, ServerConnection, ServerCredentials, ServerError
from pgbalancer.proxy.netio import PeerClosed
from pgbalancer.proxy.pool import ServerPool
from pgbalancer.proxy.prepared import ClientStatements, PreparedStatement, server_name_for
from pgbalancer.proxy.sessionstate import ClientSessionState
from pgbalancer.routing.cacheability import CacheFacts, cache_facts
from pgbalancer.routing.classify import FunctionPolicy

log = logging.getLogger(__name__)

Tables = frozenset[str] | None  # None: every table
# Rides along in an invalidation's tables when DDL named them: every node then asks the catalog
# about them again. No table has this name (identifiers cannot hold NUL).
DDL_MARKER = "\x00ddl"


_FACTS_MEMO_SIZE = 8192
RAW_REQUEST_MAX_BYTES = 8192  # longer requests are framed and keyed each time (hashing them costs too)
_PREFETCH_QUEUE = 256
_RECIPE_OVERHEAD = 64  # the recipe record; its session context is shared by a session's entries
# A writer waits this much beyond the hit lease: bounds clock-rate drift between nodes (1/25 of
# the lease here) and the scheduling delay between a barrier's start and its Raft append.
_LEASE_MARGIN = 0.01


class InvalidationReplicator(Protocol):
    """What the cache needs of consensus.ClusterStore (the watchdog's contract)."""

    async def replicate_invalidation(self, tables: frozenset[str] | None) -> int: ...

    def lease_valid(self, now: float) -> bool: ...

    def add_invalidation_listener(
        self, callback: Callable[[int, frozenset[str] | None], None]
    ) -> Callable[[], None]: ...


class PrimaryPools(Protocol):
    """What prefetch needs of the proxy: a pooled server connection to the primary."""

    async def acquire_primary(
        self, database: str, credentials: ServerCredentials
    ) -> tuple[ServerPool, ServerConnection]: ...


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to run a cached request again: its exact bytes, under its session's settings."""

    key: bytes
    request: bytes
    reads: frozenset[str]
    ttl: float | None
    database: str
    credentials: ServerCredentials
    settings_sql: str
    reset_query: str


class CacheService:
    """The node's result cache and its invalidation paths."""

    def __init__(self, config: Config) -> None:
        self.store = ResultCache(
            config.memqcache_total_size,
            max_entry_bytes=config.memqcache_maxcache,
            ttl=_ttl(config.memqcache_expire),
        )
        self._exclude = _patterns(config.memqcache_exclude_tables)
        self._relations: dict[tuple[str, str], RelationFacts] = {}
        self.replicator: InvalidationReplicator | None = None
        self.invalidation_timeout = config.memqcache_invalidation_timeout
        self.hit_lease = config.memqcache_hit_lease
        self._barrier_at = -math.inf  # start (trio time) of the newest barrier committed and applied here
        self.barriers = 0
        self.barrier_failures = 0
        self.on_invalidated: Callable[[Tables], None] | None = None  # MQTT: informational
        self.replication_failures = 0
        # (statement text as sent, quoting, function policy) -> its cache facts: a hit skips
        # decoding and classifying. Cleared on reload.
        self.facts_memo: dict[tuple[bytes, bool, int], CacheFacts] = {}
        # (quoting, id of the function policy) -> a request's exact bytes -> what keys it (the
        # key after the session's part, its cache facts): a hit needs no framing or parsing.
        self._request_tables: dict[tuple[bool, int], dict[bytes, _Request]] = {}
        self.prefetch = config.memqcache_prefetch
        self.prefetch_count = config.memqcache_prefetch_count
        self.prefetch_rate = config.memqcache_prefetch_rate
        self._prefetch_send, self._prefetch_receive = trio.open_memory_channel[Recipe](_PREFETCH_QUEUE)
        self.prefetched = self.prefetch_dropped = self.prefetch_failures = 0
        self.lease_misses = 0  # lookups refused because this node was out of its lease
        self.workers = 1  # worker processes sharing memqcache_total_size (share_with_workers)
        self.generations: Generations | None = None
        self._relations_epoch = 0  # the shared relations epoch _relations holds facts of

    def share_with_workers(self, generations: Generations) -> None:
        """This process is one of ``generations.workers`` workers of the node: take a share of
        memqcache_total_size, and invalidate across the workers through the shared generations."""
        self.workers = generations.workers
        self.generations = self.store.generations = generations
        self._relations_epoch = generations.relations_epoch()
        self.store.resize(
            self.store.limit_bytes // self.workers,
            max_entry_bytes=self.store.max_entry_bytes,
            ttl=self.store.ttl,
        )

    def apply_config(self, config: Config) -> None:
        self.store.resize(
            config.memqcache_total_size // self.workers,
            max_entry_bytes=config.memqcache_maxcache,
            ttl=_ttl(config.memqcache_expire),
        )
        self._exclude = _patterns(config.memqcache_exclude_tables)
        self.invalidation_timeout = config.memqcache_invalidation_timeout
        self.hit_lease = config.memqcache_hit_lease
        self.facts_memo.clear()
        for table in self._request_tables.values():
            table.clear()  # clients hold them: emptied in place
        self.prefetch = config.memqcache_prefetch
        self.prefetch_count = config.memqcache_prefetch_count
        self.prefetch_rate = config.memqcache_prefetch_rate

    def request_table(self, standard: bool, policy: FunctionPolicy) -> dict[bytes, _Request]:
        """The planned requests of every client with this quoting (standard_conforming_strings)
        and function policy."""
        return self._request_tables.setdefault((standard, id(policy)), {})

    # ---- the cluster (Raft): see docs/cache.md for why this barrier makes the guarantee hold

    def attach_cluster(self, replicator: InvalidationReplicator) -> None:
        """Invalidate through Raft from now on: apply every node's invalidations here, and serve
        hits only under a fresh barrier (``run`` keeps one)."""
        self.replicator = replicator
        replicator.add_invalidation_listener(self._applied_in_cluster)

    def _applied_in_cluster(self, generation: int, tables: frozenset[str] | None) -> None:
        if tables is None or tables:  # an empty set is a barrier: nothing to drop
            self.apply(tables)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit a barrier (an empty invalidation) through Raft every quarter of
        memqcache_hit_lease. Once it is applied here, so is every invalidation committed before
        it started; hits are served only while the newest such start is within the lease."""
        task_status.started()
        replicator = self.replicator
        if replicator is None:
            return
        while True:
            started = trio.current_time()
            with trio.move_on_after(self.hit_lease):
                try:
                    await replicator.replicate_invalidation(frozenset())
                except Exception as exc:  # no quorum or no leader: hits stop when the lease runs out
                    self.barrier_failures += 1
                    log.debug("result cache: barrier not committed: %s", exc)
                else:
                    self._barrier_at = max(self._barrier_at, started)
                    self.barriers += 1
            await trio.sleep(max(0.0, self.hit_lease / 4 - (trio.current_time() - started)))

    # ---- serving

    def lookup(self, key: bytes) -> bytes | None:
        now = trio.current_time()
        if not self._may_serve(now):
            self.lease_misses += 1
            return None
        return self.store.lookup(key, now)

    def _may_serve(self, now: float) -> bool:
        replicator = self.replicator
        if replicator is None:
            return True
        return now - self._barrier_at <= self.hit_lease and replicator.lease_valid(now)

    # ---- filling

    def relations_known(self, database: str, names: Iterable[str]) -> list[str]:
        """The names whose facts this node has not asked the catalog about yet."""
        generations = self.generations
        if generations is not None:  # another worker ran DDL: forget what the catalog said
            epoch = generations.relations_epoch()
            if epoch != self._relations_epoch:
                self._relations.clear()
                self._relations_epoch = epoch
        return [name for name in names if (database, name) not in self._relations]

    def reads_cacheable(self, database: str, names: Iterable[str]) -> bool:
        for name in names:
            if self._exclude is not None and self._exclude.fullmatch(name):
                return False
            if not self._relations.get((database, name), UNKNOWN_RELATION).cacheable:
                return False
        return True

    async def learn_relations(self, server: ServerConnection, database: str, names: list[str]) -> None:
        """Ask the catalog (one round trip on an idle server) about relations not known yet."""
        names = names[:MAX_NAMES_PER_QUERY]
        generation = self.store.generation
        epoch = self._shared_relations_epoch()
        try:
            rows = await server.fetch_rows(relations_query(names))
        except (ServerError, BackendUnavailable, PeerClosed) as exc:  # cache less this time; a broken
            log.debug("result cache: catalog lookup failed: %s", exc)  # server fails the next send
            return
        if self.store.generation != generation or self._shared_relations_epoch() != epoch:
            return  # DDL (here or in another worker) may have raced the lookup: ask again next time
        if epoch != self._relations_epoch:
            return  # facts of another epoch than those held: relations_known clears them first
        for name, facts in parse_relation_rows(names, rows).items():
            self._relations[(database, name)] = facts

    def _shared_relations_epoch(self) -> int:
        return self._relations_epoch if self.generations is None else self.generations.relations_epoch()

    def begin_fill(self) -> int:
        return self.store.begin_fill()

    def stamp(self, reads: Iterable[str]) -> Stamp | None:
        """The shared generations (several workers) a fill reading ``reads`` starts under; take
        it before the request goes to PostgreSQL."""
        return self.store.stamp(reads)

    def finish_fill(
        self,
        key: bytes,
        payload: bytes,
        tables: frozenset[str],
        since: int,
        ttl: float | None,
        recipe: Recipe | None = None,
        stamp: Stamp | None = None,
    ) -> bool:
        """Store a captured answer if it is a clean, complete one (no error, notice or status change)."""
        if not clean_answer(payload):
            self.store.rejected += 1
            return False
        recipe_size = 0 if recipe is None else sys.getsizeof(recipe.request) + _RECIPE_OVERHEAD
        return self.store.store(
            key,
            payload,
            tables,
            trio.current_time(),
            since=since,
            ttl=ttl,
            recipe=recipe,
            recipe_size=recipe_size,
            stamp=stamp,
        )

    # ---- invalidating

    def write_effect(self, database: str, tables: Tables) -> Tables:
        """What a write naming ``tables`` may change, with what the catalog said (triggers, rules,
        views: everything; foreign keys with actions: the referencing tables too)."""
        if tables is None:
            return None
        reached: set[str] = set()
        for name in tables:
            if name == DDL_MARKER:
                reached.add(name)
                continue
            facts = self._relations.get((database, name))
            if facts is None or facts.write_effect is None:
                return None
            reached |= facts.write_effect
        return frozenset(reached)

    async def invalidate(self, tables: Tables) -> int:
        """A write's transaction ended (or the API asked): invalidate here, publish, and (with
        Raft) wait until every node applied it, within memqcache_invalidation_timeout. Returns
        how many entries this node dropped."""
        removed = self.apply(tables)
        if self.on_invalidated is not None:
            self.on_invalidated(None if tables is None else tables - {DDL_MARKER})
        replicator = self.replicator
        if replicator is None:
            return removed
        with trio.move_on_after(self.invalidation_timeout) as scope:
            try:
                await replicator.replicate_invalidation(tables)
            except Exception as exc:  # no quorum, leader lost: never end the session over it
                log.warning("result cache: invalidation not replicated: %s", exc)
                self._replication_failed()
                return removed
            # Committed and applied here. A node may serve a hit only under a barrier that
            # started within the hit lease; after this wait, any such barrier started after
            # the commit, so it sits after this invalidation in the log, so it was applied.
            await trio.sleep(self.hit_lease + _LEASE_MARGIN)
        if scope.cancelled_caught:
            log.warning(
                "result cache: invalidation not replicated within %ss (memqcache_invalidation_timeout)",
                self.invalidation_timeout,
            )
            self._replication_failed()
        return removed

    def _replication_failed(self) -> None:
        # Other nodes may not have the invalidation; they stop serving when their lease runs out.
        # This node keeps nothing it cannot vouch for.
        self.replication_failures += 1
        self.apply(None)

    def apply(self, tables: Tables) -> int:
        """Apply an invalidation (this node's write, a peer's through Raft, or the API): here, and
        for the node's other workers through the shared generations."""
        generations = self.generations
        if generations is not None:
            ddl = tables is not None and DDL_MARKER in tables
            generations.bump(None if tables is None else tables - {DDL_MARKER}, relations=ddl)
        if tables is None:
            self._relations.clear()
        elif DDL_MARKER in tables:  # a DML write leaves what the catalog said as it was
            for key in [key for key in self._relations if key[1] in tables]:
                del self._relations[key]
            tables = tables - {DDL_MARKER}
        removed = self.store.invalidate(tables, hottest=self.prefetch_count if self.prefetch else 0)
        for recipe in self.store.hottest_dropped:
            if isinstance(recipe, Recipe):
                try:
                    self._prefetch_send.send_nowait(recipe)
                except trio.WouldBlock:
                    self.prefetch_dropped += 1
        return removed

    # ---- prefetch (memqcache_prefetch)

    async def run_prefetch(
        self, proxy: PrimaryPools, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Re-run dropped hot queries on the primary, at most memqcache_prefetch_rate a second
        (a token bucket of memqcache_prefetch_count); what the rate does not allow is dropped."""
        task_status.started()
        tokens, refilled_at = float(self.prefetch_count), trio.current_time()
        async for recipe in self._prefetch_receive:
            now = trio.current_time()
            tokens = min(float(self.prefetch_count), tokens + (now - refilled_at) * self.prefetch_rate)
            refilled_at = now
            if not self.prefetch or tokens < 1:
                self.prefetch_dropped += 1
                continue
            tokens -= 1
            try:
                await self._prefetch_one(proxy, recipe)
            except Exception as exc:  # a background warm-up never takes the node down
                self.prefetch_failures += 1
                log.debug("result cache: prefetch failed: %s", exc)

    async def _prefetch_one(self, proxy: PrimaryPools, recipe: Recipe) -> None:
        since, stamp = self.store.begin_fill(), self.stamp(recipe.reads)
        pool, server = await proxy.acquire_primary(recipe.database, recipe.credentials)
        reusable = False
        try:
            if recipe.settings_sql:
                await server.run_query(recipe.settings_sql)
            await server.socket.send_all(recipe.request)
            answer = bytearray()
            while True:
                message = await server.channel.read_message()
                answer += message.encode()
                if message.type == b"Z" or len(answer) > self.store.max_entry_bytes:
                    break
            reusable = message.type == b"Z"
            if reusable:
                await server.reset(rollback=message.body != b"I", reset_query=recipe.reset_query)
        finally:
            pool.release(server, reusable=reusable)
        if self.finish_fill(recipe.key, bytes(answer), recipe.reads, since, recipe.ttl, recipe, stamp):
            self.prefetched += 1


def _ttl(expire: int) -> float:
    return float(expire) if expire > 0 else math.inf


def _patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    parts = [f"(?:{p})" for p in patterns if p.strip()]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


class Unknown(enum.Enum):
    """``plan_raw``: these bytes were not planned (under these settings); frame and plan them."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


@dataclass(frozen=True, slots=True)
class _Request:
    """What a request's bytes mean to the cache, for any client with the same settings."""

    suffix: bytes  # the key after the session's part (keys.py)
    facts: CacheFacts | None  # None: not cacheable
    parses: tuple[tuple[bytes, bytes], ...] = ()  # named Parses it holds: (client name, definition)
    # The client statements it uses and their definitions then (None: not defined); a client whose
    # statements of these names differ must key it again.
    depends: tuple[tuple[bytes, bytes | None], ...] = ()


class _Recorded(Mapping[bytes, bytes]):
    """A client's statement names -> definitions, read in place, noting each name asked for."""

    def __init__(self, statements: ClientStatements) -> None:
        self._by_name = statements.by_name
        self._asked: dict[bytes, bytes | None] = {}

    def __getitem__(self, name: bytes) -> bytes:
        statement = self._by_name.get(name)
        self._asked[name] = None if statement is None else statement.definition
        if statement is None:
            raise KeyError(name)
        return statement.definition

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def depends(self) -> tuple[tuple[bytes, bytes | None], ...]:
        return tuple(self._asked.items())


@dataclass(slots=True)
class CachePlan:
    """A cacheable read request: its key, what it reads, and the answer if it is cached."""

    key: bytes
    reads: frozenset[str]
    ttl: float | None
    hit: bytes | None
    parses: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class _Fill:
    plan: CachePlan
    since: int
    limit: int
    recipe: Recipe | None = None
    stamp: Stamp | None = None
    captured: bytearray = field(default_factory=bytearray)


def _names_nothing(message: Message) -> bool:
    """Parse, Bind and Describe of the unnamed statement and portal only."""
    body = message.body
    if message.type == b"P":
        return body[:1] == b"\x00"
    if message.type == b"B":
        return body[:2] == b"\x00\x00"
    if message.type == b"D":
        return body[1:2] == b"\x00"
    return True


class ClientCache:
    """One client's use of the node's cache: keys its requests, captures the answers to store,
    and collects the tables its writes reach until its transaction ends."""

    def __init__(
        self,
        service: CacheService,
        database: str,
        user: str,
        state: ClientSessionState,
        statements: ClientStatements,
        policy: FunctionPolicy,
        credentials: ServerCredentials | None = None,
        reset_query: str = "DISCARD ALL",
    ) -> None:
        self.service = service
        self.credentials = credentials
        self.reset_query = reset_query
        self.database = database
        self.user = user
        self.state = state
        self.statements = statements
        self.policy = policy
        self.fill: _Fill | None = None
        self.pending: set[str] | None = set()  # tables written in the open transaction; None = all
        self.has_pending = False
        self._version = -1  # the settings version the session key and request table are for
        self._session_key: bytes | None = None
        self._request_table: dict[bytes, _Request] = {}
        self._unnamed_sql = b""  # the text of the last unnamed Parse (a later Bind may run it)

    # ---- reads

    def plan_raw(self, raw: bytes) -> CachePlan | Unknown | None:
        """The looked-up plan of a request received as exactly ``raw``, before any framing, if
        these bytes were planned before under this client's settings; None when they are not
        cacheable; UNKNOWN when they must be framed and planned (``plan``)."""
        request = self._requests().get(raw)
        if request is None:
            return UNKNOWN
        by_name = self.statements.by_name
        for name, definition in request.depends:
            statement = by_name.get(name)
            if (None if statement is None else statement.definition) != definition:
                return UNKNOWN  # the client's statement of that name changed: key it again
        return self._looked_up(request)

    def plan(self, batch: Sequence[Message], raw: bytes | None = None) -> CachePlan | None:
        """The cache plan of a batch that is one cacheable read, looked up; None otherwise.
        ``raw``: the batch's exact bytes, when it was received alone; what the planning found
        is remembered under them so that ``plan_raw`` answers them next time."""
        requests = self._requests()
        request = self._request(batch)
        if request is None:
            return None
        if raw is not None and len(raw) <= RAW_REQUEST_MAX_BYTES:
            if len(requests) >= _FACTS_MEMO_SIZE:
                requests.clear()
            requests[raw] = request
        return self._looked_up(request)

    def _looked_up(self, request: _Request) -> CachePlan | None:
        facts = request.facts
        if facts is None:
            return None
        assert self._session_key is not None  # set with the request table (_requests)
        key = self._session_key + request.suffix
        return CachePlan(key, facts.reads, facts.ttl, self.service.lookup(key), request.parses)

    def _request(self, batch: Sequence[Message]) -> _Request | None:
        """What keys a batch (its part after the session's), or None: not a one-read batch."""
        first = batch[0]
        if len(batch) == 1 and first.type == b"Q":
            return _Request(query_key(b"", first.body), self._cacheable(first.body[:-1]))
        if batch[-1].type == b"S" and first.type in (b"P", b"B"):
            used = _Recorded(self.statements)
            extended = extended_request(b"", batch, used)
            if extended is None:
                return _Request(b"", None, depends=used.depends())
            return _Request(extended.key, self._cacheable(extended.sql), extended.parses, used.depends())
        return None

    def _cacheable(self, sql: bytes) -> CacheFacts | None:
        facts = self._facts(sql)
        return facts if facts.cacheable else None

    def answer(self, plan: CachePlan) -> bytes:
        """The cached bytes for a hit; the statements it parsed now exist for this client."""
        for name, definition in plan.parses:
            self.statements.by_name[name] = PreparedStatement(server_name_for(definition), definition)
        assert plan.hit is not None
        return plan.hit

    def _requests(self) -> dict[bytes, _Request]:
        """The node's table of planned requests for this client's quoting and function policy,
        with this client's session key brought up to date (both change only with its settings)."""
        version = self.state.version
        if version != self._version:
            settings = {**self.state.reported, **self.state.startup, **self.state.session}
            self._session_key = session_key(self.database, self.user, settings)
            self._request_table = self.service.request_table(self._standard(), self.policy)
            self._version = version
        return self._request_table

    def _standard(self) -> bool:
        return self.state.reported.get("standard_conforming_strings", "on") == "on"

    def _facts(self, sql: bytes) -> CacheFacts:
        standard = self._standard()
        memo = self.service.facts_memo
        memo_key = (sql, standard, id(self.policy))
        known = memo.get(memo_key)
        if known is None:
            known = cache_facts(sql, policy=self.policy, standard_conforming_strings=standard)
            if len(memo) >= _FACTS_MEMO_SIZE:
                memo.clear()
            memo[memo_key] = known
        return known

    # ---- before a batch goes to a server

    async def prepare(
        self,
        plan: CachePlan | None,
        batch: Sequence[Message],
        server: ServerConnection,
        *,
        server_idle: bool,
        from_primary: bool,
    ) -> None:
        """Learn unknown relations (one catalog query, if the server is idle), note the tables
        this batch writes, and start capturing the answer of a read that may be stored."""
        written = self._written(batch)
        service = self.service
        unknown = service.relations_known(self.database, (*(plan.reads if plan else ()), *(written or ())))
        if unknown and server_idle:
            await service.learn_relations(server, self.database, unknown)
        if written is None or written:
            self._add_pending(service.write_effect(self.database, written))
        self.fill = None
        if plan is not None and from_primary and service.reads_cacheable(self.database, plan.reads):
            recipe = self._recipe(plan, batch) if service.prefetch else None
            since, stamp = service.begin_fill(), service.stamp(plan.reads)
            self.fill = _Fill(plan, since, service.store.max_entry_bytes, recipe, stamp)

    def _recipe(self, plan: CachePlan, batch: Sequence[Message]) -> Recipe | None:
        """A recipe for a self-contained request (no statement names: nothing to prepare first)."""
        if self.credentials is None or not all(_names_nothing(message) for message in batch):
            return None
        settings_sql, _ = self.state.statements_for({})
        return Recipe(
            plan.key,
            b"".join(message.encode() for message in batch),
            plan.reads,
            plan.ttl,
            self.database,
            self.credentials,
            settings_sql,
            self.reset_query,
        )

    def _written(self, batch: Sequence[Message]) -> Tables:
        """The tables the statements executed by this batch name as written (None: any table)."""
        written: set[str] = set()
        parsed: dict[bytes, bytes] = {}
        for message in batch:
            kind = message.type
            if kind == b"Q":
                sql = message.body[:-1]
            elif kind == b"P":
                name, _, rest = message.body.partition(b"\x00")
                text = rest.partition(b"\x00")[0]
                if name:
                    parsed[name] = text
                else:
                    self._unnamed_sql = text
                continue
            elif kind == b"B":
                name = message.body[message.body.find(b"\x00") + 1 :].partition(b"\x00")[0]
                if not name:
                    sql = self._unnamed_sql
                elif name in parsed:
                    sql = parsed[name]
                elif name in self.statements.by_name:
                    sql = self.statements.by_name[name].definition.partition(b"\x00")[0]
                else:
                    return None  # a statement pgbalancer never saw: it may write anything
            elif kind == b"F":
                return None  # a function call by OID
            else:
                continue
            facts = self._facts(sql)
            if facts.invalidates is None:
                return None
            written |= facts.invalidates
            if facts.ddl:
                written.add(DDL_MARKER)
        return frozenset(written)

    def _add_pending(self, tables: Tables) -> None:
        self.has_pending = True
        if tables is None or self.pending is None:
            self.pending = None
        else:
            self.pending |= tables

    # ---- answers coming back

    def capture(self, data: bytes | memoryview) -> None:
        fill = self.fill
        assert fill is not None
        if len(fill.captured) + len(data) > fill.limit:
            self.fill = None  # too big to cache: stop collecting, the answer streams on
            self.service.store.rejected += 1
            return
        fill.captured += data

    def finish_fill(self) -> None:
        fill, self.fill = self.fill, None
        if fill is not None:
            plan = fill.plan
            self.service.finish_fill(
                plan.key, bytes(fill.captured), plan.reads, fill.since, plan.ttl, fill.recipe, fill.stamp
            )

    async def flush_writes(self, *, keep: bool = False) -> None:
        """A transaction that wrote ended (committed or not): invalidate before its client sees
        the ReadyForQuery. ``keep``: later requests are still in flight, so what they write is
        invalidated again when they end."""
        tables = None if self.pending is None else frozenset(self.pending)
        if not keep:
            self.pending, self.has_pending = set(), False
        await self.service.invalidate(tables)
