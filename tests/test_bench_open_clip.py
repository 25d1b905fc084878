"""benchmarks/bench_open_clip.py: its caption generator, its open_clip weight copy, and its rows
without open_clip (run on a tiny CLIP so the whole script takes a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE

from personsearch.model import build_clip

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_open_clip.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_open_clip", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_real_length_captions_have_one_eot_at_the_drawn_length(bench) -> None:
    lengths = bench.caption_lengths(256, torch.Generator().manual_seed(1))
    assert lengths.min() >= 12 and lengths.max() <= 70
    assert 27 <= lengths.float().mean() <= 33
    ids = bench.captions(lengths, torch.Generator().manual_seed(2))
    assert ids.shape == (256, 77)
    assert torch.equal((ids == bench.EOT).sum(dim=1), torch.ones(256, dtype=torch.long))
    assert torch.equal(ids.argmax(dim=1), lengths - 1)
    assert (ids[:, 0] == bench.SOT).all()
    for row, length in zip(ids, lengths.tolist(), strict=True):
        assert ((row[1 : length - 1] >= 1) & (row[1 : length - 1] < 49000)).all()
        assert (row[length:] == 0).all()
    full = bench.captions([77] * 3, torch.Generator().manual_seed(0))
    assert (full[:, 76] == bench.EOT).all() and (full != 0).all()
    with pytest.raises(ValueError):
        bench.captions([78], torch.Generator())


def test_tokens_run_counts_sorted_batches_cut_to_their_longest(bench) -> None:
    assert bench.tokens_run(torch.tensor([5, 30, 4, 10]), 2) == 2 * 5 + 2 * 30


def test_weight_copy_maps_every_tensor_exactly_and_strictly(bench) -> None:
    torch.manual_seed(0)
    source = build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8)
    torch.manual_seed(1)
    target = build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8)
    state = dict(source.state_dict())
    state["attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)  # saved by some open_clip versions
    assert bench.copy_open_clip_weights(state, target) == ["attn_mask"]
    targets = dict(target.named_parameters())
    assert targets.keys() == dict(source.named_parameters()).keys()
    for name, value in source.named_parameters():
        assert torch.equal(targets[name], value), name

    extra = dict(state, **{"visual.attn_pool.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="visual.attn_pool.weight"):
        bench.copy_open_clip_weights(extra, target)
    short = {key: value for key, value in state.items() if key != "ln_final.bias"}
    with pytest.raises(ValueError, match="ln_final.bias"):
        bench.copy_open_clip_weights(short, target)
    wrong = dict(state, text_projection=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="text_projection"):
        bench.copy_open_clip_weights(wrong, target)


def test_rows_without_open_clip_carry_ours_and_the_install_hint(bench, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    bench.main(["--tiny", "--json", "--precision", "fp32", "--image-batch", "2", "--image-batches", "1",
                "--text-batch", "4", "--text-batches", "1", "--captions", "8"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(rows) == 6
    for row in rows:
        assert set(row) == {"figure", "unit", "ours", "reference", "higher_is_better", "goal", "note"}
        assert row["reference"] is None
        assert bench.INSTALL_HINT in row["note"]
        assert "GFLOP/s" in row["note"]
        if row["figure"].endswith("fp32"):
            assert row["ours"] > 0
        else:
            assert row["ours"] is None and "--precision fp32" in row["note"]


def test_tiny_rows_against_open_clip_agree(bench, capsys) -> None:
    pytest.importorskip("open_clip")
    bench.main(["--tiny", "--json", "--precision", "fp32", "--image-batch", "2", "--image-batches", "1",
                "--text-batch", "4", "--text-batches", "1", "--captions", "8"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for row in (r for r in rows if r["figure"].endswith("fp32")):
        assert row["ours"] > 0 and row["reference"] > 0
        mean = float(row["note"].split("cosine ours vs open_clip ")[1].split()[0])
        assert mean > 0.99999, row
