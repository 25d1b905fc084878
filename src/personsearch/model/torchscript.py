"""The tensors of a TorchScript archive (OpenAI's ``ViT-B-16.pt``), read without running anything.

``torch.jit.load`` runs the archive's code (a class's ``__setstate__``, for one) while it loads, so
a weights file could do anything. Here the zip is opened and its ``data.pkl`` unpickled by a
restricted unpickler (:mod:`personsearch.model.torchscript_unpickler`): tensors are rebuilt from
the archive's storage records by this module, the archive's module classes become inert records of
their attributes, and any other reference (a function, a class outside the archive) refuses the
file. The parameters and buffers are then taken by their dotted names, those the classes' exported
code declares (:mod:`personsearch.model.torchscript_classes`, parsed as text): the names
``torch.jit.load(path).state_dict()`` gives, bit for bit the same tensors. Sizes, offsets and
strides are checked against the records before anything is read, and nothing larger than the
archive itself is allocated.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from personsearch.errors import InputError
from personsearch.model.torchscript_classes import ClassInfo, parse_classes
from personsearch.model.torchscript_unpickler import (
    Malicious,
    Refused,
    RestrictedUnpickler,
    ScriptObject,
    StorageRef,
    TensorRecord,
)

__all__ = ["is_torchscript", "read_torchscript"]

MAX_ENTRIES = 100_000  # zip entries; OpenAI's largest archive holds about a thousand
MAX_DIRECTORY_BYTES = 32 << 20  # the zip's central directory (zipfile keeps ~10x that in memory)
MAX_PICKLE_BYTES = 16 << 20  # data.pkl; ViT-L/14's is well under 1 MiB
MAX_CODE_BYTES = 16 << 20  # one code file, and all of them together (x4)
MAX_TENSORS = 200_000
MAX_DEPTH = 128
MAX_VISITS = 1_000_000
MAX_DIMS = 64
_HINT = "get the weights from a source you trust, or as .safetensors"


# --------------------------------------------------------------------------------- the zip


def _directory_size(handle: Any, size: int) -> tuple[int, int] | None:
    """(entries, central directory bytes) the zip's end record declares (zip64 too), read before
    zipfile indexes them all; None when there is no end record (zipfile then refuses the file)."""
    tail_size = min(size, 22 + 65535)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries, directory = struct.unpack("<HL", tail[at + 10 : at + 16])
    if entries != 0xFFFF and directory != 0xFFFFFFFF:
        return entries, directory
    locator = at - 20
    if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
        return None
    (offset,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
    if offset + 56 > size:
        return None
    handle.seek(offset)
    record = handle.read(56)
    if record[:4] != b"PK\x06\x06":
        return None
    return struct.unpack("<QQ", record[32:48])


def _check_directory(path: Path, size: int) -> None:
    with open(path, "rb") as handle:
        declared = _directory_size(handle, size)
    if declared is None:
        return
    entries, directory = declared
    if entries > MAX_ENTRIES or directory > MAX_DIRECTORY_BYTES:
        raise Refused(f"the archive lists {entries} entries in a {directory}-byte directory (at most "
                       f"{MAX_ENTRIES} entries, {MAX_DIRECTORY_BYTES} bytes)")


class _Archive:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        _check_directory(path, self.size)
        self.zip = zipfile.ZipFile(path)
        infos = self.zip.infolist()
        if len(infos) > MAX_ENTRIES:
            raise Refused(f"the archive lists {len(infos)} entries (at most {MAX_ENTRIES})")
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            parts = name.split("/")
            if (not name or name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts
                    or re.match(r"^[A-Za-z]:", name)):
                raise Refused(f"the archive holds an entry named {name[:80]!r}, which no TorchScript archive has")
            if name in self.entries:
                raise Refused(f"the archive holds {name[:80]!r} twice")
            self.entries[name] = info
        if not infos or "/" not in infos[0].filename:
            raise Refused("it has no top-level folder, as TorchScript archives do")
        self.prefix = infos[0].filename.split("/", 1)[0]
        self.storages: dict[str, Tensor] = {}
        self.classes: dict[str, dict[str, ClassInfo]] = {}
        self.code_read = 0
        self.tensor_bytes = 0

    def close(self) -> None:
        self.zip.close()

    def _info(self, name: str) -> zipfile.ZipInfo | None:
        return self.entries.get(f"{self.prefix}/{name}")

    def read_small(self, name: str, limit: int) -> bytes | None:
        info = self._info(name)
        if info is None:
            return None
        if info.file_size > limit:
            raise Refused(f"{name} is {info.file_size} bytes (at most {limit} are read)")
        if info.compress_size > self.size or (info.compress_type == zipfile.ZIP_STORED
                                              and info.compress_size != info.file_size):
            raise Refused(f"{name} claims more bytes than the archive holds")
        with self.zip.open(info) as handle:
            data = handle.read(limit + 1)
        if len(data) != info.file_size:
            raise Refused(f"{name} is truncated")
        return data

    def storage(self, ref: StorageRef) -> Tensor:
        known = self.storages.get(ref.key)
        if known is not None:
            if known.dtype != ref.dtype or known.numel() != ref.numel:
                raise Refused(f"storage record data/{ref.key} is described twice, differently")
            return known
        name = f"data/{ref.key}"
        info = self._info(name)
        if info is None:
            raise Refused(f"data.pkl refers to the storage record {name}, which the archive lacks")
        itemsize = torch.empty(0, dtype=ref.dtype).element_size()
        nbytes = ref.numel * itemsize
        if info.file_size != nbytes:
            raise Refused(f"storage record {name} holds {info.file_size} bytes, but data.pkl describes "
                           f"{ref.numel} x {str(ref.dtype).removeprefix('torch.')} = {nbytes} bytes")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != nbytes or nbytes > self.size:
            raise Refused(f"storage record {name} is compressed or larger than the archive; TorchScript stores "
                           "tensors uncompressed")
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy()) if nbytes else memoryview(bytearray())
        done = 0
        with self.zip.open(info) as handle:
            while done < nbytes:
                got = handle.readinto(view[done : done + (16 << 20)])
                if not got:
                    raise Refused(f"storage record {name} is truncated")
                done += got
            if handle.read(1):
                raise Refused(f"storage record {name} holds more than it declares")
        tensor = buffer.view(ref.dtype) if nbytes else torch.empty(0, dtype=ref.dtype)
        self.storages[ref.key] = tensor
        return tensor

    def class_info(self, qualname: str) -> ClassInfo | None:
        module, _, name = qualname.rpartition(".")
        if module not in self.classes:
            text = self.read_small("code/" + module.replace(".", "/") + ".py", MAX_CODE_BYTES)
            self.code_read += len(text or b"")
            if self.code_read > 4 * MAX_CODE_BYTES:
                raise Refused("its code files are larger than any model's")
            self.classes[module] = parse_classes(text.decode("utf-8", "replace")) if text else {}
        return self.classes[module].get(name)


# ---------------------------------------------------------------------------- the state dict


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        raise Refused(f"a tensor has {what} {str(value)[:60]}")
    if not all(type(v) is int and 0 <= v < 2**62 for v in value):
        raise Refused(f"a tensor has {what} {str(value)[:60]}: expected non-negative integers")
    return tuple(value)


def _tensor(archive: _Archive, record: TensorRecord, name: str) -> Tensor:
    ref = record.storage
    if not isinstance(ref, StorageRef):
        raise Refused(f"tensor {name} is not built from a storage record")
    size, stride = _ints(record.size, "size"), _ints(record.stride, "stride")
    offset = record.offset
    if type(offset) is not int or not 0 <= offset < 2**62 or len(size) != len(stride):
        raise Refused(f"tensor {name} has offset {str(offset)[:40]}, size {size} and stride {stride}")
    numel = math.prod(size)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) if numel else offset - 1
    if last >= ref.numel:
        raise Refused(f"tensor {name} (size {size}, stride {stride}, offset {offset}) reaches beyond its "
                       f"storage record data/{ref.key} of {ref.numel} elements")
    itemsize = torch.empty(0, dtype=ref.dtype).element_size()
    archive.tensor_bytes += numel * itemsize
    if archive.tensor_bytes > 2 * archive.size + (1 << 20):
        raise Refused("its tensors are views far larger than the data the archive holds")
    storage = archive.storage(ref)
    return storage.as_strided(size, stride, offset)


def _collect(archive: _Archive, root: Any) -> dict[str, Tensor]:
    if not isinstance(root, ScriptObject):
        raise Refused("data.pkl does not hold a TorchScript module")
    out: dict[str, Tensor] = {}
    visits = 0
    active: set[int] = set()

    def visit(obj: ScriptObject, prefix: str, depth: int) -> None:
        nonlocal visits
        visits += 1
        if visits > MAX_VISITS or depth > MAX_DEPTH:
            raise Refused("its module tree is deeper or larger than any model's")
        if id(obj) in active:
            raise Refused(f"module {prefix.rstrip('.') or 'root'} contains itself")
        info = archive.class_info(obj.qualname)
        if info is not None and info.runs_code:
            raise Malicious(f"class {obj.qualname[:120]} restores itself by running code (__setstate__), which "
                             "weights never need")
        attrs = obj.state
        if attrs is None:
            raise Refused(f"an object of class {obj.qualname[:120]} is made without its attributes")
        if not isinstance(attrs, dict):
            raise Malicious(f"class {obj.qualname[:120]} restores itself from {type(attrs).__name__} state by "
                             "running code (__setstate__), which weights never need")
        if not all(isinstance(key, str) for key in attrs):
            raise Refused(f"module {prefix.rstrip('.') or 'root'} has attributes whose names are not text")
        if info is not None and info.declared:
            wanted = [n for n in attrs if n in info.params] + [n for n in attrs if n in info.buffers]
        else:  # no class description: every tensor attribute is state
            wanted = [n for n, v in attrs.items() if isinstance(v, TensorRecord)]
        for name in wanted:
            value = attrs[name]
            if value is None:
                continue
            if not isinstance(value, TensorRecord):
                raise Refused(f"{prefix}{name} is declared a parameter but holds {type(value).__name__}")
            if len(out) >= MAX_TENSORS:
                raise Refused(f"it holds more than {MAX_TENSORS} tensors")
            out[prefix + name] = _tensor(archive, value, prefix + name)
        active.add(id(obj))
        for name, value in attrs.items():
            if isinstance(value, ScriptObject):
                child = archive.class_info(value.qualname)
                if child is None or child.is_module:
                    visit(value, f"{prefix}{name}.", depth + 1)
        active.discard(id(obj))

    visit(root, "", 0)
    return out


# ------------------------------------------------------------------------------------ public


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """A zip with exported code or constants: what ``torch.jit.save`` writes."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    try:
        _check_directory(path, path.stat().st_size)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Refused:
        return True  # read_torchscript refuses it, saying why
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return False
    return any(name.endswith("constants.pkl") or "/code/" in name for name in names)


