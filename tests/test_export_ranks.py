"""Export under torchrun: two gloo processes write the same index (rows, embeddings, superseded
list) as one process, shares are contiguous and batch-aligned, and a failure on any rank leaves
the old index in place."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from personsearch.retrieval.export_ranks import first_shards, shares
from personsearch.retrieval.index import GalleryIndex


def test_shares_are_contiguous_batch_aligned_and_cover_every_file() -> None:
    for count, world, batch in [(10, 2, 4), (7, 3, 2), (1, 4, 8), (0, 2, 3), (1000, 3, 32)]:
        spans = shares(count, world, batch)
        assert spans[0][0] == 0 and spans[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert all(start % batch == 0 or start == count for start, _ in spans)
    assert shares(10, 2, 4) == [(0, 4), (4, 10)]
    assert first_shards([(0, 4), (4, 10)], 4) == [0, 1]
    assert first_shards([(0, 0), (0, 9)], 4) == [0, 0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, run: str, images: str, out: str, fail_on: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from personsearch.engine.dist import init_distributed, shutdown_distributed
    from personsearch.errors import InputError
    from personsearch.retrieval import export as export_module
    from personsearch.retrieval.export import export_images
    from personsearch.runs import load_trained

    init_distributed(torch.device("cpu"))
    if rank == fail_on:
        def broken(*_a: object, **_k: object):  # noqa: ANN202 - a generator failing at its first batch
            raise InputError("rank broke on purpose")
            yield

        export_module.embed_batches = broken  # type: ignore[assignment]
    try:
        report = export_images(load_trained(run), out, images=images, batch_size=3, workers=0, device="cpu")
        result = {"total": report.total, "indexed": report.indexed, "skipped": report.skipped}
    except InputError as exc:
        result = {"error": exc.message}
    finally:
        shutdown_distributed()
    Path(out).parent.joinpath(f"rank{rank}.json").write_text(json.dumps(result))


def _gallery(folder: Path) -> Path:
    from PIL import Image

    for i in range(11):
        path = folder / f"cam{i % 2}" / f"p{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 64), (23 * i % 256, 90, 200 - 15 * i)).save(path)
    (folder / "cam0" / "broken.jpg").write_bytes(b"not an image")
    return folder


def _rows(folder: Path) -> tuple[list, np.ndarray]:
    index = GalleryIndex.open(folder, verify="full")
    return list(index.entries()), np.concatenate([index.embeddings(s) for s in range(index.shard_count)])


@pytest.mark.slow
def test_two_gloo_processes_write_the_index_one_process_writes(trained_run: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from personsearch.retrieval.export import export_images
    from personsearch.runs import load_trained

    images = _gallery(tmp_path / "images")
    torch.set_num_threads(1)
    one = export_images(load_trained(trained_run), tmp_path / "one" / "index", images=images, batch_size=3,
                        workers=0, device="cpu")
    two = tmp_path / "two" / "index"
    mp.spawn(_rank, args=(2, _free_port(), str(trained_run), str(images), str(two), -1), nprocs=2)
    reports = [json.loads((two.parent / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0] == reports[1]
    assert reports[0]["total"] == one.total == 11 and reports[0]["indexed"] == 11
    assert [tuple(s) for s in reports[0]["skipped"]] == [tuple(s) for s in one.skipped]
    entries_one, rows_one = _rows(tmp_path / "one" / "index")
    entries_two, rows_two = _rows(two)
    assert entries_two == entries_one
    np.testing.assert_array_equal(rows_two, rows_one)
    header = json.loads((two / "header.json").read_text())
    assert header["count"] == 11 and header["superseded"] is None
    assert len(header["shards"]) >= 2  # each rank wrote its own shards

    # A failure on either rank is raised on both, and the index written before stays as it was.
    before = {p.name: p.read_bytes() for p in two.iterdir()}
    mp.spawn(_rank, args=(2, _free_port(), str(trained_run), str(images), str(two), 1), nprocs=2)
    for r in range(2):
        assert json.loads((two.parent / f"rank{r}.json").read_text()) == {"error": "rank broke on purpose"}
    assert {p.name: p.read_bytes() for p in two.iterdir()} == before
    assert sorted(p.name for p in two.parent.iterdir()) == ["index", "rank0.json", "rank1.json"]
