"""The prepared dataset's files, and reading them back with every field checked.

A prepared dataset is a folder with two files; raw images stay where they are:

``manifest.json``
    ``{"kind": "personsearch.prepared", "version": 1, "dataset": "CUHK-PEDES",
    "raw_root": "/abs/path/CUHK-PEDES", "relative": {"raw_root": "../CUHK-PEDES"}, "annotation": "reid_raw.json",
    "annotation_sha256": ..., "tokenizer": <ClipTokenizer.fingerprint>, "context_length": 77,
    "fingerprint": <16 hex: entries + tokens>, "tokens_sha256": ..., "num_train_ids": N,
    "splits": {"train": {"ids", "images", "captions"}, ...}, "truncated_captions": int,
    "problems": [{"entry", "path", "problem"}], "entries": [...]}``.
    Each entry is ``{"entry": index in the annotation list, "split", "id": the file's id,
    "pid": 0..N-1 for train (sorted file ids), the file's id otherwise, "image_id": 0.. within
    its split, "path": image path relative to raw_root, "captions": [...], "row": first row in
    tokens.npy}``; an entry's captions occupy consecutive rows, entries in annotation order.
    ``relative`` (optional; none in manifests written before it, or where the two folders share
    nothing but the filesystem root) holds ``raw_root`` relative to the manifest's folder: read
    first when that folder exists, so a prepared dataset moved or copied together with its raw
    images keeps working (``personsearch.io.recorded``); else the absolute ``raw_root``.
    An optional ``"label"`` is the name people are shown (``"synthetic (CUHK-PEDES layout)"`` for
    the synthetic set); ``"dataset"`` stays the format the raw files are read with.
``tokens.npy``
    int32 ``[num_captions, context_length]``: ``SOT + bpe + EOT`` rows, zero-padded, cut at the
    context length with EOT last.

``.personsearch.json``
    the owner marker (``personsearch.io``): only a folder carrying it (or, written before
    markers, a manifest of ours) is ever replaced.

``PreparedDataset.load`` checks every field it hands on, so a damaged or hand-edited file is
one message naming it, not a traceback in the middle of training. ``prepared`` writes the files.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.annotation_records import describe, int_fault, safe_relative, shown
from personsearch.data.annotation_stream import parse_int
from personsearch.errors import InputError
from personsearch.io.recorded import RELATIVE, recorded_path, relative_fault

KIND = "personsearch.prepared"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.npy"
SPLIT_ORDER = ("train", "val", "test")


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


def parse_manifest(path: Path) -> dict[str, Any]:
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
    return parse_manifest(manifest_path)


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
    if "label" in manifest:  # optional: what people are shown (the synthetic set), "dataset" is the format
        _check_field("field ", "label", manifest["label"], str)
    if not 2 <= manifest["context_length"] <= 4096:
        raise _Damaged(f"field 'context_length' is {manifest['context_length']}, expected 2..4096")
    if not Path(manifest["raw_root"]).is_absolute():
        raise _Damaged(f"field 'raw_root' {shown(manifest['raw_root'])!r} is not an absolute path")
    if RELATIVE in manifest:
        relative = manifest[RELATIVE]
        if not isinstance(relative, dict) or set(relative) - {"raw_root"}:
            raise _Damaged(f"field {RELATIVE!r} is {describe(relative)}, expected an object with 'raw_root' only")
        fault = relative_fault(relative.get("raw_root"))
        if fault:
            raise _Damaged(f"field {RELATIVE!r}['raw_root'] {fault}")
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
        if safe_relative(item["path"]) != item["path"]:
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


def dataset_label(dataset: str, raw_root: Path, by_content: bool = False) -> str:
    """The name to show for a dataset read as format ``dataset`` from ``raw_root``: the synthetic
    set's label when ``raw_root`` is a synthetic raw dataset of ours (its owner marker; also by
    content with ``by_content``), else ``dataset`` itself. The format stays what is recorded."""
    if dataset == "CUHK-PEDES":
        from personsearch.data.synthetic.attribute_files import SYNTHETIC_LABEL, is_synthetic_raw

        if is_synthetic_raw(raw_root, by_content=by_content):
            return SYNTHETIC_LABEL
    return dataset


class PreparedDataset:
    """A prepared dataset read back: splits, entries, token rows, identities, fingerprints."""

    def __init__(self, path: Path, manifest: dict[str, Any], tokens: np.ndarray, raw_root: Path) -> None:
        self.path = path
        self.manifest = manifest
        self.tokens = tokens
        self.raw_root = raw_root
        #: The name people are shown: the recorded label, else the format ("CUHK-PEDES"), except
        #: for a synthetic set prepared before labels were recorded (its raw folder says so).
        self.name: str = manifest.get("label") or dataset_label(manifest["dataset"], raw_root)
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
            raise InputError(f"prepared dataset not found: {path}",
                             hint="run `personsearch prepare` first; if it was moved, pass its new place (--data)")
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
        relative = (manifest.get(RELATIVE) or {}).get("raw_root")
        root = (Path(raw_root).expanduser().resolve() if raw_root is not None
                else recorded_path(manifest["raw_root"], relative, path))
        if not root.is_dir():  # every image would be skipped: say why once, before any training or evaluation
            recorded = "given" if raw_root is not None else "recorded by `prepare`"
            if raw_root is None and relative:
                recorded += (f" as {shown(relative)!r} relative to the prepared dataset; its absolute path "
                             f"{shown(manifest['raw_root'])} is not there either")
            raise InputError(
                f"the raw images of {path} are not where they were: {shown(str(root))} ({recorded}) is "
                f"{'not a folder' if root.exists() else 'missing'} (moved or renamed?)",
                hint="put the raw dataset back (or beside the prepared dataset as it was: the two may move "
                "together), or prepare it again from its new place: "
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
