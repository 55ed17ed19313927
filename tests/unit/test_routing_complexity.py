"""The complexity score: bounded, monotone, and ordering real statements sensibly."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.routing.classify import classify
from pgbalancer.routing.complexity import (
    MAX_SCORE,
    ComplexityBucket,
    QueryFeatures,
    complexity_score,
)

COUNTS = ("joins", "subqueries", "aggregates", "windows", "order_bys", "set_operations", "ctes")
MORE_IS_HEAVIER_FLAGS = ("group_by", "distinct", "recursive", "has_from")

features_strategy = st.builds(
    QueryFeatures,
    **{name: st.integers(min_value=-5, max_value=1000) for name in COUNTS},
    **{name: st.booleans() for name in (*MORE_IS_HEAVIER_FLAGS, "has_where", "has_limit")},
)
rows_strategy = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**12).map(float)
)


@given(features_strategy, rows_strategy)
def test_score_is_bounded(features: QueryFeatures, rows: float | None) -> None:
    assert 0 <= complexity_score(features, rows) <= MAX_SCORE


@given(features_strategy, st.sampled_from(COUNTS), st.integers(1, 50))
def test_more_of_anything_never_lowers_the_score(features: QueryFeatures, name: str, extra: int) -> None:
    more = dataclasses.replace(features, **{name: max(getattr(features, name), 0) + extra})
    assert complexity_score(more) >= complexity_score(features)


@given(features_strategy, st.sampled_from(MORE_IS_HEAVIER_FLAGS))
def test_heavier_flags_never_lower_the_score(features: QueryFeatures, name: str) -> None:
    assert complexity_score(dataclasses.replace(features, **{name: True})) >= complexity_score(
        dataclasses.replace(features, **{name: False})
    )


@given(features_strategy, st.sampled_from(("has_where", "has_limit")))
def test_a_where_or_a_limit_never_raises_the_score(features: QueryFeatures, name: str) -> None:
    assert complexity_score(dataclasses.replace(features, **{name: True})) <= complexity_score(
        dataclasses.replace(features, **{name: False})
    )


@given(features_strategy, st.floats(0, 1e15), st.floats(0, 1e15))
def test_more_estimated_rows_never_lower_the_score(features: QueryFeatures, a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert complexity_score(features, low) <= complexity_score(features, high)


def test_everything_at_once_reaches_the_maximum() -> None:
    heavy = QueryFeatures(
        joins=10,
        subqueries=10,
        aggregates=10,
        group_by=True,
        windows=10,
        order_bys=10,
        distinct=True,
        set_operations=3,
        ctes=3,
        recursive=True,
        has_from=True,
    )
    assert complexity_score(heavy, estimated_rows=1e12) == MAX_SCORE
    assert complexity_score(QueryFeatures()) == 0


@given(st.integers(-10, 200), st.integers(-10, 200))
def test_buckets_follow_the_score(a: int, b: int) -> None:
    order = list(ComplexityBucket)
    low, high = sorted((a, b))
    assert order.index(ComplexityBucket.of(low)) <= order.index(ComplexityBucket.of(high))


@pytest.mark.parametrize(
    ("lighter", "heavier"),
    [
        ("SELECT 1", "SELECT * FROM t WHERE id = 1"),
        ("SELECT * FROM t WHERE id = 1 LIMIT 1", "SELECT * FROM t"),
        ("SELECT * FROM t WHERE id = 1", "SELECT * FROM t JOIN u ON u.id = t.id WHERE t.id = 1"),
        ("SELECT a FROM t WHERE x = 1", "SELECT a, count(*) FROM t WHERE x = 1 GROUP BY a"),
        ("SELECT a FROM t WHERE x = 1", "SELECT a, rank() OVER (ORDER BY b) FROM t WHERE x = 1"),
        ("SELECT a FROM t, u WHERE t.id = u.id", "SELECT a FROM t, u, v, w WHERE t.id = u.id"),
        ("SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x IN (SELECT x FROM u WHERE y IN (SELECT 1))"),
    ],
)
def test_real_statements_rank_sensibly(lighter: str, heavier: str) -> None:
    assert classify(lighter).complexity < classify(heavier).complexity


def test_buckets_of_real_statements() -> None:
    assert (
        ComplexityBucket.of(classify("SELECT * FROM users WHERE id = $1").complexity)
        is ComplexityBucket.LIGHT
    )
    report = classify(
        "WITH s AS (SELECT customer_id, sum(total) AS t FROM orders GROUP BY customer_id) "
        "SELECT c.name, s.t, rank() OVER (ORDER BY s.t DESC), "
        "dense_rank() OVER (PARTITION BY c.region ORDER BY s.t) "
        "FROM customers c JOIN s ON s.customer_id = c.id JOIN regions r ON r.id = c.region "
        "JOIN managers m ON m.region = r.id ORDER BY 2 DESC"
    )
    assert ComplexityBucket.of(report.complexity) is ComplexityBucket.HEAVY
