"""IRRA training step (forward + backward, sdm+mlm+id) beside a plain IRRA-style formulation.

Reference (what IRRA's ``build.py`` does): text encoded over all 77 positions, cross-attention
through ``nn.MultiheadAttention``, the MLM head applied to every position (a [B, 77, 49408]
score tensor), cross-entropy with ignore_index 0. Ours: ``IRRA.forward`` (text pass cut to the
longest caption, SDPA cross-attention, MLM head only at masked positions). Same weights, same
masked captions, same batch; the table also reports the loss difference.

The text tower is CLIP-B's (width 512, 12 layers, 8 heads); the image tower is reduced to one
narrow layer (at 384x128 it still yields 193 tokens for the cross-attention), so the numbers show
the text and cross-modal cost, which is what this forward changes.

    python benchmarks/bench_irra_forward.py                 # batch 16, captions of ~25 tokens
    python benchmarks/bench_irra_forward.py --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from personsearch.losses import id_loss, sdm_loss
from personsearch.model import irra as irra_module
from personsearch.model.clip import build_clip
from personsearch.model.irra import IRRA
from personsearch.text.masking import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID, random_masking

ARCH = dict(
    embed_dim=512,
    vision_width=64,
    vision_layers=1,
    vision_heads=1,
    patch_size=16,
    text_width=512,
    text_layers=12,
    text_heads=8,
)


def batch_of(size: int, words: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(size, 77, dtype=torch.long)
    for row in range(size):
        n = max(1, words + int(torch.randint(-5, 6, (1,), generator=g)))
        ids[row, 0] = SOT_TOKEN_ID
        ids[row, 1 : n + 1] = torch.randint(1, MASK_TOKEN_ID, (n,), generator=g)
        ids[row, n + 1] = EOT_TOKEN_ID
    return {
        "images": torch.randn(size, 3, 384, 128, generator=g),
        "caption_ids": ids,
        "pids": torch.arange(size) // 2,
    }


def reference_step(
    model: IRRA,
    batch,
    masked: torch.Tensor,
    labels: torch.Tensor,
    cross: nn.MultiheadAttention,
    blocks: list[nn.MultiheadAttention],
) -> torch.Tensor:
    clip = model.base_model
    ids = batch["caption_ids"]
    image_tokens = clip.encode_image_tokens(batch["images"])
    text_tokens, _ = clip.encode_text_tokens(ids)
    i_feats, t_feats = image_tokens[:, 0], text_tokens[torch.arange(ids.shape[0]), ids.argmax(-1)]
    loss = sdm_loss(i_feats, t_feats, batch["pids"], model.logit_scale)
    loss = loss + id_loss(model.classifier(i_feats), model.classifier(t_feats), batch["pids"])
    mlm_tokens, _ = clip.encode_text_tokens(masked)
    image = model.ln_pre_i(image_tokens)
    x = cross(model.ln_pre_t(mlm_tokens), image, image, need_weights=False)[0]
    for block, mha in zip(model.cross_modal_transformer.resblocks, blocks, strict=True):
        h = block.ln_1(x)
        x = x + mha(h, h, h, need_weights=False)[0]
        x = x + block.mlp(block.ln_2(x))
    scores = model.mlm_head(model.ln_post(x)).float().reshape(-1, model.vocab_size)
    loss = loss + F.cross_entropy(scores, labels.reshape(-1), ignore_index=0)
    loss.backward()
    return loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--words", type=int, default=23, help="mean words per caption")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = build_clip(ARCH, image_size=(384, 128), stride=16)
    model = IRRA(clip, num_classes=args.batch, losses=("sdm", "mlm", "id"), cmt_depth=4).train()
    batch = batch_of(args.batch, args.words)
    masked, labels = random_masking(batch["caption_ids"], generator=torch.Generator().manual_seed(0))
    # Ours masks inside forward; hand it the same draw so both compute the same losses.
    irra_module.mask_captions = lambda ids, *_: (masked[:, : ids.shape[1]], labels[:, : ids.shape[1]])

    width = model.embed_dim
    cross = nn.MultiheadAttention(width, width // 64, batch_first=True)
    cross.load_state_dict(model.cross_attn.state_dict())
    blocks = []
    for block in model.cross_modal_transformer.resblocks:
        mha = nn.MultiheadAttention(width, width // 64, batch_first=True)
        mha.load_state_dict(block.attn.state_dict())
        blocks.append(mha)

    def ours() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out["loss"].backward()
        return out["loss"].detach()

    def reference() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        return reference_step(model, batch, masked, labels, cross, blocks)

    results = {}
    for name, fn in (("reference", reference), ("ours", ours)):
        value = fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times), value)
    longest = int(batch["caption_ids"].argmax(-1).max()) + 1
    if args.json:
        (ref_s, ref_loss), (our_s, our_loss) = results["reference"], results["ours"]
        print(json.dumps([{
            "figure": f"IRRA fwd+bwd, text tower B/16 + 1 narrow image layer, batch {args.batch}, random masking",
            "unit": "captions/s", "ours": args.batch / our_s, "reference": args.batch / ref_s,
            "higher_is_better": True, "goal": "-",
            "note": f"{args.threads} thread(s); |loss diff| {abs(ref_loss - our_loss).item():.1e}",
        }]))
        return
    print(
        f"IRRA step (forward + backward, sdm+mlm+id), batch {args.batch}, longest caption {longest} "
        f"tokens, {args.threads} thread(s)"
    )
    print(f"{'':<12}{'s/step':>10}{'captions/s':>12}{'loss':>12}")
    for name, (seconds, value) in results.items():
        print(f"{name:<12}{seconds:>10.2f}{args.batch / seconds:>12.1f}{value.item():>12.5f}")
    ref_s, ref_loss = results["reference"]
    our_s, our_loss = results["ours"]
    print(f"speed-up {ref_s / our_s:.2f}x, |loss difference| {abs(ref_loss - our_loss).item():.2e}")


if __name__ == "__main__":
    main()
