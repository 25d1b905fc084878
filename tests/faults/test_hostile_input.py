"""Hostile and broken input, verb by verb: each case gets one clear message (exit 2, no traceback)
or, where the verb promises it, is reported and skipped; nothing the user gave is modified and no
partial output appears."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.helpers import tree_digest

from ._support import assert_input_error, invoke, tiny_sets
from ._support import raw_entries as _entries

pytestmark = pytest.mark.faults


# --------------------------------------------------------------------------------------------
# prepare: annotation entries and image files




def _save_entries(raw: Path, entries: list[dict]) -> None:
    (raw / "reid_raw.json").write_text(json.dumps(entries))


def _prepare_json(raw: Path, out: Path, *extra: str) -> dict:
    result = invoke("prepare", "CUHK-PEDES", "--root", raw, "--out", out, "--json", "--workers", "1", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _problem_of(report: dict, entry: int) -> str:
    found = [p["problem"] for p in report["problems"] if p["entry"] == entry]
    assert found, f"entry {entry} not reported: {report['problems']}"
    return found[0]


def _png_bomb() -> bytes:
    """A valid-looking PNG header declaring 60,000 x 60,000 pixels (3.6 gigapixels) over a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 60_001 * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("label", "escape"),
    [("dotdot", "../../../../etc/passwd"), ("absolute", "/etc/passwd"), ("symlink", "synthetic/link.jpg")],
)
def test_prepare_refuses_image_paths_outside_the_dataset(raw_copy, tmp_path, label, escape):
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (32, 64), "red").save(outside)
    (raw_copy / "imgs" / "synthetic" / "link.jpg").symlink_to(outside)
    entries = _entries(raw_copy)
    entries[3]["file_path"] = escape
    _save_entries(raw_copy, entries)
    before = tree_digest(raw_copy)

    report = _prepare_json(raw_copy, tmp_path / "out")
    problem = _problem_of(report, 3)
    assert "outside" in problem or "leaves the dataset" in problem, problem
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert all(e["entry"] != 3 for e in manifest["entries"])
    assert all(".." not in e["path"] and not e["path"].startswith("/") for e in manifest["entries"])

    strict = invoke("prepare", "CUHK-PEDES", "--root", raw_copy, "--out", tmp_path / "strict", "--strict")
    assert_input_error(strict, "entry 3")
    assert not (tmp_path / "strict").exists()
    assert tree_digest(raw_copy) == before


def _image_bytes(kind: str) -> bytes:
    if kind == "zero-byte":
        return b""
    if kind == "html":
        return b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n"
    if kind == "truncated":
        buffer = io.BytesIO()
        Image.new("RGB", (32, 64), "blue").save(buffer, "JPEG")
        return buffer.getvalue()[:200]
    if kind == "bomb":
        return _png_bomb()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["zero-byte", "html", "truncated", "bomb"])
def test_prepare_reports_and_skips_unusable_images(raw_copy, tmp_path, kind):
    entries = _entries(raw_copy)
    (raw_copy / "imgs" / entries[5]["file_path"]).write_bytes(_image_bytes(kind))
    before = tree_digest(raw_copy)
    report = _prepare_json(raw_copy, tmp_path / "out")
    problem = _problem_of(report, 5)
    expected = {"zero-byte": "empty", "html": "not an image", "truncated": "truncated", "bomb": "too large"}
    assert expected[kind] in problem.lower(), problem
    assert sum(s["images"] for s in report["splits"].values()) == len(entries) - 1
    assert tree_digest(raw_copy) == before


def test_decompression_bomb_is_refused_when_loading():
    from personsearch.data.transforms import ImageLoadError, load_rgb

    with pytest.raises(ImageLoadError, match="too large"):
        load_rgb(io.BytesIO(_png_bomb()))


def _encoded(image: Image.Image, fmt: str, **kwargs) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    buffer.seek(0)
    return buffer


