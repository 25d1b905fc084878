"""``personsearch train``: the IRRA recipe with attention-guided masking, resumable, distributed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from personsearch.cli.common import ConfigOption, JsonOption, SetOption, print_json, state, stderr, stdout
from personsearch.errors import InputError

Precision = Annotated[str | None, typer.Option("--precision", help="fp32, bf16 (CPU/GPU) or fp16 (CUDA).")]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]


def train(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Prepared dataset folder (from `prepare`).")] = None,
    config: ConfigOption = None,
    pretrained: Annotated[str | None, typer.Option(
        "--pretrained", help="CLIP weights: ViT-B/16 (from ~/.cache/clip), a file or folder; 'none' = random init."
    )] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Run name (folder under runtime.output_dir).")
    ] = None,
    set_: SetOption = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue this run folder where it stopped.")] = None,
    precision: Precision = None,
    device: Device = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", help="Stop after N minutes.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Total epochs (train.epochs).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (runtime.seed).")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Launch N processes with torchrun (DDP).")] = None,
    json_: JsonOption = False,
) -> None:
    """Train a model; writes runs/<name>/ (config.yaml, metrics.jsonl, log.txt, checkpoints/)."""
    if nproc is not None:
        _check_nproc(nproc, device)

    from personsearch.engine.train import train as run_training
    from personsearch.io import safe_component
    from personsearch.runs import check_new_run_dir, check_outside_inputs, held_run, is_run, new_run_name
    from personsearch.settings import load_run_settings, resolve_settings

    overrides: dict[str, object] = {
        "runtime.precision": precision, "runtime.device": device, "train.max_steps": max_steps,
        "train.max_minutes": max_minutes, "train.epochs": epochs, "runtime.seed": seed,
    }
    if data is not None:
        if not data.exists():
            raise InputError(f"prepared dataset not found: {data}", hint="run `personsearch prepare` first")
        if not data.is_dir():
            raise InputError(f"--data {data} is a file, not a prepared dataset folder",
                             hint="pass the folder `personsearch prepare --out` wrote")
        overrides["data.root"] = str(data.resolve())
    sets = list(set_ or [])
    if pretrained is not None:
        if pretrained.lower() in ("none", "null", ""):
            sets.append("model.pretrained=null")  # an option value of None would mean "not given"
        else:
            overrides["model.pretrained"] = pretrained

    rank = int(os.environ.get("RANK", "0"))
    if resume is not None:
        if not resume.is_dir():
            raise InputError(f"run folder not found: {resume}")
        if not is_run(resume):
            raise InputError(f"{resume} is not a run folder (no config.yaml written by `personsearch train`)",
                             hint="pass the folder `personsearch train` created under runtime.output_dir")
        settings = resolve_settings(config=config, sets=sets, overrides=overrides, base=load_run_settings(resume))
        run_dir = resume
    else:
        settings = resolve_settings(config=config, sets=sets, overrides=overrides)
        if name is None and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            raise InputError("under torchrun every process needs the same run: pass --name")
        run_name = safe_component(name) if name is not None else new_run_name(_safe_stem(config))
        run_dir = Path(settings.runtime.output_dir) / run_name
    if settings.data.root is None:
        raise InputError("no training data: pass --data PREPARED (a folder written by `personsearch prepare`)")

    check_outside_inputs(run_dir, settings.data.root)  # before the run folder is made, not after
    if nproc is not None and nproc > 1:
        # Input errors are found here, once, with exit 2: under torchrun they would surface as its
        # own traceback and exit 1 from every process.
        if resume is None:
            check_new_run_dir(run_dir)
        from personsearch.accel import check_precision, resolve_device

        check_precision(settings.runtime.precision, resolve_device(settings.runtime.device))
        _launch_torchrun(nproc, None if resume is not None else run_dir.name)
        return
    with held_run(settings, run_dir, new=resume is None, writer=rank == 0):
        if settings.model.pretrained is None and rank == 0:
            stderr.print("[yellow]warning:[/] no pretrained CLIP weights: the backbone starts from random "
                         "initialisation (fine for the demo, far from the paper's numbers)")
        callbacks, progress = training_progress(quiet=state.quiet or json_ or rank != 0)
        try:
            # On --resume the library checks the run and loads its checkpoint before it rewrites config.yaml.
            result = run_training(settings, settings.data.root, run_dir, resume=resume is not None,
                                  callbacks=callbacks)
        finally:
            if progress is not None:
                progress.stop()
    if rank != 0:
        return
    summary = {"run": str(run_dir), "epochs": result.epochs, "steps": result.steps, "stopped": result.stopped,
               "best": result.best, "last": result.last, "skipped_images": result.skipped_images,
               "selected_on": result.selected_on, "final": result.final}
    if result.signal is not None:
        summary["signal"] = result.signal
    if json_:
        print_json(summary)
    else:
        _render_summary(summary)
    if result.signal is not None:
        # Scripts must not carry on as if training had finished: 128 + signal, as a shell reports it.
        stderr.print(f"[yellow]interrupted by signal {result.signal}[/]: the state at step {result.steps} is saved; "
                     f"continue with `personsearch train --resume {run_dir}`")
        raise typer.Exit(128 + result.signal)


def _safe_stem(config: object) -> str:
    """A default run name from the config file's name, reduced to safe characters."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(config)).stem).strip(".-") if config else ""
    return stem[:64] or "run"


