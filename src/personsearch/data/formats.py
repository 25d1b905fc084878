"""The three benchmark annotation formats, read by one reader driven by a small description.

CUHK-PEDES, ICFG-PEDES and RSTPReid all ship a JSON list of ``{split, id, captions, <path>}``
records and an ``imgs/`` folder; they differ only in the file name, the path key and the
splits, which is what ``FormatSpec`` says. ``read_annotations`` validates every record and every
image it names, and returns the usable records plus one problem per defect (entry index, path,
what is wrong), so one bad record never stops a dataset of 40,000.

The annotation file is read entry by entry (``iter_annotation_list``), never parsed whole: a
small file of junk (millions of ``{}`` or ``[]``) would otherwise become gigabytes of Python
objects. The limits below bound what one entry, one caption and the whole file may cost; real
datasets are far inside them (CUHK-PEDES: 20 MB, 34,054 entries of 2 captions of ~120 characters).
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
import reprlib
import stat
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from personsearch.errors import InputError
from personsearch.io import NotRegularFile, open_regular

MAX_ANNOTATION_BYTES = 1 << 30  # the file
MAX_ENTRY_CHARS = 1 << 20  # the JSON text of one entry
MAX_ENTRIES = 1_000_000  # entries in one file
MAX_PROBLEMS = 100_000  # unusable entries and captions before the file is refused as not a dataset
MAX_CAPTIONS = 100  # captions of one entry
MAX_CAPTION_CHARS = 2_000  # one caption; only its first 77 tokens are used anyway
MAX_WORD_CHARS = 100  # one run of letters (BPE cost grows with the square of a word's length)
MAX_PATH_CHARS = 1_024  # one image path
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


class BigInt:
    """An integer literal too long for Python's int parsing limit or a 64-bit id: kept as its
    digit count, so the entry is reported instead of the whole file failing."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def parse_int(text: str) -> int | BigInt:
    return int(text) if len(text) <= 20 else BigInt(text)  # 20 characters hold every int64


_DECODER = json.JSONDecoder(parse_int=parse_int)
_SPACE = re.compile(r"[ \t\n\r]*")
_READ_BYTES = 1 << 18
_LOOKAHEAD = MAX_ENTRY_CHARS + 64  # unread text kept ahead of an entry's start (or the rest of the file)
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8", "UTF-8"),
    (b"\xff\xfe", "utf-16-le", "UTF-16"),
    (b"\xfe\xff", "utf-16-be", "UTF-16"),
)
_NOT_A_LIST = {"{": "an object", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}
_NOT_A_LIST.update(dict.fromkeys("-0123456789", "a number"))


class _TextStream:
    """The file as text, decoded a block at a time: ``buf[pos:]`` is unread, and ``fill`` keeps
    at least ``_LOOKAHEAD`` characters of it (or the rest of the file) in memory, no more."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self.handle = handle
        head = handle.read(3)
        bom, encoding, self.label = next(
            (found for found in _BOMS if head.startswith(found[0])), (b"", "utf-8", "UTF-8")
        )
        handle.seek(len(bom))
        self.decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.offset = len(bom)  # bytes read so far
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line, self.column = 1, 0  # where buf[0] is: line (1-based), column (0-based)

    def fill(self) -> None:
        if self.eof or len(self.buf) - self.pos >= _LOOKAHEAD:
            return
        if self.pos:
            newlines = self.buf.count("\n", 0, self.pos)
            if newlines:
                self.line += newlines
                self.column = self.pos - self.buf.rfind("\n", 0, self.pos) - 1
            else:
                self.column += self.pos
            self.buf, self.pos = self.buf[self.pos :], 0
        parts, have = [self.buf], len(self.buf)
        while have < _LOOKAHEAD and not self.eof:
            block = self.handle.read(_READ_BYTES)
            self.eof = not block
            pending = self.decoder.getstate()[0]
            try:
                text = self.decoder.decode(block, final=self.eof)
            except UnicodeDecodeError as exc:
                data = pending + block
                shown = f"invalid byte 0x{data[exc.start]:02x}" if exc.start < len(data) else "incomplete character"
                raise InputError(
                    f"{self.path} is not {self.label} text: {shown} at offset {self.offset - len(pending) + exc.start}",
                    hint="re-save the annotation file as UTF-8",
                ) from None
            self.offset += len(block)
            parts.append(text)
            have += len(text)
        self.buf = "".join(parts)

    def where(self, index: int) -> tuple[int, int]:
        """(line, column), both 1-based, of ``buf[index]``."""
        newlines = self.buf.count("\n", 0, index)
        if newlines:
            return self.line + newlines, index - self.buf.rfind("\n", 0, index)
        return self.line, self.column + index + 1

    def next_char(self) -> str:
        """Skip whitespace; the next character, or '' at the end of the file."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self.fill()

    def malformed(self, index: int, message: str) -> InputError:
        line, column = self.where(index)
        return InputError(f"{self.path}: malformed JSON at line {line}, column {column}: {message}")

    def too_large(self, entry: int) -> InputError:
        line, _ = self.where(self.pos)
        return InputError(
            f"{self.path}: entry {entry} (line {line}) is over {MAX_ENTRY_CHARS >> 20} MiB of JSON; "
            "an annotation entry is a small record, so this is not an annotation file",
            hint="annotation files are read entry by entry to keep memory bounded; "
            "check that --root points at the right dataset",
        )

    def value(self, entry: int) -> Any:
        """Decode the JSON value at ``pos`` (``fill`` was called), at most ``MAX_ENTRY_CHARS`` long."""
        start = self.pos
        try:
            value, end = _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError as exc:
            truncated = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 16
            if not self.eof and truncated:  # runs past the look-ahead: longer than an entry may be
                raise self.too_large(entry) from None
            raise self.malformed(exc.pos, exc.msg) from None
        except RecursionError:
            line, _ = self.where(start)
            raise InputError(
                f"{self.path}: JSON nested too deeply to be an annotation list (entry {entry}, line {line})"
            ) from None
        if end - start > MAX_ENTRY_CHARS:
            raise self.too_large(entry)
        self.pos = end
        return value


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
        stream = _TextStream(path, handle)
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


