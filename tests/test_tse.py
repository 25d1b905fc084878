"""RDE's token-selection embeddings against plain float64 formulations written here: the heads
(selection, normalisation, MLP with BatchNorm in training and evaluation, max pooling), the
attention rows they read (against torch's own nn.MultiheadAttention), and the joint embedding."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE

from personsearch.model.clip import build_clip
from personsearch.model.tse import ImageTokenSelection, TextTokenSelection, joint_embedding
from personsearch.text import default_tokenizer


def _plain_mlp(head, x: list[list[float]], train: bool) -> list[list[float]]:
    """Linear -> BatchNorm (batch statistics in training, running ones in evaluation) -> ReLU -> Linear."""
    w1, b1 = head.mlp.layers[0].weight.double(), head.mlp.layers[0].bias.double()
    w2, b2 = head.mlp.layers[1].weight.double(), head.mlp.layers[1].bias.double()
    bn = head.mlp.bns[0]
    hidden = [[sum(w1[o][i].item() * row[i] for i in range(len(row))) + b1[o].item() for o in range(w1.shape[0])]
              for row in x]
    out_rows = []
    for c in range(len(hidden[0])):
        column = [h[c] for h in hidden]
        if train:
            mean = sum(column) / len(column)
            var = sum((v - mean) ** 2 for v in column) / len(column)
        else:
            mean, var = bn.running_mean[c].item(), bn.running_var[c].item()
        scale = bn.weight[c].item() / math.sqrt(var + bn.eps)
        for r, value in enumerate(column):
            hidden[r][c] = max(0.0, (value - mean) * scale + bn.bias[c].item())
    for h in hidden:
        out_rows.append([sum(w2[o][i].item() * h[i] for i in range(len(h))) + b2[o].item() for o in range(w2.shape[0])])
    return out_rows


def _plain_linear(layer, row: list[float]) -> list[float]:
    w, b = layer.weight.double(), layer.bias.double()
    return [sum(w[o][i].item() * row[i] for i in range(len(row))) + b[o].item() for o in range(w.shape[0])]


def _normalised(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row)) + 1e-8
    return [v / norm for v in row]


def plain_image_tse(head, tokens: torch.Tensor, row: torch.Tensor, train: bool) -> list[list[float]]:
    batch, n, _ = tokens.shape
    k = int((n - 1) * head.ratio)
    chosen = []
    for b in range(batch):
        scores = [(-1.0 if j == 0 else row[b, j].item(), j) for j in range(n)]
        picked = [j for _, j in sorted(scores, key=lambda s: -s[0])[:k]]
        chosen.append([_normalised(tokens[b, j].double().tolist()) for j in picked])
    flat = [t for rows in chosen for t in rows]
    mlp = _plain_mlp(head, flat, train)
    out = []
    for b in range(batch):
        summed = [[a + c for a, c in zip(_plain_linear(head.fc, t), mlp[b * k + i], strict=True)]
                  for i, t in enumerate(chosen[b])]
        out.append([max(column) for column in zip(*summed, strict=True)])
    return out


def plain_text_tse(head, tokens: torch.Tensor, ids: torch.Tensor, row: torch.Tensor, train: bool):
    batch, length, _ = tokens.shape
    k = int((77 - 2) * head.ratio)
    chosen, counts = [], []
    for b in range(batch):
        eot = int(ids[b].argmax())
        scores = []
        for j in range(length):
            value = -1.0 if j in (0, eot) else row[b, j].item()
            scores.append((value * (1.0 if ids[b, j] != 0 else 0.0), j))
        picked = [j for _, j in sorted(scores, key=lambda s: -s[0])[: min(k, length)]]
        words = int((ids[b] != 0).sum()) - 2
        counts.append(min(words, k))
        chosen.append([_normalised(tokens[b, j].double().tolist()) for j in picked])
    flat = [t for rows in chosen for t in rows]
    mlp = _plain_mlp(head, flat, train)
    width = len(chosen[0])
    out = []
    for b in range(batch):
        summed = [[a + c for a, c in zip(_plain_linear(head.linear, t), mlp[b * width + i], strict=True)]
                  for i, t in enumerate(chosen[b][: counts[b]])]
        out.append([max(column) for column in zip(*summed, strict=True)])
    return out


@pytest.fixture()
def clip():
    torch.manual_seed(0)
    return build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8).eval()


def _ids(captions: list[str], length: int = 77) -> torch.Tensor:
    return torch.from_numpy(default_tokenizer().token_matrix(captions, length, truncate=True)).long()


@pytest.mark.parametrize("train", [True, False], ids=["training", "evaluation"])
def test_image_tse_matches_the_plain_formulation(clip, train):
    torch.manual_seed(1)
    head = ImageTokenSelection(in_dim=clip.embed_dim, embed_dim=16, ratio=0.3).double()
    head.mlp.bns[0].running_mean.uniform_(-0.2, 0.2)
    head.mlp.bns[0].running_var.uniform_(0.5, 2.0)
    head.train(train)
    images = torch.randn(3, 3, *TINY_IMAGE_SIZE)
    tokens, row = clip.encode_image_tokens_attention(images)
    got = head(tokens.double(), row)
    want = plain_image_tse(head, tokens, row, train)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("train", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("trim", [False, True], ids=["full-context", "trimmed"])
def test_text_tse_matches_the_plain_formulation(clip, train, trim):
    torch.manual_seed(2)
    head = TextTokenSelection(in_dim=clip.embed_dim, embed_dim=16, ratio=0.3).double()
    head.mlp.bns[0].running_mean.uniform_(-0.2, 0.2)
    head.mlp.bns[0].running_var.uniform_(0.5, 2.0)
    head.train(train)
    captions = ["a woman in a red coat", "a man with a black backpack and blue jeans walking to the left "
                "past a parked bicycle near the wall of a tall building with many windows on a sunny day "
                "while carrying a bag", "child"]
    ids = _ids(captions)
    tokens, row = clip.encode_text_tokens(ids, attention_layers=1, trim=trim)
    ids = ids[:, : tokens.shape[1]]
    got = head(tokens.double(), ids, row)
    want = plain_text_tse(head, tokens, ids, row, train)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


def test_trimming_the_batch_does_not_change_the_text_embedding(clip):
    head = TextTokenSelection(in_dim=clip.embed_dim, embed_dim=16).eval()
    ids = _ids(["a woman in a red coat", "a tall man in a grey suit with a brown briefcase"])
    full = head(*_text_inputs(clip, ids, trim=False))
    trimmed = head(*_text_inputs(clip, ids, trim=True))
    assert torch.allclose(full, trimmed, atol=1e-5)


def _text_inputs(clip, ids, trim):
    tokens, row = clip.encode_text_tokens(ids, attention_layers=1, trim=trim)
    return tokens, ids[:, : tokens.shape[1]], row


def _mha(block) -> torch.nn.MultiheadAttention:
    width = block.attn.in_proj_weight.shape[1]
    mha = torch.nn.MultiheadAttention(width, block.attn.heads, batch_first=True)
    mha.load_state_dict({"in_proj_weight": block.attn.in_proj_weight, "in_proj_bias": block.attn.in_proj_bias,
                         "out_proj.weight": block.attn.out_proj.weight, "out_proj.bias": block.attn.out_proj.bias})
    return mha.eval()


def _last_block_input(transformer, run):
    captured = {}
    hook = transformer.resblocks[-1].register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    try:
        run()
    finally:
        hook.remove()
    return captured["x"]


def test_the_class_attention_row_is_torchs_head_averaged_attention(clip):
    images = torch.randn(2, 3, *TINY_IMAGE_SIZE)
    _, row = clip.encode_image_tokens_attention(images)
    block = clip.visual.transformer.resblocks[-1]
    x = _last_block_input(clip.visual.transformer, lambda: clip.encode_image_tokens_attention(images))
    with torch.no_grad():
        _, weights = _mha(block)(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=True,
                                 average_attn_weights=True)
    assert torch.allclose(row, weights[:, 0], atol=1e-6)


def test_the_eot_attention_row_is_torchs_causal_head_averaged_attention(clip):
    ids = _ids(["a woman in a red coat", "a man"])
    _, row = clip.encode_text_tokens(ids, attention_layers=1)
    block = clip.transformer.resblocks[-1]
    x = _last_block_input(clip.transformer, lambda: clip.encode_text_tokens(ids, attention_layers=1))
    causal = torch.triu(torch.full((ids.shape[1], ids.shape[1]), float("-inf")), diagonal=1)
    with torch.no_grad():
        h = block.ln_1(x)
        _, weights = _mha(block)(h, h, h, attn_mask=causal, need_weights=True, average_attn_weights=True)
    eot = ids.argmax(dim=-1)
    assert torch.allclose(row, weights[torch.arange(2), eot], atol=1e-6)


def test_the_joint_embedding_scores_the_mean_of_both_cosines():
    torch.manual_seed(3)
    g1, g2, t1, t2 = torch.randn(4, 5, 8).unbind(0)
    t1, t2 = torch.randn(5, 12), torch.randn(5, 12)
    score = joint_embedding(g1, t1) @ joint_embedding(g2, t2).t()
    cos = torch.nn.functional.cosine_similarity
    want = (cos(g1[:, None], g2[None], dim=-1) + cos(t1[:, None], t2[None], dim=-1)) / 2
    assert torch.allclose(score, want, atol=1e-6)
    assert torch.allclose(joint_embedding(g1, t1).norm(dim=1), torch.ones(5))


def test_the_heads_carry_rdes_parameter_names():
    image, text = ImageTokenSelection(), TextTokenSelection()
    mlp = {f"mlp.layers.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")} | {
        f"mlp.bns.{i}.{p}" for i in (0, 1) for p in ("weight", "bias", "running_mean", "running_var",
                                                        "num_batches_tracked")}
    assert set(image.state_dict()) == mlp | {"linear.weight", "linear.bias", "fc.weight", "fc.bias"}
    assert set(text.state_dict()) == mlp | {"linear.weight", "linear.bias"}
    assert image.fc.weight.shape == (1024, 512) and image.mlp.layers[0].weight.shape == (512, 512)
    assert image.mlp.layers[1].weight.shape == (1024, 512)
    assert TextTokenSelection().k == 22  # int((77 - 2) * 0.3)
    tokens = torch.randn(2, 1 + 24 * 8, 512)
    assert image.select(tokens, torch.rand(2, 1 + 24 * 8)).shape == (2, 57, 512)  # 384x128 at stride 16
