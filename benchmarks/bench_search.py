"""Search speed over a float16 gallery index, beside a plain reference formulation.

Reference: the whole gallery held in memory as float32 numpy, one full matrix product, one full
argsort per query (what a first implementation would do). Ours: ``GalleryIndex.search`` over the
memory-mapped float16 shards (never the whole gallery in float32). Both are measured warm in the
same run; the table also reports agreement with a float64 reference.

    python benchmarks/bench_search.py                      # 100,000 x 512, 1 and 1,000 queries
    python benchmarks/bench_search.py --faiss IVF1024,PQ64 # also an approximate FAISS index
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from personsearch.retrieval import GalleryIndex, build_faiss, recall_at_k, write_index


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in milliseconds after one warm-up call (the median resists other load)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def reference_search(gallery32: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ gallery32.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1000, help="queries in the batched measurement")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=65536)
    parser.add_argument("--faiss", default="", help="also build and time a FAISS index with this factory")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    raw = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    entries = ({"path": f"img{i:07d}.jpg", "pid": None, "size": 1, "mtime_ns": 0} for i in range(args.rows))
    queries = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "index"
        start = time.perf_counter()
        batches = (raw[i : i + 4096] for i in range(0, args.rows, 4096))
        write_index(folder, batches, entries, "bench", tmp, shard_size=args.shard_size)
        write_s = time.perf_counter() - start
        open_verified = timed(lambda: GalleryIndex.open(folder, verify=True), 3)
        open_fast = timed(lambda: GalleryIndex.open(folder, verify=False), 3)
        index = GalleryIndex.open(folder, verify=False)
        stored = np.concatenate([index.embeddings(s) for s in range(len(index.header["shards"]))])
        gallery32 = stored.astype(np.float32)  # the reference keeps the gallery in float32 RAM
        del raw

        one = queries[:1]
        rows_table = []
        for label, q, repeats in (
            ("1 query", one, args.repeats),
            (f"{args.batch} queries", queries, max(2, args.repeats // 10)),
        ):
            ours = timed(lambda q=q: index.search(q, args.k), repeats)
            ref = timed(lambda q=q: reference_search(gallery32, q, args.k), max(2, repeats // 4))
            scores, rows = index.search(q, args.k)
            q64 = q.astype(np.float64) / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
            exact64 = q64 @ stored.astype(np.float64).T
            order64 = np.argsort(-exact64, axis=1, kind="stable")[:, : args.k]
            err = float(np.abs(scores.numpy() - np.take_along_axis(exact64, order64, 1)).max())
            same = float((rows.numpy() == order64).all(axis=1).mean())
            rows_table.append((label, ours, ref, err, same))

    if args.json:
        goals = {"1 query": "<= 20 ms (floor ~10 ms)"}
        print(json.dumps([
            {
                "figure": f"search {label}, {args.rows:,} x {args.dim} float16, k={args.k}", "unit": "ms",
                "ours": ours, "reference": ref, "higher_is_better": False, "goal": goals.get(label, "-"),
                "note": f"warm; ranking = float64 for {same:.0%}",
            }
            for label, ours, ref, err, same in rows_table
        ]))
        return
    torch_threads = torch.get_num_threads()
    mb = args.rows * args.dim * 2 / 2**20
    print(f"gallery {args.rows:,} x {args.dim} float16 ({mb:.0f} MiB), k={args.k}, threads {torch_threads}")
    print(
        f"write_index {write_s:.2f} s; open verify=True {open_verified:.0f} ms, "
        f"verify=False {open_fast:.1f} ms"
    )
    print(
        "\n| search | ours (ms) | reference: float32 matmul + argsort (ms) | speed-up | max err vs float64 "
        "| ranking = float64 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, ours, ref, err, same in rows_table:
        print(f"| {label} | {ours:.1f} | {ref:.1f} | {ref / ours:.1f}x | {err:.1e} | {same:.1%} |")

    if args.faiss:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "index"
            write_index(
                folder,
                stored,
                ({"path": f"i{i}", "pid": None, "size": 1, "mtime_ns": 0} for i in range(args.rows)),
                "bench",
                tmp,
            )
            start = time.perf_counter()
            build_faiss(folder, args.faiss, nprobe=args.nprobe)
            build_s = time.perf_counter() - start
            index = GalleryIndex.open(folder, verify=False)
            ms1 = timed(lambda: index.search(one, args.k, backend="faiss"), args.repeats)
            exact1 = timed(lambda: index.search(one, args.k), args.repeats)
            recall = recall_at_k(index, queries[:200], args.k, nprobe=args.nprobe)
        print(
            f"\nFAISS {args.faiss}, nprobe {args.nprobe}: build {build_s:.1f} s, 1 query {ms1:.2f} ms "
            f"(exact {exact1:.1f} ms), recall@{args.k} {recall:.3f} over 200 queries"
        )


if __name__ == "__main__":
    main()
