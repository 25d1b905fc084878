"""The generic benchmark reader: format lookup, annotation parsing and per-entry problems."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _raw_datasets import standard_records, write_image, write_raw
from personsearch.data import formats
from personsearch.data.formats import locate_annotation, read_annotations, resolve_format
from personsearch.errors import InputError


def read(root: Path, fmt: str = "CUHK-PEDES", verify: bool = False):
    spec = resolve_format(fmt)
    folder, annotation = locate_annotation(spec, root)
    return read_annotations(spec, folder, annotation, verify=verify, workers=2)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cuhk_pedes", "CUHK-PEDES"),
        ("CUHKPEDES", "CUHK-PEDES"),
        ("icfg-pedes", "ICFG-PEDES"),
        ("RSTP_Reid", "RSTPReid"),
    ],
)
def test_format_names(given, expected):
    assert resolve_format(given).name == expected


def test_unknown_format():
    with pytest.raises(InputError, match="unknown dataset format 'market'"):
        resolve_format("market")


def test_root_is_folder_or_parent_and_icfg_alternative_name(tmp_path):
    write_raw(tmp_path / "CUHK-PEDES", "CUHK-PEDES", standard_records("CUHK-PEDES", {"train": [1]}))
    spec = resolve_format("cuhk-pedes")
    assert locate_annotation(spec, tmp_path)[0] == (tmp_path / "CUHK-PEDES").resolve()
    assert locate_annotation(spec, tmp_path / "CUHK-PEDES")[1].name == "reid_raw.json"
    icfg = tmp_path / "icfg"
    write_raw(icfg, "ICFG-PEDES", standard_records("ICFG-PEDES", {"train": [1]}))
    os.rename(icfg / "ICFG-PEDES.json", icfg / "ICFG_PEDES.json")
    assert locate_annotation(resolve_format("icfg_pedes"), icfg)[1].name == "ICFG_PEDES.json"
    with pytest.raises(InputError, match="dataset root not found: .*nowhere"):
        locate_annotation(spec, tmp_path / "nowhere")
    with pytest.raises(InputError, match="annotation file not found: expected .*data_captions.json"):
        locate_annotation(resolve_format("rstpreid"), icfg)


def test_annotation_file_encodings_and_syntax(tmp_path):
    root = write_raw(tmp_path / "d", "CUHK-PEDES", standard_records("CUHK-PEDES", {"train": [1, 2]}))
    path = root / "reid_raw.json"
    text = path.read_text(encoding="utf-8")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    records, problems = read(root)
    assert len(records) == 4 and not problems
    path.write_bytes(text.encode("utf-16"))
    assert len(read(root)[0]) == 4
    path.write_bytes(text.replace("red", "r\xe9d").encode("latin-1"))
    with pytest.raises(InputError, match=r"not UTF-8 text: invalid byte 0xe9 at offset \d+"):
        read(root)
    path.write_text('[\n  {"id": 1,\n  "split": }\n]', encoding="utf-8")
    with pytest.raises(InputError, match="malformed JSON at line 3, column 12"):
        read(root)
    path.write_text('{"images": []}', encoding="utf-8")
    with pytest.raises(InputError, match="expected a JSON list"):
        read(root)


def test_huge_annotation_file_refused(tmp_path, monkeypatch):
    root = write_raw(tmp_path / "d", "CUHK-PEDES", standard_records("CUHK-PEDES", {"train": [1]}))
    monkeypatch.setattr(formats, "MAX_ANNOTATION_BYTES", 10)
    with pytest.raises(InputError, match="over 1 GiB are refused"):
        read(root)


def test_every_entry_problem_is_reported_and_skipped(tmp_path):
    root = tmp_path / "CUHK-PEDES"
    good = standard_records("CUHK-PEDES", {"train": [1, 2], "test": [7]}, images_per_id=1)
    bad = [
        "not an object",
        {"id": 3, "split": "train", "captions": ["a man"]},  # 4: no file_path
        {"id": "3", "split": "train", "file_path": "x/3.jpg", "captions": ["a man"]},  # 5: id as text
        {"id": True, "split": "train", "file_path": "x/4.jpg", "captions": ["a man"]},  # 6: bool id
        {"id": 3, "split": "holdout", "file_path": "x/5.jpg", "captions": ["a man"]},  # 7
        {
            "id": 3,
            "split": "train",
            "file_path": "x/6.jpg",
            "captions": ["  ", "a man in black"],
        },  # 8: one empty
        {"id": 3, "split": "train", "file_path": "x/7.jpg", "captions": ["", "\t"]},  # 9: all empty
        {"id": 3, "split": "train", "file_path": "cam1/0001_0.jpg", "captions": ["dup"]},  # 10: duplicate
        {"id": 3, "split": "train", "file_path": "../secret.jpg", "captions": ["escape"]},  # 11
        {"id": 3, "split": "train", "file_path": "/etc/passwd", "captions": ["absolute"]},  # 12
        {"id": 3, "split": "train", "file_path": "x/missing.jpg", "captions": ["missing"]},  # 13
        {"id": 3, "split": "train", "file_path": "x/empty.jpg", "captions": ["empty"]},  # 14
        {"id": 3, "split": "train", "file_path": "x/text.jpg", "captions": ["text"]},  # 15
        {"id": 3, "split": "train", "file_path": "x/cut.jpg", "captions": ["truncated"]},  # 16
        {"id": 3, "split": "train", "file_path": "x/link.jpg", "captions": ["symlink out"]},  # 17
        {"id": 3, "split": "train", "file_path": "x/8.jpg", "captions": "a man"},  # 18: captions not a list
    ]
    write_raw(root, "CUHK-PEDES", good + bad)
    imgs = root / "imgs" / "x"
    for name in ("missing.jpg", "empty.jpg", "text.jpg", "cut.jpg", "link.jpg"):
        (imgs / name).unlink()
    (imgs / "empty.jpg").write_bytes(b"")
    (imgs / "text.jpg").write_text("hello, not a picture")
    write_image(tmp_path / "whole.jpg", 1, size=(64, 128))
    (imgs / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:-400])
    write_image(tmp_path / "outside.jpg", 2)
    (imgs / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (tmp_path / "secret.jpg").write_bytes((tmp_path / "outside.jpg").read_bytes())

    records, problems = read(root)
    by_entry = {}
    for problem in problems:
        by_entry.setdefault(problem.entry, []).append(problem.problem)
    assert [r.entry for r in records] == [0, 1, 2, 8]
    assert records[3].captions == ["a man in black"] and records[3].path == "imgs/x/6.jpg"
    expectations = {
        3: "expected an object",
        4: "missing field 'file_path'",
        5: "field 'id' is str",
        6: "field 'id' is bool",
        7: "unknown split 'holdout'",
        8: "caption 0 is empty",
        9: "no usable caption",
        10: "duplicate image entry (first at entry 0)",
        11: "leaves the dataset folder",
        12: "leaves the dataset folder",
        13: "image file not found",
        14: "image file is empty",
        15: "not an image file",
        16: "truncated",
        17: "outside the image folder",
        18: "field 'captions' is str",
    }
    assert sorted(by_entry) == sorted(expectations)
    for entry, text in expectations.items():
        assert any(text in message for message in by_entry[entry]), (entry, by_entry[entry])
    assert [p.entry for p in problems] == sorted(p.entry for p in problems)
    assert next(p for p in problems if p.entry == 13).path == "x/missing.jpg"


def test_verify_decodes_fully(tmp_path):
    records = standard_records("RSTPReid", {"train": [1]}, images_per_id=1)
    records[0]["img_path"] = "a.png"
    root = write_raw(tmp_path / "r", "RSTPReid", records)
    write_image(root / "imgs" / "a.png", 0, size=(64, 64), fmt="PNG")
    data = bytearray((root / "imgs" / "a.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)  # corrupt the compressed pixels, keep header and IEND
    (root / "imgs" / "a.png").write_bytes(bytes(data))
    assert read(root, "RSTPReid")[1] == []
    problems = read(root, "RSTPReid", verify=True)[1]
    assert len(problems) == 1 and "cannot be decoded" in problems[0].problem


def test_icfg_has_no_val_split(tmp_path):
    records = standard_records("ICFG-PEDES", {"train": [1], "val": [2], "test": [3]}, images_per_id=1)
    root = write_raw(tmp_path / "i", "ICFG-PEDES", records)
    kept, problems = read(root, "ICFG-PEDES")
    assert [r.split for r in kept] == ["train", "test"]
    assert [p.problem for p in problems] == ["unknown split 'val'; ICFG-PEDES has train, test"]
    assert json.loads((root / "ICFG-PEDES.json").read_text())[1]["split"] == "val"  # input untouched
