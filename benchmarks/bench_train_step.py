"""One IRRA training step (forward + backward + optimizer step) beside a plain reference formulation.

Workload: ViT-B/16 at 384x128 (embed 512; vision 768 x 12 layers x 12 heads; text 512 x 12 x 8),
random weights, batch 8 (two captions per identity), losses sdm+mlm+id with attention-guided
masking, Adam over IRRA's parameter groups (``personsearch.engine.optim.build_optimizer``).

- ours: ``personsearch.model.irra.build_irra`` in fp32 and under bf16 autocast (SDPA attention,
  matching text pass cut to the longest caption with the EOT attention row read in the same pass,
  MLM head only at masked positions).
- reference: IRRA's formulation written out here, fp32: sequence-first tokens through
  ``nn.MultiheadAttention`` in every block, every caption at the full 77 positions, the AGM
  importance read from the text pass with ``need_weights=True``, the MLM head over all 77 positions
  and cross-entropy with ``ignore_index=0``. It holds its own copy of the same weights (identical
  parameter names, so the same optimizer groups apply).

The loss difference is measured at identical weights on identical masked captions, before any
optimizer step. A tiny configuration (``configs/demo.yaml`` when present) is timed the same way.

    python benchmarks/bench_train_step.py                          # ~4 minutes on 2 busy CPU cores
    python benchmarks/bench_train_step.py --precision fp32,bf16    # bf16 too (slow without bf16 hardware)
    python benchmarks/bench_train_step.py --steps 1 --skip-reference --precision bf16
    python benchmarks/bench_train_step.py --device cuda --batch 64
    python benchmarks/bench_train_step.py --json                   # rows for benchmarks/run_all.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.accel import cpu_bf16_instructions
from personsearch.engine.optim import build_optimizer
from personsearch.losses import id_loss, sdm_loss
from personsearch.model import irra as irra_module
from personsearch.model.irra import IRRA, build_irra
from personsearch.settings import MaskingSettings, Settings, resolve_settings
from personsearch.text.masking import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID, mask_captions

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
CUHK_TRAIN_IDS = 11003

BASE_SETS = [
    "model.pretrained=null",
    "loss.names=sdm+mlm+id",
    "masking.strategy=attention",
]
# Used when configs/demo.yaml does not exist: tests/conftest.py's TINY_SETS scaled up.
TINY_SETS = [
    "model.image_size=[128, 64]",
    "model.stride=16",
    "model.cmt_depth=1",
    "model.arch.embed_dim=128",
    "model.arch.vision_width=128",
    "model.arch.vision_layers=2",
    "model.arch.vision_heads=2",
    "model.arch.patch_size=16",
    "model.arch.text_width=128",
    "model.arch.text_layers=2",
    "model.arch.text_heads=2",
    "train.batch_size=8",
]


# ------------------------------------------------------------------------------ reference model


class ReferenceBlock(nn.Module):
    """OpenAI's residual block: LND layout, nn.MultiheadAttention, QuickGELU MLP (same names as ours)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None, weights: bool) -> tuple[Tensor, Tensor | None]:
        h = self.ln_1(x)
        attended, attention = self.attn(h, h, h, need_weights=weights, attn_mask=mask)
        x = x + attended
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h)), attention


class ReferenceTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ReferenceBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor, mask: Tensor | None = None, attention_layers: int = 0) -> tuple[Tensor, Tensor | None]:
        """Blocks in order; the head-averaged attention maps [B, L, L] of the last
        ``attention_layers`` blocks, averaged."""
        first = len(self.resblocks) - attention_layers
        total = None
        for index, block in enumerate(self.resblocks):
            x, attention = block(x, mask, weights=attention_layers > 0 and index >= first)
            if attention is not None:
                total = attention if total is None else total + attention
        return x, None if total is None else total / attention_layers


class ReferenceVisual(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, patch: int, tokens: int, embed: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = ReferenceTransformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed))


