"""What a run was trained on, recorded beside it when training starts:

- ``vocabulary.json``: the words of its training captions, so a query none of whose words the
  model ever saw ("qwzx blorf") is flagged instead of ranked as if it meant something;
- ``train_images.json``: a key per training image (its path under the image folder and its size),
  so an evaluation on data that shares images with the training split is refused (its figures
  would be inflated) unless the user insists.

Both are plain JSON, written atomically; runs made before they existed simply have neither.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from personsearch.io import atomic_write_json, open_regular
from personsearch.text import text_words

VOCABULARY_FILE = "vocabulary.json"
TRAIN_IMAGES_FILE = "train_images.json"
MAX_RECORD_BYTES = 256 << 20
#: Words too common to say anything about a query ("a man in a ..."): a query made of these and
#: unknown words alone is still flagged.
FUNCTION_WORDS = frozenset(
    "a an the and or of in on at to with without is are was his her their its this that who has have "
    "wearing wears".split()
)


def image_key(relative_path: str, size: int) -> str:
    """A short key of one image: its path under the image folder and its size in bytes."""
    return hashlib.sha256(f"{relative_path}\x00{size}".encode("utf-8", "surrogateescape")).hexdigest()[:20]


def split_image_keys(prepared: Any, split: str) -> set[str]:
    """The keys of ``split``'s images that exist (a missing file has no key)."""
    keys: set[str] = set()
    for entry in prepared.entries(split):
        try:
            size = os.stat(prepared.image_path(entry)).st_size
        except OSError:
            continue
        keys.add(image_key(entry.path, size))
    return keys


def caption_vocabulary(captions: Iterable[str]) -> set[str]:
    return {word for caption in captions for word in text_words(caption)}


def record_training_data(run_dir: str | Path, prepared: Any) -> None:
    """Write the run's vocabulary and training-image keys (main process, when training starts)."""
    run_dir = Path(run_dir)
    entries = prepared.entries("train")
    vocabulary = caption_vocabulary(caption for entry in entries for caption in entry.captions)
    atomic_write_json(run_dir / VOCABULARY_FILE, {"words": sorted(vocabulary)})
    atomic_write_json(run_dir / TRAIN_IMAGES_FILE,
                      {"key": "sha256(path under the image folder, NUL, size)[:20]",
                       "images": sorted(split_image_keys(prepared, "train"))})


def _read(path: Path, field: str) -> set[str] | None:
    """A record's list as a set; None when the run has none (or it is unreadable: never fatal)."""
    try:
        with open_regular(path) as handle:
            data = json.loads(handle.read(MAX_RECORD_BYTES + 1) or b"null")
    except (OSError, ValueError):
        return None
    values = data.get(field) if isinstance(data, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return None
    return set(values)


def run_vocabulary(run_dir: str | Path) -> set[str] | None:
    return _read(Path(run_dir) / VOCABULARY_FILE, "words")


def run_training_images(run_dir: str | Path) -> set[str] | None:
    return _read(Path(run_dir) / TRAIN_IMAGES_FILE, "images")


def knows_query(vocabulary: set[str] | None, text: str) -> bool | None:
    """Whether a word of ``text`` (other than function words) occurs in the training captions;
    None when the run recorded no vocabulary (plain CLIP weights, IRRA runs, older runs)."""
    if vocabulary is None:
        return None
    words = [word for word in text_words(text) if word not in FUNCTION_WORDS]
    return any(word in vocabulary for word in words) if words else True
