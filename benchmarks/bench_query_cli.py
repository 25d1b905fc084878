"""End-to-end ``personsearch query`` on a 10,000-image index: where the wall time goes.

Writes an index of random unit embeddings made "by" a random-weight run, then times the real
command in fresh processes (median of a few) beside a plain reference script doing the same work
the obvious way (np.load of every shard into float32, full matrix product, full argsort). The
start-up parts are measured separately: the interpreter, the CLI imports, torch, model loading,
opening (and checksumming) the index; what remains is encoding the query and searching.

    python benchmarks/bench_query_cli.py                 # tiny model, 10,000 x 64
    python benchmarks/bench_query_cli.py --vit-b16       # ViT-B/16 weights, 10,000 x 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_export import TINY_ARCH, random_run

TOKENIZER = "import torch; from personsearch.text import default_tokenizer; default_tokenizer()"
QUERY = "a woman in a red coat carrying a black bag"

REFERENCE = """
import sys, json, numpy as np, torch
from pathlib import Path
from personsearch.runs import load_trained
from personsearch.text import tokenize
index = Path(sys.argv[1]); header = json.loads((index / "header.json").read_text())
model = load_trained(header["model"]["weights"])
gallery = np.concatenate([np.load(index / s["embeddings"]).astype(np.float32) for s in header["shards"]])
with torch.no_grad():
    q = model.clip.encode_text(tokenize([sys.argv[2]], model.settings.model.text_length)).numpy()
q = q / np.linalg.norm(q, axis=1, keepdims=True)
scores = q @ gallery.T
order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
paths = [json.loads(line)["path"] for s in header["shards"] for line in open(index / s["metadata"])]
print(json.dumps([{"path": paths[i], "score": float(scores[0, i])} for i in order[0]]))
"""


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall seconds of a fresh process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process(index_dir: Path, repeats: int) -> dict[str, float]:
    """Model load, index open (with and without checksums) and warm encode+search, in seconds."""
    import torch

    from personsearch.retrieval.index import GalleryIndex
    from personsearch.retrieval.query import model_for_index, search_text

    parts: dict[str, list[float]] = {"model": [], "open_verify": [], "open": [], "search": []}
    for _ in range(repeats):
        start = time.perf_counter()
        index = GalleryIndex.open(index_dir, verify=True)
        parts["open_verify"].append(time.perf_counter() - start)
        start = time.perf_counter()
        index = GalleryIndex.open(index_dir, verify=False)
        parts["open"].append(time.perf_counter() - start)
        start = time.perf_counter()
        model = model_for_index(index)
        parts["model"].append(time.perf_counter() - start)
        search_text(model, index, [QUERY], k=10)  # warm: first metadata read, first forward
        start = time.perf_counter()
        with torch.inference_mode():
            search_text(model, index, [QUERY], k=10)
        parts["search"].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit-b16", action="store_true", help="ViT-B/16 weights (512-d) instead of a tiny model")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()

    from personsearch.retrieval import write_index
    from personsearch.runs import load_trained

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run = random_run(tmp_path / "runs", [] if args.vit_b16 else TINY_ARCH)
        model = load_trained(run)
        dim = model.clip.embed_dim
        rng = np.random.default_rng(0)
        embeddings = rng.standard_normal((args.rows, dim), dtype=np.float32)
        entries = [
            {"path": f"cam{i % 8}/{i:07d}.jpg", "pid": i % 1000, "size": 4000 + i, "mtime_ns": i}
            for i in range(args.rows)
        ]
        index_dir = run / "index"
        extra = {"run": str(run), "weights": str(model.weights), "kind": "run"}
        write_index(index_dir, embeddings, entries, model.fingerprint, tmp_path / "images", extra_header=extra)
        del model

        exe = Path(sys.executable)
        subprocess.run([str(exe), "-c", "import torch"], check=True)  # warm the file cache
        cli = str(exe.parent / "personsearch")
        query = [cli, "query", QUERY, "--index", str(index_dir), "--json"]
        figures = {
            "python start": wall([str(exe), "-c", "pass"], args.repeats),
            "import CLI (typer, rich)": wall([str(exe), "-c", "import personsearch.cli.app"], args.repeats),
            "import torch": wall([str(exe), "-c", "import torch"], args.repeats),
            "personsearch query": wall(query, args.repeats),
            "import torch + load tokenizer": wall([str(exe), "-c", TOKENIZER], args.repeats),
            "reference script": wall([str(exe), "-c", REFERENCE, str(index_dir), QUERY], args.repeats),
        }
        parts = in_process(index_dir, args.repeats)
        out = json.loads(subprocess.run(query, check=True, capture_output=True, text=True).stdout)
        assert len(out["results"]) == 10

    if args.json:
        total = figures["personsearch query"]
        startup = figures["import torch + load tokenizer"] + parts["model"] + parts["open_verify"]
        print(json.dumps([{
            "figure": f"`personsearch query` end to end, {args.rows:,}-image index", "unit": "s", "ours": total,
            "reference": figures["reference script"], "higher_is_better": False, "goal": "-",
            "note": f"start-up {startup:.2f} s of it; encode + search {parts['search'] * 1e3:.1f} ms",
        }]))
        return
    print(f"index: {args.rows:,} x {dim} float16, {'ViT-B/16' if args.vit_b16 else 'tiny'} random-weight model")
    print(f"{'fresh process (median wall)':<36} {'seconds':>8}")
    for name, seconds in figures.items():
        print(f"{name:<36} {seconds:>8.3f}")
    print(f"\n{'in-process part (median)':<36} {'seconds':>8}")
    names = {
        "model": "load model (weights + fingerprint)",
        "open_verify": "open index, sha256 checked",
        "open": "open index, sizes only",
        "search": "encode query + exact top-10 (warm)",
    }
    for key, name in names.items():
        print(f"{name:<36} {parts[key]:>8.4f}")
    total = figures["personsearch query"]
    startup = figures["import torch + load tokenizer"] + parts["model"] + parts["open_verify"]
    print(
        f"\nstart-up (python, torch, tokenizer, model, index open): {startup:.3f} s of {total:.3f} s "
        f"({100 * startup / total:.0f}%); encode + search: {parts['search'] * 1e3:.1f} ms "
        f"({100 * parts['search'] / total:.1f}%)"
    )


if __name__ == "__main__":
    main()
