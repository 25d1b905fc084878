"""Scoring a search of the synthetic set against what was drawn: its ``attributes.json`` read back,
a query parsed into attributes with the captioner's own vocabulary, whether an image has every
attribute a query names, and queries built from combinations a gallery actually holds.

    >>> parse_query("a man in a blue jacket with a black backpack")
    {'gender': 'male', 'upper_color': 'blue', 'upper_type': 'jacket', 'bag_color': 'black', 'bag': 'backpack'}

Reading ``attributes.json`` lives in ``attribute_files``. Attribute paths are relative to the raw
dataset folder (``imgs/synthetic/p00001_s0.jpg``), as a
prepared dataset's entries and an index exported from a prepared split record them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence

from personsearch.data.synthetic.attributes import (
    ABSENT_VALUES,
    ATTRIBUTE_NAMES,
    VERBALISATIONS,
    Attributes,
    words_for,
)

_NOUN_ATTRIBUTES = ("upper_type", "lower_type", "bag", "headwear", "item")
_MODIFIERS: dict[str, tuple[str, ...]] = {
    "upper_type": ("upper_color", "upper_pattern"),
    "lower_type": ("lower_color",),
    "bag": ("bag_color",),
    "headwear": ("headwear_color",),
    "item": (),
    "hair": ("hair_color", "hair_length"),
    "shoes": ("shoe_color",),
}
#: Nouns that own modifiers but name no attribute value themselves ("black hair", "a red bag").
_GENERIC_NOUNS: dict[str, str] = {
    "hair": "hair",
    "shoes": "shoes",
    "shoe": "shoes",
    "sneakers": "shoes",
    "trainers": "shoes",
    "boots": "shoes",
    "footwear": "shoes",
    "bag": "bag",
    "top": "upper_type",
}
#: Words the vocabulary lacks that mean one of its words.
_ALIASES: dict[str, str] = {
    "men": "man",
    "women": "woman",
    "gentlemen": "gentleman",
    "boy": "man",
    "tshirt": "t-shirt",
    "tee-shirt": "t-shirt",
    "cellphone": "phone",
    "hoodie": "sweater",
}
#: Words (and punctuation) after which a colour no longer waits for its garment.
_BREAKS = frozenset(
    {
        "with",
        "in",
        "wearing",
        "wears",
        "wore",
        "dressed",
        "carrying",
        "carries",
        "holding",
        "holds",
        "has",
        "have",
        "having",
        "is",
        "are",
        "who",
        "that",
        "while",
        "on",
        ",",
        ".",
        ";",
        ":",
        "!",
        "?",
    }
)
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*|[,.;:!?]")


def _phrase(words: str) -> tuple[str, ...]:
    return tuple(words.split())


def _build_vocabulary() -> tuple[dict[tuple[str, ...], list[tuple[str, str]]], int, frozenset[str]]:
    """phrase -> [(attribute, value)], the longest phrase's length, and every known single word.
    Generic nouns map to (owner, "") entries under the pseudo-attribute "noun:"."""
    table: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for name, values in VERBALISATIONS.items():
        for value, phrases in values.items():
            for words in phrases:
                table.setdefault(_phrase(words), []).append((name, value))
    for word, owner in _GENERIC_NOUNS.items():
        table.setdefault((word,), []).append(("noun:", owner))
    longest = max(len(phrase) for phrase in table)
    known = frozenset(word for phrase in table for word in phrase) | frozenset(_ALIASES) | _BREAKS
    return table, longest, known


_VOCABULARY, _LONGEST, _KNOWN = _build_vocabulary()
_MODIFIER_ATTRIBUTES = frozenset(name for names in _MODIFIERS.values() for name in names)


def _singular(word: str) -> str:
    """``word`` as the vocabulary knows it: itself, an alias, or a plural made singular."""
    if word in _ALIASES:
        return _ALIASES[word]
    if word in _KNOWN:
        return word
    forms = []
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if word.endswith("es"):
        forms.append(word[:-2])
    if word.endswith("s"):
        forms.append(word[:-1])
    for form in forms:
        if form in _ALIASES:
            return _ALIASES[form]
        if form in _KNOWN:
            return form
    return word


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("'s ", " ").replace("\u2010", "-")
    return [_singular(token) for token in _TOKEN.findall(text)]


def _value_of(attribute: str, phrase: tuple[str, ...]) -> str | None:
    for name, value in _VOCABULARY.get(phrase, ()):
        if name == attribute:
            return value
    return None


def parse_query(text: str) -> Attributes:
    """The attributes a query names, in the synthetic set's vocabulary: attribute name -> value.

    Articles, plurals, word order and words it does not know are ignored; a colour (pattern,
    hair length) binds to the garment, bag or hair it precedes ("a woman in a red coat with a
    black handbag"), and is dropped when nothing it fits follows before the next "with", "in",
    "wearing"... or punctuation. The first mention of an attribute wins. A word for a bag or a
    top without a kind ("a black bag") names only its colour; the image must then carry a bag of
    that colour (an image without one has bag colour "none")."""
    tokens = _tokens(text)
    named: Attributes = {}
    pending: list[tuple[str, ...]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in _BREAKS:
            pending.clear()
            i += 1
            continue
        phrase: tuple[str, ...] = ()
        for size in range(min(_LONGEST, len(tokens) - i), 0, -1):
            if tuple(tokens[i : i + size]) in _VOCABULARY:
                phrase = tuple(tokens[i : i + size])
                break
        if not phrase:
            i += 1  # an unknown word: ignored, a waiting colour keeps waiting
            continue
        i += len(phrase)
        meanings = _VOCABULARY[phrase]
        owner = next((name for name, _ in meanings if name in _NOUN_ATTRIBUTES), None)
        if owner is not None:
            named.setdefault(owner, _value_of(owner, phrase) or "")
        else:
            owner = next((value for name, value in meanings if name == "noun:"), None)
        if owner is not None:
            for waiting in pending:
                for attribute in _MODIFIERS[owner]:
                    value = _value_of(attribute, waiting)
                    if value is not None:
                        named.setdefault(attribute, value)
            pending.clear()
            continue
        gender = _value_of("gender", phrase)
        if gender is not None:
            named.setdefault("gender", gender)
        elif any(name in _MODIFIER_ATTRIBUTES for name, _ in meanings):
            pending.append(phrase)
    return {name: named[name] for name in ATTRIBUTE_NAMES if named.get(name)}


def matches(query_attrs: Mapping[str, str], image_attrs: Mapping[str, str] | None) -> bool:
    """Whether the image has every attribute the query names (True for a query naming none; False
    for an image whose attributes are unknown, ``None``)."""
    if image_attrs is None:
        return False
    return all(image_attrs.get(name) == value for name, value in query_attrs.items())


def matching_in_top_k(query_attrs: Mapping[str, str], ranked: Sequence[Mapping[str, str] | None], k: int = 10) -> int:
    """How many of the first ``k`` ranked images (their attributes, best first; ``None`` for an
    image of unknown attributes) have every attribute the query names."""
    return sum(matches(query_attrs, attrs) for attrs in list(ranked)[: max(0, k)])


def precision_at_k(query_attrs: Mapping[str, str], ranked: Sequence[Mapping[str, str] | None], k: int = 10) -> float:
    """``matching_in_top_k / k`` (a list shorter than ``k`` counts its missing places as misses)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    return matching_in_top_k(query_attrs, ranked, k) / k


# ---------------------------------------------------------------- queries from a gallery

#: The attributes a built query may name, in the order they are said.
QUERY_ATTRIBUTES = (
    "gender",
    "upper_color",
    "upper_pattern",
    "upper_type",
    "lower_color",
    "lower_type",
    "bag_color",
    "bag",
    "headwear_color",
    "headwear",
    "item",
)
_PLURAL_GARMENTS = frozenset({"pants", "jeans", "shorts"})


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _noun_phrase(color: str | None, pattern: str | None, thing: str, plural: bool = False) -> str:
    words = " ".join(word for word in (color, pattern, thing) if word)
    return words if plural else f"{_article(words)} {words}"


def phrase_query(attrs: Mapping[str, str]) -> str:
    """A query in the demo's words for ``attrs`` ("a woman in a red coat", "a man in a blue jacket
    with a black backpack"), which ``parse_query`` reads back as ``attrs``. It names the
    attributes of ``QUERY_ATTRIBUTES``; any other is a ValueError, and so is a colour without its
    garment or bag."""
    other = set(attrs) - set(QUERY_ATTRIBUTES)
    if other:
        raise ValueError(f"phrase_query cannot say {', '.join(sorted(other))}")

    def say(name: str) -> str | None:
        value = attrs.get(name)
        if value is None or value in ABSENT_VALUES and name != "upper_pattern":
            return None
        words = words_for(name, value)
        if not words:
            raise ValueError(f"{name}={value!r} is not a value of the synthetic set")
        return words[0]

    for color, thing in (
        ("upper_color", "upper_type"),
        ("lower_color", "lower_type"),
        ("bag_color", "bag"),
        ("headwear_color", "headwear"),
    ):
        if say(color) and not say(thing):
            raise ValueError(f"{color} needs {thing}")
    subject = say("gender") or "person"
    text = _article(subject) + " " + subject
    worn = []
    if say("upper_type"):
        worn.append(_noun_phrase(say("upper_color"), say("upper_pattern"), say("upper_type")))  # type: ignore[arg-type]
    if say("lower_type"):
        lower = say("lower_type")
        worn.append(_noun_phrase(say("lower_color"), None, lower, plural=lower in _PLURAL_GARMENTS))  # type: ignore[arg-type]
    if say("headwear"):
        worn.append(_noun_phrase(say("headwear_color"), None, say("headwear")))  # type: ignore[arg-type]
    if worn:
        text += " in " + " and ".join(worn)
    carried = []
    if say("bag"):
        carried.append(_noun_phrase(say("bag_color"), None, say("bag")))  # type: ignore[arg-type]
    if say("item"):
        carried.append(_noun_phrase(None, None, say("item")))  # type: ignore[arg-type]
    if carried:
        text += " with " + " and ".join(carried)
    return text


def query_combinations(attrs: Mapping[str, str]) -> list[Attributes]:
    """The queries one image answers: gender + upper garment colour and type, alone, with the
    lower garment (colour and type) and with the bag (colour and kind) where the image has them."""
    if any(attrs.get(name, "none") in ABSENT_VALUES for name in ("gender", "upper_color", "upper_type")):
        return []
    base = {name: attrs[name] for name in ("gender", "upper_color", "upper_type")}
    found = [base]
    if attrs.get("lower_type", "none") not in ABSENT_VALUES and attrs.get("lower_color", "none") not in ABSENT_VALUES:
        found.append({**base, "lower_color": attrs["lower_color"], "lower_type": attrs["lower_type"]})
    if attrs.get("bag", "none") not in ABSENT_VALUES and attrs.get("bag_color", "none") not in ABSENT_VALUES:
        found.append({**base, "bag_color": attrs["bag_color"], "bag": attrs["bag"]})
    return found


def queries_from_gallery(
    attributes_by_path: Mapping[str, Mapping[str, str]], paths: Iterable[str], count: int, seed: int = 0,
    min_holders: int = 1,
) -> list[tuple[str, Attributes]]:
    """``count`` distinct queries (text, the attributes it names) built from attribute combinations
    that at least ``min_holders`` of the images ``paths`` have (keys of ``attributes_by_path``;
    paths without attributes are passed over), so every query has that many correct answers in
    that gallery (10: all of a top 10 can be right).

    Each names gender + upper garment colour and type, some also the lower garment or the bag,
    phrased as ``phrase_query`` does. Fewer come back when the gallery holds fewer combinations;
    the choice depends only on the combinations and ``seed``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    if isinstance(min_holders, bool) or not isinstance(min_holders, int) or min_holders < 1:
        raise ValueError(f"min_holders must be a positive integer, got {min_holders!r}")
    holders: dict[tuple[tuple[str, str], ...], int] = {}
    for path in paths:
        attrs = attributes_by_path.get(path)
        if attrs is None:
            continue
        for combination in query_combinations(attrs):
            key = tuple((name, combination[name]) for name in QUERY_ATTRIBUTES if name in combination)
            holders[key] = holders.get(key, 0) + 1
    candidates = sorted(key for key, held in holders.items() if held >= min_holders)
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    return [(phrase_query(dict(items)), dict(items)) for items in chosen]


__all__ = [
    "QUERY_ATTRIBUTES",
    "matches",
    "matching_in_top_k",
    "parse_query",
    "phrase_query",
    "precision_at_k",
    "queries_from_gallery",
    "query_combinations",
]
