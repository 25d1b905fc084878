"""Scoring searches of the synthetic set by its attributes: the query parser, matching, the
attributes file read back safely, queries built from a gallery, the marked query sheet, and the
synthetic set labelled as itself (never "CUHK-PEDES") in prepare, eval and sheets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.data.synthetic import (
    ATTRIBUTE_NAMES,
    SYNTHETIC_LABEL,
    attributes_under,
    find_synthetic_root,
    load_attributes,
    matches,
    matching_in_top_k,
    parse_query,
    phrase_query,
    precision_at_k,
    queries_from_gallery,
    query_combinations,
)
from personsearch.data.synthetic import attribute_files as synthetic_attribute_files
from personsearch.errors import InputError

runner = CliRunner()

# ---------------------------------------------------------------- the parser

PHRASINGS = [
    ("a woman in a red coat", {"gender": "female", "upper_color": "red", "upper_type": "coat"}),
    (
        "a man in a blue jacket with a black backpack",
        {"gender": "male", "upper_color": "blue", "upper_type": "jacket", "bag_color": "black", "bag": "backpack"},
    ),
    ("Woman, red coat.", {"gender": "female", "upper_color": "red", "upper_type": "coat"}),
    ("women wearing red coats", {"gender": "female", "upper_color": "red", "upper_type": "coat"}),
    ("red coat on a lady", {"gender": "female", "upper_color": "red", "upper_type": "coat"}),
    ("the guy with the blue zip-up jacket", {"gender": "male", "upper_color": "blue", "upper_type": "jacket"}),
    ("A GIRL IN A GRAY SWEATER", {"gender": "female", "upper_color": "grey", "upper_type": "sweater"}),
    ("a man in a violet tee", {"gender": "male", "upper_color": "purple", "upper_type": "t-shirt"}),
    ("a woman's pink long coat", {"gender": "female", "upper_color": "pink", "upper_type": "coat"}),
    ("a woman in a long red dress", {"gender": "female", "upper_color": "red", "upper_type": "dress"}),
    (
        "a man in a white shirt and blue jeans",
        {"gender": "male", "upper_color": "white", "upper_type": "shirt", "lower_color": "blue", "lower_type": "jeans"},
    ),
    (
        "men in green t-shirts carrying orange shoulder bags",
        {
            "gender": "male",
            "upper_color": "green",
            "upper_type": "t-shirt",
            "bag_color": "orange",
            "bag": "shoulder bag",
        },
    ),
    (
        "a lady with long blonde hair in a grey striped sweater, black trousers and a pink purse",
        {
            "gender": "female",
            "hair_length": "long",
            "hair_color": "blonde",
            "upper_color": "grey",
            "upper_pattern": "striped",
            "upper_type": "sweater",
            "lower_color": "black",
            "lower_type": "pants",
            "bag_color": "pink",
            "bag": "handbag",
        },
    ),
    (
        "he wears a red baseball cap and white sneakers and holds an umbrella",
        {"gender": "male", "headwear": "cap", "headwear_color": "red", "shoe_color": "white", "item": "umbrella"},
    ),
    ("a person with a black bag", {"bag_color": "black"}),
    ("someone in a yellow top", {"upper_color": "yellow"}),
    ("a man in a dark jacket", {"gender": "male", "upper_type": "jacket"}),  # "dark" is a hair colour only
    ("a woman in red", {"gender": "female"}),  # a colour with nothing to bind to is dropped
    ("qwzx blorf", {}),
    ("", {}),
]


@pytest.mark.parametrize("text, expected", PHRASINGS)
def test_parse_query_phrasings(text, expected):
    assert parse_query(text) == expected


def test_colours_bind_to_the_thing_they_precede():
    named = parse_query("a man in a blue jacket with a black backpack")
    assert named["upper_color"] == "blue" and named["bag_color"] == "black"
    swapped = parse_query("a man in a black jacket with a blue backpack")
    assert swapped["upper_color"] == "black" and swapped["bag_color"] == "blue"
    # the colour before "with" does not wait for the backpack after it
    assert "bag_color" not in parse_query("a man in blue with a backpack")
    # unknown words between colour and garment are passed over
    assert parse_query("a woman in a bright shiny red woolly coat")["upper_color"] == "red"


def test_parse_query_keys_are_attribute_names():
    named = parse_query("a woman with short grey hair in a checked brown coat, blue skirt, black hat, phone")
    assert set(named) <= set(ATTRIBUTE_NAMES)
    assert named == {
        "gender": "female",
        "hair_length": "short",
        "hair_color": "grey",
        "upper_type": "coat",
        "upper_color": "brown",
        "upper_pattern": "checked",
        "lower_type": "skirt",
        "lower_color": "blue",
        "headwear": "hat",
        "headwear_color": "black",
        "item": "phone",
    }


# ---------------------------------------------------------------- matching

IMAGE = {
    "gender": "female",
    "upper_type": "coat",
    "upper_color": "red",
    "lower_type": "jeans",
    "lower_color": "blue",
    "bag": "none",
    "bag_color": "none",
}


def test_matches():
    assert matches({"gender": "female", "upper_color": "red", "upper_type": "coat"}, IMAGE)
    assert not matches({"gender": "male", "upper_color": "red", "upper_type": "coat"}, IMAGE)
    assert not matches({"bag_color": "black"}, IMAGE)  # no bag: its colour is "none"
    assert not matches({"upper_color": "red"}, None)  # attributes unknown
    assert matches({}, IMAGE)  # names nothing: nothing to miss
    assert not matches({"shoe_color": "red"}, IMAGE)  # an attribute the image does not record


def test_matching_in_top_k_and_precision():
    query = {"gender": "female", "upper_color": "red"}
    other = dict(IMAGE, upper_color="blue")
    ranked = [IMAGE, other, None, IMAGE, IMAGE]
    assert matching_in_top_k(query, ranked, k=2) == 1
    assert matching_in_top_k(query, ranked, k=4) == 2
    assert matching_in_top_k(query, ranked, k=10) == 3
    assert precision_at_k(query, ranked, k=4) == 0.5
    assert precision_at_k(query, ranked, k=10) == 0.3  # fewer than k ranked: the rest are misses
    with pytest.raises(ValueError):
        precision_at_k(query, ranked, k=0)


# ---------------------------------------------------------------- attributes.json


def test_load_attributes_reads_the_synthetic_set(synthetic_raw):
    attributes = load_attributes(synthetic_raw)
    records = json.loads((synthetic_raw / "reid_raw.json").read_text())
    assert set(attributes) == {f"imgs/{record['file_path']}" for record in records}
    for path, attrs in attributes.items():
        assert (synthetic_raw / path).is_file()
        assert list(attrs) == list(ATTRIBUTE_NAMES)


def test_attributes_are_keyed_relative_to_the_folder_given(synthetic_raw, tmp_path):
    full = load_attributes(synthetic_raw)
    assert find_synthetic_root(synthetic_raw) == (synthetic_raw, "")
    assert attributes_under(synthetic_raw) == full
    imgs = attributes_under(synthetic_raw / "imgs")
    assert imgs == {path.removeprefix("imgs/"): attrs for path, attrs in full.items()}
    deep = attributes_under(synthetic_raw / "imgs" / "synthetic")
    assert deep == {path.removeprefix("imgs/synthetic/"): attrs for path, attrs in full.items()}
    assert attributes_under(tmp_path) is None
    (tmp_path / "attributes.json").write_text("{}")  # an attributes.json alone is not the synthetic set
    assert attributes_under(tmp_path) is None


@pytest.fixture()
def raw_copy(synthetic_raw, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(synthetic_raw, copy)
    return copy


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"synthetic/p00001_s0.jpg": {"gender": "male"', "malformed JSON at line 1"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "expected an object"),
        ('{"../outside.jpg": {"gender": "male"}}', "leaves the image folder"),
        ('{"/abs.jpg": {"gender": "male"}}', "absolute"),
        ('{"synthetic/p00001_s0.jpg": {"gender": 1}}', "not an object of text values"),
        ('{"synthetic/p00001_s0.jpg": ["male"]}', "not an object of text values"),
        ("[" * 100_000 + "]" * 100_000, "attributes.json"),
    ],
)
def test_damaged_attributes_file_is_one_clear_error(raw_copy, content, message):
    path = raw_copy / "attributes.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as caught:
        load_attributes(raw_copy)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_attributes_file_size_and_kind_are_checked(raw_copy, monkeypatch):
    path = raw_copy / "attributes.json"
    monkeypatch.setattr(synthetic_attribute_files, "MAX_ATTRIBUTES_BYTES", 100)
    with pytest.raises(InputError, match="larger than"):
        load_attributes(raw_copy)
    monkeypatch.undo()
    path.unlink()
    with pytest.raises(InputError, match="not found"):
        load_attributes(raw_copy)
    path.mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        load_attributes(raw_copy)
    path.rmdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(path)  # would block a plain open() forever
        with pytest.raises(InputError, match="not a regular file"):
            load_attributes(raw_copy)


# ---------------------------------------------------------------- queries from a gallery


@pytest.fixture(scope="module")
def test_paths(prepared_tiny) -> list[str]:
    from personsearch.data.prepared import PreparedDataset

    return [entry.path for entry in PreparedDataset.load(prepared_tiny).entries("test")]


def test_queries_from_gallery_name_only_existing_combinations(synthetic_raw, test_paths):
    attributes = load_attributes(synthetic_raw)
    queries = queries_from_gallery(attributes, test_paths, count=50, seed=0)
    gallery = [attributes[path] for path in test_paths]
    possible = {tuple(sorted(c.items())) for attrs in gallery for c in query_combinations(attrs)}
    assert queries and len(queries) == len(possible)  # fewer than asked: every combination there is
    assert len({text for text, _ in queries}) == len(queries)
    others = [attrs for path, attrs in attributes.items() if path not in set(test_paths)]
    for text, named in queries:
        assert parse_query(text) == named  # phrased so the parser reads it back
        assert (
            {"gender", "upper_color", "upper_type"}
            <= set(named)
            <= {"gender", "upper_color", "upper_type", "lower_color", "lower_type", "bag_color", "bag"}
        )
        assert not ({"lower_type", "bag"} <= set(named))
        assert sum(matches(named, attrs) for attrs in gallery) >= 1, text
    # nothing from outside the gallery: a query only the other splits answer is never built
    only_outside = {tuple(sorted(c.items())) for attrs in others for c in query_combinations(attrs)} - possible
    assert not {tuple(sorted(named.items())) for _, named in queries} & only_outside


def test_queries_from_gallery_are_reproducible_and_phrased_like_the_demo(synthetic_raw, test_paths):
    attributes = load_attributes(synthetic_raw)
    first = queries_from_gallery(attributes, test_paths, count=3, seed=7)
    assert first == queries_from_gallery(attributes, test_paths, count=3, seed=7)
    assert len(first) == 3
    assert all(text.startswith(("a man in ", "a woman in ")) for text, _ in first)
    assert queries_from_gallery(attributes, [], count=3, seed=0) == []
    assert queries_from_gallery(attributes, ["imgs/not/there.jpg"], count=3, seed=0) == []
    with pytest.raises(ValueError):
        queries_from_gallery(attributes, test_paths, count=-1, seed=0)


def test_phrase_query_examples():
    assert phrase_query({"gender": "female", "upper_color": "red", "upper_type": "coat"}) == "a woman in a red coat"
    assert (
        phrase_query(
            {"gender": "male", "upper_color": "blue", "upper_type": "jacket", "bag_color": "black", "bag": "backpack"}
        )
        == "a man in a blue jacket with a black backpack"
    )
    named = {
        "gender": "female",
        "upper_color": "orange",
        "upper_type": "t-shirt",
        "lower_color": "white",
        "lower_type": "skirt",
    }
    assert phrase_query(named) == "a woman in an orange t-shirt and a white skirt"
    assert parse_query(phrase_query(named)) == named
    with pytest.raises(ValueError):
        phrase_query({"hair_color": "black"})
    with pytest.raises(ValueError):
        phrase_query({"upper_color": "red"})  # a colour without its garment


# ---------------------------------------------------------------- the query sheet


def _index(tmp_path: Path, image_root: Path, paths: list[str], name: str = "ix"):
    from personsearch.retrieval.index import GalleryIndex, IndexEntry, write_index

    entries = [IndexEntry.for_file(image_root, path) for path in paths]
    embeddings = np.random.default_rng(0).standard_normal((len(paths), 8)).astype(np.float32)
    write_index(tmp_path / name, embeddings, entries, "fp-test", image_root)
    return GalleryIndex.open(tmp_path / name)


def _results(index, queries: list[str], k: int = 6):
    from personsearch.retrieval.query import QueryHit, QueryResult

    out = []
    for number, text in enumerate(queries):
        rows = [(number + step) % len(index) for step in range(k)]
        hits = [QueryHit(rank, 1.0 - rank / 10, row, index.entry(row).path, None) for rank, row in enumerate(rows, 1)]
        out.append(QueryResult(text, hits))
    return out


@pytest.fixture()
def captured(monkeypatch):
    """What render_query_sheet hands the renderer (the real one still draws the PNG)."""
    import personsearch.sheet as sheet_module

    real = sheet_module.render_contact_sheet
    calls: list[dict] = []

    def spy(rows, out_path=None, **options):
        calls.append({"rows": list(rows), **options})
        return real(rows, out_path, **options)

    monkeypatch.setattr(sheet_module, "render_contact_sheet", spy)
    return calls


@pytest.mark.parametrize("inside", ["", "imgs", "imgs/synthetic"])
def test_query_sheet_marks_hits_by_the_attributes_named(synthetic_raw, tmp_path, captured, inside):
    from personsearch.retrieval.query import attribute_matches, describe_matches, gallery_holders, render_query_sheet
    from personsearch.sheet import MATCH, MISMATCH

    attributes = load_attributes(synthetic_raw)
    root = synthetic_raw / inside if inside else synthetic_raw
    prefix = f"{inside}/" if inside else ""
    paths = [path.removeprefix(prefix) for path in sorted(attributes)]
    index = _index(tmp_path, root, paths)
    (text, named), *_ = queries_from_gallery(attributes, sorted(attributes), count=1, seed=0)
    results = _results(index, [text, "qwzx blorf"])
    out = render_query_sheet(index, results, tmp_path / "sheet.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (call,) = captured
    marked, unmarked = call["rows"]
    expected = [matches(named, attributes[prefix + hit.path]) for hit in results[0].results]
    assert [tile.frame for tile in marked.tiles] == [MATCH if flag else MISMATCH for flag in expected]
    assert attribute_matches(index, results[0]) == expected
    assert f"{sum(expected)} of {len(expected)} match every attribute named" in marked.caption
    assert describe_matches(expected) in marked.caption
    # The caption says how many gallery images could have matched: the most the top k can show.
    holders = sum(matches(named, attributes[prefix + path]) for path in paths)
    assert holders >= 1 and gallery_holders(index, text) == holders
    assert f"(the gallery holds {holders} such image" in marked.caption
    assert gallery_holders(index, "qwzx blorf") is None
    assert marked.caption.startswith(text)
    assert all(tile.frame is None for tile in unmarked.tiles)  # names no attribute: nothing to mark
    assert "names no attribute" in unmarked.caption
    assert attribute_matches(index, results[1]) is None
    assert SYNTHETIC_LABEL in call["title"] and "CUHK-PEDES" not in call["title"].replace(SYNTHETIC_LABEL, "")


def test_query_sheet_of_another_gallery_is_unmarked(synthetic_raw, tmp_path, captured):
    from personsearch.retrieval.query import attribute_matches, gallery_attributes, render_query_sheet

    photos = tmp_path / "photos"
    shutil.copytree(synthetic_raw / "imgs", photos)  # the same images, but no synthetic set around them
    paths = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.jpg"))
    index = _index(tmp_path, photos, paths)
    assert gallery_attributes(index) is None
    results = _results(index, ["a woman in a red coat"])
    assert attribute_matches(index, results[0]) is None
    render_query_sheet(index, results, tmp_path / "sheet.png")
    (call,) = captured
    (row,) = call["rows"]
    assert row.caption == "a woman in a red coat"
    assert all(tile.frame is None for tile in row.tiles)
    assert call["title"] == f"{index.path.name}: {len(index)} images"


def test_query_sheet_with_damaged_attributes_still_renders(raw_copy, tmp_path, captured, caplog):
    from personsearch.retrieval.query import render_query_sheet

    paths = sorted(load_attributes(raw_copy))
    index = _index(tmp_path, raw_copy, paths)
    (raw_copy / "attributes.json").write_text("{not json")
    results = _results(index, ["a woman in a red coat"])
    render_query_sheet(index, results, tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").is_file()
    (call,) = captured
    assert all(tile.frame is None for tile in call["rows"][0].tiles)
    assert "not marked" in call["title"]
    assert any("attributes" in record.getMessage() for record in caplog.records)


@pytest.fixture(scope="module")
def query_run(trained_run, tmp_path_factory) -> Path:
    """A private copy of the session's ``trained_run`` (the test split is exported outside it)."""
    run = tmp_path_factory.mktemp("queries") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("index"))
    return run


