"""The optional attribute loss (``attr``): the loss against a plain formula, the labels read from the
synthetic set's attributes.json, the head in IRRA's forward, and its refusal without attributes."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import TINY_IMAGE_SIZE, TINY_IRRA_ARCH, TINY_IRRA_CONTEXT, TINY_SETS, tiny_irra_batch

from personsearch.data.attribute_labels import attribute_labels, has_attributes
from personsearch.data.datasets import TrainCaptions
from personsearch.data.prepared import PreparedDataset
from personsearch.errors import InputError
from personsearch.losses import attr_loss
from personsearch.model.clip import build_clip
from personsearch.model.irra import IRRA
from personsearch.settings import resolve_settings


def _plain_bce(logits: list[list[float]], targets: list[list[float]]) -> float:
    """Mean over every (sample, label) of -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]."""
    total, count = 0.0, 0
    for row, labels in zip(logits, targets, strict=True):
        for x, y in zip(row, labels, strict=True):
            p = 1.0 / (1.0 + math.exp(-x))
            total -= y * math.log(p) + (1.0 - y) * math.log(1.0 - p)
            count += 1
    return total / count


def test_attr_loss_matches_plain_formula():
    rng = np.random.default_rng(4)
    image = rng.normal(scale=2.0, size=(5, 7))
    text = rng.normal(scale=2.0, size=(5, 7))
    targets = (rng.random((5, 7)) < 0.3).astype(np.float32)
    expected = (_plain_bce(image.tolist(), targets.tolist()) + _plain_bce(text.tolist(), targets.tolist())) / 2
    got = attr_loss(torch.tensor(image), torch.tensor(text), torch.tensor(targets))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Confident, correct logits give a loss near zero.
    sure = torch.tensor(targets * 40 - 20)
    assert attr_loss(sure, sure, torch.tensor(targets)).item() < 1e-6


def test_labels_are_one_value_per_attribute_from_attributes_json(prepared_tiny: Path, synthetic_raw: Path):
    prepared = PreparedDataset.load(prepared_tiny)
    assert has_attributes(prepared)
    labels = attribute_labels(prepared)
    assert labels is not None
    entries = prepared.entries("train")
    assert labels.targets.shape == (len(entries), len(labels.names)) and labels.targets.dtype == np.float32
    recorded = json.loads((synthetic_raw / "attributes.json").read_text())
    attribute_count = len(next(iter(recorded.values())))
    for entry, row in zip(entries, labels.targets, strict=True):
        attrs = recorded[entry.path.split("/", 1)[1]]  # attributes.json keys are relative to imgs/
        on = {labels.names[j] for j in np.flatnonzero(row)}
        assert on == {f"{name}={value}" for name, value in attrs.items()}
        assert len(on) == attribute_count
    assert list(labels.names) == sorted(labels.names)
    # Training samples carry their image's row.
    dataset = TrainCaptions(prepared, lambda image: torch.zeros(3, 4, 4), attribute_targets=labels.targets)
    first = dataset[0]
    assert torch.equal(first["attributes"], torch.from_numpy(labels.targets[int(dataset.caption_entry[0])]))
    assert "attributes" not in TrainCaptions(prepared, lambda image: torch.zeros(3, 4, 4))[0]


def _clip():
    torch.manual_seed(0)
    return build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16, context_length=TINY_IRRA_CONTEXT)


def test_irra_attr_head_uses_both_modalities_and_its_weight():
    batch = tiny_irra_batch()
    targets = (torch.arange(6 * 9).reshape(6, 9) % 4 == 0).float()
    batch["attributes"] = targets
    model = IRRA(_clip(), num_classes=4, losses=("sdm", "id", "attr"), num_attributes=9,
                 loss_weights={"attr": 3.0})
    assert model.attr_head.weight.shape == (9, 64)
    out = model(batch)
    with torch.no_grad():
        images = model.base_model.encode_image(batch["images"])
        texts = model.base_model.encode_text(batch["caption_ids"])
        expected = attr_loss(model.attr_head(images), model.attr_head(texts), targets) * 3.0
    assert out["attr_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(
        (out["sdm_loss"] + out["id_loss"] + out["attr_loss"]).item(), rel=1e-6)
    out["loss"].backward()
    assert model.attr_head.weight.grad.abs().sum() > 0
    # Without the loss there is no head (IRRA's modules only), and no labels are needed.
    plain = IRRA(copy.deepcopy(model.base_model), num_classes=4, losses=("sdm", "id"), num_attributes=9)
    assert not hasattr(plain, "attr_head")
    del batch["attributes"]
    assert "attr_loss" not in plain(batch)


def test_attr_without_labels_is_refused():
    with pytest.raises(InputError, match="needs per-image attribute labels"):
        IRRA(_clip(), num_classes=4, losses=("sdm", "attr"))
    model = IRRA(_clip(), num_classes=4, losses=("sdm", "attr"), num_attributes=3)
    with pytest.raises(InputError, match="carries no attribute labels"):
        model(tiny_irra_batch())


def test_training_with_attr_and_its_refusal_on_a_dataset_without_attributes(prepared_tiny: Path, tmp_path: Path):
    from personsearch.engine.setup import build_setup

    settings = resolve_settings(sets=[*TINY_SETS, "loss.names=sdm+id+attr", "loss.attr_weight=2",
                                      f"runtime.output_dir={tmp_path / 'runs'}"], environ={})
    setup = build_setup(settings, prepared_tiny, tmp_path / "run", resume=False)
    labels = attribute_labels(PreparedDataset.load(prepared_tiny))
    assert setup.model.num_attributes == len(labels) and setup.model.loss_weights["attr"] == 2.0
    assert "attributes" in setup.train_set[0]
    # The same data without attributes.json (as a real benchmark): refused before training.
    plain = tmp_path / "plain"
    shutil.copytree(prepared_tiny, plain / "prep")
    raw = PreparedDataset.load(prepared_tiny).raw_root
    shutil.copytree(raw, plain / "raw")
    (plain / "raw" / "attributes.json").unlink()
    prepared = PreparedDataset.load(plain / "prep", raw_root=plain / "raw")
    assert not has_attributes(prepared) and attribute_labels(prepared) is None
    with pytest.raises(InputError, match="records none"):
        build_setup(settings, _moved(plain), tmp_path / "run2", resume=False)


def _moved(plain: Path) -> Path:
    """The prepared copy, its manifest pointing at the copied raw folder without attributes."""
    manifest_path = plain / "prep" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["raw_root"] = str(plain / "raw")
    manifest.pop("relative", None)
    manifest_path.write_text(json.dumps(manifest))
    return plain / "prep"


def test_settings_validate_attr():
    settings = resolve_settings(sets=["loss.names=sdm+attr", "loss.attr_weight=0.5"], environ={})
    assert settings.loss.enabled == ("sdm", "attr") and settings.loss.attr_weight == 0.5
    assert resolve_settings(environ={}).loss.attr_weight == 1.0
    assert "attr" not in resolve_settings(environ={}).loss.enabled
    with pytest.raises(InputError):
        resolve_settings(sets=["loss.attr_weight=-1"], environ={})


def test_training_with_attr_and_similar_batches_resumes_exactly_and_loads(tiny_settings, tmp_path: Path, caplog,
                                                                          monkeypatch):
    """The attribute head and the similar sampler through the real loop: a run stopped mid-epoch and
    resumed ends with the same weights as one run straight through, and the trained model loads
    for search without a warning about the head."""
    import logging

    from safetensors.torch import load_file

    from personsearch.engine.train import train
    from personsearch.runs import load_trained

    settings = resolve_settings(base=tiny_settings, sets=["loss.names=sdm+id+attr", "data.sampler=similar",
                                                          "data.similar_group=3"], environ={})
    straight = train(settings, settings.data.root, tmp_path / "straight")
    weights = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    assert "attr_head.weight" in weights
    first = resolve_settings(base=settings, sets=[f"train.max_steps={straight.steps // 2 - 1}"], environ={})
    train(first, first.data.root, tmp_path / "resumed")
    train(settings, settings.data.root, tmp_path / "resumed", resume=True)
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "last.safetensors"))
    assert weights.keys() == resumed.keys() and all(torch.equal(weights[k], resumed[k]) for k in weights)
    with caplog.at_level(logging.WARNING, logger="personsearch"):
        model = load_trained(tmp_path / "straight")
    assert model.num_classes is not None and "ignored" not in caplog.text
    # (The check can see the warning: a loader that did not know the head would give it.)
    from personsearch.model import checkpoint_layout

    monkeypatch.setattr(checkpoint_layout, "IRRA_HEADS", tuple(h for h in checkpoint_layout.IRRA_HEADS
                                                                if h != "attr_head"))
    with caplog.at_level(logging.WARNING, logger="personsearch"):
        load_trained(tmp_path / "straight")
    assert "ignored 2 keys" in caplog.text and "attr_head.weight" in caplog.text
