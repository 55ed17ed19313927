"""What the result cache may cache, and what each statement invalidates (routing.cacheability)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.routing.cacheability import cache_facts
from pgbalancer.routing.classify import FunctionPolicy

CACHEABLE = [
    ("SELECT v FROM t WHERE id = $1", {"t"}),
    ("select a from public.t join u on t.x = u.x", {"t", "u"}),
    ('SELECT * FROM "Mixed" m, other o WHERE m.id = o.id', {"Mixed", "other"}),
    ("SELECT count(*), lower(name) FROM t GROUP BY 2", {"t"}),
    ("WITH x AS (SELECT * FROM t) SELECT * FROM x", {"t"}),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u)", {"t", "u"}),
    ("TABLE t", {"t"}),
    ("VALUES (1), (2)", set()),
    ("SELECT 1", set()),
    ("/* pgbalancer: cache ttl=30 */ SELECT a FROM t", {"t"}),
]

NOT_CACHEABLE = [
    "SELECT now()",
    "SELECT random()",
    "SELECT nextval('s')",
    "SELECT current_user",
    "SELECT CURRENT_TIMESTAMP",
    "SELECT * FROM t WHERE d > current_date",
    "SELECT clock_timestamp()",
    "SELECT 'now'::timestamptz",
    "SELECT * FROM t WHERE d > 'today'::date",
    "SELECT * FROM t TABLESAMPLE BERNOULLI (10)",
    "SELECT my_function(1)",
    "SELECT current_setting('x')",
    "SELECT * FROM pg_class",
    "SELECT * FROM pg_catalog.pg_namespace",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_temp.t",
    "/* pgbalancer: nocache */ SELECT * FROM t",
    "SELECT * FROM t FOR UPDATE",
    "SELECT 1; SELECT 2",
    "SHOW search_path",
    "EXPLAIN SELECT 1",
    "INSERT INTO t VALUES (1)",
    "BEGIN",
    "SELEC 1",
    "SELECT (",
    "SELECT 'unterminated",
    "",
]


@pytest.mark.parametrize(("sql", "tables"), CACHEABLE)
def test_cacheable_reads_and_their_tables(sql: str, tables: set[str]) -> None:
    facts = cache_facts(sql)
    assert facts.cacheable, facts.reason
    assert facts.reads == tables
    assert facts.invalidates == frozenset()


@pytest.mark.parametrize("sql", NOT_CACHEABLE)
def test_never_cached(sql: str) -> None:
    facts = cache_facts(sql)
    assert not facts.cacheable
    assert facts.reason


def test_hints() -> None:
    assert cache_facts("/* pgbalancer: cache ttl=30 */ SELECT 1").ttl == 30
    assert cache_facts("-- pgbalancer: cache ttl=5\nSELECT 1").ttl == 5
    assert cache_facts("SELECT '/* pgbalancer: nocache */'").cacheable  # a literal, not a hint


INVALIDATES: list[tuple[str, set[str] | None]] = [
    ("INSERT INTO t (a) VALUES (1)", {"t"}),
    ("UPDATE s.t SET a = 1 FROM u WHERE u.b = t.b", {"t", "u"}),
    ("DELETE FROM ONLY t USING x WHERE t.a = x.a", {"t", "x"}),
    ("TRUNCATE TABLE a, b", {"a", "b"}),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", {"t", "s"}),
    ("COPY t (a, b) FROM STDIN", {"t", "stdin"}),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"t"}),
    ("ALTER TABLE t ADD COLUMN c int", {"t"}),
    ("DROP TABLE IF EXISTS t, u CASCADE", {"t", "u"}),
    ("CREATE TABLE n (a int)", {"n"}),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", {"mv"}),
    ("CREATE INDEX ON t (a)", set()),
    ("SELECT * FROM t", set()),
    ("SET search_path = s", set()),
    ("BEGIN", set()),
    ("VACUUM t", set()),
    ("SELECT nextval('s')", set()),
    # everything: targets that cannot be named, or effects on any table
    ("GRANT SELECT ON t TO x", None),
    ("REVOKE SELECT ON t FROM x", None),
    ("ALTER ROLE x SET search_path = y", None),
    ("CREATE VIEW v AS SELECT 1", None),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", None),
    ("CREATE TRIGGER tr AFTER INSERT ON t EXECUTE FUNCTION f()", None),
    ("ALTER SCHEMA s RENAME TO r", None),
    ("CALL p()", None),
    ("DO $$ BEGIN DELETE FROM t; END $$", None),
    ("SELECT my_function()", None),
    ("EXECUTE prepared_plan", None),
    ("SELEC 1", None),
    ("UPDATE", None),
    ("INSERT INTO t VALUES (1); GRANT ALL ON t TO x", None),
]


@pytest.mark.parametrize(("sql", "tables"), INVALIDATES)
def test_what_each_statement_invalidates(sql: str, tables: set[str] | None) -> None:
    expected = None if tables is None else frozenset(tables)
    assert cache_facts(sql).invalidates == expected


def test_functions_listed_read_only_keep_the_cache() -> None:
    policy = FunctionPolicy(read_only_patterns=["my_.*"])
    assert cache_facts("SELECT my_report()", policy=policy).invalidates == frozenset()
    assert not cache_facts("SELECT my_report()", policy=policy).cacheable  # not known immutable


def test_ddl_is_flagged() -> None:
    assert cache_facts("ALTER TABLE t ADD c int").ddl
    assert not cache_facts("UPDATE t SET a = 1").ddl


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gets_an_answer_and_doubt_is_never_cached(text: str) -> None:
    facts = cache_facts(text)
    if facts.cacheable:
        assert facts.invalidates == frozenset()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "SELECT",
                "INSERT",
                "INTO",
                "FROM",
                "t",
                ",",
                "(",
                ")",
                ";",
                "UPDATE",
                "SET",
                "now()",
                "'x'",
                "JOIN",
                "u",
                "WHERE",
                "=",
                "1",
                "GRANT",
            ]
        ),
        max_size=25,
    )
)
def test_writes_never_invalidate_nothing(words: list[str]) -> None:
    facts = cache_facts(" ".join(words))
    if any(w in ("INSERT", "UPDATE", "GRANT") for w in words[:1]):
        assert facts.invalidates != frozenset()
