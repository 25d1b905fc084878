"""Rendering a training run on the terminal: live progress bars and the closing table (train, demo)."""

from __future__ import annotations

from typing import Any

from personsearch.cli.common import stderr, stdout, terminal_safe


def training_progress(quiet: bool):  # type: ignore[no-untyped-def]
    """Progress of a training run on stderr: live bars on a terminal (the epoch, its step count and
    the time left come first and always fit; losses fill what width remains), or, without one (a
    log file, CI), one plain line about every tenth of an epoch."""
    from personsearch.engine.train import TrainCallbacks

    if quiet:
        return TrainCallbacks(), None
    if not stderr.is_terminal:
        return _line_progress(), None
    return _bar_progress()


def _status(report: Any) -> str:
    """``loss=… sdm=… mlm_acc=… lr=… N samples/s``: the total loss first, the rest as room allows."""
    losses = " ".join(f"{k.replace('_loss', '')}={v:.3f}" for k, v in report.values.items()
                      if k.endswith("loss") and k != "loss")
    accs = " ".join(f"{k}={v:.2f}" for k, v in report.values.items() if k.endswith("acc"))
    return (f"loss={report.values.get('loss', float('nan')):.3f} {losses} {accs} "
            f"lr={report.lr:.2e} {report.samples_per_s:.1f} samples/s")


def _epoch_label(epoch: int, epochs: int) -> str:
    return f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}"


def _bar_progress():  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Column

    from personsearch.engine.train import StepReport, TrainCallbacks

    progress = Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        BarColumn(bar_width=16),
        TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        console=stderr, transient=False, expand=True,
    )
    progress.start()
    tasks: dict[str, int] = {}

    def on_epoch_start(epoch: int, batches: int, done: int) -> None:
        tasks["epoch"] = progress.add_task(f"epoch {epoch + 1}", total=batches, completed=done, status="")

    def on_step(report: StepReport) -> None:
        progress.update(tasks["epoch"], completed=report.batch, status=_status(report),
                        description=_epoch_label(report.epoch, report.epochs))

    def on_eval_start(epoch: int) -> None:
        tasks["eval"] = progress.add_task(f"eval {epoch + 1}", total=None, status="embedding")

    def eval_progress(count: int) -> None:
        if "eval" not in tasks:  # the selected checkpoint evaluated with no epoch before (a finished run resumed)
            tasks["eval"] = progress.add_task("eval", total=None, status="embedding")
        progress.advance(tasks["eval"], count)

    def on_eval(epoch: int, metrics: dict[str, float]) -> None:
        if "eval" not in tasks:
            tasks["eval"] = progress.add_task("eval", total=0, status="")
        progress.update(tasks["eval"], status=_metrics_text(metrics), total=progress.tasks[tasks["eval"]].completed)

    return TrainCallbacks(on_epoch_start, on_step, on_eval_start, on_eval, eval_progress), progress


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.2f}" for k, v in metrics.items())


def _line_progress():  # type: ignore[no-untyped-def]
    """Plain lines for a log: about ten per epoch (and always its last step), each with the epoch,
    the step, the time left in the epoch and the losses."""
    import time

    from personsearch.engine.train import StepReport, TrainCallbacks

    epoch_started: dict[str, float] = {}

    def on_epoch_start(epoch: int, batches: int, done: int) -> None:
        epoch_started.update(time=time.monotonic(), done=done)

    def on_step(report: StepReport) -> None:
        every = max(1, report.batches // 10)
        if report.batch % every and report.batch != report.batches:
            return
        ran = report.batch - epoch_started.get("done", 0)
        elapsed = time.monotonic() - epoch_started.get("time", time.monotonic())
        left = elapsed / ran * (report.batches - report.batch) if ran > 0 else 0.0
        stderr.print(f"{_epoch_label(report.epoch, report.epochs)} step {report.batch}/{report.batches} "
                     f"({left:.0f} s left in the epoch): {_status(report)}", highlight=False, markup=False)

    def on_eval(epoch: int, metrics: dict[str, float]) -> None:
        stderr.print(f"evaluated epoch {epoch + 1}: {_metrics_text(metrics)}", highlight=False, markup=False)

    return TrainCallbacks(on_epoch_start, on_step, None, on_eval, None)


def render_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=terminal_safe(f"run {summary['run']} ({summary['stopped']}, {summary['epochs']} epochs, "
                                      f"{summary['steps']} steps)"))  # a run's name may hold "[...]"
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
