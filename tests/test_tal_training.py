"""RDE's TAL as a training loss: selected in loss.names with or without IRRA's losses, summed over
the batch's pairs as RDE does (checked against the plain formulation of tests/test_tal.py),
weighted per pair when a clean/noisy division is given, and a whole tiny training run with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.helpers import TINY_IMAGE_SIZE, TINY_IRRA_ARCH, TINY_IRRA_CONTEXT, TINY_SETS, tiny_irra_batch
from tests.test_tal import plain_tal

from personsearch.errors import InputError
from personsearch.model.clip import build_clip
from personsearch.model.irra import IRRA
from personsearch.settings import resolve_settings


def _clip():
    torch.manual_seed(0)
    return build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16, context_length=TINY_IRRA_CONTEXT)


def _plain_batch_tal(model: IRRA, batch: dict, tau: float, margin: float) -> list[float]:
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.base_model.encode_image(batch["images"]).double(), dim=1)
        text = torch.nn.functional.normalize(model.base_model.encode_text(batch["caption_ids"]).double(), dim=1)
    return plain_tal((text @ image.t()).tolist(), batch["pids"].tolist(), tau, margin)


@pytest.mark.parametrize("losses", [("tal",), ("sdm", "id", "tal")])
def test_tal_in_irras_forward_is_rdes_sum_over_pairs(losses):
    batch = tiny_irra_batch()
    model = IRRA(_clip(), num_classes=4, losses=losses, loss_weights={"tal": 2.0}, tal_tau=0.02, tal_margin=0.2)
    out = model(batch)
    want = sum(_plain_batch_tal(model, batch, 0.02, 0.2)) * 2.0
    assert out["tal_loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert out["loss"].item() == pytest.approx(sum(out[f"{name}_loss"].item() for name in losses), rel=1e-6)
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base_model.parameters())


def test_pair_weights_drop_the_pairs_called_noisy():
    batch = tiny_irra_batch()
    model = IRRA(_clip(), num_classes=4, losses=("tal",))
    per_pair = _plain_batch_tal(model, batch, 0.015, 0.1)
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    out = model({**batch, "pair_weights": weights})
    assert out["tal_loss"].item() == pytest.approx(sum(w * v for w, v in zip(weights.tolist(), per_pair,
                                                                               strict=True)), rel=1e-4, abs=1e-6)


def test_the_settings_carry_rdes_defaults_and_refuse_nonsense():
    settings = resolve_settings(sets=["loss.names=sdm+tal"], environ={})
    assert settings.loss.enabled == ("sdm", "tal")
    assert (settings.loss.tal_tau, settings.loss.tal_margin, settings.loss.tal_weight) == (0.015, 0.1, 1.0)
    for bad in ("loss.tal_tau=0", "loss.tal_tau=-1", "loss.tal_margin=-0.1"):
        with pytest.raises(InputError):
            resolve_settings(sets=[bad], environ={})


def test_a_tiny_run_trains_with_tal(prepared_tiny: Path, tmp_path: Path):
    from personsearch.engine.train import train
    from personsearch.runs import create_run

    settings = resolve_settings(sets=[*TINY_SETS, "loss.names=tal+id", "train.max_steps=3",
                                      f"data.root={prepared_tiny}", f"runtime.output_dir={tmp_path}"], environ={})
    run = create_run(settings, name="tal", output_dir=tmp_path)
    train(settings, settings.data.root, run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["tal_loss"] for row in steps if "tal_loss" in row]
    assert losses and all(value == value and value >= 0 for value in losses)  # finite, not NaN
