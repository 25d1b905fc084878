"""The three benchmark annotation formats, read by one reader driven by a small description.

CUHK-PEDES, ICFG-PEDES and RSTPReid all ship a JSON list of ``{split, id, captions, <path>}``
records and an ``imgs/`` folder; they differ only in the file name, the path key and the
splits, which is what ``FormatSpec`` says. ``read_annotations`` validates every record and every
image it names, and returns the usable records plus one problem per defect (entry index, path,
what is wrong), so one bad record never stops a dataset of 40,000. Checking one entry is
``annotation_records``; checking one image is ``image_check``.

The annotation file is read entry by entry (``iter_annotation_list``, over the decoder in
``annotation_stream``), never parsed whole: a small file of junk (millions of ``{}`` or ``[]``)
would otherwise become gigabytes of Python objects. The limits (the file's here, one entry's and
one caption's beside the code that checks them) bound what reading may cost; real datasets are
far inside them (CUHK-PEDES: 20 MB, 34,054 entries of 2 captions of ~120 characters).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from personsearch.data.annotation_records import (
    INT64_MAX,
    INT64_MIN,
    MAX_CAPTION_CHARS,
    MAX_CAPTIONS,
    MAX_PATH_CHARS,
    MAX_WORD_CHARS,
    FormatSpec,
    Problem,
    Record,
    describe,
    int_fault,
    is_blank,
    safe_relative,
    shown,
    validate_record,
)
from personsearch.data.annotation_stream import MAX_ENTRY_CHARS, AnnotationText, BigInt, parse_int
from personsearch.data.image_check import check_image
from personsearch.errors import InputError
from personsearch.io import NotRegularFile, open_regular

__all__ = [
    "FORMATS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ANNOTATION_BYTES",
    "MAX_CAPTIONS",
    "MAX_CAPTION_CHARS",
    "MAX_ENTRIES",
    "MAX_ENTRY_CHARS",
    "MAX_PATH_CHARS",
    "MAX_PROBLEMS",
    "MAX_WORD_CHARS",
    "BigInt",
    "FormatSpec",
    "Problem",
    "Record",
    "check_image",
    "default_workers",
    "describe",
    "int_fault",
    "is_blank",
    "iter_annotation_list",
    "load_annotation_list",
    "locate_annotation",
    "parse_int",
    "read_annotations",
    "resolve_format",
    "safe_relative",
    "shown",
]

# Read here at call time (tests lower them); the per-entry limits live with what they limit.
MAX_ANNOTATION_BYTES = 1 << 30  # the file
MAX_ENTRIES = 1_000_000  # entries in one file
MAX_PROBLEMS = 100_000  # unusable entries and captions before the file is refused as not a dataset


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("CUHK-PEDES", "CUHK-PEDES", ("reid_raw.json",), "file_path", ("train", "val", "test")),
        FormatSpec("ICFG-PEDES", "ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", ("train", "test")),
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
    raise InputError(f"unknown dataset format {name!r}", hint=f"choose one of {', '.join(FORMATS)} (or synthetic)")


def locate_annotation(spec: FormatSpec, root: str | Path) -> tuple[Path, Path]:
    """(dataset folder, annotation file). ``root`` is the dataset folder itself or its parent."""
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"dataset root not found: {root}", hint=f"pass the folder holding {spec.annotation_files[0]}")
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a folder")
    for folder in (root, root / spec.folder):
        for name in spec.annotation_files:
            candidate = folder / name
            if candidate.is_file():
                return folder.resolve(), candidate.resolve()
            if os.path.lexists(candidate):  # there, but a folder, FIFO, device or broken link: say so
                raise InputError(
                    f"{spec.name} annotation file {candidate} is {_file_kind(candidate)}, not a regular file",
                    hint=f"{name} must be the JSON file of the dataset; replace it with the real file",
                )
    expected = " or ".join(str(root / name) for name in spec.annotation_files)
    raise InputError(
        f"{spec.name} annotation file not found: expected {expected}",
        hint=f"--root must be the {spec.name} folder (holding the JSON and imgs/) or its parent",
    )


def _file_kind(path: Path) -> str:
    """What a path that is not a regular file is, in words."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


