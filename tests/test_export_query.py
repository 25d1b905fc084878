"""export and query: round trip on a tiny trained run, JSON shape, incremental append, unreadable
files, corruption and model mismatch (exit 2), bad queries, the contact sheet, and exact search
against a float64 brute-force reference."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.errors import InputError
from personsearch.io import sha256_file
from personsearch.retrieval.export import discover_images, export_images
from personsearch.retrieval.index import GalleryIndex
from personsearch.retrieval.query import search_text
from personsearch.runs import load_trained

runner = CliRunner()


@pytest.fixture(scope="module")
def export_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's ``trained_run``, alone under its own output folder: this module
    exports into RUN/index, and ``query`` without --index finds the latest run's index there."""
    run = tmp_path_factory.mktemp("export_runs") / "tiny"
    shutil.copytree(trained_run, run)
    return run


@pytest.fixture(scope="module")
def other_run(export_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run with every weight nudged: another model fingerprint."""
    run = tmp_path_factory.mktemp("other") / "other"
    shutil.copytree(export_run, run, ignore=shutil.ignore_patterns("index", "state-*"))
    generator = torch.Generator().manual_seed(1)
    for tag in ("best", "last"):
        weights = run / "checkpoints" / f"{tag}.safetensors"
        state = load_file(str(weights))
        nudged = {
            k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in state.items()
        }
        save_file(nudged, str(weights), metadata={"format": "personsearch-checkpoint"})
        meta_path = weights.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        meta["weights_sha256"] = sha256_file(weights)  # as further training would record it
        meta_path.write_text(json.dumps(meta))
    return run


@pytest.fixture(scope="module")
def train_index(export_run: Path, prepared_tiny: Path) -> Path:
    """The train split exported into RUN/index (identities recorded)."""
    result = runner.invoke(
        app,
        [
            "export",
            str(export_run),
            "--data",
            str(prepared_tiny),
            "--split",
            "train",
            "--out",
            str(export_run / "index"),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["indexed"] == report["total"] > 0 and report["skipped"] == []
    return export_run / "index"


def _query(*args: str) -> object:
    result = runner.invoke(app, ["query", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_round_trip_ranks_true_identity_better_than_chance(train_index, prepared_tiny):
    from personsearch.data.prepared import PreparedDataset

    prepared = PreparedDataset.load(prepared_tiny)
    entries = prepared.entries("train")
    captions = [(entry.captions[0], entry.pid) for entry in entries]
    index = GalleryIndex.open(train_index)
    model = load_trained(index.model_info["weights"])
    results = search_text(model, index, [c for c, _ in captions], k=len(index))
    assert all(len(r.results) == len(index) for r in results)
    ranks, chance = [], []
    for result, (_, pid) in zip(results, captions, strict=True):
        pids = [hit.pid for hit in result.results]
        ranks.append(pids.index(pid) + 1)
        # expected rank of the first true match when the order is random
        n, m = len(pids), pids.count(pid)
        chance.append((n + 1) / (m + 1))
    assert np.mean(ranks) < np.mean(chance), (np.mean(ranks), np.mean(chance))


def test_exact_search_equals_float64_reference(train_index):
    from personsearch.data.transforms import build_transform, load_rgb
    from personsearch.text import tokenize

    index = GalleryIndex.open(train_index)
    model = load_trained(index.model_info["weights"])
    transform = build_transform(model.settings.model.image_size, train=False)
    entries = list(index.entries())
    with torch.no_grad():
        images = torch.stack([transform(load_rgb(index.image_root / e.path)) for e in entries])
        image_feats = model.clip.encode_image(images).double()
        texts = ["a woman in a red coat", "man with a black backpack and blue jeans", "person"]
        text_feats = model.clip.encode_text(tokenize(texts, model.settings.model.text_length)).double()
    image_feats = image_feats / image_feats.norm(dim=1, keepdim=True)
    stored = torch.from_numpy(
        np.concatenate([index.embeddings(s) for s in range(len(index.header["shards"]))])
    )
    # the index holds this model's embeddings of these files, rounded to float16
    assert torch.allclose(stored.double(), image_feats, atol=2e-3)
    queries = text_feats / text_feats.norm(dim=1, keepdim=True)
    reference = queries @ stored.double().T
    k = 5
    results = search_text(model, index, texts, k=k)
    for q, result in enumerate(results):
        order = sorted(range(len(entries)), key=lambda g: (-float(reference[q, g]), g))[:k]
        assert [hit.row for hit in result.results] == order
        assert [hit.path for hit in result.results] == [entries[g].path for g in order]
        np.testing.assert_allclose([h.score for h in result.results], reference[q, order].numpy(), atol=1e-5)


def test_json_shape_several_queries_and_k_beyond_gallery(train_index):
    one = _query("woman in a red coat", "--index", str(train_index), "-k", "3")
    assert isinstance(one, dict) and set(one) == {"query", "results"}
    assert one["query"] == "woman in a red coat" and len(one["results"]) == 3
    for rank, hit in enumerate(one["results"], 1):
        assert set(hit) == {"rank", "score", "path", "pid"}
        assert hit["rank"] == rank and isinstance(hit["score"], float) and isinstance(hit["pid"], int)
        assert isinstance(hit["path"], str) and not os.path.isabs(hit["path"])
    scores = [hit["score"] for hit in one["results"]]
    assert scores == sorted(scores, reverse=True)
    several = _query("woman in red", "man in black", "--index", str(train_index), "-k", "100000")
    size = len(GalleryIndex.open(train_index))
    assert isinstance(several, list) and [q["query"] for q in several] == ["woman in red", "man in black"]
    assert all(len(q["results"]) == size for q in several)


def test_query_without_index_uses_latest_run_index(train_index, export_run):
    env = {"PERSONSEARCH_RUNTIME__OUTPUT_DIR": str(export_run.parent)}
    result = runner.invoke(app, ["query", "woman in red", "-k", "2", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query"] == "woman in red"
    assert f"using index {train_index}" in result.stderr.replace("\n", "")


def test_bad_queries_exit_2(train_index, tmp_path):
    for args in (["", "--index", str(train_index)], ["   \t", "--index", str(train_index)]):
        result = runner.invoke(app, ["query", *args])
        assert result.exit_code == 2 and "empty" in result.output
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n", encoding="utf-8")
    result = runner.invoke(app, ["query", "--file", str(blank), "--index", str(train_index)])
    assert result.exit_code == 2 and "blank" in result.output
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("woman in red\n\n  \nman in black\n", encoding="utf-8")
    out = _query("--file", str(mixed), "--index", str(train_index), "-k", "1")
    assert [q["query"] for q in out] == ["woman in red", "man in black"]
    result = runner.invoke(app, ["query", "x", "--index", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_unusual_text_does_not_crash(train_index):
    long_text = ("a tall man wearing a grey jacket and dark trousers " * 200)[:10_000]
    texts = [
        long_text,
        "😀🧥👜",
        "red\x00coat\x1b[31m\x07 bag\u200b",
        "женщина в красном пальто",
        "穿红色外套的女人",
    ]
    result = runner.invoke(app, ["query", *texts, "--index", str(train_index), "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [q["query"] for q in out] == texts and all(len(q["results"]) == 2 for q in out)
    assert "query 1 is longer" in result.stderr.replace("\n", " ")


def test_sheet_is_a_png(train_index, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(
        app,
        [
            "query",
            "woman in red",
            "man in black",
            "--index",
            str(train_index),
            "-k",
            "4",
            "--sheet",
            str(sheet),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(sheet) as image:
        image.verify()
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width >= 4 * 64 and image.height > 2 * 128


def test_corrupt_shard_is_detected(train_index, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(train_index, copy)
    shard = copy / "shard-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["query", "woman in red", "--index", str(copy)])
    assert result.exit_code == 2 and "checksum" in result.output
    shutil.copyfile(train_index / "shard-00000.npy", shard)
    (copy / "shard-00000.jsonl").write_bytes(b"")
    result = runner.invoke(app, ["query", "woman in red", "--index", str(copy)])
    assert result.exit_code == 2 and "truncated" in result.output


def test_model_mismatch_is_refused(train_index, export_run, other_run, prepared_tiny, tmp_path):
    result = runner.invoke(
        app, ["query", "woman in red", "--index", str(train_index), "--run", str(other_run)]
    )
    assert result.exit_code == 2 and "another model" in result.output
    other_index = tmp_path / "other-index"
    made = runner.invoke(
        app,
        [
            "export",
            str(other_run),
            "--data",
            str(prepared_tiny),
            "--split",
            "test",
            "--out",
            str(other_index),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        app, ["query", "woman in red", "--index", str(other_index), "--run", str(export_run)]
    )
    assert result.exit_code == 2 and "another model" in result.output
    appended = runner.invoke(
        app,
        [
            "export",
            str(export_run),
            "--data",
            str(prepared_tiny),
            "--split",
            "test",
            "--out",
            str(other_index),
            "--append",
            "--device",
            "cpu",
        ],
    )
    assert appended.exit_code == 2 and "made by model" in appended.output


def _gallery(prepared_tiny: Path, folder: Path, n: int) -> list[Path]:
    """Copy ``n`` synthetic images into ``folder/cam0`` and ``folder/cam1``."""
    from personsearch.data.prepared import PreparedDataset

    prepared = PreparedDataset.load(prepared_tiny)
    copied = []
    for i, entry in enumerate(prepared.entries("train")[:n]):
        target = folder / f"cam{i % 2}" / f"img{i:03d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prepared.image_path(entry), target)
        copied.append(target)
    return copied


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_append_is_incremental_and_interruption_keeps_the_index(export_run, prepared_tiny, tmp_path):
    images = tmp_path / "images"
    files = _gallery(prepared_tiny, images, 6)
    out = tmp_path / "index"
    args = [
        "export",
        str(export_run),
        "--images",
        str(images),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--json",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["indexed"] == 6
    before = _snapshot(out)
    again = runner.invoke(app, [*args, "--append"])
    assert again.exit_code == 0 and json.loads(again.stdout)["indexed"] == 0
    assert _snapshot(out) == before

    shutil.copyfile(files[0], images / "cam1" / "new.PNG.jpg")
    model = load_trained(export_run)

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_images(model, out, images=images, append=True, progress=interrupt)
    assert _snapshot(out) == before

    added = runner.invoke(app, [*args, "--append", "--workers", "1"])
    assert added.exit_code == 0, added.output
    report = json.loads(added.stdout)
    assert (report["indexed"], report["unchanged"], report["total"], report["shards"]) == (1, 6, 7, 2)
    after = _snapshot(out)
    assert {name: after[name] for name in before if name != "header.json"} == {
        name: data for name, data in before.items() if name != "header.json"
    }
    new_rows = [json.loads(line) for line in (out / "shard-00001.jsonl").read_text().splitlines()]
    assert [row["path"] for row in new_rows] == ["cam1/new.PNG.jpg"]
    hits = _query("woman", "--index", str(out), "-k", "100")["results"]
    assert sorted(h["path"] for h in hits) == sorted(
        [f.relative_to(images).as_posix() for f in files] + ["cam1/new.PNG.jpg"]
    )
    assert all(h["pid"] is None for h in hits)


def test_unreadable_files_are_listed_and_skipped(export_run, prepared_tiny, tmp_path):
    images = tmp_path / "images"
    _gallery(prepared_tiny, images, 3)
    (images / "cam0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "cam1" / "text.PNG").write_text("hello", encoding="utf-8")
    (images / "notes.txt").write_text("ignored: not an image suffix", encoding="utf-8")
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(images / "cam0" / "img000.jpg", outside)
    (images / "link.jpg").symlink_to(outside)
    (images / "inside-link.jpg").symlink_to(images / "cam0" / "img000.jpg")
    out = tmp_path / "index"
    result = runner.invoke(
        app,
        [
            "export",
            str(export_run),
            "--images",
            str(images),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"cam0/broken.jpg", "cam1/text.PNG", "link.jpg"}
    assert "outside" in skipped["link.jpg"]
    assert report["indexed"] == report["total"] == 4
    paths = [e.path for e in GalleryIndex.open(out).entries()]
    assert paths == ["cam0/img000.jpg", "cam0/img002.jpg", "cam1/img001.jpg", "inside-link.jpg"]
    files, _ = discover_images(images)
    assert [f.relative_to(images).as_posix() for f in files] == sorted(
        [
            "cam0/broken.jpg",
            "cam0/img000.jpg",
            "cam0/img002.jpg",
            "cam1/img001.jpg",
            "cam1/text.PNG",
            "inside-link.jpg",
        ]
    )


def test_export_refuses_foreign_out_and_replaces_an_index(export_run, prepared_tiny, tmp_path):
    images = tmp_path / "images"
    _gallery(prepared_tiny, images, 2)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine", encoding="utf-8")
    result = runner.invoke(app, ["export", str(export_run), "--images", str(images), "--out", str(foreign)])
    assert result.exit_code == 2 and "not a gallery index" in " ".join(result.output.split())
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(
        app, ["export", str(export_run), "--images", str(empty), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "no images found" in result.output
    out = tmp_path / "index"
    for _ in range(2):
        result = runner.invoke(app, ["export", str(export_run), "--images", str(images), "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert len(GalleryIndex.open(out)) == 2 and len(GalleryIndex.open(out).header["shards"]) == 1
    result = runner.invoke(app, ["export", str(export_run), "--out", str(out)])
    assert result.exit_code == 2 and "exactly one of" in result.output
    with pytest.raises(InputError, match="split"):
        export_images(load_trained(export_run), out, prepared=prepared_tiny)
