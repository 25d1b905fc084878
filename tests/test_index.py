"""Gallery index: round trip, exact search against a float64 reference, append, corruption."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from personsearch.errors import InputError
from personsearch.retrieval import (
    FORMAT_VERSION,
    GalleryIndex,
    IndexEntry,
    append_to_index,
    build_faiss,
    files_to_embed,
    recall_at_k,
    write_index,
)
from personsearch.retrieval import index as index_module
from personsearch.retrieval import search as search_module

DIM = 32


def _entries(n: int, start: int = 0, pid: bool = True) -> list[dict]:
    return [
        {
            "path": f"cam{i % 3}/img{i:05d}.jpg",
            "pid": (i % 11) if pid else None,
            "size": 1000 + i,
            "mtime_ns": 7 * i,
        }
        for i in range(start, start + n)
    ]


def _gallery(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32) * 3.0


def _reference(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain float64 brute force over the stored (normalised, float16-rounded) rows."""
    g = gallery.astype(np.float32)
    g = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float16).astype(np.float64)
    q = queries.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ g.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, np.ndarray]:
    gallery = _gallery(530)
    write_index(tmp_path / "ix", gallery, _entries(530), "fp-a", tmp_path, shard_size=200)
    return tmp_path / "ix", gallery


@pytest.mark.parametrize("num_queries", [1, 3, 40])
def test_search_matches_float64_reference(built, num_queries: int) -> None:
    folder, gallery = built
    index = GalleryIndex.open(folder)
    queries = np.random.default_rng(num_queries).standard_normal((num_queries, DIM)).astype(np.float32)
    scores, rows = index.search(queries, 7)
    ref_scores, ref_rows = _reference(gallery, queries, 7)
    assert scores.shape == rows.shape == (num_queries, 7)
    assert rows.dtype == torch.int64 and scores.dtype == torch.float32
    np.testing.assert_array_equal(rows.numpy(), ref_rows)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)


def test_half_and_float_kernels_agree_and_torch_queries_accepted(built) -> None:
    folder, _ = built
    index = GalleryIndex.open(folder, verify=False)
    queries = torch.randn(20, DIM, generator=torch.Generator().manual_seed(3))
    batch = index.search(queries, 5)
    for i in range(0, 20, 7):
        one = index.search(queries[i], 5)
        assert torch.equal(one.rows[0], batch.rows[i])
        assert torch.allclose(one.scores[0], batch.scores[i], atol=1e-6)


def test_half_path_falls_back_on_near_ties(tmp_path: Path, monkeypatch) -> None:
    # 100 copies of the same direction: the float16 nomination cannot prove its candidate list
    # complete, so the exact kernel must decide, and ties go to the lowest rows.
    gallery = np.tile(_gallery(1), (300, 1))
    gallery[150:] = _gallery(150, seed=5)
    index = write_index(tmp_path / "ix", gallery, _entries(300), "fp", tmp_path)
    monkeypatch.setattr(search_module, "HALF_EXTRA_CANDIDATES", 4)
    scores, rows = index.search(gallery[0], 10)
    assert rows[0].tolist() == list(range(10))
    assert torch.allclose(scores, torch.ones_like(scores), atol=1e-3)


def test_k_larger_than_gallery_returns_all_in_order(tmp_path: Path) -> None:
    gallery = _gallery(12)
    index = write_index(tmp_path / "ix", gallery, _entries(12), "fp", tmp_path, shard_size=5)
    queries = _gallery(2, seed=9)
    scores, rows = index.search(queries, 100)
    assert rows.shape == (2, 12)
    _, ref_rows = _reference(gallery, queries, 12)
    np.testing.assert_array_equal(rows.numpy(), ref_rows)


def test_ties_rank_lower_row_first(tmp_path: Path) -> None:
    gallery = np.zeros((9, DIM), dtype=np.float32)
    gallery[:, 0] = 1.0
    gallery[[2, 7], 1] = 0.5  # two identical better rows
    index = write_index(tmp_path / "ix", gallery, _entries(9), "fp", tmp_path, shard_size=4)
    query = np.zeros(DIM, dtype=np.float32)
    query[:2] = 1.0
    for q in (query[None], np.repeat(query[None], 12, 0)):
        rows = index.search(q, 5).rows
        assert rows[0].tolist() == [2, 7, 0, 1, 3]


