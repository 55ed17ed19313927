"""Statement classification: real-world statements, hints, function policy, and hostile input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.routing.classify import (
    DEFAULT_MAX_LENGTH,
    FunctionPolicy,
    RouteHint,
    StatementKind,
    TransactionOp,
    classify,
    combine,
)

READ = StatementKind.READ
WRITE = StatementKind.WRITE
DDL = StatementKind.DDL
CALL = StatementKind.FUNCTION_CALL
TX = StatementKind.TRANSACTION
SESSION = StatementKind.SESSION
UTILITY = StatementKind.UTILITY
EMPTY = StatementKind.EMPTY
UNKNOWN = StatementKind.UNKNOWN

TABLE: list[tuple[str, StatementKind]] = [
    # plain reads, and keywords hidden in comments, literals and quoted identifiers
    ("SELECT 1", READ),
    ("select * from users where id = $1", READ),
    ("SELECT id, name FROM users WHERE email = 'a@b.c' LIMIT 1", READ),
    ("  \n-- a comment\nSELECT 1", READ),
    ("/* leading */ SELECT 1", READ),
    ("/* a /* nested */ still the comment; DELETE FROM t */ SELECT 1", READ),
    ("SELECT 'DELETE FROM t; INSERT INTO t VALUES (1)'", READ),
    ("SELECT 'it''s; DELETE FROM t'", READ),
    ("SELECT $$ INSERT INTO t VALUES (1) $$", READ),
    ("SELECT $fn$ UPDATE t SET x = 1; $notclosed$ $fn$", READ),
    ("SELECT E'it\\'s; DROP TABLE t; --'", READ),
    ('SELECT "delete", "for update" FROM "insert"', READ),
    ("SELECT * FROM t -- FOR UPDATE", READ),
    ("SELECT * FROM t /* FOR UPDATE */", READ),
    ("SELECT U&'d\\0061t\\+000061', B'1010', X'1F', N'abc'", READ),
    ("SELECT 1;", READ),
    ("SELECT 1; SELECT 2;", READ),
    ("(SELECT 1) UNION (SELECT 2)", READ),
    # CTEs, VALUES, TABLE, SHOW
    (
        "WITH recent AS (SELECT * FROM orders WHERE ts > now() - interval '1 day') SELECT count(*) FROM r",
        READ,
    ),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 9) SELECT sum(n) FROM r",
        READ,
    ),
    ("WITH a(x) AS (SELECT 1), b(y) AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a, b", READ),
    ("VALUES (1, 'a'), (2, 'b')", READ),
    ("TABLE users", READ),
    ("SHOW search_path", READ),
    ("SHOW ALL", READ),
    # function calls that are known not to write, and syntax that only looks like a call
    ("SELECT count(*), max(ts), coalesce(sum(x), 0) FROM t", READ),
    ("SELECT x::numeric(10,2), CAST(y AS varchar(20)), z::character varying(3) FROM t", READ),
    ("SELECT * FROM generate_series(1, 10) AS g(i)", READ),
    ("SELECT * FROM generate_series(1, 10) g(i)", READ),
    ("SELECT * FROM t, LATERAL unnest(t.arr) u(x)", READ),
    ("SELECT * FROM t x(a, b) JOIN u USING (id)", READ),
    ("SELECT pg_catalog.now(), pg_is_in_recovery(), pg_last_wal_replay_lsn()", READ),
    (
        "SELECT row_number() OVER (PARTITION BY a ORDER BY b), rank() OVER w FROM t WINDOW w AS (ORDER BY c)",
        READ,
    ),
    ("SELECT substring(name FROM 1 FOR 3), extract(year FROM ts), trim(both 'x' FROM name) FROM t", READ),
    ("SELECT * FROM t WHERE x = ANY($1) AND y IN (SELECT y FROM u) AND EXISTS (SELECT 1 FROM v)", READ),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (42)", READ),
    ("SELECT jsonb_build_object('a', 1), to_char(now(), 'YYYY'), current_setting('search_path')", READ),
    ("SELECT count(*) FILTER (WHERE x > 1), percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t", READ),
    ("SELECT a FROM t GROUP BY GROUPING SETS ((a), ())", READ),
    ("SELECT 1 OPERATOR(pg_catalog.+) 2", READ),
    # EXPLAIN, DECLARE, COPY of reads
    ("EXPLAIN SELECT * FROM t", READ),
    ("EXPLAIN ANALYZE SELECT * FROM t", READ),
    ("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1", READ),
    ("DECLARE c CURSOR FOR SELECT * FROM t", READ),
    ("COPY (SELECT * FROM t) TO STDOUT", READ),
    ("COPY t TO STDOUT WITH (FORMAT csv)", READ),
    # writes
    ("INSERT INTO t VALUES (1)", WRITE),
    ("insert into t (a, b) select a, b from u", WRITE),
    ("UPDATE t SET x = 1 WHERE id = 2", WRITE),
    ("DELETE FROM t", WRITE),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x", WRITE),
    ("TRUNCATE t", WRITE),
    ("SELECT * FROM t FOR UPDATE", WRITE),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", WRITE),
    ("SELECT * FROM t FOR SHARE", WRITE),
    ("SELECT * FROM t FOR KEY SHARE OF t NOWAIT", WRITE),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", WRITE),
    ("SELECT * INTO new_table FROM t", WRITE),
    ("SELECT * INTO TEMP t2 FROM t", WRITE),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", WRITE),
    ("WITH u AS (UPDATE t SET x = 1 RETURNING id) SELECT count(*) FROM u", WRITE),
    ("WITH s AS (SELECT 1) INSERT INTO t SELECT * FROM s", WRITE),
    ("WITH a AS MATERIALIZED (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a", WRITE),
    ("COPY t FROM STDIN", WRITE),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", WRITE),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", WRITE),
    ("EXPLAIN (ANALYZE true) DELETE FROM t", WRITE),
    ("SELECT 1; DELETE FROM t", WRITE),
    ("/* SELECT */ DELETE FROM t", WRITE),
    ("-- SELECT\nUPDATE t SET x = 1", WRITE),
    # DDL
    ("CREATE TABLE t (id int primary key, name text default 'x')", DDL),
    ("ALTER TABLE t ADD COLUMN x int", DDL),
    ("DROP TABLE IF EXISTS t CASCADE", DDL),
    ("CREATE INDEX CONCURRENTLY i ON t (lower(name))", DDL),
    ("GRANT SELECT ON t TO bob", DDL),
    ("COMMENT ON TABLE t IS 'SELECT'", DDL),
    ("REFRESH MATERIALIZED VIEW v", DDL),
    ("CREATE TEMP TABLE tmp AS SELECT 1", DDL),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$", DDL),
    (
        "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); "
        "SELECT CASE WHEN true THEN 1 END; END",
        DDL,
    ),
    # function calls that may write
    ("SELECT nextval('seq')", CALL),
    ("SELECT setval('seq', 1)", CALL),
    ("SELECT currval('seq'), lastval()", CALL),
    ("SELECT pg_advisory_lock(1)", CALL),
    ("SELECT pg_try_advisory_xact_lock(1)", CALL),
    ("SELECT lo_import('/tmp/x')", CALL),
    ("SELECT my_func(1)", CALL),
    ("SELECT * FROM my_srf() AS s(a)", CALL),
    ("SELECT public.my_func()", CALL),
    ("SELECT myschema.now()", CALL),
    ('SELECT "MixedCase"()', CALL),
    ("SELECT set_config('a.b', 'c', false)", CALL),
    ("SELECT pg_notify('ch', 'x')", CALL),
    ("SELECT txid_current()", CALL),
    ("SELECT pg_current_wal_lsn()", CALL),
    ("VALUES (nextval('s'))", CALL),
    ("WITH x AS (SELECT nextval('s')) SELECT * FROM x", CALL),
    ("SELECT count(*) FROM t WHERE is_valid(x)", CALL),
    ("SELECT * FROM t WHERE x = (SELECT f(1))", CALL),
    ("CALL my_proc()", CALL),
    ("DO $$ BEGIN PERFORM 1; END $$", CALL),
    # transaction control
    ("BEGIN", TX),
    ("begin work", TX),
    ("START TRANSACTION", TX),
    ("BEGIN READ ONLY", TX),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", TX),
    ("COMMIT", TX),
    ("END", TX),
    ("COMMIT AND CHAIN", TX),
    ("ROLLBACK", TX),
    ("ABORT", TX),
    ("ROLLBACK TO SAVEPOINT a", TX),
    ("SAVEPOINT a", TX),
    ("RELEASE SAVEPOINT a", TX),
    ("SET TRANSACTION READ ONLY", TX),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", TX),
    ("PREPARE TRANSACTION 'x'", TX),
    ("COMMIT PREPARED 'x'", TX),
    # session settings
    ("SET search_path TO a, b", SESSION),
    ("SET LOCAL statement_timeout = 0", SESSION),
    ("RESET ALL", SESSION),
    ("DISCARD ALL", SESSION),
    ("SET pgbalancer.route = 'standby'", SESSION),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SESSION),
    ("SET TIME ZONE 'UTC'", SESSION),
    ("SET ROLE admin", SESSION),
    # utilities
    ("LISTEN ch", UTILITY),
    ("NOTIFY ch, 'x'", UTILITY),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", UTILITY),
    ("VACUUM ANALYZE t", UTILITY),
    ("ANALYZE t", UTILITY),
    ("CHECKPOINT", UTILITY),
    ("PREPARE p AS SELECT 1", UTILITY),
    ("EXECUTE p", UTILITY),
    ("DEALLOCATE p", UTILITY),
    ("FETCH 10 FROM c", UTILITY),
    ("CLOSE c", UTILITY),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", UTILITY),
    ("EXPLAIN DELETE FROM t", UTILITY),
    # empty
    ("", EMPTY),
    ("   \n\t", EMPTY),
    (";", EMPTY),
    (";;  ;", EMPTY),
    ("-- only a comment", EMPTY),
    ("/* only a comment */", EMPTY),
    # cannot be read: unknown, so the primary
    ("SELECT 'abc", UNKNOWN),
    ('SELECT "abc', UNKNOWN),
    ("SELECT $$abc", UNKNOWN),
    ("SELECT $a$ x $b$", UNKNOWN),
    ("SELECT E'abc\\'", UNKNOWN),
    ("/* unterminated", UNKNOWN),
    ("/* a /* b */ SELECT 1", UNKNOWN),
    ("SELECT (1", UNKNOWN),
    ("SELECT 1)", UNKNOWN),
    ("FROBNICATE t", UNKNOWN),
    ("WITH x AS (SELECT 1)", UNKNOWN),
    ("START", UNKNOWN),
    ("+ 1", UNKNOWN),
    ("SELECT 1; FROBNICATE", UNKNOWN),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1;", UNKNOWN),
]


@pytest.mark.parametrize(("sql", "kind"), TABLE, ids=[sql[:60] or "<empty>" for sql, _ in TABLE])
def test_classification_table(sql: str, kind: StatementKind) -> None:
    assert classify(sql).kind is kind


@pytest.mark.parametrize(("sql", "kind"), TABLE[:40], ids=[sql[:60] or "<empty>" for sql, _ in TABLE[:40]])
def test_bytes_classify_like_text(sql: str, kind: StatementKind) -> None:
    assert classify(sql.encode()).kind is kind


def test_details_of_transaction_statements() -> None:
    begin = classify("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY").only
    assert begin is not None
    assert (begin.transaction, begin.read_only) == (TransactionOp.BEGIN, True)
    assert begin.isolation == "serializable"
    read_committed = classify("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE").only
    assert read_committed is not None
    assert (read_committed.isolation, read_committed.read_only) == ("read committed", False)
    chained = classify("COMMIT AND CHAIN").only
    assert chained is not None and chained.chain and chained.transaction is TransactionOp.COMMIT
    assert classify("ROLLBACK TO a").transaction_ops == (TransactionOp.ROLLBACK_TO,)
    assert classify("BEGIN; SELECT 1; COMMIT").transaction_ops == (TransactionOp.BEGIN, TransactionOp.COMMIT)


def test_details_of_settings() -> None:
    route = classify("SET pgbalancer.route = 'standby'").only
    assert route is not None
    assert (route.setting, route.value, route.local) == ("pgbalancer.route", "standby", False)
    local = classify("SET LOCAL pgbalancer.route TO primary").only
    assert local is not None
    assert (local.setting, local.value, local.local) == ("pgbalancer.route", "primary", True)
    reset = classify("RESET pgbalancer.route").only
    assert reset is not None and (reset.setting, reset.value) == ("pgbalancer.route", None)
    assert classify("DISCARD ALL").statements[0].resets_all
    assert classify("RESET ALL").statements[0].resets_all
    default_ro = classify("SET default_transaction_read_only = on").only
    assert default_ro is not None and default_ro.read_only is True
    characteristics = classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").only
    assert characteristics is not None and characteristics.read_only is True


@pytest.mark.parametrize(
    ("sql", "hint"),
    [
        ("/* pgbalancer: primary */ SELECT 1", RouteHint.PRIMARY),
        ("SELECT 1 /* pgbalancer:standby */", RouteHint.STANDBY),
        ("-- pgbalancer: any\nSELECT 1", RouteHint.ANY),
        ("/*  PGBALANCER :  Primary  */ SELECT 1", RouteHint.PRIMARY),
        ("/*NO LOAD BALANCE*/ SELECT 1", RouteHint.PRIMARY),
        ("/* pgbalancer: standby */ /* pgbalancer: primary */ SELECT 1", RouteHint.PRIMARY),
        ("SELECT '/* pgbalancer: primary */'", None),
        ("SELECT $$ /* pgbalancer: primary */ $$", None),
        ("/* pgbalancer: sideways */ SELECT 1", None),
        ("/* route me: pgbalancer: primary */ SELECT 1", None),
        ("SELECT 1", None),
    ],
)
def test_hints(sql: str, hint: RouteHint | None) -> None:
    assert classify(sql).hint is hint


def test_hint_survives_an_unreadable_statement() -> None:
    result = classify("/* pgbalancer: primary */ SELECT 'unterminated")
    assert result.kind is UNKNOWN and result.hint is RouteHint.PRIMARY


def test_standard_conforming_strings_off_makes_backslash_escape_quotes() -> None:
    sql = "SELECT 'it\\'s; DELETE FROM t'"
    assert classify(sql, standard_conforming_strings=False).kind is READ
    # With standard strings the literal ends at \' and what follows cannot be read.
    assert classify(sql).kind is UNKNOWN


def test_function_calls_are_reported() -> None:
    result = classify("SELECT my_func(1), app.other(2), count(*) FROM t")
    assert result.kind is CALL
    assert result.statements[0].functions == ("my_func", "app.other", "count")
    assert result.writing_functions == ("my_func", "app.other")
    assert "my_func()" in result.reason


class TestFunctionPolicy:
    def test_read_only_list_allows_listed_functions(self) -> None:
        policy = FunctionPolicy(read_only_patterns=["my_.*", "app\\.report_totals"])
        assert classify("SELECT my_func(1)", policy=policy).kind is READ
        assert classify("SELECT app.report_totals()", policy=policy).kind is READ
        assert classify("SELECT other()", policy=policy).kind is CALL

    def test_writing_builtins_write_whatever_the_lists_say(self) -> None:
        policy = FunctionPolicy(read_only_patterns=[".*"])
        writers = (
            "SELECT nextval('s')",
            "SELECT pg_advisory_lock(1)",
            "SELECT lo_unlink(1)",
            "SELECT setval('s', 2)",
        )
        for sql in writers:
            assert classify(sql, policy=policy).kind is CALL, sql
        assert classify("SELECT anything_else()", policy=policy).kind is READ

    def test_write_list_alone_means_only_those_write(self) -> None:
        policy = FunctionPolicy(write_patterns=["audit_.*"])
        assert classify("SELECT my_func()", policy=policy).kind is READ
        assert classify("SELECT audit_log('x')", policy=policy).kind is CALL
        assert classify("SELECT nextval('s')", policy=policy).kind is CALL

    def test_both_lists_unknown_functions_write(self) -> None:
        policy = FunctionPolicy(read_only_patterns=["safe_.*"], write_patterns=["safe_but_not_this"])
        assert classify("SELECT safe_one()", policy=policy).kind is READ
        assert classify("SELECT safe_but_not_this()", policy=policy).kind is CALL
        assert classify("SELECT unknown_one()", policy=policy).kind is CALL

    def test_matching_is_case_insensitive_and_whole_name(self) -> None:
        policy = FunctionPolicy(read_only_patterns=["GET_USER"])
        assert classify("SELECT get_user(1)", policy=policy).kind is READ
        assert classify("SELECT get_user_and_delete(1)", policy=policy).kind is CALL

    def test_an_invalid_expression_is_taken_literally(self) -> None:
        policy = FunctionPolicy(read_only_patterns=["weird(name"])
        assert classify("SELECT other()", policy=policy).kind is CALL


def test_combine_takes_the_most_demanding_statement() -> None:
    read = classify("SELECT 1")
    write = classify("INSERT INTO t VALUES (1)")
    hinted = classify("/* pgbalancer: standby */ SELECT 2")
    assert combine([read, hinted]).kind is READ
    assert combine([read, hinted]).hint is RouteHint.STANDBY
    assert combine([read, write]).kind is WRITE
    assert combine([read, classify("SELECT 'x")]).kind is UNKNOWN
    assert combine([]).kind is EMPTY


def test_complexity_is_part_of_the_classification() -> None:
    point = classify("SELECT * FROM users WHERE id = $1 LIMIT 1")
    report = classify(
        "SELECT c.name, sum(o.total), rank() OVER (ORDER BY sum(o.total) DESC) FROM customers c "
        "JOIN orders o ON o.customer_id = c.id JOIN items i ON i.order_id = o.id "
        "GROUP BY c.name ORDER BY 2 DESC"
    )
    assert point.complexity < report.complexity
    assert report.features.joins == 2 and report.features.windows == 1 and report.features.group_by


def test_long_texts_are_not_scanned_by_default() -> None:
    sql = "SELECT " + "1, " * (DEFAULT_MAX_LENGTH // 3) + "1"
    started = time.process_time()
    result = classify(sql)
    assert time.process_time() - started < 0.05
    assert result.kind is UNKNOWN and "longer than" in result.problem


# --------------------------------------------------------------------------- never raises, never leaks

SQL_FRAGMENTS = st.sampled_from(
    [
        "SELECT", "select", "INSERT", "UPDATE", "DELETE", "WITH", "FROM", "WHERE", "FOR", "UPDATE", "SHARE",
        "INTO", "(", ")", ",", ";", "'", "''", '"', "$$", "$a$", "E'", "\\", "/*", "*/", "--", "\n", " ",
        "nextval(", "count(*)", "::", "1", "$1", "BEGIN", "ATOMIC", "END", "CASE", "U&'", "é", "\x00",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    result = classify(text)
    assert isinstance(result.kind, StatementKind)


@settings(max_examples=400, deadline=None)
@given(st.binary())
def test_never_raises_on_any_bytes(data: bytes) -> None:
    assert isinstance(classify(data).kind, StatementKind)


@settings(max_examples=600, deadline=None)
@given(st.lists(SQL_FRAGMENTS, max_size=40).map(" ".join))
def test_never_raises_on_sql_like_soup(text: str) -> None:
    result = classify(text)
    assert isinstance(result.kind, StatementKind)
    assert 0 <= result.complexity <= 100


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda t: "*/" not in t and "/*" not in t))
def test_nothing_inside_a_comment_changes_a_read(text: str) -> None:
    assert classify(f"SELECT 1 /* {text} */").kind is READ


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda t: "'" not in t))
def test_nothing_inside_a_literal_changes_a_read(text: str) -> None:
    assert classify(f"SELECT '{text}'").kind is READ


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda t: "$q$" not in t))
def test_nothing_inside_a_dollar_quote_changes_a_read(text: str) -> None:
    assert classify(f"SELECT $q${text}$q$").kind is READ


@settings(max_examples=300, deadline=None)
@given(st.lists(SQL_FRAGMENTS, max_size=30).map(" ".join))
def test_a_trailing_write_is_never_missed(prefix: str) -> None:
    """Whatever comes first, a write after it makes the whole text a write or unreadable (the
    newline ends a -- comment; anything left open swallows the DELETE and is unreadable)."""
    result = classify(f"{prefix}\n; DELETE FROM t")
    assert result.kind in (WRITE, UNKNOWN), result


def _hostile_inputs() -> dict[str, str | bytes]:
    megabyte = 1 << 20
    return {
        "long select list": "SELECT " + "a, " * (megabyte // 3) + "1",
        "deeply nested comments": "/*" * (megabyte // 2),
        "nested then closed comments": "/*" * (megabyte // 4) + "*/" * (megabyte // 4) + " SELECT 1",
        "many small comments": "/**/" * (megabyte // 4) + "SELECT 1",
        "unterminated quote": "SELECT '" + "x" * megabyte,
        "unterminated identifier": 'SELECT "' + "x" * megabyte,
        "unterminated dollar quote": "SELECT $a$" + "x" * megabyte,
        "many dollar quotes": "SELECT " + "$a$x$a$ || " * (megabyte // 12) + "1",
        "escaped quotes": "SELECT E'" + "\\'" * (megabyte // 2),
        "doubled quotes": "SELECT '" + "''" * (megabyte // 2),
        "deep parentheses": "SELECT " + "(" * (megabyte // 2) + "1" + ")" * (megabyte // 2),
        "semicolons": ";" * megabyte,
        "repeated FOR": "SELECT 1 " + "FOR " * (megabyte // 4),
        "repeated WITH": "WITH " * (megabyte // 5),
        "blank padding": " " * megabyte + "SELECT 1" + " " * megabyte,
        "operators": "SELECT 1 " + "+-*/<>=" * (megabyte // 7),
        "invalid utf-8": bytes(range(128, 256)) * (megabyte // 128),
        "mixed bytes": bytes(range(256)) * (megabyte // 256),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_hostile_inputs()))
def test_linear_time_on_hostile_megabyte_inputs(name: str) -> None:
    text = _hostile_inputs()[name]
    started = time.process_time()
    result = classify(text, max_length=None)
    elapsed = time.process_time() - started
    # Linear work is ~1 s per megabyte on a loaded machine; anything quadratic takes hours.
    assert elapsed < 8.0, f"{name}: {elapsed:.2f} s"
    assert isinstance(result.kind, StatementKind)


@pytest.mark.slow
def test_time_grows_linearly_with_size() -> None:
    def cost(repeats: int) -> float:
        text = "SELECT " + "f(a, 'x''y', $$z$$) /* c */, " * repeats + "1"
        started = time.process_time()
        classify(text, max_length=None)
        return time.process_time() - started

    small = min(cost(4000) for _ in range(3))
    large = min(cost(32000) for _ in range(3))
    assert large < small * 8 * 3  # 8 times the input: linear is ~8x; allow 3x noise, quadratic is 64x


def test_unreadable_hostile_inputs_are_unknown() -> None:
    for text in ("SELECT '" + "x" * 10_000, "/*" * 10_000, "SELECT $a$" + "x" * 10_000, b"SELECT '\xff\xfe"):
        assert classify(text).kind is UNKNOWN


# ---- the memo of classifications (wire bytes are memoised as they come, without decoding)

from pgbalancer.routing.classify import (  # noqa: E402
    _CACHED_TEXT_MAX,
    _CLASSIFY_CACHE_SIZE,
    _classify_cached,
)


@settings(max_examples=200)
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode), st.booleans())
def test_wire_bytes_classify_as_their_decoded_text(sql: bytes, standard: bool) -> None:
    as_text = classify(sql.decode("utf-8", "replace"), standard_conforming_strings=standard)
    assert classify(sql, standard_conforming_strings=standard) == as_text
    assert classify(sql, standard_conforming_strings=standard) == as_text  # from the memo now


def test_the_quoting_setting_is_part_of_the_memo_key() -> None:
    sql = b"SELECT 'a\\'; DELETE FROM t; --'"  # a read then a DELETE, or (backslash escapes) one read
    assert classify(sql, standard_conforming_strings=True).kind is StatementKind.WRITE
    assert classify(sql, standard_conforming_strings=False).kind is StatementKind.READ
    assert classify(sql, standard_conforming_strings=True).kind is StatementKind.WRITE


def test_max_length_still_applies_to_wire_bytes() -> None:
    assert classify(b"SELECT 1", max_length=4).kind is StatementKind.UNKNOWN
    assert classify(b"SELECT 1", max_length=8).kind is StatementKind.READ


def test_the_memo_is_bounded() -> None:
    cached, size = _classify_cached, _CLASSIFY_CACHE_SIZE
    assert cached.cache_info().maxsize == size
    for n in range(size + 50):
        classify(f"SELECT {n} FROM memo_bound".encode())
    assert cached.cache_info().currsize == size
    long_text = b"SELECT 1 " + b" " * _CACHED_TEXT_MAX
    before = cached.cache_info()
    assert classify(long_text).kind is StatementKind.READ
    after = cached.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # too long to be memoised