def test_query_sheet_end_to_end_on_an_exported_synthetic_split(
    query_run, prepared_tiny, synthetic_raw, tmp_path, captured, test_paths
):
    """`query --sheet` over an index of the synthetic set's test split: frames follow attributes.json."""
    from PIL import Image

    from personsearch.retrieval.export import export_images
    from personsearch.runs import load_trained
    from personsearch.sheet import MATCH, MISMATCH

    attributes = load_attributes(synthetic_raw)
    export_images(load_trained(query_run), tmp_path / "index", prepared=prepared_tiny, split="test", device="cpu")
    queries = queries_from_gallery(attributes, test_paths, count=2, seed=0)
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(
        app,
        [
            "query",
            *(text for text, _ in queries),
            "--index",
            str(tmp_path / "index"),
            "--run",
            str(query_run),
            "-k",
            "5",
            "--device",
            "cpu",
            "--sheet",
            str(sheet),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    (call,) = captured
    for (text, named), row, answer in zip(queries, call["rows"], found, strict=True):
        flags = [matches(named, attributes[hit["path"]]) for hit in answer["results"]]
        assert [tile.frame for tile in row.tiles] == [MATCH if flag else MISMATCH for flag in flags]
        assert row.caption.startswith(text)
        assert f"{sum(flags)} of {len(flags)} match every attribute named" in row.caption
    with Image.open(sheet) as image:
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 20)}
    assert (40, 160, 64) in colours or (214, 40, 40) in colours  # a frame was drawn


