"""Draw one stylised pedestrian with Pillow, as a surveillance camera might have seen them.

The person is drawn at twice the output size and reduced by box averaging (Pillow polygons
have no antialiasing). Everything an identity fixes (garments, colours, bag, hair) comes from the
attributes; what a camera varies (viewpoint, pose, scale and position, background, lighting and
white balance, blur, occluders, noise, JPEG quality) comes from the per-image generator, and the
body build and exact shades from the per-identity ``look_seed``. Same inputs, same pixels.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from personsearch.data.synthetic.attributes import HAIR_PALETTE, PALETTE

IMAGE_SIZE = (96, 288)
_SS = 2  # supersampling factor

Color = tuple[int, int, int]
Point = tuple[float, float]

_SKIN_TONES: tuple[Color, ...] = (
    (246, 214, 186),
    (232, 190, 152),
    (214, 164, 124),
    (184, 132, 94),
    (140, 96, 66),
    (100, 68, 46),
)


@dataclass(frozen=True)
class RenderedImage:
    """An image and the camera facts a captioner may mention (viewpoint)."""

    image: Image.Image
    viewpoint: str  # "front", "back" or "side"
    jpeg_quality: int


def _clamp(value: float) -> int:
    return max(0, min(255, int(round(value))))


def _shade(color: Color, factor: float) -> Color:
    return (_clamp(color[0] * factor), _clamp(color[1] * factor), _clamp(color[2] * factor))


def _jitter(color: Color, rng: random.Random, amount: float = 10.0, shade: float = 0.08) -> Color:
    f = 1.0 + rng.uniform(-shade, shade)
    return tuple(_clamp(c * f + rng.uniform(-amount, amount)) for c in color)  # type: ignore[return-value]


def _contrast(color: Color) -> Color:
    """A stripe colour that reads against ``color``."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (30, 30, 34) if luma > 140 else (232, 232, 228)


class _Canvas:
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


@dataclass
class _Look:
    """What stays fixed for one identity across its images: build, skin, exact shades."""

    skin: Color
    width: float
    hair: Color
    upper: Color
    stripe: Color
    lower: Color
    shoes: Color
    bag: Color
    headwear: Color


def _look(attrs: Mapping[str, str], look_seed: int) -> _Look:
    rng = random.Random(look_seed)
    upper = _jitter(PALETTE[attrs["upper_color"]], rng, 8.0)
    # Black or white stripes, narrower than the ground, so the garment still reads as its colour.
    stripe = _jitter(_contrast(upper), rng, 6.0)

    def pal(name: str) -> Color:
        value = attrs.get(name, "none")
        return _jitter(PALETTE[value], rng, 8.0) if value in PALETTE else (0, 0, 0)

    lower = pal("lower_color")
    if attrs.get("lower_type") == "jeans" and attrs.get("lower_color") == "blue":
        lower = _jitter((52, 82, 140), rng, 8.0)  # denim blue
    return _Look(
        skin=rng.choice(_SKIN_TONES),
        width=rng.uniform(0.9, 1.1) * (0.94 if attrs["gender"] == "female" else 1.04),
        hair=_jitter(HAIR_PALETTE[attrs["hair_color"]], rng, 6.0),
        upper=upper,
        stripe=stripe,
        lower=lower,
        shoes=pal("shoe_color"),
        bag=pal("bag_color"),
        headwear=pal("headwear_color"),
    )


def _background(size: tuple[int, int], rng: random.Random, nprng: np.random.Generator) -> Image.Image:
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
            return _jitter(PALETTE[rng.choice(list(PALETTE))], rng, 20.0, 0.3)
        c = muted()
        return (int(c[0]), int(c[1]), int(c[2]))

    if rng.random() < 0.5:  # floor tiles or road markings
        color = _shade(tuple(int(v) for v in floor_a), rng.uniform(0.75, 0.9))  # type: ignore[arg-type]
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


