"""Fixtures of the fault-injection suite (the cases that need a model use ``trained_run`` from
tests/conftest.py, read-only: they copy it before changing anything)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def raw_copy(synthetic_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic raw dataset, for cases that damage it."""
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    return raw
