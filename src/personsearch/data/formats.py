"""The three benchmark annotation formats, read by one reader driven by a small description.

CUHK-PEDES, ICFG-PEDES and RSTPReid all ship a JSON list of ``{split, id, captions, <path>}``
records and an ``imgs/`` folder; they differ only in the file name, the path key and the
splits, which is what ``FormatSpec`` says. ``read_annotations`` validates every record and every
image it names, and returns the usable records plus one problem per defect (entry index, path,
what is wrong), so one bad record never stops a dataset of 40,000.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from personsearch.errors import InputError

MAX_ANNOTATION_BYTES = 1 << 30


@dataclass(frozen=True)
class FormatSpec:
    """What distinguishes one benchmark's layout from another."""

    name: str
    folder: str
    annotation_files: tuple[str, ...]
    path_key: str
    splits: tuple[str, ...]
    image_dir: str = "imgs"


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("CUHK-PEDES", "CUHK-PEDES", ("reid_raw.json",), "file_path", ("train", "val", "test")),
        FormatSpec(
            "ICFG-PEDES", "ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", ("train", "test")
        ),
        FormatSpec("RSTPReid", "RSTPReid", ("data_captions.json",), "img_path", ("train", "val", "test")),
    )
}


def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


def resolve_format(name: str) -> FormatSpec:
    """Format by name, case-insensitive, ``-``/``_`` optional (``cuhk_pedes``, ``rstpreid``)."""
    for spec in FORMATS.values():
        if _key(spec.name) == _key(name):
            return spec
    raise InputError(
        f"unknown dataset format {name!r}", hint=f"choose one of {', '.join(FORMATS)} (or synthetic)"
    )


def locate_annotation(spec: FormatSpec, root: str | Path) -> tuple[Path, Path]:
    """(dataset folder, annotation file). ``root`` is the dataset folder itself or its parent."""
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(
            f"dataset root not found: {root}", hint=f"pass the folder holding {spec.annotation_files[0]}"
        )
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a folder")
    for folder in (root, root / spec.folder):
        for name in spec.annotation_files:
            candidate = folder / name
            if candidate.is_file():
                return folder.resolve(), candidate.resolve()
    expected = " or ".join(str(root / name) for name in spec.annotation_files)
    raise InputError(
        f"{spec.name} annotation file not found: expected {expected}",
        hint=f"--root must be the {spec.name} folder (holding the JSON and imgs/) or its parent",
    )


