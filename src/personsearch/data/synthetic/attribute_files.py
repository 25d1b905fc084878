"""The synthetic set's ``attributes.json`` (what was drawn in each image), found and read back
safely: a bounded regular file, every path relative and inside the raw folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from personsearch.data.synthetic.attributes import Attributes
from personsearch.errors import InputError

#: The file beside ``reid_raw.json`` that records every image's attributes (keys relative to ``imgs/``).
ATTRIBUTES_FILE = "attributes.json"
#: The folder the image paths of ``attributes.json`` (and of ``reid_raw.json``) are relative to.
IMAGE_DIR = "imgs"
#: What anything made from the synthetic set is called where people read it (the prepared
#: manifest still records the format it is read with, "CUHK-PEDES").
SYNTHETIC_LABEL = "synthetic (CUHK-PEDES layout)"
#: attributes.json larger than this is refused (about 400 bytes an image: 100,000 identities of
#: 6 images need ~250 MB).
MAX_ATTRIBUTES_BYTES = 512 * 1024 * 1024

# ---------------------------------------------------------------- detecting and reading the set


def is_synthetic_raw(root: str | Path, by_content: bool = False) -> bool:
    """Whether ``root`` is a synthetic raw dataset this tool drew: its owner marker says so, or
    (``by_content``, slower: reads attributes.json) one drawn before markers, recognised by content."""
    from personsearch.data.synthetic.writer import SYNTHETIC_KIND, is_legacy_synthetic
    from personsearch.io import owner_kind

    root = Path(root)
    return owner_kind(root) == SYNTHETIC_KIND or (by_content and is_legacy_synthetic(root))


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _looks_synthetic(root: Path) -> bool:
    """A cheap check: the synthetic attributes file, and a marker of ours or the raw layout."""
    from personsearch.data.synthetic.writer import IMAGE_FOLDER, SYNTHETIC_KIND
    from personsearch.io import owner_kind

    if not _regular(root / ATTRIBUTES_FILE):
        return False
    if owner_kind(root) == SYNTHETIC_KIND:
        return True
    return _regular(root / "reid_raw.json") and (root / IMAGE_DIR / IMAGE_FOLDER).is_dir()


def find_synthetic_root(folder: str | Path) -> tuple[Path, str] | None:
    """The synthetic raw dataset ``folder`` belongs to, and ``folder``'s path inside it ("" for the
    raw folder itself, ``imgs``, ``imgs/synthetic``); None for any other folder. Only those three
    places are looked at, never an arbitrary folder above."""
    from personsearch.data.synthetic.writer import IMAGE_FOLDER

    folder = Path(folder)
    candidates = [(folder, "")]
    if folder.name == IMAGE_DIR:
        candidates.append((folder.parent, IMAGE_DIR))
    if folder.name == IMAGE_FOLDER and folder.parent.name == IMAGE_DIR:
        candidates.append((folder.parent.parent, f"{IMAGE_DIR}/{IMAGE_FOLDER}"))
    for root, inside in candidates:
        if _looks_synthetic(root):
            return root, inside
    return None


def _bad(path: Path, detail: str) -> InputError:
    return InputError(
        f"{path}: {detail}",
        hint="draw the synthetic set again (`personsearch prepare synthetic --out DIR`); it writes this file",
    )


def load_attributes(raw_root: str | Path) -> dict[str, Attributes]:
    """Every image's attributes from ``raw_root/attributes.json``, keyed by the image path relative
    to ``raw_root`` (``imgs/synthetic/p00001_s0.jpg``).

    Only a regular file of at most ``MAX_ATTRIBUTES_BYTES`` is read; a missing, unreadable,
    malformed or wrongly shaped file is one InputError naming it."""
    from personsearch.data.annotation_records import describe, safe_relative, shown
    from personsearch.io import NotRegularFile, open_regular

    path = Path(raw_root) / ATTRIBUTES_FILE
    try:
        with open_regular(path) as handle:
            blob = handle.read(MAX_ATTRIBUTES_BYTES + 1)
    except FileNotFoundError:
        raise InputError(
            f"{path} not found: {raw_root} is not a synthetic raw dataset",
            hint="the synthetic set's raw folder (prepare synthetic --out DIR writes DIR/raw) holds it",
        ) from None
    except NotRegularFile:
        raise _bad(path, "not a regular file (a FIFO, device, socket or folder)") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(blob) > MAX_ATTRIBUTES_BYTES:
        raise _bad(path, f"larger than {MAX_ATTRIBUTES_BYTES // 2**20} MiB; not an attributes file of ours")
    try:
        data = json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(path, f"not UTF-8 text (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"unreadable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise _bad(path, f"holds {describe(data)}, expected an object of image path -> attributes")
    attributes: dict[str, Attributes] = {}
    for key, values in data.items():
        relative = safe_relative(key) if "\x00" not in key else None
        if relative is None:
            raise _bad(path, f"image path {shown(key)!r} is absolute or leaves the image folder")
        if not isinstance(values, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in values.items()
        ):
            raise _bad(path, f"the attributes of {shown(key)!r} are not an object of text values")
        attributes[f"{IMAGE_DIR}/{relative}"] = dict(values)
    return attributes


def attributes_under(folder: str | Path) -> dict[str, Attributes] | None:
    """The synthetic attributes of the images under ``folder`` (an index's image root: the raw
    folder, its ``imgs`` or ``imgs/synthetic``), keyed by path relative to ``folder``; None when
    ``folder`` is not part of a synthetic raw dataset. A damaged attributes file: InputError."""
    found = find_synthetic_root(folder)
    if found is None:
        return None
    root, inside = found
    attributes = load_attributes(root)
    if not inside:
        return attributes
    prefix = inside + "/"
    return {key[len(prefix) :]: value for key, value in attributes.items() if key.startswith(prefix)}


# ---------------------------------------------------------------- parsing a query

#: Things an attribute belongs to (the nouns), and the attributes a word before them may set.


__all__ = [
    "ATTRIBUTES_FILE", "IMAGE_DIR", "MAX_ATTRIBUTES_BYTES", "SYNTHETIC_LABEL", "attributes_under",
    "find_synthetic_root", "is_synthetic_raw", "load_attributes",
]
