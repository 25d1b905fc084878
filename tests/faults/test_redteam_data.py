"""Red-team cases (R1) for prepare, image decoding and settings sources that the trust pass did
not list: special files where the annotation or an image should be, formats that run programs,
outputs that would overwrite inputs, moved raw datasets and YAML values no setting can hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests._raw_datasets import standard_records, write_image, write_raw
from tests.faults._support import REPO, assert_input_error, invoke, tiny_sets
from tests.helpers import tree_digest


def _raw(tmp_path: Path, fmt: str = "CUHK-PEDES") -> Path:
    return write_raw(tmp_path / fmt, fmt, standard_records(fmt, {"train": [1, 2], "test": [3, 4]}))


def _problems(root: Path, name: str = "CUHK-PEDES") -> dict[str, str]:
    result = invoke("prepare", name, "--root", root, "--check", "--json")
    assert result.exit_code == 0, result.output
    return {item["path"]: item["problem"] for item in json.loads(result.stdout)["problems"]}


# -------------------------------------------------------------------- the annotation file


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_annotation_that_is_a_special_file_is_named_as_such(tmp_path, kind):
    root = _raw(tmp_path)
    annotation = root / "reid_raw.json"
    annotation.unlink()
    if kind == "fifo":
        os.mkfifo(annotation)
    elif kind == "dev-zero":
        annotation.symlink_to("/dev/zero")
    else:
        annotation.mkdir()
    text = assert_input_error(invoke("prepare", "CUHK-PEDES", "--root", root, "--check"), "not a regular file")
    assert "not found" not in text


def test_reading_a_fifo_annotation_directly_never_blocks(tmp_path):
    """The library reader, called on a FIFO, refuses it instead of waiting for a writer."""
    fifo = tmp_path / "reid_raw.json"
    os.mkfifo(fifo)
    code = (
        "from personsearch.data.formats import load_annotation_list\n"
        "from personsearch.errors import InputError\n"
        f"try:\n    load_annotation_list({str(fifo)!r})\nexcept InputError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "not a regular file" in done.stdout, done.stderr


def test_no_usable_entries_names_the_first_problem(tmp_path):
    fmt = "RSTPReid"
    records = standard_records(fmt, {"train": [1], "test": [2]})
    root = write_raw(tmp_path / fmt, fmt, records)
    for record in records:  # paths written relative to the dataset folder instead of imgs/
        record["img_path"] = "imgs/" + record["img_path"]
    (root / "data_captions.json").write_text(json.dumps(records), encoding="utf-8")
    assert_input_error(invoke("prepare", fmt, "--root", root, "--check"), "first: entry 0", "image file not found",
                       "relative to")


# -------------------------------------------------------------------- images


def test_eps_is_never_handed_to_ghostscript(tmp_path):
    """An EPS file is PostScript, a program: Pillow would run Ghostscript on it when decoding."""
    from personsearch.data.transforms import ImageLoadError, load_rgb

    root = _raw(tmp_path)
    records = json.loads((root / "reid_raw.json").read_text())
    eps = root / "imgs" / records[0]["file_path"]
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 32\nshowpage\n")
    problems = _problems(root)
    assert "not an image file" in problems[records[0]["file_path"]]
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_rgb(eps)


def test_load_rgb_refuses_a_fifo_swapped_in_after_prepare_without_blocking(tmp_path):
    fifo = tmp_path / "a.jpg"
    os.mkfifo(fifo)
    code = (
        "from personsearch.data.transforms import ImageLoadError, load_rgb\n"
        f"try:\n    load_rgb({str(fifo)!r})\nexcept ImageLoadError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "not a regular file" in done.stdout, done.stderr


def test_odd_but_valid_images_decode_to_rgb(tmp_path):
    """Multi-frame GIF/TIFF/APNG, WebP, 1x1, 100000x1, palette with transparency, bad EXIF
    orientation: each becomes one upright RGB image the transform accepts."""
    from personsearch.data.transforms import build_transform, load_rgb

    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 16, 3), dtype=np.uint8))
    frames = [pixels, Image.new("RGB", (16, 32), (255, 0, 0))]
    made = {
        "anim.gif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], format="GIF"),
        "anim.png": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], format="PNG"),
        "multi.tif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], format="TIFF"),
        "x.webp": lambda p: pixels.save(p, format="WEBP"),
        "one.png": lambda p: Image.new("RGB", (1, 1)).save(p),
        "wide.png": lambda p: Image.new("RGB", (100_000, 1)).save(p),
        "pal.png": lambda p: pixels.convert("P").save(p, transparency=0),
    }

    def exif(path: Path) -> None:
        tags = Image.Exif()
        tags[0x0112] = 9999  # no such orientation
        pixels.save(path, format="JPEG", exif=tags)

    made["exif.jpg"] = exif
    transform = build_transform((64, 32))
    for name, write in made.items():
        write(tmp_path / name)
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB", name
        assert tuple(transform(image).shape) == (3, 64, 32), name


def test_a_missing_image_names_a_near_miss_on_disk(tmp_path):
    root = _raw(tmp_path)
    records = json.loads((root / "reid_raw.json").read_text())
    nfd = unicodedata.normalize("NFD", "cam0/café.jpg")
    write_image(root / "imgs" / nfd, 0)
    write_image(root / "imgs" / "cam0" / "Upper.JPG", 1)
    records.append({"id": 1, "split": "train", "file_path": unicodedata.normalize("NFC", "cam0/café.jpg"),
                    "captions": ["a man in a red coat"]})
    records.append({"id": 1, "split": "train", "file_path": "cam0/upper.jpg", "captions": ["a man in a coat"]})
    (root / "reid_raw.json").write_text(json.dumps(records), encoding="utf-8")
    problems = _problems(root)
    assert "Unicode form" in problems[unicodedata.normalize("NFC", "cam0/café.jpg")]
    assert "'Upper.JPG' is there" in problems["cam0/upper.jpg"]


# -------------------------------------------------------------------- a prepared dataset whose raw images moved


def test_train_on_a_prepared_dataset_whose_raw_folder_moved_is_one_clear_message(tmp_path):
    from personsearch.data.prepared import PreparedDataset
    from personsearch.errors import InputError

    root = _raw(tmp_path)
    out = tmp_path / "prepared"
    assert invoke("prepare", "CUHK-PEDES", "--root", root, "--out", out).exit_code == 0
    root.rename(tmp_path / "renamed")
    with pytest.raises(InputError, match="moved or renamed"):
        PreparedDataset.load(out)
    runs = tmp_path / "runs"
    result = invoke("train", "--data", out, *tiny_sets(f"runtime.output_dir={runs}"))
    assert_input_error(result, "moved or renamed", "--root NEW_PLACE")
    assert not runs.exists() or not any(runs.iterdir())
    assert PreparedDataset.load(out, raw_root=tmp_path / "renamed").raw_root == (tmp_path / "renamed").resolve()


# -------------------------------------------------------------------- prepare synthetic --preview


@pytest.mark.parametrize("target", ["out", "out/manifest.json", "out/raw/reid_raw.json", "root/x.png"])
def test_preview_that_would_overwrite_an_output_or_input_is_refused_before_drawing(tmp_path, target):
    out, root = tmp_path / "out", tmp_path / "root"
    args = ["prepare", "synthetic", "--out", out, "--ids", "3", "--preview", tmp_path / target]
    if target.startswith("root"):
        args += ["--root", root]
    assert_input_error(invoke(*args), "--preview")
    assert not out.exists() and not root.exists()


def test_preview_into_an_existing_prepared_dataset_leaves_it_intact(tmp_path):
    out = tmp_path / "out"
    assert invoke("prepare", "synthetic", "--out", out, "--ids", "3").exit_code == 0
    before = tree_digest(out)
    assert_input_error(invoke("prepare", "synthetic", "--out", out, "--ids", "3", "--preview", out / "manifest.json"),
                       "--preview")
    assert tree_digest(out) == before


def test_synthetic_ids_are_bounded(tmp_path):
    from personsearch.data.synthetic import generate_raw_dataset
    from personsearch.errors import InputError

    result = invoke("prepare", "synthetic", "--out", tmp_path / "out", "--ids", "1000000000")
    assert result.exit_code == 2 and "--ids" in result.output
    with pytest.raises(InputError, match="at most"):
        generate_raw_dataset(tmp_path / "raw", ids=10**9)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------- settings: YAML values no setting holds


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("data:\n  root: !!binary aGVsbG8=\n", ["data.root", "!!binary"]),
        ("model:\n  image_size: !!set {64: null, 32: null}\n", ["model.image_size", "!!set"]),
        ("optim:\n  yes: 2\n", ["key True in optim", "not a setting name"]),
        ("optim:\n  1: 2\n", ["key 1 in optim", "cfg.yaml:2"]),
        ("optim:\n  ~: 2\n", ["key None in optim"]),
    ],
)
def test_yaml_values_no_setting_can_hold_are_refused_by_key(tmp_path, text, words):
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    text_out = assert_input_error(invoke("config", "show", "--config", path, "--json"), *words)
    assert "from defaults" not in text_out


def test_an_unordered_set_from_env_or_set_is_refused(monkeypatch):
    """A set's order follows PYTHONHASHSEED: image_size [64, 32] one run, [32, 64] the next."""
    monkeypatch.setenv("PERSONSEARCH_MODEL__IMAGE_SIZE", '!!set {"64": null, "32": null}')
    assert_input_error(invoke("config", "show", "--json"), "PERSONSEARCH_MODEL__IMAGE_SIZE", "!!set")
    monkeypatch.delenv("PERSONSEARCH_MODEL__IMAGE_SIZE")
    assert_input_error(invoke("config", "show", "--set", "model.image_size=!!set {64: null, 32: null}"), "!!set")