def _check_nproc(nproc: int, device: str | None) -> None:
    """One process per GPU (or, on the CPU, at most one per core): anything else is a typo that would
    start hundreds of training processes, or none."""
    if nproc < 1:
        raise InputError(f"--nproc {nproc}: give the number of training processes, 1 or more")
    if nproc == 1:
        return
    import torch

    on_gpu = torch.cuda.is_available() and (device or "auto") not in ("cpu",)
    limit = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    if nproc > limit:
        where = f"{limit} CUDA devices" if on_gpu else f"{limit} CPU cores"
        raise InputError(f"--nproc {nproc} is more processes than this machine has {where}",
                         hint=f"use --nproc {limit} or fewer")


def _launch_torchrun(nproc: int, name: str | None) -> None:
    """Re-run this command under torch.distributed.run with N processes (same arguments)."""
    args = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    if name is not None and not any(arg in ("--name", "-n") or arg.startswith("--name=") for arg in args):
        args += ["--name", name]  # the default name, chosen once for every process
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "personsearch", *args]
    code = subprocess.call(command)
    if code:
        raise typer.Exit(code)


def training_progress(quiet: bool):  # type: ignore[no-untyped-def]
    """Rich progress bars for training (epoch bar with running losses, evaluation bar); shared by demo."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from personsearch.engine.train import StepReport, TrainCallbacks

    if quiet:
        return TrainCallbacks(), None
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"), console=stderr, transient=False,
    )
    progress.start()
    tasks: dict[str, int] = {}

    def on_epoch_start(epoch: int, batches: int, done: int) -> None:
        tasks["epoch"] = progress.add_task(f"epoch {epoch + 1}", total=batches, completed=done, status="")

    def on_step(report: StepReport) -> None:
        shown = " ".join(f"{k.replace('_loss', '')}={v:.3f}" for k, v in report.values.items()
                         if k.endswith("loss") and k != "loss")
        accs = " ".join(f"{k}={v:.2f}" for k, v in report.values.items() if k.endswith("acc"))
        status = (f"loss={report.values.get('loss', float('nan')):.3f} {shown} {accs} "
                  f"lr={report.lr:.2e} {report.samples_per_s:.1f} samples/s")
        progress.update(tasks["epoch"], completed=report.batch, status=status)

    def on_eval_start(epoch: int) -> None:
        tasks["eval"] = progress.add_task(f"eval {epoch + 1}", total=None, status="embedding")

    def eval_progress(count: int) -> None:
        progress.advance(tasks["eval"], count)

    def on_eval(epoch: int, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.2f}" for k, v in metrics.items())
        progress.update(tasks["eval"], status=text, total=progress.tasks[tasks["eval"]].completed)

    return TrainCallbacks(on_epoch_start, on_step, on_eval_start, on_eval, eval_progress), progress


def _render_summary(summary: dict) -> None:  # type: ignore[type-arg]
    from rich.table import Table

    table = Table(title=f"run {summary['run']} ({summary['stopped']}, {summary['epochs']} epochs, "
                        f"{summary['steps']} steps)")
    table.add_column("")
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        table.add_column(key, justify="right")
    on = summary.get("selected_on", "")
    final = summary.get("final") or {}
    rows = [(f"best on {on}" if on else "best", summary["best"]), (f"last on {on}" if on else "last", summary["last"])]
    if final:
        rows.append((f"selected on {final['selected_on']}, {final['split']}", final))
    for label, row in rows:
        if row:
            table.add_row(label + (f" (epoch {row['epoch']})" if "epoch" in row else ""),
                          *(f"{row.get(k, float('nan')):.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP")))
    stdout.print(table)
    if final:
        stdout.print(f"queries_without_match ({final['split']}): {final.get('queries_without_match', 0)}")
    if summary["skipped_images"]:
        stderr.print(f"[yellow]{summary['skipped_images']} unreadable training images were skipped[/]")
