"""Can a model trained from scratch tell the garments, the bag and the gender of people it never saw?

A diagnostic for the demo's exact-attribute precision (issue 16). It trains an image model, for
a fixed wall time, to classify attributes (``--targets``; default upper-garment kind, bag, gender,
lower-garment kind) from a prepared synthetic dataset's train images (``attributes.json``), and
reports accuracy on the test images: other identities, so the colours of a known identity do not
help there. ``--every N`` prints that accuracy every N steps (its time counts in ``--seconds``).
Models:

- ``vit``: the demo's image tower (2 blocks, width 64, 8-pixel patches); ``--stem conv`` makes
  the patches with three stride-2 convolutions (``model.arch.stem``);
- ``cnn``: three 3x3 convolutions with pooling at full resolution (slow on 2 cores).

    personsearch prepare synthetic --ids 800 --out /tmp/syn        # the demo's size
    python benchmarks/probe_attributes.py /tmp/syn --seconds 90
    python benchmarks/probe_attributes.py /tmp/syn --seconds 90 --stem conv

Issue 19's session (two targets, upper kind and bag, 240 s; majority class 0.26 and 0.45 / 0.30):
the patch ViT scored 0.33 / 0.26 at 800 identities and 0.59 / 0.64 at 3000, the CNN 0.31 / 0.41
and 0.44 / 0.55. Issue 16's later session, four targets, accuracy on test identities (majority
class: upper kind 0.26, bag 0.45, gender 0.56, lower kind 0.48 at 800 ids):

| data | model | seconds | upper kind | bag | gender | lower kind |
|---|---|---|---|---|---|---|
| 800 ids, drawing 1 | vit, patch stem | 150 | 0.34 | 0.33 | 0.65 | 0.63 |
| 800 ids, drawing 2 | vit, patch stem | 150 | 0.35 | 0.30 | 0.62 | 0.62 |
| 3000 ids, drawing 1 | vit, patch stem | 150 | 0.51 | 0.36 | 0.65 | 0.78 |
| 3000 ids, drawing 2 | vit, patch stem | 150 | 0.44 | 0.32 | 0.67 | 0.77 |
| 800 ids, drawing 2 | vit, **conv stem** | 90 | **0.47** | **0.46** | **0.70** | 0.67 |

(Drawing 2 is ``DRAWING_VERSION`` 2: clearer garment cues, gendered shoulders, larger bags.) With
patches the ViT fits its training images (1.00) and learns little that carries over: it confuses a
dress with a t-shirt. Convolutions make the patches learn shapes (coats, dresses, bare legs) from
the demo's 600 training identities; shirts, sweaters, jackets and t-shirts stay confused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from personsearch.model import build_clip

TARGETS = ["upper_type", "bag", "gender", "lower_type"]  # --targets replaces it


def load_split(raw: Path, split: str, size: tuple[int, int], attributes: dict, classes: dict):
    rows = [r for r in json.loads((raw / "reid_raw.json").read_text()) if r["split"] == split]
    height, width = size
    pixels = np.stack([np.asarray(Image.open(raw / "imgs" / r["file_path"]).convert("RGB")
                                  .resize((width, height), Image.BILINEAR)) for r in rows])
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - 0.45) / 0.25
    labels = {k: torch.tensor([classes[k].index(attributes[r["file_path"]][k]) for r in rows]) for k in TARGETS}
    return images, labels


class Probe(nn.Module):
    def __init__(self, kind: str, size: tuple[int, int], classes: dict, stem: str = "patch") -> None:
        super().__init__()
        if kind == "vit":
            arch = dict(embed_dim=64, vision_width=64, vision_layers=2, vision_heads=2, patch_size=8,
                        text_width=64, text_layers=1, text_heads=1, stem=stem)
            clip = build_clip(arch, image_size=size, stride=8)
            self.features: nn.Module | None = None
            self.clip = clip
        else:
            self.clip = None
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(64, len(classes[k])) for k in TARGETS})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        z = self.clip.encode_image(images) if self.clip is not None else self.features(images)
        return {k: head(z) for k, head in self.heads.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", type=Path, help="a prepared synthetic dataset (personsearch prepare synthetic)")
    parser.add_argument("--model", choices=["vit", "cnn"], default="vit")
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 32), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--stem", choices=["patch", "conv"], default="patch",
                        help="vit: the image tower's first layer (model.arch.stem)")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help="attributes to classify")
    parser.add_argument("--every", type=int, default=500,
                        help="test accuracy every this many steps (0: only at the end)")
    args = parser.parse_args()
    TARGETS[:] = args.targets
    raw = args.prepared / "raw"
    attributes = json.loads((raw / "attributes.json").read_text())
    classes = {k: sorted({a[k] for a in attributes.values()}) for k in TARGETS}
    size = tuple(args.size)
    train_x, train_y = load_split(raw, "train", size, attributes, classes)
    test_x, test_y = load_split(raw, "test", size, attributes, classes)
    torch.manual_seed(0)
    model = Probe(args.model, size, classes, args.stem)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    started, steps = time.monotonic(), 0
    curve = []
    while time.monotonic() - started < args.seconds:
        if args.every and steps % args.every == 0:  # the learning curve on test identities (counts in --seconds)
            model.eval()
            with torch.no_grad():
                out = model(test_x)
                curve.append((steps, {k: (out[k].argmax(1) == test_y[k]).float().mean().item() for k in TARGETS}))
            model.train()
        rows = torch.randint(0, len(train_x), (64,), generator=generator)
        batch = train_x[rows].flip(-1) if steps % 2 else train_x[rows]
        out = model(batch)
        loss = sum(F.cross_entropy(out[k], train_y[k][rows]) for k in TARGETS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    for step, accuracy in curve:
        print(f"  step {step}: test " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    stem = f" ({args.stem} stem)" if args.model == "vit" else ""
    print(f"{args.model}{stem} at {size[0]}x{size[1]}, {steps} steps of 64 in {args.seconds:.0f} s, "
          f"{len(train_x)} train / {len(test_x)} test images")
    with torch.no_grad():
        for name, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
            out = model(images)
            parts = []
            for k in TARGETS:
                accuracy = (out[k].argmax(1) == labels[k]).float().mean().item()
                majority = np.bincount(labels[k].numpy()).max() / len(labels[k])
                parts.append(f"{k} {accuracy:.2f} (most frequent class {majority:.2f})")
            print(f"  {name}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
