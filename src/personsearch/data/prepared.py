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

The files are deterministic (same input, same bytes) and written atomically: into a fresh
folder swapped in whole, or, when the output folder also holds other things (a synthetic raw
dataset under ``raw/``), file by file with the manifest last; ``tokens_sha256`` ties the two.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.formats import (
    FormatSpec,
    Problem,
    Record,
    default_workers,
    locate_annotation,
    read_annotations,
    resolve_format,
)
from personsearch.errors import InputError
from personsearch.io import atomic_directory, atomic_write_bytes

log = logging.getLogger(__name__)

KIND = "personsearch.prepared"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.npy"
SPLIT_ORDER = ("train", "val", "test")


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


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def _write(out: Path, raw_root: Path, files: dict[str, bytes]) -> None:
    """Swap in a whole new folder when ``out`` holds nothing else; otherwise write file by file
    with the manifest last, keeping the other contents. Never replaces a foreign folder."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    resolved = out.resolve()
    if resolved == raw_root:
        raise InputError(
            f"--out {out} is the raw dataset folder; choose a separate folder for the prepared dataset"
        )
    contents = {child.name for child in out.iterdir()} if out.is_dir() else set()
    ours = {MANIFEST, TOKENS, ".lock"}
    if not contents or (MANIFEST in contents and contents <= ours):
        if MANIFEST in contents:
            _read_manifest(out)  # refuse to replace a folder whose manifest is not ours
        with atomic_directory(out) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
        return
    if MANIFEST not in contents and not _is_within(raw_root, resolved):
        raise InputError(
            f"--out {out} is a non-empty folder that is not a prepared dataset; refusing to replace it",
            hint="choose a new or empty folder",
        )
    if MANIFEST in contents:
        _read_manifest(out)
    for name, data in files.items():
        if name != MANIFEST:
            atomic_write_bytes(out / name, data)
    atomic_write_bytes(out / MANIFEST, files[MANIFEST])


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
    """
    from personsearch.text import default_tokenizer

    spec = name if isinstance(name, FormatSpec) else resolve_format(name)
    folder, annotation = locate_annotation(spec, root)
    if out is None and not check_only:
        raise InputError(
            "an output folder is needed to write the prepared dataset", hint="pass --out DIR or --check"
        )
    records, problems = read_annotations(
        spec, folder, annotation, verify=verify, workers=workers or default_workers(), progress=progress
    )
    report = PrepareReport(
        spec.name,
        folder,
        Path(out) if out is not None else None,
        _split_counts(records, spec.splits),
        problems,
    )
    if strict and problems:
        first = problems[0]
        raise InputError(
            f"{len(problems)} problem(s) in {annotation}; "
            f"first: entry {first.entry} ({first.path or 'no path'}): {first.problem}",
            hint="fix the entries, or drop --strict to skip them",
        )
    if not records:
        raise InputError(f"{annotation}: no usable entries ({len(problems)} problem(s)); nothing to prepare")
    if not any(record.split == "train" for record in records):
        log.warning("%s has no usable training entries", annotation)
    entries, captions, num_train_ids = _build_entries(records, spec.splits)
    tokenizer = default_tokenizer()
    lengths: list[int] = []
    tokens = tokenizer.token_matrix(
        captions, context_length=context_length, truncate=True, dtype=np.int32, full_lengths=lengths
    )
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
    manifest_blob = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    _write(Path(out), folder, {TOKENS: tokens_blob, MANIFEST: manifest_blob})
    report.written = True
    log.info("prepared %s: %d images, %d captions -> %s", spec.name, len(entries), len(captions), out)
    return report


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(
            f"{path} is not a prepared dataset (no {MANIFEST})",
            hint="create one with `personsearch prepare NAME --root RAW --out DIR`",
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{manifest_path} is unreadable ({exc}); re-run `personsearch prepare`") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise InputError(f"{manifest_path} is not a personsearch prepared-dataset manifest")
    return manifest


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
        """Open ``path``; ``raw_root`` overrides the recorded image location (a moved dataset)."""
        from personsearch.text import default_tokenizer

        path = Path(path).expanduser()
        if not path.is_dir():
            raise InputError(f"prepared dataset not found: {path}", hint="run `personsearch prepare` first")
        manifest = _read_manifest(path)
        if manifest.get("version") != VERSION:
            raise InputError(
                f"{path} was prepared by format version {manifest.get('version')}; "
                f"this version reads {VERSION}",
                hint="re-run `personsearch prepare`",
            )
        missing = [
            key
            for key in (
                "dataset",
                "raw_root",
                "tokenizer",
                "fingerprint",
                "entries",
                "splits",
                "num_train_ids",
                "context_length",
                "problems",
                "tokens_sha256",
            )
            if key not in manifest
        ]
        if missing:
            raise InputError(f"{path / MANIFEST} lacks {', '.join(missing)}; re-run `personsearch prepare`")
        tokenizer = default_tokenizer()
        if check_tokenizer and manifest["tokenizer"] != tokenizer.fingerprint:
            raise InputError(
                f"{path} was prepared with another tokenizer ({manifest['tokenizer']}, this one is "
                f"{tokenizer.fingerprint})",
                hint="re-run `personsearch prepare` to tokenize the captions again",
            )
        tokens_path = path / TOKENS
        if not tokens_path.is_file():
            raise InputError(f"{tokens_path} is missing; re-run `personsearch prepare`")
        blob = tokens_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != manifest["tokens_sha256"]:
            raise InputError(f"{tokens_path} does not match {MANIFEST} (interrupted write?); re-run prepare")
        tokens = np.load(io.BytesIO(blob), allow_pickle=False)
        expected = sum(len(item["captions"]) for item in manifest["entries"])
        if tokens.ndim != 2 or tokens.shape != (expected, manifest["context_length"]):
            raise InputError(
                f"{tokens_path} has shape {tokens.shape}, expected ({expected}, "
                f"{manifest['context_length']}); re-run prepare"
            )
        root = Path(raw_root).expanduser().resolve() if raw_root is not None else Path(manifest["raw_root"])
        if not root.is_dir():
            log.warning("raw image folder %s of %s is missing; pass raw_root= if it moved", root, path)
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
