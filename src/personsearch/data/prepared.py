"""The prepared dataset: what ``personsearch prepare`` writes and training and evaluation read.

A prepared dataset is a folder with two files; raw images stay where they are:

``manifest.json``
    ``{"kind": "personsearch.prepared", "version": 1, "dataset": "CUHK-PEDES",
    "raw_root": "/abs/path/CUHK-PEDES", "annotation": "reid_raw.json",
    "annotation_sha256": ..., "tokenizer": <ClipTokenizer.fingerprint>, "context_length": 77,
    "fingerprint": <16 hex: entries + tokens>, "tokens_sha256": ..., "num_train_ids": N,
    "splits": {"train": {"ids", "images", "captions"}, ...}, "truncated_captions": int,
    "problems": [{"entry", "path", "problem"}], "entries": [...]}``.
    Each entry is ``{"entry": index in the annotation list, "split", "id": the file's id,
    "pid": 0..N-1 for train (sorted file ids), the file's id otherwise, "image_id": 0.. within
    its split, "path": image path relative to raw_root, "captions": [...], "row": first row in
    tokens.npy}``; an entry's captions occupy consecutive rows, entries in annotation order.
``tokens.npy``
    int32 ``[num_captions, context_length]``: ``SOT + bpe + EOT`` rows, zero-padded, cut at the
    context length with EOT last.

``.personsearch.json``
    the owner marker (``personsearch.io``): only a folder carrying it (or, written before
    markers, a manifest of ours) is ever replaced.

The files are deterministic (same input, same bytes) and written atomically: into a fresh
folder swapped in whole, or, when the output folder also holds other things (a synthetic raw
dataset under ``raw/``), file by file with the manifest last; ``tokens_sha256`` ties the two.
The output is never inside the raw dataset, and holds it only in the synthetic layout.
``PreparedDataset.load`` checks every field it hands on, so a damaged file is one message.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.formats import (
    FormatSpec,
    Problem,
    Record,
    _safe_relative,
    default_workers,
    describe,
    int_fault,
    locate_annotation,
    parse_int,
    read_annotations,
    resolve_format,
    shown,
)
from personsearch.errors import InputError
from personsearch.io import (
    OWNER_MARKER,
    atomic_directory,
    atomic_write_bytes,
    ensure_replaceable,
    ensure_writable,
    owner_kind,
    write_owner_marker,
)

log = logging.getLogger(__name__)

KIND = "personsearch.prepared"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.npy"
SPLIT_ORDER = ("train", "val", "test")
OWNER_KIND = "prepared-dataset"  # the owner marker's kind (personsearch.io)


@dataclass
class PrepareReport:
    """What prepare found and did; ``to_json`` is the ``--json`` shape of the verb."""

    dataset: str
    root: Path
    out: Path | None
    splits: dict[str, dict[str, int]]
    problems: list[Problem]
    written: bool = False
    fingerprint: str | None = None
    truncated_captions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"splits": self.splits, "problems": [problem.to_dict() for problem in self.problems]}


@dataclass(frozen=True)
class Entry:
    """One image of a prepared split and where its captions' token rows are."""

    entry: int
    split: str
    id: int
    pid: int
    image_id: int
    path: str
    captions: tuple[str, ...]
    row: int

    @property
    def rows(self) -> range:
        return range(self.row, self.row + len(self.captions))


