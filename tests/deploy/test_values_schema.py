"""values.schema.json: Helm checks every install's values against it before rendering, so a
typo or a value the worker would refuse stops `helm install` with a line naming it."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from testkit.chart import CHART, RenderError, render, values_file

SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def test_the_schema_is_valid_and_the_defaults_meet_it() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(SCHEMA).validate(defaults)


def _undescribed(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values a closed object of the schema does not name."""
    missing = []
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key)
        if sub is None:
            missing.append(f"{prefix}{key}")
        elif isinstance(value, dict) and sub.get("additionalProperties") is False:
            missing += _undescribed(value, sub, f"{prefix}{key}.")
    return missing


def test_every_default_value_is_described_by_the_schema() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert _undescribed(defaults, SCHEMA) == []
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        assert _undescribed(yaml.safe_load(path.read_text(encoding="utf-8")), SCHEMA) == [], path


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        ({"autoscalling.enabled": False}, "autoscalling"),  # a typo at the top
        ({"worker.drainTimeot": 10}, "drainTimeot"),  # a typo inside
        ({"worker.config.CLARA_DRAIN_TIMEOUT": "10"}, "CLARA_DRAIN_TIMEOUT"),  # the chart's own
        ({"worker.config.CLARA_DATABASE_URL": "postgresql://x"}, "CLARA_DATABASE_URL"),  # a secret
        ({"worker.config.OPENAI_API_KEY": "sk-x"}, "OPENAI_API_KEY"),  # not a setting of ours
        ({"worker.drainTimeout": -1}, "drainTimeout"),
        ({"worker.jobShutdownTimeout": 0}, "jobShutdownTimeout"),
        ({"worker.healthPort": 70000}, "healthPort"),
        ({"livekit.url": "livekit.example.com"}, "url"),
        ({"livekit.url": "wss://user:pass@livekit.example.com"}, "url"),
        ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
        ({"persistence.retention.whenScaled": "Forget"}, "whenScaled"),
        ({"autoscaling.targetCPUUtilizationPercentage": 150}, "targetCPUUtilizationPercentage"),
    ],
)
def test_bad_values_stop_the_install_naming_them(sets: dict[str, object], named: str) -> None:
    with pytest.raises(RenderError, match="schema") as caught:
        render(values_file("minimal"), sets=sets)
    assert named in str(caught.value)


def test_every_value_is_in_the_operators_table() -> None:
    """docs/operations.md's table of the chart's values names each value (or the object it
    belongs to, for pass-through objects such as resources)."""
    docs = (CHART.parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    table = docs[docs.index("#### Kubernetes: the Helm chart") :]
    named = set(re.findall(r"`([A-Za-z][\w.]*)`", table))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
        found = []
        for key, value in node.items():
            path = f"{prefix}{key}"
            found += leaves(value, f"{path}.") if isinstance(value, dict) and value else [path]
        return found

    def documented(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in named for i in range(len(parts), 0, -1))

    assert [p for p in leaves(defaults) if not documented(p)] == []
