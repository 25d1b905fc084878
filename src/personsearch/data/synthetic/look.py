"""What stays the same for one identity in every image: build, skin and the exact shades.

The attributes name colours ("blue"); the look turns them into the one shade of blue this person
wears, drawn from the per-identity ``look_seed`` so every camera sees the same garment.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from personsearch.data.synthetic.attributes import HAIR_PALETTE, PALETTE
from personsearch.data.synthetic.canvas import Color, contrast, jitter

SKIN_TONES: tuple[Color, ...] = (
    (246, 214, 186),
    (232, 190, 152),
    (214, 164, 124),
    (184, 132, 94),
    (140, 96, 66),
    (100, 68, 46),
)


@dataclass
class Look:
    """What stays fixed for one identity across its images: build, skin, exact shades."""

    skin: Color
    width: float  # build: a factor on body widths
    shoulders: float  # shoulder width against the waist: the plainest sign of gender at a distance
    hair: Color
    upper: Color
    stripe: Color
    lower: Color
    shoes: Color
    bag: Color
    headwear: Color


def identity_look(attrs: Mapping[str, str], look_seed: int) -> Look:
    """The look of the identity described by ``attrs``; the same seed gives the same look."""
    rng = random.Random(look_seed)
    upper = jitter(PALETTE[attrs["upper_color"]], rng, 8.0)
    # Black or white stripes, narrower than the ground, so the garment still reads as its colour.
    stripe = jitter(contrast(upper), rng, 6.0)

    def pal(name: str) -> Color:
        value = attrs.get(name, "none")
        return jitter(PALETTE[value], rng, 8.0) if value in PALETTE else (0, 0, 0)

    lower = pal("lower_color")
    if attrs.get("lower_type") == "jeans" and attrs.get("lower_color") == "blue":
        lower = jitter((52, 82, 140), rng, 8.0)  # denim blue
    return Look(
        skin=rng.choice(SKIN_TONES),
        width=rng.uniform(0.9, 1.1) * (0.94 if attrs["gender"] == "female" else 1.04),
        shoulders=0.84 if attrs["gender"] == "female" else 1.14,
        hair=jitter(HAIR_PALETTE[attrs["hair_color"]], rng, 6.0),
        upper=upper,
        stripe=stripe,
        lower=lower,
        shoes=pal("shoe_color"),
        bag=pal("bag_color"),
        headwear=pal("headwear_color"),
    )
