"""Snags a newcomer hit (issue 16), each pinned: budgets given to one `train` apply to it only (1),
resuming a finished run says so (6), global flags after the verb (7), help and hints shown as
written (8), one device default (9), a failed `prepare synthetic` leaves no empty --out (13), and
an image folder of links pointing elsewhere is explained (14)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tests.helpers import TINY_SETS
from typer.testing import CliRunner

from personsearch.cli import common
from personsearch.cli.app import app
from personsearch.errors import InputError

runner = CliRunner()


def _budgets(run: Path) -> dict:
    train = yaml.safe_load((run / "config.yaml").read_text())["train"]
    return {key: train[key] for key in ("max_steps", "max_minutes")}


def test_budgets_apply_to_one_invocation_and_a_finished_run_says_so(prepared_tiny, tmp_path):
    sets = [arg for item in TINY_SETS + [f"runtime.output_dir={tmp_path}"] for arg in ("--set", item)]
    run = tmp_path / "budget"
    first = runner.invoke(app, ["train", "--data", str(prepared_tiny), "--name", "budget", "--json",
                                "--max-steps", "3", "--max-minutes", "60", *sets])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["stopped"] == "max_steps"
    assert _budgets(run) == {"max_steps": None, "max_minutes": None}  # never saved with the run
    second = runner.invoke(app, ["train", "--resume", str(run), "--json", "--max-steps", "5"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["steps"] == 5  # a budget given to the resume applies to it
    assert _budgets(run) == {"max_steps": None, "max_minutes": None}
    # A run saved before budgets were left out holds one: it no longer stops the resume either.
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("max_steps: null", "max_steps: 5"))
    third = runner.invoke(app, ["train", "--resume", str(run), "--json"])
    assert third.exit_code == 0, third.output
    done = json.loads(third.stdout)
    assert done["stopped"] == "finished" and done["epochs"] == 2 and done["steps"] > 6

    again = runner.invoke(app, ["train", "--resume", str(run)], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert f"run {run} already finished its 2 epochs; nothing to train" in " ".join(again.output.split())
    assert "finished, 2 epochs" in again.output and "resuming" not in again.output
    assert "no pretrained CLIP weights" not in again.output  # a resumed run loads its own weights


def test_global_flags_after_the_verb(tmp_path):
    quiet = runner.invoke(app, ["config", "show", "--json", "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert json.loads(quiet.stdout)["train"]["epochs"] and common.state.quiet
    verbose = runner.invoke(app, ["config", "show", "--json", "--verbose"])
    assert verbose.exit_code == 0, verbose.output
    assert common.state.verbose and not common.state.quiet
    before = runner.invoke(app, ["--json", "config", "show"])  # --json before the verb too
    assert before.exit_code == 0, before.output
    assert json.loads(before.stdout)["train"]["epochs"]
    plain = runner.invoke(app, ["config", "show"])
    assert not common.state.quiet and not common.state.verbose and not plain.stdout.lstrip().startswith("{")
    missing = runner.invoke(app, ["query", "a man in a red coat", "--index", str(tmp_path / "none"), "-q"])
    assert missing.exit_code == 2 and "No such option" not in missing.output


def test_help_and_hints_are_shown_as_written():
    shown = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "personsearch[faiss]" in shown.output
    for verb in (["query"], ["train"], ["config", "show"], []):
        text = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "300"}).output
        assert "<bool>" not in text and "--quiet" in text, verb
    from personsearch.cli.app import app as again  # rendering the help changed no help text

    command = __import__("typer").main.get_command(again).commands["export"]
    assert "[faiss]" in next(p.help for p in command.params if p.name == "faiss")


def test_the_faiss_hint_is_a_command_that_works_in_any_shell(monkeypatch, capsys):
    import sys

    from personsearch.retrieval.faiss_backend import require_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # not installed
    with pytest.raises(InputError) as caught:
        require_faiss()
    assert "pip install 'personsearch[faiss]'" in caught.value.hint and "build_faiss" not in caught.value.hint
    common.report_error(caught.value)
    assert "'personsearch[faiss]'" in capsys.readouterr().err


def test_one_device_default():
    import inspect

    import typer

    from personsearch.retrieval.query import run_queries

    commands = typer.main.get_command(app).commands
    defaults = {verb: next(p.default for p in commands[verb].params if p.name == "device")
                for verb in ("eval", "export", "query")}
    assert defaults == {"eval": "auto", "export": "auto", "query": "auto"}
    assert inspect.signature(run_queries).parameters["device"].default == "auto"


def test_a_failed_synthetic_drawing_leaves_no_empty_out(tmp_path, monkeypatch):
    import personsearch.data.synthetic.writer as writer

    def fail(*args, **kwargs):
        raise RuntimeError("could not phrase a caption")

    monkeypatch.setattr(writer, "caption_pair", fail)
    out = tmp_path / "new" / "prepared"
    result = runner.invoke(app, ["prepare", "synthetic", "--out", str(out), "--ids", "3", "--workers", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "could not phrase a caption" in result.output
    assert not (tmp_path / "new").exists()


def test_an_image_folder_of_links_pointing_outside_is_explained(tmp_path):
    from PIL import Image

    from personsearch.retrieval.export import export_images
    from personsearch.settings import resolve_settings

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "links").mkdir()
    for number in range(3):
        Image.new("RGB", (8, 16)).save(tmp_path / "elsewhere" / f"{number}.jpg")
        os.symlink(tmp_path / "elsewhere" / f"{number}.jpg", tmp_path / "links" / f"{number}.jpg")
    model = SimpleNamespace(settings=resolve_settings(environ={}))  # refused before the model is used
    with pytest.raises(InputError) as caught:
        export_images(model, tmp_path / "index", images=tmp_path / "links")
    message, hint = caught.value.message, caught.value.hint
    assert "3 left out: symbolic link points outside the image folder (3)" in message
    assert "3 symbolic link(s) lead outside the folder" in hint and "cp -rL" in hint
    assert ".jpg" not in hint  # not the list of file endings: that was not the problem
    assert not (tmp_path / "index").exists()