# ------------------------------------------------------------------ validating entries


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
    relative = _safe_relative(raw_path)
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


_IMAGE_ENDINGS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}


def check_image(path: Path, base: Path, verify: bool = False) -> str | None:
    """Why ``path`` is not a usable image, or None. Cheap by default (header, size and, for JPEG
    and PNG, the end marker); ``verify`` decodes it fully. Paths resolving outside ``base``
    (symlinks included) are refused before any byte is read; the file is opened without
    blocking and only as a regular file, in a format training will decode (``IMAGE_FORMATS``)."""
    from PIL import Image

    from personsearch.io import IMAGE_FORMATS

    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return "image file not found" + _near_miss(path)
    except (OSError, RuntimeError) as exc:
        return f"image path cannot be resolved ({exc})"
    if not real.is_relative_to(base):
        return "image path resolves outside the image folder (symlink?); not read"
    try:
        handle = open_regular(real)  # a FIFO swapped in after the resolve is refused, not waited on
    except NotRegularFile:
        return "image path is not a regular file"
    except OSError as exc:
        return f"image file cannot be opened ({exc.strerror or exc})"
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return "image file is empty"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle, formats=IMAGE_FORMATS) as image:
                    width, height = image.size
                    fmt = image.format
                    if width <= 0 or height <= 0:
                        return "image has zero width or height"
                    if verify:
                        image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return "image is too large to decode safely (decompression-bomb guard)"
        except Image.UnidentifiedImageError:
            return f"not an image file (unrecognised format; read are {', '.join(IMAGE_FORMATS)})"
        except (OSError, SyntaxError, ValueError) as exc:
            return f"image cannot be decoded ({exc})"
        endings = _IMAGE_ENDINGS.get(fmt or "")
        if endings and not verify:
            handle.seek(max(0, size - 64))
            tail = handle.read()
            if not any(ending in tail for ending in endings):
                return f"{fmt} image is truncated (end marker missing)"
    return None


def _near_miss(path: Path) -> str:
    """For a missing image: the name of a file beside it that differs only in Unicode
    normalisation (NFC/NFD, e.g. copied from macOS), letter case or surrounding spaces."""
    try:
        info = os.stat(path.parent)
    except (OSError, ValueError):
        return ""
    found = _loose_names(str(path.parent), info.st_mtime_ns).get(_loose_name(path.name))
    if found is None:
        return ""
    return f"; a file named {shown(found)!r} is there (differs in case, spaces or Unicode form)"


@functools.lru_cache(maxsize=64)
def _loose_names(folder: str, mtime_ns: int) -> dict[str, str]:
    """Loose name -> real name of a folder's entries (cached per folder version; bounded)."""
    names: dict[str, str] = {}
    try:
        with os.scandir(folder) as listing:
            for count, child in enumerate(listing):
                if count >= 200_000:
                    break
                names.setdefault(_loose_name(child.name), child.name)
    except (OSError, ValueError):
        pass
    return names


def _loose_name(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()


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
        record = _validate_record(spec, index, item, problems)
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
        raise InputError(
            f"image folder not found: {image_root}", hint=f"{spec.name} keeps its images under imgs/"
        )
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
