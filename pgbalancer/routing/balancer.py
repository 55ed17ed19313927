"""The balancer: which of the candidate nodes serves a read, and what it learns from the answer.

Strategies (``load_balance_algorithm``):

* ``adaptive`` — a bandit. Per node and per query class (complexity bucket x read kind) it keeps
  exponentially weighted estimates of latency and error rate, plus the node's reads in flight
  and the load (reads in flight) its latencies were measured under. A node's latency for a class
  is its estimate, shrunk toward a prior while confidence is low (the class's cluster mean
  scaled by how fast the node is overall), divided by the load it was measured under; its score
  is ``weight * health * (1 - error)**2 / latency``, divided at each pick by ``1 + f * (reads in
  flight + 1)`` (so load counts once, not twice). With probability ε it explores (a node drawn
  by weight, failing nodes less), otherwise it draws a node with probability ∝ score**8 (score-
  weighted, not argmax, so equal nodes share and no node is stampeded; sharp enough that
  concurrent reads spread like least_connections). ε starts at ``ai_exploration_rate`` and
  decays toward ``ai_exploration_floor`` as the class gathers samples; besides ε, a node not
  picked for a second (and not failing) gets the next read, so every node is observed at any
  rate. Confidence decays with a half-life when a node goes unobserved, so its estimates fall
  back to the prior and it is tried again: a slow node that recovers wins its traffic back.
  Errors and timeouts teach at once (a larger learning rate, and a timeout's latency counts), so
  a failing node loses its share within a few reads. Scores are cached per class: rebuilt every
  0.25 s (or when the candidates change, or after an error), and a node's entry is refreshed by
  its own feedback, so a pick allocates nothing.
* ``round_robin`` — rotate over the candidates in node order.
* ``weighted`` — random, proportional to ``backend_weightN``.
* ``least_connections`` — fewest reads in flight per unit of weight; ties rotate.
* ``random`` — uniform.

Every strategy counts reads in flight and learns the same estimates, so ``statistics()``
shows latencies whatever the algorithm. Candidates are chosen by the router (up, weight >
0, healthy enough, not lagging, read-your-writes); the balancer only ranks them.

Contract with the caller: each ``pick`` (or ``started``) is followed by exactly one
``observe`` (or ``abandon``) for that node. It is deterministic under the ``random.Random``
it is given. Pure: no I/O, no clock (``now`` is passed in), never blocks.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from pgbalancer.ha.view import BackendState
from pgbalancer.routing.complexity import ComplexityBucket

_PRIOR_WEIGHT = 2.0  # pseudo-samples of prior mixed into every estimate
_RATE_HALF_LIFE = 10.0  # seconds: window of the decisions-per-second and traffic-share figures
_ERROR_EXPONENT = 2
_PROBE_AFTER_S = 1.0  # a candidate not picked for this long gets the next read, whatever the rate
_REFRESH_S = 0.25  # seconds between full rebuilds of a class's cached scores (feedback refreshes one node)
_LOAD_FACTOR = {ComplexityBucket.LIGHT: 1.0, ComplexityBucket.MEDIUM: 1.5, ComplexityBucket.HEAVY: 2.0}


class Algorithm(enum.StrEnum):
    """Same values as config.LoadBalanceAlgorithm."""

    ADAPTIVE = "adaptive"
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"
    RANDOM = "random"


class ReadKind(enum.StrEnum):
    STATEMENT = "statement"  # an autocommit read
    TRANSACTION = "transaction"  # a read inside a read-only (or lazily begun) transaction


@dataclass(frozen=True, slots=True)
class QueryClass:
    """What the balancer learns separately: a node can be quick at point reads and slow at reports."""

    bucket: ComplexityBucket
    kind: ReadKind = ReadKind.STATEMENT

    def __str__(self) -> str:
        return f"{self.bucket}/{self.kind}"


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    algorithm: Algorithm = Algorithm.ADAPTIVE
    learning_rate: float = 0.1  # ai_learning_rate
    exploration_rate: float = 0.2  # ai_exploration_rate: ε with no confidence yet
    exploration_floor: float = 0.005  # ai_exploration_floor: ε never goes below (capped at the rate)
    error_learning_rate: float = 0.5  # how hard one error or timeout moves the error estimate
    memory_half_life: float = 30.0  # seconds for an unobserved estimate to lose half its weight
    confidence_scale: float = 50.0  # class samples at which ε is halfway between rate and floor
    sharpness: float = 8.0  # exploitation draws ∝ score ** sharpness (in-flight load divides the score)


def _decay(elapsed: float, half_life: float) -> float:
    # ``0.0 if elapsed < 0.0 else elapsed`` is max(elapsed, 0.0) (NaN included) without a call.
    return 0.5 ** ((0.0 if elapsed < 0.0 else elapsed) / half_life) if half_life > 0 else 1.0


@dataclass(slots=True)
class _Estimate:
    """Exponentially weighted latency (seconds) and error rate, with a decaying sample count."""

    latency: float = 0.0
    error: float = 0.0
    samples: float = 0.0
    updated_at: float = 0.0

    def confidence(self, now: float, half_life: float) -> float:
        return self.samples * _decay(now - self.updated_at, half_life)

    def learn(self, latency: float, ok: bool, now: float, settings: BalancerSettings) -> None:
        # Runs twice per read (class and overall): self.confidence() and max() written out.
        elapsed = now - self.updated_at
        half_life = settings.memory_half_life
        confidence = self.samples * (
            0.5 ** ((0.0 if elapsed < 0.0 else elapsed) / half_life) if half_life > 0 else 1.0
        )
        # A rarely observed estimate averages its few samples; a busy one follows the learning rate.
        rate = settings.learning_rate
        averaging = 1.0 / (confidence + 1.0)
        if averaging > rate:
            rate = averaging
        if ok:
            self.latency += rate * (latency - self.latency)
            self.error -= rate * self.error
        else:
            self.error += max(settings.error_learning_rate, rate) * (1.0 - self.error)
            if latency > self.latency:  # a timeout says "slow"; a fast refusal must not say "fast"
                self.latency += max(rate, settings.error_learning_rate) * (latency - self.latency)
        self.samples = confidence + 1.0
        self.updated_at = now


@dataclass(slots=True)
class _Node:
    node_id: int
    weight: float = 1.0
    health: float = 1.0
    in_flight: int = 0
    overall: _Estimate = field(default_factory=_Estimate)
    classes: dict[QueryClass, _Estimate] = field(default_factory=dict)
    picks: int = 0
    recent_picks: float = 0.0  # decayed with _RATE_HALF_LIFE
    recent_at: float = 0.0
    score: float = 0.0  # relative score at the last refresh (1.0 = the best candidate then)
    load: float = 1.0  # EWMA of this node's reads in flight while one finished (itself included)

    def estimate(self, query_class: QueryClass) -> _Estimate:
        found = self.classes.get(query_class)
        if found is None:
            found = self.classes[query_class] = _Estimate()
        return found

    def recent(self, now: float) -> float:
        return self.recent_picks * _decay(now - self.recent_at, _RATE_HALF_LIFE)


@dataclass(slots=True)
class _ClassTable:
    """The adaptive scores of one query class over one candidate set, cached between picks.

    ``base[i]`` is node i's score without its current load: ``weight * health * (1 - error)**2 /
    (latency / (1 + f * load seen))``, i.e. per unit of the load its latency was measured under. A
    pick only divides by ``1 + f * (in_flight + 1)``. Rebuilt in full (priors, decay, ε) every
    ``_REFRESH_S`` or when the candidates change; one node's entry is refreshed on its feedback.
    """

    nodes: list[_Node]
    weights: list[float]  # (node_id, weight, health) of the candidates the table was built for
    health: list[float]
    base: list[float]
    priors: list[float]  # each node's prior latency for the class at the last rebuild
    explore: list[float]  # exploration draw weights
    draw: list[float]  # scratch for the exploitation draw (reused: no allocation per pick)
    epsilon: float
    built_at: float

    def matches(self, candidates: Sequence[BackendState]) -> bool:
        nodes = self.nodes
        if len(candidates) != len(nodes):
            return False
        for index, candidate in enumerate(candidates):
            if (
                candidate.node_id != nodes[index].node_id
                or candidate.weight != self.weights[index]
                or candidate.health_score != self.health[index]
            ):
                return False
        return True


@dataclass(frozen=True, slots=True)
class ClassEstimate:
    query_class: str
    latency_ms: float
    error_rate: float
    samples: float


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    node_id: int
    score: float  # relative score at the last adaptive rebuild it was a candidate in (1.0 = best)
    share: float  # share of recent picks (decayed with a 10 s half-life)
    picks: int
    in_flight: int
    latency_ms: float
    error_rate: float
    samples: float
    classes: tuple[ClassEstimate, ...]


@dataclass(frozen=True, slots=True)
class BalancerStatistics:
    algorithm: str
    exploration_rate: float  # ε at the last adaptive pick
    decisions: int
    decisions_per_second: float
    nodes: tuple[NodeStatistics, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, for the REST API and bctl."""
        return {
            "algorithm": self.algorithm,
            "exploration_rate": round(self.exploration_rate, 4),
            "decisions": self.decisions,
            "decisions_per_second": round(self.decisions_per_second, 2),
            "nodes": [
                {
                    "node_id": node.node_id,
                    "score": round(node.score, 4),
                    "share": round(node.share, 4),
                    "picks": node.picks,
                    "in_flight": node.in_flight,
                    "latency_ms": round(node.latency_ms, 3),
                    "error_rate": round(node.error_rate, 4),
                    "samples": round(node.samples, 1),
                    "classes": [
                        {
                            "class": estimate.query_class,
                            "latency_ms": round(estimate.latency_ms, 3),
                            "error_rate": round(estimate.error_rate, 4),
                            "samples": round(estimate.samples, 1),
                        }
                        for estimate in node.classes
                    ],
                }
                for node in self.nodes
            ],
        }