def test_odd_image_modes_are_converted_correctly():
    from personsearch.data.transforms import load_rgb

    # EXIF orientation 6 (rotate 90° clockwise to display): a 40x20 stored image shows as 20x40,
    # its left (red) half on top.
    stored = Image.new("RGB", (40, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = load_rgb(_encoded(stored, "JPEG", exif=exif, quality=95))
    assert upright.mode == "RGB" and upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60

    cmyk = load_rgb(_encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[4, 4, 0] > 200 and np.asarray(cmyk)[4, 4, 1] < 60

    grey = load_rgb(_encoded(Image.new("L", (8, 8), 100), "PNG"))
    assert grey.mode == "RGB" and tuple(np.asarray(grey)[0, 0]) == (100, 100, 100)

    clear = load_rgb(_encoded(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"))
    assert tuple(np.asarray(clear)[0, 0]) == (255, 255, 255)  # transparent over white
    half = load_rgb(_encoded(Image.new("LA", (8, 8), (0, 128)), "PNG"))
    assert abs(int(np.asarray(half)[0, 0, 0]) - 127) <= 1

    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    sixteen = load_rgb(_encoded(deep, "PNG"))
    assert sixteen.mode == "RGB" and tuple(np.asarray(sixteen)[0, 0]) == (255, 255, 255)
    mid = load_rgb(_encoded(Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)), "PNG"))
    assert tuple(np.asarray(mid)[0, 0]) == (128, 128, 128)


def test_prepare_accepts_odd_modes_in_a_dataset(raw_copy, tmp_path):
    entries = _entries(raw_copy)
    path = raw_copy / "imgs" / entries[0]["file_path"]
    Image.new("CMYK", (32, 64), (0, 255, 255, 0)).save(path, "JPEG")
    report = _prepare_json(raw_copy, tmp_path / "out", "--verify")
    assert report["problems"] == []


# --------------------------------------------------------------------------------------------
# prepare: the annotation file itself


def test_non_utf8_annotation_is_refused_with_the_offset(raw_copy, tmp_path):
    path = raw_copy / "reid_raw.json"
    data = path.read_bytes()
    at = data.index(b"A middle") if b"A middle" in data else 40
    path.write_bytes(data[:at] + b"\xff\xfe\xe9" + data[at:])
    before = tree_digest(raw_copy)
    result = invoke("prepare", "CUHK-PEDES", "--root", raw_copy, "--out", tmp_path / "out")
    assert_input_error(result, "reid_raw.json", "utf-8", f"offset {at}")
    assert not (tmp_path / "out").exists()
    assert tree_digest(raw_copy) == before


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_bom_prefixed_annotation_is_read(raw_copy, tmp_path, synthetic_raw, encoding):
    path = raw_copy / "reid_raw.json"
    path.write_bytes(path.read_text(encoding="utf-8").encode(encoding))
    plain = _prepare_json(synthetic_raw, tmp_path / "plain")
    report = _prepare_json(raw_copy, tmp_path / "bom")
    assert report == plain


def test_huge_annotation_file_is_refused_without_reading_it(raw_copy, tmp_path):
    path = raw_copy / "reid_raw.json"
    with open(path, "r+b") as handle:  # sparse: 2 GiB on paper, nothing on disk
        handle.truncate(2 * 2**30)
    result = invoke("prepare", "CUHK-PEDES", "--root", raw_copy, "--out", tmp_path / "out")
    assert_input_error(result, "reid_raw.json", "GiB")
    assert not (tmp_path / "out").exists()


def test_deeply_nested_annotation_json_is_a_clear_error(raw_copy, tmp_path):
    (raw_copy / "reid_raw.json").write_text("[" * 100_000 + "]" * 100_000)
    result = invoke("prepare", "CUHK-PEDES", "--root", raw_copy, "--out", tmp_path / "out")
    assert_input_error(result, "reid_raw.json")


# --------------------------------------------------------------------------------------------
# settings: YAML files, --set and the environment


def _alias_bomb() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 9):
        prev = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    lines.append("data: {root: *i}")
    return "\n".join(lines) + "\n"


CONFIG_CASES = {
    "alias-bomb": (_alias_bomb(), ["data.root"]),  # 72 aliases, 9**9 strings when expanded
    "many-aliases": ("a: &a x\nb: [" + ", ".join(["*a"] * 500) + "]\n", ["alias"]),
    "python-tag": ('optim: !!python/object/apply:os.system ["touch PWNED"]\n', ["config.yaml"]),
    "unknown-key": ("optim:\n  lr: 1e-5\n  learning_rate: 3\n", ["optim.learning_rate", "config.yaml:3"]),
    "wrong-type": ("train:\n  batch_size: lots\n", ["train.batch_size", "lots"]),
    "nan": ("optim:\n  lr: .nan\n", ["optim.lr"]),
    "inf": ("optim:\n  weight_decay: .inf\n", ["optim.weight_decay"]),
    "negative-batch": ("train:\n  batch_size: -4\n", ["train.batch_size"]),
    "negative-size": ("model:\n  image_size: [-384, 128]\n", ["model.image_size"]),
    "not-a-mapping": ("- just\n- a list\n", ["mapping"]),
    "malformed": ("optim:\n  lr: [1, 2\n", ["config.yaml", "line"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_files_are_rejected_with_the_key_named(tmp_path, case, monkeypatch):
    text, words = CONFIG_CASES[case]
    config = tmp_path / "config.yaml"
    config.write_text(text)
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = invoke("config", "show", "--config", config)
    assert_input_error(result, *words)
    assert not (tmp_path / "PWNED").exists()
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=-inf", "optim.lr"),
        ("train.epochs=0", "train.epochs"),
        ("index.shard_size=-1", "index.shard_size"),
        ("model.image_size=[0, 128]", "model.image_size"),
        ("masking.ratio=1.5", "masking.ratio"),
        ("optim.lrr=1e-5", "optim.lrr"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_set_overrides_are_rejected_with_the_key_named(item, key):
    assert_input_error(invoke("config", "show", "--set", item), key)


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("PERSONSEARCH_OPTIM__LR", "nan")
    assert_input_error(invoke("config", "show"), "optim.lr", "PERSONSEARCH_OPTIM__LR")


def test_train_refuses_a_batch_larger_than_the_dataset_and_leaves_no_run(prepared_tiny, tmp_path):
    before = tree_digest(prepared_tiny)
    result = invoke("train", "--data", prepared_tiny, "--name", "big",
                    *tiny_sets(f"runtime.output_dir={tmp_path}", "train.batch_size=100000"))
    assert_input_error(result, "train.batch_size", "100000")
    assert tree_digest(prepared_tiny) == before
    assert not (tmp_path / "big").exists(), "a refused run must not leave a run folder behind"


def test_train_refuses_a_prepared_dataset_from_a_newer_version(prepared_tiny, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = tree_digest(copy)
    result = invoke("train", "--data", copy, "--name", "new",
                    *tiny_sets(f"runtime.output_dir={tmp_path / 'runs'}"))
    assert_input_error(result, "version 99")
    assert tree_digest(copy) == before


# --------------------------------------------------------------------------------------------
# checkpoints and runs


class _RunsCode:
    """Unpickling this object calls ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    import torch

    from personsearch.errors import InputError
    from personsearch.model import load_clip

    marker = tmp_path / "PWNED"
    evil = tmp_path / "ViT-evil.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}, "payload": _RunsCode(marker)}, evil)
    before = tree_digest(evil)
    with pytest.raises(InputError) as caught:
        load_clip(evil)
    assert "ViT-evil.pt" in str(caught.value)
    assert not marker.exists(), "loading a checkpoint executed code"
    result = invoke("train", "--data", tmp_path, "--pretrained", evil)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not marker.exists()
    assert tree_digest(evil) == before


def _run_copy(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def test_truncated_safetensors_weights_are_refused(trained_run, tmp_path):
    run = _run_copy(trained_run, tmp_path)
    for tag in ("best", "last"):
        weights = run / "checkpoints" / f"{tag}.safetensors"
        data = weights.read_bytes()
        weights.unlink()  # break the hard link to the state folder before truncating
        weights.write_bytes(data[: len(data) // 2])
    before = tree_digest(run)
    result = invoke("eval", run, "--json")
    assert_input_error(result, "best.safetensors")
    assert tree_digest(run) == before


def test_weights_with_a_wrong_shape_name_the_first_mismatching_tensor(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from personsearch.io import sha256_file

    run = _run_copy(trained_run, tmp_path)
    for tag in ("best", "last"):
        weights = run / "checkpoints" / f"{tag}.safetensors"
        tensors = load_file(str(weights))
        name = next(k for k in tensors if k.endswith("transformer.resblocks.0.mlp.c_fc.weight") and "visual" not in k)
        tensors[name] = tensors[name][:-3].clone()
        weights.unlink()
        save_file(tensors, str(weights), metadata={"format": "personsearch-checkpoint"})
        record = weights.with_suffix(".json")  # re-recorded: a replaced file is refused before its shapes are read
        meta = json.loads(record.read_text())
        meta["weights_sha256"] = sha256_file(weights)
        record.write_text(json.dumps(meta))
    result = invoke("eval", run, "--json")
    assert_input_error(result, "resblocks.0.mlp.c_fc.weight")


def test_run_from_a_newer_checkpoint_format_says_which_version(trained_run, tmp_path):
    run = _run_copy(trained_run, tmp_path)
    for tag in ("best", "last"):
        meta_path = run / "checkpoints" / f"{tag}.json"
        meta = json.loads(meta_path.read_text())
        meta["format_version"] = 7
        meta_path.write_text(json.dumps(meta))
    assert_input_error(invoke("eval", run, "--json"), "version 7", "version 1")
    for state_json in (run / "checkpoints").glob("state-*/state.json"):
        meta = json.loads(state_json.read_text())
        meta["format_version"] = 7
        state_json.write_text(json.dumps(meta))
    before = tree_digest(run / "checkpoints")
    assert_input_error(invoke("--quiet", "train", "--resume", run), "version 7")
    assert tree_digest(run / "checkpoints") == before
