"""Tiny raw benchmark datasets written on the fly for the data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LAYOUT = {
    "CUHK-PEDES": ("reid_raw.json", "file_path"),
    "ICFG-PEDES": ("ICFG-PEDES.json", "file_path"),
    "RSTPReid": ("data_captions.json", "img_path"),
}


def write_image(path: Path, seed: int, size: tuple[int, int] = (16, 32), fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def standard_records(fmt: str, ids: dict[str, list[int]], images_per_id: int = 2) -> list[dict[str, Any]]:
    """Records with ids per split, ``images_per_id`` images each, captions as the format has them."""
    _, key = LAYOUT[fmt]
    captions_per_image = 1 if fmt == "ICFG-PEDES" else 2
    records = []
    for split, pids in ids.items():
        for pid in pids:
            for n in range(images_per_id):
                records.append(
                    {
                        "id": pid,
                        "split": split,
                        key: f"cam{pid % 3}/{pid:04d}_{n}.jpg",
                        "captions": [
                            f"person {pid} image {n} caption {c} wearing a red coat"
                            for c in range(captions_per_image)
                        ],
                        "processed_tokens": [],
                    }
                )
    return records


def write_raw(root: Path, fmt: str, records: list[dict[str, Any]], images: bool = True) -> Path:
    """Write ``records`` as the format's JSON under ``root`` and a valid image for each path."""
    name, key = LAYOUT[fmt]
    root.mkdir(parents=True, exist_ok=True)
    (root / "imgs").mkdir(exist_ok=True)
    if images:
        for index, record in enumerate(records):
            path = record.get(key) if isinstance(record, dict) else None
            if isinstance(path, str) and ".." not in path and not path.startswith("/"):
                target = root / "imgs" / path
                if not target.exists():
                    write_image(target, index)
    (root / name).write_text(json.dumps(records, indent=1), encoding="utf-8")
    return root
