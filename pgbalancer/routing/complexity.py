"""How expensive a read looks, from its shape: a bounded 0-100 complexity score.

The classifier (classify.py) counts the features of a statement in the same single pass
that classifies it; this module turns those counts into a score and a coarse bucket that
the balancer learns per node (a node can be fast for point reads and slow for reports).

The score is a sum of capped components, so it is bounded (0 <= score <= 100) and monotone:
one more join, subquery, aggregate, window, sort or estimated row never lowers it, and
adding a WHERE or a LIMIT never raises it. The weights are judgement, not measurement;
the balancer learns real latencies per bucket, so they only need to separate "point read"
from "report".

Pure: no I/O, no clock, never raises on any counts (negative counts count as zero).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class QueryFeatures:
    """Shape of one statement (or of a whole simple-Query batch: counts add up)."""

    joins: int = 0  # JOIN keywords plus extra comma-separated FROM items
    subqueries: int = 0  # parenthesised SELECT / WITH / VALUES / TABLE
    aggregates: int = 0  # calls of known aggregate functions
    group_by: bool = False
    windows: int = 0  # OVER clauses
    order_bys: int = 0
    distinct: bool = False
    set_operations: int = 0  # UNION / INTERSECT / EXCEPT
    ctes: int = 0
    recursive: bool = False
    has_from: bool = False  # the top-level query reads a table (SELECT 1 does not)
    has_where: bool = False  # ... and filters it at the top level
    has_limit: bool = False  # ... and bounds its result at the top level

    def merged(self, other: QueryFeatures) -> QueryFeatures:
        """Features of two statements sent together: counts add, a missing WHERE in either counts."""
        return QueryFeatures(
            joins=self.joins + other.joins,
            subqueries=self.subqueries + other.subqueries,
            aggregates=self.aggregates + other.aggregates,
            group_by=self.group_by or other.group_by,
            windows=self.windows + other.windows,
            order_bys=self.order_bys + other.order_bys,
            distinct=self.distinct or other.distinct,
            set_operations=self.set_operations + other.set_operations,
            ctes=self.ctes + other.ctes,
            recursive=self.recursive or other.recursive,
            has_from=self.has_from or other.has_from,
            has_where=_filtered(self) and _filtered(other),
            has_limit=_bounded(self) and _bounded(other),
        )


def _filtered(features: QueryFeatures) -> bool:
    return features.has_where or not features.has_from


def _bounded(features: QueryFeatures) -> bool:
    return features.has_limit or not features.has_from


NO_FEATURES = QueryFeatures()

# (points per occurrence, cap): the caps sum to 100 with the row estimate, so the total is bounded.
_JOINS = (8, 24)
_SUBQUERIES = (6, 12)
_AGGREGATES = (4, 8)
_GROUP_BY = 4
_WINDOWS = (6, 10)
_SORTS = (4, 8)  # ORDER BY, DISTINCT and set operations all sort or hash the whole input
_RECURSIVE = 6
_NO_WHERE = 8
_NO_LIMIT = 4
_ROWS_PER_DECADE = 3  # estimated rows: points per factor of ten
_ROWS_CAP = 16


def _capped(count: int, rule: tuple[int, int]) -> int:
    points, cap = rule
    return min(max(count, 0) * points, cap)


def complexity_score(features: QueryFeatures, estimated_rows: float | None = None) -> int:
    """0 (a point lookup, ``SELECT 1``) .. 100 (many joins, windows, sorts over a huge scan)."""
    score = (
        _capped(features.joins, _JOINS)
        + _capped(features.subqueries + features.ctes, _SUBQUERIES)
        + _capped(features.aggregates, _AGGREGATES)
        + (_GROUP_BY if features.group_by else 0)
        + _capped(features.windows, _WINDOWS)
        + _capped(features.order_bys + int(features.distinct) + features.set_operations, _SORTS)
        + (_RECURSIVE if features.recursive else 0)
        + (_NO_WHERE if features.has_from and not features.has_where else 0)
        + (_NO_LIMIT if features.has_from and not features.has_limit else 0)
        + _rows_points(estimated_rows)
    )
    return max(0, min(MAX_SCORE, score))


def _rows_points(estimated_rows: float | None) -> int:
    if estimated_rows is None or math.isnan(estimated_rows) or estimated_rows <= 1:
        return 0
    if math.isinf(estimated_rows):
        return _ROWS_CAP
    return min(int(math.log10(estimated_rows) * _ROWS_PER_DECADE), _ROWS_CAP)


class ComplexityBucket(enum.StrEnum):
    """Coarse classes the balancer learns separately."""

    LIGHT = "light"  # point reads, small lookups
    MEDIUM = "medium"  # a few joins or an aggregate
    HEAVY = "heavy"  # reports: many joins, windows, sorts over scans

    @classmethod
    def of(cls, score: int) -> ComplexityBucket:
        if score < LIGHT_BELOW:
            return cls.LIGHT
        if score < MEDIUM_BELOW:
            return cls.MEDIUM
        return cls.HEAVY


LIGHT_BELOW = 10  # a full scan without WHERE (12) is already medium
MEDIUM_BELOW = 35
