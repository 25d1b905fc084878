"""Shared fixtures: a tiny synthetic dataset prepared once per session, and tiny model settings."""

from __future__ import annotations

from pathlib import Path

import pytest

import personsearch  # noqa: F401  (first: its OpenMP wait policy must precede the first torch import)

#: A CLIP small enough to train for a few steps in seconds on 2 CPU cores.
TINY_SETS = [
    "model.pretrained=null",
    "model.image_size=[64, 32]",
    "model.stride=16",
    "model.cmt_depth=1",
    "model.arch.embed_dim=64",
    "model.arch.vision_width=64",
    "model.arch.vision_layers=1",
    "model.arch.vision_heads=2",
    "model.arch.patch_size=16",
    "model.arch.text_width=64",
    "model.arch.text_layers=1",
    "model.arch.text_heads=2",
    "train.batch_size=8",
    "train.epochs=2",
    "train.log_period=1",
    "eval.batch_size=64",
    "data.workers=0",
    "schedule.warmup_epochs=0",
    "optim.lr=2e-3",
]


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
