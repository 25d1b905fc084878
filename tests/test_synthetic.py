"""The synthetic dataset: CUHK-PEDES layout, determinism across workers, captions that state the
attributes, images that show them, and the preview sheet."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personsearch.data.synthetic import (
    ATTRIBUTE_NAMES,
    IMAGE_SIZE,
    VERBALISATIONS,
    caption_pair,
    generate_raw_dataset,
    render_person,
    sample_identities,
    split_sizes,
    visible_attributes,
    write_preview,
)
from personsearch.errors import InputError

IDS = 12
COLOR_OWNER = {
    "upper_color": "upper_type",
    "lower_color": "lower_type",
    "bag_color": "bag",
    "headwear_color": "headwear",
}


def said(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words ("shirt" does not match "t-shirt")."""
    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text.lower()) is not None


def mentions(text: str, name: str, value: str) -> bool:
    return any(said(text, phrase) for phrase in VERBALISATIONS[name][value])


@pytest.fixture(scope="module")
def raw_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("synthetic")
    one, two = base / "w1", base / "w2"
    generate_raw_dataset(one, ids=IDS, seed=3, workers=1)
    generate_raw_dataset(two, ids=IDS, seed=3, workers=2)
    return one, two


@pytest.fixture(scope="module")
def records(raw_pair: tuple[Path, Path]) -> list[dict]:
    return json.loads((raw_pair[0] / "reid_raw.json").read_text())


