"""Shared fixtures: a tiny synthetic dataset prepared once per session, tiny model settings and
architecture, and one tiny trained run. Plain values and helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.helpers import TINY_ARCH, TINY_SETS, TRAINED_RUN_SETS, tree_digest

import personsearch  # noqa: F401  (first: its OpenMP wait policy must precede the first torch import)


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the user's cache folder out of the suite, and make ``--precision auto`` mean fp32 on every
    CPU (as if fp32 had measured faster), so figures do not depend on the machine running the tests.
    Subprocesses inherit the variable; tests of the cache itself set their own."""
    from personsearch.accel import remember_matmul_rates
    from personsearch.io.cache import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("user-cache"))
    remember_matmul_rates(fp32=2.0, bf16=1.0)


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-identity synthetic raw dataset in the CUHK-PEDES layout."""
    from personsearch.data.synthetic import generate_raw_dataset

    root = tmp_path_factory.mktemp("synthetic") / "raw"
    generate_raw_dataset(root, ids=12, seed=0, workers=1)
    return root


@pytest.fixture(scope="session")
def prepared_tiny(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from personsearch.data import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "tiny"
    prepare_dataset("CUHK-PEDES", synthetic_raw, out, workers=1)
    return out


@pytest.fixture()
def tiny_settings(prepared_tiny: Path, tmp_path: Path):
    from personsearch.settings import resolve_settings

    return resolve_settings(
        sets=TINY_SETS + [f"data.root={prepared_tiny}", f"runtime.output_dir={tmp_path / 'runs'}"], environ={}
    )


@pytest.fixture(scope="session")
def prepared_without_val(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic set with its val identities moved to test (like ICFG-PEDES: no val split)."""
    import json
    import shutil

    from personsearch.data import prepare_dataset

    folder = tmp_path_factory.mktemp("no-val")
    raw = folder / "raw"
    shutil.copytree(synthetic_raw, raw)
    entries = json.loads((raw / "reid_raw.json").read_text())
    for entry in entries:
        if entry["split"] == "val":
            entry["split"] = "test"
    (raw / "reid_raw.json").write_text(json.dumps(entries))
    prepare_dataset("CUHK-PEDES", raw, folder / "prep", workers=1)
    return folder / "prep"


@pytest.fixture()
def tiny_arch() -> dict:
    """A fresh copy of ``tests.helpers.TINY_ARCH`` (a test may change it freely)."""
    return dict(TINY_ARCH)


@pytest.fixture(scope="session")
def trained_run(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run trained on ``prepared_tiny`` with TINY_SETS + TRAINED_RUN_SETS: two steps into
    epoch 1 of 2 (so it can be resumed), best/last weights with their records, one training state,
    metrics.jsonl with the val evaluation and the selected checkpoint's test metrics.

    Shared by the whole session, so READ-ONLY: a test that writes into it (``eval`` appends to
    RUN/metrics.jsonl, ``export`` may write RUN/index, resuming trains on, damaging it) works on a
    ``shutil.copytree`` of it. Teardown fails if any of its files changed.
    """
    from personsearch.engine.train import train
    from personsearch.runs import create_run
    from personsearch.settings import resolve_settings

    parent = tmp_path_factory.mktemp("trained-run")
    settings = resolve_settings(
        sets=[*TINY_SETS, *TRAINED_RUN_SETS, f"data.root={prepared_tiny}", f"runtime.output_dir={parent}"],
        environ={},
    )
    run = create_run(settings, name="tiny", output_dir=parent)
    train(settings, settings.data.root, run)
    before = tree_digest(run)
    yield run
    after = tree_digest(run)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test wrote into the shared trained_run (copy it first): {changed}"