class Balancer:
    """Ranks candidate nodes for reads; one per proxy worker, shared by its sessions."""

    def __init__(self, settings: BalancerSettings | None = None, rng: random.Random | None = None) -> None:
        self.settings = settings or BalancerSettings()
        self._rng = rng or random.Random()
        self._nodes: dict[int, _Node] = {}
        self._last_node_id: int | None = None  # round-robin position
        self._decisions = 0
        self._recent_decisions = 0.0
        self._recent_at = 0.0
        self._first_decision_at: float | None = None
        self._epsilon = self.settings.exploration_rate
        self._tables: dict[QueryClass, _ClassTable] = {}

    def configure(self, settings: BalancerSettings) -> None:
        """Apply reloaded settings; what was learned is kept."""
        self.settings = settings
        self._tables.clear()

    # ---- choosing

    def pick(
        self,
        candidates: Sequence[BackendState],
        query_class: QueryClass,
        now: float,
        *,
        in_flight: bool = True,
    ) -> int:
        """The node_id that serves this read; counts it in flight unless told not to (a pick for a
        whole transaction, whose reads are counted one by one with ``started``). ``candidates``
        must not be empty."""
        if not candidates:
            raise ValueError("the balancer needs at least one candidate node")
        if len(candidates) == 1:
            chosen = self._refresh(candidates[0])
        elif self.settings.algorithm is Algorithm.ADAPTIVE:
            chosen = self._adaptive(candidates, query_class, now)
        else:
            nodes = [self._refresh(candidate) for candidate in sorted(candidates, key=lambda c: c.node_id)]
            chosen = self._choose(nodes, query_class, now)
        self._count_pick(chosen, now)
        if in_flight:
            self.started(chosen.node_id)
        return chosen.node_id

    def started(self, node_id: int) -> None:
        """A read went to ``node_id`` without a pick (e.g. inside a pinned transaction)."""
        self._node(node_id).in_flight += 1

    def _choose(self, nodes: list[_Node], query_class: QueryClass, now: float) -> _Node:
        algorithm = self.settings.algorithm
        if algorithm is Algorithm.WEIGHTED:
            return self._draw(nodes, [node.weight for node in nodes])
        if algorithm is Algorithm.LEAST_CONNECTIONS:
            least = min(node.in_flight / node.weight for node in nodes)
            return self._next_in_turn([node for node in nodes if node.in_flight / node.weight == least])
        if algorithm is Algorithm.RANDOM:
            return nodes[self._rng.randrange(len(nodes))]
        return self._next_in_turn(nodes)

    def _next_in_turn(self, nodes: list[_Node]) -> _Node:
        """Round robin in node order, resuming after the node chosen last."""
        last = self._last_node_id
        following = [node for node in nodes if last is None or node.node_id > last]
        return following[0] if following else nodes[0]

    def _draw(self, nodes: list[_Node], weights: list[float]) -> _Node:
        total = sum(weights)
        if not total > 0 or not math.isfinite(total):
            return nodes[self._rng.randrange(len(nodes))]
        point = self._rng.random() * total
        for node, weight in zip(nodes, weights, strict=True):
            point -= weight
            if point < 0:
                return node
        return nodes[-1]

    def _adaptive(self, candidates: Sequence[BackendState], query_class: QueryClass, now: float) -> _Node:
        """ε: a node drawn by weight (failing nodes less); else a draw ∝ (base / (1 + f * load))**sharpness,
        the load being the node's reads in flight plus this one. Scores come from the class's cached
        table, so a pick costs a few multiplications per candidate and allocates nothing."""
        table = self._tables.get(query_class)
        if table is None or now - table.built_at >= _REFRESH_S or not table.matches(candidates):
            table = self._rebuild(candidates, query_class, now)
        # A node not picked for a second gets this read (unless it is failing: errors teach, not
        # probes), so every node is observed at any rate and a recovery is seen in seconds. A node
        # never picked yet is ε's to find (ε is high while the balancer knows little).
        for index, node in enumerate(table.nodes):
            if (
                node.picks
                and now - node.recent_at >= _PROBE_AFTER_S
                and node.in_flight == 0
                and table.explore[index] > 0.5 * node.weight
            ):
                return node
        rng = self._rng
        if rng.random() < table.epsilon:
            return self._draw(table.nodes, table.explore)
        load_factor = _LOAD_FACTOR[query_class.bucket]
        sharpness = self.settings.sharpness
        draw, base, nodes = table.draw, table.base, table.nodes
        total = 0.0
        for index, node in enumerate(nodes):
            weight = (base[index] / (1.0 + load_factor * (node.in_flight + 1))) ** sharpness
            draw[index] = weight
            total += weight
        if not total > 0 or not math.isfinite(total):
            return nodes[rng.randrange(len(nodes))]
        point = rng.random() * total
        for index, weight in enumerate(draw):
            point -= weight
            if point < 0:
                return nodes[index]
        return nodes[-1]

    def _rebuild(
        self, candidates: Sequence[BackendState], query_class: QueryClass, now: float
    ) -> _ClassTable:
        """The class's table from scratch: ε, priors, every node's base score (decayed to ``now``)."""
        settings = self.settings
        nodes = [self._refresh(candidate) for candidate in candidates]
        half_life = settings.memory_half_life
        class_confidence = [node.estimate(query_class).confidence(now, half_life) for node in nodes]
        floor = min(settings.exploration_floor, settings.exploration_rate)
        scale = settings.confidence_scale
        epsilon = floor + (settings.exploration_rate - floor) * scale / (scale + sum(class_confidence))
        self._epsilon = epsilon
        errors = [self._error(node, query_class, now) for node in nodes]
        priors = self._priors(nodes, query_class, class_confidence, now)
        load_factor = _LOAD_FACTOR[query_class.bucket]
        base = [
            _base_score(
                node, error, _shrunk(node.estimate(query_class).latency, confidence, prior), load_factor
            )
            for node, error, confidence, prior in zip(nodes, errors, class_confidence, priors, strict=True)
        ]
        best = max(base)
        for node, score in zip(nodes, base, strict=True):
            node.score = score / best if best > 0 else 0.0
        table = _ClassTable(
            nodes=nodes,
            weights=[candidate.weight for candidate in candidates],
            health=[candidate.health_score for candidate in candidates],
            base=base,
            priors=priors,
            explore=[node.weight * (1.0 - error) for node, error in zip(nodes, errors, strict=True)],
            draw=[0.0] * len(nodes),
            epsilon=epsilon,
            built_at=now,
        )
        self._tables[query_class] = table
        return table

    def _priors(
        self, nodes: list[_Node], query_class: QueryClass, class_confidence: list[float], now: float
    ) -> list[float]:
        """Each node's prior latency for this class, toward which its estimate is shrunk while its
        confidence is low: the class's cluster mean scaled by how the node compares overall, so a
        node known to be slow is presumed slow for a class it has not served yet."""
        ratios = self._speed_ratios(nodes, now)
        class_mean = _weighted_mean([node.estimate(query_class).latency for node in nodes], class_confidence)
        return [(class_mean if class_mean is not None else 1.0) * ratio for ratio in ratios]

    def _speed_ratios(self, nodes: list[_Node], now: float) -> list[float]:
        """Each node's overall latency relative to the candidates' mean, shrunk toward 1."""
        half_life = self.settings.memory_half_life
        confidence = [node.overall.confidence(now, half_life) for node in nodes]
        mean = _weighted_mean([node.overall.latency for node in nodes], confidence)
        if mean is None or mean <= 0:
            return [1.0] * len(nodes)
        return [
            (weight * (node.overall.latency / mean) + _PRIOR_WEIGHT) / (weight + _PRIOR_WEIGHT)
            for node, weight in zip(nodes, confidence, strict=True)
        ]

    def _error(self, node: _Node, query_class: QueryClass, now: float) -> float:
        """Error estimate shrunk toward 0 by confidence; node-wide errors count for every class."""
        half_life = self.settings.memory_half_life
        worst = 0.0
        for estimate in (node.estimate(query_class), node.overall):
            confidence = estimate.confidence(now, half_life)
            worst = max(worst, confidence * estimate.error / (confidence + _PRIOR_WEIGHT))
        return min(worst, 1.0)

    # ---- learning

    def observe(self, node_id: int, query_class: QueryClass, latency: float, ok: bool, now: float) -> None:
        """The read sent to ``node_id`` finished: ``latency`` seconds; ``ok`` False for a failure of
        the node (connection lost, timeout, recovery conflict), not for the client's own SQL error."""
        node = self._nodes.get(node_id) or self._node(node_id)
        in_flight = node.in_flight
        load = in_flight if in_flight > 1 else 1  # the reads it shared the node with, itself included
        node.in_flight = in_flight - 1 if in_flight > 0 else 0
        if not (math.isfinite(latency) and latency >= 0):
            return
        settings = self.settings
        estimate = node.estimate(query_class)
        estimate.learn(latency, ok, now, settings)
        overall = node.overall
        overall.learn(latency, ok, now, settings)
        rate = 1.0 / overall.samples
        if not rate > settings.learning_rate:  # max(learning_rate, 1 / samples), written out
            rate = settings.learning_rate
        node.load += rate * (load - node.load)
        if not ok:
            for stale in self._tables.values():
                stale.built_at = -math.inf  # errors teach every class at once: rebuild on the next pick
            return
        if not self._tables:  # nothing cached to refresh (e.g. load balancing off: no picks)
            return
        table = self._tables.get(query_class)
        if table is not None and settings.algorithm is Algorithm.ADAPTIVE:
            for index, member in enumerate(table.nodes):
                if member is node:  # refresh this node's entry from what it just taught
                    error = self._error(node, query_class, now)
                    shrunk = _shrunk(estimate.latency, estimate.samples, table.priors[index])
                    table.base[index] = _base_score(node, error, shrunk, _LOAD_FACTOR[query_class.bucket])
                    break

    def abandon(self, node_id: int) -> None:
        """A read counted in flight ended without an outcome worth learning (the client left)."""
        node = self._node(node_id)
        node.in_flight = max(0, node.in_flight - 1)

    # ---- bookkeeping

    def _node(self, node_id: int) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(node_id)
        return node

    def _refresh(self, candidate: BackendState) -> _Node:
        node = self._node(candidate.node_id)
        node.weight = candidate.weight if candidate.weight > 0 else 1e-9
        node.health = min(max(candidate.health_score, 0.0), 1.0)
        return node

    def _count_pick(self, node: _Node, now: float) -> None:
        self._last_node_id = node.node_id
        node.picks += 1
        node.recent_picks = node.recent(now) + 1.0
        node.recent_at = now
        self._decisions += 1
        if self._first_decision_at is None:
            self._first_decision_at = now
        self._recent_decisions = self._recent_decisions * _decay(now - self._recent_at, _RATE_HALF_LIFE) + 1.0
        self._recent_at = now

    def statistics(self, now: float) -> BalancerStatistics:
        """Per-node score, estimates, share of recent traffic, and decisions per second."""
        half_life = self.settings.memory_half_life
        recent_total = sum(node.recent(now) for node in self._nodes.values())
        recent_decisions = self._recent_decisions * _decay(now - self._recent_at, _RATE_HALF_LIFE)
        nodes = tuple(
            NodeStatistics(
                node_id=node.node_id,
                score=node.score,
                share=node.recent(now) / recent_total if recent_total > 0 else 0.0,
                picks=node.picks,
                in_flight=node.in_flight,
                latency_ms=node.overall.latency * 1000.0,
                error_rate=node.overall.error,
                samples=node.overall.confidence(now, half_life),
                classes=tuple(
                    ClassEstimate(
                        str(query_class), est.latency * 1000.0, est.error, est.confidence(now, half_life)
                    )
                    for query_class, est in sorted(node.classes.items(), key=lambda item: str(item[0]))
                    if est.samples > 0
                ),
            )
            for node in sorted(self._nodes.values(), key=lambda n: n.node_id)
        )
        return BalancerStatistics(
            algorithm=str(self.settings.algorithm),
            exploration_rate=self._epsilon,
            decisions=self._decisions,
            decisions_per_second=self._rate(recent_decisions, now),
            nodes=nodes,
        )

    def _rate(self, recent_decisions: float, now: float) -> float:
        """A steady rate r keeps the decayed count at r * half_life / ln 2 (less while warming up)."""
        if self._first_decision_at is None:
            return 0.0
        warmed = 1.0 - _decay(now - self._first_decision_at, _RATE_HALF_LIFE)
        if warmed <= 0.0:
            return 0.0
        return recent_decisions * math.log(2) / _RATE_HALF_LIFE / warmed


def _shrunk(estimate: float, confidence: float, prior: float) -> float:
    return max((confidence * estimate + _PRIOR_WEIGHT * prior) / (confidence + _PRIOR_WEIGHT), 1e-6)


def _base_score(node: _Node, error: float, latency: float, load_factor: float) -> float:
    """Score per unit of load: the latency is divided by the load it was measured under, so a busy
    node is not penalised twice (once in its latency, once again for its reads in flight)."""
    return (
        node.weight
        * node.health
        * (1.0 - error) ** _ERROR_EXPONENT
        * (1.0 + load_factor * node.load)
        / latency
    )


def _weighted_mean(values: list[float], weights: list[float]) -> float | None:
    total = sum(weights)
    if total <= 1e-9:
        return None
    return sum(value * weight for value, weight in zip(values, weights, strict=True)) / total
