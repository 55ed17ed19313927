"""What the catalog says about relations: the query stays well-formed, rows become facts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.cache.relations import MAX_NAMES_PER_QUERY, parse_relation_rows, relations_query


def test_names_are_quoted_as_literals() -> None:
    sql = relations_query(["plain", "it's", 'x"y'])
    assert "'it''s'" in sql and "'plain'" in sql and "'x\"y'" in sql
    assert sql.count("'plain'") == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), max_size=100))
def test_any_names_give_one_bounded_query(names: list[str]) -> None:
    sql = relations_query(names)
    listed = sql[sql.index("c.relname IN (") :]
    assert listed.count("'") % 2 == 0  # every literal is closed, whatever the names hold
    assert len(set(names)) <= MAX_NAMES_PER_QUERY or listed.count("', '") < MAX_NAMES_PER_QUERY


def test_rows_become_facts_and_missing_names_are_never_cached() -> None:
    rows = [
        ("items", "t", "f", "[]"),
        ("parents", "t", "f", '["children"]'),
        ("audited", "t", "t", "[]"),
        ("a_view", "f", "t", "[]"),
    ]
    facts = parse_relation_rows(["items", "parents", "audited", "a_view", "cte_name"], rows)
    assert facts["items"].cacheable and facts["items"].write_effect == frozenset({"items"})
    assert facts["parents"].write_effect == frozenset({"parents", "children"})
    assert facts["audited"].cacheable and facts["audited"].write_effect is None  # triggers: all
    assert not facts["a_view"].cacheable and facts["a_view"].write_effect is None
    assert not facts["cte_name"].cacheable and facts["cte_name"].write_effect == frozenset({"cte_name"})


def test_odd_rows_are_ignored_or_taken_conservatively() -> None:
    facts = parse_relation_rows(["t"], [(None, "t", "f", "[]"), ("t", "t", "f", "not json"), ("x",)])
    assert facts["t"].write_effect is None
