"""Checkpoint loading: every format round-trips to identical embeddings; clear errors otherwise."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE, clip_inputs

from personsearch.errors import InputError
from personsearch.model import CLIP, build_clip, load_clip, read_state_dict, resize_pos_embed


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8, context_length=16).eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return clip_inputs(TINY_IMAGE_SIZE, context=16)


def assert_same_embeddings(loaded: CLIP, reference: CLIP, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, ids = inputs
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_image(images), reference.encode_image(images), rtol=0, atol=0
        )
        torch.testing.assert_close(loaded.encode_text(ids), reference.encode_text(ids), rtol=0, atol=0)


def openai_state(model: CLIP) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face CLIPModel layout, written out by hand from OpenAI names."""
    out: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.embeddings.position_ids": torch.arange(16)[None],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
        "text_projection.weight": state["text_projection"].t().contiguous(),
        "logit_scale": state["logit_scale"],
    }
    for ours, theirs in (("transformer", "text_model"), ("visual.transformer", "vision_model")):
        index = 0
        while f"{ours}.resblocks.{index}.ln_1.weight" in state:
            src, dst = f"{ours}.resblocks.{index}.", f"{theirs}.encoder.layers.{index}."
            for kind in ("weight", "bias"):
                q, k, v = state[f"{src}attn.in_proj_{kind}"].chunk(3, dim=0)
                out[f"{dst}self_attn.q_proj.{kind}"] = q.contiguous()
                out[f"{dst}self_attn.k_proj.{kind}"] = k.contiguous()
                out[f"{dst}self_attn.v_proj.{kind}"] = v.contiguous()
                out[f"{dst}self_attn.out_proj.{kind}"] = state[f"{src}attn.out_proj.{kind}"]
                out[f"{dst}layer_norm1.{kind}"] = state[f"{src}ln_1.{kind}"]
                out[f"{dst}layer_norm2.{kind}"] = state[f"{src}ln_2.{kind}"]
                out[f"{dst}mlp.fc1.{kind}"] = state[f"{src}mlp.c_fc.{kind}"]
                out[f"{dst}mlp.fc2.{kind}"] = state[f"{src}mlp.c_proj.{kind}"]
            index += 1
    return out


def hf_config(act: str = "quick_gelu") -> dict:
    return {
        "architectures": ["CLIPModel"],
        "projection_dim": 32,
        "text_config": {"hidden_size": 64, "num_attention_heads": 1, "hidden_act": act},
        "vision_config": {"hidden_size": 64, "num_attention_heads": 1, "hidden_act": act, "patch_size": 8},
    }


# ------------------------------------------------------------------------------- round trips