def test_merge_keys_inside_a_section_still_work(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  <<: {lr: 1.0e-5}\n", encoding="utf-8")
    result = invoke("config", "show", "--config", path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["optim"]["lr"] == pytest.approx(1e-5)


def test_a_run_config_edited_with_a_set_is_refused(tmp_path):
    from personsearch.errors import InputError
    from personsearch.runs import load_run_settings

    (tmp_path / "config.yaml").write_text("model:\n  image_size: !!set {384: null, 128: null}\n", encoding="utf-8")
    with pytest.raises(InputError, match="!!set"):
        load_run_settings(tmp_path)


def test_copy_of_tree_is_untouched_by_check(tmp_path):
    """--check over a dataset full of odd files reads, never writes."""
    root = _raw(tmp_path)
    os.mkfifo(root / "imgs" / "cam0" / "pipe.jpg")
    (root / "imgs" / "cam0" / "dir.jpg").mkdir()
    records = json.loads((root / "reid_raw.json").read_text())
    records += [{"id": 1, "split": "train", "file_path": name, "captions": ["a man"]}
                for name in ("cam0/pipe.jpg", "cam0/dir.jpg")]
    (root / "reid_raw.json").write_text(json.dumps(records), encoding="utf-8")
    before = tree_digest(root)
    problems = _problems(root)
    assert problems["cam0/pipe.jpg"] == problems["cam0/dir.jpg"] == "image path is not a regular file"
    assert tree_digest(root) == before
    shutil.rmtree(root)
