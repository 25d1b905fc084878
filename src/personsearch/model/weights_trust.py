"""What makes a weights file safe to read and the right one: safetensors headers checked before
anything is allocated, and a run's weights checked against the sha256 its records hold.

Safetensors: the 8-byte header length and the JSON header are read and validated here (bounded
size, known dtypes, shapes and offsets that tile the data exactly) before safetensors' own loader
sees the file, so a hostile header can neither allocate nor read out of bounds.

Integrity: ``best.json``/``last.json`` (and each ``state-*/state.json``) record the sha256 of the
weights they describe. A weights file replaced behind the run's back is refused, never loaded.
Verified hashes are remembered in this process, keyed by (path, device, inode, size, mtime), and
for files of ``CACHED_MIN_BYTES`` or more also between processes, in the user's cache folder
(``$PERSONSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/personsearch``, else ``~/.cache/personsearch``;
an empty ``PERSONSEARCH_CACHE_DIR`` turns it off), keyed by the same and the inode's change time,
which no tool can set back: a file rewritten, replaced, renamed over or touched is hashed again.
So a one-shot ``personsearch query`` does not read 600 MB of weights to check them each time.
Read-only verbs never write into a run.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.io import sha256_file
from personsearch.io.cache import CACHE_ENV, cache_folder, read_cache_json, write_cache_json  # noqa: F401 (CACHE_ENV: public here)
from personsearch.settings import SETTINGS_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "check_safetensors",
    "ensure_unchanged",
    "file_sha256",
    "load_safetensors",
    "read_record",
    "run_weights",
    "weights_for_file",
]


FORMAT = "personsearch-checkpoint"
FORMAT_VERSION = 1
#: A run's weights and their records live in this folder of the run.
CHECKPOINT_DIR = "checkpoints"
STATE_DIR = re.compile(r"^state-(\d{8})$")

# ------------------------------------------------------------------------------ safetensors

#: safetensors dtype names -> bytes per element (the ones safetensors.torch reads).
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
MAX_HEADER_BYTES = 100 << 20
MAX_TENSORS = 1_000_000
MAX_DIMS = 64


class _Damaged(ValueError):
    """One thing wrong with a safetensors header (becomes an InputError naming the file)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Damaged(f"the header names {key!r} twice")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _Damaged(f"the header holds {name}, which is not a valid value")


def _is_int(value: Any) -> bool:
    return type(value) is int


