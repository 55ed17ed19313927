"""The topic JSON Schemas: docs/events.md shows exactly them, and the small validator really rejects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pgbalancer.events import payloads
from pgbalancer.events.schemas import BACKEND, SCHEMAS, schema_for_topic, validate

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
_SECTION = re.compile(r"^### `(?P<topic>[^`]+)`\n.*?```json\n(?P<schema>.*?)\n```", re.MULTILINE | re.DOTALL)


def documented_schemas() -> dict[str, object]:
    return {match["topic"]: json.loads(match["schema"]) for match in _SECTION.finditer(DOCS.read_text())}


def test_docs_show_every_topic_with_the_schema_the_code_uses() -> None:
    assert documented_schemas() == SCHEMAS, "regenerate with: python -m pgbalancer.events.schemas"


def test_every_topic_constant_has_a_schema() -> None:
    topics = {
        value
        for name, value in vars(payloads).items()
        if name.startswith("TOPIC_") and name != "TOPIC_PREFIX"
    }
    assert topics == set(SCHEMAS)


def test_a_concrete_node_topic_uses_the_node_status_schema() -> None:
    assert schema_for_topic("pgbalancer/nodes/12/status") is SCHEMAS[payloads.TOPIC_NODE_STATUS]
    with pytest.raises(KeyError, match="no schema"):
        schema_for_topic("pgbalancer/nodes/12/other")


GOOD_BACKEND = {
    "backend_id": 1,
    "host": "db1",
    "port": 5432,
    "role": "standby",
    "status": "up",
    "weight": 1.0,
    "lag_bytes": None,
    "lag_seconds": 0.5,
    "health_score": 1,
    "replay_lsn": None,
    "detached": False,
}


def test_a_good_backend_conforms() -> None:
    assert validate(GOOD_BACKEND, BACKEND) == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"port": "5432"}, "$.port: '5432' is not of type integer"),
        ({"port": 70000}, "above the maximum"),
        ({"detached": 0}, "$.detached: 0 is not of type boolean"),
        ({"backend_id": True}, "$.backend_id: True is not of type integer"),
        ({"role": "leader"}, "is not one of"),
        ({"lag_seconds": -1}, "below the minimum"),
        ({"health_score": 1.5}, "above the maximum"),
        ({"extra": 1}, "unexpected property 'extra'"),
    ],
)
def test_the_validator_rejects(change: dict[str, object], complaint: str) -> None:
    problems = validate({**GOOD_BACKEND, **change}, BACKEND)
    assert any(complaint in problem for problem in problems), problems


def test_missing_fields_and_patterns_are_reported() -> None:
    document = payloads.cluster_config((), (), (), payloads.Stamp("n", 0, "id", 0)).decoded()
    schema = SCHEMAS[payloads.TOPIC_CLUSTER_CONFIG]
    assert validate(document, schema) == []
    del document["changed"]
    document["ts"] = "yesterday"
    document["event"] = "other"
    problems = validate(document, schema)
    assert "$: missing 'changed'" in problems
    assert any(p.startswith("$.ts: 'yesterday' does not match") for p in problems)
    assert any(p.startswith("$.event: 'other' is not") for p in problems)


def test_the_validator_refuses_keywords_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="oneOf"):
        validate({}, {"oneOf": []})
