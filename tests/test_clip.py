"""CLIP model: OpenAI names, attention fidelity, trimming, EOT attention row, architecture reading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE
from torch import nn

from personsearch.errors import InputError
from personsearch.model import CLIP, CLIPConfig, build_clip, config_from_state_dict, patch_grid
from personsearch.model.clip import Attention

SOT, EOT = 49406, 49407
# Two layers and two heads per tower (TINY_ARCH has one head, one vision layer): the attention
# fidelity tests need the multi-head split and a stack of blocks to be exercised.
ARCH = dict(TINY_ARCH, vision_layers=2, vision_heads=2, text_heads=2)


def make_ids(lengths: list[int], context: int = 16, seed: int = 0) -> torch.Tensor:
    """SOT + random words + EOT, zero padded; ``lengths`` counts the words."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = SOT
        ids[row, 1 : n + 1] = torch.randint(1, 49000, (n,), generator=generator)
        ids[row, n + 1] = EOT
    return ids


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return build_clip(ARCH, image_size=TINY_IMAGE_SIZE, stride=8, context_length=16).eval()


def reference_tower(blocks: nn.ModuleList, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """OpenAI's formulation: LND layout, nn.MultiheadAttention loaded with the same weights."""
    x = x.transpose(0, 1)
    length = x.shape[0]
    mask = torch.full((length, length), float("-inf")).triu(1) if causal else None
    for block in blocks:
        width = block.ln_1.weight.shape[0]
        mha = nn.MultiheadAttention(width, block.attn.heads)
        mha.load_state_dict(block.attn.state_dict())
        h = block.ln_1(x)
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = block.ln_2(x)
        hidden = block.mlp.c_fc(h)
        x = x + block.mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))
    return x.transpose(0, 1)


