"""Weights are data, never code, and a run's weights are the ones it recorded: TorchScript archives
read without running them (bit-identical to ``torch.jit.load``), hostile archives and safetensors
headers refused before anything is allocated, replaced weights detected by their sha256, weight
files written with the usual permissions, and damaged run records named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE, tree_digest

from personsearch.errors import InputError

from ._support import assert_input_error, invoke, tiny_sets

pytestmark = pytest.mark.faults


def _tiny_clip(seed: int = 0):
    from personsearch.model import build_clip

    torch.manual_seed(seed)
    return build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8, context_length=16).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[:, 0] = 49406
    ids[0, 1:4] = torch.tensor([320, 1929, 2533])
    ids[0, 4] = 49407
    ids[1, 1:6] = torch.arange(400, 405)
    ids[1, 6] = 49407
    return torch.randn(2, 3, *TINY_IMAGE_SIZE, generator=generator), ids


def _scriptable(model):  # noqa: ANN001, ANN202
    """The same module tree with every forward left to Python, so ``torch.jit.script`` keeps just the
    attributes (our CLIP's forward is not TorchScript)."""
    for module in model.modules():
        cls = type(module)
        if cls.forward is torch.nn.Module.forward:
            continue
        properties = [name for name in dir(cls) if isinstance(getattr(cls, name, None), property)]
        module.__class__ = type(cls.__name__, (cls,), {
            "forward": torch.jit.ignore(cls.forward), "__module__": cls.__module__,
            "__jit_unused_properties__": properties,
        })
    return model


def _save_archive(model, kind: str, path: Path) -> Path:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "trace":
            module = torch.jit.trace(model, _inputs(), check_trace=False)
        else:
            model.visual.extra = torch.ones(3)  # a plain tensor attribute: not part of the state dict
            model.visual.note = "kept as an attribute, not state"
            module = torch.jit.script(_scriptable(model))
        torch.jit.save(module, str(path))
    return path


def _jit_state(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


# --------------------------------------------------------------------------------------------
# TorchScript archives: the same tensors torch.jit.load gives, without running the archive


@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
@pytest.mark.parametrize("kind", ["trace", "script"])
def test_torchscript_tensors_are_bit_identical_to_torch_jit_load(tmp_path, kind, half):
    from personsearch.model import load_clip
    from personsearch.model.torchscript import read_torchscript

    model = _tiny_clip()
    model.register_buffer("input_resolution", torch.tensor(32))  # OpenAI's archives carry such buffers
    reference = _tiny_clip()
    path = _save_archive(model, kind, tmp_path / f"ViT-T-{kind}.pt")
    if half:  # OpenAI's ViT-B-16.pt holds float16 weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.load(str(path)).half(), str(path))
    expected = _jit_state(path)
    got = read_torchscript(path)
    assert list(got) == list(expected)  # same names, same order
    if kind == "script":
        assert "visual.extra" not in got
    for name, tensor in expected.items():
        mine = got[name]
        assert (mine.dtype, mine.shape, mine.stride(), mine.storage_offset()) == (
            tensor.dtype, tensor.shape, tensor.stride(), tensor.storage_offset()), name
        assert torch.equal(_bits(mine), _bits(tensor)), name
    assert got["visual.proj"].dtype == (torch.float16 if half else torch.float32)
    loaded = load_clip(path, image_size=TINY_IMAGE_SIZE, stride=8)
    images, ids = _inputs()
    with torch.no_grad():
        if half:
            torch.testing.assert_close(loaded.visual.proj, reference.visual.proj.half().float(), rtol=0, atol=0)
        else:
            torch.testing.assert_close(loaded.encode_image(images), reference.encode_image(images), rtol=0, atol=0)
            torch.testing.assert_close(loaded.encode_text(ids), reference.encode_text(ids), rtol=0, atol=0)


def _evil_module(marker: Path):  # noqa: ANN202
    """A scripted module whose TorchScript ``__setstate__`` creates ``marker`` when torch loads it."""
    class Evil(torch.nn.Module):
        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target
            self.proj = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.proj

        @torch.jit.export
        def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
            return (self.target, self.proj, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
            self.target = state[0]
            # from_file(shared=True) creates the file: a write the archive makes on load
            self.proj = state[1] + torch.from_file(state[0], True, 2, dtype=torch.float32) * 0
            self.training = state[2]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(Evil(str(marker)))


@pytest.fixture()
def evil_archive(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "ViT-evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(_evil_module(marker), str(path))
        torch.jit.load(str(path))  # the attack is real: torch runs the archive's code ...
    assert marker.exists()
    marker.unlink()  # ... and from here on nothing may run it again
    return path, marker


def test_archive_whose_setstate_writes_a_file_is_refused_by_every_loader(evil_archive, prepared_tiny, tmp_path):
    from personsearch.model import load_clip, read_state_dict
    from personsearch.runs import load_trained

    path, marker = evil_archive
    before = tree_digest(path)
    for call in (lambda: load_clip(path), lambda: read_state_dict(path)):
        with pytest.raises(InputError, match="refusing to load .*ViT-evil.pt.*__setstate__"):
            call()
        assert not marker.exists(), "loading the archive ran its code"

    out = tmp_path / "runs"
    result = invoke("train", "--data", prepared_tiny, *tiny_sets(f"runtime.output_dir={out}"),
                    "--pretrained", path, "--name", "evil", "--max-steps", "1")
    assert_input_error(result, "ViT-evil.pt", "refusing")
    assert not marker.exists()

    result = invoke("explain-mask", "a woman in a red coat", "--weights", path)
    assert_input_error(result, "ViT-evil.pt", "refusing")
    assert not marker.exists()

    irra = tmp_path / "irra-run"
    irra.mkdir()
    (irra / "configs.yaml").write_text("img_size: !!python/tuple [32, 16]\nstride_size: 8\n")
    shutil.copyfile(path, irra / "best.pth")
    result = invoke("eval", irra, "--json")
    assert_input_error(result, "best.pth", "refusing")
    with pytest.raises(InputError, match="best.pth"):
        load_trained(irra)
    assert not marker.exists()
    assert tree_digest(path) == before


# ------------------------------------------------------------------------- hand-made archives


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key: str, numel: int, size: list[int], stride: list[int], offset: int = 0,
            storage: str = "FloatStorage") -> bytes:
    pid = _tuple(_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel)) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", hooks)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _module(cls: str, attrs: dict[str, bytes]) -> bytes:
    items = b"".join(_str(name) + value for name, value in attrs.items())
    return _global("__torch__", cls) + b")\x81" + b"}(" + items + b"u" + b"b"


_CODE = 'class M(Module):\n  __parameters__ = ["weight", ]\n  __buffers__ = []\n  weight : Tensor\n'


def _archive(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, code: str = _CODE,
             extra: dict[str, bytes] | None = None, compress_storage: bool = False) -> Path:
    """A TorchScript-shaped zip written by hand (what a hostile file can be)."""
    storages = {"0": struct.pack("<4f", 1, 2, 3, 4)} if storages is None else storages
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/code/__torch__.py", code, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("archive/constants.pkl", b"\x80\x02).")
        archive.writestr("archive/version", b"3\n")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data,
                             compress_type=zipfile.ZIP_DEFLATED if compress_storage else zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def _pkl(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def test_hand_made_archive_control_loads(tmp_path):
    """The builder below makes archives this reader accepts: each hostile case differs in one thing."""
    from personsearch.model.torchscript import read_torchscript

    path = _archive(tmp_path / "ok.pt", _pkl(_module("M", {"weight": _tensor("0", 4, [2, 2], [2, 1]),
                                                           "training": b"\x89"})))
    state = read_torchscript(path)
    assert list(state) == ["weight"] and state["weight"].tolist() == [[1, 2], [3, 4]]


def _system_call(marker: Path) -> bytes:
    return _global("os", "system") + _tuple(_str(f"touch {marker}")) + b"R"


_MALICIOUS = {
    "os.system": lambda m: _pkl(_system_call(m)),
    "posix.system": lambda m: _pkl(_global("posix", "system") + _tuple(_str(f"touch {m}")) + b"R"),
    "builtins.exec": lambda m: _pkl(_global("builtins", "exec")
                                    + _tuple(_str(f"open({str(m)!r}, 'w').close()")) + b"R"),
    "builtins.eval-in-module": lambda m: _pkl(_module("M", {"weight": _global("builtins", "eval")
                                                            + _tuple(_str(f"open({str(m)!r}, 'w')")) + b"R"})),
    "subprocess.Popen": lambda m: _pkl(_global("subprocess", "Popen")
                                       + _tuple(_tuple(_str("touch"), _str(str(m)))) + b"R"),
    "inst-opcode": lambda m: b"(" + _str(f"touch {m}") + b"ios\nsystem\n.",
    "stack-global": lambda m: b"\x80\x04" + _str("os") + _str("system") + b"\x93"
                              + _tuple(_str(f"touch {m}")) + b"R.",
    "torch.load-in-pickle": lambda m: _pkl(_global("torch", "load") + _tuple(_str(str(m))) + b"R"),
    # Tensor.__setstate__ would call set_() with these: BUILD on a rebuilt tensor
    "setstate-on-tensor": lambda m: _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1]) + _tuple(
        _str(str(m)), _int(0), _tuple(_int(1 << 40)), _tuple(_int(1))) + b"b"})),
    # a module class called like a function: torch would construct it; here it never runs
    "reduce-on-module-class": lambda m: _pkl(_global("__torch__", "M") + _tuple(_str(str(m))) + b"R"),
}