def read_torchscript(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The parameters and buffers of a TorchScript archive under ``state_dict()`` names; no code runs.

    InputError names the file when it is damaged, hostile or holds anything but plain tensors.
    """
    path = Path(path)
    archive = None
    try:
        archive = _Archive(path)
        order = archive.read_small("byteorder", 16)
        if order is not None and order.strip() not in (b"little", b"big"):
            raise Refused(f"its byteorder record says {order[:16]!r}")
        if order is not None and order.strip().decode() != sys.byteorder:
            raise Refused(f"it was written on a {order.strip().decode()}-endian machine")
        data = archive.read_small("data.pkl", MAX_PICKLE_BYTES)
        if data is None:
            old = archive._info("model.json") is not None
            raise Refused("it is the pre-1.4 TorchScript format (model.json); re-save it with a newer torch"
                           if old else "it has no data.pkl")
        root = RestrictedUnpickler(data).load()
        return _collect(archive, root)
    except Malicious as exc:
        raise InputError(f"refusing to load {path}: {exc}", hint=_HINT) from None
    except Refused as exc:
        raise InputError(f"cannot read TorchScript archive {path}: {exc}", hint=_HINT) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read TorchScript archive {path}: the file is truncated or corrupt ({first})",
                         hint="copy or download it again") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError, MemoryError, struct.error, UnicodeDecodeError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError):  # the Python unpickler's dispatch table, or a missing memo entry
            first = f"unknown opcode or reference {first}"
        raise InputError(f"cannot read TorchScript archive {path}: its data.pkl is malformed ({first})",
                         hint="copy or download it again") from None
    finally:
        if archive is not None:
            archive.close()
