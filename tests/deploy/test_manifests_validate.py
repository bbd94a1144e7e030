"""Every manifest the chart renders, for every value set in its ci/ folder, against the
strict Kubernetes schemas of the oldest Kubernetes the chart supports and the newest the
pinned schema package ships (testkit/kube_schemas.py): a misspelt or misplaced field, a
wrong type, or a kind Kubernetes does not know fails here instead of at `helm install`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from testkit import kube_schemas
from testkit.chart import CHART, CI_VALUES, RenderError, render
from testkit.kube_schemas import (
    SCHEMA_DIGESTS,
    ManifestInvalidError,
    SchemaPackageError,
    schema_digest,
    validate,
    verified,
)

KUBE_VERSIONS = sorted(SCHEMA_DIGESTS)


@pytest.fixture(scope="module", autouse=True)
def _schemas_pinned() -> None:
    try:
        for version in KUBE_VERSIONS:
            verified(version)
    except SchemaPackageError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_there_are_value_sets_to_check() -> None:
    names = {path.name for path in CI_VALUES}
    assert {"minimal-values.yaml", "existing-secret-values.yaml", "web-values.yaml"} <= names


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_every_manifest_meets_the_kubernetes_schemas(values: Path, kube_version: str) -> None:
    manifests = render(values, kube_version=kube_version)
    assert manifests
    for manifest in manifests:
        validate(manifest, kube_version)


def test_the_oldest_kubernetes_the_chart_supports_is_checked() -> None:
    """Chart.yaml's kubeVersion floor is the oldest schema set checked above."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"
    with pytest.raises(RenderError, match="incompatible with Kubernetes"):
        render(CI_VALUES[0], kube_version="1.28.9")


# -- the validator itself: it must catch what it is there for -------------------------------


def _statefulset() -> dict[str, object]:
    [sts] = [m for m in render(CI_VALUES[0]) if m["kind"] == "StatefulSet"]
    return sts


def test_a_misspelt_field_fails() -> None:
    sts = _statefulset()
    broken = {**sts, "spec": {**sts["spec"], "terminationGracePeriod": 30}}  # type: ignore[dict-item]
    with pytest.raises(ManifestInvalidError, match="terminationGracePeriod"):
        validate(broken, KUBE_VERSIONS[0])


def test_a_wrongly_typed_field_fails() -> None:
    sts = _statefulset()
    broken = {**sts, "spec": {**sts["spec"], "replicas": "two"}}  # type: ignore[dict-item]
    with pytest.raises(ManifestInvalidError, match="replicas"):
        validate(broken, KUBE_VERSIONS[0])


def test_an_unknown_kind_fails() -> None:
    with pytest.raises(ManifestInvalidError, match="ServiceMonitor"):
        validate(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": {"name": "x"},
            },
            KUBE_VERSIONS[0],
        )


def test_an_altered_schema_file_is_noticed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = KUBE_VERSIONS[0]
    name = f"v{version}-local-strict"
    original = kube_schemas._schema_root() / name
    shutil.copytree(original, tmp_path / name)
    schema = tmp_path / name / "statefulset-apps-v1.json"
    schema.write_text(schema.read_text().replace('"additionalProperties": false', "", 1))
    monkeypatch.setattr(kube_schemas, "_schema_root", lambda: tmp_path)
    assert schema_digest(version) != SCHEMA_DIGESTS[version]
