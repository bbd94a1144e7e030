"""The Helm chart (``deploy/helm/clara-voice``), rendered for the deploy tests.

``scripts/helm-template`` builds the renderer: Helm's own chart loader, values schema check
and template engine at the Helm version ``tools/helm-template/go.mod`` pins, so what the
tests see is what ``helm template`` and ``helm install`` produce. :func:`render` runs it
and returns the manifests as dicts; a template's ``fail``/``required`` or a value that
breaks ``values.schema.json`` raises :class:`RenderError` with Helm's message.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "clara-voice"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
BUILD_SCRIPT = ROOT / "scripts" / "helm-template"
RELEASE = "clara"
RENDER_TIMEOUT = 60.0

Manifest = dict[str, Any]


class RendererMissingError(RuntimeError):
    """The chart renderer is not built."""


class RenderError(RuntimeError):
    """The chart refused to render; the message is Helm's."""


@functools.cache
def renderer() -> Path:
    """The renderer binary; :class:`RendererMissingError` (one line) when it is not built."""
    path = Path(
        subprocess.run(
            [str(BUILD_SCRIPT), "path"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    )
    if not os.access(path, os.X_OK):
        raise RendererMissingError(
            f"no chart renderer at {path}: run `scripts/helm-template build` (Go; .ci/run does)"
        )
    return path


@functools.cache
def _render(values: tuple[Path, ...], overlay: str, kube_version: str) -> tuple[Manifest, ...]:
    command = [str(renderer()), "--name", RELEASE, "--kube-version", kube_version]
    for file in values:
        command += ["-f", str(file)]
    with tempfile.TemporaryDirectory(prefix="clara-chart-") as tmp:
        if overlay:
            (Path(tmp) / "overlay.yaml").write_text(overlay, encoding="utf-8")
            command += ["-f", str(Path(tmp) / "overlay.yaml")]
        result = subprocess.run(
            [*command, str(CHART)], capture_output=True, text=True, timeout=RENDER_TIMEOUT
        )
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(
    *values: Path, kube_version: str = "1.29.0", sets: dict[str, object] | None = None
) -> list[Manifest]:
    """The chart's manifests for these values files, then ``sets`` on top
    (``{"worker.drainTimeout": 120}``, given to Helm as one more values file so that each
    value keeps its YAML type)."""
    overlay: dict[str, Any] = {}
    for dotted, value in (sets or {}).items():
        *parents, leaf = dotted.split(".")
        node = overlay
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    text = yaml.safe_dump(overlay, sort_keys=True) if overlay else ""
    return list(_render(tuple(values), text, kube_version))


def kinds(manifests: Sequence[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def the(manifests: Sequence[Manifest], kind: str) -> Manifest:
    """The one manifest of ``kind``."""
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"{len(found)} manifests of kind {kind}: {kinds(manifests)}"
    return found[0]


def container(workload: Manifest, name: str) -> dict[str, Any]:
    """A container of a StatefulSet's or Deployment's pod template."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    [found] = [c for c in containers if c["name"] == name]
    return dict(found)


def values_file(name: str) -> Path:
    """One of the chart's CI value sets, by name (``minimal`` → ci/minimal-values.yaml)."""
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), f"no {path}"
    return path
