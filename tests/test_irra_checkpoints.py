"""Checkpoints made the way IRRA's code makes them (no logit_scale, fp16 by its convert_weights,
{"model", "optimizer", "scheduler", "epoch"}, configs.yaml with a python tuple) load everywhere and
evaluate to IRRA's own evaluator's numbers; the variants its descendants publish load too."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.helpers import clip_inputs
from torch import nn
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.model import CLIP, IRRA, build_clip, load_clip, read_state_dict

runner = CliRunner()
SIZE = (64, 32)
# width 64: one head per tower, as read back from weights; embed 64 so the cross-modal branch exists
ARCH = dict(embed_dim=64, vision_width=64, vision_layers=1, vision_heads=1, patch_size=16,
            text_width=64, text_layers=1, text_heads=1)
IRRA_CLASSES = 7  # the synthetic dataset has 12 training identities: another size on purpose


def irra_convert_weights(model: nn.Module) -> None:
    """IRRA's ``convert_weights``: Linear/Conv weights and biases, attention in-projections and the
    two projections to fp16; everything else (LayerNorm, embeddings) stays fp32."""

    def convert(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        # nn.MultiheadAttention in IRRA; our attention modules carry the same parameter names
        for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                     "bias_k", "bias_v"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, torch.Tensor):
                tensor.data = tensor.data.half()
        for name in ("text_projection", "proj"):
            attr = getattr(module, name, None)
            if isinstance(attr, torch.Tensor):
                attr.data = attr.data.half()

    model.apply(convert)


@pytest.fixture(scope="module")
def irra_model() -> IRRA:
    torch.manual_seed(0)
    clip = build_clip(ARCH, image_size=SIZE, stride=16, context_length=77)
    model = IRRA(clip, num_classes=IRRA_CLASSES, cmt_depth=1)
    irra_convert_weights(model)
    return model.eval()


@pytest.fixture(scope="module")
def irra_state(irra_model: IRRA) -> dict[str, torch.Tensor]:
    """IRRA's ``model.state_dict()``: its CLIP has no logit_scale parameter at all."""
    state = {k: v.clone() for k, v in irra_model.state_dict().items() if k != "base_model.logit_scale"}
    dtypes = {k: v.dtype for k, v in state.items()}
    assert dtypes["base_model.visual.conv1.weight"] == torch.float16
    assert dtypes["base_model.transformer.resblocks.0.attn.in_proj_weight"] == torch.float16
    assert dtypes["base_model.visual.proj"] == dtypes["base_model.text_projection"] == torch.float16
    assert dtypes["cross_attn.in_proj_bias"] == dtypes["classifier.weight"] == torch.float16
    assert dtypes["base_model.ln_final.weight"] == dtypes["ln_post.weight"] == torch.float32
    assert dtypes["base_model.token_embedding.weight"] == torch.float32
    return state


