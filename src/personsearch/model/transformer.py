"""The transformer blocks of both CLIP encoders, with OpenAI's parameter names.

Attention runs through ``scaled_dot_product_attention`` on the fused ``in_proj`` weights, batch
first. A block can also report one query's head-averaged attention row (the class token's or the
EOT token's: what attention-guided masking and token selection read) from the same forward, and
the last block can run for one query position only when nothing else is needed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.errors import InputError

__all__ = ["Attention", "QuickGELU", "ResidualAttentionBlock", "Transformer", "average_rows", "quick_gelu_mlp"]

#: QuickGELU's slope: x * sigmoid(1.702 x).
QUICK_GELU_SLOPE = 1.702


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(QUICK_GELU_SLOPE * x)


def quick_gelu_mlp(x: Tensor, c_fc: nn.Linear, c_proj: nn.Linear) -> Tensor:
    """``c_proj(QuickGELU(c_fc(x)))`` with one elementwise kernel instead of three.

    x * sigmoid(a x) = silu(a x) / a, and both scalings ride inside the matrix products (addmm's
    alpha and beta), so the activation is a single fused ``silu``. The three elementwise passes
    over the 4x-wide hidden layer, and their autograd, were up to a quarter of a training step on
    the CPU. With gradients, ``_QuickGELUMLP``'s backward makes the scalings cancel instead of
    multiplying. Equal to the plain formulation up to float rounding.
    """
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    grads = torch.is_grad_enabled() and any(
        t.requires_grad for t in (flat, c_fc.weight, c_fc.bias, c_proj.weight, c_proj.bias))
    if grads and not torch.jit.is_tracing():  # a traced graph cannot hold a Python autograd.Function
        out = _QuickGELUMLP.apply(flat, c_fc.weight, c_fc.bias, c_proj.weight, c_proj.bias)
    else:
        hidden = torch.addmm(c_fc.bias, flat, c_fc.weight.t(), beta=QUICK_GELU_SLOPE, alpha=QUICK_GELU_SLOPE)
        hidden = F.silu(hidden, inplace=not grads)
        out = torch.addmm(c_proj.bias, hidden, c_proj.weight.t(), alpha=1.0 / QUICK_GELU_SLOPE)
    return out.view(*shape[:-1], out.shape[-1])


class _QuickGELUMLP(torch.autograd.Function):
    """The MLP with a hand-written backward. With h = a(x W1ᵀ + b1), s = silu(h) and
    out = s W2ᵀ / a + b2, let P = silu_backward(G W2, h) for the output gradient G. Then
    dx = P W1, dW1 = Pᵀ x, db1 = ΣP, dW2 = Gᵀ s / a, db2 = ΣG: the slope a cancels everywhere but on
    the small dW2, where autograd of addmm's alpha and beta would scale two hidden-sized tensors.
    Under autocast the inputs are cast once here, as autocast would, and saved cast: the backward
    needs no autocast and casts nothing again."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:  # type: ignore[override]
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, w1, b1, w2, b2 = (t.to(dtype) if t.dtype == torch.float32 else t for t in (x, w1, b1, w2, b2))
        with torch.autocast(device, enabled=False):
            hidden = torch.addmm(b1, x, w1.t(), beta=QUICK_GELU_SLOPE, alpha=QUICK_GELU_SLOPE)
            activated = F.silu(hidden)
            out = torch.addmm(b2, activated, w2.t(), alpha=1.0 / QUICK_GELU_SLOPE)
        ctx.save_for_backward(x, w1, w2, hidden, activated)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w1, w2, hidden, activated = ctx.saved_tensors
        grad = grad.to(hidden.dtype)
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        dx = dw1 = db1 = dw2 = db2 = None
        sum_dtype = torch.promote_types(hidden.dtype, torch.float32)
        if need_x or need_w1 or need_b1:
            pre = torch.ops.aten.silu_backward(grad.mm(w2), hidden)
            if need_x:
                dx = pre.mm(w1)
            if need_w1:
                dw1 = pre.t().mm(x)
            if need_b1:
                db1 = pre.sum(0, dtype=sum_dtype)
        if need_w2:
            dw2 = grad.t().mm(activated).mul_(1.0 / QUICK_GELU_SLOPE)
        if need_b2:
            db2 = grad.sum(0, dtype=sum_dtype)
        return dx, dw1, db1, dw2, db2  # autograd casts each to its input's dtype


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, run through SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise InputError(f"attention heads must be a whole number of at least 1, not {heads!r:.40}")
        if width % heads:
            raise InputError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, x: Tensor, causal: bool = False, query_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Attend over ``x`` [B, T, C]; with ``query_index`` [B] also return that query's
        head-averaged attention row [B, T] (float32, no gradient)."""
        batch, length, width = x.shape
        head_dim = width // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        row = None
        if query_index is not None:
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                rows = torch.arange(batch, device=x.device)
                q_sel = q[rows, :, query_index].float()  # [B, H, d]
                scores = torch.einsum("bhd,bhtd->bht", q_sel, k.detach().float()) * head_dim**-0.5
                if causal:
                    positions = torch.arange(length, device=x.device)
                    future = positions[None, :] > query_index[:, None]
                    scores = scores.masked_fill(future[:, None, :], float("-inf"))
                row = scores.softmax(dim=-1).mean(dim=1)
        return out, row

    def attend_one(self, x: Tensor, query_index: Tensor, causal: bool = False) -> Tensor:
        """The output [B, C] of one query position per sequence, keys and values from all of ``x``.

        Used for the last block when only the class or EOT token is needed: the query, output
        projection and MLP then run on one row instead of T.
        """
        batch, length, width = x.shape
        head_dim = width // self.heads
        rows = torch.arange(batch, device=x.device)
        q = F.linear(x[rows, query_index], self.in_proj_weight[:width], self.in_proj_bias[:width])
        kv = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:])
        k, v = kv.view(batch, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if causal:
            mask = (torch.arange(length, device=x.device)[None, :] <= query_index[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q.view(batch, self.heads, 1, head_dim), k, v, attn_mask=mask)
        return self.out_proj(out.reshape(batch, width))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, causal: bool = False,
                query_index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        attended, row = self.attn(self.ln_1(x), causal=causal, query_index=query_index)
        x = x + attended
        x = x + quick_gelu_mlp(self.ln_2(x), self.mlp.c_fc, self.mlp.c_proj)
        return x, row

    def forward_one(self, x: Tensor, query_index: Tensor, causal: bool = False) -> Tensor:
        """This block's output [B, C] at ``query_index`` only."""
        rows = torch.arange(x.shape[0], device=x.device)
        y = x[rows, query_index] + self.attn.attend_one(self.ln_1(x), query_index, causal=causal)
        return y + quick_gelu_mlp(self.ln_2(y), self.mlp.c_fc, self.mlp.c_proj)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        query_index: Tensor | None = None,
        attention_layers: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        """Run every block; average the ``query_index`` attention rows of the last ``attention_layers``."""
        x, rows = self.forward_rows(x, causal, query_index, attention_layers)
        return x, average_rows(rows)

    def forward_rows(
        self, x: Tensor, causal: bool = False, query_index: Tensor | None = None, attention_layers: int = 0
    ) -> tuple[Tensor, list[Tensor]]:
        """Run every block; the ``query_index`` attention rows of the last ``attention_layers``, in order."""
        first_recorded = (
            self.layers - min(attention_layers, self.layers) if query_index is not None else self.layers
        )
        rows: list[Tensor] = []
        for index, block in enumerate(self.resblocks):
            record = query_index if index >= first_recorded else None
            x, row = block(x, causal=causal, query_index=record)
            if row is not None:
                rows.append(row)
        return x, rows

    def forward_one(self, x: Tensor, query_index: Tensor, causal: bool = False) -> Tensor:
        """The output [B, C] at ``query_index`` only (the last block skips every other query)."""
        for block in self.resblocks[:-1]:
            x, _ = block(x, causal=causal)
        return self.resblocks[-1].forward_one(x, query_index, causal=causal)


def average_rows(rows: list[Tensor]) -> Tensor | None:
    """The mean of attention rows (None for none), summed in layer order."""
    if not rows:
        return None
    total = rows[0]
    for row in rows[1:]:
        total = total + row
    return total / len(rows)
