"""Human-like captions for synthetic pedestrians, in the manner of CUHK-PEDES annotators.

Each caption mentions a random subset (at least 60%) of the identity's visible attributes, with
the garments' colours and types always among them (they are what annotators mention first); the
two captions of an image together mention every visible attribute. Sentence forms, clause order,
synonyms, pronouns and fillers vary, and the two captions of one image always differ.
Wording comes from :data:`attributes.VERBALISATIONS`, so tests can check any caption.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping

from personsearch.data.synthetic.attributes import VERBALISATIONS, visible_attributes

MIN_WORDS, MAX_WORDS = 15, 35
MIN_FRACTION = 0.6
#: Varied captions tried before the compact form (which always fits).
_ATTEMPTS = 40
_DETERMINERS = ("a", "the", "this")

#: Mentioned in every caption when present.
_CORE = ("gender", "upper_type", "upper_color", "lower_type", "lower_color")
#: A colour is only said together with the thing it colours.
_NEEDS = {"bag_color": "bag", "headwear_color": "headwear"}

_PRONOUNS = frozenset({"he", "his", "him", "she", "her"})

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def tokenize_caption(caption: str) -> list[str]:
    """Lowercase word tokens without punctuation, as in CUHK-PEDES ``processed_tokens``."""
    return _TOKEN.findall(caption.lower())


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _pick(rng: random.Random, name: str, value: str) -> str:
    return rng.choice(VERBALISATIONS[name][value])


class _Writer:
    """Builds one caption for a fixed set of attributes to mention."""

    def __init__(
        self, attrs: Mapping[str, str], mention: set[str], rng: random.Random, viewpoint: str
    ) -> None:
        self.a = attrs
        self.m = mention
        self.rng = rng
        self.viewpoint = viewpoint
        female = attrs["gender"] == "female"
        self.pron = "she" if female else "he"
        self.poss = "her" if female else "his"

    def say(self, name: str) -> str:
        return _pick(self.rng, name, self.a[name])

    # Noun phrases (without article unless stated).
    def subject(self) -> str:
        r = self.rng.random()
        noun = self.say("gender")
        if noun in ("he", "his", "him", "she", "her"):
            noun = "man" if self.a["gender"] == "male" else "woman"
        if r < 0.2:
            return "young " + noun
        if r < 0.3:
            return "middle-aged " + noun
        return noun

    def hair(self) -> str:
        words = []
        if "hair_length" in self.m:
            words.append(self.say("hair_length"))
        if "hair_color" in self.m:
            words.append(self.say("hair_color"))
        return " ".join(words + ["hair"])

    def upper(self) -> str:
        noun = self.say("upper_type") if "upper_type" in self.m else "top"
        color = self.say("upper_color") if "upper_color" in self.m else ""
        pattern = self.a["upper_pattern"] if "upper_pattern" in self.m else "plain"
        if pattern != "plain" and self.rng.random() < 0.4:
            tail = (
                " with stripes"
                if pattern == "striped"
                else f" with a {self.rng.choice(('plaid', 'checkered'))} pattern"
            )
            return _article(" ".join(w for w in (color, noun) if w)) + tail
        adj = self.say("upper_pattern") if pattern != "plain" else ""
        if adj == "stripes":
            adj = "striped"
        order = (adj, color) if self.rng.random() < 0.5 else (color, adj)
        return _article(" ".join(w for w in (*order, noun) if w))

    def lower(self) -> str:
        noun = self.say("lower_type") if "lower_type" in self.m else "bottoms"
        color = self.say("lower_color") if "lower_color" in self.m else ""
        phrase = " ".join(w for w in (color, noun) if w)
        if self.a["lower_type"] == "skirt":
            return _article(phrase)
        return ("a pair of " + phrase) if self.rng.random() < 0.35 else phrase

    def shoes(self) -> str:
        noun = self.rng.choice(("shoes", "shoes", "sneakers", "trainers"))
        phrase = f"{self.say('shoe_color')} {noun}"
        return ("a pair of " + phrase) if self.rng.random() < 0.3 else phrase

    def bag(self) -> str:
        color = self.say("bag_color") + " " if "bag_color" in self.m else ""
        return _article(color + self.say("bag"))

    def headwear(self) -> str:
        color = self.say("headwear_color") + " " if "headwear_color" in self.m else ""
        return _article(color + self.say("headwear"))

    def item(self) -> str:
        return _article(self.say("item"))

    # Sentences.
    def sentences(self) -> list[str]:
        rng, pron, poss = self.rng, self.pron, self.poss
        has_lower = self.a.get("lower_type", "none") != "none" and "lower_type" in self.m
        hair = "hair_length" in self.m or "hair_color" in self.m
        subj = self.subject()
        det = rng.choice(("a", "the", "this"))
        if det == "a":
            subj_np = _article(subj)
        else:
            subj_np = f"{det} {subj}"
        use_hair_in_opening = hair and rng.random() < 0.45
        opening_subject = subj_np + (f" with {self.hair()}" if use_hair_in_opening else "")
        verb = rng.choice(("is wearing", "wears", "is dressed in", "has on", "is in"))
        first = f"{opening_subject} {verb} {self.upper()}"
        rest: list[Callable[[], str]] = []
        lower_joined = False
        if has_lower and rng.random() < 0.6:
            lower_joined = True
            if "shoe_color" in self.m and rng.random() < 0.4:
                first += f", {self.lower()} and {self.shoes()}"
                self.m = self.m - {"shoe_color"}
            else:
                first += rng.choice((" and ", " with ", " over ", ", along with ")) + self.lower()
        sentences = [first]
        if has_lower and not lower_joined:
            rest.append(
                lambda: rng.choice(
                    (
                        f"{pron} also wears {self.lower()}",
                        f"{pron} has on {self.lower()}",
                        f"on the bottom {pron} is wearing {self.lower()}",
                        f"{pron} is wearing {self.lower()} as well",
                    )
                )
            )
        if hair and not use_hair_in_opening:
            rest.append(
                lambda: rng.choice(
                    (
                        f"{pron} has {self.hair()}",
                        f"{pron} has {self.hair()}",
                        f"{poss} {self.hair()} is visible",
                    )
                )
            )
        if "shoe_color" in self.m:
            rest.append(
                lambda: rng.choice(
                    (
                        f"{pron} is wearing {self.shoes()}",
                        f"{pron} has {self.shoes()} on {poss} feet",
                        f"{poss} shoes are {self.say('shoe_color')}",
                        f"{pron} wears {self.shoes()}",
                    )
                )
            )
        carried = [part for part in ("bag", "item") if part in self.m]
        if carried:

            def carry() -> str:
                things = [self.bag() if p == "bag" else self.item() for p in carried]
                if len(things) == 2 and rng.random() < 0.5:
                    return (
                        f"{pron} {rng.choice(('is carrying', 'carries', 'has'))} {things[0]} and {things[1]}"
                    )
                parts = []
                for p, thing in zip(carried, things, strict=True):
                    if p == "bag":
                        kind = self.a["bag"]
                        options = [f"{pron} is carrying {thing}", f"{pron} carries {thing}"]
                        if kind == "backpack":
                            options.append(f"{pron} has {thing} on {poss} back")
                        elif kind == "shoulder bag":
                            options.append(f"{pron} has {thing} over {poss} shoulder")
                        else:
                            options.append(f"{pron} holds {thing} in {poss} hand")
                        parts.append(rng.choice(options))
                    else:
                        options = [f"{pron} is holding {thing}", f"{pron} has {thing} in {poss} hand"]
                        if self.a["item"] == "phone":
                            options.append(f"{pron} is looking at {thing}")
                        parts.append(rng.choice(options))
                return ". ".join(parts)

            rest.append(carry)
        if "headwear" in self.m:
            rest.append(
                lambda: rng.choice(
                    (
                        f"{pron} wears {self.headwear()} on {poss} head",
                        f"{pron} is wearing {self.headwear()}",
                        f"{pron} has {self.headwear()} on",
                    )
                )
            )
        rng.shuffle(rest)
        sentences += [make() for make in rest]
        return sentences

    def fillers(self) -> list[str]:
        """Sentences that add no attribute (how the person moves or looks)."""
        direction = {"front": "towards the camera", "back": "away from the camera", "side": "to the side"}
        return [
            f"{self.pron} is walking",
            f"{self.pron} looks young",
            f"{self.pron} appears to be walking {direction.get(self.viewpoint, 'along')}",
            f"{self.pron} seems to be in a hurry",
            "the person is walking down the street",
            f"{self.pron} is standing still" if self.viewpoint == "front" else f"{self.pron} is walking",
        ]

    def filler(self) -> str:
        return self.rng.choice(self.fillers())

    def compact(self, det: str) -> list[str]:
        """The shortest sentences that state every attribute to mention, in their plain words: at
        most 31 words whatever is mentioned, so a caption always fits MAX_WORDS. Used only when the
        varied forms keep coming out too long (a person with every attribute visible)."""
        a, m, pron = self.a, self.m, self.pron

        def plain(name: str) -> str:
            return VERBALISATIONS[name][a[name]][0] if name in m else ""

        def phrase(*words: str) -> str:
            return " ".join(w for w in words if w)

        upper = _article(phrase(plain("upper_color"), plain("upper_pattern"), plain("upper_type") or "top"))
        worn = [upper]
        if a.get("lower_type", "none") != "none" and "lower_type" in m:
            lower = phrase(plain("lower_color"), plain("lower_type"))
            worn.append(_article(lower) if a["lower_type"] == "skirt" else lower)
        if "shoe_color" in m:
            worn.append(f"{plain('shoe_color')} shoes")
        noun = self.rng.choice([w for w in VERBALISATIONS["gender"][a["gender"]] if w not in _PRONOUNS])
        hair = phrase(plain("hair_length"), plain("hair_color"))
        opening = phrase(_article(noun) if det == "a" else f"{det} {noun}", f"with {hair} hair" if hair else "")
        clothes = worn[0] if len(worn) == 1 else ", ".join(worn[:-1]) + " and " + worn[-1]
        sentences = [f"{opening} wears {clothes}"]
        carried = [_article(phrase(plain("bag_color"), plain("bag"))) if part == "bag" else _article(plain("item"))
                   for part in ("bag", "item") if part in m]
        if carried:
            sentences.append(f"{pron} carries {' and '.join(carried)}")
        if "headwear" in m:
            sentences.append(f"{pron} wears {_article(phrase(plain('headwear_color'), plain('headwear')))}")
        fillers = self.fillers()
        self.rng.shuffle(fillers)
        while len(_finish(sentences).split()) < MIN_WORDS and fillers:
            sentences.append(fillers.pop())
        return sentences


def _finish(sentences: list[str]) -> str:
    out = []
    for sentence in sentences:
        parts = [p.strip() for p in sentence.split(". ")]
        out.extend(p[:1].upper() + p[1:] + "." for p in parts if p)
    return " ".join(out)


def _choose_mentions(
    attrs: Mapping[str, str], rng: random.Random, required: set[str], keep: float
) -> set[str]:
    visible = visible_attributes(attrs)
    need = math.ceil(MIN_FRACTION * len(visible))
    chosen = {name for name in visible if name in _CORE or name in required or rng.random() < keep}
    optional = [name for name in visible if name not in chosen]
    rng.shuffle(optional)
    while len(chosen) < need and optional:
        chosen.add(optional.pop())
    for colour, owner in _NEEDS.items():
        if colour in chosen:
            chosen.add(owner)
    return chosen


def write_caption(
    attrs: Mapping[str, str], rng: random.Random, viewpoint: str = "front", required: set[str] | None = None
) -> tuple[str, set[str]]:
    """One caption and the attribute names it mentions (always including ``required``).

    Varied forms are tried first; when they keep coming out longer than MAX_WORDS (a person with
    every attribute visible, and many of them required), the fewest attributes allowed are said
    in the compact form, which always fits: every identity gets a caption."""
    required = set(required or ())
    keep = 0.75
    for _attempt in range(_ATTEMPTS):
        mention = _choose_mentions(attrs, rng, required, keep)
        writer = _Writer(attrs, mention, rng, viewpoint)
        sentences = writer.sentences()
        while rng.random() < 0.3 or len(_finish(sentences).split()) < MIN_WORDS:
            sentences.append(writer.filler())
            if len(sentences) > 8:
                break
        text = _finish(sentences)
        words = len(text.split())
        if MIN_WORDS <= words <= MAX_WORDS:
            return text, mention
        if words > MAX_WORDS:
            keep = max(0.0, keep - 0.15)
    return _compact_caption(attrs, rng, viewpoint, required)


def _compact_caption(attrs: Mapping[str, str], rng: random.Random, viewpoint: str, required: set[str],
                     det: str | None = None) -> tuple[str, set[str]]:
    """A caption in the compact form, mentioning the fewest attributes allowed (with ``required``)."""
    mention = _choose_mentions(attrs, rng, required, 0.0)
    writer = _Writer(attrs, mention, rng, viewpoint)
    return _finish(writer.compact(det or rng.choice(_DETERMINERS))), mention


def caption_pair(attrs: Mapping[str, str], rng: random.Random, viewpoint: str = "front") -> tuple[str, str]:
    """Two different captions of one image that together mention every visible attribute."""
    first, mentioned = write_caption(attrs, rng, viewpoint)
    missing = set(visible_attributes(attrs)) - mentioned
    for _ in range(20):
        second, _ = write_caption(attrs, rng, viewpoint, required=missing)
        if second != first:
            return first, second
    # Every try came out as the first caption: the compact form, opening with another determiner, cannot.
    det = next(d for d in _DETERMINERS if not first.lower().startswith(d + " "))
    return first, _compact_caption(attrs, rng, viewpoint, missing, det)[0]
