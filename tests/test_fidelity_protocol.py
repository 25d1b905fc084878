"""IRRA fidelity of the image transforms and of the evaluation protocol: transforms bit-identical to
IRRA's torchvision pipeline under the same seed, `eval.unmatched`, and `eval.select_on` (pick the
best epoch on one split, report it on eval.split)."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.data.transforms import CLIP_MEAN, CLIP_STD, build_transform
from personsearch.errors import InputError
from personsearch.io import read_jsonl
from personsearch.metrics import rank_metrics
from personsearch.settings import resolve_settings

runner = CliRunner()
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def irra_transforms(img_size, aug=False, is_train=True):  # noqa: ANN201
    """IRRA's datasets/build.py ``build_transforms``, written out plainly."""
    import torchvision.transforms as T

    height, width = img_size
    if not is_train:
        return T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(mean=MEAN, std=STD)])
    if aug:
        return T.Compose([
            T.Resize((height, width)),
            T.RandomHorizontalFlip(0.5),
            T.Pad(10),
            T.RandomCrop((height, width)),
            T.ToTensor(),
            T.Normalize(mean=MEAN, std=STD),
            T.RandomErasing(scale=(0.02, 0.4), value=MEAN),
        ])
    return T.Compose([T.Resize((height, width)), T.RandomHorizontalFlip(0.5), T.ToTensor(),
                      T.Normalize(mean=MEAN, std=STD)])


def _pedestrian(seed: int = 0) -> Image.Image:
    """A noisy portrait-shaped image: every resampling filter gives it different pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(157, 61, 3), dtype=np.uint8)
    pixels[:, :20] = 255 - pixels[:, :20] // 3  # asymmetric, so a flip shows
    return Image.fromarray(pixels)


def _seeded(transform, image, seed):  # noqa: ANN001, ANN202
    torch.manual_seed(seed)
    random.seed(seed)
    return transform(image)


def test_constants_are_irras():
    assert list(CLIP_MEAN) == MEAN and list(CLIP_STD) == STD


def test_eval_transform_is_irras_bilinear_resize():
    image = _pedestrian()
    ours = build_transform((64, 32), train=False)(image)
    theirs = irra_transforms((64, 32), is_train=False)(image)
    assert torch.equal(ours, theirs)
    # The comparison can tell resampling filters apart: bicubic (the old choice) differs.
    import torchvision.transforms as T

    bicubic = T.Compose([T.Resize((64, 32), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                         T.Normalize(mean=MEAN, std=STD)])(image)
    assert not torch.equal(ours, bicubic)


@pytest.mark.parametrize("augment", [True, False])
def test_train_transform_is_irras_under_the_same_seed(augment):
    image = _pedestrian(1)
    ours, theirs = build_transform((64, 32), train=True, augment=augment), irra_transforms((64, 32), aug=augment)
    outputs = []
    for seed in range(12):
        mine = _seeded(ours, image, seed)
        assert torch.equal(mine, _seeded(theirs, image, seed)), seed
        outputs.append(mine)
    plain = build_transform((64, 32), train=False)(image)
    flipped = plain.flip(-1)
    if not augment:  # IRRA keeps the flip without img_aug: both orientations occur, nothing else
        assert all(torch.equal(o, plain) or torch.equal(o, flipped) for o in outputs)
        assert any(torch.equal(o, plain) for o in outputs) and any(torch.equal(o, flipped) for o in outputs)
    else:
        assert not any(torch.equal(o, plain) or torch.equal(o, flipped) for o in outputs)


# ------------------------------------------------------------------------------ unmatched queries


def plain_rank(sim, q_pids, g_pids, unmatched, max_rank=10):  # noqa: ANN001, ANN201
    """Full argsort per query in float64; an unmatched query is dropped (exclude) or scores 0 (miss)."""
    sim = np.asarray(sim, dtype=np.float64)
    r_hits = {1: [], 5: [], 10: []}
    aps, inps, cmc_rows = [], [], []
    for q in range(sim.shape[0]):
        order = np.argsort(-sim[q], kind="stable")
        matches = g_pids[order] == q_pids[q]
        if not matches.any():
            if unmatched == "exclude":
                continue
            for k in r_hits:
                r_hits[k].append(0.0)
            aps.append(0.0)
            inps.append(0.0)
            cmc_rows.append(np.zeros(max_rank))
            continue
        ranks = np.flatnonzero(matches) + 1
        for k in r_hits:
            r_hits[k].append(float(ranks[0] <= k))
        aps.append(np.mean([(i + 1) / r for i, r in enumerate(ranks)]))
        inps.append(len(ranks) / ranks[-1])
        cmc_rows.append(np.minimum(np.cumsum(matches[:max_rank]), 1))
    out = {f"R{k}": 100 * np.mean(v) for k, v in r_hits.items()}
    out.update(mAP=100 * np.mean(aps), mINP=100 * np.mean(inps), cmc=list(100 * np.mean(cmc_rows, axis=0)))
    out["queries"] = len(aps)
    return out


@pytest.mark.parametrize("unmatched", ["exclude", "miss"])
def test_unmatched_queries_excluded_or_missed(unmatched):
    rng = np.random.default_rng(3)
    sim = rng.standard_normal((40, 30)).astype(np.float32)
    g_pids = rng.integers(0, 8, 30)
    q_pids = rng.integers(0, 11, 40)  # ids 8..10 are in no gallery
    missing = int(np.count_nonzero(q_pids >= 8))
    assert 0 < missing < 40
    ours = rank_metrics(sim, q_pids, g_pids, unmatched=unmatched)
    plain = plain_rank(sim, q_pids, g_pids, unmatched)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert ours[key] == pytest.approx(plain[key], abs=1e-9), key
    assert ours["cmc"] == pytest.approx(plain["cmc"], abs=1e-9)
    assert ours["queries"] == plain["queries"] and ours["queries_without_match"] == missing


def test_miss_matches_irras_rk_only_evaluator():
    """IRRA's R@K path: argsort every row, take the first max_rank matches, average over all queries."""
    rng = np.random.default_rng(9)
    sim = rng.standard_normal((25, 18))
    g_pids = rng.integers(0, 5, 18)
    q_pids = rng.integers(0, 7, 25)
    indices = np.argsort(-sim, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int64)
    cmc = matches[:, :10].cumsum(1)
    cmc[cmc > 1] = 1
    irra = cmc.mean(0) * 100
    ours = rank_metrics(sim, q_pids, g_pids, unmatched="miss")
    assert [ours["R1"], ours["R5"], ours["R10"]] == pytest.approx([irra[0], irra[4], irra[9]], abs=1e-9)
    assert ours["R1"] != pytest.approx(rank_metrics(sim, q_pids, g_pids)["R1"])


