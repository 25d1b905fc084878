"""``export`` and ``query`` under hostile input and SIGKILL: odd query text is answered or refused
clearly, a damaged index is detected, unreadable gallery files are skipped, and an interrupted
export or append leaves the index as it was."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from PIL import Image
from tests.helpers import tree_digest

from ._support import assert_input_error, invoke
from .test_kill_resume import run_cli, run_killed

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def tiny_index(trained_run: Path, prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults-index") / "index"
    result = invoke("--quiet", "export", trained_run, "--data", prepared_tiny, "--split", "test", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    return out


def _query(index: Path, *texts: str, k: int = 3):  # noqa: ANN202
    return invoke("query", *texts, "--index", index, "-k", str(k), "--json")


@pytest.mark.parametrize("text", ["", "   ", "\t\n"], ids=["empty", "spaces", "whitespace"])
def test_empty_queries_are_refused(tiny_index, text):
    before = tree_digest(tiny_index)
    assert_input_error(_query(tiny_index, text), "empty")
    assert tree_digest(tiny_index) == before


@pytest.mark.parametrize(
    "text",
    [
        "woman in a red coat " * 500,
        "\U0001f469\u200d\U0001f9b0\U0001f45c\U0001f9e5",
        "woman\x00 in\x07 a red\x1b[31m coat\x7f",
        "穿红色外套的女人",
        "امرأة في معطف أحمر",
        "женщина в красном пальто",
        "e\u0301le\u0301gant \ufb01ne coat\u200b",
    ],
    ids=["10k-chars", "emoji", "control-chars", "chinese", "arabic", "cyrillic", "combining"],
)
def test_odd_queries_are_answered(tiny_index, text):
    before = tree_digest(tiny_index)
    result = _query(tiny_index, text)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    answer = json.loads(result.stdout)
    assert answer["query"] == text and len(answer["results"]) == 3
    assert all(r["rank"] == i + 1 for i, r in enumerate(answer["results"]))
    assert tree_digest(tiny_index) == before


def test_control_characters_only_do_not_crash(tiny_index):
    result = _query(tiny_index, "\x00\x01\x02\x1b")
    assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        assert_input_error(result, "query")


def test_query_file_that_is_not_utf8_is_refused(tiny_index, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_bytes(b"woman in red\n\xff\xfe broken\n")
    assert_input_error(invoke("query", "--file", queries, "--index", tiny_index, "--json"), "queries.txt")


def _index_copy(tiny_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(tiny_index, copy)
    return copy


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "header-version", "header-garbage"])
def test_damaged_index_is_detected(tiny_index, tmp_path, damage):
    index = _index_copy(tiny_index, tmp_path)
    shard = index / "shard-00000.npy"
    header = index / "header.json"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-5] ^= 0xFF
        shard.write_bytes(bytes(data))
        words = ["shard-00000.npy"]
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-64])
        words = ["shard-00000.npy"]
    elif damage == "missing":
        (index / "shard-00000.jsonl").unlink()
        words = ["shard-00000.jsonl"]
    elif damage == "header-version":
        meta = json.loads(header.read_text())
        meta["format_version"] = 9
        header.write_text(json.dumps(meta))
        words = ["version 9"]
    else:
        header.write_text('{"format": "personsearch-index", "format_version": 1, ')
        words = ["header.json"]
    before = tree_digest(index)
    assert_input_error(_query(index, "woman in a red coat"), *words)
    assert tree_digest(index) == before


def test_index_of_another_model_is_refused(tiny_index, trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from personsearch.io import sha256_file

    other = tmp_path / "other-run"
    shutil.copytree(trained_run, other)
    for tag in ("best", "last"):
        weights = other / "checkpoints" / f"{tag}.safetensors"
        tensors = load_file(str(weights))
        name = next(k for k in tensors if k.endswith("text_projection"))
        tensors[name] = tensors[name] * 2
        weights.unlink()
        save_file(tensors, str(weights), metadata={"format": "personsearch-checkpoint"})
        meta_path = weights.with_suffix(".json")  # as further training would record it
        meta = json.loads(meta_path.read_text())
        meta["weights_sha256"] = sha256_file(weights)
        meta_path.write_text(json.dumps(meta))
    result = invoke("query", "woman in a red coat", "--index", tiny_index, "--run", other, "--json")
    assert_input_error(result, "model")


def test_export_skips_unreadable_and_outside_files(trained_run, tmp_path):
    gallery = tmp_path / "gallery"
    (gallery / "cam1").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 64), (40 * i, 80, 200)).save(gallery / "cam1" / f"ok{i}.jpg")
    (gallery / "cam1" / "empty.jpg").write_bytes(b"")
    (gallery / "cam1" / "page.jpg").write_bytes(b"<html>403</html>")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 64)).save(outside)
    (gallery / "cam1" / "link.png").symlink_to(outside)
    before = tree_digest(gallery)
    result = invoke("--quiet", "export", trained_run, "--images", gallery, "--out", tmp_path / "index", "--json")
    assert result.exit_code == 0, result.output
    from personsearch.retrieval.index import GalleryIndex

    paths = sorted(entry.path for entry in GalleryIndex.open(tmp_path / "index").entries())
    assert paths == [f"cam1/ok{i}.jpg" for i in range(3)]
    assert tree_digest(gallery) == before


def test_export_refuses_to_replace_a_folder_that_is_not_an_index(trained_run, prepared_tiny, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.txt").write_text("keep me")
    before = tree_digest(precious)
    result = invoke("--quiet", "export", trained_run, "--data", prepared_tiny, "--split", "test", "--out", precious)
    assert_input_error(result, "photos")
    assert tree_digest(precious) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "after", "when"),
    [
        ("personsearch.retrieval.index:_write_shard", 0, "after"),  # new shard written, header not
        ("personsearch.retrieval.index:atomic_write_json", 0, "before"),  # about to commit the header
    ],
    ids=["after-shard", "before-header"],
)
def test_append_killed_leaves_the_index_as_it_was_and_a_rerun_completes(
    trained_run, tmp_path, spec, after, when
):
    from personsearch.retrieval.index import GalleryIndex

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 64), (60 * i, 90, 30)).save(gallery / f"a{i}.jpg")
    index = tmp_path / "index"
    export = ("--quiet", "export", trained_run, "--images", gallery, "--out", index, "--json")
    run_cli(*export)
    good = tree_digest(index)
    for i in range(2):
        Image.new("RGB", (32, 64), (10, 60 * i, 200)).save(gallery / f"b{i}.jpg")
    assert run_killed(spec, after, when, *export, "--append") == -signal.SIGKILL
    assert {k: v for k, v in tree_digest(index).items() if k in good} == good
    assert len(GalleryIndex.open(index, verify=True)) == 3
    run_cli(*export, "--append")
    reopened = GalleryIndex.open(index, verify=True)
    assert sorted(e.path for e in reopened.entries()) == ["a0.jpg", "a1.jpg", "a2.jpg", "b0.jpg", "b1.jpg"]
    assert not (index / ".lock").exists()
    assert sorted(p.name for p in index.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.slow
def test_export_killed_keeps_the_previous_index(trained_run, tmp_path):
    from personsearch.retrieval.index import GalleryIndex

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 64), (60 * i, 90, 30)).save(gallery / f"a{i}.jpg")
    index = tmp_path / "index"
    export = ("--quiet", "export", trained_run, "--images", gallery, "--out", index, "--json")
    run_cli(*export)
    good = tree_digest(index)
    Image.new("RGB", (32, 64), "red").save(gallery / "new.jpg")
    assert run_killed("personsearch.io.atomic:_exchange", 0, "before", *export) == -signal.SIGKILL
    left = {k: v for k, v in tree_digest(index).items() if k != ".lock"}  # a dead pid's lock: stale
    assert left == good and len(GalleryIndex.open(index)) == 3
    run_cli(*export)
    assert len(GalleryIndex.open(index)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery", "index"]
