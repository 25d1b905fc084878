"""Speed of ``rank_metrics`` beside the plain formulation, measured in the same run.

The plain formulation is the usual one (IRRA's ``rank``): a full descending argsort of every
similarity row (stable, so ties follow gallery order), gather the match matrix, cumulative sums.
Sizes: CUHK-PEDES test (6,156 captions x 3,074 images, 1,000 identities) for the comparison, then
ICFG-PEDES test (19,848 x 19,848 is the caption count; 20,000 x 15,000 here) for time and memory.

    python benchmarks/bench_metrics.py [--repeat 3] [--skip-icfg]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from personsearch.metrics import rank_metrics


def synthetic_split(
    queries: int, gallery: int, identities: int, dim: int = 256, noise: float = 2.0, seed: int = 0
):
    """Embeddings with identity structure; noise 2.0 gives CUHK-like figures (R1 ~ 70, mINP ~ 27)."""
    gen = torch.Generator().manual_seed(seed)
    g_pids = torch.cat(
        [torch.arange(identities), torch.randint(0, identities, (gallery - identities,), generator=gen)]
    )
    g_pids = g_pids[torch.randperm(gallery, generator=gen)]
    q_pids = g_pids[torch.randint(0, gallery, (queries,), generator=gen)]
    centres = torch.randn(identities, dim, generator=gen)
    g = torch.nn.functional.normalize(
        centres[g_pids] + noise * torch.randn(gallery, dim, generator=gen), dim=1
    )
    q = torch.nn.functional.normalize(
        centres[q_pids] + noise * torch.randn(queries, dim, generator=gen), dim=1
    )
    return q @ g.T, q_pids, g_pids


def plain_rank(similarity: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, max_rank: int = 10):
    """The plain formulation: argsort every row, then cumulative sums over the match matrix."""
    indices = torch.argsort(similarity, dim=1, descending=True, stable=True)
    matches = g_pids[indices].eq(q_pids.view(-1, 1))
    cmc = matches[:, :max_rank].cumsum(1).clamp(max=1).double().mean(0) * 100
    num_rel = matches.sum(1)
    cum = matches.cumsum(1).double()
    positions = torch.arange(1, matches.shape[1] + 1, dtype=torch.float64)
    ap = ((cum / positions) * matches).sum(1) / num_rel
    last = matches.shape[1] - 1 - matches.flip(1).int().argmax(1)
    inp = num_rel.double() / (last + 1).double()
    return {
        "R1": cmc[0].item(),
        "R5": cmc[4].item(),
        "R10": cmc[9].item(),
        "mAP": ap.mean().item() * 100,
        "mINP": inp.mean().item() * 100,
    }


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-icfg", action="store_true")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    console = Console(quiet=args.json)
    rows: list[dict] = []
    console.print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}")

    sim, q_pids, g_pids = synthetic_split(6156, 3074, 1000)
    plain_s, plain = best_time(lambda: plain_rank(sim, q_pids, g_pids), args.repeat)
    ours_s, ours = best_time(lambda: rank_metrics(sim, q_pids, g_pids), args.repeat)
    table = Table(title="rank_metrics, CUHK-PEDES test size (6,156 x 3,074)")
    table.add_column("metric")
    table.add_column("plain", justify="right")
    table.add_column("ours", justify="right")
    table.add_column("|diff|", justify="right")
    worst = 0.0
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        diff = abs(plain[key] - ours[key])
        worst = max(worst, diff)
        table.add_row(key, f"{plain[key]:.6f}", f"{ours[key]:.6f}", f"{diff:.1e}")
    table.add_row(f"seconds (best of {args.repeat})", f"{plain_s:.3f}", f"{ours_s:.3f}", "")
    table.add_row("speed-up", "1.0x", f"{plain_s / ours_s:.1f}x", "")
    console.print(table)
    if worst > 1e-9:
        raise SystemExit(f"results differ from the plain formulation by {worst:.3e}")
    console.print("identical results (R@K exact; mAP/mINP to 1e-9, float64 sums in another order)")
    rows.append({
        "figure": "rank_metrics 6,156 x 3,074 (CUHK-PEDES test)", "unit": "s", "ours": ours_s,
        "reference": plain_s, "higher_is_better": False, "goal": ">= 10x faster",
        "note": f"identical (max |diff| {worst:.0e})",
    })

    if args.skip_icfg:
        if args.json:
            print(json.dumps(rows))
        return
    del sim
    sim, q_pids, g_pids = synthetic_split(20000, 15000, 3000)
    sim_np = sim.numpy()
    tracemalloc.start()
    start = time.perf_counter()
    result = rank_metrics(sim_np, q_pids.numpy(), g_pids.numpy())
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(
        f"ICFG-PEDES size (20,000 x 15,000 float32, {sim_np.nbytes / 2**30:.2f} GiB input): "
        f"{seconds:.2f} s, peak extra numpy memory {peak / 2**20:.1f} MiB, process peak RSS {rss:.0f} MiB; "
        f"R1 {result['R1']:.2f} mAP {result['mAP']:.2f} mINP {result['mINP']:.2f}"
    )
    rows.append({
        "figure": "rank_metrics 20,000 x 15,000 (ICFG-PEDES size)", "unit": "s", "ours": seconds,
        "reference": None, "higher_is_better": False, "goal": "within a few GB",
        "note": f"peak extra numpy {peak / 2**20:.0f} MiB, process peak RSS {rss:.0f} MiB",
    })
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
