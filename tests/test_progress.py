"""Training progress on stderr: at 100 columns the epoch, its step count and the time left survive
(the losses are cut, not them); without a terminal, plain lines about ten times per epoch."""

from __future__ import annotations

import io
import re

from rich.console import Console
from tests.helpers import TINY_SETS
from typer.testing import CliRunner

from personsearch.cli import progress as progress_module
from personsearch.cli.app import app
from personsearch.engine.reports import StepReport


def _report(batch: int) -> StepReport:
    values = {"sdm_loss": 28.09512, "id_loss": 2.0821, "mlm_loss": 10.823, "img_acc": 0.1, "txt_acc": 0.2,
              "mlm_acc": 0.05, "loss": 45.728}
    return StepReport(epoch=1, step=300 + batch, batch=batch, batches=300, lr=1e-4, values=values,
                      samples_per_s=51.2, epochs=7)


def test_the_epoch_step_and_time_left_survive_a_narrow_terminal(monkeypatch):
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None, record=True)
    monkeypatch.setattr(progress_module, "stderr", console)
    callbacks, bars = progress_module._bar_progress()
    callbacks.on_epoch_start(1, 300, 0)
    callbacks.on_step(_report(12))
    bars.stop()
    screen = Console(file=io.StringIO(), width=100, color_system=None, record=True)
    screen.print(bars.make_tasks_table(bars.tasks))  # what the live display draws at 100 columns
    line = next(line for line in screen.export_text().splitlines() if "epoch" in line)
    assert len(line) <= 100
    assert "epoch 2/7" in line and "12/300" in line and re.search(r"\d+:\d\d:\d\d|-:--:--", line), line
    assert "loss=45.728" in line  # the total loss leads the status; the rest is cut as width allows


def test_without_a_terminal_training_prints_plain_lines_within_each_epoch(prepared_tiny, tmp_path):
    sets = [arg for item in TINY_SETS for arg in ("--set", item)]
    result = CliRunner().invoke(app, ["train", "--data", str(prepared_tiny), "--name", "lines", *sets,
                                      "--set", f"runtime.output_dir={tmp_path}", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch 1/1 step ")]
    assert len(lines) >= 2 and "s left in the epoch" in lines[0] and "loss=" in lines[0]
    assert any(line.startswith("evaluated epoch 1:") for line in result.stderr.splitlines())