def _draw_person(
    canvas: _Canvas,
    attrs: Mapping[str, str],
    look: _Look,
    view: str,
    rng: random.Random,
    box: tuple[float, float, float],
) -> None:
    """Draw the person facing the camera ("front"), away ("back") or to the right ("side")."""
    cx, top, u = box  # centre x, head top y, body height
    wf = look.width
    side = view == "side"
    skin, hair = look.skin, look.hair
    upper_type, lower_type = attrs["upper_type"], attrs.get("lower_type", "none")
    pattern = attrs["upper_pattern"]

    def y(f: float) -> float:
        return top + f * u

    shoulder_y, waist_y, hip_y, knee_y, ankle_y = y(0.175), y(0.47), y(0.5), y(0.72), y(0.955)
    half_sh = (0.07 if side else 0.118) * u * wf
    half_waist = (0.06 if side else 0.088) * u * wf
    head_c = (cx + (0.01 * u if side else 0.0), y(0.075))
    head_rx, head_ry = 0.054 * u, 0.066 * u
    leg_w0, leg_w1 = 0.066 * u * wf, 0.044 * u
    arm_w0, arm_w1 = 0.046 * u * wf, 0.034 * u
    stride = rng.uniform(0.0, 0.2) if side else rng.uniform(0.0, 0.05)
    swing = rng.uniform(0.0, 0.35) if side else rng.uniform(0.02, 0.12)

    # Legs: hips to ankles, with stride (side) or a small stance (front/back).
    legs: list[tuple[Point, Point, Point]] = []
    for sign in (-1.0, 1.0):
        hip = (cx + (0.0 if side else sign * 0.045 * u * wf), hip_y)
        ang = sign * stride
        ankle = (hip[0] + math.sin(ang) * (ankle_y - hip_y) + (0 if side else sign * 0.012 * u), ankle_y)
        knee = ((hip[0] + ankle[0]) / 2 + (0.01 * u if side else 0.0), knee_y)
        legs.append((hip, knee, ankle))
    leg_color = look.lower if lower_type in ("pants", "jeans") else skin
    long_hair = attrs["hair_length"] == "long"
    if long_hair and view != "back":  # hair falling behind the shoulders
        canvas.polygon(
            [
                (head_c[0] - head_rx * 1.1, head_c[1]),
                (head_c[0] + head_rx * 1.1, head_c[1]),
                (head_c[0] + head_rx * 1.25, y(0.27)),
                (head_c[0] - head_rx * 1.25, y(0.27)),
            ],
            hair,
        )
    if side and attrs["bag"] == "backpack":  # block behind the back
        canvas.draw.rounded_rectangle(
            [cx - half_sh - 0.07 * u, y(0.19), cx - half_sh + 0.02 * u, y(0.42)],
            radius=0.02 * u,
            fill=look.bag,
        )
    for hip, knee, ankle in legs:
        canvas.limb(hip, knee, leg_w0, (leg_w0 + leg_w1) / 2, leg_color)
        canvas.limb(knee, ankle, (leg_w0 + leg_w1) / 2, leg_w1, leg_color)
        if lower_type == "shorts":
            canvas.limb(
                hip,
                ((hip[0] + knee[0] * 2) / 3, hip_y + (knee_y - hip_y) * 0.8),
                leg_w0 * 1.15,
                leg_w0 * 1.1,
                look.lower,
            )
        if lower_type == "jeans":  # outer seam
            canvas.draw.line([hip, knee, ankle], fill=_shade(look.lower, 1.25), width=max(1, int(0.006 * u)))
        if lower_type == "pants":  # crease
            canvas.draw.line([hip, knee, ankle], fill=_shade(look.lower, 0.8), width=max(1, int(0.004 * u)))
        toe = 0.045 * u if side else 0.0
        canvas.ellipse(
            (ankle[0] + toe * 0.6, ankle_y + 0.02 * u), 0.032 * u + toe * 0.5, 0.02 * u, look.shoes
        )
    if lower_type in ("pants", "jeans", "shorts"):  # seat joining both legs
        canvas.polygon(
            [
                (cx - half_waist, waist_y),
                (cx + half_waist, waist_y),
                (cx + half_waist * 1.05, hip_y + 0.04 * u),
                (cx - half_waist * 1.05, hip_y + 0.04 * u),
            ],
            look.lower,
        )
    if lower_type == "skirt":
        flare = 0.135 * u * wf if not side else 0.09 * u
        canvas.polygon(
            [
                (cx - half_waist, waist_y),
                (cx + half_waist, waist_y),
                (cx + flare, y(0.7)),
                (cx - flare, y(0.7)),
            ],
            look.lower,
        )

    # Torso and garment body.
    hem_f = {"coat": 0.65, "dress": 0.71, "jacket": 0.53, "sweater": 0.5, "shirt": 0.5, "t-shirt": 0.49}[
        upper_type
    ]
    flare = {"coat": 1.25, "dress": 1.6, "jacket": 1.05}.get(upper_type, 1.0)
    torso = [(cx - half_sh, shoulder_y), (cx + half_sh, shoulder_y), (cx + half_waist * 1.05, waist_y)]
    if hem_f > 0.55:
        torso += [(cx + half_waist * flare, y(hem_f)), (cx - half_waist * flare, y(hem_f))]
    else:
        torso += [(cx + half_waist * 1.05, y(hem_f)), (cx - half_waist * 1.05, y(hem_f))]
    torso += [(cx - half_waist * 1.05, waist_y)]
    canvas.polygon(torso, look.upper, pattern, look.stripe, period=0.036 * u)
    detail = _shade(look.upper, 0.72 if sum(look.upper) > 200 else 1.6)
    lw = max(1, int(0.006 * u))
    if upper_type == "sweater":  # ribbed hem
        canvas.draw.rectangle(
            [cx - half_waist * 1.05, y(hem_f) - 0.018 * u, cx + half_waist * 1.05, y(hem_f)],
            fill=_shade(look.upper, 0.82),
        )
    if view == "front":
        if upper_type in ("jacket", "coat"):
            canvas.draw.line([(cx, shoulder_y + 0.01 * u), (cx, y(hem_f))], fill=detail, width=lw)
            canvas.polygon(
                [(cx - 0.045 * u, shoulder_y - 0.005 * u), (cx, y(0.26)), (cx - 0.02 * u, y(0.2))], detail
            )
            canvas.polygon(
                [(cx + 0.045 * u, shoulder_y - 0.005 * u), (cx, y(0.26)), (cx + 0.02 * u, y(0.2))], detail
            )
            if upper_type == "coat":
                for f in (0.3, 0.4, 0.5, 0.6):
                    canvas.ellipse((cx + 0.025 * u, y(f)), 0.006 * u, 0.006 * u, detail)
        elif upper_type == "shirt":
            canvas.polygon(
                [(cx - 0.035 * u, shoulder_y - 0.008 * u), (cx, y(0.21)), (cx - 0.03 * u, y(0.205))], detail
            )
            canvas.polygon(
                [(cx + 0.035 * u, shoulder_y - 0.008 * u), (cx, y(0.21)), (cx + 0.03 * u, y(0.205))], detail
            )
            for f in (0.25, 0.32, 0.39, 0.46):
                canvas.ellipse((cx, y(f)), 0.004 * u, 0.004 * u, detail)
        else:  # round neckline
            canvas.draw.chord(
                [cx - 0.03 * u, shoulder_y - 0.03 * u, cx + 0.03 * u, shoulder_y + 0.025 * u],
                0,
                180,
                fill=skin,
            )

    # Arms: sleeves in the garment colour, bare skin below short sleeves, hands.
    short_sleeve = upper_type in ("t-shirt", "dress")
    sleeve_color = look.upper
    arm_sides = (1.0,) if side else (-1.0, 1.0)
    hands: list[Point] = []
    for sign in arm_sides:
        sh = (cx + (0.0 if side else sign * (half_sh - arm_w0 * 0.35)), shoulder_y + arm_w0 * 0.4)
        ang = (swing * (1 if rng.random() < 0.5 else -1)) if side else sign * swing
        elbow = (sh[0] + math.sin(ang) * 0.15 * u, sh[1] + math.cos(ang) * 0.15 * u)
        ang2 = ang * 1.3 if side else ang * 0.6
        hand = (elbow[0] + math.sin(ang2) * 0.14 * u, elbow[1] + math.cos(ang2) * 0.14 * u)
        if short_sleeve:
            mid = ((sh[0] + elbow[0]) / 2, (sh[1] + elbow[1]) / 2)
            canvas.limb(sh, elbow, arm_w0 * 0.92, arm_w1, skin)
            canvas.limb(elbow, hand, arm_w1, arm_w1 * 0.9, skin)
            canvas.limb(sh, mid, arm_w0 * 1.1, arm_w0 * 1.05, sleeve_color)
        else:
            canvas.limb(sh, elbow, arm_w0, (arm_w0 + arm_w1) / 2, sleeve_color)
            canvas.limb(elbow, hand, (arm_w0 + arm_w1) / 2, arm_w1, sleeve_color)
            if upper_type == "sweater":
                canvas.limb(hand, hand, arm_w1 * 1.05, arm_w1 * 1.05, _shade(look.upper, 0.82))
        canvas.ellipse(hand, arm_w1 * 0.6, arm_w1 * 0.7, skin)
        hands.append(hand)

    # Neck, head, face, hair.
    canvas.limb((cx, y(0.12)), (cx, shoulder_y), 0.04 * u, 0.045 * u, skin)
    if view == "back":
        canvas.ellipse(head_c, head_rx, head_ry, skin)
        canvas.ellipse((head_c[0], head_c[1] - head_ry * 0.05), head_rx * 1.06, head_ry * 1.02, hair)
        if long_hair:
            canvas.polygon(
                [
                    (head_c[0] - head_rx * 1.06, head_c[1]),
                    (head_c[0] + head_rx * 1.06, head_c[1]),
                    (head_c[0] + head_rx * 1.2, y(0.28)),
                    (head_c[0] - head_rx * 1.2, y(0.28)),
                ],
                hair,
            )
    else:
        canvas.ellipse(head_c, head_rx, head_ry, skin)
        # Hair cap over the top of the head (pieslice = the upper half, plus a fringe).
        canvas.draw.pieslice(
            [
                head_c[0] - head_rx * 1.08,
                head_c[1] - head_ry * 1.1,
                head_c[0] + head_rx * 1.08,
                head_c[1] + head_ry * 0.9,
            ],
            180,
            360,
            fill=hair,
        )
        if side:
            canvas.ellipse(
                (head_c[0] - head_rx * 0.45, head_c[1] - head_ry * 0.05), head_rx * 0.6, head_ry * 0.75, hair
            )
            canvas.ellipse(
                (head_c[0] + head_rx * 0.98, head_c[1] + head_ry * 0.15),
                head_rx * 0.14,
                head_ry * 0.12,
                _shade(skin, 0.92),
            )
            canvas.ellipse(
                (head_c[0] + head_rx * 0.5, head_c[1] + head_ry * 0.02),
                head_rx * 0.09,
                head_ry * 0.08,
                (30, 24, 22),
            )
        else:
            for sx in (-0.38, 0.38):
                canvas.ellipse(
                    (head_c[0] + sx * head_rx, head_c[1] + head_ry * 0.05),
                    head_rx * 0.1,
                    head_ry * 0.08,
                    (30, 24, 22),
                )
            canvas.draw.line(
                [
                    (head_c[0] - head_rx * 0.25, head_c[1] + head_ry * 0.5),
                    (head_c[0] + head_rx * 0.25, head_c[1] + head_ry * 0.5),
                ],
                fill=_shade(skin, 0.7),
                width=max(1, int(0.004 * u)),
            )
            if long_hair:  # strands framing the face
                for sx in (-1.0, 1.0):
                    canvas.polygon(
                        [
                            (head_c[0] + sx * head_rx * 1.08, head_c[1] - head_ry * 0.1),
                            (head_c[0] + sx * head_rx * 0.75, head_c[1] - head_ry * 0.1),
                            (head_c[0] + sx * head_rx * 0.9, y(0.22)),
                            (head_c[0] + sx * head_rx * 1.3, y(0.22)),
                        ],
                        hair,
                    )

    # Headwear.
    if attrs["headwear"] == "hat":
        canvas.ellipse((head_c[0], head_c[1] - head_ry * 0.55), head_rx * 1.75, head_ry * 0.22, look.headwear)
        canvas.draw.rounded_rectangle(
            [
                head_c[0] - head_rx * 0.95,
                head_c[1] - head_ry * 1.35,
                head_c[0] + head_rx * 0.95,
                head_c[1] - head_ry * 0.5,
            ],
            radius=head_rx * 0.35,
            fill=look.headwear,
        )
        canvas.draw.rectangle(
            [
                head_c[0] - head_rx * 0.95,
                head_c[1] - head_ry * 0.75,
                head_c[0] + head_rx * 0.95,
                head_c[1] - head_ry * 0.6,
            ],
            fill=_shade(look.headwear, 0.7),
        )
    elif attrs["headwear"] == "cap":
        canvas.draw.pieslice(
            [
                head_c[0] - head_rx * 1.08,
                head_c[1] - head_ry * 1.18,
                head_c[0] + head_rx * 1.08,
                head_c[1] + head_ry * 0.5,
            ],
            180,
            360,
            fill=look.headwear,
        )
        if side:
            canvas.polygon(
                [
                    (head_c[0] + head_rx * 0.6, head_c[1] - head_ry * 0.42),
                    (head_c[0] + head_rx * 1.75, head_c[1] - head_ry * 0.3),
                    (head_c[0] + head_rx * 0.6, head_c[1] - head_ry * 0.2),
                ],
                _shade(look.headwear, 0.8),
            )
        elif view == "front":
            canvas.ellipse(
                (head_c[0], head_c[1] - head_ry * 0.38),
                head_rx * 0.95,
                head_ry * 0.16,
                _shade(look.headwear, 0.8),
            )

    # Bags.
    bag = attrs["bag"]
    strap = max(2, int(0.012 * u))
    if bag == "backpack":
        if view == "back":
            canvas.draw.rounded_rectangle(
                [cx - half_sh * 0.82, y(0.2), cx + half_sh * 0.82, y(0.44)], radius=0.025 * u, fill=look.bag
            )
            canvas.draw.rounded_rectangle(
                [cx - half_sh * 0.6, y(0.33), cx + half_sh * 0.6, y(0.42)],
                radius=0.015 * u,
                fill=_shade(look.bag, 0.8),
            )
        elif view == "front":
            for sx in (-0.55, 0.55):
                canvas.draw.line(
                    [(cx + sx * half_sh, shoulder_y), (cx + sx * half_sh * 0.9, y(0.36))],
                    fill=look.bag,
                    width=strap * 2,
                )
        else:
            canvas.draw.line(
                [(cx - 0.01 * u, shoulder_y), (cx - 0.02 * u, y(0.36))], fill=look.bag, width=strap * 2
            )
    elif bag == "shoulder bag":
        far = cx + half_sh * (0.6 if not side else 0.2)
        bag_c = (cx - half_waist * 1.25, y(0.5))
        canvas.draw.line([(far, shoulder_y), bag_c], fill=_shade(look.bag, 0.85), width=strap)
        canvas.draw.rounded_rectangle(
            [bag_c[0] - 0.05 * u, bag_c[1] - 0.035 * u, bag_c[0] + 0.045 * u, bag_c[1] + 0.04 * u],
            radius=0.01 * u,
            fill=look.bag,
        )
    elif bag == "handbag":
        hx, hy = hands[0]
        canvas.draw.arc(
            [hx - 0.03 * u, hy - 0.03 * u, hx + 0.03 * u, hy + 0.03 * u],
            180,
            360,
            fill=_shade(look.bag, 0.8),
            width=strap,
        )
        canvas.polygon(
            [
                (hx - 0.045 * u, hy + 0.005 * u),
                (hx + 0.045 * u, hy + 0.005 * u),
                (hx + 0.055 * u, hy + 0.07 * u),
                (hx - 0.055 * u, hy + 0.07 * u),
            ],
            look.bag,
        )

    # Carried item, in the last hand.
    item = attrs["item"]
    hx, hy = hands[-1]
    if item == "phone":
        px, py = (hx, hy - 0.03 * u) if rng.random() < 0.6 else (hx, hy)
        canvas.draw.rectangle(
            [px - 0.016 * u, py - 0.03 * u, px + 0.016 * u, py + 0.012 * u], fill=(20, 20, 26)
        )
        canvas.draw.rectangle(
            [px - 0.011 * u, py - 0.025 * u, px + 0.011 * u, py + 0.006 * u], fill=(90, 140, 200)
        )
        canvas.ellipse((px, py + 0.01 * u), arm_w1 * 0.5, arm_w1 * 0.5, skin)
    elif item == "umbrella":
        if rng.random() < 0.35:  # open, held above the head
            shaft_top = (cx + 0.02 * u, top - 0.06 * u)
            canvas.draw.line([(hx, hy), shaft_top], fill=(40, 40, 40), width=strap)
            canvas.draw.pieslice(
                [
                    shaft_top[0] - 0.24 * u,
                    shaft_top[1] - 0.02 * u,
                    shaft_top[0] + 0.24 * u,
                    shaft_top[1] + 0.16 * u,
                ],
                180,
                360,
                fill=_shade(look.bag, 1.0) if attrs["bag"] != "none" else (40, 40, 60),
            )
        else:  # closed, held like a cane
            tip = (hx + 0.06 * u, hy + 0.28 * u)
            canvas.limb((hx, hy), tip, 0.028 * u, 0.01 * u, (36, 36, 48))
            canvas.draw.arc(
                [hx - 0.03 * u, hy - 0.05 * u, hx + 0.01 * u, hy], 180, 360, fill=(30, 30, 30), width=strap
            )


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
    canvas = _Canvas(_background((w, h), rng, nprng))
    u = h * rng.uniform(0.8, 0.93)
    top = rng.uniform(0.02 * h, h - u * 1.02)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w
    _draw_person(canvas, attrs, _look(attrs, look_seed), view, rng, (cx, top, u))
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
