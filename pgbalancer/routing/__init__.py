"""Routing (pure): statement classification, the complexity score, routing decisions, the balancer.

What the proxy shell uses (details in router.py's docstring):

* ``classify(sql, policy=router.settings.functions, standard_conforming_strings=...)`` ->
  ``Classification`` for a Query or a Parse; ``combine([...])`` for an extended batch;
* ``Router(RoutingSettings.from_config(config), rng=random.Random())``, one per worker;
  ``router.configure(...)`` on reload;
* per client a ``SessionRouting()``; per batch ``router.route(classification, session, view,
  now, attached=...) -> RouteDecision``, then ``router.on_ready(session, status, now,
  commit_lsn=...)`` and ``router.observe(decision, latency, ok, now)`` for reads;
* ``router.statistics(now).as_dict()`` for the REST API and bctl.

Nothing here does I/O, reads a clock or imports trio; time is always passed in.
"""

from pgbalancer.routing.balancer import (
    Algorithm,
    Balancer,
    BalancerSettings,
    BalancerStatistics,
    NodeStatistics,
    QueryClass,
    ReadKind,
)
from pgbalancer.routing.classify import (
    Classification,
    FunctionPolicy,
    RouteHint,
    StatementInfo,
    StatementKind,
    TransactionOp,
    classify,
    combine,
)
from pgbalancer.routing.complexity import ComplexityBucket, QueryFeatures, complexity_score
from pgbalancer.routing.router import (
    RouteAction,
    RouteDecision,
    Router,
    RouteReason,
    RoutingSettings,
    SessionRouting,
    TxnPhase,
    parse_lsn,
)

__all__ = [
    "Algorithm",
    "Balancer",
    "BalancerSettings",
    "BalancerStatistics",
    "Classification",
    "ComplexityBucket",
    "FunctionPolicy",
    "NodeStatistics",
    "QueryClass",
    "QueryFeatures",
    "ReadKind",
    "RouteAction",
    "RouteDecision",
    "RouteHint",
    "RouteReason",
    "Router",
    "RoutingSettings",
    "SessionRouting",
    "StatementInfo",
    "StatementKind",
    "TransactionOp",
    "TxnPhase",
    "classify",
    "combine",
    "complexity_score",
    "parse_lsn",
]