def test_header_and_files(built, tmp_path: Path) -> None:
    folder, _ = built
    header = json.loads((folder / "header.json").read_text())
    assert header["format_version"] == FORMAT_VERSION and header["dim"] == DIM
    assert header["count"] == 530 and [s["rows"] for s in header["shards"]] == [200, 200, 130]
    assert header["image_root"] == os.path.abspath(tmp_path)
    shard = np.load(folder / "shard-00000.npy", mmap_mode="r")
    assert shard.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(shard.astype(np.float64), axis=1), 1.0, atol=2e-3)
    index = GalleryIndex.open(folder)
    entries = index.metadata(torch.tensor([[0, 529], [201, 5]]))
    assert entries[0][1] == IndexEntry("cam1/img00529.jpg", 529 % 11, 1529, 7 * 529)
    assert index.metadata(201).path == "cam0/img00201.jpg"


def test_streamed_batches_equal_one_array(tmp_path: Path) -> None:
    gallery = _gallery(50)
    batches = (gallery[i : i + 7] for i in range(0, 50, 7))
    write_index(tmp_path / "a", batches, iter(_entries(50)), "fp", tmp_path, shard_size=16)
    write_index(tmp_path / "b", torch.from_numpy(gallery), _entries(50), "fp", tmp_path, shard_size=16)
    for name in ("shard-00000.npy", "shard-00003.npy", "shard-00003.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_non_finite_and_mismatched_input_rejected(tmp_path: Path) -> None:
    gallery = _gallery(10)
    gallery[6, 3] = np.nan
    with pytest.raises(InputError, match="row 6 contains NaN"):
        write_index(tmp_path / "ix", gallery, _entries(10), "fp", tmp_path)
    assert not (tmp_path / "ix").exists()
    with pytest.raises(InputError, match="metadata"):
        write_index(tmp_path / "ix", _gallery(10), _entries(9), "fp", tmp_path)
    with pytest.raises(InputError, match="relative"):
        write_index(
            tmp_path / "ix",
            _gallery(1),
            [{"path": "/abs.jpg", "pid": None, "size": 1, "mtime_ns": 1}],
            "fp",
            tmp_path,
        )
    index = write_index(tmp_path / "ix", _gallery(10), _entries(10), "fp", tmp_path)
    with pytest.raises(InputError, match="dimension 16 but the index holds dimension 32"):
        index.search(np.ones((1, 16)), 3)
    with pytest.raises(InputError, match="infinite"):
        index.search(np.full((1, DIM), np.inf), 3)
    with pytest.raises(InputError, match="k must be"):
        index.search(np.ones((1, DIM)), 0)


def test_append_is_incremental(built, tmp_path: Path) -> None:
    folder, gallery = built
    images = tmp_path / "images"
    (images / "cam0").mkdir(parents=True)
    files = []
    for i in range(6):
        f = images / f"cam0/new{i}.jpg"
        f.write_bytes(b"x" * (i + 1))
        files.append(f)
    before = _snapshot(folder)
    index = GalleryIndex.open(folder)
    todo = files_to_embed(index, files)
    assert todo == files
    new = _gallery(6, seed=42)
    entries = [IndexEntry.for_file(tmp_path, f, pid=None) for f in files[:4]]
    index = append_to_index(folder, new[:4], entries, model_fingerprint="fp-a")
    after = _snapshot(folder)
    assert len(index) == 534 and len(index.header["shards"]) == 4
    for name, data in before.items():
        if name != "header.json":
            assert after[name] == data, f"{name} was rewritten"
    assert set(after) - set(before) == {f"shard-00003.{kind}" for kind in ("npy", "jsonl", "lines.npy", "keys.npy")}
    assert files_to_embed(index, files) == files[4:]
    # The appended rows are searchable with exact scores.
    scores, rows = index.search(new[:4], 1)
    assert rows[:, 0].tolist() == [530, 531, 532, 533]
    assert index.metadata(532).path == "images/cam0/new2.jpg" and index.metadata(532).pid is None
    # A changed file is re-embedded; only its newest row stays searchable.
    files[0].write_bytes(b"changed content")
    assert files_to_embed(index, files) == [files[0], files[4], files[5]]
    index = append_to_index(folder, new[:1] * -1.0, [IndexEntry.for_file(tmp_path, files[0])], "fp-a")
    rows = index.search(new[:1], 600).rows[0].tolist()
    assert 530 not in rows and 534 in rows and len(rows) == 534


def test_append_refuses_other_model(built) -> None:
    folder, _ = built
    before = _snapshot(folder)
    with pytest.raises(InputError, match="made by model fp-a, not fp-b"):
        append_to_index(folder, _gallery(2), _entries(2, start=900), model_fingerprint="fp-b")
    assert _snapshot(folder) == before


def test_interrupted_append_leaves_index_unchanged(built, monkeypatch) -> None:
    folder, _ = built
    before = _snapshot(folder)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        append_to_index(folder, _gallery(5), _entries(5, start=900), "fp-a")
    monkeypatch.undo()
    assert _snapshot(folder) == before
    # A killed append (files left behind, header untouched) is invisible and cleaned next time.
    (folder / "shard-00003.npy").write_bytes(b"partial")
    (folder / ".shard-00003.jsonl.abc.tmp").write_bytes(b"partial")
    assert len(GalleryIndex.open(folder)) == 530
    index = append_to_index(folder, _gallery(5), _entries(5, start=900), "fp-a")
    assert len(index) == 535 and not (folder / ".shard-00003.jsonl.abc.tmp").exists()
    GalleryIndex.open(folder, verify=True)


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: _flip_byte(f / "shard-00001.npy", 500), r"shard-00001\.npy is corrupt"),
        (lambda f: _flip_byte(f / "shard-00002.jsonl", 10), r"shard-00002\.jsonl is corrupt"),
        (
            lambda f: (f / "shard-00001.npy").write_bytes((f / "shard-00001.npy").read_bytes()[:-64]),
            "truncated",
        ),
        (lambda f: (f / "shard-00002.npy").unlink(), r"shard-00002\.npy is missing"),
        (lambda f: (f / "header.json").write_text('{"format": "personsearch-index", '), "corrupt header"),
        (lambda f: (f / "header.json").unlink(), "no header.json"),
    ],
)
def test_corruption_detected(built, damage, message: str) -> None:
    folder, _ = built
    damage(folder)
    with pytest.raises(InputError, match=message):
        GalleryIndex.open(folder)


