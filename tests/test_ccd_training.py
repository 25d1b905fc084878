"""train.ccd through the real training loop: on a synthetic set with swapped captions each epoch's
division is saved, scored against raw/noise.json in metrics.jsonl, applied to TAL, and a run
stopped inside an epoch and resumed ends with the same weights as one trained straight through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import TINY_SETS

pytest.importorskip("sklearn", reason="the [rde] extra (scikit-learn) is not installed")

from personsearch.errors import InputError  # noqa: E402
from personsearch.settings import resolve_settings  # noqa: E402

RDE_SETS = ["loss.names=tal+id", "model.tse=true", "model.tse_dim=16", "train.ccd=true"]


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from personsearch.data.synthetic.prepare import prepare_synthetic

    out = tmp_path_factory.mktemp("noisy") / "prepared"
    prepare_synthetic(out, ids=12, seed=0, noise=0.3)
    return out


def _settings(data: Path, tmp_path: Path, *extra: str):
    return resolve_settings(sets=[*TINY_SETS, *RDE_SETS, f"data.root={data}", f"runtime.output_dir={tmp_path}",
                                  *extra], environ={})


def test_each_epoch_is_divided_scored_and_saved(noisy_data, tmp_path):
    from personsearch.engine.train import train

    settings = _settings(noisy_data, tmp_path)
    train(settings, settings.data.root, tmp_path / "run")
    records = [json.loads(line)["ccd"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if '"ccd"' in line]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert 0 <= record["noise_precision"] <= 1 and 0 <= record["noise_recall"] <= 1
        weights = np.load(tmp_path / "run" / "ccd" / f"epoch-{record['epoch']:04d}.npy")
        assert weights.shape == (record["pairs"],) and set(np.unique(weights)) <= {0.0, 1.0}
        assert int(weights.sum()) == record["kept"]


def test_a_run_resumed_inside_an_epoch_divides_and_trains_as_the_straight_one(noisy_data, tmp_path):
    from safetensors.torch import load_file

    from personsearch.engine.train import train

    settings = _settings(noisy_data, tmp_path)
    straight = train(settings, settings.data.root, tmp_path / "straight")
    first = resolve_settings(base=settings, sets=[f"train.max_steps={straight.steps // 2 + 1}"], environ={})
    train(first, first.data.root, tmp_path / "resumed")  # stops inside the second epoch
    train(settings, settings.data.root, tmp_path / "resumed", resume=True)
    for name in ("epoch-0001.npy", "epoch-0002.npy"):
        assert np.array_equal(np.load(tmp_path / "straight" / "ccd" / name),
                              np.load(tmp_path / "resumed" / "ccd" / name))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ccd_needs_both_embeddings_and_tal(noisy_data, tmp_path):
    from personsearch.engine.setup import build_setup

    for extra in (["model.tse=false"], ["loss.names=sdm+id"]):
        settings = _settings(noisy_data, tmp_path, *extra)
        with pytest.raises(InputError, match="train.ccd"):
            build_setup(settings, noisy_data, tmp_path / "x", resume=False)


def test_ccd_without_scikit_learn_is_refused_before_training(noisy_data, tmp_path, monkeypatch):
    import sys

    from personsearch.engine.setup import build_setup

    monkeypatch.setitem(sys.modules, "sklearn.mixture", None)
    with pytest.raises(InputError, match="scikit-learn") as caught:
        build_setup(_settings(noisy_data, tmp_path), noisy_data, tmp_path / "x", resume=False)
    assert "personsearch[rde]" in caught.value.hint


def test_warmup_epochs_train_on_every_pair(noisy_data, tmp_path):
    from personsearch.engine.train import train

    settings = _settings(noisy_data, tmp_path, "train.ccd_warmup=1")
    train(settings, settings.data.root, tmp_path / "run")
    assert not (tmp_path / "run" / "ccd" / "epoch-0001.npy").exists()
    assert (tmp_path / "run" / "ccd" / "epoch-0002.npy").exists()


def test_a_ccd_folder_that_is_a_link_is_not_written_through(noisy_data, tmp_path):
    from personsearch.engine.train import train
    from personsearch.errors import RunFailure
    from personsearch.runs import create_run

    settings = _settings(noisy_data, tmp_path)
    run = create_run(settings, name="linked", output_dir=tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "ccd").symlink_to(outside)
    with pytest.raises(RunFailure, match="not the run's own folder"):
        train(settings, settings.data.root, run)
    assert list(outside.iterdir()) == []
