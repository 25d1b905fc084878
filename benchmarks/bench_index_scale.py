"""Opening a gallery index and answering one query, from 10,000 to 1,000,000 (optionally 10M) rows.

Each index is written with the project's own ``write_index`` (random unit embeddings, one metadata
row per image). "Ours" is the library path a query takes: ``GalleryIndex.open`` (default
``verify=True``) + one exact top-10 search + the metadata of the 10 hits. "Old" is the same work
on the same files opened in format version 1 (the header without the row tables, the shard files
hard-linked): what this project did before the row tables, i.e. every metadata row parsed, every
row's path checked for links, every file hashed. Both are measured in the same run, warm (the
files in the page cache), as the median of a few repeats. Then 100 new files are appended to the
largest index the way ``export --append`` does it (open under the lock, decide which of all the
candidate files are new from the row keys, write one shard), beside the reads the old append made.

    python benchmarks/bench_index_scale.py                           # 1e4, 1e5, 1e6 rows x 512
    python benchmarks/bench_index_scale.py --sizes 10000,100000      # quicker
    python benchmarks/bench_index_scale.py --ten-million --dim-10m 64   # also 1e7 rows (x 64: 1.3 GB)
    python benchmarks/bench_index_scale.py --cli                     # also `personsearch query` processes

``--cli`` writes the indexes "by" a random-weight ViT-B/16 run and times the real command in fresh
processes on the largest index and on a 1,000-row one: the difference is what the index costs
beyond start-up. Disk: rows x dim x 2 bytes per index (1M x 512: 1 GB), under ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.retrieval import GalleryIndex, IndexEntry, write_index
from personsearch.retrieval.index import append_locked

K = 10
QUERY = "a woman in a red coat carrying a black bag"


def cpu_description() -> str:
    """The CPU model as ``lscpu`` names it, and whether it has AVX512-BF16 or AMX instructions."""
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    amx = sorted(f for f in flags if f.startswith("amx")) or ["no AMX"]
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else "no avx512_bf16"
    return f"{model}, {os.cpu_count()} logical cores, {bf16}, {', '.join(amx)}"


def entries_for(start: int, count: int) -> list[IndexEntry]:
    return [IndexEntry(f"cam{i % 16:02d}/{i // 1000:05d}/{i:08d}.jpg", i % 5000, 4000 + i % 997, 1_700_000_000 * i)
            for i in range(start, start + count)]


def embedding_batches(rows: int, dim: int, seed: int, batch: int = 65536) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch):
        yield rng.standard_normal((min(batch, rows - start), dim), dtype=np.float32)


def metadata_rows(rows: int, batch: int = 65536) -> Iterator[IndexEntry]:
    for start in range(0, rows, batch):
        yield from entries_for(start, min(batch, rows - start))


def as_version_1(folder: Path, out: Path) -> Path:
    """The same index as format version 1 wrote it: its shard files hard-linked, a header without tables."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    header = json.loads((folder / "header.json").read_text())
    header["format_version"] = 1
    header.pop("superseded", None)
    for shard in header["shards"]:
        for kind in ("embeddings", "metadata"):
            os.link(folder / shard[kind], out / shard[kind])
        for kind in ("lines", "keys"):
            shard.pop(kind)
            shard.pop(f"{kind}_bytes")
            shard.pop(f"{kind}_sha256")
    (out / "header.json").write_text(json.dumps(header))
    return out


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def one_query(folder: Path, query: np.ndarray) -> dict[str, float]:
    """Open + search + hit metadata, each timed (seconds)."""
    t0 = time.perf_counter()
    index = GalleryIndex.open(folder)
    t1 = time.perf_counter()
    result = index.search(query, K)
    t2 = time.perf_counter()
    hits = index.metadata(result.rows[0])
    t3 = time.perf_counter()
    assert len(hits) == K
    return {"open": t1 - t0, "search": t2 - t1, "hits": t3 - t2, "total": t3 - t0}


