"""Embedding throughput of personsearch's CLIP beside a plain reference formulation.

The reference is OpenAI's formulation written out here: sequence-first tokens through
``nn.MultiheadAttention`` with an explicit causal mask, float32, every caption run at the full 77
positions. Ours: fused ``scaled_dot_product_attention``, text batches cut to their longest caption,
optionally under bf16 autocast. Both use the same random ViT-B/16 weights at 384x128, so the
embeddings are compared too (cosine similarity).

    python benchmarks/bench_embed.py                       # defaults: a few minutes on 2 CPU cores
    python benchmarks/bench_embed.py --image-batches 1 --text-batches 1   # quick look
    python benchmarks/bench_embed.py --device cuda --image-batch 64 --text-batch 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.model import CLIP, build_clip
from personsearch.settings import ArchSettings

SOT, EOT = 49406, 49407


class ReferenceBlock(nn.Module):
    """OpenAI's residual block: LND layout, nn.MultiheadAttention, QuickGELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = self.c_fc(self.ln_2(x))
        return x + self.c_proj(h * torch.sigmoid(1.702 * h))


def _reference_tower(blocks: nn.ModuleList) -> nn.ModuleList:
    out = nn.ModuleList()
    for block in blocks:
        ref = ReferenceBlock(block.ln_1.weight.shape[0], block.attn.heads)
        ref.attn.load_state_dict(block.attn.state_dict())
        for name in ("ln_1", "ln_2"):
            getattr(ref, name).load_state_dict(getattr(block, name).state_dict())
        ref.c_fc.load_state_dict(block.mlp.c_fc.state_dict())
        ref.c_proj.load_state_dict(block.mlp.c_proj.state_dict())
        out.append(ref)
    return out


class ReferenceCLIP(nn.Module):
    """The plain formulation sharing ``model``'s weights (its modules are referenced, not copied)."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model
        self.visual_blocks = _reference_tower(model.visual.transformer.resblocks)
        self.text_blocks = _reference_tower(model.transformer.resblocks)
        length = model.config.context_length
        self.register_buffer("causal", torch.full((length, length), float("-inf")).triu(1))

    def encode_image(self, images: Tensor) -> Tensor:
        v = self.model.visual
        x = v.conv1(images).flatten(2).permute(2, 0, 1)  # LND
        cls = v.class_embedding.expand(1, x.shape[1], -1)
        x = v.ln_pre(torch.cat([cls, x], dim=0) + v.positional_embedding[:, None])
        for block in self.visual_blocks:
            x = block(x, None)
        return v.ln_post(x[0]) @ v.proj

    def encode_text(self, ids: Tensor) -> Tensor:
        m = self.model
        x = (m.token_embedding(ids) + m.positional_embedding).permute(1, 0, 2)
        for block in self.text_blocks:
            x = block(x, self.causal)
        x = m.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ m.text_projection


def _captions(count: int, tokens: int, generator: torch.Generator) -> Tensor:
    ids = torch.zeros(count, 77, dtype=torch.long)
    ids[:, 0] = SOT
    ids[:, 1 : tokens - 1] = torch.randint(1, 49000, (count, tokens - 2), generator=generator)
    ids[:, tokens - 1] = EOT
    return ids


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(
    fn: Callable[[Tensor], Tensor], batches: list[Tensor], device: torch.device
) -> tuple[float, Tensor]:
    """Items per second over ``batches`` after one warm-up batch; also the embeddings."""
    with torch.inference_mode():
        fn(batches[0])
        _sync(device)
        start = time.perf_counter()
        outputs = [fn(batch) for batch in batches]
        _sync(device)
        elapsed = time.perf_counter() - start
    return sum(len(b) for b in batches) / elapsed, torch.cat(outputs).float().cpu()


@contextlib.contextmanager
def _precision(device: torch.device, precision: str) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def _cosine(a: Tensor, b: Tensor) -> tuple[float, float]:
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1)
    return cos.mean().item(), cos.min().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--image-batches", type=int, default=2, help="timed batches per row")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--text-batches", type=int, default=2, help="timed batches per row")
    parser.add_argument("--text-tokens", type=int, default=30, help="caption length, SOT and EOT included")
    parser.add_argument("--skip", choices=["image", "text"], action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_clip(ArchSettings(), image_size=(384, 128), stride=16).eval().to(device)
    reference = ReferenceCLIP(model).eval().to(device)
    generator = torch.Generator().manual_seed(0)

    rows: list[tuple[str, str, float, float, str]] = []

    def measure(workload: str, batches: list[Tensor], encoders: dict[str, tuple[Callable, str]]) -> None:
        results = {}
        for label, (fn, precision) in encoders.items():
            with _precision(device, precision):
                results[label] = _throughput(fn, batches, device)
        ref_rate, ref_out = results["reference"]
        fp32_out = next(
            out for label, (_, out) in results.items() if label.endswith("fp32") and label != "reference"
        )
        for label, (rate, out) in results.items():
            compare = ref_out if label.endswith("fp32") else fp32_out
            against = "reference" if label.endswith("fp32") else "ours fp32"
            mean, low = _cosine(out, compare)
            note = "-" if label == "reference" else f"{mean:.6f} (min {low:.6f}) vs {against}"
            rows.append((workload, label, rate, rate / ref_rate, note))

    if "image" not in args.skip:
        images = [
            torch.randn(args.image_batch, 3, 384, 128, generator=generator).to(device)
            for _ in range(args.image_batches)
        ]
        measure(
            "image 384x128",
            images,
            {
                "reference": (reference.encode_image, "fp32"),
                "ours fp32": (model.encode_image, "fp32"),
                "ours bf16": (model.encode_image, "bf16"),
            },
        )
    if "text" not in args.skip:
        texts = [
            _captions(args.text_batch, args.text_tokens, generator).to(device)
            for _ in range(args.text_batches)
        ]
        measure(
            f"text {args.text_tokens} tokens",
            texts,
            {
                "reference": (reference.encode_text, "fp32"),
                "ours fp32": (model.encode_text, "fp32"),
                "ours bf16": (model.encode_text, "bf16"),
            },
        )

    if args.json:
        goals = {"image": {"bf16": ">= 20, cosine >= 0.999"}, "text": {"bf16": ">= 300", "fp32": ">= 300"}}
        ref_rates = {workload: rate for workload, label, rate, _, _ in rows if label == "reference"}
        print(json.dumps([
            {
                "figure": f"{workload} embedding, ViT-B/16, {label.split()[-1]}", "unit": "items/s", "ours": rate,
                "reference": ref_rates[workload], "higher_is_better": True,
                "goal": goals[workload.split()[0]].get(label.split()[-1], "-"), "note": f"cosine {note}",
            }
            for workload, label, rate, _, note in rows if label != "reference"
        ]))
        return
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"ViT-B/16, random weights, device {device}, torch {torch.__version__}, threads {threads}")
    print(
        f"image batch {args.image_batch} x {args.image_batches}, text batch {args.text_batch} x "
        f"{args.text_batches}; reference = nn.MultiheadAttention, fp32, full 77 tokens\n"
    )
    print("| workload | formulation | items/s | vs reference | embedding cosine |")
    print("|---|---|---:|---:|---|")
    for workload, label, rate, speedup, note in rows:
        print(f"| {workload} | {label} | {rate:.1f} | {speedup:.2f}x | {note} |")


if __name__ == "__main__":
    main()
