"""Opening the files an index header lists, with the checks of ``index_format``'s docstring.

Every file must be a regular file of the recorded byte size; ``.npy`` files must hold the recorded
dtype and shape. Embeddings are memory-mapped (hashed first with ``verify``). Row tables and the
superseded list are small: each is read once into memory, hashed from those same bytes (so what
is checked is what is used) and parsed from them.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from personsearch.io import sha256_file
from personsearch.retrieval.index_format import damaged, is_regular_file, short_reason

_TABLE_DTYPES = {"lines": np.dtype("<i8"), "keys": np.dtype("<u8")}


def check_size(folder: Path, name: str, recorded: int, what: str = "shard file") -> None:
    """``name`` is a regular file of ``recorded`` bytes (else the index is damaged)."""
    file = folder / name
    try:
        info = os.stat(file)
    except FileNotFoundError:
        raise damaged(folder, f"{what} {file} is missing") from None
    except OSError as exc:
        raise damaged(folder, f"{what} {file} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise damaged(folder, f"{what} {file} is not a regular file")
    if info.st_size != recorded:
        state = "truncated" if info.st_size < recorded else "changed"
        raise damaged(folder, f"{what} {file} is {state}: {info.st_size} bytes, the header records {recorded}")


def open_shard(folder: Path, header: Mapping[str, Any], shard: Mapping[str, Any], verify: bool) -> np.ndarray:
    """The memory map of one listed shard after checking its files: present, regular, the recorded
    byte size; the embeddings' recorded dtype and shape, and with ``verify`` the
    embeddings' sha256 (the metadata is hashed where it is read whole, ``index_rows.read_shard``)."""
    for kind in ("embeddings", "metadata", "lines", "keys"):
        if kind in shard:
            check_size(folder, shard[kind], shard[f"{kind}_bytes"], "shard file" if kind in ("embeddings", "metadata")
                       else "row table")
    file = folder / shard["embeddings"]
    if verify and sha256_file(file) != shard["embeddings_sha256"]:
        raise damaged(folder, f"shard file {file} is corrupt (sha256 checksum mismatch)")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds (even TokenError)
        raise damaged(folder, f"shard file {file} is not a readable .npy array ({short_reason(exc)})") from None
    expected = (int(shard["rows"]), int(header["dim"]))
    if (not isinstance(array, np.ndarray) or array.dtype != np.float16 or array.shape != expected
            or not array.flags.c_contiguous):
        raise damaged(
            folder,
            f"shard file {file} holds {getattr(array, 'dtype', '?')} {list(getattr(array, 'shape', ()))}, "
            f"the header records float16 {list(expected)}",
        )
    return array


def _read_npy(folder: Path, name: str, size: int, sha256: str | None, dtype: np.dtype, shape: tuple[int, ...],
              what: str) -> np.ndarray:
    """A small ``.npy`` file read whole, hashed (when ``sha256`` is given) and parsed from the same
    bytes, with exactly ``dtype`` and ``shape``."""
    check_size(folder, name, size, what)
    file = folder / name
    try:
        with open(file, "rb") as handle:
            raw = handle.read(size + 1)
    except OSError as exc:
        raise damaged(folder, f"{what} {file} cannot be read ({exc.strerror or exc})") from None
    if len(raw) != size:
        raise damaged(folder, f"{what} {file} changed while it was read")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise damaged(folder, f"{what} {file} is corrupt (sha256 checksum mismatch)")
    try:
        buffer = io.BytesIO(raw)
        version = npy_format.read_magic(buffer)
        reader = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}[version]
        found, fortran, found_dtype = reader(buffer)
        start = buffer.tell()
    except Exception as exc:  # noqa: BLE001 - as in open_shard
        raise damaged(folder, f"{what} {file} is not a readable .npy array ({short_reason(exc)})") from None
    if found_dtype != dtype or tuple(found) != shape or fortran or size - start != dtype.itemsize * int(np.prod(shape)):
        raise damaged(folder, f"{what} {file} holds {found_dtype} {list(found)}, expected {dtype} {list(shape)}")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)


def read_table(folder: Path, shard: Mapping[str, Any], kind: str, verify: bool) -> np.ndarray:
    """A shard's row table ``kind`` (``lines`` or ``keys``: [rows, 2]), checked as the module says;
    the lines table must also end where the metadata file ends."""
    rows = int(shard["rows"])
    table = _read_npy(folder, shard[kind], shard[f"{kind}_bytes"], shard[f"{kind}_sha256"] if verify else None,
                      _TABLE_DTYPES[kind], (rows, 2), "row table")
    if kind == "lines" and rows and int(table[-1, 0]) != shard["metadata_bytes"]:
        raise damaged(folder, f"shard file {folder / shard['metadata']} is {shard['metadata_bytes']} bytes, but "
                              f"its line table {shard[kind]} ends at byte {int(table[-1, 0])}")
    return table


def read_superseded(folder: Path, header: Mapping[str, Any], verify: bool) -> np.ndarray:
    """The superseded rows the header lists (int64, sorted, unique, each a row of the index)."""
    entry = header.get("superseded")
    if not entry:
        return np.zeros(0, dtype=np.int64)
    rows = _read_npy(folder, entry["file"], entry["bytes"], entry["sha256"] if verify else None, np.dtype("<i8"),
                     (int(entry["rows"]),), "superseded-rows file")
    if rows[0] < 0 or rows[-1] >= header["count"] or (rows.size > 1 and not (np.diff(rows) > 0).all()):
        raise damaged(folder, f"superseded-rows file {folder / entry['file']} holds rows that are not sorted rows "
                              f"of the index")
    return rows.astype(np.int64)


def check_faiss_file(folder: Path, entry: Mapping[str, Any], verify: bool) -> None:
    """The FAISS file the header's ``entry`` lists is there (and, with ``verify``, unchanged)."""
    file = folder / entry["file"]
    if not is_regular_file(file):
        raise damaged(folder, f"FAISS file {file} is listed in the header but missing")
    if verify and sha256_file(file) != entry["sha256"]:
        raise damaged(folder, f"FAISS file {file} is corrupt (checksum mismatch)")