def test_unmatched_setting_is_checked():
    with pytest.raises(InputError, match="unmatched"):
        rank_metrics(np.eye(2), [0, 1], [0, 1], unmatched="drop")
    with pytest.raises(InputError, match="eval.unmatched"):
        resolve_settings(sets=["eval.unmatched=drop"], environ={})


# ------------------------------------------------------------------------------ selection protocol


def _tiny(tiny_settings, *sets):  # noqa: ANN001, ANN202
    return resolve_settings(base=tiny_settings, sets=["train.epochs=2", *sets], environ={})


def test_select_on_val_reports_the_selected_checkpoint_on_test(tiny_settings, tmp_path):
    from personsearch.engine.train import train

    settings = _tiny(tiny_settings)
    assert settings.eval.select_on == "val" and settings.eval.split == "test"
    run = tmp_path / "run"
    result = train(settings, settings.data.root, run)
    rows = read_jsonl(run / "metrics.jsonl")
    evals = [r for r in rows if "R1" in r]
    assert [r["split"] for r in evals] == ["val", "val"] and all("queries_without_match" in r for r in evals)
    assert result.selected_on == "val" and result.best["R1"] == max(r["R1"] for r in evals)
    final = [r["selected_checkpoint"] for r in rows if "selected_checkpoint" in r]
    assert final == [json.loads(json.dumps(result.final))]
    assert result.final["split"] == "test" and result.final["epoch"] == result.best["epoch"]
    # Independently: the best weights, evaluated on test by the eval verb, give the same numbers.
    out = runner.invoke(app, ["eval", str(run), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["split"] == "test" and report["queries_without_match"] == 0 and report["unmatched"] == "exclude"
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert report["t2i"][key] == pytest.approx(result.final[key], abs=1e-6), key
    plain = runner.invoke(app, ["eval", str(run)])
    assert plain.exit_code == 0 and "queries_without_match: 0" in plain.stdout


def test_select_on_test_is_irras_protocol(tiny_settings, tmp_path):
    from personsearch.engine.train import train

    settings = _tiny(tiny_settings, "eval.select_on=test")
    result = train(settings, settings.data.root, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["split"] for r in rows if "R1" in r] == ["test", "test"]
    assert result.final == {"selected_on": "test", "split": "test", **result.best}


def test_no_val_split_falls_back_to_test_loudly(prepared_without_val, tiny_settings, tmp_path, caplog):
    from personsearch.engine.train import train

    settings = _tiny(tiny_settings, "train.epochs=1", f"data.root={prepared_without_val}")
    with caplog.at_level(logging.WARNING, logger="personsearch.engine.train"):
        result = train(settings, settings.data.root, tmp_path / "run")
    assert any("no val split" in r.getMessage() and "TEST" in r.getMessage() for r in caplog.records)
    assert result.selected_on == "test" and result.final["selected_on"] == "test"


def test_selection_settings_cannot_change_on_resume(tiny_settings):
    from personsearch.engine.train import resume_conflicts

    changed = resolve_settings(base=tiny_settings, sets=["eval.select_on=test"], environ={})
    assert any(c.startswith("eval.select_on") for c in resume_conflicts(tiny_settings, changed))
    batch = resolve_settings(base=tiny_settings, sets=["eval.batch_size=7"], environ={})
    assert resume_conflicts(tiny_settings, batch) == []
