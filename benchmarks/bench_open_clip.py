"""Embedding throughput of personsearch's CLIP beside open_clip's, same weights, same inputs, one process.

open_clip's ``ViT-B-16-quickgelu`` is created with random weights at 384x128 (height x width); its
weights are copied into personsearch's CLIP (the parameter names are the same, OpenAI's), so both
compute the same function and their embeddings are compared (cosine similarity). Each workload
times open_clip and ours in turn, batch after batch (A/B/A/B, so load drift on a shared machine
hits both), after one warm-up call each, all under ``torch.inference_mode()``, and reports the
median time per batch:

- image embedding (``encode_image``), fp32 and bf16; bf16 is one autocast context around all the
  batches of a workload (weight casts cached across batches, as an export loop does);
- text embedding at 77 tokens (every caption padded to the full context: nothing to trim);
- text embedding of 256 captions of realistic lengths (CUHK-PEDES-like: mean ~30 tokens, 12..70):
  open_clip's ``encode_text`` on batches in the given order (always 77 positions), ours
  ``personsearch.retrieval.embed.embed_texts`` (sorted by length, each batch cut to its longest
  caption). The timed unit is one pass over all the captions.

bf16 is measured where it is real arithmetic (AVX512-BF16 or AMX on the CPU, or CUDA) unless
``--precision`` says otherwise. The header adds a measured 2048x2048 matmul rate in fp32 and bf16:
AVX512-BF16 without AMX can still make bf16 GEMMs slower than fp32 ones.

    pip install 'personsearch[bench]'                           # open_clip_torch
    python benchmarks/bench_open_clip.py                        # a few minutes on 2 CPU cores
    python benchmarks/bench_open_clip.py --image-batches 2 --text-batches 1 --skip text
    python benchmarks/bench_open_clip.py --device cuda --image-batch 64 --text-batch 256
    python benchmarks/bench_open_clip.py --json                 # rows for benchmarks/run_all.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.model import build_clip
from personsearch.retrieval.embed import embed_texts
from personsearch.settings import ArchSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import cpu_flags, cpu_model, fmt, machine_header, speedup  # noqa: E402

SOT, EOT = 49406, 49407
CONTEXT = 77
INSTALL_HINT = "open_clip not installed: pip install 'personsearch[bench]'"
#: Names (last component) of the buffers open_clip keeps beside its weights: the causal mask,
#: saved in the state dict by some versions. personsearch builds its mask on the fly.
OPEN_CLIP_BUFFERS = frozenset({"attn_mask"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Shape:
    """A CLIP architecture on both sides: ``open_clip_name`` is open_clip's model name, or None to
    build open_clip's ``CLIP`` class directly from ``arch`` (the tiny test shape)."""

    name: str
    arch: dict[str, int]
    image_size: tuple[int, int]
    open_clip_name: str | None

    @property
    def label(self) -> str:
        return f"{self.name} {self.image_size[0]}x{self.image_size[1]}"


VIT_B_16 = Shape("ViT-B/16", ArchSettings().model_dump(), (384, 128), "ViT-B-16-quickgelu")
TINY = Shape(
    "tiny CLIP",
    dict(embed_dim=32, vision_width=64, vision_layers=1, vision_heads=1, patch_size=8,
         text_width=64, text_layers=1, text_heads=1),
    (32, 16),
    None,
)


# ------------------------------------------------------------------------------------- inputs


def caption_lengths(count: int, generator: torch.Generator, mean: float = 30.0, std: float = 9.0,
                    low: int = 12, high: int = 70) -> Tensor:
    """Token counts (SOT and EOT included) of ``count`` captions, CUHK-PEDES-like: a normal draw,
    rounded and clamped to [low, high]."""
    drawn = torch.randn(count, generator=generator) * std + mean
    return drawn.round().clamp(low, high).long()