def _check_header(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _Damaged(f"the file is {size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise _Damaged(f"the header claims {length} bytes (at most {MAX_HEADER_BYTES} are read)")
        if length > size - 8:
            raise _Damaged(f"the header claims {length} bytes but the file holds {size - 8} after the length")
        raw = handle.read(length)
    if len(raw) != length:
        raise _Damaged("the file ended inside the header")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _Damaged:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Damaged(f"the header is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(header, dict):
        raise _Damaged("the header is not a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise _Damaged(f"the header lists {len(header)} entries (at most {MAX_TENSORS})")
    data_size = size - 8 - length
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _Damaged("__metadata__ must map names to strings")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _Damaged(f"tensor {name!r} is not described by exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise _Damaged(f"tensor {name!r} has unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(_is_int(d) and 0 <= d < 2**63 for d in shape)):
            raise _Damaged(f"tensor {name!r} has shape {str(shape)[:80]}: expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise _Damaged(f"tensor {name!r} has data_offsets {str(offsets)[:80]}: expected [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise _Damaged(f"tensor {name!r} spans bytes {begin}..{end}, outside the {data_size} data bytes")
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if end - begin != expected:
            raise _Damaged(f"tensor {name!r} ({dtype} {shape}) needs {expected} bytes but spans {end - begin}")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else f"leaves bytes {position}..{begin} unused"
            raise _Damaged(f"tensor {name!r} {what}")
        position = end
    if position != data_size:
        raise _Damaged(f"the tensors cover {position} of the {data_size} data bytes")


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Validate a safetensors file's header (nothing is allocated from it); InputError naming the file."""
    path = Path(path)
    try:
        _check_header(path)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: the file does not exist") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: it is a folder, not a safetensors file") from None
    except _Damaged as exc:
        raise InputError(f"cannot read {path}: the safetensors file is truncated or corrupt ({exc})",
                         hint="copy or write it again") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """CPU tensors of a safetensors file whose header passed :func:`check_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    check_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot read {path}: the safetensors file is truncated or corrupt ({exc})",
                         hint="copy or write it again") from None


# -------------------------------------------------------------------------------- integrity

_HASHES: dict[tuple[str, int, int, int, int], str] = {}

#: Smaller files are hashed every time (well under a tenth of a second), never remembered on disk.
CACHED_MIN_BYTES = 64 << 20
_CACHE_FILE = "weights-sha256.json"
_CACHE_VERSION = 1
_CACHE_ENTRIES = 64
_STAT_FIELDS = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")


def hash_cache_file() -> Path | None:
    """The file that remembers hashes of large weights files between processes (None: turned off)."""
    folder = cache_folder()
    return folder / _CACHE_FILE if folder else None


def _read_hash_cache(path: Path) -> dict[str, Any]:
    files = read_cache_json(path, _CACHE_VERSION).get("files")
    return files if isinstance(files, dict) else {}


def _remembered(path: Path, info: os.stat_result) -> str | None:
    cache = hash_cache_file()
    if cache is None:
        return None
    entry = _read_hash_cache(cache).get(os.path.realpath(path))
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        return None
    if any(entry.get(field) != getattr(info, field) for field in _STAT_FIELDS):
        return None
    return str(entry["sha256"])


def _remember(path: Path, info: os.stat_result, digest: str) -> None:
    """Add one file's hash to the cache (best effort: a cache that cannot be written is skipped)."""
    cache = hash_cache_file()
    if cache is None:
        return
    files = {name: entry for name, entry in _read_hash_cache(cache).items() if os.path.isfile(name)}  # gone: dropped
    files.pop(os.path.realpath(path), None)
    files[os.path.realpath(path)] = {**{field: getattr(info, field) for field in _STAT_FIELDS}, "sha256": digest}
    kept = dict(list(files.items())[-_CACHE_ENTRIES:])  # the newest entries (dicts keep insertion order)
    write_cache_json(cache, {"version": _CACHE_VERSION, "files": kept})


def _stat_key(path: Path, stat: os.stat_result) -> tuple[str, int, int, int, int]:
    return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def file_key(path: str | os.PathLike[str]) -> tuple[str, int, int, int, int]:
    """What identifies one version of a file: replaced or rewritten, the key changes."""
    return _stat_key(Path(path), os.stat(path))


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, tuple[str, int, int, int, int]]:
    """sha256 of a file and the key of the version hashed (remembered for this process, and for a
    large file between processes: see the module's notes)."""
    path = Path(path)
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        key = _stat_key(path, info)
        known = _HASHES.get(key)
        if known is not None:
            return known, key
        large = info.st_size >= CACHED_MIN_BYTES
        known = _remembered(path, info) if large else None
        if known is None:
            known = sha256_file(handle)
            after = os.fstat(handle.fileno())
            if large and all(getattr(after, field) == getattr(info, field) for field in _STAT_FIELDS):
                _remember(path, info, known)  # not when the file changed while it was hashed
        _HASHES[key] = known
    return known, key


def _damaged(record: Path, detail: str, hint: str | None = None) -> InputError:
    return InputError(
        f"this run's checkpoint is damaged: {record} {detail}",
        hint=hint or "restore the file from a backup, or re-train; `personsearch train --resume RUN` continues "
        "from the run's last complete state",
    )


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 64 << 20
_COUNTERS = ("epoch", "step", "batch_in_epoch", "skipped_images", "num_classes")


def read_record(path: Path, *, need_sha: bool = True) -> dict[str, Any]:
    """A run's JSON record (``best.json``, ``last.json``, ``state.json``), its fields type-checked.

    A newer format version asks for an upgrade; anything unreadable or of the wrong type names the
    file and says the run is damaged.
    """
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise _damaged(path, f"is {path.stat().st_size} bytes, far more than a checkpoint record holds")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, "is not UTF-8 text") from None
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # over-long integers, absurd nesting
        raise _damaged(path, f"is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"holds a JSON {type(meta).__name__}, not an object")
    version = meta.get("format_version", 0)
    if not _is_int(version) or version < 0:
        raise _damaged(path, f"has format_version {str(version)[:40]!r}, not a whole number")
    if version > FORMAT_VERSION:
        raise InputError(f"{path} has checkpoint format version {version}; this personsearch reads version "
                         f"{FORMAT_VERSION}", hint="upgrade personsearch")
    for key in _COUNTERS:
        if key in meta and meta[key] is not None:
            value = meta[key]
            if not _is_int(value) or not 0 <= value < 2**63:
                raise _damaged(path, f"has {key!r} = {str(value)[:40]!r}, not a whole number from 0 to 2^63")
    for key in ("metrics", "best"):
        if meta.get(key) is not None:
            value = meta[key]
            if not isinstance(value, dict):
                raise _damaged(path, f"has {key!r} = {str(value)[:40]!r}, not a mapping of names to values")
    state = meta.get("state")
    if state is not None and (not isinstance(state, str) or not STATE_DIR.match(state)):
        raise _damaged(path, f"names the state folder {str(state)[:60]!r}, not state-NNNNNNNN")
    digest = meta.get("weights_sha256")
    if digest is None and need_sha:
        raise _damaged(path, "does not record weights_sha256, the hash of the weights it describes")
    if digest is not None and (not isinstance(digest, str) or not _SHA256.match(digest)):
        raise _damaged(path, f"has weights_sha256 {str(digest)[:80]!r}, not a sha256 hex digest")
    return meta


def _matches(path: Path, expected: str) -> tuple[str, int, int, int, int] | None:
    """The file's key when its sha256 is ``expected``; None otherwise."""
    digest, key = file_sha256(path)
    return key if digest == expected else None


def run_weights(checkpoints: Path, tag: str, required: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """``<tag>.safetensors`` of a run's checkpoints folder, verified against ``<tag>.json``.

    None when the run has neither file. With ``required`` (a real run: config.yaml beside its
    checkpoints) weights without their record are refused; otherwise they load unverified. Never
    falls back to other weights: a save interrupted between the record and the weights is
    completed by the trainer (``train --resume``), not guessed at by a reader.
    """
    weights, record = checkpoints / f"{tag}.safetensors", checkpoints / f"{tag}.json"
    has_weights, has_record = weights.is_file(), record.is_file()
    if not has_weights and not has_record:
        return None
    if not has_record:
        if not required:
            return weights, {}
        raise _damaged(weights, f"has no {record.name} beside it (the record of what the run saved)")
    meta = read_record(record)
    if not has_weights:
        raise _damaged(record, f"exists but {weights.name} is missing")
    if not _matches(weights, meta["weights_sha256"]):
        raise _mismatch(weights, record)
    return weights, meta


def _mismatch(weights: Path, record: Path) -> InputError:
    return InputError(
        f"{weights} does not match what the run recorded in {record}: its sha256 differs from weights_sha256, "
        "so the file was replaced or damaged after training wrote it; nothing was loaded",
        hint="restore the file, or re-train the run (if training was killed while saving, "
        "`personsearch train --resume RUN` completes the save)",
    )


def weights_for_file(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """For a weights file given directly: the file to load and the record it was verified against.

    ``checkpoints/best|last.safetensors`` are checked against their JSON record,
    ``checkpoints/state-*/model.safetensors`` against ``state.json``; any other file has no record
    (None).
    """
    parent = path.parent
    if parent.name == CHECKPOINT_DIR and path.name in ("best.safetensors", "last.safetensors"):
        found = run_weights(parent, path.name[: -len(".safetensors")],
                            required=(parent.parent / SETTINGS_FILE).is_file())
        if found is not None:
            return found[0], found[1] or None
    if path.name == "model.safetensors" and STATE_DIR.match(parent.name) and parent.parent.name == CHECKPOINT_DIR:
        record = parent / "state.json"
        if record.is_file():
            meta = read_record(record, need_sha=False)
            expected = meta.get("weights_sha256")
            if expected is not None and not _matches(path, expected):
                raise _mismatch(path, record)
            return path, meta
    return path, None


def ensure_unchanged(path: Path, expected: str) -> None:
    """Refuse when ``path`` was replaced between its verification and its reading (the version read
    is still the one verified: a cache hit, no second hash)."""
    try:
        same = _matches(path, expected) is not None
    except OSError:
        same = False
    if not same:
        raise InputError(f"{path} changed while it was being read", hint="try again once training has written it")