_SAYS = {"inst-opcode": "os.system", "stack-global": "os.system", "builtins.eval-in-module": "builtins.eval",
         "torch.load-in-pickle": "torch.load",
         "setstate-on-tensor": "modifies a tensor", "reduce-on-module-class": "without its attributes"}


@pytest.mark.parametrize("case", list(_MALICIOUS))
def test_archive_that_calls_code_is_refused_naming_the_call_and_nothing_runs(tmp_path, case):
    """torch's own TorchScript unpickler failed on these with messages blaming truncation (or an
    internal assert); the reader says what the archive asks for, and never resolves it."""
    from personsearch.model import load_clip

    marker = tmp_path / "PWNED"
    path = _archive(tmp_path / "evil.pt", _MALICIOUS[case](marker))
    before = tree_digest(path)
    with pytest.raises(InputError) as caught:
        load_clip(path, image_size=TINY_IMAGE_SIZE, stride=8)
    message = str(caught.value)
    assert "evil.pt" in message and _SAYS.get(case, case) in message and "truncated" not in message
    assert not marker.exists(), "loading the archive ran its code"
    assert tree_digest(path) == before


def _hostile(name: str, tmp_path: Path) -> Path:
    weight = {"training": b"\x89"}
    path = tmp_path / f"{name}.pt"
    if name == "missing-storage":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("7", 4, [4], [1]), **weight})))
    if name == "storage-size-mismatch":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 1 << 40, [4], [1]), **weight})))
    if name == "storage-bytes-short":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 8, [8], [1]), **weight})))
    if name == "size-beyond-storage":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [1 << 30], [1]), **weight})))
    if name == "stride-beyond-storage":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [2, 2], [1 << 40, 1]), **weight})))
    if name == "offset-beyond-storage":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1], offset=2**61), **weight})))
    if name == "negative-size":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [-4], [1]), **weight})))
    if name == "broadcast-bomb":  # stride 0 views: a few bytes claiming terabytes
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [1 << 20, 1 << 20], [0, 0]),
                                                 **weight})))
    if name == "storage-key-path":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("../../etc/passwd", 4, [4], [1]), **weight})))
    if name == "compressed-storage":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1]), **weight})),
                        compress_storage=True)
    if name == "dotdot-entry":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1]), **weight})),
                        extra={"archive/../../escape": b"x"})
    if name == "absolute-entry":
        return _archive(path, _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1]), **weight})),
                        extra={"/etc/cron.d/evil": b"x"})
    if name == "self-containing-module":  # BUILD a module whose attribute is itself (memo 0)
        body = _global("__torch__", "M") + b")\x81q\x00}(" + _str("child") + b"h\x00" + _str("training") \
            + b"\x89ub"
        return _archive(path, _pkl(body), code="class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n")
    if name == "huge-data-pkl":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * (9 << 20) + b"N.",
                             compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr("archive/code/__torch__.py", _CODE)
        return path
    if name == "not-a-module":
        return _archive(path, _pkl(_str("just text")))
    if name == "tuple-state":
        return _archive(path, _pkl(_global("__torch__", "M") + b")\x81" + _tuple(_tensor("0", 4, [4], [1]))
                                   + b"b"))
    if name == "quantized":
        return _archive(path, _pkl(_module("M", {"weight": _global("torch._utils", "_rebuild_qtensor")
                                                 + _tuple() + b"R"})))
    if name == "truncated":
        good = _archive(tmp_path / "good.pt", _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1])})))
        data = good.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        return path
    if name == "garbage-pickle":
        return _archive(path, b"\x80\x02\xff\xfe garbage")
    raise AssertionError(name)


