"""What the result cache may do with a statement: cache its result, and which tables it invalidates.

``cache_facts(sql)`` reads a Query text (or a Parse's) with the classifier's own lexer and
statement splitter (classify.py), so there is one SQL reader in pgbalancer, and answers:

* whether the result may be cached: one plain read (SELECT / WITH / VALUES / TABLE) that
  calls only functions known to be immutable, uses no session- or time-dependent keyword
  (``current_user``, ``current_timestamp``, …), reads no system catalog or ``pg_temp``
  relation, and carries no ``/* pgbalancer: nocache */`` hint;
* the relations it reads (bare lower-case names: schema-qualified names are reduced to the
  name, so invalidating ``t`` covers ``public.t`` and ``s.t`` — more invalidation, never less);
* what it invalidates when it runs: nothing (reads, settings, transaction control), a set of
  tables (DML, TRUNCATE, COPY FROM, ALTER/DROP/CREATE TABLE, REFRESH MATERIALIZED VIEW), or
  everything (``None``: DDL on targets it cannot name, GRANT/REVOKE, ALTER ROLE, CALL, DO, a
  function that may write, SQL EXECUTE, anything it cannot read);
* a ``/* pgbalancer: cache ttl=N */`` hint.

Whether a named relation is a plain table (not a view, a temporary table, an inheritance
parent or child) needs the catalog: the proxy asks PostgreSQL and caches the answer.

It must never answer "cacheable" or "invalidates only these tables" in doubt: doubt means
not cached, and invalidates everything. Pure: no I/O, no clock; never raises.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pgbalancer.routing.classify import (
    DEFAULT_POLICY,
    FunctionPolicy,
    StatementKind,
    _analyze,
    _lex,
    _names,
    _split,
)

ALL_TABLES = None  # the ``invalidates`` of a statement after which nothing cached may be trusted
_CACHED_TEXT_MAX = 8192
_MAX_LENGTH = 256 << 10

# Immutable built-ins (and aggregates over immutable input): the same arguments give the same
# answer on every node at every time. Anything not listed (now(), random(), nextval(),
# current_setting(), user functions, ...) keeps a result out of the cache.
_IMMUTABLE = _names(
    """
    count sum avg min max array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg
    bool_and bool_or every bit_and bit_or stddev stddev_pop stddev_samp variance var_pop var_samp
    lower upper length char_length character_length octet_length bit_length substr substring trim btrim
    ltrim rtrim concat concat_ws replace split_part left right lpad rpad repeat reverse position strpos
    initcap md5 sha224 sha256 sha384 sha512 encode decode ascii chr translate starts_with quote_ident
    quote_literal quote_nullable to_hex regexp_match regexp_replace regexp_split_to_array string_to_array
    array_to_string abs ceil ceiling floor round trunc sqrt cbrt power pow exp ln log log10 mod sign pi div
    degrees radians greatest least coalesce nullif num_nonnulls num_nulls
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb row_to_json
    json_array_length jsonb_array_length json_extract_path jsonb_extract_path json_extract_path_text
    jsonb_extract_path_text jsonb_set jsonb_pretty json_typeof jsonb_typeof
    array_length array_upper array_lower cardinality unnest array_append array_prepend array_cat
    array_position array_remove array_replace generate_series
    bool int int2 int4 int8 integer smallint bigint float4 float8 numeric text varchar bpchar bytea
    """
)
# SQL keywords that read the clock or the session without parentheses.
_VOLATILE_KEYWORDS = _names(
    """
    current_date current_time current_timestamp localtime localtimestamp current_user session_user user
    current_role current_schema current_catalog system_user
    """
)
# Functions that may write (the function policy) but change no table a cached result can read.
_NO_TABLE_EFFECT = _names(
    """
    nextval setval currval lastval txid_current txid_current_if_assigned pg_current_xact_id
    pg_current_xact_id_if_assigned pg_current_wal_lsn pg_current_wal_insert_lsn pg_current_wal_flush_lsn
    pg_notify set_config pg_advisory_lock pg_advisory_unlock pg_advisory_xact_lock pg_try_advisory_lock
    pg_try_advisory_xact_lock pg_advisory_unlock_all pg_advisory_lock_shared pg_advisory_unlock_shared
    pg_cancel_backend pg_terminate_backend pg_reload_conf pg_sleep
    """
)
# Date/time input strings that mean "the moment it runs" ('now'::timestamptz, 'today'::date, ...).
_TIME_LITERALS = frozenset({"now", "today", "tomorrow", "yesterday"})
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
_READ_COMMANDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
# Utilities that change no table contents.
_HARMLESS_UTILITY = frozenset(
    {"listen", "unlisten", "notify", "lock", "vacuum", "analyze", "analyse", "checkpoint", "load"}
    | {"fetch", "move", "close", "deallocate"}
)
# Words after which a relation name follows (in any statement).
_RELATION_STARTERS = frozenset({"from", "join", "into", "update", "using", "table", "truncate"})
# Words that may stand between a starter and the relation name.
_RELATION_PREFIXES = frozenset({"only", "lateral", "if", "exists", "not", "table"})


@dataclass(frozen=True, slots=True)
class CacheFacts:
    """What the result cache may do with one statement text."""

    cacheable: bool
    reason: str = ""  # why not cacheable ('' if it is)
    reads: frozenset[str] = frozenset()  # relations read, bare lower-case names
    invalidates: frozenset[str] | None = frozenset()  # None = everything
    ttl: int | None = None  # a /* pgbalancer: cache ttl=N */ hint
    ddl: bool = False  # the catalog may have changed (relation facts must be asked again)


_EVERYTHING_UNREAD = CacheFacts(False, "the statement could not be read", invalidates=ALL_TABLES)


def cache_facts(
    sql: str | bytes | bytearray | memoryview,
    *,
    policy: FunctionPolicy = DEFAULT_POLICY,
    standard_conforming_strings: bool = True,
) -> CacheFacts:
    """The cache facts of one Query text (or a Parse's). Never raises; doubt is not cached and
    invalidates everything. ``policy`` says which called functions may write (routing's)."""
    try:
        text = sql if isinstance(sql, str) else bytes(sql).decode("utf-8", "replace")
        if len(text) > _MAX_LENGTH:
            return _EVERYTHING_UNREAD
        if len(text) <= _CACHED_TEXT_MAX:
            return _facts_cached(text, not standard_conforming_strings, policy)
        return _facts(text, not standard_conforming_strings, policy)
    except Exception:  # a reader bug must cost a cache miss and a flush, never a session
        return _EVERYTHING_UNREAD


def _facts(text: str, backslash_quotes: bool, policy: FunctionPolicy) -> CacheFacts:
    lexed = _lex(text, backslash_quotes)
    if lexed.problem:
        return _EVERYTHING_UNREAD
    ranges, problem = _split(lexed.tokens)
    if problem:
        return _EVERYTHING_UNREAD
    tokens = lexed.tokens
    nocache = "nocache" in lexed.cache_hints
    ttl = next((int(h[4:]) for h in lexed.cache_hints if h.startswith("ttl=")), None)
    invalidates: set[str] | None = set()
    reads: set[str] = set()
    reason = ""
    ddl = False
    for start, end in ranges:
        statement = _analyze(tokens, start, end)
        names, schemas = _relations(tokens, start, end)
        reads |= names
        kind = statement.kind
        writers = tuple(name for name in statement.functions if policy.may_write(name))
        if kind is StatementKind.READ and writers:
            kind = StatementKind.FUNCTION_CALL
        effect = _invalidation(kind, writers, tokens, start, end, names)
        ddl = ddl or statement.kind is StatementKind.DDL
        if effect is None or invalidates is None:
            invalidates = None
        else:
            invalidates |= effect
        if not reason:
            reason = _not_cacheable(
                kind, statement.command, statement.functions, tokens, start, end, schemas, names
            )
    if len(ranges) != 1 and not reason:
        reason = "not exactly one statement"
    if nocache and not reason:
        reason = "a /* pgbalancer: nocache */ hint"
    frozen = None if invalidates is None else frozenset(invalidates)
    return CacheFacts(not reason, reason, frozenset(reads), frozen, ttl, ddl)


_facts_cached = functools.lru_cache(maxsize=4096)(_facts)


def _not_cacheable(
    kind: StatementKind,
    command: str,
    functions: tuple[str, ...],
    tokens: list[str],
    start: int,
    end: int,
    schemas: frozenset[str],
    reads: frozenset[str],
) -> str:
    if kind is not StatementKind.READ or command not in _READ_COMMANDS:
        return f"a {kind} ({command or 'empty'}) is not a cacheable read"
    for name in functions:
        schema, _, bare = name.rpartition(".")
        if bare.lower() not in _IMMUTABLE or schema.lower() not in ("", "pg_catalog"):
            return f"calls {name}(), which is not known to be immutable"
    for index in range(start, end):
        token = tokens[index]
        if token in _VOLATILE_KEYWORDS:
            return f"uses {token.upper()}, which depends on the session or the time"
        if token[:1] == "'" and token[1:].strip().lower() in _TIME_LITERALS:
            return f"uses the literal {token}', which is read at run time"
    for schema in schemas:
        if schema in _SYSTEM_SCHEMAS or schema.startswith("pg_temp"):
            return f"reads the {schema} schema"
    for name in reads:
        if name.startswith("pg_"):
            return f"reads {name}, which may be a system catalog"
    return ""


def _invalidation(
    kind: StatementKind,
    writing_functions: tuple[str, ...],
    tokens: list[str],
    start: int,
    end: int,
    names: frozenset[str],
) -> frozenset[str] | None:
    """The tables a statement's effects reach; None when they cannot be named."""
    if kind in (StatementKind.READ, StatementKind.EMPTY, StatementKind.SESSION, StatementKind.TRANSACTION):
        return frozenset()
    if kind is StatementKind.WRITE:
        return names or None
    if kind is StatementKind.FUNCTION_CALL:
        harmless = all(name.rpartition(".")[2].lower() in _NO_TABLE_EFFECT for name in writing_functions)
        return frozenset() if writing_functions and harmless else None
    if kind is StatementKind.UTILITY:
        return frozenset() if tokens[start] in _HARMLESS_UTILITY else None
    if kind is StatementKind.DDL:
        return _ddl_targets(tokens, start, end)
    return None


# DDL words that change which tables a write reaches (inheritance, partitions, foreign keys with
# actions, triggers, rules) or rename: the other nodes' knowledge of the tables must be redone.
_DDL_RESHAPING = frozenset(
    {"references", "foreign", "inherit", "inherits", "attach", "detach", "partition", "trigger", "rule"}
    | {"rename", "policy", "security"}
)


def _ddl_targets(tokens: list[str], start: int, end: int) -> frozenset[str] | None:
    """ALTER/DROP/CREATE TABLE, CREATE INDEX, REFRESH MATERIALIZED VIEW, COMMENT: their tables.
    Any other DDL (views, functions, triggers, roles, grants, schemas, ...), or one that changes
    which tables a write reaches, may change what any cached result would be: None."""
    words = tokens[start:end]
    if any(word in _DDL_RESHAPING for word in words):
        return None
    head = [w for w in words[:6] if w not in ("or", "replace", "unique", "concurrently", "global", "local")]
    if head[:1] == ["comment"]:
        return frozenset()
    if head[:2] in (["alter", "table"], ["drop", "table"], ["refresh", "materialized"]):
        index = start + 2 + (head[:2] == ["refresh", "materialized"])
        return _name_list(tokens, index, end) or None
    if head[:1] == ["create"]:
        rest = [w for w in head[1:] if w not in ("temp", "temporary", "unlogged")]
        if rest[:1] == ["table"]:
            return _name_list(tokens, words.index("table") + start + 1, end, single=True) or None
        if rest[:1] == ["index"]:
            return frozenset()  # an index changes no result
    return None


def _name_list(tokens: list[str], index: int, end: int, *, single: bool = False) -> frozenset[str]:
    names: set[str] = set()
    while index < end:
        while index < end and tokens[index] in _RELATION_PREFIXES | {"view", "concurrently"}:
            index += 1
        name, _schema, index = _qualified_name(tokens, index, end)
        if not name:
            break
        names.add(name)
        if single or index >= end or tokens[index] != ",":
            break
        index += 1
    return frozenset(names)


def _qualified_name(tokens: list[str], index: int, end: int) -> tuple[str, str, int]:
    """(bare lower name, schema, index after) of a relation name at ``index``; ('', '', index) if none."""
    token = tokens[index] if index < end else ""
    if not _is_name(token):
        return "", "", index
    name, schema = _name_of(token), ""
    index += 1
    while index + 1 < end and tokens[index] == "." and _is_name(tokens[index + 1]):
        schema, name = name, _name_of(tokens[index + 1])
        index += 2
    return name, schema, index


def _is_name(token: str) -> bool:
    return bool(token) and (token[0].isalpha() or token[0] == "_" or token[0] == '"')


def _name_of(token: str) -> str:
    return token[1:] if token[0] == '"' else token.lower()


def _relations(tokens: list[str], start: int, end: int) -> tuple[frozenset[str], frozenset[str]]:
    """Relation names (bare) and the schemas they were qualified with, in one statement.

    A word after FROM/JOIN/INTO/UPDATE/USING/TABLE/TRUNCATE (or a comma inside a FROM list) is
    a relation unless a '(' follows it (a function call in FROM); CTE names are dropped.
    Some words found this way are columns (``extract(year FROM col)``): the catalog check
    finds no table by that name, so such a read is not cached; never the other way round.
    """
    names: set[str] = set()
    schemas: set[str] = set()
    ctes: set[str] = set()
    in_from = [False]
    previous = ""
    index = start
    first = tokens[start] if start < end else ""
    if first == "copy":
        name, schema, _ = _qualified_name(tokens, start + 1, end)
        if name:
            names.add(name)
            schemas.add(schema)
    while index < end:
        token = tokens[index]
        if token == "(":
            in_from.append(False)
        elif token == ")":
            if len(in_from) > 1:
                in_from.pop()
        elif token in _FROM_ENDERS:
            in_from[-1] = False
        if (
            previous in ("with", "recursive", ",")
            and _is_name(token)
            and index + 1 < end
            and tokens[index + 1] in ("as", "(")
            and _looks_like_cte(tokens, index + 1, end)
        ):
            ctes.add(_name_of(token))
        starts = token in _RELATION_STARTERS or (token == "," and in_from[-1])
        if token in ("from", "join", "using", "truncate"):
            in_from[-1] = True
        if starts:
            at = index + 1
            while at < end and tokens[at] in _RELATION_PREFIXES:
                at += 1
            name, schema, after = _qualified_name(tokens, at, end)
            callable_here = token not in ("into", "update", "truncate", "table")
            if name and not (callable_here and after < end and tokens[after] == "("):
                names.add(name)
                if schema:
                    schemas.add(schema)
        previous = token
        index += 1
    return frozenset(names - ctes), frozenset(schemas)


_FROM_ENDERS = frozenset(
    {"where", "group", "having", "window", "order", "limit", "offset", "fetch", "union", "intersect"}
    | {"except", "for", "returning", "on", "set", "values", "select"}
)


def _looks_like_cte(tokens: list[str], index: int, end: int) -> bool:
    """``name AS (`` / ``name AS MATERIALIZED (`` / ``name (cols) AS (``."""
    if tokens[index] == "(":
        depth = 0
        while index < end:
            depth += (tokens[index] == "(") - (tokens[index] == ")")
            index += 1
            if depth == 0:
                break
    if index >= end or tokens[index] != "as":
        return False
    following = tokens[index + 1] if index + 1 < end else ""
    return following in ("(", "materialized", "not")
