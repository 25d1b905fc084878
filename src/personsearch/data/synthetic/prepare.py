"""``personsearch prepare synthetic`` as one call: draw the synthetic raw dataset, prepare it, and
optionally write a contact sheet of it; every refusal comes before the drawing (minutes at full
size)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from personsearch.errors import InputError


def prepare_synthetic(
    out: str | Path,
    *,
    root: str | Path | None = None,
    ids: int = 800,
    seed: int = 0,
    workers: int = 1,
    strict: bool = False,
    verify: bool = False,
    check_only: bool = False,
    preview: str | Path | None = None,
    drawing: Callable[[], AbstractContextManager[Any]] | None = None,
    noise: float = 0.0,
) -> Any:
    """Draw ``ids`` identities into ``root`` (default ``out/raw``), prepare them into ``out`` (read
    in the CUHK-PEDES layout, labelled ``SYNTHETIC_LABEL``: the report's ``dataset`` and the
    manifest's ``label``), and write ``preview`` (a PNG contact sheet) afterwards; returns the
    ``PrepareReport``. ``drawing`` wraps the drawing (a progress display). ``noise``: the share of
    training captions given to other identities' images (recorded in ``raw/noise.json``)."""
    from personsearch.data.prepared import check_output, prepare_dataset
    from personsearch.data.synthetic.writer import check_raw_target, generate_raw_dataset, write_preview

    out = Path(out)
    raw = Path(root) if root is not None else out / "raw"
    check_raw_target(raw, "--root" if root is not None else "--out (its raw/ folder)")
    if not check_only:
        check_output(out, raw, synthetic_raw=True)
    if preview is not None:
        check_preview(Path(preview), out, raw)
    made = _missing_folders(out, raw)  # removed again, while empty, when drawing or preparing fails
    try:
        with drawing() if drawing is not None else contextlib.nullcontext():
            generate_raw_dataset(raw, ids, seed, workers, noise=noise)
        report = prepare_dataset("CUHK-PEDES", raw, out, strict=strict, verify=verify, workers=workers,
                                 check_only=check_only)
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty: what was drawn stays
        raise
    if preview is not None:
        write_preview(raw, Path(preview), seed)  # after prepare: never inside what it swaps
    return report


def _missing_folders(*paths: Path) -> list[Path]:
    """The folders among ``paths`` and their parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    for path in paths:
        folder = path.absolute()
        while not os.path.lexists(folder) and folder.parent != folder:
            if folder not in missing:
                missing.append(folder)
            folder = folder.parent
    return sorted(missing, key=lambda folder: len(folder.parts), reverse=True)


def check_preview(preview: Path, out: Path, raw: Path) -> None:
    """Refuse, before drawing, a --preview that is a folder or would overwrite what this command
    writes (the prepared dataset, the raw dataset: e.g. ``--preview OUT/manifest.json``)."""
    from personsearch.io import ensure_writable

    ensure_writable(preview, "--preview", folder=False)
    target = preview.expanduser().resolve()
    if target.is_dir():
        raise InputError(f"--preview {preview} is a folder", hint="give the name of a PNG file to write")
    for option, folder in (("--out", out), ("--root", raw)):
        inside = folder.expanduser().resolve()
        if target == inside or target.is_relative_to(inside):
            raise InputError(
                f"--preview {preview} lies inside {option} {folder}, which this command writes",
                hint="write the contact sheet outside the dataset folders; nothing was changed",
            )
