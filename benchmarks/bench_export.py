"""Export speed (images/s) beside a plain reference formulation, with random-weight models.

Reference: what a first implementation would do: walk the folder, decode and transform each file
in the main process, embed it alone (batch of one), collect, normalise and save one array. Ours:
``export_images``: DataLoader workers decode in parallel, batched embedding, streamed into index
shards with checksums. Both embed the same generated JPEG crops (128x64, like camera crops) with
the same model, measured in the same run.

    python benchmarks/bench_export.py                          # tiny model: the pipeline's own cost
    python benchmarks/bench_export.py --vit-b16 --precision bf16 --images 64   # ViT-B/16 at 384x128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from personsearch.retrieval.export import export_images
from personsearch.runs import load_trained

TINY_ARCH = [
    "model.arch.embed_dim=64",
    "model.arch.vision_width=64",
    "model.arch.vision_layers=1",
    "model.arch.vision_heads=2",
    "model.arch.text_width=64",
    "model.arch.text_layers=1",
    "model.arch.text_heads=2",
]


def random_run(folder: Path, sets: list[str]) -> Path:
    """A run folder holding a randomly initialised CLIP (config.yaml + checkpoints/best.*)."""
    from safetensors.torch import save_file

    from personsearch.model import build_clip
    from personsearch.runs import create_run
    from personsearch.settings import resolve_settings

    settings = resolve_settings(sets=["model.pretrained=null", *sets], environ={})
    run = create_run(settings, name="random", output_dir=folder)
    torch.manual_seed(0)
    clip = build_clip(
        settings.model.arch,
        settings.model.image_size,
        settings.model.stride,
        settings.model.text_length,
        settings.model.vocab_size,
    )
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()},
        str(run / "checkpoints" / "best.safetensors"),
    )
    from personsearch.io import sha256_file

    meta = {"format": "personsearch-checkpoint", "format_version": 1,
            "weights_sha256": sha256_file(run / "checkpoints" / "best.safetensors")}
    (run / "checkpoints" / "best.json").write_text(json.dumps(meta))
    return run


def make_images(folder: Path, count: int, size: tuple[int, int] = (128, 64)) -> None:
    """``count`` smooth random JPEG crops in a few camera sub-folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, size=(size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        target = folder / f"cam{i % 4}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)


@torch.no_grad()
def reference_export(model, images: Path, out: Path, precision: str) -> int:
    """Decode, transform and embed one file at a time in the main process; save one array."""
    from personsearch.accel import autocast
    from personsearch.data.transforms import build_transform, load_rgb

    transform = build_transform(model.settings.model.image_size, train=False)
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp"))
    feats = []
    for file in files:
        x = transform(load_rgb(file))[None]
        with autocast(precision, torch.device("cpu")):
            feats.append(model.clip.encode_image(x).float())
    matrix = torch.cat(feats)
    matrix = matrix / matrix.norm(dim=1, keepdim=True)
    np.save(out, matrix.numpy().astype(np.float16))
    return len(files)


def measure(
    label: str, sets: list[str], count: int, batch_size: int, workers: int, precision: str, rows: list | None = None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = load_trained(random_run(tmp_path / "runs", sets))
        images = tmp_path / "images"
        make_images(images, count)
        start = time.perf_counter()
        n = reference_export(model, images, tmp_path / "reference.npy", precision)
        reference_s = time.perf_counter() - start
        report = export_images(
            model,
            tmp_path / "index",
            images=images,
            batch_size=batch_size,
            workers=workers,
            precision=precision,
        )
        ours_s = report.seconds
        assert report.indexed == n
    if rows is not None:
        rows.append({
            "figure": f"export {label}", "unit": "images/s", "ours": n / ours_s, "reference": n / reference_s,
            "higher_is_better": True, "goal": "-", "note": f"{n} images, batch {batch_size}, {workers} workers",
        })
        return
    print(f"{label:<34} {n:>6} {n / reference_s:>12.1f} {n / ours_s:>12.1f} {reference_s / ours_s:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="generated images per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--vit-b16", action="store_true", help="also measure a ViT-B/16 at 384x128 (slow on CPU)")
    parser.add_argument("--vit-images", type=int, default=64, help="images for the ViT-B/16 measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list | None = [] if args.json else None
    if not args.json:
        print(
            f"CPU threads {torch.get_num_threads()}, workers {args.workers}, batch {args.batch_size}, "
            f"precision {args.precision}"
        )
        print(f"{'model':<34} {'images':>6} {'reference/s':>12} {'ours/s':>12} {'speedup':>9}")
    tiny = [*TINY_ARCH, "model.image_size=[128,64]"]
    measure(
        "tiny CLIP (64 wide, 1 layer) 128x64",
        tiny,
        args.images,
        args.batch_size,
        args.workers,
        args.precision,
        rows,
    )
    if args.vit_b16:
        measure(
            f"ViT-B/16 384x128 {args.precision}",
            [],
            args.vit_images,
            args.batch_size,
            args.workers,
            args.precision,
            rows,
        )
    if rows is not None:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