def test_plain_state_dict_files(model: CLIP, inputs, tmp_path: Path) -> None:
    for name, payload in (
        ("weights.pt", openai_state(model)),
        ("weights.pth", {"state_dict": openai_state(model)}),
        ("weights.bin", {f"module.{k}": v for k, v in openai_state(model).items()}),
    ):
        torch.save(payload, tmp_path / name)
        assert_same_embeddings(load_clip(tmp_path / name, image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)


def test_safetensors_and_half_precision(model: CLIP, inputs, tmp_path: Path) -> None:
    save_file(openai_state(model), str(tmp_path / "clip.safetensors"))
    loaded = load_clip(tmp_path / "clip.safetensors", image_size=TINY_IMAGE_SIZE, stride=8)
    assert_same_embeddings(loaded, model, inputs)
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training

    half = {k: v.half() for k, v in openai_state(model).items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    loaded = load_clip(tmp_path / "half.safetensors", image_size=TINY_IMAGE_SIZE, stride=8)
    assert loaded.visual.proj.dtype == torch.float32
    torch.testing.assert_close(loaded.visual.proj, half["visual.proj"].float(), rtol=0, atol=0)


def test_torchscript_archive(model: CLIP, inputs, tmp_path: Path, tiny_arch: dict) -> None:
    scripted_source = build_clip(tiny_arch, image_size=TINY_IMAGE_SIZE, stride=8, context_length=16).eval()
    scripted_source.load_state_dict(model.state_dict())
    # OpenAI's archives carry these three as state-dict entries too
    scripted_source.register_buffer("input_resolution", torch.tensor(32))
    scripted_source.register_buffer("context_length", torch.tensor(16))
    scripted_source.register_buffer("vocab_size", torch.tensor(49408))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(scripted_source, inputs, check_trace=False)
        torch.jit.save(traced, str(tmp_path / "ViT-T-8.pt"))
        assert "input_resolution" in torch.jit.load(str(tmp_path / "ViT-T-8.pt")).state_dict()
    assert_same_embeddings(load_clip(tmp_path / "ViT-T-8.pt", image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)


def test_hugging_face_folders(model: CLIP, inputs, tmp_path: Path) -> None:
    hf = to_hf_names(openai_state(model))
    safetensors_dir = tmp_path / "hf_safetensors"
    safetensors_dir.mkdir()
    (safetensors_dir / "config.json").write_text(json.dumps(hf_config()))
    save_file(hf, str(safetensors_dir / "model.safetensors"))
    assert_same_embeddings(load_clip(safetensors_dir, image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)

    bin_dir = tmp_path / "hf_bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text(json.dumps(hf_config()))
    torch.save(hf, bin_dir / "pytorch_model.bin")
    assert_same_embeddings(load_clip(bin_dir, image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)
    assert set(read_state_dict(bin_dir)) == set(model.state_dict())

    gelu_dir = tmp_path / "hf_gelu"
    gelu_dir.mkdir()
    (gelu_dir / "config.json").write_text(json.dumps(hf_config("gelu")))
    save_file(hf, str(gelu_dir / "model.safetensors"))
    with pytest.raises(InputError, match="hidden_act is 'gelu'"):
        load_clip(gelu_dir, image_size=TINY_IMAGE_SIZE, stride=8)


def test_irra_checkpoint(model: CLIP, inputs, tmp_path: Path) -> None:
    full = {f"base_model.{k}": v for k, v in openai_state(model).items()}
    full["classifier.weight"] = torch.randn(11, 32)
    full["mlm_head.dense.weight"] = torch.randn(32, 32)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    torch.save({"model": full, "optimizer": optimizer.state_dict(), "epoch": 7}, tmp_path / "best.pth")
    assert_same_embeddings(load_clip(tmp_path / "best.pth", image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)


def test_run_folders_prefer_best(model: CLIP, inputs, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo"
    (run / "checkpoints").mkdir(parents=True)
    state = {f"base_model.{k}": v for k, v in openai_state(model).items()}
    state["classifier.weight"] = torch.zeros(5, 32)
    other = {k: torch.zeros_like(v) for k, v in state.items()}
    save_file(other, str(run / "checkpoints" / "last.safetensors"))
    loaded = load_clip(run, image_size=TINY_IMAGE_SIZE, stride=8)
    assert loaded.visual.proj.abs().max() == 0  # only last exists
    save_file(state, str(run / "checkpoints" / "best.safetensors"))
    assert_same_embeddings(load_clip(run, image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)


def test_run_folder_heads_come_from_its_config(inputs, tmp_path: Path, tiny_arch: dict) -> None:
    torch.manual_seed(3)
    arch = dict(tiny_arch, vision_heads=4, text_heads=2)
    trained = build_clip(arch, image_size=TINY_IMAGE_SIZE, stride=8, context_length=16).eval()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_file(
        {f"base_model.{k}": v for k, v in trained.state_dict().items()},
        str(run / "checkpoints" / "best.safetensors"),
    )
    (run / "config.yaml").write_text("model:\n  arch:\n    vision_heads: 4\n    text_heads: 2\n")
    # a run records the sha256 of its weights beside them; without the record they are refused
    with pytest.raises(InputError, match="best.safetensors has no best.json"):
        load_clip(run, image_size=TINY_IMAGE_SIZE, stride=8)
    digest = hashlib.sha256((run / "checkpoints" / "best.safetensors").read_bytes()).hexdigest()
    (run / "checkpoints" / "best.json").write_text(json.dumps({"format_version": 1, "weights_sha256": digest}))
    loaded = load_clip(run, image_size=TINY_IMAGE_SIZE, stride=8)
    assert loaded.config.vision_heads == 4 and loaded.config.text_heads == 2
    assert_same_embeddings(loaded, trained, inputs)


def test_model_name_resolves_in_clip_dir(model: CLIP, inputs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PERSONSEARCH_CLIP_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(InputError) as error:
        load_clip("ViT-B/16", image_size=TINY_IMAGE_SIZE, stride=8)
    assert "ViT-B-16.pt" in str(error.value) and str(tmp_path / "ViT-B-16.pt") in str(error.value)
    torch.save(openai_state(model), tmp_path / "ViT-B-16.pt")
    assert_same_embeddings(load_clip("ViT-B/16", image_size=TINY_IMAGE_SIZE, stride=8), model, inputs)


# --------------------------------------------------------------------------- position resize


def bilinear_reference(grid: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (align_corners=False) of [H, W, C] in float64."""
    height, width, _ = grid.shape

    def taps(out_size: int, in_size: int, index: int) -> tuple[int, int, float]:
        src = max((index + 0.5) * in_size / out_size - 0.5, 0.0)
        low = min(int(np.floor(src)), in_size - 1)
        high = min(low + 1, in_size - 1)
        return low, high, src - low

    out = np.zeros((rows, cols, grid.shape[2]))
    for i in range(rows):
        y0, y1, wy = taps(rows, height, i)
        for j in range(cols):
            x0, x1, wx = taps(cols, width, j)
            top = (1 - wx) * grid[y0, x0] + wx * grid[y0, x1]
            bottom = (1 - wx) * grid[y1, x0] + wx * grid[y1, x1]
            out[i, j] = (1 - wy) * top + wy * bottom
    return out


@pytest.mark.parametrize("target", [(24, 8), (5, 3), (4, 4), (2, 1)])
def test_resize_pos_embed_matches_float64_reference(target: tuple[int, int]) -> None:
    posemb = torch.randn(1 + 14 * 14, 6, dtype=torch.float64)
    resized = resize_pos_embed(posemb, target)
    expected = bilinear_reference(posemb[1:].reshape(14, 14, 6).numpy(), *target)
    assert resized.shape == (1 + target[0] * target[1], 6)
    torch.testing.assert_close(resized[0], posemb[0])
    torch.testing.assert_close(resized[1:].reshape(*target, 6).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_square_pretrained_grid_is_resized_on_load(inputs, tmp_path: Path, tiny_arch: dict) -> None:
    torch.manual_seed(4)
    square = build_clip(tiny_arch, image_size=(32, 32), stride=8, context_length=16).eval()  # 4x4 grid
    torch.save(square.state_dict(), tmp_path / "square.pt")
    loaded = load_clip(tmp_path / "square.pt", image_size=TINY_IMAGE_SIZE, stride=8)
    assert loaded.config.image_resolution == 32
    expected = resize_pos_embed(square.visual.positional_embedding.detach(), (4, 2))
    torch.testing.assert_close(loaded.visual.positional_embedding.detach(), expected, rtol=0, atol=0)
    overlapping = load_clip(tmp_path / "square.pt", image_size=TINY_IMAGE_SIZE, stride=4)
    assert overlapping.visual.positional_embedding.shape == (1 + 7 * 3, 64)


def test_text_context_is_truncated(model: CLIP, inputs, tmp_path: Path) -> None:
    torch.save(openai_state(model), tmp_path / "clip.pt")
    short = load_clip(tmp_path / "clip.pt", image_size=TINY_IMAGE_SIZE, stride=8, context_length=10)
    assert short.positional_embedding.shape == (10, 64)
    _, ids = inputs
    with torch.no_grad():
        torch.testing.assert_close(short.encode_text(ids[:, :10]), model.encode_text(ids), rtol=0, atol=0)
    with pytest.raises(InputError, match="context length 20 exceeds"):
        load_clip(tmp_path / "clip.pt", image_size=TINY_IMAGE_SIZE, stride=8, context_length=20)


# ------------------------------------------------------------------------------------ errors


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused(model: CLIP, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    payload = dict(openai_state(model))
    payload["surprise"] = _RunsCode(marker)
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refusing to load .*evil.pt"):
        load_clip(tmp_path / "evil.pt", image_size=TINY_IMAGE_SIZE, stride=8)
    assert not marker.exists()


def test_truncated_files_name_the_file(model: CLIP, tmp_path: Path) -> None:
    torch.save(openai_state(model), tmp_path / "whole.pt")
    save_file(openai_state(model), str(tmp_path / "whole.safetensors"))
    for name in ("whole.pt", "whole.safetensors"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut{Path(name).suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match=f"cannot read {cut}"):
            load_clip(cut, image_size=TINY_IMAGE_SIZE, stride=8)
        assert (tmp_path / name).read_bytes() == data


def test_shape_mismatch_names_the_tensor(model: CLIP, tmp_path: Path) -> None:
    state = openai_state(model)
    state["visual.ln_post.bias"] = torch.zeros(65)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        InputError, match=r"visual\.ln_post\.bias has shape \(65,\), the model expects \(64,\)"
    ):
        load_clip(tmp_path / "bad.pt", image_size=TINY_IMAGE_SIZE, stride=8)


def test_missing_and_foreign_content(model: CLIP, tmp_path: Path) -> None:
    state = openai_state(model)
    del state["transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=r"missing transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        load_clip(tmp_path / "partial.pt", image_size=TINY_IMAGE_SIZE, stride=8)

    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a CLIP ViT checkpoint: missing visual.conv1.weight"):
        load_clip(tmp_path / "other.pt", image_size=TINY_IMAGE_SIZE, stride=8)

    resnet = dict(openai_state(model), **{"visual.layer1.0.conv1.weight": torch.zeros(1)})
    torch.save(resnet, tmp_path / "rn50.pt")
    with pytest.raises(InputError, match="ResNet CLIP is not supported"):
        load_clip(tmp_path / "rn50.pt", image_size=TINY_IMAGE_SIZE, stride=8)

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputError, match="does not hold a state dict"):
        load_clip(tmp_path / "list.pt", image_size=TINY_IMAGE_SIZE, stride=8)


def test_missing_paths_and_bad_sizes(model: CLIP, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_clip(tmp_path / "nowhere.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a run folder"):
        load_clip(tmp_path / "empty")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match="has no checkpoints/best.safetensors"):
        load_clip(tmp_path / "run")
    torch.save(openai_state(model), tmp_path / "clip.pt")
    with pytest.raises(InputError, match="cannot be covered"):
        load_clip(tmp_path / "clip.pt", image_size=(30, 16), stride=8)
