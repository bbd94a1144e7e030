"""Fixtures of the persistence tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory (``CLARA_DATA_DIR``), not yet created."""
    return tmp_path / "data"
