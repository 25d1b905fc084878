"""Write a synthetic dataset in the CUHK-PEDES raw layout, and a preview sheet of it.

Layout (exactly what a CUHK-PEDES download contains, plus one file)::

    root/imgs/synthetic/p00001_s0.jpg ...
    root/reid_raw.json     [{"split", "captions", "file_path", "processed_tokens", "id"}, ...]
    root/attributes.json   {file_path: {attribute: value}}

Every random draw comes from a seed derived from (seed, purpose, identity, image), so the output
does not depend on how many worker processes render it: the same seed and size give byte-identical
files. The folder is built beside ``root`` and swapped in whole.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.synthetic.attributes import ATTRIBUTE_NAMES, sample_identities
from personsearch.data.synthetic.captioner import caption_pair, tokenize_caption
from personsearch.data.synthetic.renderer import encode_jpeg, render_person
from personsearch.errors import InputError
from personsearch.io import (
    OWNER_MARKER,
    atomic_directory,
    atomic_write_text,
    ensure_replaceable,
    ensure_writable,
    write_owner_marker,
)

logger = logging.getLogger(__name__)

MIN_IMAGES, MAX_IMAGES = 2, 6
#: Identities one drawing may hold (CUHK-PEDES has 13,003); the plan is built in memory first.
MAX_IDS = 100_000
IMAGE_FOLDER = "synthetic"

# Purposes, so that streams for different uses never coincide.
_IDENTITIES, _COUNT, _LOOK, _IMAGE, _CAPTION = range(5)


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for one purpose, stable across runs, platforms and process counts."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def split_sizes(ids: int) -> tuple[int, int, int]:
    """Identities per split (train, val, test): about 75% / 12.5% / 12.5%, at least one each."""
    held = max(1, round(ids / 8))
    return ids - 2 * held, held, held


def file_path_for(pid: int, index: int) -> str:
    return f"{IMAGE_FOLDER}/p{pid:05d}_s{index}.jpg"


_Job = tuple[int, int, dict[str, str], int, int, int]
_Result = tuple[int, int, bytes, str, str]


def _render_job(job: _Job) -> _Result:
    pid, index, attrs, look_seed, image_seed, caption_seed = job
    rendered = render_person(attrs, random.Random(image_seed), look_seed)
    first, second = caption_pair(attrs, random.Random(caption_seed), rendered.viewpoint)
    return pid, index, encode_jpeg(rendered.image, rendered.jpeg_quality), first, second


def _jobs(ids: int, seed: int) -> list[_Job]:
    identities = sample_identities(ids, random.Random(derive_seed(seed, _IDENTITIES)))
    jobs: list[_Job] = []
    for pid, attrs in enumerate(identities, start=1):
        count = random.Random(derive_seed(seed, _COUNT, pid)).randint(MIN_IMAGES, MAX_IMAGES)
        look = derive_seed(seed, _LOOK, pid)
        for index in range(count):
            jobs.append(
                (
                    pid,
                    index,
                    attrs,
                    look,
                    derive_seed(seed, _IMAGE, pid, index),
                    derive_seed(seed, _CAPTION, pid, index),
                )
            )
    return jobs


def _pool_context() -> Any:
    # fork starts fastest and needs no importable __main__; elsewhere spawn is the safe choice.
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _results(jobs: list[_Job], workers: int) -> Iterator[_Result]:
    if workers == 1 or len(jobs) < 8:
        yield from map(_render_job, jobs)
        return
    with _pool_context().Pool(processes=workers) as pool:
        yield from pool.imap(_render_job, jobs, chunksize=16)


SYNTHETIC_KIND = "synthetic-raw"  # the owner marker's kind (personsearch.io)
_WRITTEN = {"imgs", "reid_raw.json", "attributes.json"}
_IMAGE_NAME = re.compile(r"p\d{5}_s\d\.jpg")


def is_legacy_synthetic(root: Path) -> bool:
    """A synthetic raw dataset drawn before owner markers, recognised strictly by content (never
    by one file's name): exactly the files the writer writes, JPEGs named as it names them, and
    an ``attributes.json`` of the synthetic schema naming every image."""
    root = Path(root)
    folder = root / "imgs" / IMAGE_FOLDER
    try:
        if {child.name for child in root.iterdir()} != _WRITTEN:
            return False
        if [child.name for child in (root / "imgs").iterdir()] != [IMAGE_FOLDER]:
            return False
        if any(path.is_symlink() for path in (root / "imgs", folder, root / "reid_raw.json", root / "attributes.json")):
            return False
        images = set()
        for child in folder.iterdir():
            if child.is_symlink() or not child.is_file() or not _IMAGE_NAME.fullmatch(child.name):
                return False
            images.add(f"{IMAGE_FOLDER}/{child.name}")
        with open(root / "reid_raw.json", "rb") as handle:
            if not handle.read(64).lstrip().startswith(b"["):
                return False
        attributes_path = root / "attributes.json"
        if not images or attributes_path.stat().st_size > 1024 * len(images):  # ~250 bytes an image
            return False
        attributes = json.loads(attributes_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    names = set(ATTRIBUTE_NAMES)
    return (
        isinstance(attributes, dict)
        and set(attributes) == images
        and all(
            isinstance(values, dict) and set(values) == names and all(isinstance(v, str) for v in values.values())
            for values in attributes.values()
        )
    )


def check_raw_target(root: Path, option: str = "--root") -> None:
    """Refuse (exit 2), before drawing, a ``root`` that is not new, empty or a synthetic raw
    dataset this tool drew (marked, or recognised by content), or that cannot be written."""
    ensure_replaceable(root, SYNTHETIC_KIND, "synthetic raw dataset", option=option, legacy=is_legacy_synthetic,
                       written=lambda name: name in _WRITTEN or name in (OWNER_MARKER, ".lock"))
    ensure_writable(root, option)


def generate_raw_dataset(
    root: Path,
    ids: int = 800,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    noise: float = 0.0,
) -> None:
    """Draw ``ids`` identities (2-6 images each, 2 captions per image) into ``root``.

    ``noise`` > 0 gives that share of the **training** captions to images of other identities
    (RDE's noisy-correspondence protocol, ``personsearch.data.noise``) and records exactly which in
    ``noise.json``; validation and test stay clean.

    ``progress(done, total)`` is called after each image, for a progress bar. An existing
    synthetic dataset at ``root`` (marked, see ``personsearch.io``) is replaced whole; any
    other non-empty folder is refused before anything is drawn.
    """
    root = Path(root)
    if isinstance(ids, bool) or not isinstance(ids, int) or ids < 3:
        raise InputError(f"--ids {ids!r}: need at least 3 identities (one per split)", hint="e.g. --ids 20")
    if ids > MAX_IDS:
        raise InputError(f"--ids {ids:,}: at most {MAX_IDS:,} identities are drawn", hint="CUHK-PEDES has 13,003")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InputError(f"--seed {seed!r}: must be a non-negative integer")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers {workers!r}: must be at least 1")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 1:
        raise InputError(f"--noise {noise!r}: the share of noisy training captions must be in [0, 1)",
                         hint="e.g. --noise 0.2 (RDE's settings: 0.2, 0.5, 0.8)")
    check_raw_target(root)

    jobs = _jobs(ids, seed)
    attributes = {job[0]: job[2] for job in jobs}
    n_train, n_val, _ = split_sizes(ids)
    records: list[dict[str, Any]] = []
    attribute_map: dict[str, dict[str, str]] = {}
    logger.info("drawing %d images of %d identities with %d worker(s)", len(jobs), ids, workers)
    with atomic_directory(root) as tmp:
        (tmp / "imgs" / IMAGE_FOLDER).mkdir(parents=True)
        for done, (pid, index, jpeg, first, second) in enumerate(_results(jobs, workers), start=1):
            path = file_path_for(pid, index)
            (tmp / "imgs" / path).write_bytes(jpeg)
            split = "train" if pid <= n_train else "val" if pid <= n_train + n_val else "test"
            records.append(
                {
                    "split": split,
                    "captions": [first, second],
                    "file_path": path,
                    "processed_tokens": [tokenize_caption(first), tokenize_caption(second)],
                    "id": pid,
                }
            )
            attribute_map[path] = {name: attributes[pid][name] for name in ATTRIBUTE_NAMES}
            if progress is not None:
                progress(done, len(jobs))
        if noise > 0:
            atomic_write_text(tmp / NOISE_FILE, json.dumps(_add_noise(records, noise, seed), indent=1) + "\n")
        atomic_write_text(tmp / "reid_raw.json", json.dumps(records) + "\n")
        atomic_write_text(tmp / "attributes.json", json.dumps(attribute_map, indent=1) + "\n")
        write_owner_marker(tmp, SYNTHETIC_KIND)
    logger.info("wrote %s", root)


#: What ``noise`` > 0 swapped: ``{"rate", "seed", "pairs", "noisy": [{"file_path", "caption", "id",
#: "from": {"file_path", "caption", "id"}}]}`` (a training pair and the pair whose caption it got).
NOISE_FILE = "noise.json"


def _add_noise(records: list[dict[str, Any]], rate: float, seed: int) -> dict[str, Any]:
    """Swap captions among a ``rate`` share of the training pairs in place; the record of what moved."""
    from personsearch.data.noise import swap_captions

    pairs = [(r, slot) for r, record in enumerate(records) if record["split"] == "train"
             for slot in range(len(record["captions"]))]
    swapped = swap_captions([records[r]["id"] for r, _ in pairs], rate, seed=seed + 7919)
    originals = [(records[r]["captions"][slot], records[r]["processed_tokens"][slot]) for r, slot in pairs]
    noisy = []
    for target, source in enumerate(swapped.source.tolist()):
        if source == target:
            continue
        (r, slot), (from_r, from_slot) = pairs[target], pairs[source]
        records[r]["captions"][slot], records[r]["processed_tokens"][slot] = originals[source]
        noisy.append({"file_path": records[r]["file_path"], "caption": slot, "id": records[r]["id"],
                      "from": {"file_path": records[from_r]["file_path"], "caption": from_slot,
                               "id": records[from_r]["id"]}})
    return {"rate": rate, "seed": seed, "pairs": len(pairs), "noisy": noisy}


def _read_records(raw_root: Path) -> list[Mapping[str, Any]]:
    from personsearch.data.annotation_records import safe_relative
    from personsearch.data.formats import iter_annotation_list

    path = Path(raw_root) / "reid_raw.json"
    if not path.is_file():
        raise InputError(f"{path} not found", hint="point at a raw dataset folder holding reid_raw.json")
    records = []
    for number, entry in enumerate(iter_annotation_list(path)):  # bounded memory, clear messages
        if not (
            isinstance(entry, dict)
            and type(entry.get("id")) is int
            and isinstance(entry.get("file_path"), str)
            and safe_relative(entry["file_path"]) is not None
            and "\x00" not in entry["file_path"]
            and isinstance(entry.get("captions"), list)
        ):
            raise InputError(
                f"{path}: entry {number} lacks an integer 'id', a relative 'file_path' or a 'captions' list"
            )
        records.append(entry)
    if not records:
        raise InputError(f"{path} must hold a non-empty JSON list of entries")
    return records


def write_preview(raw_root: Path, out_png: Path, seed: int = 0, rows: int = 6) -> None:
    """A contact sheet of ``rows`` sampled identities: their images, and one caption under them."""
    from personsearch.data.annotation_records import shown
    from personsearch.sheet import SheetRow, SheetTile, render_contact_sheet

    if rows < 1:
        raise InputError(f"preview rows {rows!r}: must be at least 1")
    ensure_writable(out_png, "--preview", folder=False)
    raw_root = Path(raw_root)
    by_id: dict[int, list[Mapping[str, Any]]] = {}
    for entry in _read_records(raw_root):
        by_id.setdefault(entry["id"], []).append(entry)
    chosen = sorted(random.Random(seed).sample(sorted(by_id), k=min(rows, len(by_id))))
    sheet_rows = []
    for pid in chosen:
        entries = by_id[pid]
        captions = [shown(c, 300) for c in entries[0]["captions"] if isinstance(c, str)]
        tiles = [SheetTile(raw_root / "imgs" / entry["file_path"]) for entry in entries]
        caption = f"id {pid}: {captions[0]}" if captions else f"id {pid}"
        sheet_rows.append(SheetRow(caption=caption, tiles=tiles))
    render_contact_sheet(sheet_rows, out_png, tile_size=(64, 192))