def reference_clip(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> CLIP:
    """The checkpoint's CLIP built by hand: its weights put straight into a fresh model."""
    clip = build_clip(ARCH, image_size=SIZE, stride=16, context_length=77)
    weights = {k[len("base_model."):]: v for k, v in state.items() if k.startswith("base_model.")}
    weights["logit_scale"] = clip.logit_scale.detach().clone()
    clip.load_state_dict(weights)
    return clip.to(dtype).eval()


def save_irra_run(folder: Path, state: dict[str, torch.Tensor], name: str = "best.pth") -> Path:
    """What IRRA's Checkpointer and save_train_configs leave in its output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    params = [nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.Adam(params, lr=1e-5, eps=1e-3)
    params[0].grad = torch.ones(3)
    optimizer.step()
    scheduler = {"milestones": (20, 50), "gamma": 0.1, "warmup_factor": 0.1, "warmup_epochs": 5,
                 "mode": "cosine", "target_lr": 0, "power": 0.9, "base_lrs": [1e-5], "last_epoch": 3}
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler, "epoch": 3},
               folder / name)
    args = {"name": "iira", "dataset_name": "CUHK-PEDES", "img_size": SIZE, "stride_size": 16,
            "loss_names": "sdm+mlm+id", "temperature": 0.02, "cmt_depth": 1, "text_length": 77,
            "vocab_size": 49408, "pretrain_choice": "ViT-B/16", "img_aug": True, "val_dataset": "test"}
    text = yaml.dump(args, default_flow_style=False)  # PyYAML's default dumper, as IRRA
    assert "!!python/tuple" in text
    (folder / "configs.yaml").write_text(text)
    return folder / name


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return clip_inputs(SIZE, context=77)


def assert_embeds_like(loaded: CLIP, state: dict[str, torch.Tensor]) -> None:
    images, ids = inputs()
    reference = reference_clip(state, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), reference.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_text(ids), reference.encode_text(ids), rtol=0, atol=0)


def irra_rank(similarity: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, max_rank: int = 10):
    """IRRA's utils/metrics.py ``rank`` (get_mAP=True), in float64."""
    indices = torch.argsort(similarity, dim=1, descending=True)
    matches = g_pids[indices].eq(q_pids.view(-1, 1)).double()
    cmc = matches[:, :max_rank].cumsum(1).clamp(max=1).mean(0) * 100
    num_rel = matches.sum(1)
    tmp = matches.cumsum(1)
    inp = []
    for i, row in enumerate(matches):
        last = int(row.nonzero()[-1])
        inp.append(tmp[i, last] / (last + 1.0))
    minp = torch.stack(inp).mean() * 100
    precision = tmp / torch.arange(1, tmp.shape[1] + 1, dtype=torch.float64)
    ap = (precision * matches).sum(1) / num_rel
    # a gallery under 10 images (this tiny test split has 8) would make IRRA index past its cmc:
    # R@K for K beyond the gallery is R@(gallery size)
    at = {k: float(cmc[min(k, cmc.shape[0]) - 1]) for k in (1, 5, 10)}
    return {"R1": at[1], "R5": at[5], "R10": at[10], "mAP": float(ap.mean() * 100), "mINP": float(minp)}


# ------------------------------------------------------------------------------------ done when


def test_irra_run_folder_evaluates_to_irra_evaluator(irra_state, prepared_tiny, tmp_path):
    from personsearch.data.datasets import GalleryImages, QueryCaptions
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.transforms import build_transform
    from personsearch.runs import load_trained

    run = tmp_path / "irra_out"
    save_irra_run(run, irra_state)
    result = runner.invoke(app, ["eval", str(run), "--data", str(prepared_tiny), "--json"])
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)["t2i"]

    prepared = PreparedDataset.load(prepared_tiny)
    queries = QueryCaptions(prepared, "test")
    gallery = GalleryImages(prepared, "test", build_transform(SIZE, train=False))
    images = torch.stack([gallery[i]["images"] for i in range(len(gallery))]).double()
    clip = reference_clip(irra_state)
    with torch.no_grad():
        text = torch.nn.functional.normalize(clip.encode_text(queries.caption_ids), dim=1)
        image = torch.nn.functional.normalize(clip.encode_image(images), dim=1)
    theirs = irra_rank(text @ image.t(), queries.pids, gallery.pids)
    assert 0 < theirs["R1"] < 100  # a ranking that can go wrong
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-3), key

    model = load_trained(run)
    assert model.kind == "irra" and model.num_classes == IRRA_CLASSES  # from the checkpoint, not the data
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "configs.yaml"]


# ------------------------------------------------------------------------- every entry point


def test_load_clip_and_read_state_dict_without_logit_scale(irra_state, tmp_path, caplog):
    path = save_irra_run(tmp_path / "run", irra_state)
    state = read_state_dict(path)
    assert "logit_scale" not in state and "classifier.weight" not in state
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    torch.testing.assert_close(state["visual.proj"], irra_state["base_model.visual.proj"].float(), rtol=0, atol=0)
    with caplog.at_level(logging.WARNING):
        assert_embeds_like(load_clip(path, image_size=SIZE, stride=16), irra_state)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # IRRA's heads are known


def test_torchscript_archive_without_logit_scale(irra_state, tmp_path):
    clip = reference_clip(irra_state, torch.float32)
    clip.logit_scale = None  # drops it from the archive's state dict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(clip, inputs(), check_trace=False)
        torch.jit.save(traced, str(tmp_path / "ViT-T.pt"))
        assert "logit_scale" not in torch.jit.load(str(tmp_path / "ViT-T.pt")).state_dict()
    assert_embeds_like(load_clip(tmp_path / "ViT-T.pt", image_size=SIZE, stride=16), irra_state)


