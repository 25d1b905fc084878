"""``personsearch train``: the IRRA recipe with attention-guided masking, resumable, distributed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from personsearch.cli.common import ConfigOption, JsonOption, SetOption, print_json, state, stderr, terminal_safe
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
    max_steps: Annotated[int | None, typer.Option("--max-steps", help=(
        "Stop once the run has taken N optimizer steps (this invocation only: never saved with the run)."))] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", help=(
        "Stop after N minutes of this invocation (never saved with the run)."))] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Total epochs (train.epochs).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (runtime.seed).")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Launch N processes with torchrun (DDP).")] = None,
    json_: JsonOption = False,
) -> None:
    """Train a model; writes runs/<name>/ (config.yaml, metrics.jsonl, log.txt, checkpoints/)."""
    from personsearch.cli.progress import render_summary, training_progress
    from personsearch.engine import dist
    from personsearch.engine.train import train as run_training
    from personsearch.runs import check_new_run_dir, plan_run

    if nproc is not None:
        dist.check_nproc(nproc, device)
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
    settings, run_dir = plan_run(config=config, sets=sets, overrides=overrides, resume=resume, name=name)
    if nproc is not None and nproc > 1:
        # Input errors are found here, once, with exit 2: under torchrun they would surface as its
        # own traceback and exit 1 from every process.
        if resume is None:
            check_new_run_dir(run_dir)
        from personsearch.accel import check_precision, resolve_device

        check_precision(settings.runtime.precision, resolve_device(settings.runtime.device))
        code = dist.launch_torchrun(nproc, None if resume is not None else run_dir.name)
        if code:
            raise typer.Exit(code)
        return
    main = int(os.environ.get("RANK", "0")) == 0
    if settings.model.pretrained is None and main and resume is None:  # a resumed run loads its own weights
        stderr.print("[yellow]warning:[/] no pretrained CLIP weights: the backbone starts from random "
                     "initialisation (fine for the demo, far from the paper's numbers)")
    callbacks, progress = training_progress(quiet=state.quiet or json_ or not main)
    try:
        # Under the run's lock; on --resume the run is checked and its checkpoint loaded before
        # config.yaml is rewritten; a new run failing before its first checkpoint leaves nothing.
        result = run_training(settings, settings.data.root, run_dir, resume=resume is not None, callbacks=callbacks)
    finally:
        if progress is not None:
            progress.stop()
    if not main:
        return
    summary = {"run": str(run_dir), "epochs": result.epochs, "steps": result.steps, "stopped": result.stopped,
               "best": result.best, "last": result.last, "skipped_images": result.skipped_images,
               "selected_on": result.selected_on, "final": result.final}
    if result.signal is not None:
        summary["signal"] = result.signal
    if json_:
        print_json(summary)
    else:
        render_summary(summary)
    if result.signal is not None:
        # Scripts must not carry on as if training had finished: 128 + signal, as a shell reports it.
        stderr.print(Text.assemble((f"interrupted by signal {result.signal}", "yellow"), terminal_safe(
            f": the state at step {result.steps} is saved; continue with `personsearch train --resume {run_dir}`")))
        raise typer.Exit(128 + result.signal)
