"""The restricted unpickler for a TorchScript archive's ``data.pkl``: nothing in it runs.

Only what rebuilding tensors needs resolves, and to this module's stand-ins: ``_rebuild_tensor_v2``
gives a :class:`TensorRecord` (its arguments, checked before any tensor is made), a storage becomes
a :class:`StorageRef` (read later, bounded by the archive), and each of the archive's own classes
becomes an inert :class:`ScriptObject` that keeps its state. Any other reference (a function, a
class outside the archive) refuses the file as :class:`Malicious`.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import torch

__all__ = ["Malicious", "Refused", "RestrictedUnpickler", "ScriptObject", "StorageRef", "TensorRecord"]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
_UNSUPPORTED_TENSORS = {
    ("torch._utils", "_rebuild_qtensor"): "quantized tensors",
    ("torch._utils", "_rebuild_sparse_tensor"): "sparse tensors",
    ("torch._utils", "_rebuild_sparse_csr_tensor"): "sparse tensors",
    ("torch._utils", "_rebuild_wrapper_subclass"): "tensor subclasses",
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): "numpy-backed tensors",
    ("torch._tensor", "_rebuild_from_type_v2"): "tensor subclasses",
    ("torch._tensor", "_rebuild_from_type"): "tensor subclasses",
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class Refused(Exception):
    """Why the archive is not read (becomes an InputError naming the file)."""


class Malicious(Refused):
    """The archive asks for code to run."""


# ----------------------------------------------------------------------- inert pickle objects


class _StorageType:
    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def __setstate__(self, state: Any) -> None:
        raise Refused("data.pkl modifies a storage type")


class StorageRef:
    """('storage', type, key, location, numel): a storage record of the archive, not yet read."""

    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: torch.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel

    def __setstate__(self, state: Any) -> None:
        raise Refused("data.pkl modifies a storage")


class TensorRecord:
    """The arguments of ``_rebuild_tensor_v2``; turned into a tensor only after they are checked."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state: Any) -> None:
        raise Refused("data.pkl modifies a tensor after building it")


class ScriptObject:
    """An object of one of the archive's own classes: its state is kept, nothing of it runs."""

    __slots__ = ("args", "state")
    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ScriptObject:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRecord:
    return TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    if not isinstance(data, TensorRecord):
        raise Refused("data.pkl builds a parameter from something that is not a tensor")
    return data


def _ordered_dict(*args: Any) -> dict:
    if args:
        raise Refused("data.pkl fills backward hooks, which weights never have")
    return {}


def _first(value: Any, *rest: Any) -> Any:
    return value


def _device(name: Any, *rest: Any) -> str:
    return str(name)[:64]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch.jit._pickle", "restore_type_tag"): _first,
    ("torch.jit._pickle", "build_intlist"): _first,
    ("torch.jit._pickle", "build_tensorlist"): _first,
    ("torch.jit._pickle", "build_doublelist"): _first,
    ("torch.jit._pickle", "build_boollist"): _first,
    ("torch", "device"): _device,
}


class RestrictedUnpickler(pickle._Unpickler):  # the Python one: its memo is a dict, not a huge array
    """Resolves only what rebuilding tensors needs; the archive's classes become inert records."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), fix_imports=False)
        self.classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if key in _UNSUPPORTED_TENSORS:
            raise Refused(f"it holds {_UNSUPPORTED_TENSORS[key]}; only dense tensors are read")
        if (module == "__torch__" or module.startswith("__torch__.")) and _NAME.match(name) and len(module) < 512:
            if key not in self.classes:
                if len(self.classes) >= 100_000:
                    raise Refused("data.pkl names too many classes")
                self.classes[key] = type("ScriptObject", (ScriptObject,), {"__slots__": (),
                                                                              "qualname": f"{module}.{name}"})
            return self.classes[key]
        raise Malicious(f"its data.pkl calls {str(module)[:80]}.{str(name)[:80]}, which weights never need "
                         "(loading the archive with torch would run it)")

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise Refused(f"data.pkl refers to {str(pid)[:80]}, not a storage record")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise Refused(f"storage record {str(key)[:40]!r} has an unknown type")
        if not isinstance(key, str) or not _KEY.match(key):
            raise Refused(f"data.pkl refers to a storage record named {str(key)[:60]!r}")
        if type(numel) is not int or not 0 <= numel < 2**62:
            raise Refused(f"storage record {key!r} claims {str(numel)[:40]} elements")
        return StorageRef(kind.dtype, key, numel)