@pytest.mark.parametrize("name", [
    "missing-storage", "storage-size-mismatch", "storage-bytes-short", "size-beyond-storage",
    "stride-beyond-storage", "offset-beyond-storage", "negative-size", "broadcast-bomb", "storage-key-path",
    "compressed-storage", "dotdot-entry", "absolute-entry", "self-containing-module",
    "huge-data-pkl", "not-a-module", "tuple-state", "quantized", "truncated", "garbage-pickle",
])
def test_hostile_archive_structure_is_a_clear_error_naming_the_file(tmp_path, name):
    from personsearch.model.torchscript import read_torchscript

    path = _hostile(name, tmp_path)
    before = tree_digest(path)
    with pytest.raises(InputError) as caught:
        read_torchscript(path)
    assert path.name in str(caught.value)
    assert tree_digest(path) == before
    assert not (tmp_path.parent / "escape").exists()


def test_memo_index_near_four_billion_costs_nothing(tmp_path):
    """LONG_BINPUT 2**32-1: the C unpickler would size its memo array to it (tens of GB)."""
    from personsearch.model.torchscript import read_torchscript

    body = b"N" + b"r\xff\xff\xff\xff" + b"0" + _module("M", {"weight": _tensor("0", 4, [4], [1])})
    state = read_torchscript(_archive(tmp_path / "memo.pt", _pkl(body)))
    assert state["weight"].tolist() == [1, 2, 3, 4]


