"""IRRA heads and forward on a tiny random CLIP, against a plain IRRA-style reference forward."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import TINY_IMAGE_SIZE, TINY_IRRA_ARCH, TINY_IRRA_CONTEXT, tiny_irra_batch
from torch import nn

from personsearch.errors import InputError
from personsearch.losses import id_loss, sdm_loss
from personsearch.model import irra as irra_module
from personsearch.model.clip import build_clip
from personsearch.model.irra import IRRA, CrossAttention, build_irra
from personsearch.settings import MaskingSettings, resolve_settings


@functools.lru_cache(maxsize=2)
def _built_clip(seed: int):
    torch.manual_seed(seed)
    return build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16, context_length=TINY_IRRA_CONTEXT)


def _clip(seed: int = 0):
    """A fresh copy of one tiny random CLIP (building the 49408-token embedding once)."""
    return copy.deepcopy(_built_clip(seed))


def _batch(size: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    return tiny_irra_batch(size, seed)


def test_module_names_match_irra_and_heads_follow_losses():
    model = IRRA(_clip(), num_classes=5, losses=("sdm", "mlm", "id"), cmt_depth=2)
    names = set(model.state_dict())
    for expected in (
        "base_model.visual.conv1.weight",
        "base_model.token_embedding.weight",
        "classifier.weight",
        "classifier.bias",
        "cross_attn.in_proj_weight",
        "cross_attn.in_proj_bias",
        "cross_attn.out_proj.weight",
        "cross_modal_transformer.resblocks.1.attn.in_proj_weight",
        "cross_modal_transformer.resblocks.0.attn.out_proj.bias",
        "cross_modal_transformer.resblocks.0.ln_1.weight",
        "cross_modal_transformer.resblocks.0.mlp.c_fc.weight",
        "cross_modal_transformer.resblocks.0.mlp.c_proj.bias",
        "cross_modal_transformer.resblocks.0.ln_2.bias",
        "ln_pre_t.weight",
        "ln_pre_i.bias",
        "ln_post.weight",
        "mlm_head.dense.weight",
        "mlm_head.ln.weight",
        "mlm_head.fc.weight",
        "mlm_head.fc.bias",
    ):
        assert expected in names, expected
    assert model.mlm_head.fc.out_features == 49408
    assert not any(name.startswith("logit_scale") for name in names)  # fixed, not a parameter
    plain = IRRA(_clip(), num_classes=5, losses=("sdm",))
    assert {name.split(".")[0] for name in plain.state_dict()} == {"base_model"}


def test_initialisation_follows_design():
    torch.manual_seed(0)
    width, depth = 128, 4
    arch = dict(TINY_IRRA_ARCH, embed_dim=width)
    clip = build_clip(arch, image_size=TINY_IMAGE_SIZE, stride=16, context_length=TINY_IRRA_CONTEXT)
    model = IRRA(clip, num_classes=300, losses=("mlm", "id"), cmt_depth=depth)
    proj = width**-0.5 * (2 * depth) ** -0.5
    fc = (2 * width) ** -0.5
    expected = {
        "classifier.weight": 0.001,
        "cross_attn.in_proj_weight": width**-0.5,
        "cross_attn.out_proj.weight": proj,
        "mlm_head.dense.weight": fc,
        "mlm_head.fc.weight": proj,
    }
    for block in range(depth):
        prefix = f"cross_modal_transformer.resblocks.{block}."
        expected[prefix + "attn.in_proj_weight"] = width**-0.5
        expected[prefix + "attn.out_proj.weight"] = proj
        expected[prefix + "mlp.c_fc.weight"] = fc
        expected[prefix + "mlp.c_proj.weight"] = proj
    params = dict(model.named_parameters())
    for name, std in expected.items():
        value = params[name].detach().double()
        assert abs(value.mean().item()) < 4 * std / math.sqrt(value.numel()) + 1e-12, name
        assert value.std().item() == pytest.approx(std, rel=0.05), name
    assert torch.all(model.classifier.bias == 0)
    assert torch.all(model.cross_attn.in_proj_bias == 0)


def test_cross_attention_equals_multihead_attention():
    torch.manual_seed(1)
    ours = CrossAttention(128, 2)
    reference = nn.MultiheadAttention(128, 2, batch_first=True)
    reference.load_state_dict(ours.state_dict())
    q, kv = torch.randn(3, 7, 128), torch.randn(3, 11, 128)
    want = reference(q, kv, kv, need_weights=False)[0]
    assert torch.allclose(ours(q, kv, kv), want, atol=1e-5)


def _plain_block(block, x: torch.Tensor) -> torch.Tensor:
    """IRRA's ResidualAttentionBlock with nn.MultiheadAttention (no mask)."""
    width = x.shape[-1]
    mha = nn.MultiheadAttention(width, width // 64, batch_first=True)
    mha.load_state_dict(block.attn.state_dict())
    h = block.ln_1(x)
    x = x + mha(h, h, h, need_weights=False)[0]
    return x + block.mlp(block.ln_2(x))


def _reference_forward(
    model: IRRA, batch, masked_ids: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """IRRA's forward written plainly: full-length text, MLM head over every position."""
    clip = model.base_model
    ids = batch["caption_ids"]
    image_tokens = clip.encode_image_tokens(batch["images"])
    text_tokens, _ = clip.encode_text_tokens(ids)  # all positions, no trimming
    i_feats = image_tokens[:, 0]
    t_feats = text_tokens[torch.arange(ids.shape[0]), ids.argmax(-1)]
    out = {"sdm_loss": sdm_loss(i_feats, t_feats, batch["pids"], 50.0).item()}
    logits_i, logits_t = model.classifier(i_feats), model.classifier(t_feats)
    out["id_loss"] = id_loss(logits_i, logits_t, batch["pids"]).item()
    full_masked = torch.zeros_like(ids)
    full_masked[:, : masked_ids.shape[1]] = masked_ids
    full_labels = torch.zeros_like(ids)
    full_labels[:, : labels.shape[1]] = labels
    mlm_tokens, _ = clip.encode_text_tokens(full_masked)
    cross = nn.MultiheadAttention(64, 1, batch_first=True)
    cross.load_state_dict(model.cross_attn.state_dict())
    image = model.ln_pre_i(image_tokens)
    x = cross(model.ln_pre_t(mlm_tokens), image, image, need_weights=False)[0]
    for block in model.cross_modal_transformer.resblocks:
        x = _plain_block(block, x)
    scores = model.mlm_head(model.ln_post(x)).reshape(-1, model.vocab_size)
    flat = full_labels.reshape(-1)
    out["mlm_loss"] = F.cross_entropy(scores, flat, ignore_index=0).item()
    chosen = flat != 0
    out["mlm_acc"] = (scores.argmax(1)[chosen] == flat[chosen]).float().mean().item()
    return out


@pytest.mark.parametrize("strategy", ["random", "attention"])
def test_forward_matches_plain_irra_reference(strategy, monkeypatch):
    model = IRRA(
        _clip(),
        num_classes=4,
        losses=("sdm", "mlm", "id"),
        cmt_depth=2,
        masking=MaskingSettings(strategy=strategy, layers=2),
    )
    batch = _batch()
    seen = {}
    real_mask = irra_module.mask_captions
    real_encode = model.base_model.encode_text_tokens
    calls = []

    def spy_mask(ids, settings, importance, generator):
        seen["importance"] = importance
        seen["result"] = real_mask(ids, settings, importance, generator)
        return seen["result"]

    def spy_encode(ids, attention_layers=0, trim=False):
        calls.append(attention_layers)
        return real_encode(ids, attention_layers=attention_layers, trim=trim)

    monkeypatch.setattr(irra_module, "mask_captions", spy_mask)
    monkeypatch.setattr(model.base_model, "encode_text_tokens", spy_encode)
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(0))
    # One text pass for the features (with the attention row under AGM), one for the masked caption.
    assert calls == ([2, 0] if strategy == "attention" else [0, 0])
    if strategy == "attention":
        _, want_row = real_encode(batch["caption_ids"], attention_layers=2, trim=True)
        assert torch.allclose(seen["importance"], want_row, atol=1e-6)
    else:
        assert seen["importance"] is None
    monkeypatch.undo()
    with torch.no_grad():
        reference = _reference_forward(model, batch, *seen["result"])
    for key in ("sdm_loss", "id_loss", "mlm_loss", "mlm_acc"):
        assert out[key].item() == pytest.approx(reference[key], rel=1e-4, abs=1e-5), key
    total = out["sdm_loss"] + out["id_loss"] + out["mlm_loss"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert set(out) == {"sdm_loss", "id_loss", "mlm_loss", "loss", "img_acc", "txt_acc", "mlm_acc"}


def test_forward_backward_all_losses_weighted():
    weights = {"sdm": 1.0, "itc": 0.5, "cmpm": 0.25, "id": 2.0, "mlm": 3.0}
    model = IRRA(
        _clip(),
        num_classes=4,
        losses=("sdm", "itc", "cmpm", "id", "mlm"),
        loss_weights=weights,
        cmt_depth=1,
        image_ids=True,
    )
    batch = _batch()
    out = model(batch, generator=torch.Generator().manual_seed(1))
    for name in weights:
        assert torch.isfinite(out[f"{name}_loss"])
    out["loss"].backward()
    assert model.classifier.weight.grad is not None
    assert model.cross_attn.in_proj_weight.grad.abs().sum() > 0
    assert model.base_model.text_projection.grad.abs().sum() > 0
    for key in ("img_acc", "txt_acc", "mlm_acc"):
        assert 0.0 <= out[key].item() <= 1.0
    # Weights scale each loss exactly (same masking draws for the same seed).
    unweighted = IRRA(model.base_model, num_classes=4, losses=model.losses, cmt_depth=1, image_ids=True)
    unweighted.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain = unweighted(batch, generator=torch.Generator().manual_seed(1))
        again = model(batch, generator=torch.Generator().manual_seed(1))
    for name, weight in weights.items():
        assert again[f"{name}_loss"].item() == pytest.approx(weight * plain[f"{name}_loss"].item(), rel=1e-5)


def test_trimmed_mlm_branch_runs_and_sees_the_same_masks():
    clip = _clip()
    full = IRRA(clip, num_classes=4, losses=("mlm",), cmt_depth=1)
    trimmed = IRRA(clip, num_classes=4, losses=("mlm",), cmt_depth=1, mlm_trim=True)
    trimmed.load_state_dict(full.state_dict())
    batch = _batch()
    with torch.no_grad():
        a = full(batch, generator=torch.Generator().manual_seed(3))
        b = trimmed(batch, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(b["mlm_loss"])
    # Padding takes part in IRRA's cross-modal blocks, so the two differ slightly but stay close.
    assert b["mlm_loss"].item() == pytest.approx(a["mlm_loss"].item(), rel=0.2)


def test_bad_labels_and_missing_image_ids_are_clear_errors():
    model = IRRA(_clip(), num_classes=2, losses=("sdm", "id"))
    with pytest.raises(InputError, match="identity label 3 is outside the classifier's 2 classes"):
        model(_batch())
    model = IRRA(_clip(), num_classes=4, losses=("sdm",), image_ids=True)
    batch = _batch()
    del batch["image_ids"]
    with pytest.raises(InputError, match="loss.image_ids"):
        model(batch)
    with pytest.raises(InputError, match="unknown loss"):
        IRRA(_clip(), num_classes=4, losses=("sdm", "triplet"))


def test_build_irra_from_settings_random_clip():
    settings = resolve_settings(
        config={
            "model": {
                "pretrained": None,
                "image_size": list(TINY_IMAGE_SIZE),
                "stride": 16,
                "cmt_depth": 1,
                "text_length": TINY_IRRA_CONTEXT,
                "temperature": 0.05,
                "arch": TINY_IRRA_ARCH,
            },
            "loss": {"names": "itc+mlm", "mlm_weight": 0.5},
            "masking": {"strategy": "attention", "temperature": 0.5},
        },
        environ={},
    )
    model = build_irra(settings, num_classes=7)
    assert model.logit_scale == pytest.approx(20.0)
    assert model.losses == ("itc", "mlm") and not hasattr(model, "classifier")
    assert model.masking.strategy == "attention"
    assert model.base_model.config.context_length == TINY_IRRA_CONTEXT
    out = model(_batch(4), generator=torch.Generator().manual_seed(0))
    assert set(out) == {"itc_loss", "mlm_loss", "mlm_acc", "loss"}
