"""RDE's token-selection embeddings in training (model.tse): the heads in IRRA's forward, their loss
added to the global one (TAL, SDM), their learning rate, and a tiny run whose evaluation, export and
query all use the joint "BGE+TSE" embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.helpers import TINY_IMAGE_SIZE, TINY_IRRA_ARCH, TINY_IRRA_CONTEXT, TINY_SETS, tiny_irra_batch

from personsearch.errors import InputError
from personsearch.losses import sdm_loss, tal
from personsearch.model.clip import build_clip
from personsearch.model.irra import IRRA
from personsearch.settings import resolve_settings


def _clip():
    torch.manual_seed(0)
    return build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16, context_length=TINY_IRRA_CONTEXT)


def _features(model: IRRA, batch: dict):
    """Global and token-selection features computed outside the forward, from the encoder's own calls."""
    base = model.base_model
    image_tokens, class_row = base.encode_image_tokens_attention(batch["images"])
    ids = batch["caption_ids"]
    text_tokens, eot_row = base.encode_text_tokens(ids, attention_layers=1, trim=True)
    short = ids[:, : text_tokens.shape[1]]
    eot = short.argmax(dim=-1)
    bge = (image_tokens[:, 0].float(), text_tokens[torch.arange(len(eot)), eot].float())
    tse = (model.visul_emb_layer(image_tokens, class_row).float(),
           model.texual_emb_layer(text_tokens, short, eot_row).float())
    return bge, tse


@pytest.mark.parametrize("losses", [("tal",), ("sdm", "id", "tal"), ("sdm", "id")])
def test_the_token_selection_loss_is_added_to_the_global_one(losses):
    batch = tiny_irra_batch()
    model = IRRA(_clip(), num_classes=4, losses=losses, tse=True, tse_dim=16, tse_ratio=0.5).eval()
    out = model(batch)  # evaluation mode: BatchNorm uses running statistics, so both sides agree
    (bi, bt), (si, st) = _features(model, batch)
    pids = batch["pids"]

    def scores(i, t):
        return torch.nn.functional.normalize(t, dim=1) @ torch.nn.functional.normalize(i, dim=1).t()

    if "tal" in losses:
        want = tal(scores(bi, bt), pids).sum() + tal(scores(si, st), pids).sum()
        assert out["tal_loss"].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    if "sdm" in losses:
        want = sdm_loss(bi, bt, pids, model.logit_scale) + sdm_loss(si, st, pids, model.logit_scale)
        assert out["sdm_loss"].item() == pytest.approx(want.item(), rel=1e-4)


def test_tse_needs_a_matching_loss_and_trains_its_heads():
    with pytest.raises(InputError, match="tal or sdm"):
        IRRA(_clip(), num_classes=4, losses=("id",), tse=True)
    model = IRRA(_clip(), num_classes=4, losses=("tal",), tse=True, tse_dim=16).train()
    model(tiny_irra_batch())["loss"].backward()
    assert model.visul_emb_layer.fc.weight.grad.abs().sum() > 0
    assert model.texual_emb_layer.linear.weight.grad.abs().sum() > 0


def test_the_heads_get_rdes_fixed_learning_rate():
    from personsearch.engine.optim import param_lr_and_decay

    optim = resolve_settings(sets=["optim.lr=1e-5", "optim.tse_lr=0.001"], environ={}).optim
    assert param_lr_and_decay("visul_emb_layer.fc.weight", optim) == (0.001, optim.weight_decay)
    assert param_lr_and_decay("texual_emb_layer.mlm.layers.0.bias", optim) == (0.001, optim.weight_decay_bias)
    assert param_lr_and_decay("base_model.visual.proj", optim) == (1e-5, optim.weight_decay)


def test_a_tiny_tse_run_evaluates_exports_and_queries_with_joint_embeddings(prepared_tiny: Path, synthetic_raw,
                                                                            tmp_path: Path):
    from personsearch.engine.train import train
    from personsearch.model.rde import TokenSelectionCLIP
    from personsearch.retrieval.export import export_run
    from personsearch.retrieval.gallery import GalleryIndex
    from personsearch.retrieval.query import run_queries
    from personsearch.runs import create_run, load_trained

    settings = resolve_settings(sets=[*TINY_SETS, "loss.names=tal+id", "model.tse=true", "model.tse_dim=16",
                                      "train.max_steps=3", f"data.root={prepared_tiny}",
                                      f"runtime.output_dir={tmp_path}"], environ={})
    run = create_run(settings, name="tse", output_dir=tmp_path)
    train(settings, settings.data.root, run)
    model = load_trained(run)
    assert isinstance(model.clip, TokenSelectionCLIP) and model.clip.embed_dim == 64 + 16
    export_run(run, tmp_path / "index", images=synthetic_raw / "imgs", device="cpu")
    assert GalleryIndex.open(tmp_path / "index").dim == 80
    found = run_queries(["a woman in a red coat"], index=tmp_path / "index", k=3, device="cpu")
    assert found.model.fingerprint == model.fingerprint and len(found.results[0].results) == 3