class ReferenceCLIP(nn.Module):
    def __init__(self, model: IRRA) -> None:
        super().__init__()
        c = model.base_model.config
        if model.base_model.stride != c.patch_size:
            raise SystemExit("the reference formulation needs stride == patch size")
        tokens = model.base_model.visual.positional_embedding.shape[0]
        self.visual = ReferenceVisual(
            c.vision_width, c.vision_layers, c.vision_heads, c.patch_size, tokens, c.embed_dim
        )
        self.transformer = ReferenceTransformer(c.text_width, c.text_layers, c.text_heads)
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Parameter(torch.zeros(c.text_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]), requires_grad=False)
        length = c.context_length
        self.register_buffer("causal", torch.full((length, length), float("-inf")).triu(1), persistent=False)

    def encode_image(self, images: Tensor) -> Tensor:
        """Every image token [B, 1 + N, D] after ln_post, projected."""
        v = self.visual
        x = v.conv1(images).flatten(2).permute(2, 0, 1)  # LND
        cls = v.class_embedding.expand(1, x.shape[1], -1)
        x = v.ln_pre(torch.cat([cls, x], dim=0) + v.positional_embedding[:, None])
        x, _ = v.transformer(x)
        return v.ln_post(x.permute(1, 0, 2)) @ v.proj

    def encode_text(self, ids: Tensor, attention_layers: int = 0) -> tuple[Tensor, Tensor | None]:
        """Every text token [B, 77, D] after ln_final, projected; the EOT attention row [B, 77]."""
        x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
        x, attention = self.transformer(x, self.causal, attention_layers)
        x = self.ln_final(x.permute(1, 0, 2)) @ self.text_projection
        row = None
        if attention is not None:
            row = attention[torch.arange(ids.shape[0]), ids.argmax(-1)].detach()
        return x, row


