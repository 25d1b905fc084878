"""The scene behind a pedestrian: wall or street above a floor line, with texture and clutter.

A busy, varied background keeps a model from finding people by their plain surroundings.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from personsearch.data.synthetic.attributes import PALETTE
from personsearch.data.synthetic.canvas import Color, jitter, shade


def draw_background(size: tuple[int, int], rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """Wall or street above a floor line, with texture, scene shapes and clutter."""
    w, h = size

    def muted() -> np.ndarray:
        base = np.array([rng.uniform(60, 210)] * 3)
        tint = np.array([rng.uniform(-30, 30) for _ in range(3)])
        return np.clip(base + tint, 0, 255)

    horizon = int(h * rng.uniform(0.45, 0.85))
    top, mid, floor_a, floor_b = muted(), muted(), muted(), muted()
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    upper = top[None, :] * (1 - t) + mid[None, :] * t
    t2 = np.linspace(0.0, 1.0, h - horizon)[:, None]
    lower = floor_a[None, :] * (1 - t2) + floor_b[None, :] * t2
    column = np.concatenate([upper, lower], axis=0).astype(np.float32)[:, None, :]  # (h, 1, 3)
    if rng.random() < 0.3:  # sideways gradient (light from one side)
        side = np.linspace(1.0 - rng.uniform(0, 0.25), 1.0, w, dtype=np.float32)
        if rng.random() < 0.5:
            side = side[::-1]
        column = column * side[None, :, None]
    grain = nprng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2.0, 14.0))
    pixels = column + grain  # texture grain, broadcast over the colour channels
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    def scene_color() -> Color:
        if rng.random() < 0.2:
            return jitter(PALETTE[rng.choice(list(PALETTE))], rng, 20.0, 0.3)
        c = muted()
        return (int(c[0]), int(c[1]), int(c[2]))

    if rng.random() < 0.5:  # floor tiles or road markings
        color = shade(tuple(int(v) for v in floor_a), rng.uniform(0.75, 0.9))  # type: ignore[arg-type]
        step = rng.uniform(18, 40)
        y = horizon + step / 2
        while y < h:
            draw.line([(0, y), (w, y)], fill=color, width=2)
            y += step
    for _ in range(rng.randint(1, 5)):  # buildings, doors, windows, poles
        x0 = rng.uniform(-0.3 * w, w)
        bw = rng.uniform(0.05, 0.6) * w
        y0 = rng.uniform(0, horizon * 0.9)
        draw.rectangle([x0, y0, x0 + bw, horizon + rng.uniform(-10, 10)], fill=scene_color())
        if bw > 16 and rng.random() < 0.5:  # windows
            win = scene_color()
            for wy in np.arange(y0 + 8, horizon - 20, rng.uniform(24, 50)):
                draw.rectangle([x0 + 6, wy, x0 + bw - 6, wy + rng.uniform(8, 20)], fill=win)
    for _ in range(rng.randint(0, 6)):  # clutter: bins, plants, signs, distant people
        cx, cy = rng.uniform(0, w), rng.uniform(horizon * 0.6, h)
        r = rng.uniform(4, 22)
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=scene_color())
        else:
            draw.rectangle([cx - r, cy - r * 2, cx + r * 0.8, cy + r], fill=scene_color())
    return image
