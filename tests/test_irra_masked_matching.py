"""``loss.irra_masked_matching``: IRRA's code feeds the MLM-masked caption to SDM/ID too.

Checked against a plain formulation: the text feature the matching losses see is
``encode_text(masked ids)`` with the setting on and ``encode_text(clean ids)`` with it off, and the
SDM/ID losses equal a float64 re-computation from those features.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import TINY_IMAGE_SIZE, TINY_IRRA_ARCH, TINY_IRRA_CONTEXT, tiny_irra_batch

from personsearch.errors import InputError
from personsearch.model import irra as irra_module
from personsearch.model.clip import build_clip
from personsearch.model.irra import IRRA, build_irra
from personsearch.settings import MaskingSettings, resolve_settings
from personsearch.text.masking import EOT_TOKEN_ID, SOT_TOKEN_ID


@functools.lru_cache(maxsize=1)
def _built_clip():
    torch.manual_seed(0)
    return build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16, context_length=TINY_IRRA_CONTEXT)


def _model(masked_matching: bool, strategy: str = "random", losses=("sdm", "mlm", "id")) -> IRRA:
    torch.manual_seed(1)
    return IRRA(
        copy.deepcopy(_built_clip()),
        num_classes=4,
        losses=losses,
        cmt_depth=1,
        masking=MaskingSettings(strategy=strategy, layers=2, ratio=0.3),
        irra_masked_matching=masked_matching,
    )


def _batch(size: int = 6) -> dict[str, torch.Tensor]:
    return tiny_irra_batch(size, seed=5, image_ids=False)


def _plain_sdm(v: torch.Tensor, t: torch.Tensor, pids: torch.Tensor, scale: float, eps: float = 1e-8) -> float:
    """SDM in float64, written out: KL(p || q) both ways, q = identity labels row-normalised."""
    v = F.normalize(v.double(), dim=1)
    t = F.normalize(t.double(), dim=1)
    y = (pids[:, None] == pids[None, :]).double()
    q = y / y.sum(dim=1, keepdim=True)
    total = 0.0
    for logits in (scale * v @ t.T, scale * t @ v.T):
        p = logits.softmax(dim=1)
        total += (p * (logits.log_softmax(dim=1) - torch.log(q + eps))).sum(dim=1).mean().item()
    return total


def _run(model: IRRA, batch, monkeypatch, seed: int = 0):
    """Forward with spies: the masked ids the MLM branch got, the features SDM got, text passes."""
    seen: dict = {"passes": []}
    real_mask, real_sdm = irra_module.mask_captions, irra_module.sdm_loss
    real_encode = model.base_model.encode_text_tokens

    def spy_mask(ids, settings, importance, generator):
        seen["importance"] = importance
        seen["masked"], seen["labels"] = real_mask(ids, settings, importance, generator)
        return seen["masked"], seen["labels"]

    def spy_sdm(image_feats, text_feats, *args, **kwargs):
        seen["sdm_text"] = text_feats.detach().clone()
        seen["sdm_image"] = image_feats.detach().clone()
        return real_sdm(image_feats, text_feats, *args, **kwargs)

    def spy_encode(ids, attention_layers=0, trim=False):
        seen["passes"].append((attention_layers, torch.is_grad_enabled()))
        return real_encode(ids, attention_layers=attention_layers, trim=trim)

    monkeypatch.setattr(irra_module, "mask_captions", spy_mask)
    monkeypatch.setattr(irra_module, "sdm_loss", spy_sdm)
    monkeypatch.setattr(model.base_model, "encode_text_tokens", spy_encode)
    out = model(batch, generator=torch.Generator().manual_seed(seed))
    monkeypatch.undo()
    return out, seen


def _full(masked: torch.Tensor) -> torch.Tensor:
    full = torch.zeros(masked.shape[0], TINY_IRRA_CONTEXT, dtype=masked.dtype)
    full[:, : masked.shape[1]] = masked
    return full


@pytest.mark.parametrize("masked_matching", [True, False])
def test_sdm_and_id_read_the_caption_the_setting_names(masked_matching, monkeypatch):
    model = _model(masked_matching)
    batch = _batch()
    out, seen = _run(model, batch, monkeypatch)
    masked_ids = _full(seen["masked"])
    assert not torch.equal(masked_ids, batch["caption_ids"])  # the draw masked something
    with torch.no_grad():
        clean_feats = model.base_model.encode_text(batch["caption_ids"])
        masked_feats = model.base_model.encode_text(masked_ids)
        image_feats = model.base_model.encode_image(batch["images"])
    want = masked_feats if masked_matching else clean_feats
    other = clean_feats if masked_matching else masked_feats
    assert torch.allclose(seen["sdm_text"], want, atol=1e-5)
    assert not torch.allclose(seen["sdm_text"], other, atol=1e-3)
    assert out["sdm_loss"].item() == pytest.approx(
        _plain_sdm(image_feats, want, batch["pids"], model.logit_scale), rel=1e-4, abs=1e-6
    )
    with torch.no_grad():
        w, b = model.classifier.weight.double(), model.classifier.bias.double()
        plain_id = 0.5 * (
            F.cross_entropy(image_feats.double() @ w.T + b, batch["pids"])
            + F.cross_entropy(want.double() @ w.T + b, batch["pids"])
        )
    assert out["id_loss"].item() == pytest.approx(plain_id.item(), rel=1e-4, abs=1e-6)
    # Masked matching reuses the MLM branch's masked pass: one text pass instead of two.
    assert len(seen["passes"]) == (1 if masked_matching else 2)


def test_same_draws_leave_the_mlm_branch_unchanged(monkeypatch):
    batch = _batch()
    clean_out, clean_seen = _run(_model(False), batch, monkeypatch, seed=7)
    masked_out, masked_seen = _run(_model(True), batch, monkeypatch, seed=7)
    assert torch.equal(clean_seen["masked"], masked_seen["masked"])
    assert masked_out["mlm_loss"].item() == pytest.approx(clean_out["mlm_loss"].item(), rel=1e-5)
    assert masked_out["mlm_acc"].item() == pytest.approx(clean_out["mlm_acc"].item())
    assert masked_out["sdm_loss"].item() != pytest.approx(clean_out["sdm_loss"].item(), rel=1e-4)


def test_attention_masking_takes_importance_from_the_clean_caption(monkeypatch):
    model = _model(True, strategy="attention")
    batch = _batch()
    out, seen = _run(model, batch, monkeypatch)
    length = int(batch["caption_ids"].argmax(-1).max()) + 1
    with torch.no_grad():
        _, clean_row = model.base_model.encode_text_tokens(batch["caption_ids"][:, :length], attention_layers=2)
        masked_feats = model.base_model.encode_text(_full(seen["masked"]))
    assert torch.allclose(seen["importance"], clean_row, atol=1e-6)
    assert torch.allclose(seen["sdm_text"], masked_feats, atol=1e-5)
    # The clean pass only reads attention (no gradient); the masked pass trains every loss.
    assert seen["passes"] == [(2, False), (0, True)]
    out["loss"].backward()
    assert model.base_model.text_projection.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


def test_without_mlm_nothing_is_masked(monkeypatch):
    batch = _batch()
    clean, _ = _run(_model(False, losses=("sdm", "id")), batch, monkeypatch)
    masked, seen = _run(_model(True, losses=("sdm", "id")), batch, monkeypatch)
    assert "masked" not in seen
    for key in ("sdm_loss", "id_loss"):
        assert masked[key].item() == pytest.approx(clean[key].item(), rel=1e-6)


def _settings(**loss):
    return resolve_settings(
        config={
            "model": {
                "pretrained": None,
                "image_size": list(TINY_IMAGE_SIZE),
                "cmt_depth": 1,
                "text_length": TINY_IRRA_CONTEXT,
                "arch": TINY_IRRA_ARCH,
            },
            "loss": loss,
        },
        environ={},
    )


def test_setting_reaches_the_model_and_defaults_to_clean_captions():
    assert _settings().loss.irra_masked_matching is False
    settings = _settings(irra_masked_matching=True)
    model = build_irra(settings, num_classes=4, clip=copy.deepcopy(_built_clip()))
    assert model.irra_masked_matching is True
    with pytest.raises(InputError, match="irra_masked_matching"):
        _settings(irra_masked_matching="sometimes")


@pytest.mark.parametrize("strategy", ["random", "attention"])
def test_empty_caption_is_left_unmasked_and_read_at_eot(strategy, monkeypatch):
    """IRRA would overwrite the EOT of ``[SOT, EOT]`` with <|mask|>; we mask nothing (README)."""
    model = _model(True, strategy=strategy)
    batch = _batch()
    batch["caption_ids"][2] = 0
    batch["caption_ids"][2, :2] = torch.tensor([SOT_TOKEN_ID, EOT_TOKEN_ID])
    _, seen = _run(model, batch, monkeypatch)
    assert seen["masked"][2, :2].tolist() == [SOT_TOKEN_ID, EOT_TOKEN_ID]
    assert not bool(seen["labels"][2].any())
    assert bool(seen["labels"][[0, 1, 3, 4, 5]].any(dim=1).all())
    with torch.no_grad():
        want = model.base_model.encode_text(batch["caption_ids"][2:3])
    assert torch.allclose(seen["sdm_text"][2:3], want, atol=1e-5)