def test_hostile_archive_through_the_cli_names_the_file(tmp_path):
    path = _hostile("size-beyond-storage", tmp_path)
    assert_input_error(invoke("explain-mask", "a man", "--weights", path), "size-beyond-storage.pt")


@pytest.mark.parametrize("how", ["many-entries", "huge-directory"])
def test_archive_with_a_huge_index_is_refused_before_zipfile_reads_it(tmp_path, monkeypatch, how):
    from personsearch.model import load_clip, torchscript

    path = _archive(tmp_path / "many.pt", _pkl(_module("M", {"weight": _tensor("0", 4, [4], [1])})),
                    extra={f"archive/extra/{i}": b"" for i in range(40)})
    if how == "many-entries":
        monkeypatch.setattr(torchscript, "MAX_ENTRIES", 30)
    else:  # the end record claims a 4 GB central directory
        data = bytearray(path.read_bytes())
        at = data.rfind(b"PK\x05\x06")
        data[at + 12 : at + 16] = struct.pack("<L", 0xFFFFFFF0)
        path.write_bytes(bytes(data))
    opened = []
    real = zipfile.ZipFile.__init__
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda self, *a, **k: opened.append(a) or real(self, *a, **k))
    with pytest.raises(InputError, match="many.pt.*entries"):
        torchscript.read_torchscript(path)
    with pytest.raises(InputError, match="many.pt.*entries"):
        load_clip(path)
    assert not opened, "the zip index was read before its size was checked"


