"""Every speed figure the issues name, each beside its plain reference formulation, as one table.

Runs each benchmark script of this folder in its own subprocess with ``--json`` (the script then
measures ours and its reference in the same process and prints a list of rows), and prints one
markdown table: figure | ours | reference | speed-up | goal | machine note. The machine (CPU model,
cores, bf16 support, torch version, load average) is printed above it: other work on the machine
makes the absolute figures noisy, so every row also notes the 1-minute load average when it ended.

    python benchmarks/run_all.py --quick           # a few minutes on 2 CPU cores
    python benchmarks/run_all.py                   # the scripts' full default sizes (longer)
    python benchmarks/run_all.py --only embed,train_step --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from personsearch.accel import cpu_flags, cpu_model

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark("tokenizer", "bench_tokenizer.py", ("--captions", "20000")),
    Benchmark("embed", "bench_embed.py", ("--image-batches", "1", "--text-batches", "1")),
    Benchmark("open_clip", "bench_open_clip.py", ("--image-batches", "3", "--text-batches", "2")),
    Benchmark("metrics", "bench_metrics.py", ("--repeat", "1", "--skip-icfg")),
    Benchmark("masking", "bench_masking.py", ("--repeats", "5")),
    Benchmark("irra_forward", "bench_irra_forward.py", ("--repeats", "1")),
    Benchmark("train_step", "bench_train_step.py", ("--steps", "3")),
    Benchmark("search", "bench_search.py", ("--repeats", "5")),
    Benchmark("export", "bench_export.py", ()),
    Benchmark("query_cli", "bench_query_cli.py", ()),
    Benchmark("query_startup", "bench_query_startup.py", ("--repeats", "3")),
    Benchmark("index_scale", "bench_index_scale.py", ("--sizes", "10000,100000", "--repeats", "3")),
    Benchmark("serve", "bench_serve.py", ("--queries", "30", "--cli-repeats", "2")),
)


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def auto_precision() -> str:
    """What ``--precision auto`` picks here, and why (bf16 speed measured where the CPU has it)."""
    import torch

    from personsearch.accel import resolve_precision

    return str(resolve_precision("auto", torch.device("cpu")))


def bf16_slower_here() -> bool:
    return auto_precision().startswith("fp32")


def machine_header() -> str:
    import torch

    flags = cpu_flags()
    bf16 = sorted(f for f in flags if "bf16" in f) or ["none (no AVX512-BF16/AMX: bf16 is emulated)"]
    simd = "AVX512" if any(f.startswith("avx512") for f in flags) else "AVX2" if "avx2" in flags else "?"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, widest SIMD {simd}, bf16 instructions: "
        f"{', '.join(bf16)}\n"
        f"- `--precision auto` on this CPU: {auto_precision()}\n"
        f"- torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"GPU: {cuda}\n"
        f"- load average at start (1, 5, 15 min): {load_average()}"
    )


def run_one(bench: Benchmark, quick: bool, timeout: float) -> list[dict]:
    """The script's rows, or one row saying why there are none."""
    script = HERE / bench.script
    command = [sys.executable, str(script), "--json", *(bench.quick if quick else bench.full)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return [failure(bench, f"timed out after {timeout:.0f} s")]
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return [failure(bench, f"exit {done.returncode}: {lines[-1] if lines else 'no message'}")]
    try:
        rows = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return [failure(bench, "no JSON rows on stdout")]
    load = os.getloadavg()[0]
    for row in rows:
        row["script"] = bench.script
        row["seconds"] = round(seconds, 1)
        row["load"] = round(load, 2)
    return rows


def failure(bench: Benchmark, why: str) -> dict:
    return {"figure": f"{bench.script}", "error": why, "script": bench.script, "load": os.getloadavg()[0]}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    digits = 3 if abs(value) < 1 else 2 if abs(value) < 100 else 0 if abs(value) >= 1000 else 1
    return f"{value:,.{digits}f} {unit}"


def speedup(row: dict) -> str:
    ours, ref = row.get("ours"), row.get("reference")
    if not ours or not ref:
        return "-"
    ratio = ours / ref if row.get("higher_is_better", True) else ref / ours
    return f"{ratio:.2f}x"


def machine_note(row: dict, bf16_hardware: bool, bf16_slow: bool = False) -> str:
    parts = []
    if "bf16" in row.get("figure", "") and not bf16_hardware:
        parts.append("no bf16 hardware here (AVX2): bf16 slower than fp32")
    elif "bf16" in row.get("figure", "") and bf16_slow:
        parts.append("bf16 matrix products slower than fp32 on this CPU")
    if row.get("note"):
        parts.append(str(row["note"]))
    parts.append(f"load {row['load']:.1f}")
    return "; ".join(parts).replace("|", "/")


def table(rows: list[dict]) -> str:
    bf16_hardware = any("bf16" in f for f in cpu_flags())
    bf16_slow = bf16_hardware and bf16_slower_here()
    lines = ["| figure | ours | reference | speed-up | goal | machine note |", "|---|---:|---:|---:|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['figure']} | - | - | - | - | not measured: {row['error'].replace('|', '/')} |")
            continue
        unit = row.get("unit", "")
        lines.append(
            f"| {row['figure']} | {fmt(row.get('ours'), unit)} | {fmt(row.get('reference'), unit)} | "
            f"{speedup(row)} | {row.get('goal', '-')} | {machine_note(row, bf16_hardware, bf16_slow)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (fewer repeats, smaller counts)")
    parser.add_argument("--only", default="", help="comma-separated names: " + ", ".join(b.name for b in BENCHMARKS))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script before it is stopped")
    parser.add_argument("--json", action="store_true", help="print only the rows as JSON")
    args = parser.parse_args()
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = chosen - {b.name for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark {sorted(unknown)[0]!r}; choose from {', '.join(b.name for b in BENCHMARKS)}")

    header = machine_header()
    if not args.json:
        print(header, flush=True)
    rows: list[dict] = []
    started = time.perf_counter()
    for bench in BENCHMARKS:
        if chosen and bench.name not in chosen:
            continue
        if not (HERE / bench.script).exists():
            if chosen:
                rows.append(failure(bench, "script not present"))
            continue
        if not args.json:
            print(f"  running {bench.script} ...", file=sys.stderr, flush=True)
        rows.extend(run_one(bench, args.quick, args.timeout))
    if args.json:
        print(json.dumps(rows))
        return
    mode = "--quick" if args.quick else "full"
    print(f"- {mode} run, {time.perf_counter() - started:.0f} s in all; load average at end: {load_average()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