class ReferenceIRRA(nn.Module):
    """IRRA's ``build.py`` forward with AGM, written plainly; module names match ``IRRA``'s."""

    def __init__(self, model: IRRA, masking: MaskingSettings) -> None:
        super().__init__()
        width, heads = model.embed_dim, model.embed_dim // 64
        depth = len(model.cross_modal_transformer.resblocks)
        self.masking = masking
        self.logit_scale = model.logit_scale
        self.base_model = ReferenceCLIP(model)
        self.classifier = nn.Linear(width, model.num_classes)
        self.cross_attn = nn.MultiheadAttention(width, heads)
        self.cross_modal_transformer = ReferenceTransformer(width, depth, heads)
        self.ln_pre_t = nn.LayerNorm(width)
        self.ln_pre_i = nn.LayerNorm(width)
        self.ln_post = nn.LayerNorm(width)
        self.mlm_head = nn.Sequential()
        self.mlm_head.add_module("dense", nn.Linear(width, width))
        self.mlm_head.add_module("ln", nn.LayerNorm(width))
        self.mlm_head.add_module("fc", nn.Linear(width, model.vocab_size))
        self.load_state_dict(model.state_dict())

    def forward(
        self, batch: dict[str, Tensor], generator: torch.Generator, masks: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        ids, pids = batch["caption_ids"], batch["pids"]
        image_feats = self.base_model.encode_image(batch["images"])
        text_feats, importance = self.base_model.encode_text(ids, self.masking.layers)
        i_feats = image_feats[:, 0]
        t_feats = text_feats[torch.arange(ids.shape[0]), ids.argmax(-1)]
        loss = sdm_loss(i_feats, t_feats, pids, self.logit_scale)
        loss = loss + id_loss(self.classifier(i_feats), self.classifier(t_feats), pids)
        masked, labels = masks or mask_captions(ids, self.masking, importance, generator)
        mlm_feats, _ = self.base_model.encode_text(masked)
        q = self.ln_pre_t(mlm_feats).permute(1, 0, 2)
        kv = self.ln_pre_i(image_feats).permute(1, 0, 2)
        x = self.cross_attn(q, kv, kv, need_weights=False)[0]
        x, _ = self.cross_modal_transformer(x)
        x = self.ln_post(x.permute(1, 0, 2))
        h = self.mlm_head.dense(x)
        scores = self.mlm_head.fc(self.mlm_head.ln(h * torch.sigmoid(1.702 * h)))
        return loss + F.cross_entropy(scores.reshape(-1, scores.shape[-1]), labels.reshape(-1), ignore_index=0)


# ------------------------------------------------------------------------------------ helpers


def make_batch(size: int, image_size: tuple[int, int], tokens: int, seed: int = 0) -> dict[str, Tensor]:
    """Random images and captions of about ``tokens`` tokens (SOT/EOT included, +-5), 2 per identity."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(size, 77, dtype=torch.long)
    for row in range(size):
        n = min(75, max(1, tokens - 2 + int(torch.randint(-5, 6, (1,), generator=g))))
        ids[row, 0] = SOT_TOKEN_ID
        ids[row, 1 : n + 1] = torch.randint(1, MASK_TOKEN_ID, (n,), generator=g)
        ids[row, n + 1] = EOT_TOKEN_ID
    return {
        "images": torch.randn(size, 3, *image_size, generator=g),
        "caption_ids": ids,
        "pids": torch.arange(size) // 2,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _autocast(precision: str, device: torch.device) -> Iterator[None]:
    if precision == "fp32":
        yield
    else:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield


@contextlib.contextmanager
def recorded_masks(store: list[tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Record the masked captions our forward draws."""
    original = irra_module.mask_captions

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = original(*args, **kwargs)
        store.append(result)
        return result

    irra_module.mask_captions = wrapper
    try:
        yield
    finally:
        irra_module.mask_captions = original


@contextlib.contextmanager
def fixed_masks(masked: Tensor, labels: Tensor) -> Iterator[None]:
    """Make our forward use these masked captions (cut to the length it asks for)."""
    original = irra_module.mask_captions
    irra_module.mask_captions = lambda ids, *_, **__: (masked[:, : ids.shape[1]], labels[:, : ids.shape[1]])
    try:
        yield
    finally:
        irra_module.mask_captions = original


def progress(message: str) -> None:
    """A line on stderr, so a slow run shows where it is (stdout stays for results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_steps(steps: dict[str, Callable[[int], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Seconds per step of each formulation: one warm-up step each (which also creates Adam's
    state), then ``rounds`` rounds in which every formulation takes one step in turn, so that other
    work on the machine weighs on all of them alike; the median per formulation (lower median for
    an even count)."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for index in range(rounds + 1):
        for label, step in steps.items():
            start = time.perf_counter()
            step(index)
            _sync(device)
            seconds = time.perf_counter() - start
            if index:
                times[label].append(seconds)
            progress(f"{label}: {'warm-up step' if not index else f'step {index}/{rounds}'} {seconds:.2f} s")
    return {label: sorted(values)[(len(values) - 1) // 2] for label, values in times.items()}


def ours_step(model: IRRA, optimizer: torch.optim.Optimizer, batch, precision: str, device: torch.device):
    def step(index: int) -> None:
        generator = torch.Generator(device=device).manual_seed(index)
        with _autocast(precision, device):
            out = model(batch, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    return step


def build_model(settings: Settings, num_classes: int, device: torch.device) -> IRRA:
    torch.manual_seed(settings.runtime.seed)
    model = build_irra(settings, num_classes=num_classes, freeze_logit_scale=True)  # as training builds it
    return model.to(device).train()


def machine_line(device: torch.device) -> str:
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"device {device}, torch {torch.__version__}, threads {threads}, load average {load}"


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed rounds (after one warm-up round); each round steps every formulation once")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=30, help="mean caption length, SOT and EOT included")
    parser.add_argument("--classes", type=int, default=CUHK_TRAIN_IDS, help="identity classifier size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        help="our precisions, comma separated: fp32, bf16 or fp32,bf16; auto = both on CUDA or a CPU with "
        "bf16 instructions (AVX512-BF16/AMX), fp32 alone elsewhere (bf16 there is emulated and very slow)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true", help="do not time the tiny demo configuration")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16_skipped = False
    if args.precision == "auto":
        bf16_skipped = not (device.type == "cuda" or cpu_bf16_instructions())
        args.precision = "fp32,bf16" if device.type == "cuda" or cpu_bf16_instructions() else "fp32"
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        parser.error(f"--precision takes fp32, bf16 or fp32,bf16, got {args.precision!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    settings = resolve_settings(sets=BASE_SETS + [f"runtime.device={device}"], environ={})
    model = build_model(settings, args.classes, device)
    batch = {k: v.to(device) for k, v in make_batch(args.batch, settings.model.image_size, args.tokens).items()}
    check_gen = lambda: torch.Generator(device=device).manual_seed(1234)  # noqa: E731

    # Losses at identical weights: ours fp32 draws the AGM masks, every other row reuses them.
    losses: dict[str, float] = {}
    store: list[tuple[Tensor, Tensor]] = []
    with torch.no_grad():
        with recorded_masks(store):
            losses["ours fp32"] = model(batch, generator=check_gen())["loss"].item()
        pad = batch["caption_ids"].shape[1] - store[0][0].shape[1]
        masked, labels = (F.pad(t, (0, pad)) for t in store[0])
        with fixed_masks(masked, labels), _autocast("bf16", device):
            if "bf16" in precisions:
                losses["ours bf16"] = model(batch, generator=check_gen())["loss"].item()

    progress(f"losses at identical weights: {losses}")
    rows: list[dict] = []
    steps: dict[str, Callable[[int], None]] = {}
    importance_gap = None
    if not args.skip_reference:
        reference = ReferenceIRRA(model, settings.masking).to(device).train()
        with torch.no_grad():
            losses["reference"] = reference(batch, check_gen(), masks=(masked, labels)).item()
            _, ours_row = model.base_model.encode_text_tokens(
                batch["caption_ids"], attention_layers=settings.masking.layers
            )
            _, ref_row = reference.base_model.encode_text(batch["caption_ids"], settings.masking.layers)
            importance_gap = (ours_row - ref_row[:, : ours_row.shape[1]]).abs().max().item()
        ref_optimizer = build_optimizer(reference, settings.optim)

        def reference_step(index: int) -> None:
            loss = reference(batch, torch.Generator(device=device).manual_seed(index))
            ref_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref_optimizer.step()

        steps["reference"] = reference_step

    optimizer = build_optimizer(model, settings.optim)
    for precision in precisions:
        steps[f"ours {precision}"] = ours_step(model, optimizer, batch, precision, device)
    seconds = time_steps(steps, args.steps, device)
    steps.clear()
    del model, optimizer

    tiny_source = None
    if not args.skip_tiny:
        if DEMO_CONFIG.exists():
            tiny = resolve_settings(config=DEMO_CONFIG, sets=BASE_SETS, environ={})
            tiny_source = str(DEMO_CONFIG.relative_to(REPO))
        else:
            tiny = resolve_settings(sets=BASE_SETS + TINY_SETS, environ={})
            tiny_source = "TINY_SETS scaled (configs/demo.yaml absent)"
        tiny_batch_size = tiny.train.batch_size
        tiny_model = build_model(tiny, 64, device)
        tiny_batch = {
            k: v.to(device) for k, v in make_batch(tiny_batch_size, tiny.model.image_size, args.tokens).items()
        }
        tiny_optimizer = build_optimizer(tiny_model, tiny.optim)
        tiny_steps = {f"tiny {precision}": ours_step(tiny_model, tiny_optimizer, tiny_batch, precision, device)
                      for precision in precisions}
        seconds.update(time_steps(tiny_steps, max(args.steps, 5), device))

    load_after = os.getloadavg()[0]
    ref_s = seconds.get("reference")
    note = f"load {load_before:.1f}->{load_after:.1f}"
    for precision in precisions:
        label = f"ours {precision}"
        gap = abs(losses[label] - losses["reference"]) if "reference" in losses else None
        vs = "reference" if precision == "fp32" else "ours fp32"
        if precision != "fp32":
            gap = abs(losses[label] - losses["ours fp32"])
        rows.append(
            {
                "figure": f"train step ViT-B/16 384x128, batch {args.batch}, sdm+mlm+id AGM, {precision}",
                "unit": "samples/s",
                "ours": args.batch / seconds[label],
                "reference": args.batch / ref_s if ref_s else None,
                "higher_is_better": True,
                "goal": ">= 3x (bf16)" if precision == "bf16" else ">= 1.5x (fp32)",
                "note": (f"|loss diff| {gap:.1e} vs {vs}; " if gap is not None else "") + note,
            }
        )
    if bf16_skipped and "bf16" not in precisions:
        rows.append(
            {
                "figure": f"train step ViT-B/16 384x128, batch {args.batch}, sdm+mlm+id AGM, bf16",
                "unit": "samples/s",
                "ours": None,
                "reference": args.batch / ref_s if ref_s else None,
                "higher_is_better": True,
                "goal": ">= 3 (bf16)",
                "note": "not measured: this CPU has no bf16 instructions (run with --precision fp32,bf16 to force)",
            }
        )
    for precision in precisions:
        label = f"tiny {precision}"
        if label in seconds:
            rows.append(
                {
                    "figure": f"train step tiny demo config, batch {tiny_batch_size}, {precision}",
                    "unit": "samples/s",
                    "ours": tiny_batch_size / seconds[label],
                    "reference": None,
                    "higher_is_better": True,
                    "goal": "-",
                    "note": f"{tiny_source}; {note}",
                }
            )
    if args.json:
        print(json.dumps(rows))
        return

    print(
        f"IRRA training step (forward + backward + Adam step), ViT-B/16 384x128, batch {args.batch}, "
        f"sdm+mlm+id, AGM, captions ~{args.tokens} tokens, {args.classes} identities"
    )
    print(machine_line(device) + f" (at start {load_before:.2f})")
    print("reference = fp32, nn.MultiheadAttention, full 77 tokens, MLM head over all positions\n")
    print(f"{'':<12}{'s/step':>10}{'samples/s':>12}{'vs reference':>14}{'loss':>14}")
    for label in ("reference", *(f"ours {p}" for p in precisions)):
        if label not in seconds:
            continue
        s = seconds[label]
        speedup = f"{ref_s / s:.2f}x" if ref_s else "-"
        print(f"{label:<12}{s:>10.2f}{args.batch / s:>12.2f}{speedup:>14}{losses[label]:>14.6f}")
    if "reference" in losses:
        print(
            f"|loss ours fp32 - reference| = {abs(losses['ours fp32'] - losses['reference']):.2e} "
            "(same weights, same masked captions)"
        )
    if "ours bf16" in losses:
        print(f"|loss ours bf16 - ours fp32| = {abs(losses['ours bf16'] - losses['ours fp32']):.2e}")
    if importance_gap is not None:
        print(f"AGM importance (EOT attention row), max |ours - reference| = {importance_gap:.2e}")
    if tiny_source:
        print(f"\ntiny demo configuration ({tiny_source}), batch {tiny_batch_size}:")
        for precision in precisions:
            s = seconds[f"tiny {precision}"]
            print(f"  ours {precision}: {s:.3f} s/step, {tiny_batch_size / s:.1f} samples/s")
    print(f"\nload average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
