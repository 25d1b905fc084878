"""A warm text query through ``personsearch serve`` beside a one-shot ``personsearch query``.

Builds a run holding a randomly initialised CLIP of the real ViT-B/16 shape (``bench_export.random_run``)
and a 100,000-row index "made by" it (``write_index``: random unit embeddings of its dimension, the
run's fingerprint and paths in the header, as ``export`` records them). Then, in the same run:

- **one-shot**: the whole ``personsearch query TEXT --index INDEX --json`` command in a fresh
  process (what a script pays per query without a server), median of ``--cli-repeats``;
- **warm**: ``personsearch serve`` started once as a real process; each query is one HTTP request
  (a new connection, ``/api/search?q=...&k=10``) timed from the client: median and 90th percentile
  over ``--queries`` different texts, one at a time;
- **16 clients**: the same texts sent by 16 threads at once (text queries arriving together are
  encoded in one batch): queries per second and the median latency under that load.

    python benchmarks/bench_serve.py                 # ~2 minutes
    python benchmarks/bench_serve.py --rows 1000000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import random_run  # noqa: E402
from run_all import load_average, machine_header  # noqa: E402

WORDS = ("woman", "man", "red", "blue", "black", "white", "coat", "jacket", "backpack", "shorts", "dress",
         "shoes", "bag", "hat", "striped", "grey", "long hair", "jeans", "carrying", "walking")


def texts(count: int) -> list[str]:
    """``count`` different plausible descriptions (8-14 words)."""
    out = []
    for i in range(count):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 4)]
        out.append(f"a person with {' and '.join(words[:2])} wearing {' '.join(words[2:])}")
    return out


def build(work: Path, rows: int) -> tuple[Path, Path]:
    """The random ViT-B/16 run and an index of ``rows`` random embeddings that records it."""
    import numpy as np

    from personsearch.retrieval import IndexEntry, write_index
    from personsearch.runs import load_trained

    run = random_run(work / "runs", [])
    model = load_trained(run)
    dim = model.clip.embed_dim
    images = work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)

    def batches():
        for start in range(0, rows, 65536):
            yield rng.standard_normal((min(65536, rows - start), dim), dtype=np.float32)

    entries = (IndexEntry(f"cam{i % 16:02d}/{i:08d}.jpg", i % 5000, 4000, 1_700_000_000_000_000_000 + i)
               for i in range(rows))
    index = work / "index"
    write_index(index, batches(), entries, model.fingerprint, images,
                extra_header={"run": str(run), "weights": str(model.weights), "kind": "run"})
    return run, index


def one_shot(index: Path, text: str, repeats: int) -> float:
    cli = str(Path(sys.executable).parent / "personsearch")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([cli, "query", text, "--index", str(index), "--json", "--no-verify"], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def start_server(index: Path) -> tuple[subprocess.Popen, str]:
    cli = str(Path(sys.executable).parent / "personsearch")
    process = subprocess.Popen([cli, "serve", "--index", str(index), "--port", "0", "--no-verify"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(r"at (http://\S+/)", line)
        if found:
            return process, found.group(1)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit("the server did not start")


def ask(url: str, text: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"{url}api/search?{urllib.parse.urlencode({'q': text, 'k': 10})}") as response:
        found = json.loads(response.read())
    elapsed = time.perf_counter() - start
    assert len(found["results"]) == 10
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows (run_all.py)")
    args = parser.parse_args()

    say = (lambda *a: None) if args.json else print
    say(machine_header())
    say(f"load average before: {load_average()}")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=args.dir))
    try:
        start = time.perf_counter()
        _, index = build(work, args.rows)
        say(f"built a random ViT-B/16 run and a {args.rows:,}-row index in {time.perf_counter() - start:.0f} s")
        questions = texts(args.queries)
        cold = one_shot(index, questions[0], args.cli_repeats)
        process, url = start_server(index)
        try:
            for text in questions[:5]:  # warm-up: first calls, page cache
                ask(url, text)
            warm = sorted(ask(url, text) for text in questions)
            with ThreadPoolExecutor(16) as pool:
                start = time.perf_counter()
                loaded = list(pool.map(lambda text: ask(url, text), questions * 4))
                wall = time.perf_counter() - start
        finally:
            process.terminate()
            process.wait(timeout=60)
        median, p90 = statistics.median(warm), warm[int(0.9 * (len(warm) - 1))]
        if args.json:
            print(json.dumps([
                {"figure": f"warm `serve` text query over HTTP, {args.rows:,} x 512 index, ViT-B/16 "
                           "(reference: one-shot `personsearch query`)", "unit": "s", "ours": median,
                 "reference": cold, "higher_is_better": False, "goal": "<= 50 ms",
                 "note": f"p90 {p90 * 1000:.1f} ms"},
                {"figure": "warm `serve`, 16 clients at once (queries/s)", "unit": "queries/s",
                 "ours": len(loaded) / wall, "reference": 1 / median, "goal": "-",
                 "note": f"reference: one client; median latency {statistics.median(loaded) * 1000:.0f} ms"},
            ]))
            return
        print(f"\n| {args.rows:,}-row index, ViT-B/16 text tower, top 10 | seconds per query | queries/s |")
        print("|---|---|---|")
        print(f"| one-shot `personsearch query` (fresh process, median of {args.cli_repeats}) | {cold:.2f} | "
              f"{1 / cold:.2f} |")
        print(f"| warm `serve`, one HTTP request at a time (median; p90 {p90 * 1000:.1f} ms) | "
              f"{median * 1000:.1f} ms | {1 / median:.1f} |")
        print(f"| warm `serve`, 16 clients at once (median latency under load) | "
              f"{statistics.median(loaded) * 1000:.1f} ms | {len(loaded) / wall:.1f} |")
        print(f"\nwarm query vs one-shot: {cold / median:.0f}x faster; goal: median <= 50 ms "
              f"({'met' if median <= 0.050 else 'NOT met'})")
        print(f"load average after: {load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
