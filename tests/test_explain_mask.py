"""``personsearch explain-mask``: JSON shape and meaning, model sources, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.helpers import TINY_IMAGE_SIZE, TINY_IRRA_ARCH
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.io import sha256_file
from personsearch.model.clip import build_clip
from personsearch.runs import create_run
from personsearch.settings import resolve_settings

CAPTION = "a woman in a red coat carrying a black leather bag"
SPECIALS = ("<|startoftext|>", "<|endoftext|>")

runner = CliRunner()


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, ["explain-mask", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _check_shape(data: dict, caption_words: int) -> None:
    assert set(data) == {"tokens", "importance", "masked"}
    tokens, importance, masked = data["tokens"], data["importance"], data["masked"]
    assert len(tokens) == len(importance) == len(masked) == caption_words + 2
    assert tokens[0] == SPECIALS[0] and tokens[-1] == SPECIALS[1]
    assert all(isinstance(t, str) for t in tokens) and all(isinstance(m, bool) for m in masked)
    assert importance[0] == 0 and importance[-1] == 0
    assert sum(importance) == pytest.approx(1.0, abs=1e-5)
    assert all(v >= 0 for v in importance)
    assert not masked[0] and not masked[-1]
    assert sum(masked) == max(1, round(0.15 * caption_words))


def _weights_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16, context_length=77)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_no_run_is_refused_and_a_random_model_only_on_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = runner.invoke(app, ["explain-mask", CAPTION, "--json"])
    assert refused.exit_code == 2 and "no trained run" in refused.stderr and "--random" in refused.stderr
    assert not refused.stdout
    result = runner.invoke(app, ["explain-mask", CAPTION, "--json", "--random"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout carries only JSON; the note goes to stderr
    _check_shape(data, caption_words=11)
    assert data["tokens"][1:-1] == CAPTION.split()
    assert "randomly initialised" in result.stderr
    both = runner.invoke(app, ["explain-mask", CAPTION, "--random", "--run", str(tmp_path)])
    assert both.exit_code == 2 and "one of --run, --weights or --random" in both.stderr


def test_the_demos_run_is_found(tmp_path, monkeypatch):
    """``personsearch demo`` puts its run at runs/demo/run: explain-mask (and query) find it."""
    from personsearch.io import write_owner_marker
    from personsearch.runs import DEMO_KIND, latest_run

    monkeypatch.chdir(tmp_path)
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    write_owner_marker(demo, DEMO_KIND)
    run = _trained_tiny_run(tmp_path, demo)
    assert latest_run(tmp_path / "runs", require="checkpoints/best.safetensors") == run
    result = runner.invoke(app, ["explain-mask", CAPTION])
    assert result.exit_code == 0, result.output
    assert "using the most recent run" in result.stderr and "demo" in result.stderr


def test_weights_and_top_k_at_zero_temperature(tmp_path):
    weights = _weights_file(tmp_path)
    args = [
        CAPTION,
        "--weights",
        str(weights),
        "--set",
        f"model.image_size={list(TINY_IMAGE_SIZE)}",
        "--temperature",
        "0",
        "--ratio",
        "0.3",
    ]
    data = _json(args)
    words = range(1, len(data["tokens"]) - 1)
    k = round(0.3 * len(words))
    top = sorted(words, key=lambda i: -data["importance"][i])[:k]
    assert sorted(i for i, m in enumerate(data["masked"]) if m) == sorted(top)
    assert _json(args) == data  # deterministic


def _trained_tiny_run(tmp_path: Path, output_dir: Path) -> Path:
    """A run folder with a tiny CLIP's weights and their record, as training leaves them."""
    settings = resolve_settings(
        config={
            "model": {"image_size": list(TINY_IMAGE_SIZE), "arch": TINY_IRRA_ARCH},
            "masking": {"ratio": 0.4, "layers": 2},
            "runtime": {"output_dir": str(tmp_path / "runs")},
        },
        environ={},
    )
    run = create_run(settings, name="tiny", output_dir=output_dir)
    torch.manual_seed(0)
    model = build_clip(TINY_IRRA_ARCH, image_size=TINY_IMAGE_SIZE, stride=16)
    save_file(
        {f"base_model.{k}": v.contiguous() for k, v in model.state_dict().items()},
        str(run / "checkpoints" / "best.safetensors"),
    )
    record = {"format_version": 1, "weights_sha256": sha256_file(run / "checkpoints" / "best.safetensors")}
    (run / "checkpoints" / "best.json").write_text(json.dumps(record))
    return run


def test_run_folder_uses_its_settings(tmp_path):
    run = _trained_tiny_run(tmp_path, tmp_path / "runs")
    data = _json([CAPTION, "--run", str(run), "--seed", "3"])
    assert sum(data["masked"]) == round(0.4 * 11)
    assert sum(data["importance"]) == pytest.approx(1.0, abs=1e-5)
    # The same run is found as the most recent one under runtime.output_dir.
    again = _json([CAPTION, "--seed", "3", "--set", f"runtime.output_dir={tmp_path / 'runs'}"])
    assert again == data


def test_human_output_marks_masked_tokens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explain-mask", "a man with a blue backpack", "--temperature", "0", "--random"])
    assert result.exit_code == 0, result.output
    assert "[" in result.stdout and "importance" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["a man", "--run", "r", "--weights", "w"], "one of --run, --weights or --random"),
        (["   ", "--temperature", "0", "--random"], "no words to mask"),
        (["a man", "--weights", "missing.pt"], "not found"),
        (["a man", "--run", "no-such-run"], "does not exist"),
    ],
)
def test_input_errors_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explain-mask", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
