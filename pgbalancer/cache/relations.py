"""What the catalog says about the relations a statement names (pure: the query and its answer).

The classifier names relations; only PostgreSQL knows what they are. A read may be cached
only if every relation it names is a plain permanent table or materialized view: not a view
(its base tables are not named), not a temporary table, not a system catalog, not part of an
inheritance tree or partitioned table (a write to one member changes what the others read),
A write to a relation with user triggers or rules, or to a view, may change any table: it
invalidates everything; a write to a table that foreign keys with actions reference also
invalidates the referencing tables.

``relations_query(names)`` is the SQL the proxy runs once per name and database;
``parse_relation_rows`` turns its rows into :class:`RelationFacts`. Names it does not
return do not exist (or are not visible): never cached. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_NAMES_PER_QUERY = 64


@dataclass(frozen=True, slots=True)
class RelationFacts:
    cacheable: bool  # reads of it may be cached
    write_effect: frozenset[str] | None  # tables a write to it changes; None = possibly any


UNKNOWN_RELATION = RelationFacts(cacheable=False, write_effect=None)


def _literal(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def relations_query(names: Iterable[str]) -> str:
    """One catalog query about ``names`` (bare relation names, as the classifier gives them)."""
    listed = ", ".join(_literal(name) for name in sorted(set(names))[:MAX_NAMES_PER_QUERY])
    return (
        "SELECT c.relname, "
        "bool_and(c.relkind IN ('r', 'm') AND c.relpersistence <> 't' AND NOT c.relhassubclass "
        "AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
        "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)), "
        "bool_or(c.relkind NOT IN ('r', 'm', 'p') "
        "OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) "
        "OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r "
        "WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN')), "
        "coalesce(json_agg(DISTINCT f.relname) FILTER (WHERE f.relname IS NOT NULL), '[]')::text "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_constraint k ON k.confrelid = c.oid AND k.contype = 'f' "
        "AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd')) "
        "LEFT JOIN pg_catalog.pg_class f ON f.oid = k.conrelid "
        f"WHERE c.relname IN ({listed}) GROUP BY c.relname"
    )


def parse_relation_rows(
    names: Iterable[str], rows: Sequence[tuple[str | None, ...]]
) -> dict[str, RelationFacts]:
    """Facts for every asked name: from its row, or UNKNOWN_RELATION-like when absent."""
    facts: dict[str, RelationFacts] = {}
    for row in rows:
        if len(row) != 4 or row[0] is None:
            continue
        name: str = row[0]
        _, cacheable, writes_elsewhere, cascades = row
        try:
            referencing = json.loads(cascades or "[]")
        except ValueError:
            referencing = None
        if writes_elsewhere == "t" or not isinstance(referencing, list):
            effect: frozenset[str] | None = None
        else:
            effect = frozenset({name, *(str(r) for r in referencing)})
        facts[name] = RelationFacts(cacheable=cacheable == "t", write_effect=effect)
    for name in names:
        # Not in the catalog (a CTE name or a column the classifier took for a relation, or a
        # table that does not exist yet): never cached; a write to it changes only that name.
        facts.setdefault(name, RelationFacts(cacheable=False, write_effect=frozenset({name})))
    return facts
