"""The attribute vocabulary of the synthetic pedestrians, how identities draw from it, and how
each value is said in words.

An identity is one combination of attribute values. Identities are drawn one after another from
a single seeded generator; some are near-copies of an earlier identity with one or two values
changed, so that telling identities apart needs the details, as in real data.

``VERBALISATIONS`` is the single source of truth for wording: the captioner picks its words from
it and the tests check captions against it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

Attributes = dict[str, str]

#: Attribute names in caption-independent canonical order (also the key order of attributes.json).
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "gender",
    "hair_length",
    "hair_color",
    "upper_type",
    "upper_color",
    "upper_pattern",
    "lower_type",
    "lower_color",
    "shoe_color",
    "bag",
    "bag_color",
    "headwear",
    "headwear_color",
    "item",
)

#: Values that mean "nothing to see": a caption need not mention them.
ABSENT_VALUES = frozenset({"none", "plain"})

COLORS: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "red",
    "blue",
    "green",
    "yellow",
    "pink",
    "purple",
    "brown",
    "orange",
)

#: Base RGB of each colour name; the renderer jitters it per image (lighting, shade).
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (236, 236, 232),
    "grey": (128, 128, 130),
    "red": (198, 32, 38),
    "blue": (38, 72, 192),
    "green": (40, 142, 62),
    "yellow": (236, 206, 42),
    "pink": (242, 146, 186),
    "purple": (118, 52, 152),
    "brown": (112, 72, 38),
    "orange": (242, 132, 30),
}

HAIR_COLORS: tuple[str, ...] = ("black", "brown", "blonde", "grey")
HAIR_PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (96, 60, 30),
    "blonde": (222, 190, 110),
    "grey": (165, 165, 160),
}

UPPER_TYPES: tuple[str, ...] = ("t-shirt", "shirt", "sweater", "jacket", "coat", "dress")
UPPER_PATTERNS: tuple[str, ...] = ("plain", "striped", "checked")
LOWER_TYPES: tuple[str, ...] = ("pants", "jeans", "shorts", "skirt")
BAGS: tuple[str, ...] = ("none", "backpack", "handbag", "shoulder bag")
HEADWEAR: tuple[str, ...] = ("none", "hat", "cap")
ITEMS: tuple[str, ...] = ("none", "umbrella", "phone")

_COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black",),
    "white": ("white",),
    "grey": ("grey", "gray"),
    "red": ("red",),
    "blue": ("blue",),
    "green": ("green",),
    "yellow": ("yellow",),
    "pink": ("pink",),
    "purple": ("purple", "violet"),
    "brown": ("brown",),
    "orange": ("orange",),
}

#: (attribute, value) -> the words or phrases a caption may use for it (lowercase; first = plain).
VERBALISATIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {
        "male": ("man", "guy", "male", "gentleman", "he", "his", "him"),
        "female": ("woman", "lady", "female", "girl", "she", "her"),
    },
    "hair_length": {
        "short": ("short", "cropped"),
        "long": ("long", "shoulder-length"),
    },
    "hair_color": {
        "black": ("black", "dark"),
        "brown": ("brown",),
        "blonde": ("blonde", "blond", "fair"),
        "grey": ("grey", "gray", "silver"),
    },
    "upper_type": {
        "t-shirt": ("t-shirt", "tee shirt", "tee"),
        "shirt": ("shirt", "button-up shirt", "long-sleeved shirt"),
        "sweater": ("sweater", "jumper", "pullover"),
        "jacket": ("jacket", "zip-up jacket"),
        "coat": ("coat", "overcoat", "long coat"),
        "dress": ("dress", "long dress"),
    },
    "upper_color": _COLOR_WORDS,
    "upper_pattern": {
        "plain": ("plain", "solid"),
        "striped": ("striped", "stripes", "stripy"),
        "checked": ("checked", "plaid", "checkered"),
    },
    "lower_type": {
        "pants": ("pants", "trousers", "slacks"),
        "jeans": ("jeans", "denim jeans", "denims"),
        "shorts": ("shorts",),
        "skirt": ("skirt",),
    },
    "lower_color": _COLOR_WORDS,
    "shoe_color": _COLOR_WORDS,
    "bag": {
        "backpack": ("backpack", "rucksack", "knapsack"),
        "handbag": ("handbag", "purse", "hand bag"),
        "shoulder bag": ("shoulder bag", "messenger bag", "crossbody bag"),
    },
    "bag_color": _COLOR_WORDS,
    "headwear": {
        "hat": ("hat", "sun hat"),
        "cap": ("cap", "baseball cap"),
    },
    "headwear_color": _COLOR_WORDS,
    "item": {
        "umbrella": ("umbrella",),
        "phone": ("phone", "cell phone", "mobile phone", "smartphone"),
    },
}

#: Words that name the thing a colour attribute belongs to (the test pairs colour with noun).
COLOR_OWNER: dict[str, str] = {
    "upper_color": "upper_type",
    "lower_color": "lower_type",
    "bag_color": "bag",
    "headwear_color": "headwear",
}


def visible_attributes(attrs: Mapping[str, str]) -> list[str]:
    """Names of the attributes a caption set must cover: every one whose value is not absent."""
    return [name for name in ATTRIBUTE_NAMES if attrs.get(name, "none") not in ABSENT_VALUES]


def words_for(name: str, value: str) -> tuple[str, ...]:
    """The phrases that verbalise ``name = value`` (empty for absent values)."""
    return VERBALISATIONS.get(name, {}).get(value, ())


def _weighted(rng: random.Random, options: Mapping[str, float]) -> str:
    keys = list(options)
    return rng.choices(keys, weights=[options[k] for k in keys], k=1)[0]


def _fix_consistency(attrs: Attributes) -> Attributes:
    """Make dependent values agree: a dress has no lower garment; no bag, no bag colour; ..."""
    if attrs["upper_type"] == "dress":
        attrs["lower_type"] = "none"
        attrs["lower_color"] = "none"
    if attrs["bag"] == "none":
        attrs["bag_color"] = "none"
    if attrs["headwear"] == "none":
        attrs["headwear_color"] = "none"
    if attrs["upper_type"] == "coat" and attrs["lower_type"] == "shorts":  # an overcoat hides shorts
        attrs["lower_type"] = "pants"
    if attrs["upper_type"] != "dress" and attrs["lower_type"] == "none":
        attrs["lower_type"] = "pants"
    return attrs


def _color(rng: random.Random, avoid: tuple[str, ...] = ()) -> str:
    return rng.choice([c for c in COLORS if c not in avoid])


def sample_attributes(rng: random.Random) -> Attributes:
    """Draw one fresh attribute combination. Gender shows through garment and hair frequencies."""
    female = rng.random() < 0.5
    gender = "female" if female else "male"
    hair_length = _weighted(rng, {"long": 0.75, "short": 0.25} if female else {"long": 0.08, "short": 0.92})
    hair_color = _weighted(rng, {"black": 0.45, "brown": 0.3, "blonde": 0.15, "grey": 0.1})
    upper_type = _weighted(
        rng,
        {"t-shirt": 0.22, "shirt": 0.14, "sweater": 0.16, "jacket": 0.16, "coat": 0.14, "dress": 0.18}
        if female
        else {"t-shirt": 0.27, "shirt": 0.2, "sweater": 0.17, "jacket": 0.2, "coat": 0.16},
    )
    upper_color = _color(rng)
    upper_pattern = _weighted(rng, {"plain": 0.7, "striped": 0.18, "checked": 0.12})
    lower_type = _weighted(
        rng,
        {"pants": 0.3, "jeans": 0.3, "shorts": 0.15, "skirt": 0.25}
        if female
        else {"pants": 0.42, "jeans": 0.4, "shorts": 0.18},
    )
    if lower_type == "jeans":
        lower_color = _weighted(rng, {"blue": 0.6, "black": 0.25, "grey": 0.1, "white": 0.05})
    else:
        lower_color = _color(rng, avoid=(upper_color,) if rng.random() < 0.7 else ())
    shoe_color = _weighted(
        rng,
        {"black": 0.34, "white": 0.3, "brown": 0.14, "grey": 0.08, "red": 0.05, "blue": 0.05, "pink": 0.04},
    )
    bag = _weighted(
        rng,
        {"none": 0.3, "backpack": 0.25, "handbag": 0.25, "shoulder bag": 0.2}
        if female
        else {"none": 0.38, "backpack": 0.35, "handbag": 0.05, "shoulder bag": 0.22},
    )
    attrs: Attributes = {
        "gender": gender,
        "hair_length": hair_length,
        "hair_color": hair_color,
        "upper_type": upper_type,
        "upper_color": upper_color,
        "upper_pattern": upper_pattern,
        "lower_type": lower_type,
        "lower_color": lower_color,
        "shoe_color": shoe_color,
        "bag": bag,
        "bag_color": _color(rng),
        "headwear": _weighted(rng, {"none": 0.72, "hat": 0.12, "cap": 0.16}),
        "headwear_color": _color(rng),
        "item": _weighted(rng, {"none": 0.74, "umbrella": 0.13, "phone": 0.13}),
    }
    return _fix_consistency(attrs)


#: Attributes a near-copy may change (gender stays, so the copy stays plausible).
_MUTABLE = (
    "upper_color",
    "lower_color",
    "shoe_color",
    "bag",
    "bag_color",
    "headwear",
    "item",
    "upper_pattern",
    "hair_color",
    "upper_type",
    "lower_type",
)


def _mutate(base: Attributes, rng: random.Random) -> Attributes:
    """A near-copy of ``base``: one or two visible details changed."""
    fresh = sample_attributes(rng)
    attrs = dict(base)
    for name in rng.sample(_MUTABLE, k=rng.choice((1, 1, 2))):
        if name in ("upper_type", "lower_type") and fresh["gender"] != attrs["gender"]:
            continue
        attrs[name] = fresh[name]
        if name == "upper_type" and base["upper_type"] == "dress" and attrs["upper_type"] != "dress":
            attrs["lower_type"], attrs["lower_color"] = "pants", _color(rng)
    for thing, color in (("bag", "bag_color"), ("headwear", "headwear_color")):
        if attrs[thing] != "none" and attrs[color] == "none":
            attrs[color] = _color(rng)
    return _fix_consistency(attrs)


def sample_identities(count: int, rng: random.Random, near_copy_rate: float = 0.3) -> list[Attributes]:
    """``count`` distinct attribute combinations; about ``near_copy_rate`` of them near-copies."""
    identities: list[Attributes] = []
    seen: set[tuple[str, ...]] = set()
    while len(identities) < count:
        if identities and rng.random() < near_copy_rate:
            attrs = _mutate(rng.choice(identities), rng)
        else:
            attrs = sample_attributes(rng)
        key = tuple(attrs[name] for name in ATTRIBUTE_NAMES)
        if key in seen:
            continue
        seen.add(key)
        identities.append(attrs)
    return identities