@pytest.fixture(scope="module")
def attributes(raw_pair: tuple[Path, Path]) -> dict[str, dict[str, str]]:
    return json.loads((raw_pair[0] / "attributes.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_bytes_whatever_the_worker_count(raw_pair: tuple[Path, Path]) -> None:
    one, two = _files(raw_pair[0]), _files(raw_pair[1])
    assert sorted(one) == sorted(two)
    assert len(one) > 2 * IDS
    for name in one:
        assert one[name] == two[name], name


def test_another_seed_draws_another_dataset(tmp_path: Path, records: list[dict]) -> None:
    generate_raw_dataset(tmp_path / "other", ids=IDS, seed=4)
    other = json.loads((tmp_path / "other" / "reid_raw.json").read_text())
    assert [r["captions"] for r in other] != [r["captions"] for r in records]


def test_cuhk_pedes_layout(raw_pair: tuple[Path, Path], records: list[dict]) -> None:
    root = raw_pair[0]
    assert sorted(p.name for p in root.iterdir()) == [".personsearch.json", "attributes.json", "imgs", "reid_raw.json"]
    per_id: dict[int, list[dict]] = {}
    for record in records:
        assert set(record) == {"split", "captions", "file_path", "processed_tokens", "id"}
        assert record["split"] in ("train", "val", "test")
        assert len(record["captions"]) == 2 and len(record["processed_tokens"]) == 2
        for caption, tokens in zip(record["captions"], record["processed_tokens"], strict=True):
            assert tokens == re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", caption.lower())
        with Image.open(root / "imgs" / record["file_path"]) as image:
            assert image.format == "JPEG" and image.size == IMAGE_SIZE and image.mode == "RGB"
        per_id.setdefault(record["id"], []).append(record)
    assert sorted(per_id) == list(range(1, IDS + 1))
    assert all(2 <= len(images) <= 6 for images in per_id.values())
    assert len({r["file_path"] for r in records}) == len(records)


def test_splits_are_disjoint_by_identity(records: list[dict]) -> None:
    ids_of = {split: {r["id"] for r in records if r["split"] == split} for split in ("train", "val", "test")}
    assert not ids_of["train"] & ids_of["val"] and not ids_of["train"] & ids_of["test"]
    assert not ids_of["val"] & ids_of["test"]
    assert tuple(len(ids_of[s]) for s in ("train", "val", "test")) == split_sizes(IDS)
    assert split_sizes(800) == (600, 100, 100)
    assert max(ids_of["train"]) < min(ids_of["val"]) <= max(ids_of["val"]) < min(ids_of["test"])


def test_attributes_file_describes_every_image(records: list[dict], attributes: dict) -> None:
    assert set(attributes) == {r["file_path"] for r in records}
    combos: dict[int, tuple[str, ...]] = {}
    for record in records:
        attrs = attributes[record["file_path"]]
        assert tuple(attrs) == ATTRIBUTE_NAMES
        combo = tuple(attrs.values())
        assert combos.setdefault(record["id"], combo) == combo  # one combination per identity
    assert len(set(combos.values())) == IDS  # and a different one for each identity


def _check_pair(attrs: dict[str, str], first: str, second: str) -> None:
    assert first != second
    visible = visible_attributes(attrs)
    for caption in (first, second):
        assert 15 <= len(caption.split()) <= 35, caption
        stated = [name for name in visible if mentions(caption, name, attrs[name])]
        assert len(stated) >= math.ceil(0.6 * len(visible)), (caption, visible)
    for name in visible:
        value = attrs[name]
        holders = [c for c in (first, second) if mentions(c, name, value)]
        assert holders, f"{name}={value} in neither caption: {first!r} / {second!r}"
        if name in COLOR_OWNER:  # the colour is said in a caption that also names its garment
            owner = COLOR_OWNER[name]
            assert any(mentions(c, owner, attrs[owner]) for c in holders), (name, first, second)


def test_every_attribute_is_in_the_captions(records: list[dict], attributes: dict) -> None:
    for record in records:
        _check_pair(attributes[record["file_path"]], *record["captions"])


def test_captions_over_many_identities() -> None:
    identities = sample_identities(400, random.Random(11))
    texts = set()
    for number, attrs in enumerate(identities):
        first, second = caption_pair(attrs, random.Random(number), random.choice(("front", "back", "side")))
        _check_pair(attrs, first, second)
        texts.update((first, second))
    assert len(texts) == 2 * len(identities)
    openings = {" ".join(t.split()[:3]) for t in texts}
    assert len(openings) > 40  # many sentence forms, not one template


def test_identities_share_details_but_never_the_whole_combination() -> None:
    identities = sample_identities(300, random.Random(5))
    keys = [tuple(a[n] for n in ATTRIBUTE_NAMES) for a in identities]
    assert len(set(keys)) == len(keys)
    close = sum(
        1
        for i, a in enumerate(keys)
        if any(sum(x != y for x, y in zip(a, b, strict=True)) <= 2 for b in keys[:i])
    )
    assert close > 30  # near-copies exist, so the details matter
    genders = {a["gender"] for a in identities}
    assert genders == {"male", "female"}
    assert all(a["lower_type"] == "none" for a in identities if a["upper_type"] == "dress")
    assert not any(
        a["upper_type"] == "dress" or a["lower_type"] == "skirt" for a in identities if a["gender"] == "male"
    )


def _red_fraction(image: Image.Image) -> float:
    rgb = np.asarray(image, dtype=np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(((r > g + 70) & (r > b + 70)).mean())


def test_upper_garment_colour_is_visible() -> None:
    base = sample_identities(1, random.Random(2))[0] | {
        "upper_type": "sweater",
        "upper_pattern": "plain",
        "lower_type": "pants",
        "lower_color": "grey",
    }
    for seed in range(4):
        red = render_person(base | {"upper_color": "red"}, random.Random(seed), look_seed=1).image
        blue = render_person(base | {"upper_color": "blue"}, random.Random(seed), look_seed=1).image
        assert red.size == IMAGE_SIZE
        assert _red_fraction(red) > _red_fraction(blue) + 0.04


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--ids"):
        generate_raw_dataset(tmp_path / "a", ids=2)
    with pytest.raises(InputError, match="--workers"):
        generate_raw_dataset(tmp_path / "a", ids=5, workers=0)
    with pytest.raises(InputError, match="--seed"):
        generate_raw_dataset(tmp_path / "a", ids=5, seed=-1)
    assert not (tmp_path / "a").exists()


def test_a_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not yours")
    with pytest.raises(InputError, match="refusing"):
        generate_raw_dataset(mine, ids=3)
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]


def test_a_previous_synthetic_set_is_replaced_whole(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    generate_raw_dataset(root, ids=6, seed=0)
    generate_raw_dataset(root, ids=3, seed=1)
    ids = {r["id"] for r in json.loads((root / "reid_raw.json").read_text())}
    assert ids == {1, 2, 3}
    assert {p.name for p in (root / "imgs" / "synthetic").iterdir()} == {
        r["file_path"].split("/")[1] for r in json.loads((root / "reid_raw.json").read_text())
    }
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temporary folders left behind


def test_the_cuhk_pedes_reader_accepts_it(raw_pair: tuple[Path, Path], tmp_path: Path) -> None:
    prepared = pytest.importorskip("personsearch.data.prepared")
    report = prepared.prepare_dataset(
        "CUHK-PEDES", raw_pair[0], tmp_path / "prepared", verify=True, workers=1
    )
    assert report.problems == []
    assert report.truncated_captions == 0
    train, val, test = split_sizes(IDS)
    assert {split: counts["ids"] for split, counts in report.splits.items()} == {
        "train": train,
        "val": val,
        "test": test,
    }


def test_preview_is_a_png(raw_pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "sheets" / "preview.png"
    write_preview(raw_pair[0], out, seed=1, rows=4)
    with Image.open(out) as sheet:
        assert sheet.format == "PNG"
        assert sheet.width >= 2 * 64 and sheet.height >= 4 * 192
    with pytest.raises(InputError, match="reid_raw.json"):
        write_preview(tmp_path / "nothing", tmp_path / "x.png")