def test_explain_mask_weights_takes_an_irra_checkpoint(irra_state, tmp_path):
    path = save_irra_run(tmp_path / "run", irra_state)
    result = runner.invoke(app, ["explain-mask", "a man in a red coat", "--weights", str(path),
                                 "--set", "model.image_size=[64,32]", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"][1:-1] == ["a", "man", "in", "a", "red", "coat"]


def test_fine_tuning_drops_a_classifier_of_another_size_with_a_note(irra_state, tiny_settings, tmp_path, caplog):
    path = save_irra_run(tmp_path / "run", irra_state)
    settings = tiny_settings.model_copy(deep=True)
    settings.model.pretrained = str(path)
    with caplog.at_level(logging.INFO, logger="personsearch"):
        model = IRRA.from_settings(settings, num_classes=12)
    assert model.classifier.weight.shape == (12, 64)
    notes = [r.getMessage() for r in caplog.records if "start fresh" in r.getMessage()]
    assert len(notes) == 1 and f"classifier of {IRRA_CLASSES} identities is dropped (this dataset has 12)" in notes[0]
    assert "cross_attn" in notes[0] and "mlm_head" in notes[0]
    assert_embeds_like(model.base_model.eval(), irra_state)


# --------------------------------------------------------------------------------- variants


def test_module_prefix_of_data_parallel(irra_state, tmp_path):
    path = save_irra_run(tmp_path / "run", {f"module.{k}": v for k, v in irra_state.items()})
    assert_embeds_like(load_clip(path, image_size=SIZE, stride=16), irra_state)


def test_bare_clip_without_base_model_prefix(irra_state, tmp_path, caplog):
    bare = {k[len("base_model."):]: v for k, v in irra_state.items() if k.startswith("base_model.")}
    bare["classifier.weight"] = irra_state["classifier.weight"]  # a head beside a bare CLIP is still a head
    torch.save({"state_dict": bare}, tmp_path / "reid_clip.pth")
    with caplog.at_level(logging.WARNING):
        assert_embeds_like(load_clip(tmp_path / "reid_clip.pth", image_size=SIZE, stride=16), irra_state)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_classifier_size_comes_from_the_checkpoint(irra_state, tmp_path):
    from personsearch.model.checkpoints import load_checkpoint

    for classes in (3, 11000):
        state = dict(irra_state)
        state["classifier.weight"] = torch.zeros(classes, 64, dtype=torch.float16)
        state["classifier.bias"] = torch.zeros(classes, dtype=torch.float16)
        path = save_irra_run(tmp_path / f"run{classes}", state)
        loaded = load_checkpoint(path, image_size=SIZE, stride=16)
        assert loaded.num_classes == classes
        assert_embeds_like(loaded.clip, irra_state)


def test_unknown_heads_are_listed_in_one_warning(irra_state, tmp_path, caplog):
    state = dict(irra_state)
    state["prompt_learner.ctx"] = torch.zeros(4, 64)
    state["bnneck.running_mean"] = torch.zeros(64)
    state["base_model.visual.extra_token"] = torch.zeros(64)
    path = save_irra_run(tmp_path / "run", state)
    with caplog.at_level(logging.WARNING):
        assert_embeds_like(load_clip(path, image_size=SIZE, stride=16), irra_state)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    for key in ("prompt_learner.ctx", "bnneck.running_mean", "visual.extra_token"):
        assert key in warned[0]
    assert "classifier" not in warned[0] and "mlm_head" not in warned[0]


def test_fp16_tensors_load_as_float32_with_their_values(irra_state, tmp_path):
    path = save_irra_run(tmp_path / "run", irra_state)
    loaded = load_clip(path, image_size=SIZE, stride=16)
    params = dict(loaded.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    for key in ("visual.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "text_projection"):
        expected = irra_state[f"base_model.{key}"]
        assert expected.dtype == torch.float16
        assert np.array_equal(params[key].detach().numpy(), expected.float().numpy())
    torch.testing.assert_close(params["logit_scale"].detach(), torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
