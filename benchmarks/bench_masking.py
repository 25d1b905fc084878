"""Caption masking speed per batch, beside plain per-token reference formulations.

References: IRRA's random masking as its dataset does it (a Python loop over every token of every
caption), and attention-guided masking as a per-caption loop (numpy draw without replacement
from importance^(1/τ), then 80/10/10 per token). Ours: the batched tensor code in
``personsearch.text.masking``. Both run on the same captions in the same process.

    python benchmarks/bench_masking.py              # batch 64 x 77 tokens
    python benchmarks/bench_masking.py --batch 256
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from personsearch.text.masking import (
    EOT_TOKEN_ID,
    MASK_TOKEN_ID,
    SOT_TOKEN_ID,
    attention_masking,
    random_masking,
)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in milliseconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def captions(batch: int, length: int = 77, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        words = int(torch.randint(8, 40, (1,), generator=g))
        ids[row, 0] = SOT_TOKEN_ID
        ids[row, 1 : words + 1] = torch.randint(1, MASK_TOKEN_ID, (words,), generator=g)
        ids[row, words + 1] = EOT_TOKEN_ID
    return ids


def reference_random(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IRRA's ``_build_random_masked_tokens_and_labels`` applied caption by caption."""
    out_tokens, out_labels = [], []
    for caption in ids.tolist():
        tokens, labels = list(caption), []
        for i, token in enumerate(tokens):
            if 0 < token < MASK_TOKEN_ID:
                prob = random.random()
                if prob < 0.15:
                    prob /= 0.15
                    if prob < 0.8:
                        tokens[i] = MASK_TOKEN_ID
                    elif prob < 0.9:
                        tokens[i] = random.randrange(1, MASK_TOKEN_ID)
                    labels.append(token)
                else:
                    labels.append(0)
            else:
                labels.append(0)
        if all(label == 0 for label in labels):
            labels[1] = tokens[1]
            tokens[1] = MASK_TOKEN_ID
        out_tokens.append(tokens)
        out_labels.append(labels)
    return torch.tensor(out_tokens), torch.tensor(out_labels)


def reference_attention(
    ids: torch.Tensor, importance: torch.Tensor, ratio: float, temperature: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per caption: candidates, tempered probabilities, numpy choice without replacement, 80/10/10."""
    masked, labels = ids.clone(), torch.zeros_like(ids)
    for row in range(ids.shape[0]):
        caption = ids[row].tolist()
        positions = [i for i, t in enumerate(caption) if 0 < t < MASK_TOKEN_ID]
        weights = np.array([float(importance[row, i]) for i in positions]) ** (1 / temperature)
        k = max(1, round(ratio * len(positions)))
        chosen = rng.choice(positions, size=k, replace=False, p=weights / weights.sum())
        for i in chosen:
            labels[row, i] = caption[i]
            u = rng.random()
            if u < 0.8:
                masked[row, i] = MASK_TOKEN_ID
            elif u < 0.9:
                masked[row, i] = int(rng.integers(1, MASK_TOKEN_ID))
    return masked, labels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = captions(args.batch)
    importance = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    rows = [
        ("random (IRRA)", lambda: reference_random(ids), lambda: random_masking(ids, generator=g)),
        (
            "attention (AGM), τ = 0.5",
            lambda: reference_attention(ids, importance, 0.15, 0.5, rng),
            lambda: attention_masking(ids, importance, ratio=0.15, temperature=0.5, generator=g),
        ),
    ]
    if args.json:
        print(json.dumps([
            {
                "figure": f"mask {args.batch} captions x {ids.shape[1]}, {name}", "unit": "ms",
                "ours": timed(ours, args.repeats), "reference": timed(reference, args.repeats),
                "higher_is_better": False, "goal": "-", "note": "1 thread, median",
            }
            for name, reference, ours in rows
        ]))
        return
    print(f"masking one batch of {args.batch} captions x {ids.shape[1]} tokens, 1 thread (median ms)")
    print(f"{'strategy':<26}{'reference':>12}{'ours':>10}{'speed-up':>10}")
    for name, reference, ours in rows:
        ref_ms = timed(reference, args.repeats)
        our_ms = timed(ours, args.repeats)
        print(f"{name:<26}{ref_ms:>12.2f}{our_ms:>10.2f}{ref_ms / our_ms:>9.1f}x")


if __name__ == "__main__":
    main()
