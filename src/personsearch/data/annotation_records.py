"""One annotation entry checked into a usable ``Record``, or the ``Problem`` that makes it unusable.

Every field is checked for type, range and safety (paths that climb out of the dataset folder,
lone surrogates, captions too long or too wordy to tokenize cheaply) so that one bad record is
one line in the report, never a stopped dataset. The text helpers here (``shown``,
``describe``, ``int_fault``) also word the prepared dataset's own checks.
"""

from __future__ import annotations

import re
import reprlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from personsearch.data.annotation_stream import BigInt


@dataclass(frozen=True)
class FormatSpec:
    """What distinguishes one benchmark's layout from another."""

    name: str
    folder: str
    annotation_files: tuple[str, ...]
    path_key: str
    splits: tuple[str, ...]
    image_dir: str = "imgs"


MAX_CAPTIONS = 100  # captions of one entry
MAX_CAPTION_CHARS = 2_000  # one caption; only its first 77 tokens are used anyway
MAX_WORD_CHARS = 100  # one run of letters (BPE cost grows with the square of a word's length)
MAX_PATH_CHARS = 1_024  # one image path
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class Problem:
    entry: int
    path: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "path": self.path, "problem": self.problem}


@dataclass(slots=True)
class Record:
    """One usable annotation entry: image path relative to the dataset folder, file id, captions."""

    entry: int
    split: str
    id: int
    path: str
    captions: list[str] = field(default_factory=list)
    source: str = ""  # the path as written in the annotation, for problem reports


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 40
_BRIEF.maxlist = _BRIEF.maxdict = 4
_BRIEF.maxlevel = 2
_SURROGATE = re.compile("[\ud800-\udfff]")
_VISIBLE_ASCII = re.compile(r"[!-~]")
_LONG_WORD = re.compile(rf"[^\W\d_]{{{MAX_WORD_CHARS + 1},}}")


def shown(text: str, limit: int = 200) -> str:
    """``text`` safe to print and to store as UTF-8 JSON: control characters and lone surrogates
    escaped, cut at ``limit`` characters."""
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return text + "..." if cut else text


def is_blank(text: str) -> bool:
    """True when ``text`` has no letter, digit, punctuation or symbol: empty, only whitespace,
    control or zero-width characters."""
    if text.isascii():
        return _VISIBLE_ASCII.search(text) is None
    return not any(unicodedata.category(char)[0] in "LNPS" for char in text)


def describe(value: Any) -> str:
    if isinstance(value, BigInt):
        return f"an integer of {value.digits:,} digits"
    return f"{type(value).__name__} {_BRIEF.repr(value)}"


def int_fault(value: Any) -> str | None:
    """Why ``value`` is not a usable 64-bit integer, or None (bool is not an integer here)."""
    if isinstance(value, BigInt):
        return f"is an integer of {value.digits:,} digits, outside the 64-bit range"
    if type(value) is not int:
        return f"is {describe(value)}, expected int"
    if not INT64_MIN <= value <= INT64_MAX:
        return f"is {value}, outside the 64-bit range"
    return None


def _path_fault(raw: str) -> str | None:
    if "\x00" in raw:
        return "image path contains a NUL character"
    if _SURROGATE.search(raw):
        return "image path is not valid Unicode text (lone surrogate)"
    if len(raw) > MAX_PATH_CHARS:
        return f"image path is {len(raw):,} characters long (at most {MAX_PATH_CHARS:,})"
    return None


def _caption_fault(caption: Any) -> str | None:
    if not isinstance(caption, str):
        return f"is {type(caption).__name__}, expected text"
    if _SURROGATE.search(caption):
        return "is not valid Unicode text (lone surrogate)"
    if len(caption) > MAX_CAPTION_CHARS:
        return f"is {len(caption):,} characters long; captions over {MAX_CAPTION_CHARS:,} characters are refused"
    if is_blank(caption):
        return "is empty"
    if _LONG_WORD.search(caption):
        return f"has a word of over {MAX_WORD_CHARS} letters"
    return None


def safe_relative(raw: str) -> str | None:
    """Normalised POSIX path, or None when it is absolute or climbs out with ``..``."""
    text = raw.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return None
    parts = [part for part in PurePosixPath(text).parts if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def validate_record(spec: FormatSpec, index: int, item: Any, problems: list[Problem]) -> Record | None:
    """Entry ``index`` as a Record, or None with its problems appended to ``problems``."""

    def bad(path: str, message: str) -> None:
        problems.append(Problem(index, shown(path), message))

    if not isinstance(item, dict):
        bad("", f"entry is {describe(item)}, expected an object")
        return None
    raw_path = item.get(spec.path_key)
    path_text = raw_path if isinstance(raw_path, str) else ""
    for key, kind in ((spec.path_key, str), ("split", str), ("id", int), ("captions", list)):
        if key not in item:
            bad(path_text, f"missing field {key!r}")
            return None
        value = item[key]
        fault = int_fault(value) if kind is int else None
        if kind is not int and not isinstance(value, kind):
            fault = f"is {describe(value)}, expected {kind.__name__}"
        if fault:
            bad(path_text, f"field {key!r} {fault}")
            return None
    split = item["split"].strip().lower()
    if split not in spec.splits:
        bad(path_text, f"unknown split {_BRIEF.repr(item['split'])}; {spec.name} has {', '.join(spec.splits)}")
        return None
    split = spec.splits[spec.splits.index(split)]  # one shared string per split
    fault = _path_fault(raw_path)
    if fault:
        bad(path_text, fault)
        return None
    relative = safe_relative(raw_path)
    if relative is None:
        bad(path_text, "image path is empty, absolute or leaves the dataset folder")
        return None
    if len(item["captions"]) > MAX_CAPTIONS:
        bad(path_text, f"entry has {len(item['captions']):,} captions; at most {MAX_CAPTIONS} are accepted")
        return None
    captions: list[str] = []
    for number, caption in enumerate(item["captions"]):
        fault = _caption_fault(caption)
        if fault:
            bad(path_text, f"caption {number} {fault}")
        else:
            captions.append(caption)
    if not captions:
        bad(path_text, "no usable caption; entry skipped")
        return None
    return Record(index, split, item["id"], f"{spec.image_dir}/{relative}", captions, raw_path)