def measure_query(folder: Path, query: np.ndarray, repeats: int) -> dict[str, float]:
    one_query(folder, query)  # warm: page cache, first-call overheads
    runs = [one_query(folder, query) for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def old_append_reads(old: Path, candidates: list[IndexEntry]) -> int:
    """The reads of the old ``export --append``: a verified open, a set of every row's (path, size,
    mtime), the membership test of every candidate, and the open after the commit."""
    index = GalleryIndex.open(old, verify=True)
    known = {(e.path, e.size, e.mtime_ns) for e in index.entries()}
    todo = sum((e.path, e.size, e.mtime_ns) not in known for e in candidates)
    GalleryIndex.open(old, verify=False)
    return todo


def our_append(folder: Path, candidates: list[IndexEntry], dim: int, seed: int) -> int:
    """``export --append`` minus the image decoding: open under the lock, decide, write one shard."""
    from personsearch.io import RunLock

    with RunLock(folder):
        index = GalleryIndex.open(folder, verify=True)
        todo = [e for e, done in zip(candidates, index.indexed(candidates).tolist(), strict=True) if not done]
        vectors = np.random.default_rng(seed).standard_normal((len(todo), dim), dtype=np.float32)
        append_locked(index, vectors, todo)
    return len(todo)


def cli_seconds(index: Path, repeats: int) -> float:
    cli = str(Path(sys.executable).parent / "personsearch")
    command = [cli, "query", QUERY, "--index", str(index), "--json", "-k", str(K)]
    from bench_query_cli import wall

    return wall(command, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ten-million", action="store_true", help="also 10,000,000 rows (at --dim-10m)")
    parser.add_argument("--dim-10m", type=int, default=64, help="the dimension of the 1e7-row index")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old-repeats", type=int, default=2)
    parser.add_argument("--old-max-rows", type=int, default=1_000_000, help="largest index the old way is timed on")
    parser.add_argument("--append-files", type=int, default=100)
    parser.add_argument("--cli", action="store_true", help="time `personsearch query` processes (ViT-B/16 run)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()

    sizes = [(int(float(s)), args.dim) for s in args.sizes.split(",")]
    if args.ten_million:
        sizes.append((10_000_000, args.dim_10m))
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.dir))
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    try:
        fingerprint, extra = "bench-random", {}
        if args.cli:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_export import random_run
            from personsearch.runs import load_trained

            log("creating a random-weight ViT-B/16 run ...")
            run = random_run(work / "runs", [])
            model = load_trained(run)
            fingerprint = model.fingerprint
            extra = {"run": str(run), "weights": str(model.weights), "kind": "run"}
            del model
        images = work / "images"
        images.mkdir()  # present (and empty): the old open checks every row's path under it
        rows_out = []
        for rows, dim in sizes:
            folder = work / f"ix-{rows}"
            log(f"writing {rows:,} x {dim} ...")
            start = time.perf_counter()
            write_index(folder, embedding_batches(rows, dim, seed=rows), metadata_rows(rows), fingerprint, images,
                        extra_header=extra)
            written = time.perf_counter() - start
            query = np.random.default_rng(1).standard_normal((1, dim), dtype=np.float32)
            ours = measure_query(folder, query, args.repeats)
            old = None
            if rows <= args.old_max_rows:
                log(f"timing the old open of {rows:,} rows ...")
                v1 = as_version_1(folder, work / f"v1-{rows}")
                old = measure_query(v1, query, args.old_repeats)
            rows_out.append({"rows": rows, "dim": dim, "write_s": written, "ours": ours, "old": old,
                             "gb": sum(f.stat().st_size for f in folder.iterdir()) / 1e9})
        largest, dim = sizes[-1]
        folder = work / f"ix-{largest}"
        candidates = entries_for(0, largest) + entries_for(largest + 10**8, args.append_files)
        log(f"appending {args.append_files} files to {largest:,} rows ...")
        append_s, added = median_seconds(lambda: our_append(folder, candidates, dim, seed=7), 1)
        assert added == args.append_files
        old_append = None
        if largest <= args.old_max_rows:
            old_append, todo = median_seconds(lambda: old_append_reads(work / f"v1-{largest}", candidates), 1)
            assert todo == args.append_files
        cli = None
        if args.cli:
            small = work / "ix-small"
            write_index(small, embedding_batches(1000, dim, seed=3), metadata_rows(1000), fingerprint, images,
                        extra_header=extra)
            log("timing `personsearch query` processes ...")
            cli = {"small": cli_seconds(small, 3), "large": cli_seconds(folder, 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        out = []
        for r in rows_out:
            out.append({
                "figure": f"open index + 1 query + hit metadata, {r['rows']:,} x {r['dim']}", "unit": "ms",
                "ours": r["ours"]["total"] * 1e3, "reference": r["old"]["total"] * 1e3 if r["old"] else None,
                "higher_is_better": False, "goal": "<= 200 ms beyond start-up at 1M" if r["rows"] == 10**6 else "-",
                "note": f"search alone {r['ours']['search'] * 1e3:.1f} ms",
            })
        print(json.dumps(out))
        return
    print(f"CPU: {cpu_description()}")
    print(f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("\nopen + exact top-10 search of one query + metadata of the 10 hits (warm, median; ms)")
    head = f"{'rows x dim':>16} {'GB':>5} {'open':>8} {'search':>8} {'hits':>7} {'ours':>8} {'old':>9} {'speed-up':>9}"
    print(head)
    for r in rows_out:
        o = r["ours"]
        old = r["old"]["total"] * 1e3 if r["old"] else None
        total = o["total"] * 1e3
        old_text, speedup = (f"{old:.0f}", f"{old / total:.0f}x") if old else ("-", "-")
        print(f"{r['rows']:>10,} x {r['dim']:<4} {r['gb']:>5.2f} {o['open'] * 1e3:>8.1f} {o['search'] * 1e3:>8.1f} "
              f"{o['hits'] * 1e3:>7.2f} {total:>8.1f} {old_text:>9} {speedup:>9}")
    print("  (old: the same files opened as format version 1 -- every row parsed and checked, every file hashed)")
    print("\nindex cost beyond the search itself (open + hit metadata, ms):")
    for r in rows_out:
        o = r["ours"]
        print(f"{r['rows']:>10,} rows: {(o['open'] + o['hits']) * 1e3:8.1f}   (search {o['search'] * 1e3:.1f})")
    print(f"\nappend {args.append_files} files to {largest:,} rows (decide among {len(candidates):,} candidates, "
          f"write one shard): ours {append_s * 1e3:.0f} ms"
          + (f"; old reads alone {old_append * 1e3:.0f} ms" if old_append is not None else ""))
    print("writing the indexes: " + ", ".join(f"{r['rows']:,} rows {r['write_s']:.1f} s" for r in rows_out))
    if cli is not None:
        print(f"\n`personsearch query` (fresh process, median of 3): {cli['small']:.2f} s on 1,000 rows, "
              f"{cli['large']:.2f} s on {largest:,} rows: the index costs {cli['large'] - cli['small']:+.2f} s "
              f"beyond start-up")


if __name__ == "__main__":
    main()