def captions(lengths: Sequence[int] | Tensor, generator: torch.Generator, context: int = CONTEXT) -> Tensor:
    """Token ids [N, context]: SOT, random word ids in [1, 49000), EOT at ``length - 1``, zeros after."""
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    if lengths.numel() and (int(lengths.min()) < 2 or int(lengths.max()) > context):
        raise ValueError(f"caption lengths must lie in [2, {context}] (SOT and EOT included)")
    ids = torch.randint(1, 49000, (lengths.numel(), context), generator=generator)
    ids[torch.arange(context)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = SOT
    ids[torch.arange(lengths.numel()), lengths - 1] = EOT
    return ids


def tokens_run(lengths: Tensor, batch_size: int) -> int:
    """Token positions ``embed_texts`` runs: captions sorted by length, each batch cut to its longest."""
    ordered = lengths.sort().values
    return sum(int(ordered[s:s + batch_size].max()) * len(ordered[s:s + batch_size])
               for s in range(0, len(ordered), batch_size))


# ------------------------------------------------------------------------------------ weights


def copy_open_clip_weights(source: dict[str, Tensor], model: nn.Module) -> list[str]:
    """Copy an open_clip ViT CLIP state dict into personsearch's CLIP, strictly; the skipped keys.

    open_clip's ViT CLIP keeps OpenAI's parameter names, so every key maps to itself. Buffers that
    open_clip may save beside the weights (``attn_mask``) are skipped; any other key of ``source``
    that ``model`` lacks, any key of ``model`` that ``source`` lacks, and any shape that differs is
    a ValueError naming them.
    """
    target = model.state_dict()
    skipped = sorted(key for key in source if key.rsplit(".", 1)[-1] in OPEN_CLIP_BUFFERS)
    given = {key: value for key, value in source.items() if key not in skipped}
    problems = []
    unused = sorted(set(given) - set(target))
    missing = sorted(set(target) - set(given))
    wrong = [f"{key} {tuple(given[key].shape)} vs ours {tuple(target[key].shape)}"
             for key in sorted(set(given) & set(target)) if given[key].shape != target[key].shape]
    if unused:
        problems.append(f"open_clip keys personsearch lacks: {', '.join(unused)}")
    if missing:
        problems.append(f"personsearch keys open_clip lacks: {', '.join(missing)}")
    if wrong:
        problems.append(f"shapes differ: {', '.join(wrong)}")
    if problems:
        raise ValueError("; ".join(problems))
    model.load_state_dict(given, strict=True)
    return skipped


def import_open_clip() -> Any | None:
    try:
        import open_clip
    except ImportError:
        return None
    return open_clip


def create_open_clip(open_clip: Any, shape: Shape) -> tuple[nn.Module, str]:
    """open_clip's model of ``shape`` with QuickGELU (OpenAI's activation), random weights, eval mode,
    and the call that made it."""
    logging.disable(logging.WARNING)  # "No pretrained weights loaded ... initialized randomly"
    try:
        if shape.open_clip_name is None:
            arch = shape.arch
            vision = dict(layers=arch["vision_layers"], width=arch["vision_width"], patch_size=arch["patch_size"],
                          head_width=arch["vision_width"] // arch["vision_heads"], image_size=shape.image_size)
            text = dict(width=arch["text_width"], heads=arch["text_heads"], layers=arch["text_layers"],
                        context_length=CONTEXT)
            model = open_clip.CLIP(arch["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)
            how = "open_clip.CLIP(tiny config, quick_gelu=True)"
        elif shape.open_clip_name in open_clip.list_models():
            model = open_clip.create_model(shape.open_clip_name, pretrained=None, force_image_size=shape.image_size)
            how = f"create_model({shape.open_clip_name!r}, force_image_size={shape.image_size})"
        else:
            base = shape.open_clip_name.removesuffix("-quickgelu")
            model = open_clip.create_model(base, pretrained=None, force_image_size=shape.image_size,
                                           force_quick_gelu=True)
            how = f"create_model({base!r}, force_quick_gelu=True, force_image_size={shape.image_size})"
    finally:
        logging.disable(logging.NOTSET)
    return model.eval(), how


# ------------------------------------------------------------------------------------- timing


@dataclass
class Timed:
    seconds: float  # median per batch
    items: int  # items per batch
    output: Tensor  # embeddings of every timed batch, float32 on the CPU

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runs: dict[str, Callable[[Tensor], Tensor]], batches: list[Tensor], warmup: Tensor,
                     device: torch.device) -> dict[str, Timed]:
    """Each run on ``warmup`` once, then on every batch in turn (A/B/A/B); median time per batch."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[Tensor]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn(warmup)
        sync(device)
        for batch in batches:
            for name, fn in runs.items():
                start = time.perf_counter()
                out = fn(batch)
                sync(device)
                times[name].append(time.perf_counter() - start)
                outputs[name].append(out.float().cpu())
    return {name: Timed(statistics.median(times[name]), len(batches[0]), torch.cat(outputs[name]))
            for name in runs}


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 3) -> float:
    """Best rate of a ``size`` x ``size`` matmul in ``dtype``, GFLOP/s."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    best = float("inf")
    with torch.inference_mode():
        a @ b
        sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def bf16_hardware(device: torch.device) -> bool:
    return device.type == "cuda" or bool(BF16_FLAGS & cpu_flags())


def chosen_precisions(choice: str, device: torch.device) -> tuple[list[str], str]:
    """The precisions to measure, and why the others are not."""
    if choice == "auto":
        if bf16_hardware(device):
            return list(PRECISIONS), ""
        return ["fp32"], ("not measured: this CPU has no AVX512-BF16/AMX (bf16 is emulated, slower than fp32); "
                          "force with --precision fp32,bf16")
    chosen = [p.strip() for p in choice.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PRECISIONS]
    if unknown or not chosen:
        raise ValueError(f"--precision must be auto, fp32, bf16 or fp32,bf16, not {choice!r}")
    return [p for p in PRECISIONS if p in chosen], f"not measured: --precision {choice}"


def cosine(a: Tensor, b: Tensor) -> str:
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1)
    return f"{cos.mean().item():.7f} (min {cos.min().item():.7f})"


def machine_summary(device: torch.device, gemm: dict[str, float]) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        flags = sorted(BF16_FLAGS & cpu_flags())
        where = f"{cpu_model()}, {'+'.join(flags) if flags else 'no bf16 instructions'}"
    ratio = gemm["bf16"] / gemm["fp32"]
    return (f"{where}; GEMM fp32 {gemm['fp32']:.0f}, bf16 {gemm['bf16']:.0f} GFLOP/s "
            f"(bf16 GEMM {ratio:.2f}x fp32 here)")


def compiled_image_row(rows: list[dict], ours: nn.Module, reference: nn.Module | None, images: list[Tensor],
                       device: torch.device, shape: Shape, batch: int) -> None:
    """Our image encoder as ``export --compile`` runs it (fp32), beside open_clip's plain one."""
    from personsearch.model.compiled import compiled_image_encoder

    with compiled_image_encoder(ours, device) as compiled:
        start = time.perf_counter()
        with torch.inference_mode():
            compiled.encode_image(images[0])  # the one-time compile (or a cache hit)
        sync(device)
        compile_seconds = time.perf_counter() - start
        runs = {"ours": compiled.encode_image}
        if reference is not None:
            runs["open_clip"] = reference.encode_image
        timed = time_interleaved(runs, images, images[0], device)
    note = f"first call (compile or cache hit) {compile_seconds:.0f} s"
    if "open_clip" in timed:
        note += f"; cosine ours vs open_clip {cosine(timed['ours'].output, timed['open_clip'].output)}; open_clip eager"
    rows.append({"figure": f"image embedding {shape.label}, batch {batch}, fp32, ours --compile", "unit": "img/s",
                 "ours": timed["ours"].rate, "reference": timed["open_clip"].rate if "open_clip" in timed else None,
                 "higher_is_better": True, "goal": "-", "note": note})
    print(f"  measured {rows[-1]['figure']}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--image-batches", type=int, default=3, help="timed image batches per row")
    parser.add_argument("--text-batch", type=int, default=32, help="captions per batch (both text workloads)")
    parser.add_argument("--text-batches", type=int, default=2,
                        help="timed batches per 77-token row; timed passes over the real-length captions")
    parser.add_argument("--captions", type=int, default=256, help="captions of real lengths")
    parser.add_argument("--precision", default="auto", help="auto (bf16 too where it is hardware), fp32, fp32,bf16")
    parser.add_argument("--skip", choices=["image", "text"], action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows (run_all.py)")
    parser.add_argument("--compile", action="store_true",
                        help="also time our image encoder under --compile (torch.compile, freezing), fp32")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a tiny CLIP: the tests
    args = parser.parse_args(argv)
    for name in ("image_batch", "image_batches", "text_batch", "text_batches", "captions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        chosen, not_chosen = chosen_precisions(args.precision, torch.device(args.device))
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = TINY if args.tiny else VIT_B_16

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    gemm_size = 256 if args.tiny else 2048
    gemm = {p: matmul_gflops(torch.float32 if p == "fp32" else torch.bfloat16, device, gemm_size) for p in PRECISIONS}
    machine = machine_summary(device, gemm)
    if not args.json:
        print(machine_header())
        print(f"- {gemm_size}x{gemm_size} matmul on {device}: fp32 {gemm['fp32']:.0f} GFLOP/s, "
              f"bf16 {gemm['bf16']:.0f} GFLOP/s (bf16 {gemm['bf16'] / gemm['fp32']:.2f}x fp32)\n")

    torch.manual_seed(0)
    ours = build_clip(shape.arch, image_size=shape.image_size, stride=shape.arch["patch_size"]).eval()
    open_clip = import_open_clip()
    reference: nn.Module | None = None
    if open_clip is None:
        say(f"{INSTALL_HINT}: timing personsearch only")
    else:
        reference, how = create_open_clip(open_clip, shape)
        state = reference.state_dict()
        skipped = copy_open_clip_weights(state, ours)
        buffers = sorted(name for name, _ in reference.named_buffers() if name not in state)
        say(f"open_clip {open_clip.__version__} {how}; its {len(state) - len(skipped)} tensors copied into "
            f"personsearch's CLIP under the same names; left out: open_clip {skipped or 'none'} "
            f"(buffers outside its state dict: {buffers or 'none'}), personsearch none")
        reference.to(device)
    ours.to(device)

    rows: list[dict] = []

    def workload(figure: str, unit: str, goals: dict[str, str], batches: list[Tensor], warmup: Tensor,
                 runs_for: Callable[[str], dict[str, Callable[[Tensor], Tensor]]]) -> None:
        fp32: dict[str, Tensor] = {}
        for precision in PRECISIONS:
            row = {"figure": f"{figure}, {precision}", "unit": unit, "ours": None, "reference": None,
                   "higher_is_better": True, "goal": goals[precision]}
            notes = [] if reference is not None else [INSTALL_HINT]
            if precision not in chosen:
                rows.append({**row, "note": "; ".join([f"{precision} {not_chosen}", *notes])})
                continue
            runs = runs_for(precision)
            if reference is None:
                runs.pop("open_clip")
            with precision_context(precision, device):
                timed = time_interleaved(runs, batches, warmup, device)
            row["ours"] = timed["ours"].rate
            if "open_clip" in timed:
                row["reference"] = timed["open_clip"].rate
            if precision == "fp32":
                fp32 = {name: t.output for name, t in timed.items()}
                if "open_clip" in timed:
                    notes.append(f"cosine ours vs open_clip {cosine(timed['ours'].output, fp32['open_clip'])}")
            elif fp32:
                notes.append(f"cosine ours bf16 vs ours fp32 {cosine(timed['ours'].output, fp32['ours'])}")
                if "open_clip" in timed:
                    notes.append(f"open_clip bf16 vs its fp32 {cosine(timed['open_clip'].output, fp32['open_clip'])}")
            rows.append({**row, "note": "; ".join(notes)})
            print(f"  measured {row['figure']}", file=sys.stderr, flush=True)

    if "image" not in args.skip:
        height, width = shape.image_size
        generator = torch.Generator().manual_seed(0)
        images = [torch.randn(args.image_batch, 3, height, width, generator=generator).to(device)
                  for _ in range(args.image_batches)]
        image_runs = {"open_clip": reference.encode_image if reference is not None else None,
                      "ours": ours.encode_image}
        workload(
            f"image embedding {shape.label}, batch {args.image_batch}", "img/s",
            {"fp32": ">= 1.05x open_clip", "bf16": ">= 1.4x open_clip (CPU with bf16 arithmetic)"},
            images, images[0], lambda precision: dict(image_runs),
        )

        if args.compile and "fp32" in chosen:
            compiled_image_row(rows, ours, reference, images, device, shape, args.image_batch)

    lengths = caption_lengths(args.captions, torch.Generator().manual_seed(1))
    if "text" not in args.skip:
        generator = torch.Generator().manual_seed(2)
        full = [captions([CONTEXT] * args.text_batch, generator).to(device) for _ in range(args.text_batches)]
        text_runs = {"open_clip": reference.encode_text if reference is not None else None,
                     "ours": ours.encode_text}
        workload(
            f"text embedding {shape.name}, {CONTEXT} tokens, batch {args.text_batch}", "captions/s",
            {"fp32": "never slower (>= 1.0x)", "bf16": "never slower (>= 1.0x)"},
            full, full[0], lambda precision: dict(text_runs),
        )

        real = captions(lengths, generator)
        size = args.text_batch

        def open_clip_pass(ids: Tensor) -> Tensor:
            assert reference is not None
            parts = [reference.encode_text(ids[s:s + size].to(device)).float().cpu() for s in range(0, len(ids), size)]
            return torch.cat(parts)

        def ours_pass(precision: str) -> Callable[[Tensor], Tensor]:
            return lambda ids: embed_texts(ours, ids, batch_size=size, device=device, precision=precision)

        workload(
            f"text embedding {shape.name}, {args.captions} captions of real lengths "
            f"(mean {lengths.float().mean():.0f} tokens), batch {size}", "captions/s",
            {"fp32": ">= 3x open_clip", "bf16": ">= 3x open_clip"},
            [real] * args.text_batches, real[:size],
            lambda precision: {"open_clip": open_clip_pass, "ours": ours_pass(precision)},
        )

    if args.json:
        for row in rows:
            row["note"] = "; ".join(part for part in (row["note"], machine) if part)
        print(json.dumps(rows))
        return
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"\n{shape.label}, random weights (open_clip's, copied into ours), device {device}, threads {threads}; "
          f"precisions {', '.join(chosen)}")
    print(f"image batch {args.image_batch} x {args.image_batches} timed batches; text batch {args.text_batch} x "
          f"{args.text_batches} timed batches (77 tokens) / passes (real lengths); median time per batch or pass")
    if "text" not in args.skip:
        print(f"real-length captions: {args.captions}, tokens mean {lengths.float().mean():.1f}, range "
              f"{int(lengths.min())}..{int(lengths.max())}; token positions run: open_clip "
              f"{CONTEXT * args.captions:,}, ours {tokens_run(lengths, args.text_batch):,}")
    print()
    print("| figure | ours | open_clip | speed-up | goal | note |")
    print("|---|---:|---:|---:|---|---|")
    for row in rows:
        print(f"| {row['figure']} | {fmt(row['ours'], row['unit'])} | {fmt(row['reference'], row['unit'])} | "
              f"{speedup(row)} | {row['goal']} | {row['note'] or '-'} |")


if __name__ == "__main__":
    main()