def test_header_problems(built, tmp_path: Path) -> None:
    folder, _ = built
    header = json.loads((folder / "header.json").read_text())
    (folder / "header.json").write_text(json.dumps({**header, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(InputError, match=f"needs personsearch format version {FORMAT_VERSION + 1}"):
        GalleryIndex.open(folder)
    (folder / "header.json").write_text(json.dumps({**header, "format": "other"}))
    with pytest.raises(InputError, match="unknown index format"):
        GalleryIndex.open(folder)
    bad = json.loads(json.dumps(header))
    bad["shards"][0]["rows"] = 199
    (folder / "header.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="count 530"):
        GalleryIndex.open(folder)
    bad["count"] = 529
    (folder / "header.json").write_text(json.dumps(bad))
    with pytest.raises(
        InputError, match=r"holds float16 \[200, 32\], the header records float16 \[199, 32\]"
    ):
        GalleryIndex.open(folder, verify=False)
    with pytest.raises(InputError, match="does not exist"):
        GalleryIndex.open(tmp_path / "nowhere")


def test_faiss_backend(built) -> None:
    pytest.importorskip("faiss")
    folder, gallery = built
    entry = build_faiss(folder, "IVF8,Flat", nprobe=8)
    index = GalleryIndex.open(folder)
    assert index.header["faiss"]["file"] == entry["file"] and entry["rows"] == 530
    queries = _gallery(5, seed=3)
    approx = index.search(queries, 6, backend="faiss", nprobe=8)
    exact = index.search(queries, 6)
    assert approx.rows.shape == (5, 6)
    assert recall_at_k(index, queries, 6, nprobe=8) == 1.0  # all lists probed: exhaustive
    torch.testing.assert_close(approx.scores, exact.scores, atol=1e-3, rtol=0)
    index = append_to_index(folder, gallery[:3] * 2, _entries(3, start=900), "fp-a")
    assert index.header["faiss"]["rows"] == 533 and not (folder / entry["file"]).exists()
    assert sorted(index.search(gallery[:1], 2, backend="faiss").rows[0].tolist()) == [0, 530]
    with pytest.raises(InputError, match="cannot train"):
        build_faiss(folder, "IVF4096,Flat")


def test_faiss_missing_is_a_clear_input_error(built, monkeypatch) -> None:
    folder, _ = built
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(InputError, match=r"pip install 'personsearch\[faiss\]'"):
        build_faiss(folder, "IVF8,Flat")
    with pytest.raises(InputError, match="has no FAISS index"):
        GalleryIndex.open(folder).search(_gallery(1), 3, backend="faiss")


@pytest.mark.parametrize("k", [1, 3, 8, 40])
def test_stable_topk_and_merge_against_lexsort(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 5, (6, 37), generator=gen).float()  # many ties
    rows = torch.arange(100, 137)
    order = np.lexsort((rows.numpy()[None].repeat(6, 0), -scores.numpy()), axis=1)[:, :k]
    got_scores, got_rows = search_module.stable_topk(scores, rows, k)
    np.testing.assert_array_equal(got_rows.numpy(), rows.numpy()[order])
    halves = [search_module.stable_topk(scores[:, s], rows[s], k) for s in (slice(0, 20), slice(20, 37))]
    merged = search_module.merge_topk(halves[0], halves[1], k)
    np.testing.assert_array_equal(merged[1].numpy(), got_rows.numpy())
    np.testing.assert_array_equal(merged[0].numpy(), got_scores.numpy())