# --------------------------------------------------------------------------------------------
# safetensors headers are validated before safetensors allocates anything


def _safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


_F32 = struct.pack("<f", 1.0)
_HEADERS = {
    "length-beyond-file": dict(header={"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                               data=_F32, length=10**6),
    "length-over-100MB": dict(header=b"{}", length=1 << 40),
    "not-json": dict(header=b"{nope"),
    "not-an-object": dict(header=b"[1, 2]"),
    "unknown-dtype": dict(header={"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}}, data=_F32),
    "negative-dim": dict(header={"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, data=_F32),
    "float-dim": dict(header={"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, data=_F32),
    "bool-dim": dict(header={"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, data=_F32),
    "dim-beyond-int64": dict(header={"w": {"dtype": "F32", "shape": [2**70, 0], "data_offsets": [0, 0]},
                                     "v": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, data=_F32),
    "nan-dim": dict(header=b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', data=_F32),
    "offsets-beyond-file": dict(header={"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}},
                                data=_F32),
    "offsets-disagree-with-shape": dict(header={"w": {"dtype": "F32", "shape": [2**31, 2**31],
                                                      "data_offsets": [0, 4]}}, data=_F32),
    "overlapping": dict(header={"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, data=_F32),
    "gap": dict(header={"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, data=_F32 * 2),
    "trailing-bytes": dict(header={"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, data=_F32 * 3),
    "duplicate-name": dict(header=b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                  b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', data=_F32),
    "metadata-not-text": dict(header={"__metadata__": {"a": 1},
                                      "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, data=_F32),
    "extra-field": dict(header={"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, data=_F32),
    "offsets-not-pair": dict(header={"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, data=_F32),
    "empty-file": dict(header=b"", length=None),
}


@pytest.mark.parametrize("case", list(_HEADERS))
def test_hostile_safetensors_header_is_refused_before_the_loader_runs(tmp_path, monkeypatch, case):
    import safetensors.torch

    from personsearch.model import load_clip

    spec = _HEADERS[case]
    path = tmp_path / "weights.safetensors"
    if case == "empty-file":
        path.write_bytes(b"\x01\x00")
    else:
        _safetensors(path, spec["header"], spec.get("data", b""), spec.get("length"))
    calls = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(InputError) as caught:
        load_clip(path, image_size=TINY_IMAGE_SIZE, stride=8)
    assert "weights.safetensors" in str(caught.value)
    assert not calls, "safetensors' loader ran on an unchecked header"


def test_valid_safetensors_still_loads_and_state_files_are_checked_too(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from personsearch.engine import state

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(2), "b": torch.zeros(0), "c": torch.arange(3)}, str(good), metadata={"k": "v"})
    loaded = state._load_tensors(good)
    assert loaded["a"].tolist() == [1, 1] and loaded["b"].numel() == 0 and loaded["c"].tolist() == [0, 1, 2]
    bad = _safetensors(tmp_path / "model.safetensors", _HEADERS["overlapping"]["header"], _F32)
    with pytest.raises(InputError, match="model.safetensors.*overlaps"):
        state._load_tensors(bad)


# --------------------------------------------------------------------------------------------
# integrity: a run's weights replaced behind its back are refused


def _run_copy(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def _replace_weights(path: Path, how: str = "other") -> None:
    """Put other weights where a run's weights were (breaking the hard link first)."""
    from safetensors.torch import load_file, save_file

    data = path.read_bytes()
    path.unlink()
    if how == "flip":  # same size, one bit changed in the last tensor's data
        changed = bytearray(data)
        changed[-1] ^= 1
        path.write_bytes(bytes(changed))
        return
    path.write_bytes(data)
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.endswith("text_projection"))
    tensors[name] = tensors[name] * 2
    path.unlink()
    save_file(tensors, str(path), metadata={"format": "personsearch-checkpoint"})


@pytest.mark.parametrize("how", ["other", "flip"])
def test_replaced_weights_are_refused_by_every_reader(trained_run, tmp_path, how):
    from personsearch.model import load_clip
    from personsearch.runs import load_trained, read_weights_meta

    run = _run_copy(trained_run, tmp_path)
    folder = run / "checkpoints"
    for tag in ("best", "last"):
        if (folder / f"{tag}.safetensors").exists():
            _replace_weights(folder / f"{tag}.safetensors", how)
    before = tree_digest(run)
    tag = "best" if (folder / "best.safetensors").exists() else "last"
    readers = [lambda: read_weights_meta(run), lambda: load_trained(run), lambda: load_clip(run, image_size=(64, 32)),
               lambda: load_clip(folder / f"{tag}.safetensors", image_size=(64, 32)),
               lambda: load_trained(folder / f"{tag}.safetensors")]
    for read in readers:
        with pytest.raises(InputError, match=f"{tag}.safetensors does not match what the run recorded"):
            read()
    assert_input_error(invoke("eval", run, "--json"), f"{tag}.safetensors", "does not match", "re-train")
    assert_input_error(invoke("explain-mask", "a man", "--run", run), "does not match")
    assert tree_digest(run) == before


def test_replaced_state_weights_are_refused_on_resume(trained_run, tmp_path):
    from personsearch.engine.state import load_training_state

    run = _run_copy(trained_run, tmp_path)
    checkpoint = load_training_state(run)
    assert checkpoint is not None and checkpoint.meta.get("weights_sha256")
    _replace_weights(checkpoint.path / "model.safetensors")
    with pytest.raises(InputError, match="model.safetensors does not match what the run recorded"):
        checkpoint.model_state()
    before = tree_digest(run)
    assert_input_error(invoke("train", "--resume", run), "model.safetensors", "does not match")
    assert tree_digest(run) == before


def test_verification_is_cached_per_file_version(trained_run, tmp_path, monkeypatch):
    import hashlib

    from personsearch.runs import read_weights_meta

    run = _run_copy(trained_run, tmp_path)
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    weights, _ = read_weights_meta(run)
    read_weights_meta(run)
    assert len(hashed) == 1
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # a new version of the file: hashed again
    read_weights_meta(run)
    assert len(hashed) == 2


def _linear_state():  # noqa: ANN202
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_killed_between_record_and_weights_is_refused_then_completed_by_the_trainer(tmp_path, monkeypatch):
    """Killed after best.json named the new state folder, before best.safetensors was linked to it:
    readers refuse the pair (never guessing), the next save of the trainer completes it."""
    from personsearch import runs
    from personsearch.engine import state

    run = tmp_path / "run"
    model, optimizer = _linear_state()
    state.save_training_state(run, model, optimizer, {"epoch": 1, "step": 1, "scheduler": {}}, best=True)
    with torch.no_grad():
        model.weight.add_(1)
    real = state._link_or_copy

    def killed_at_best(source: Path, target: Path) -> None:
        if target.name == "best.safetensors":
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(state, "_link_or_copy", killed_at_best)
    with pytest.raises(KeyboardInterrupt):
        state.save_training_state(run, model, optimizer, {"epoch": 2, "step": 2, "scheduler": {}}, best=True)
    monkeypatch.undo()
    folder = run / "checkpoints"
    assert json.loads((folder / "best.json").read_text())["state"] == "state-00000002"
    with pytest.raises(InputError, match="best.safetensors does not match .*train --resume"):
        runs.read_weights_meta(run, "best")
    state.save_training_state(run, model, optimizer, {"epoch": 3, "step": 3, "scheduler": {}}, best=False)
    weights, meta = runs.read_weights_meta(run, "best")
    assert meta["state"] == "state-00000002"
    assert torch.equal(state._load_tensors(weights)["weight"], model.weight.detach())


def test_weights_replaced_while_being_read_are_refused(trained_run, tmp_path, monkeypatch):
    from personsearch.model import checkpoints, load_clip

    run = _run_copy(trained_run, tmp_path)
    real = checkpoints.read_weights_file

    def read_then_replace(path: Path, *args, **kwargs):  # noqa: ANN202
        content = real(path, *args, **kwargs)
        _replace_weights(path)
        return content

    monkeypatch.setattr(checkpoints, "read_weights_file", read_then_replace)
    with pytest.raises(InputError, match="changed while it was being read"):
        load_clip(run, image_size=(64, 32))


# --------------------------------------------------------------------------------------------
# weight files get the same permissions as every other output


@pytest.mark.parametrize("link", [True, False], ids=["hard-link", "copy"])
def test_checkpoint_files_are_written_with_the_usual_permissions(tmp_path, monkeypatch, link):
    from personsearch.engine import state

    if not link:
        monkeypatch.setattr(state.os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "cross-device")))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state.save_training_state(tmp_path / "run", model, optimizer, {"epoch": 1, "step": 4, "scheduler": {}},
                              best=True)
    mask = os.umask(0)
    os.umask(mask)
    folder = tmp_path / "run" / "checkpoints"
    names = ["state-00000004/model.safetensors", "state-00000004/optimizer.safetensors", "state-00000004/state.json",
             "last.safetensors", "last.json", "best.safetensors", "best.json"]
    modes = {name: oct((folder / name).stat().st_mode & 0o777) for name in names}
    assert modes == {name: oct(0o666 & ~mask) for name in names}


# --------------------------------------------------------------------------------------------
# damaged records are named, with what to do


def _edit_json(path: Path, change) -> None:  # noqa: ANN001
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


_BAD_RECORDS = {
    "not-json": lambda p: p.write_text("{not json"),
    "a-list": lambda p: p.write_text("[1, 2]"),
    "not-utf8": lambda p: p.write_bytes(b"\xff\xfe{}"),
    "version-text": lambda p: _edit_json(p, lambda m: m.update(format_version="x")),
    "sha-missing": lambda p: _edit_json(p, lambda m: m.pop("weights_sha256")),
    "sha-number": lambda p: _edit_json(p, lambda m: m.update(weights_sha256=123)),
    "epoch-text": lambda p: _edit_json(p, lambda m: m.update(epoch="x")),
    "step-beyond-int64": lambda p: _edit_json(p, lambda m: m.update(step=10**30)),
    "epoch-nan": lambda p: p.write_text(p.read_text().replace('"epoch": ', '"epoch": NaN, "was": ', 1)),
    "huge-integer-text": lambda p: p.write_text('{"format_version": ' + "9" * 5000 + "}"),
    "state-escapes": lambda p: _edit_json(p, lambda m: m.update(state="../../../etc")),
    "metrics-text": lambda p: _edit_json(p, lambda m: m.update(metrics="R1 high")),
    "deeply-nested": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("case", list(_BAD_RECORDS))
def test_damaged_weights_record_is_named(trained_run, tmp_path, case):
    from personsearch.runs import read_weights_meta

    run = _run_copy(trained_run, tmp_path)
    folder = run / "checkpoints"
    for tag in ("best", "last"):
        if (folder / f"{tag}.json").exists():
            _BAD_RECORDS[case](folder / f"{tag}.json")
    with pytest.raises(InputError, match=r"damaged: .*\.json") as caught:
        read_weights_meta(run)
    assert "re-train" in str(caught.value)
    before = tree_digest(run)
    assert_input_error(invoke("eval", run, "--json"), ".json", "damaged")
    assert tree_digest(run) == before


def test_weights_without_their_record_and_record_without_weights_are_named(trained_run, tmp_path):
    from personsearch.model import load_clip
    from personsearch.runs import read_weights_meta

    run = _run_copy(trained_run, tmp_path)
    folder = run / "checkpoints"
    tag = "best" if (folder / "best.json").exists() else "last"
    (folder / f"{tag}.json").rename(tmp_path / "record.json")
    for read in (lambda: read_weights_meta(run, tag), lambda: load_clip(run, image_size=(64, 32))):
        with pytest.raises(InputError, match=f"{tag}.safetensors has no {tag}.json"):
            read()
    (tmp_path / "record.json").rename(folder / f"{tag}.json")
    (folder / f"{tag}.safetensors").unlink()
    for state in folder.glob("state-*"):
        shutil.rmtree(state)
    for read in (lambda: read_weights_meta(run, tag), lambda: load_clip(run, image_size=(64, 32))):
        with pytest.raises(InputError, match=f"{tag}.json exists but {tag}.safetensors is missing"):
            read()


_BAD_STATES = {
    "not-json": lambda p: p.write_text("{not json"),
    "epoch-text": lambda p: _edit_json(p, lambda m: m.update(epoch="x")),
    "step-missing": lambda p: _edit_json(p, lambda m: m.pop("step")),
    "step-beyond-int64": lambda p: _edit_json(p, lambda m: m.update(step=2**64)),
    "epoch-nan": lambda p: p.write_text(p.read_text().replace('"epoch": ', '"epoch": NaN, "was": ', 1)),
    "scheduler-missing": lambda p: _edit_json(p, lambda m: m.pop("scheduler")),
    "optimizer-groups-text": lambda p: _edit_json(p, lambda m: m["optimizer"].update(param_groups="x")),
    "optimizer-scalars-bad": lambda p: _edit_json(p, lambda m: m["optimizer"].update(scalars={"x": 1})),
    "huge-integer-text": lambda p: p.write_text('{"epoch": ' + "9" * 5000 + "}"),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("case", list(_BAD_STATES))
def test_damaged_state_json_is_named_with_how_to_recover(trained_run, tmp_path, case):
    from personsearch.engine.state import load_training_state

    run = _run_copy(trained_run, tmp_path)
    state_json = next((run / "checkpoints").glob("state-*")) / "state.json"
    _BAD_STATES[case](state_json)
    with pytest.raises(InputError, match=r"checkpoint is damaged: .*state-\d+/state.json") as caught:
        load_training_state(run)
    assert "new run" in str(caught.value)
    before = tree_digest(run)
    assert_input_error(invoke("train", "--resume", run), "state.json", "damaged")
    assert tree_digest(run) == before


def test_optimizer_tensor_with_a_foreign_name_is_named(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from personsearch.engine.state import load_training_state

    run = _run_copy(trained_run, tmp_path)
    checkpoint = load_training_state(run)
    path = checkpoint.path / "optimizer.safetensors"
    tensors = load_file(str(path))
    tensors["evil"] = torch.zeros(1)
    path.unlink()
    save_file(tensors, str(path))
    template = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(InputError, match="optimizer.safetensors holds a tensor named 'evil'"):
        checkpoint.optimizer_state(template)


def test_sha256_of_the_recorded_weights_matches_the_file(trained_run):
    """The record the checks rely on: state.json and last.json hold the hash of the saved weights."""
    folder = trained_run / "checkpoints"
    state_dir = next(folder.glob("state-*"))
    digest = hashlib.sha256((state_dir / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads((state_dir / "state.json").read_text())["weights_sha256"] == digest
    assert json.loads((folder / "last.json").read_text())["weights_sha256"] == digest
