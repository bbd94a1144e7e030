"""Fixtures of the deploy tests: the chart renderer (scripts/helm-template) must be built,
else every test fails with one line saying how; the pinned Kubernetes schemas likewise."""

from __future__ import annotations

import pytest

from testkit.chart import RendererMissingError, renderer


@pytest.fixture(autouse=True)
def _renderer_built() -> None:
    try:
        renderer()
    except RendererMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
