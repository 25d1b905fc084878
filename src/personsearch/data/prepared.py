"""Prepare: a raw benchmark dataset validated, tokenized and written as a prepared dataset.

``prepare_dataset`` reads the annotations (``formats``), drops what is unusable with one problem
per defect, tokenizes the captions and writes ``manifest.json`` and ``tokens.npy`` (their layout
and ``PreparedDataset``, which reads them back: ``prepared_dataset``). Where the output may go
and how it is written atomically is ``prepared_output``; the output folder is checked before the
long work, so a refusal comes first. The files are deterministic: same input, same bytes.

The names of those modules are importable from here too, as they always were.
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
    shown,
)
from personsearch.data.prepared_dataset import (
    KIND,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    SPLIT_ORDER,
    TOKENS,
    VERSION,
    Entry,
    PreparedDataset,
    dataset_label,
)
from personsearch.data.prepared_output import OWNER_KIND, check_output, is_legacy_prepared, write_prepared
from personsearch.errors import InputError
from personsearch.io import sha256_file
from personsearch.io.recorded import RELATIVE, relative_path

__all__ = [
    "KIND",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "OWNER_KIND",
    "SPLIT_ORDER",
    "TOKENS",
    "VERSION",
    "Entry",
    "PrepareReport",
    "PreparedDataset",
    "check_output",
    "dataset_label",
    "is_legacy_prepared",
    "prepare_dataset",
]

log = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    """What prepare found and did; ``to_json`` is the ``--json`` shape of the verb. ``dataset``
    is the name people are shown ("synthetic (CUHK-PEDES layout)" for the synthetic set)."""

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


def _build_entries(records: list[Record], splits: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[str], int]:
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
        raise InputError("an output folder is needed to write the prepared dataset", hint="pass --out DIR or --check")
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
    label = dataset_label(spec.name, folder, by_content=True)  # the synthetic set is not CUHK-PEDES
    report = PrepareReport(
        label,
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
    # The raw folder also relative to the manifest's (read first): the two moved together keep working.
    raw_relative = relative_path(folder, Path(out))
    manifest = {
        "kind": KIND,
        "version": VERSION,
        "dataset": spec.name,
        **({"label": label} if label != spec.name else {}),
        "raw_root": str(folder),
        **({RELATIVE: {"raw_root": raw_relative}} if raw_relative else {}),
        "annotation": annotation.name,
        "annotation_sha256": sha256_file(annotation),
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
    write_prepared(Path(out), folder, {TOKENS: tokens_blob, MANIFEST: manifest_blob})
    report.written = True
    log.info("prepared %s: %d images, %d captions -> %s", label, len(entries), len(captions), out)
    return report