# ---------------------------------------------------------------- labelled as the synthetic set


def test_prepare_labels_the_synthetic_set(synthetic_raw, prepared_tiny, tmp_path):
    from personsearch.data.prepared import PreparedDataset, prepare_dataset

    manifest = json.loads((prepared_tiny / "manifest.json").read_text())
    assert manifest["dataset"] == "CUHK-PEDES"  # the format it is read with, unchanged
    assert manifest["label"] == SYNTHETIC_LABEL
    assert PreparedDataset.load(prepared_tiny).name == SYNTHETIC_LABEL
    report = prepare_dataset("CUHK-PEDES", synthetic_raw, None, check_only=True, workers=1)
    assert report.dataset == SYNTHETIC_LABEL


def test_label_is_kept_apart_from_the_data_fingerprint(synthetic_raw, prepared_tiny, tmp_path):
    """A synthetic set prepared before labels (no "label" in its manifest) reads as before, still
    shown as the synthetic set (its raw folder carries the synthetic marker), same fingerprint."""
    from personsearch.data.prepared import PreparedDataset

    old = tmp_path / "old"
    shutil.copytree(prepared_tiny, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["label"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    loaded = PreparedDataset.load(old)
    assert loaded.name == SYNTHETIC_LABEL
    assert loaded.fingerprint == PreparedDataset.load(prepared_tiny).fingerprint

    manifest["label"] = 5
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="'label'"):
        PreparedDataset.load(old)


def test_a_real_cuhk_layout_keeps_its_name(tmp_path):
    from tests._raw_datasets import standard_records, write_raw

    from personsearch.data.prepared import PreparedDataset, prepare_dataset

    records = standard_records("CUHK-PEDES", {"train": [1, 2], "test": [3]})
    raw = write_raw(tmp_path / "CUHK-PEDES", "CUHK-PEDES", records)
    report = prepare_dataset("CUHK-PEDES", raw, tmp_path / "prep", workers=1)
    assert report.dataset == "CUHK-PEDES"
    assert "label" not in json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert PreparedDataset.load(tmp_path / "prep").name == "CUHK-PEDES"


def test_prepare_synthetic_summary_names_the_synthetic_set(tmp_path):
    result = runner.invoke(app, ["prepare", "synthetic", "--out", str(tmp_path / "syn"), "--ids", "3"])
    assert result.exit_code == 0, result.output
    title = result.stdout.strip().splitlines()[0]
    assert title.startswith(SYNTHETIC_LABEL), title
    assert not title.startswith("CUHK-PEDES")


def test_eval_header_and_sheet_title_name_the_synthetic_set(query_run, tmp_path, captured):
    sheet = tmp_path / "eval.png"
    result = runner.invoke(app, ["eval", str(query_run), "--sheet", str(sheet), "--queries", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert SYNTHETIC_LABEL in " ".join(result.stdout.split())
    (call,) = captured
    assert f"on {SYNTHETIC_LABEL} test" in call["title"]


def test_queries_can_ask_for_combinations_many_gallery_images_hold(synthetic_raw, test_paths):
    attributes = load_attributes(synthetic_raw)
    gallery = [attributes[path] for path in test_paths]
    everything = queries_from_gallery(attributes, test_paths, count=500, seed=0)
    held = {text: sum(matches(named, attrs) for attrs in gallery) for text, named in everything}
    assert queries_from_gallery(attributes, test_paths, count=500, seed=0, min_holders=1) == everything
    for least in (2, 3, max(held.values())):
        some = queries_from_gallery(attributes, test_paths, count=500, seed=0, min_holders=least)
        assert sorted(text for text, _ in some) == sorted(text for text, count in held.items() if count >= least)
    assert queries_from_gallery(attributes, test_paths, count=5, seed=0, min_holders=max(held.values()) + 1) == []
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="min_holders"):
            queries_from_gallery(attributes, test_paths, count=1, seed=0, min_holders=bad)


def _fake_gallery(tmp_path, people):
    """A prepared-dataset stand-in whose test split is ``people``: (count, attributes) pairs."""
    from types import SimpleNamespace

    base = {"hair_length": "short", "hair_color": "black", "upper_pattern": "plain", "shoe_color": "black",
            "bag": "none", "bag_color": "none", "headwear": "none", "headwear_color": "none", "item": "none"}
    records, entries = {}, []
    for group, (count, attrs) in enumerate(people):
        for number in range(count):
            path = f"synthetic/p{group:05d}_s{number}.jpg"  # attributes.json names them below imgs/
            records[path] = {**base, **attrs, "lower_color": ["black", "white", "grey", "red", "blue", "green",
                                                              "yellow", "pink", "purple", "brown", "orange",
                                                              "black"][number]}
            entries.append(SimpleNamespace(path=f"imgs/{path}"))
    (tmp_path / "attributes.json").write_text(json.dumps(records))
    return SimpleNamespace(raw_root=tmp_path, entries=lambda split: entries)


def test_the_demo_asks_what_the_gallery_holds_often_enough_to_fill_a_top_10(tmp_path):
    from personsearch.demo import DEMO_QUERY, demo_query, gallery_queries

    man = {"gender": "male", "upper_type": "t-shirt", "upper_color": "black", "lower_type": "pants"}
    woman = {"gender": "female", "upper_type": "coat", "upper_color": "red", "lower_type": "pants"}
    # 12 men in black t-shirts (each in other trousers), 2 women in red coats: the men are asked for.
    assert demo_query(_fake_gallery(tmp_path, [(12, man), (2, woman)])) == "a man in a black t-shirt"
    assert gallery_queries(_fake_gallery(tmp_path, [(12, man), (2, woman)]), 0, 1) == ["a man in a black t-shirt"]
    # Held 10 times, the red coat is the question; with nothing held 5 times, it is asked as it is held.
    assert demo_query(_fake_gallery(tmp_path, [(12, man), (10, woman)])) == DEMO_QUERY
    assert demo_query(_fake_gallery(tmp_path, [(3, man), (2, woman)])) == DEMO_QUERY
    assert demo_query(_fake_gallery(tmp_path, [(6, man), (2, woman)])) == "a man in a black t-shirt"
