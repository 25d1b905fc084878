"""Images deleted or corrupted between ``prepare`` and ``train``/``eval``: skipped and counted,
never a crash mid-epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.helpers import TINY_SETS, tree_digest

from ._support import assert_input_error, invoke

pytestmark = pytest.mark.faults


def _damage(synthetic_raw: Path, tmp_path: Path, splits: tuple[str, ...]):  # noqa: ANN202
    """A raw copy prepared intact, then damaged in ``splits`` (one image deleted, others replaced
    by garbage): returns (raw, prepared, the damaged entries by split)."""
    from personsearch.data import prepare_dataset

    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    prepare_dataset("CUHK-PEDES", raw, tmp_path / "prepared", workers=1)
    entries = json.loads((raw / "reid_raw.json").read_text())
    train = [e for e in entries if e["split"] == "train"]
    test = [e for e in entries if e["split"] == "test"]
    victims = {"train": train[::3], "test": test[:2]}
    victims = {split: victims[split] for split in splits}
    for split in victims:
        first, *rest = victims[split]
        (raw / "imgs" / first["file_path"]).unlink()
        for entry in rest:
            (raw / "imgs" / entry["file_path"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return raw, tmp_path / "prepared", victims


@pytest.fixture()
def damaged_train(synthetic_raw: Path, tmp_path: Path):  # noqa: ANN201
    return _damage(synthetic_raw, tmp_path, ("train",))


@pytest.fixture()
def damaged(synthetic_raw: Path, tmp_path: Path):  # noqa: ANN201
    return _damage(synthetic_raw, tmp_path, ("train", "test"))


@pytest.fixture(scope="module")
def run_copy(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the shared ``trained_run``: an eval that succeeds appends to RUN/metrics.jsonl."""
    run = tmp_path_factory.mktemp("images-changed") / "run"
    shutil.copytree(trained_run, run)
    return run


@pytest.mark.slow
def test_training_skips_and_counts_deleted_and_corrupt_images(damaged_train, tmp_path):
    from personsearch.engine.train import train
    from personsearch.io import read_jsonl
    from personsearch.settings import resolve_settings

    raw, prepared, victims = damaged_train
    settings = resolve_settings(
        sets=TINY_SETS + [f"data.root={prepared}", "train.epochs=1", "train.batch_size=4", "data.workers=0"],
        environ={},
    )
    before = tree_digest(prepared)
    result = train(settings, settings.data.root, tmp_path / "run")
    expected = sum(len(e["captions"]) for e in victims["train"])
    assert result.stopped == "finished" and result.skipped_images == expected
    steps = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "lr" in row]
    assert steps[-1]["skipped_images"] == expected
    assert tree_digest(prepared) == before


def test_eval_with_a_broken_gallery_image_fails_clearly(run_copy, damaged):
    raw, prepared, victims = damaged
    before = tree_digest(prepared)
    result = invoke("eval", run_copy, "--data", prepared, "--json")
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        assert_input_error(result, "gallery image of entry", "unreadable", code=1)
    assert tree_digest(prepared) == before


def test_eval_skips_and_counts_broken_gallery_images(run_copy, damaged):
    raw, prepared, victims = damaged
    result = invoke("eval", run_copy, "--data", prepared, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report.get("skipped_images") == len(victims["test"])
