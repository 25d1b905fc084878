"""Token-selection embeddings (TSE) of RDE (Qin et al., CVPR 2024): a second embedding per image and
per caption, built from the tokens the last block attends to most.

Image: the class token's attention row of the last block (averaged over heads; its own column set
to -1) picks the top ``k = int((tokens - 1) * ratio)`` tokens (57 of 193 at 384x128, stride 16),
taken after ``ln_post`` and the projection and L2-normalised (norm + 1e-8); ``fc(x) + mlp(x)``, then
the maximum over the k. Text: the EOT token's row (causal, so zero after EOT; the SOT and EOT columns
set to -1, padding columns 0) picks the top ``k = int((context - 2) * ratio)`` tokens;
``linear(x) + mlp(x)``, then the maximum over the first min(words, k) of them (the caption's own
words in order of attention). ``mlp`` is Linear(D -> E/2), BatchNorm, ReLU, Linear(E/2 -> E).
Equal attention values (the zeros of padding) are taken in position order, so the tokens that
reach the BatchNorm statistics in training are defined (RDE's ``topk`` leaves that order open).

Submodule names are RDE's (``linear``, ``fc``, ``mlp.layers.N``, ``mlp.bns.N``), so RDE's
``visul_emb_layer.*`` / ``texual_emb_layer.*`` weights load by prefix alone; like RDE's, the image
head keeps an unused ``linear`` and the MLP an unused second BatchNorm.

The retrieval score of a model with TSE is the mean of the global and the TSE cosine similarities
(RDE's "BGE+TSE"); ``joint_embedding`` concatenates the two normalised vectors scaled by 1/sqrt(2),
so one dot product of joint embeddings is exactly that mean, and an index searches it as it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageTokenSelection", "SelectionMLP", "TextTokenSelection", "joint_embedding", "l2_normalise"]


def l2_normalise(x: Tensor, eps: float = 1e-8) -> Tensor:
    """x / (||x|| + eps) along the last dimension (RDE's form, not ``F.normalize``'s max(||x||, eps))."""
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + eps)


class SelectionMLP(nn.Module):
    """Linear(in -> hidden) -> BatchNorm -> ReLU -> Linear(hidden -> out), per token."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, out_dim)])
        self.bns = nn.ModuleList([nn.BatchNorm1d(hidden_dim), nn.BatchNorm1d(out_dim)])  # the second is unused

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        flat = F.relu(self.bns[0](self.layers[0](x.reshape(batch * tokens, width))))
        return self.layers[1](flat).view(batch, tokens, -1)


def _top(row: Tensor, k: int) -> Tensor:
    """Positions of the k largest values per row, equal values in position order (``topk`` leaves
    ties, e.g. the zeros of padding, in no defined order, and they reach the BatchNorm statistics)."""
    return torch.sort(row, dim=-1, descending=True, stable=True).indices[:, :k]


def _gather_tokens(tokens: Tensor, order: Tensor) -> Tensor:
    return tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class ImageTokenSelection(nn.Module):
    """The image TSE head: tokens [B, N, D] and the class attention row [B, N] -> [B, E]."""

    def __init__(self, in_dim: int = 512, embed_dim: int = 1024, ratio: float = 0.3) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.linear = nn.Linear(in_dim, embed_dim)  # unused, as in RDE (its checkpoints hold it)
        self.fc = nn.Linear(in_dim, embed_dim)
        self.mlp = SelectionMLP(in_dim, embed_dim // 2, embed_dim)

    def select(self, tokens: Tensor, class_row: Tensor) -> Tensor:
        """The top-k tokens [B, k, D] by class attention (the class token itself excluded)."""
        k = max(1, int((tokens.shape[1] - 1) * self.ratio))
        row = class_row.clone()
        row[:, 0] = -1
        return _gather_tokens(tokens, _top(row, k))

    def forward(self, tokens: Tensor, class_row: Tensor) -> Tensor:
        chosen = l2_normalise(self.select(tokens, class_row)).to(self.fc.weight.dtype)
        return (self.fc(chosen) + self.mlp(chosen)).max(dim=1).values


class TextTokenSelection(nn.Module):
    """The text TSE head: tokens [B, T, D], ids [B, T] and the EOT attention row [B, T] -> [B, E]."""

    def __init__(self, in_dim: int = 512, embed_dim: int = 1024, ratio: float = 0.3,
                 context_length: int = 77) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.context_length = int(context_length)
        self.linear = nn.Linear(in_dim, embed_dim)
        self.mlp = SelectionMLP(in_dim, embed_dim // 2, embed_dim)

    @property
    def k(self) -> int:
        return max(1, int((self.context_length - 2) * self.ratio))

    def select(self, tokens: Tensor, ids: Tensor, eot_row: Tensor) -> tuple[Tensor, Tensor]:
        """The top-k tokens [B, k', D] by EOT attention (SOT and EOT excluded, padding last) and how
        many of them to pool per caption [B]: min(words, k), at least 1. ``tokens`` may be cut to
        the batch's longest caption (k' = min(k, T)): the pooled tokens are the same."""
        batch = ids.shape[0]
        rows = torch.arange(batch, device=ids.device)
        present = (ids != 0).to(eot_row.dtype)
        row = eot_row.clone()
        row[rows, ids.argmax(dim=-1)] = -1
        row[:, 0] = -1
        row = row * present
        k = min(self.k, tokens.shape[1])
        order = _top(row, k)
        words = present.sum(dim=1).long() - 2
        return _gather_tokens(tokens, order), words.clamp(min=1, max=k)

    def forward(self, tokens: Tensor, ids: Tensor, eot_row: Tensor) -> Tensor:
        chosen, counts = self.select(tokens, ids, eot_row)
        chosen = l2_normalise(chosen).to(self.linear.weight.dtype)
        out = self.mlp(chosen) + self.linear(chosen)
        beyond = torch.arange(out.shape[1], device=out.device)[None, :] >= counts[:, None]
        return out.masked_fill(beyond[:, :, None], float("-inf")).max(dim=1).values


def joint_embedding(global_features: Tensor, tse_features: Tensor) -> Tensor:
    """[B, D + E]: both embeddings L2-normalised, concatenated, scaled by 1/sqrt(2); the dot product
    of two joint embeddings is the mean of the two cosine similarities."""
    both = torch.cat([F.normalize(global_features.float(), dim=-1), F.normalize(tse_features.float(), dim=-1)], dim=-1)
    return both / math.sqrt(2.0)