def load_annotation_list(path: Path) -> list[Any]:
    """Parse the annotation JSON, with messages for the ways such files go wrong."""
    size = path.stat().st_size
    if size > MAX_ANNOTATION_BYTES:
        raise InputError(f"{path} is {size / 2**30:.1f} GiB; annotation files over 1 GiB are refused")
    data = path.read_bytes()
    boms = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
    encoding = next((name for bom, name in boms if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not {encoding.upper()} text: "
            f"invalid byte 0x{data[exc.start]:02x} at offset {exc.start}",
            hint="re-save the annotation file as UTF-8",
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be an annotation list") from None
    if not isinstance(value, list):
        raise InputError(f"{path}: expected a JSON list of annotation records, got {type(value).__name__}")
    return value


@dataclass
class Problem:
    entry: int
    path: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "path": self.path, "problem": self.problem}


@dataclass
class Record:
    """One usable annotation entry: image path relative to the dataset folder, file id, captions."""

    entry: int
    split: str
    id: int
    path: str
    captions: list[str] = field(default_factory=list)
    source: str = ""  # the path as written in the annotation, for problem reports


def _safe_relative(raw: str) -> str | None:
    """Normalised POSIX path, or None when it is absolute or climbs out with ``..``."""
    text = raw.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return None
    parts = [part for part in PurePosixPath(text).parts if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _validate_record(spec: FormatSpec, index: int, item: Any, problems: list[Problem]) -> Record | None:
    def bad(path: str, message: str) -> None:
        problems.append(Problem(index, path, message))

    if not isinstance(item, dict):
        bad("", f"entry is a {type(item).__name__}, expected an object")
        return None
    raw_path = item.get(spec.path_key)
    path_text = raw_path if isinstance(raw_path, str) else ""
    for key, kind in ((spec.path_key, str), ("split", str), ("id", int), ("captions", list)):
        if key not in item:
            bad(path_text, f"missing field {key!r}")
            return None
        value = item[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            bad(path_text, f"field {key!r} is {type(value).__name__} {value!r:.40}, expected {kind.__name__}")
            return None
    split = item["split"].strip().lower()
    if split not in spec.splits:
        bad(path_text, f"unknown split {item['split']!r}; {spec.name} has {', '.join(spec.splits)}")
        return None
    relative = _safe_relative(raw_path)
    if relative is None:
        bad(path_text, "image path is empty, absolute or leaves the dataset folder")
        return None
    captions: list[str] = []
    for number, caption in enumerate(item["captions"]):
        if not isinstance(caption, str):
            bad(path_text, f"caption {number} is {type(caption).__name__}, expected text")
        elif not caption.strip():
            bad(path_text, f"caption {number} is empty")
        else:
            captions.append(caption)
    if not captions:
        bad(path_text, "no usable caption; entry skipped")
        return None
    return Record(index, split, item["id"], f"{spec.image_dir}/{relative}", captions, raw_path)


_IMAGE_ENDINGS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}


def check_image(path: Path, base: Path, verify: bool = False) -> str | None:
    """Why ``path`` is not a usable image, or None. Cheap by default (header, size and, for JPEG
    and PNG, the end marker); ``verify`` decodes it fully. Paths resolving outside ``base``
    (symlinks included) are refused before any byte is read."""
    from PIL import Image

    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return "image file not found"
    except (OSError, RuntimeError) as exc:
        return f"image path cannot be resolved ({exc})"
    if not real.is_relative_to(base):
        return "image path resolves outside the image folder (symlink?); not read"
    if not real.is_file():
        return "image path is not a regular file"
    size = real.stat().st_size
    if size == 0:
        return "image file is empty"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(real) as image:
                width, height = image.size
                fmt = image.format
                if width <= 0 or height <= 0:
                    return "image has zero width or height"
                if verify:
                    image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image is too large to decode safely (decompression-bomb guard)"
    except Image.UnidentifiedImageError:
        return "not an image file (unrecognised format)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"image cannot be decoded ({exc})"
    endings = _IMAGE_ENDINGS.get(fmt or "")
    if endings and not verify:
        with open(real, "rb") as handle:
            handle.seek(max(0, size - 64))
            tail = handle.read()
        if not any(ending in tail for ending in endings):
            return f"{fmt} image is truncated (end marker missing)"
    return None


def read_annotations(
    spec: FormatSpec,
    folder: Path,
    annotation: Path,
    verify: bool = False,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Record], list[Problem]]:
    """Validate every record and its image; returns the usable records (annotation order) and
    the problems, sorted by entry index."""
    items = load_annotation_list(annotation)
    problems: list[Problem] = []
    records: list[Record] = []
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        record = _validate_record(spec, index, item, problems)
        if record is None:
            continue
        if record.path in first_seen:
            first = first_seen[record.path]
            problems.append(Problem(index, record.source, f"duplicate image entry (first at entry {first})"))
            continue
        first_seen[record.path] = index
        records.append(record)

    image_root = folder / spec.image_dir
    if not image_root.is_dir():
        raise InputError(
            f"image folder not found: {image_root}", hint=f"{spec.name} keeps its images under imgs/"
        )
    base = image_root.resolve()
    done = 0

    def check(record: Record) -> str | None:
        return check_image(folder / record.path, base, verify)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        verdicts = []
        for verdict in pool.map(check, records, chunksize=1):
            verdicts.append(verdict)
            done += 1
            if progress is not None:
                progress(done, len(records))
    kept: list[Record] = []
    for record, verdict in zip(records, verdicts, strict=True):
        if verdict is None:
            kept.append(record)
        else:
            problems.append(Problem(record.entry, record.source, verdict))
    problems.sort(key=lambda problem: problem.entry)
    return kept, problems


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