def _split_counts(records: list[Record], splits: tuple[str, ...]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        chosen = [record for record in records if record.split == split]
        counts[split] = {
            "ids": len({record.id for record in chosen}),
            "images": len(chosen),
            "captions": sum(len(record.captions) for record in chosen),
        }
    return counts


def _build_entries(
    records: list[Record], splits: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[str], int]:
    train_ids = sorted({record.id for record in records if record.split == "train"})
    remap = {pid: index for index, pid in enumerate(train_ids)}
    image_ids = dict.fromkeys(splits, 0)
    entries: list[dict[str, Any]] = []
    captions: list[str] = []
    for record in records:
        entries.append(
            {
                "entry": record.entry,
                "split": record.split,
                "id": record.id,
                "pid": remap[record.id] if record.split == "train" else record.id,
                "image_id": image_ids[record.split],
                "path": record.path,
                "captions": record.captions,
                "row": len(captions),
            }
        )
        image_ids[record.split] += 1
        captions.extend(record.captions)
    return entries, captions, len(train_ids)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ where the output may go

_LEGACY_HEAD = re.compile(rb'\A\s*\{\s*"kind"\s*:\s*"personsearch\.prepared"\s*,\s*"version"\s*:\s*(\d{1,6})\s*[,}]')
_OWN_FILES = {MANIFEST, TOKENS, OWNER_MARKER, ".lock"}


def is_legacy_prepared(folder: Path) -> bool:
    """A prepared dataset written before owner markers, recognised by content: its manifest
    parses, names our kind and a version this one reads."""
    path = Path(folder) / MANIFEST
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as handle:
            match = _LEGACY_HEAD.match(handle.read(512))
        if match is None or not 1 <= int(match.group(1)) <= VERSION:
            return False  # not worth parsing: the previous version always wrote kind and version first
        manifest = _parse_manifest(path)
    except (InputError, OSError):
        return False
    version = manifest.get("version")
    return manifest.get("kind") == KIND and type(version) is int and 1 <= version <= VERSION


def _is_synthetic_raw(folder: Path) -> bool:
    from personsearch.data.synthetic.writer import SYNTHETIC_KIND, is_legacy_synthetic

    return owner_kind(folder) == SYNTHETIC_KIND or is_legacy_synthetic(folder)


def check_output(out: str | Path, raw: str | Path, synthetic_raw: bool | None = None) -> str:
    """Refuse, before any long work, an output folder that would modify the raw dataset ``raw``
    or replace something this tool did not write; returns how to write it: ``"swap"`` (a new
    folder swapped in whole) or ``"files"`` (file by file, keeping the other contents).

    ``out`` may hold the raw dataset only in the synthetic layout (``out/raw``, drawn by
    ``prepare synthetic``); ``synthetic_raw`` says whether ``raw`` is such a folder (None: look).
    """
    out = Path(out).expanduser().absolute()
    real = out.resolve()  # symlinks followed: an --out that leads into the raw tree is caught
    raw = Path(raw).expanduser().resolve()
    try:
        str(raw).encode("utf-8")  # the manifest records it
    except UnicodeEncodeError:
        raise InputError(
            f"the raw dataset path {shown(str(raw))} is not valid UTF-8; the manifest cannot record it",
            hint="rename the folder (or a folder above it) to a UTF-8 name",
        ) from None
    if real == raw:
        raise InputError(
            f"--out {out} is the raw dataset folder; choose a separate folder for the prepared dataset",
            hint="the raw dataset is an input and is never modified; nothing was changed",
        )
    if real.is_relative_to(raw):
        raise InputError(
            f"--out {out} is inside the raw dataset folder {raw}; choose a folder outside it",
            hint="the raw dataset is an input and is never modified; nothing was changed",
        )
    if raw.is_relative_to(real):
        if synthetic_raw is None:
            synthetic_raw = _is_synthetic_raw(raw)
        top = raw.relative_to(real).parts[0]
        ours = owner_kind(real) == OWNER_KIND or is_legacy_prepared(real)
        children = {child.name for child in real.iterdir()} if real.is_dir() else set()
        if not synthetic_raw or not (ours or children <= {top}):
            raise InputError(
                f"--out {out} contains the raw dataset {raw}; writing there would mix the prepared "
                "dataset with its input (and replacing the folder would delete the raw data)",
                hint="choose a folder outside the raw dataset; nothing was changed",
            )
        ensure_writable(real)
        return "files"
    existing = ensure_replaceable(out, OWNER_KIND, "prepared dataset", legacy=is_legacy_prepared)
    ensure_writable(out)
    if existing and {child.name for child in out.iterdir()} - _OWN_FILES:
        return "files"  # ours, but it also holds other things (a synthetic raw/, notes): keep them
    return "swap"


def _write(out: Path, raw: Path, files: dict[str, bytes]) -> None:
    """Swap in a whole new folder, or write file by file with the manifest last (see
    ``check_output``, asked again here: the folder may have changed during the long work)."""
    out = out.expanduser().absolute()
    if check_output(out, raw) == "swap":
        with atomic_directory(out) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            write_owner_marker(tmp, OWNER_KIND)
        return
    folder = out.resolve()
    for name, data in files.items():
        if name != MANIFEST:
            atomic_write_bytes(folder / name, data)
    write_owner_marker(folder, OWNER_KIND)
    atomic_write_bytes(folder / MANIFEST, files[MANIFEST])


# ------------------------------------------------------------------ prepare


def _drop_wordless(
    records: list[Record], lengths: list[int], problems: list[Problem]
) -> tuple[list[Record], np.ndarray]:
    """Captions that tokenize to nothing (``&nbsp;``, characters the cleaning removes) are empty
    captions: reported like them. Returns the records left and the token rows they keep."""
    kept: list[Record] = []
    rows: list[int] = []
    row = 0
    for record in records:
        captions = []
        for number, caption in enumerate(record.captions):
            if lengths[row] > 2:  # more than SOT + EOT
                captions.append(caption)
                rows.append(row)
            else:
                problems.append(Problem(record.entry, shown(record.source), f"caption {number} is empty (no words)"))
            row += 1
        if captions:
            record.captions = captions
            kept.append(record)
        elif record.captions:
            problems.append(Problem(record.entry, shown(record.source), "no usable caption; entry skipped"))
    problems.sort(key=lambda problem: problem.entry)
    return kept, np.asarray(rows, dtype=np.int64)


def _refuse_problems(problems: list[Problem], annotation: Path) -> None:
    first = problems[0]
    raise InputError(
        f"{len(problems)} problem(s) in {annotation}; "
        f"first: entry {first.entry} ({first.path or 'no path'}): {first.problem}",
        hint="fix the entries, or drop --strict to skip them",
    )


def prepare_dataset(
    name: str | FormatSpec,
    root: str | Path,
    out: str | Path | None = None,
    strict: bool = False,
    verify: bool = False,
    workers: int | None = None,
    check_only: bool = False,
    context_length: int = 77,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Validate a raw benchmark dataset and write its prepared form to ``out``.

    Problems (bad records, unusable images, empty captions) are reported and their entries
    skipped; ``strict`` turns any problem into an InputError; ``check_only`` writes nothing.
    ``out`` is checked first (never inside the raw dataset, never a folder this tool did not
    write), so a refusal comes before the long work.
    """
    from personsearch.text import default_tokenizer

    spec = name if isinstance(name, FormatSpec) else resolve_format(name)
    folder, annotation = locate_annotation(spec, root)
    if out is None and not check_only:
        raise InputError(
            "an output folder is needed to write the prepared dataset", hint="pass --out DIR or --check"
        )
    if not check_only:
        check_output(Path(out), folder)
    records, problems = read_annotations(
        spec, folder, annotation, verify=verify, workers=workers or default_workers(), progress=progress
    )
    if strict and problems:
        _refuse_problems(problems, annotation)
    tokenizer = default_tokenizer()
    lengths: list[int] = []
    tokens = tokenizer.token_matrix(
        [caption for record in records for caption in record.captions],
        context_length=context_length,
        truncate=True,
        dtype=np.int32,
        full_lengths=lengths,
    )
    if any(length <= 2 for length in lengths):
        records, rows = _drop_wordless(records, lengths, problems)
        tokens, lengths = tokens[rows], [lengths[row] for row in rows.tolist()]
        if strict:
            _refuse_problems(problems, annotation)
    report = PrepareReport(
        spec.name,
        folder,
        Path(out) if out is not None else None,
        _split_counts(records, spec.splits),
        problems,
    )
    if not records:
        head = problems[0] if problems else None
        first = f"; first: entry {head.entry} ({head.path or 'no path'}): {head.problem}" if head else ""
        hint = "fix the entries the problems name (`prepare --check --json` lists them all)"
        if head and head.problem.startswith("image file not found"):
            hint = f"image paths in the annotation are relative to {folder / spec.image_dir}; check --root and them"
        raise InputError(
            f"{annotation}: no usable entries ({len(problems)} problem(s)){first}; nothing to prepare", hint=hint
        )
    if not any(record.split == "train" for record in records):
        log.warning("%s has no usable training entries", annotation)
    entries, captions, num_train_ids = _build_entries(records, spec.splits)
    report.truncated_captions = sum(length > context_length for length in lengths)
    tokens_blob = _npy_bytes(tokens)
    tokens_sha = hashlib.sha256(tokens_blob).hexdigest()
    content = hashlib.sha256(tokens_blob)
    content.update(json.dumps([spec.name, entries], sort_keys=True).encode())
    report.fingerprint = content.hexdigest()[:16]
    if check_only:
        return report
    manifest = {
        "kind": KIND,
        "version": VERSION,
        "dataset": spec.name,
        "raw_root": str(folder),
        "annotation": annotation.name,
        "annotation_sha256": _sha256_file(annotation),
        "tokenizer": tokenizer.fingerprint,
        "context_length": context_length,
        "fingerprint": report.fingerprint,
        "tokens_sha256": tokens_sha,
        "num_train_ids": num_train_ids,
        "splits": report.splits,
        "truncated_captions": report.truncated_captions,
        "problems": [problem.to_dict() for problem in problems],
        "entries": entries,
    }
    # Every string in it was checked to be valid Unicode (captions, paths) or made printable
    # (problem paths), so encoding cannot fail on a lone surrogate.
    manifest_blob = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    _write(Path(out), folder, {TOKENS: tokens_blob, MANIFEST: manifest_blob})
    report.written = True
    log.info("prepared %s: %d images, %d captions -> %s", spec.name, len(entries), len(captions), out)
    return report


# ------------------------------------------------------------------ reading it back

MAX_MANIFEST_BYTES = 1 << 30
_REQUIRED = {
    "dataset": str,
    "raw_root": str,
    "tokenizer": str,
    "fingerprint": str,
    "tokens_sha256": str,
    "context_length": int,
    "num_train_ids": int,
    "splits": dict,
    "problems": list,
    "entries": list,
}
_ENTRY_FIELDS = {
    "entry": int,
    "split": str,
    "id": int,
    "pid": int,
    "image_id": int,
    "path": str,
    "captions": list,
    "row": int,
}


class _Damaged(Exception):
    """One defect of a prepared dataset's files (turned into the InputError ``_damaged`` makes)."""


def _damaged(file: Path, detail: str) -> InputError:
    return InputError(
        f"this prepared dataset is damaged: {file}: {detail}; re-run `personsearch prepare`",
        hint=f"prepare writes it afresh from the raw dataset: personsearch prepare NAME --root RAW --out {file.parent}",
    )


def _parse_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict; InputError when it cannot be one (huge ints, NaN and the like
    are kept as values for ``_check_manifest`` to name)."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise _damaged(path, f"it is {size / 2**30:.1f} GiB, over the 1 GiB a manifest may be")
        text = path.read_bytes().decode("utf-8")
        manifest = json.loads(text, parse_int=parse_int)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"not UTF-8 text (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"unreadable JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise InputError(f"{path} is not a personsearch prepared-dataset manifest")
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(
            f"{path} is not a prepared dataset (no {MANIFEST})",
            hint="create one with `personsearch prepare NAME --root RAW --out DIR`",
        )
    return _parse_manifest(manifest_path)


def _text_fault(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    if any(0xD800 <= ord(char) <= 0xDFFF for char in value):
        return "is not valid Unicode text"
    return None


def _check_field(where: str, key: str, value: Any, kind: type) -> None:
    if kind is int:
        fault = int_fault(value)
    elif not isinstance(value, kind):
        fault = f"is {describe(value)}, expected {'text' if kind is str else kind.__name__}"
    else:
        fault = _text_fault(value) if kind is str else None
    if fault:
        raise _Damaged(f"{where}{key!r} {fault}")


def _check_manifest(manifest: dict[str, Any]) -> int:
    """Raise ``_Damaged`` naming the first field that is missing, of the wrong type or out of
    range; returns the number of token rows the entries need."""
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise _Damaged(f"it lacks {', '.join(missing)}")
    for key, kind in _REQUIRED.items():
        _check_field("field ", key, manifest[key], kind)
    if not 2 <= manifest["context_length"] <= 4096:
        raise _Damaged(f"field 'context_length' is {manifest['context_length']}, expected 2..4096")
    if not Path(manifest["raw_root"]).is_absolute():
        raise _Damaged(f"field 'raw_root' {shown(manifest['raw_root'])!r} is not an absolute path")
    for split, counts in manifest["splits"].items():
        if not isinstance(counts, dict):
            raise _Damaged(f"splits[{shown(split)!r}] is {describe(counts)}, expected an object")
        for key, value in counts.items():
            fault = int_fault(value)
            if fault or value < 0:
                raise _Damaged(f"splits[{shown(split)!r}][{shown(str(key))!r}] {fault or 'is negative'}")
    num_train_ids = manifest["num_train_ids"]
    if not 0 <= num_train_ids <= len(manifest["entries"]):
        raise _Damaged(f"field 'num_train_ids' is {num_train_ids}, outside 0..{len(manifest['entries'])}")
    rows = 0
    for number, item in enumerate(manifest["entries"]):
        where = f"entries[{number}] "
        if not isinstance(item, dict):
            raise _Damaged(f"{where}is {describe(item)}, expected an object")
        for key, kind in _ENTRY_FIELDS.items():
            if key not in item:
                raise _Damaged(f"{where}lacks {key!r}")
            _check_field(where, key, item[key], kind)
        if item["split"] not in SPLIT_ORDER:
            raise _Damaged(f"{where}'split' is {shown(item['split'])!r}, expected one of {', '.join(SPLIT_ORDER)}")
        if item["split"] == "train" and not 0 <= item["pid"] < num_train_ids:
            raise _Damaged(f"{where}'pid' is {item['pid']}, outside 0..{num_train_ids - 1} (the training identities)")
        if item["entry"] < 0 or item["image_id"] < 0:
            raise _Damaged(f"{where}has a negative 'entry' or 'image_id'")
        if _safe_relative(item["path"]) != item["path"]:
            raise _Damaged(f"{where}'path' {shown(item['path'])!r} is absolute or leaves the raw dataset folder")
        captions = item["captions"]
        if not captions:
            raise _Damaged(f"{where}has no captions")
        for index, caption in enumerate(captions):
            _check_field(where, f"captions[{index}]", caption, str)
        if item["row"] != rows:
            raise _Damaged(f"{where}'row' is {item['row']}, expected {rows} (rows follow the entries in order)")
        rows += len(captions)
    return rows


def _read_tokens(tokens_path: Path, manifest: dict[str, Any], rows: int, vocab_size: int) -> np.ndarray:
    """tokens.npy, checked against the manifest: hash, dtype, shape and id range."""
    context = manifest["context_length"]
    if not tokens_path.is_file():
        raise _damaged(tokens_path, "the file is missing")
    size = tokens_path.stat().st_size
    expected = rows * context * 4
    if not expected <= size <= expected + (1 << 16):  # the .npy header is at most a few hundred bytes
        need = f"{rows:,} rows of {context} int32 need {expected:,} bytes plus a header"
        raise _damaged(tokens_path, f"it is {size:,} bytes; {need} (interrupted write?)")
    blob = tokens_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest["tokens_sha256"]:
        raise _damaged(tokens_path, f"it does not match {MANIFEST} (interrupted write?)")
    try:
        tokens = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(tokens_path, f"not a readable .npy array ({exc})") from None
    if not isinstance(tokens, np.ndarray) or tokens.dtype != np.int32:
        raise _damaged(tokens_path, f"its dtype is {getattr(tokens, 'dtype', type(tokens).__name__)}, expected int32")
    if tokens.shape != (rows, context):
        raise _damaged(tokens_path, f"its shape is {tokens.shape}, expected ({rows}, {context})")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise _damaged(tokens_path, f"it holds token ids outside 0..{vocab_size - 1}")
    return tokens


class PreparedDataset:
    """A prepared dataset read back: splits, entries, token rows, identities, fingerprints."""

    def __init__(self, path: Path, manifest: dict[str, Any], tokens: np.ndarray, raw_root: Path) -> None:
        self.path = path
        self.manifest = manifest
        self.tokens = tokens
        self.raw_root = raw_root
        self.name: str = manifest["dataset"]
        self.fingerprint: str = manifest["fingerprint"]
        self.tokenizer_fingerprint: str = manifest["tokenizer"]
        self.context_length: int = manifest["context_length"]
        self.num_train_ids: int = manifest["num_train_ids"]
        self.statistics: dict[str, dict[str, int]] = manifest["splits"]
        self.problems: list[dict[str, Any]] = manifest["problems"]
        self._entries: dict[str, list[Entry]] = {}
        for item in manifest["entries"]:
            entry = Entry(
                item["entry"],
                item["split"],
                item["id"],
                item["pid"],
                item["image_id"],
                item["path"],
                tuple(item["captions"]),
                item["row"],
            )
            self._entries.setdefault(entry.split, []).append(entry)

    @classmethod
    def load(
        cls, path: str | Path, raw_root: str | Path | None = None, check_tokenizer: bool = True
    ) -> PreparedDataset:
        """Open ``path``; ``raw_root`` overrides the recorded image location (a moved dataset).

        Every field training, evaluation and export use is checked here, so a damaged or
        hand-edited dataset is one message naming the file, not a traceback later."""
        from personsearch.text import default_tokenizer

        path = Path(path).expanduser()
        if not path.is_dir():
            raise InputError(f"prepared dataset not found: {path}", hint="run `personsearch prepare` first")
        manifest = _read_manifest(path)
        version = manifest.get("version")
        if type(version) is not int:
            raise _damaged(path / MANIFEST, f"field 'version' is {describe(version)}, expected int")
        if version != VERSION:
            raise InputError(
                f"{path} was prepared by format version {version}; this version reads {VERSION}",
                hint="re-run `personsearch prepare`",
            )
        try:
            rows = _check_manifest(manifest)
        except _Damaged as exc:
            raise _damaged(path / MANIFEST, str(exc)) from None
        tokenizer = default_tokenizer()
        if check_tokenizer and manifest["tokenizer"] != tokenizer.fingerprint:
            raise InputError(
                f"{path} was prepared with another tokenizer ({shown(manifest['tokenizer'])}, this one is "
                f"{tokenizer.fingerprint})",
                hint="re-run `personsearch prepare` to tokenize the captions again",
            )
        tokens = _read_tokens(path / TOKENS, manifest, rows, tokenizer.vocab_size)
        root = Path(raw_root).expanduser().resolve() if raw_root is not None else Path(manifest["raw_root"])
        if not root.is_dir():  # every image would be skipped: say why once, before any training or evaluation
            recorded = "given" if raw_root is not None else "recorded by `prepare`"
            raise InputError(
                f"the raw images of {path} are not where they were: {shown(str(root))} ({recorded}) is "
                f"{'not a folder' if root.exists() else 'missing'} (moved or renamed?)",
                hint=f"put the raw dataset back, or prepare it again from its new place: "
                f"personsearch prepare {manifest['dataset']} --root NEW_PLACE --out {path}",
            )
        return cls(path, manifest, tokens, root)

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits that hold entries, in train, val, test order."""
        return tuple(split for split in SPLIT_ORDER if self._entries.get(split))

    def entries(self, split: str) -> list[Entry]:
        if split not in self._entries:
            raise InputError(
                f"{self.path} has no {split!r} split", hint=f"available: {', '.join(self.splits) or 'none'}"
            )
        return self._entries[split]

    def image_path(self, entry: Entry) -> Path:
        return self.raw_root / entry.path

    def caption_tokens(self, split: str) -> np.ndarray:
        """Token rows of every caption of ``split`` in entry order (int32 ``[Q, L]``)."""
        rows = [row for entry in self.entries(split) for row in entry.rows]
        return self.tokens[np.asarray(rows, dtype=np.int64)]

    def __repr__(self) -> str:
        return f"PreparedDataset({self.name}, {self.path}, splits={self.statistics})"