# ------------------------------------------------------------------ reading the JSON entry by entry

_NOT_A_LIST = {"{": "an object", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}
_NOT_A_LIST.update(dict.fromkeys("-0123456789", "a number"))


def iter_annotation_list(path: Path) -> Iterator[Any]:
    """The entries of an annotation file's top-level JSON list, one at a time.

    Memory stays bounded by one entry (at most ``MAX_ENTRY_CHARS`` of JSON) and the look-ahead,
    whatever the file holds; a file that is not a list is refused at its first character.
    """
    path = Path(path)
    try:
        handle = open_regular(path)  # regular files only, never blocks (a FIFO, /dev/zero)
        size = os.fstat(handle.fileno()).st_size
    except NotRegularFile:
        raise InputError(f"{path} is {_file_kind(path)}, not a regular file; an annotation file is JSON") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read {path}: {reason}") from None
    if size > MAX_ANNOTATION_BYTES:
        handle.close()
        raise InputError(f"{path} is {size / 2**30:.1f} GiB; annotation files over 1 GiB are refused")
    with handle:
        stream = AnnotationText(path, handle)
        stream.fill()
        first = stream.next_char()
        if first != "[":
            if first in _NOT_A_LIST:
                raise InputError(f"{path}: expected a JSON list of annotation records, got {_NOT_A_LIST[first]}")
            raise stream.malformed(stream.pos, "Expecting value")
        stream.pos += 1
        if stream.next_char() == "]":
            stream.pos += 1
        else:
            entry = 0
            while True:
                if entry >= MAX_ENTRIES:
                    raise InputError(
                        f"{path} holds over {MAX_ENTRIES:,} entries; annotation files of more are refused",
                        hint="the largest benchmark (ICFG-PEDES) has 54,522",
                    )
                stream.fill()
                yield stream.value(entry)
                following = stream.next_char()
                if following == "]":
                    stream.pos += 1
                    break
                if following != ",":
                    raise stream.malformed(stream.pos, "Expecting ',' delimiter")
                stream.pos += 1
                stream.next_char()
                entry += 1
        if stream.next_char():
            raise stream.malformed(stream.pos, "Extra data")


def load_annotation_list(path: Path) -> list[Any]:
    """The whole list (for small files and tests; ``read_annotations`` streams instead)."""
    return list(iter_annotation_list(path))


# ------------------------------------------------------------------ the whole dataset: entries and images


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
    problems: list[Problem] = []
    records: list[Record] = []
    first_seen: dict[str, int] = {}
    for index, item in enumerate(iter_annotation_list(annotation)):
        record = validate_record(spec, index, item, problems)
        del item  # one entry's objects at a time
        if record is not None and record.path in first_seen:
            first = first_seen[record.path]
            problems.append(Problem(index, shown(record.source), f"duplicate image entry (first at entry {first})"))
        elif record is not None:
            first_seen[record.path] = index
            records.append(record)
        if len(problems) > MAX_PROBLEMS:
            first_problem = problems[0]
            raise InputError(
                f"{annotation}: over {MAX_PROBLEMS:,} problems by entry {index} (first: entry {first_problem.entry}: "
                f"{first_problem.problem}); this is not a usable {spec.name} annotation file",
                hint="check --root and the dataset name; `--check --json` on a smaller file lists every problem",
            )
    del first_seen

    image_root = folder / spec.image_dir
    if not image_root.is_dir():
        raise InputError(f"image folder not found: {image_root}", hint=f"{spec.name} keeps its images under imgs/")
    base = image_root.resolve()

    def check(record: Record) -> str | None:
        return check_image(folder / record.path, base, verify)

    kept: list[Record] = []
    batch = 256 * max(1, workers)  # futures in flight stay bounded, whatever the entry count
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            for done, (record, verdict) in enumerate(zip(chunk, pool.map(check, chunk), strict=True), start + 1):
                if verdict is None:
                    kept.append(record)
                else:
                    problems.append(Problem(record.entry, shown(record.source), verdict))
                if progress is not None:
                    progress(done, len(records))
    problems.sort(key=lambda problem: problem.entry)
    return kept, problems


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
