"""Draw one stylised pedestrian with Pillow, as a surveillance camera might have seen them.

The person is drawn at twice the output size and reduced by box averaging (Pillow polygons
have no antialiasing). Everything an identity fixes (garments, colours, bag, hair) comes from the
attributes; what a camera varies (viewpoint, pose, scale and position, background, lighting and
white balance, blur, occluders, noise, JPEG quality) comes from the per-image generator, and the
body build and exact shades from the per-identity ``look_seed``. Same inputs, same pixels.

This module composes the image: background (``background``), person (``person``, drawn from
``look``, ``figure``, ``body`` and ``accessories`` on a ``canvas``), occluder and camera.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from personsearch.data.synthetic.background import draw_background
from personsearch.data.synthetic.canvas import Canvas
from personsearch.data.synthetic.look import identity_look
from personsearch.data.synthetic.person import draw_person

IMAGE_SIZE = (96, 288)
#: Raised whenever the same attributes and seeds come out as other pixels (2: garment cues that
#: survive a 32-pixel-wide crop, gendered shoulders, larger bags), so a kept set is drawn anew.
DRAWING_VERSION = 2
_SS = 2  # supersampling factor


@dataclass(frozen=True)
class RenderedImage:
    """An image and the camera facts a captioner may mention (viewpoint)."""

    image: Image.Image
    viewpoint: str  # "front", "back" or "side"
    jpeg_quality: int


def _occlude(image: Image.Image, rng: random.Random) -> None:
    """A foreground object hiding part of the person: a pole, a car bonnet, a passer-by's edge."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    color = (rng.randint(20, 220), rng.randint(20, 220), rng.randint(20, 220))
    kind = rng.choice(("pole", "bottom", "edge"))
    if kind == "pole":
        x = rng.uniform(0.1, 0.9) * w
        draw.rectangle([x, 0, x + rng.uniform(0.06, 0.14) * w, h], fill=color)
    elif kind == "bottom":
        draw.rounded_rectangle([-20, h * rng.uniform(0.82, 0.9), w + 20, h + 20], radius=24, fill=color)
    else:
        x = rng.choice((0.0, 1.0)) * w
        r = rng.uniform(0.12, 0.25) * w
        draw.ellipse([x - r, h * rng.uniform(0.2, 0.6), x + r, h * 1.1], fill=color)


def _camera(image: Image.Image, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """Lighting, white balance, blur and sensor noise."""
    if rng.random() < 0.45:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    pixels = np.asarray(image, dtype=np.float32)
    gain = rng.uniform(0.7, 1.25) * np.array([rng.uniform(0.9, 1.1) for _ in range(3)], dtype=np.float32)
    contrast = np.float32(rng.uniform(0.8, 1.1))
    mean = np.float32(pixels.mean())
    noise = nprng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(rng.uniform(0.0, 6.0))
    pixels = ((pixels - mean) * contrast + mean) * gain + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render_person(
    attrs: Mapping[str, str], rng: random.Random, look_seed: int, size: tuple[int, int] = IMAGE_SIZE
) -> RenderedImage:
    """Draw the identity described by ``attrs`` once, with camera variation drawn from ``rng``."""
    nprng = np.random.default_rng(rng.getrandbits(64))
    w, h = size[0] * _SS, size[1] * _SS
    view = rng.choices(("front", "back", "side"), weights=(0.4, 0.3, 0.3), k=1)[0]
    canvas = Canvas(draw_background((w, h), rng, nprng))
    body_height = h * rng.uniform(0.8, 0.93)
    top = rng.uniform(0.02 * h, h - body_height * 1.02)
    centre_x = w / 2 + rng.uniform(-0.1, 0.1) * w
    draw_person(canvas, attrs, identity_look(attrs, look_seed), view, rng, (centre_x, top, body_height))
    if rng.random() < 0.12:
        _occlude(canvas.image, rng)
    image = canvas.image
    if view == "side" and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.reduce(_SS)
    image = _camera(image, rng, nprng)
    return RenderedImage(image=image, viewpoint=view, jpeg_quality=rng.randint(60, 95))


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG with fixed settings, so the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=2)
    return buffer.getvalue()
