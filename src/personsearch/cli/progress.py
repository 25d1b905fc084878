"""Rendering a training run on the terminal: live progress bars and the closing table (train, demo)."""

from __future__ import annotations

from typing import Any

from personsearch.cli.common import stderr, stdout, terminal_safe


def training_progress(quiet: bool):  # type: ignore[no-untyped-def]
    """Rich progress bars for training (epoch bar with running losses, evaluation bar)."""
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
        if "eval" not in tasks:  # the selected checkpoint evaluated with no epoch before (a finished run resumed)
            tasks["eval"] = progress.add_task("eval", total=None, status="embedding")
        progress.advance(tasks["eval"], count)

    def on_eval(epoch: int, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.2f}" for k, v in metrics.items())
        progress.update(tasks["eval"], status=text, total=progress.tasks[tasks["eval"]].completed)

    return TrainCallbacks(on_epoch_start, on_step, on_eval_start, on_eval, eval_progress), progress


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
