"""Fixtures of the fault-injection suite: one tiny trained run reused by the cases that need a model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.conftest import TINY_SETS


@pytest.fixture(scope="session")
def tiny_run(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained for two steps (weights, config.yaml, checkpoints) — enough for the
    cases that need a model; read-only for the tests that use it."""
    from personsearch.engine.train import train
    from personsearch.runs import create_run
    from personsearch.settings import resolve_settings

    parent = tmp_path_factory.mktemp("faults-runs")
    settings = resolve_settings(
        sets=TINY_SETS + [f"data.root={prepared_tiny}", f"runtime.output_dir={parent}", "train.max_steps=2"],
        environ={},
    )
    run = create_run(settings, name="tiny", output_dir=parent)
    train(settings, settings.data.root, run)
    return run


@pytest.fixture()
def raw_copy(synthetic_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic raw dataset, for cases that damage it."""
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    return raw
