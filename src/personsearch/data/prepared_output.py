"""Where a prepared dataset may be written, and writing it there without ever half-replacing it.

The output is never inside the raw dataset, and holds it only in the synthetic layout (a raw
dataset drawn by ``prepare synthetic`` under ``out/raw``). Only a folder carrying our owner marker
(``personsearch.io``; or, written before markers, a manifest of ours) is ever replaced. The files
go into a fresh folder swapped in whole or, when the output folder also holds other things, file
by file with the manifest last; the manifest's ``tokens_sha256`` ties the two.
"""

from __future__ import annotations

import re
from pathlib import Path

from personsearch.data.annotation_records import shown
from personsearch.data.prepared_dataset import KIND, MANIFEST, TOKENS, VERSION, parse_manifest
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

OWNER_KIND = "prepared-dataset"  # the owner marker's kind (personsearch.io)
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
        manifest = parse_manifest(path)
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


def write_prepared(out: Path, raw: Path, files: dict[str, bytes]) -> None:
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
