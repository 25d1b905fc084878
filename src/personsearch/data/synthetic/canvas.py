"""The supersampled drawing surface, and the colour arithmetic every drawn part shares.

Pillow polygons have no antialiasing, so everything is drawn at a multiple of the output size
and reduced afterwards; the primitives here are the few shapes a person and a scene are made of.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageChops, ImageDraw

Color = tuple[int, int, int]
Point = tuple[float, float]


def _clamp(value: float) -> int:
    return max(0, min(255, int(round(value))))


def shade(color: Color, factor: float) -> Color:
    """``color`` darkened (factor < 1) or lightened (factor > 1), kept in range."""
    return (_clamp(color[0] * factor), _clamp(color[1] * factor), _clamp(color[2] * factor))


def jitter(color: Color, rng: random.Random, amount: float = 10.0, shade: float = 0.08) -> Color:
    """``color`` with a random overall shade and a random offset per channel."""
    f = 1.0 + rng.uniform(-shade, shade)
    return tuple(_clamp(c * f + rng.uniform(-amount, amount)) for c in color)  # type: ignore[return-value]


def contrast(color: Color) -> Color:
    """A stripe colour that reads against ``color``."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (30, 30, 34) if luma > 140 else (232, 232, 228)


class Canvas:
    """Supersampled drawing surface with the few primitives a person is made of."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)

    def limb(self, p0: Point, p1: Point, w0: float, w1: float, color: Color) -> None:
        """A tapered segment with rounded ends (arm, leg, strap)."""
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        length = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / length, dx / length
        poly = [
            (p0[0] + nx * w0 / 2, p0[1] + ny * w0 / 2),
            (p1[0] + nx * w1 / 2, p1[1] + ny * w1 / 2),
            (p1[0] - nx * w1 / 2, p1[1] - ny * w1 / 2),
            (p0[0] - nx * w0 / 2, p0[1] - ny * w0 / 2),
        ]
        self.draw.polygon(poly, fill=color)
        self.ellipse(p0, w0 / 2, w0 / 2, color)
        self.ellipse(p1, w1 / 2, w1 / 2, color)

    def ellipse(self, c: Point, rx: float, ry: float, color: Color) -> None:
        self.draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=color)

    def polygon(
        self,
        points: list[Point],
        color: Color,
        pattern: str = "plain",
        stripe: Color | None = None,
        period: float = 8.0,
    ) -> None:
        """A filled polygon, optionally striped or checked (the pattern is clipped to the shape)."""
        self.draw.polygon(points, fill=color)
        if pattern == "plain" or stripe is None:
            return
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        box = (int(min(xs)) - 1, int(min(ys)) - 1, int(max(xs)) + 2, int(max(ys)) + 2)
        shape = Image.new("L", self.image.size, 0)
        ImageDraw.Draw(shape).polygon(points, fill=255)
        lines = Image.new("L", self.image.size, 0)
        ld = ImageDraw.Draw(lines)
        width = max(2, int(period * (0.38 if pattern == "striped" else 0.24)))
        y = box[1] + period / 2
        while y < box[3]:
            ld.rectangle([box[0], int(y), box[2], int(y) + width - 1], fill=255)
            y += period
        if pattern == "checked":
            x = box[0] + period / 2
            while x < box[2]:
                ld.rectangle([int(x), box[1], int(x) + width - 1, box[3]], fill=255)
                x += period
        self.image.paste(stripe, mask=ImageChops.multiply(shape, lines))