def test_state_dict_has_openai_names(model: CLIP) -> None:
    keys = set(model.state_dict())
    expected_top = {
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.ln_pre.weight",
        "visual.ln_pre.bias",
        "visual.ln_post.weight",
        "visual.ln_post.bias",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "text_projection",
        "logit_scale",
    }
    block = [
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "ln_1.weight",
        "ln_1.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
    ]
    for tower in ("visual.transformer", "transformer"):
        for index in range(2):
            expected_top |= {f"{tower}.resblocks.{index}.{name}" for name in block}
    assert keys == expected_top
    assert model.state_dict()["visual.proj"].shape == (64, 32)
    assert model.state_dict()["text_projection"].shape == (64, 32)
    assert model.state_dict()["visual.positional_embedding"].shape == (1 + 4 * 2, 64)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_attention_equals_explicit_and_multihead(causal: bool) -> None:
    torch.manual_seed(1)
    attn = Attention(64, 4)
    nn.init.normal_(attn.in_proj_bias, std=0.1)
    x = torch.randn(3, 7, 64)
    ours, _ = attn(x, causal=causal)

    # explicit softmax(QK^T / sqrt(d)) V in float64
    x64 = x.double()
    q, k, v = F.linear(x64, attn.in_proj_weight.double(), attn.in_proj_bias.double()).chunk(3, dim=-1)
    split = lambda t: t.view(3, 7, 4, 16).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(16)
    if causal:
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    explicit = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 7, 64)
    explicit = F.linear(explicit, attn.out_proj.weight.double(), attn.out_proj.bias.double())
    torch.testing.assert_close(ours.double(), explicit, atol=1e-5, rtol=1e-5)

    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    mha.load_state_dict(attn.state_dict())
    mask = torch.full((7, 7), float("-inf")).triu(1) if causal else None
    with torch.no_grad():
        reference = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_encoders_match_openai_formulation(model: CLIP) -> None:
    torch.manual_seed(2)
    images = torch.randn(3, 3, *TINY_IMAGE_SIZE)
    ids = make_ids([3, 7, 1])
    with torch.no_grad():
        x = model.visual.conv1(images).flatten(2).transpose(1, 2)
        x = (
            torch.cat([model.visual.class_embedding.expand(3, 1, -1), x], 1)
            + model.visual.positional_embedding
        )
        x = reference_tower(model.visual.transformer.resblocks, model.visual.ln_pre(x), causal=False)
        image_ref = model.visual.ln_post(x) @ model.visual.proj
        t = model.token_embedding(ids) + model.positional_embedding
        t = (
            model.ln_final(reference_tower(model.transformer.resblocks, t, causal=True))
            @ model.text_projection
        )
        text_ref = t[torch.arange(3), ids.argmax(-1)]

        torch.testing.assert_close(model.encode_image(images), image_ref[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_image_tokens(images), image_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(ids), text_ref, atol=1e-5, rtol=1e-5)
        tokens, row = model.encode_text_tokens(ids)
        torch.testing.assert_close(tokens, t, atol=1e-5, rtol=1e-5)
        assert row is None
        image_feats, text_feats = model(images, ids)
        torch.testing.assert_close(text_feats, text_ref, atol=1e-5, rtol=1e-5)


def test_trimmed_text_equals_full_length(model: CLIP) -> None:
    ids = make_ids([2, 9, 4], seed=3)
    longest = int(ids.argmax(-1).max()) + 1
    with torch.no_grad():
        full_tokens, full_row = model.encode_text_tokens(ids, attention_layers=2, trim=False)
        cut_tokens, cut_row = model.encode_text_tokens(ids, attention_layers=2, trim=True)
        assert cut_tokens.shape == (3, longest, 32) and full_tokens.shape == (3, 16, 32)
        eot = ids.argmax(-1)
        for b in range(3):
            real = slice(0, int(eot[b]) + 1)
            torch.testing.assert_close(cut_tokens[b, real], full_tokens[b, real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cut_row[b, real], full_row[b, real], atol=1e-6, rtol=1e-5)
        assert full_row[:, longest:].abs().max() == 0
        global_from_tokens = full_tokens[torch.arange(3), eot]
        torch.testing.assert_close(model.encode_text(ids), global_from_tokens, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_eot_attention_row_equals_explicit(model: CLIP, layers: int) -> None:
    ids = make_ids([5, 2, 11], seed=4)
    eot = ids.argmax(-1)
    with torch.no_grad():
        _, row = model.encode_text_tokens(ids, attention_layers=layers)
        x = (model.token_embedding(ids) + model.positional_embedding).double()
        rows = []
        for block in model.transformer.resblocks:
            h = F.layer_norm(x, (64,), block.ln_1.weight.double(), block.ln_1.bias.double())
            q, k, _ = F.linear(h, block.attn.in_proj_weight.double(), block.attn.in_proj_bias.double()).chunk(
                3, -1
            )
            q = q.view(3, 16, 2, 32).transpose(1, 2)
            k = k.view(3, 16, 2, 32).transpose(1, 2)
            scores = q @ k.transpose(-1, -2) / math.sqrt(32)
            scores = scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
            attn = scores.softmax(-1)
            rows.append(attn[torch.arange(3), :, eot].mean(1))
            x, _ = block(x.float(), causal=True)
            x = x.double()
        expected = torch.stack(rows[-min(layers, 2) :]).mean(0)
    assert row is not None and not row.requires_grad
    torch.testing.assert_close(row.double(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(row.sum(-1), torch.ones(3))


def test_attention_row_is_detached_and_gradients_flow(model: CLIP) -> None:
    ids = make_ids([4, 6], seed=5)
    tokens, row = model.encode_text_tokens(ids, attention_layers=1, trim=True)
    assert tokens.requires_grad and row is not None and not row.requires_grad
    tokens.sum().backward()
    assert model.transformer.resblocks[0].attn.in_proj_weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_overlapping_patches_and_grid_errors() -> None:
    assert patch_grid((384, 128), 16, 16) == (24, 8)
    assert patch_grid((388, 136), 16, 12) == (32, 11)
    torch.manual_seed(6)
    overlapping = build_clip(ARCH, image_size=TINY_IMAGE_SIZE, stride=4, context_length=16).eval()
    assert overlapping.grid == (7, 3)
    with torch.no_grad():
        tokens = overlapping.encode_image_tokens(torch.randn(2, 3, *TINY_IMAGE_SIZE))
    assert tokens.shape == (2, 1 + 21, 32)
    with pytest.raises(InputError, match="height 30 cannot be covered"):
        patch_grid((30, 16), 8, 4)
    with pytest.raises(InputError, match="stride 9"):
        patch_grid((32, 16), 8, 9)
    with pytest.raises(InputError, match="patch grid"):
        overlapping.encode_image(torch.randn(1, 3, 40, 16))


def test_too_long_ids_are_refused(model: CLIP) -> None:
    with pytest.raises(InputError, match="exceed the context of 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))


def test_bf16_autocast_close_to_fp32(model: CLIP) -> None:
    images = torch.randn(2, 3, *TINY_IMAGE_SIZE)
    ids = make_ids([3, 8], seed=7)
    with torch.no_grad():
        image32, text32 = model.encode_image(images), model.encode_text(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image16, text16 = model.encode_image(images), model.encode_text(ids)
            _, row = model.encode_text_tokens(ids, attention_layers=1)
    assert row is not None and row.dtype == torch.float32
    assert F.cosine_similarity(image16.float(), image32).min() > 0.99
    assert F.cosine_similarity(text16.float(), text32).min() > 0.99


OPENAI_ARCHS = {
    # name: (embed, vision width, layers, patch, resolution, text width, text layers)
    "ViT-B/32": (512, 768, 12, 32, 224, 512, 12),
    "ViT-B/16": (512, 768, 12, 16, 224, 512, 12),
    "ViT-L/14": (768, 1024, 24, 14, 224, 768, 12),
    "ViT-L/14@336px": (768, 1024, 24, 14, 336, 768, 12),
}


@pytest.mark.parametrize("name", sorted(OPENAI_ARCHS))
def test_config_from_openai_shaped_state_dicts(name: str) -> None:
    embed, vwidth, vlayers, patch, resolution, twidth, tlayers = OPENAI_ARCHS[name]
    config = CLIPConfig(
        embed, vwidth, vlayers, vwidth // 64, patch, resolution, twidth, tlayers, twidth // 64
    )
    with torch.device("meta"):
        shaped = CLIP(config, image_size=(resolution, resolution), stride=patch).state_dict()
    assert config_from_state_dict(shaped) == config
    assert config.pretrained_grid == (resolution // patch,) * 2


def test_config_errors_name_the_problem(model: CLIP) -> None:
    state = dict(model.state_dict())
    with pytest.raises(InputError, match="ResNet CLIP is not supported"):
        config_from_state_dict({**state, "visual.layer1.0.conv1.weight": torch.zeros(1)})
    del state["visual.proj"], state["text_projection"]
    with pytest.raises(InputError, match="missing visual.proj, text_projection"):
        config_from_state_dict(state)


def test_build_clip_uses_openai_initialisation() -> None:
    torch.manual_seed(8)
    arch = dict(ARCH, text_width=128, text_layers=2, text_heads=2)
    model = build_clip(arch, image_size=TINY_IMAGE_SIZE, stride=8, context_length=77, vocab_size=4000)
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 0.002
    assert abs(model.positional_embedding.std().item() - 0.01) < 0.001
    block = model.transformer.resblocks[0]
    assert abs(block.attn.in_proj_weight.std().item() - 128**-0.5) < 0.01
    assert abs(block.mlp.c_fc.weight.std().item() - 256**-0.5) < 0.01
    assert abs(block.mlp.c_proj.weight.std().item() - 128**-0.5 * 4**-0.5) < 0.005
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
