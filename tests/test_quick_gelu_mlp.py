"""The transformer MLP with QuickGELU folded into its matrix products: values and gradients equal the
plain formulation c_proj(h * sigmoid(1.702 h)), h = c_fc(x), written out here (float64 where exact)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from personsearch.model.transformer import _QuickGELUMLP, quick_gelu_mlp


def plain_mlp(x: torch.Tensor, fc: nn.Linear, proj: nn.Linear) -> torch.Tensor:
    h = x @ fc.weight.t() + fc.bias
    return (h * torch.sigmoid(1.702 * h)) @ proj.weight.t() + proj.bias


def layers(width: int, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    fc, proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
    for layer in (fc, proj):  # non-trivial biases: their gradients are checked too
        nn.init.normal_(layer.bias, std=0.5)
    return fc.to(dtype), proj.to(dtype)


def gradients(fn, x, fc, proj):
    x = x.detach().clone().requires_grad_(True)
    for p in (*fc.parameters(), *proj.parameters()):
        p.grad = None
    out = fn(x, fc, proj)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), [x.grad, fc.weight.grad, fc.bias.grad, proj.weight.grad, proj.bias.grad]


def test_gradcheck_float64():
    fc, proj = layers(6, torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    params = [fc.weight, fc.bias, proj.weight, proj.bias]
    assert torch.autograd.gradcheck(lambda *a: _QuickGELUMLP.apply(*a), (x, *params))


@pytest.mark.parametrize("shape", [(7, 16), (2, 9, 16)])
def test_values_and_gradients_equal_the_plain_formulation(shape):
    fc, proj = layers(16, torch.float64, seed=1)
    x = 2 * torch.randn(*shape, dtype=torch.float64)
    ours, ours_grads = gradients(quick_gelu_mlp, x, fc, proj)
    plain, plain_grads = gradients(plain_mlp, x, fc, proj)
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(ours_grads, plain_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_inference_path_matches_and_leaves_no_graph():
    fc, proj = layers(16, torch.float32, seed=2)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        out = quick_gelu_mlp(x, fc, proj)
    assert out.grad_fn is None and out.shape == (3, 5, 16)
    torch.testing.assert_close(out, plain_mlp(x, fc, proj).detach(), rtol=1e-5, atol=1e-6)


def test_frozen_weights_get_no_gradient():
    fc, proj = layers(8, torch.float64, seed=3)
    fc.requires_grad_(False)
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    quick_gelu_mlp(x, fc, proj).sum().backward()
    assert fc.weight.grad is None and fc.bias.grad is None
    assert x.grad is not None and proj.weight.grad is not None


def test_bf16_autocast_stays_close_to_fp32():
    fc, proj = layers(32, torch.float32, seed=4)
    x = torch.randn(6, 32)
    reference, reference_grads = gradients(plain_mlp, x, fc, proj)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ours_grads = gradients(quick_gelu_mlp, x, fc, proj)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), reference, rtol=0.05, atol=0.05)
    for mine, theirs, param in zip(ours_grads, reference_grads, [x, *fc.parameters(), *proj.parameters()],
                                   strict=True):
        assert mine.dtype == param.dtype  # gradients arrive in the parameters' dtype
        cosine = torch.nn.functional.cosine_similarity(mine.flatten().double(), theirs.flatten().double(), dim=0)
        assert cosine > 0.999
